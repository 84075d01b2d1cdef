//! goim over WebSocket: the HTTP upgrade, then one goim packet per client message (only its first
//! packet is parsed, text or binary), and pushes wrapped in op-9 packets, one or more inner packets
//! per binary message. Replies are never wrapped. Frames are the edge's own
//! ([`crate::protocol::websocket`]): no per-connection buffers while idle.
//!
//! permessage-deflate (`listen.ws_permessage_deflate`, on by default) is agreed at the upgrade when the
//! client offers it, always without context takeover ([`crate::protocol::deflate`] says why and what
//! is declined). A connection that agreed differs in two ways, both without per-connection state:
//!
//! * outbound, each push item (one hub batch, shared by every recipient) is its own op-9 message,
//!   sent as the item's shared compressed form ([`crate::outbox::Push::deflated`]): the first writer
//!   that needs it compresses it, every other deflate connection copies the same bytes. Items too
//!   short to gain ([`deflate::MIN_COMPRESS_LEN`]) or that do not shrink are wrapped together
//!   uncompressed as before (RSV1 clear: legal per message). Replies are compressed per connection
//!   when long enough (the thread's compressor; rare and mostly tiny). Connections without the
//!   extension get exactly what they got before: consecutive pushes in one op-9 message.
//! * inbound, a message with RSV1 is inflated on its own, bounded by `limits.max_ws_message_bytes`
//!   on the inflated size (an inflate bomb closes the connection as a protocol error).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;

use bytes::{Bytes, BytesMut};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::socket::{write_all, Socket};
use super::{Decode, Encode, FramingError, Inbound};
use crate::outbox::{Outgoing, Push};
use crate::stats::CloseReason;
use crate::protocol::deflate;
use crate::protocol::websocket::{self, Message, OP_BINARY, OP_CLOSE, OP_PONG};
use crate::protocol::{decode_frame, raw, HEADER_LEN};

/// Largest upgrade request (request line and headers) the edge reads.
const MAX_UPGRADE_REQUEST: usize = 8192;

/// Why an upgrade failed (the client got an HTTP error status where one applies).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed during the upgrade request")]
    Closed,
    #[error("upgrade request is not valid HTTP: {0}")]
    Http(#[from] httparse::Error),
    #[error("upgrade request longer than {MAX_UPGRADE_REQUEST} bytes")]
    TooLong,
    #[error("refused with {status}: {why}")]
    Refused { status: &'static str, why: String },
}

/// Read the client's upgrade request and answer it: `101 Switching Protocols` on `path`, an HTTP
/// error status (404 elsewhere, 400 for a request that is not a WebSocket upgrade, 426 for another
/// protocol version) otherwise. With `deflate` (the config switch), permessage-deflate is agreed if
/// the client offers it acceptably. Returns the bytes the client sent after its request and whether
/// permessage-deflate was agreed. Over TLS (WSS) `stream` is the socket after the TLS handshake.
pub async fn upgrade(stream: &impl Socket, path: &str, deflate: bool) -> Result<(BytesMut, bool), UpgradeError> {
    let mut buf = BytesMut::new();
    loop {
        poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        let mut chunk = [0u8; 2048];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(UpgradeError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(&buf)?;
        let httparse::Status::Complete(len) = parsed else {
            if buf.len() > MAX_UPGRADE_REQUEST {
                return Err(UpgradeError::TooLong);
            }
            continue;
        };
        return match accept_response(&request, path, deflate) {
            Ok((response, deflate)) => {
                write_all(stream, response.as_bytes()).await?;
                let _ = buf.split_to(len);
                Ok((buf, deflate))
            }
            Err((status, why, extra)) => {
                let body = format!("{why}\n");
                let response = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = write_all(stream, response.as_bytes()).await;
                Err(UpgradeError::Refused { status, why })
            }
        };
    }
}

/// The `101` answer to a valid upgrade request and whether it agrees to permessage-deflate (only if
/// `deflate` is allowed), or (status, reason, extra headers).
fn accept_response(request: &httparse::Request<'_, '_>, path: &str, deflate: bool) -> Result<(String, bool), (&'static str, String, &'static str)> {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if request.method != Some("GET") {
        return Err(("405 Method Not Allowed", "a WebSocket upgrade is a GET".into(), ""));
    }
    let target = request.path.unwrap_or("");
    if target.split('?').next() != Some(path) {
        return Err(("404 Not Found", format!("goim WebSocket path is {path}"), ""));
    }
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Err(("400 Bad Request", "not a WebSocket upgrade request".into(), ""));
    }
    if header("Sec-WebSocket-Version") != Some("13") {
        return Err(("426 Upgrade Required", "WebSocket version 13 only".into(), "Sec-WebSocket-Version: 13\r\n"));
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| !k.is_empty()) else {
        return Err(("400 Bad Request", "Sec-WebSocket-Key is missing".into(), ""));
    };
    // Every Sec-WebSocket-Extensions line, in order (a client may split its offers over several).
    let offers = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
        .filter_map(|h| std::str::from_utf8(h.value).ok());
    let deflate = deflate && deflate::accepts(offers);
    let extensions = if deflate { format!("Sec-WebSocket-Extensions: {}\r\n", deflate::RESPONSE) } else { String::new() };
    Ok((
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extensions}\r\n",
            derive_accept_key(key.as_bytes())
        ),
        deflate,
    ))
}

/// Client messages to packets; pings answered, pongs ignored, a close frame echoed.
#[derive(Debug)]
pub struct WsDecoder(websocket::Decoder);

impl WsDecoder {
    /// `max_message`: `limits.max_ws_message_bytes`, larger messages (compressed or inflated) close
    /// the connection; `deflate`: permessage-deflate was agreed at the upgrade.
    pub fn new(max_message: usize, deflate: bool) -> WsDecoder {
        WsDecoder(websocket::Decoder::new(max_message, deflate))
    }
}

impl Decode for WsDecoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, FramingError> {
        Ok(match self.0.decode(buf)? {
            None => None,
            Some(Message::Binary(data) | Message::Text(data)) => Some(Inbound::Packet(decode_frame(&data)?)),
            Some(Message::Ping(payload)) => Some(Inbound::Answer(websocket::frame(OP_PONG, &payload))),
            Some(Message::Pong) => Some(Inbound::Nothing),
            Some(Message::Close(code)) => {
                let echo = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                Some(Inbound::Goodbye(Some(websocket::frame(OP_CLOSE, &echo))))
            }
        })
    }
}

/// Consecutive pushes as one op-9 binary message, each reply as its own binary message; with
/// permessage-deflate, each compressible push item as its own compressed op-9 message (see the
/// module docs).
#[derive(Debug, Default)]
pub struct WsEncoder {
    /// permessage-deflate was agreed at the upgrade.
    pub deflate: bool,
}

impl WsEncoder {
    pub fn new(deflate: bool) -> WsEncoder {
        WsEncoder { deflate }
    }
}

impl Encode for WsEncoder {
    fn encode(&self, items: &VecDeque<Outgoing>, out: &mut BytesMut) {
        let mut i = 0;
        while i < items.len() {
            match &items[i] {
                Outgoing::Push(_) => {
                    let pushes: Vec<&Push> = items
                        .range(i..)
                        .map_while(|item| match item {
                            Outgoing::Push(p) => Some(p),
                            _ => None,
                        })
                        .collect();
                    i += pushes.len();
                    if !self.deflate {
                        put_op9(out, &pushes);
                        continue;
                    }
                    // Compressed items alone (their shared form), the others wrapped together.
                    let mut plain: Vec<&Push> = Vec::new();
                    for push in pushes {
                        match push.deflated(deflate_op9) {
                            Some(z) => {
                                if !plain.is_empty() {
                                    put_op9(out, &plain);
                                    plain.clear();
                                }
                                websocket::put_compressed_frame_header(out, OP_BINARY, z.len());
                                out.extend_from_slice(z);
                            }
                            None => plain.push(push),
                        }
                    }
                    if !plain.is_empty() {
                        put_op9(out, &plain);
                    }
                }
                Outgoing::Reply(b) => {
                    match self.deflate.then(|| deflate::compress(b)).flatten() {
                        Some(z) => {
                            websocket::put_compressed_frame_header(out, OP_BINARY, z.len());
                            out.extend_from_slice(&z);
                        }
                        None => {
                            websocket::put_frame_header(out, OP_BINARY, b.len());
                            out.extend_from_slice(b);
                        }
                    }
                    i += 1;
                }
                Outgoing::Control(b) => {
                    out.extend_from_slice(b);
                    i += 1;
                }
            }
        }
    }

    /// At shutdown: close 1001 "going away" (RFC 6455 §7.4.1), as a browser expects from a server
    /// that goes down; every other close is goim's, without a frame.
    fn farewell(&self, reason: CloseReason) -> Option<Bytes> {
        (reason == CloseReason::Shutdown).then(going_away)
    }
}

/// One uncompressed binary message: an op-9 packet wrapping every packet of `pushes`.
fn put_op9(out: &mut BytesMut, pushes: &[&Push]) {
    let body_len: usize = pushes.iter().map(|p| p.len()).sum();
    websocket::put_frame_header(out, OP_BINARY, HEADER_LEN + body_len);
    raw::wrap_into(out, pushes.iter().map(|p| p.packets()), body_len);
}

/// The payload of the compressed binary message carrying `packets` in an op-9 packet, or None when
/// compressing would not pay: what [`Push::deflated`] computes once per push item.
pub fn deflate_op9(packets: &Bytes) -> Option<Bytes> {
    if HEADER_LEN + packets.len() < deflate::MIN_COMPRESS_LEN {
        return None;
    }
    let mut message = BytesMut::with_capacity(HEADER_LEN + packets.len());
    raw::wrap_into(&mut message, [packets], packets.len());
    deflate::compress(&message)
}

/// The close frame sent at shutdown: code 1001, reason "going away".
pub fn going_away() -> Bytes {
    let mut payload = GOING_AWAY.to_be_bytes().to_vec();
    payload.extend_from_slice(b"going away");
    websocket::frame(OP_CLOSE, &payload)
}

/// WebSocket close code 1001: the endpoint is going away (a server going down).
pub const GOING_AWAY: u16 = 1001;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_push, Packet};

    #[test]
    fn pushes_are_wrapped_together_and_replies_alone() {
        let p1 = encode_push(1000, b"a");
        let p2 = encode_push(1001, b"bb");
        let reply = Packet { ver: 1, op: 3, seq: 7, body: Bytes::new() }.encode();
        let items: VecDeque<Outgoing> =
            [Outgoing::Push(p1.clone().into()), Outgoing::Push(p2.clone().into()), Outgoing::Reply(reply.clone())].into();
        let mut out = BytesMut::new();
        WsEncoder::new(false).encode(&items, &mut out);
        // Frame 1: binary, op-9 packet holding both pushes.
        let inner = p1.len() + p2.len();
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1] as usize, HEADER_LEN + inner);
        let op9 = &out[2..2 + HEADER_LEN + inner];
        assert_eq!(i32::from_be_bytes(op9[8..12].try_into().unwrap()), 9);
        let packets = raw::unwrap(&op9[HEADER_LEN..]).unwrap();
        assert_eq!(packets.iter().map(|p| p.op).collect::<Vec<_>>(), vec![1000, 1001]);
        // Frame 2: the reply, unwrapped.
        let rest = &out[2 + HEADER_LEN + inner..];
        assert_eq!((rest[0], rest[1] as usize), (0x82, reply.len()));
        assert_eq!(&rest[2..], &reply[..]);
    }

    /// Frames of a server write: (rsv1, payload).
    fn frames(mut out: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            assert_eq!(out[0] & 0x8F, 0x82, "final binary frame");
            let (len, at) = match out[1] {
                126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
                127 => panic!("no huge frames here"),
                n => (n as usize, 2),
            };
            v.push((out[0] & 0x40 != 0, out[at..at + len].to_vec()));
            out = &out[at + len..];
        }
        v
    }

    #[test]
    fn with_deflate_each_push_item_is_one_shared_compressed_message() {
        let body = br#"{"from":"alice","text":"a chat line that is long enough to be worth compressing"}"#;
        let big1: Push = encode_push(1000, body).into();
        let big2: Push = encode_push(1001, body).into();
        let small: Push = encode_push(1002, b"x").into();
        let reply = Packet { ver: 1, op: 3, seq: 7, body: Bytes::new() }.encode();
        let items: VecDeque<Outgoing> = [
            Outgoing::Push(small.clone()),
            Outgoing::Push(small.clone()),
            Outgoing::Push(big1.clone()),
            Outgoing::Push(big2.clone()),
            Outgoing::Reply(reply.clone()),
        ]
        .into();
        let mut out = BytesMut::new();
        WsEncoder::new(true).encode(&items, &mut out);
        let got = frames(&out);
        assert_eq!(got.len(), 4, "two small pushes wrapped together, two compressed, one reply");
        // The small ones: uncompressed, one op-9 message as before.
        assert!(!got[0].0);
        assert_eq!(raw::unwrap(&got[0].1[HEADER_LEN..]).unwrap().iter().map(|p| p.op).collect::<Vec<_>>(), vec![1002, 1002]);
        // The big ones: RSV1, each inflating to its own op-9 message.
        for ((rsv1, payload), (push, op)) in got[1..3].iter().zip([(&big1, 1000), (&big2, 1001)]) {
            assert!(rsv1);
            let message = deflate::inflate(payload, 1 << 16).unwrap();
            assert_eq!(i32::from_be_bytes(message[8..12].try_into().unwrap()), 9);
            let inner = raw::unwrap(&message[HEADER_LEN..]).unwrap();
            assert_eq!((inner.len(), inner[0].op, &inner[0].body[..]), (1, op, &body[..]));
            // The compressed form is the item's, shared: another connection copies the same bytes.
            assert_eq!(push.deflated(|_| panic!("computed twice")).unwrap()[..], payload[..]);
        }
        // The short reply is not compressed.
        assert_eq!(got[3], (false, reply.to_vec()));
        // The same items to a connection without the extension: all pushes in one plain message.
        let mut plain = BytesMut::new();
        WsEncoder::new(false).encode(&items, &mut plain);
        let got = frames(&plain);
        assert_eq!(got.len(), 2);
        assert!(!got[0].0 && !got[1].0);
        assert_eq!(raw::unwrap(&got[0].1[HEADER_LEN..]).unwrap().len(), 4);
    }

    #[test]
    fn deflate_is_agreed_only_when_offered_and_allowed() {
        let answer = |extensions: &str, allowed: bool| {
            let text = format!(
                "GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extensions}\r\n"
            );
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            assert!(req.parse(text.as_bytes()).unwrap().is_complete());
            accept_response(&req, "/sub", allowed).unwrap()
        };
        let chrome = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
        let (text, agreed) = answer(chrome, true);
        assert!(agreed);
        assert!(
            text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        // Switched off, not offered, or not acceptable: no extension header at all.
        for (extensions, allowed) in [
            (chrome, false),
            ("", true),
            ("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n", true),
        ] {
            let (text, agreed) = answer(extensions, allowed);
            assert!(!agreed && !text.contains("Extensions"), "{extensions:?} {allowed}: {text}");
        }
        // An offer on a second header line counts.
        let (_, agreed) = answer("Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate\r\n", true);
        assert!(agreed);
    }

    #[test]
    fn shutdown_says_going_away() {
        let frame = WsEncoder::default().farewell(CloseReason::Shutdown).unwrap();
        assert_eq!(frame[0], 0x88, "FIN + close");
        assert_eq!(frame[1] as usize, 2 + "going away".len());
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1001);
        assert_eq!(&frame[4..], b"going away");
        assert!(WsEncoder::default().farewell(CloseReason::Kicked).is_none());
        assert!(crate::transport::tcp::TcpEncoder.farewell(CloseReason::Shutdown).is_none(), "TCP: just the close");
    }

    #[test]
    fn upgrade_requests_are_checked() {
        let parse = |text: &str| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            assert!(req.parse(text.as_bytes()).unwrap().is_complete());
            accept_response(&req, "/sub", false).map(|(answer, _)| answer).map_err(|(status, _, _)| status)
        };
        let ok = "GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let answer = parse(ok).unwrap();
        // RFC 6455's own example key and answer.
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{answer}");
        assert_eq!(parse(&ok.replace("/sub", "/other")), Err("404 Not Found"));
        assert_eq!(parse(&ok.replace("GET", "POST")), Err("405 Method Not Allowed"));
        assert_eq!(parse(&ok.replace("Upgrade: WebSocket\r\n", "")), Err("400 Bad Request"));
        assert_eq!(parse(&ok.replace("Version: 13", "Version: 8")), Err("426 Upgrade Required"));
        assert_eq!(parse(&ok.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")), Err("400 Bad Request"));
    }
}
