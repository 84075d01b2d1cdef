//! permessage-deflate on the edge's WebSocket (RFC 7692), end to end: negotiation (offered, not
//! offered, switched off), compressed pushes whose inflated op-9 message is byte for byte what a
//! client without the extension gets, short pushes left uncompressed, a compressed client message
//! (heartbeat) answered, and an inflate bomb closing the connection.
//!
//! tungstenite (the other tests' client) does not implement the extension, so the client here is a
//! minimal raw RFC 6455 client with its own deflate (flate2, independent of the edge's code path).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use goim_nats_tests::goim::*;
use goim_nats_tests::*;

/// What Chrome and Firefox send.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];

/// A chat-like push body: long enough to be compressed.
fn chat_body(i: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"chat","room":"live://1000","from":{{"mid":4242,"name":"alice"}},"text":"message number {i} in the room, hello everyone, hello everyone","ts":1700000000{i:03},"mentions":[],"attachments":[]}}"#
    )
    .into_bytes()
}

/// One server frame.
#[derive(Debug)]
struct Frame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A raw WebSocket client: masks what it sends, parses what it gets.
struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
}

impl RawWs {
    /// Upgrade at `/sub`, offering `offer` in `Sec-WebSocket-Extensions` if given.
    async fn connect(addr: SocketAddr, offer: Option<&str>) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        let ext = offer.map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /sub HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write upgrade");
        let deadline = Instant::now() + WAIT;
        let mut buf = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = timeout_at(deadline, stream.read_buf(&mut buf)).await.expect("upgrade answer timeout").expect("read");
            assert!(n > 0, "EOF during the upgrade answer: {:?}", String::from_utf8_lossy(&buf));
        };
        let head = String::from_utf8(buf.split_to(end).to_vec()).expect("UTF-8 answer");
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("Sec-WebSocket-Extensions").then(|| value.trim().to_string())
        });
        RawWs { stream, buf, extensions }
    }

    /// One masked, final frame.
    async fn send_frame(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) -> std::io::Result<()> {
        let first = opcode | if rsv1 { 0x40 } else { 0 };
        let v = goim_edge::protocol::websocket::client_frame(true, first, payload, [0x37, 0xfa, 0x21, 0x3d]);
        self.stream.write_all(&v).await
    }

    /// A goim packet as one binary message, compressed (RSV1) if asked.
    async fn send_packet(&mut self, p: &Packet, compressed: bool) {
        let bytes = p.encode();
        let payload = if compressed { compress(&bytes) } else { bytes };
        self.send_frame(0x2, compressed, &payload).await.expect("send");
    }

    /// The next frame, or Err(how the connection ended) / Err("timeout").
    async fn next_frame(&mut self, within: Duration) -> Result<Frame, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(f) = self.take_frame() {
                return Ok(f);
            }
            match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err("timeout".into()),
                Ok(Ok(0)) => return Err("EOF".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("read error: {e}")),
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let (fin, rsv1, opcode) = (b[0] & 0x80 != 0, b[0] & 0x40 != 0, b[0] & 0x0F);
        assert_eq!(b[0] & 0x30, 0, "RSV2/RSV3 are never set");
        self.buf.advance(at);
        let payload = self.buf.split_to(len).to_vec();
        Some(Frame { fin, rsv1, opcode, payload })
    }

    /// The next binary message: (was compressed, its payload inflated).
    async fn next_message(&mut self) -> (bool, Vec<u8>) {
        let f = self.next_frame(WAIT).await.unwrap_or_else(|e| panic!("no message: {e}"));
        assert!(f.fin && f.opcode == 0x2, "a whole binary message: {f:?}");
        if f.rsv1 {
            (true, inflate(&f.payload))
        } else {
            (false, f.payload)
        }
    }

    /// The next message as one goim packet.
    async fn next_packet(&mut self) -> (bool, Packet) {
        let (compressed, data) = self.next_message().await;
        (compressed, parse_one(&data))
    }

    /// Op 7, then op 8 expected.
    async fn auth(&mut self, auth: &Auth) {
        self.send_packet(&Packet::new(1, OP_AUTH, 1, auth.body()), false).await;
        let (_, p) = self.next_packet().await;
        assert_eq!((p.op, p.seq), (OP_AUTH_REPLY, 1), "{p:?}");
    }

    /// Until the server closes: Ok(close frame code, if a close frame came first) or the error.
    async fn closed(&mut self) -> String {
        loop {
            match self.next_frame(WAIT).await {
                Ok(f) if f.opcode == 0x8 => return "close frame".into(),
                Ok(_) => continue,
                Err(e) if e == "timeout" => panic!("the server did not close the connection"),
                Err(e) => return e,
            }
        }
    }
}

/// RFC 7692 §7.2.1 with flate2: raw DEFLATE, sync flush, tail removed.
fn compress(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    let mut z = enc.flush_finish().unwrap();
    assert!(z.ends_with(&TAIL));
    z.truncate(z.len() - 4);
    z
}

/// RFC 7692 §7.2.2 with flate2: tail appended, raw inflate.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut dec = flate2::write::DeflateDecoder::new(Vec::new());
    dec.write_all(payload).expect("valid DEFLATE from the edge");
    dec.write_all(&TAIL).unwrap();
    dec.flush().unwrap();
    dec.get_ref().clone()
}

/// A whole message as exactly one goim packet.
fn parse_one(data: &[u8]) -> Packet {
    assert!(data.len() >= 16, "short message {data:?}");
    let len = i32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, data.len(), "one packet per message");
    Packet::new(
        i16::from_be_bytes([data[6], data[7]]),
        i32::from_be_bytes(data[8..12].try_into().unwrap()),
        i32::from_be_bytes(data[12..16].try_into().unwrap()),
        data[16..].to_vec(),
    )
}

async fn stats_until(nats: &NatsServer, edge: &Edge, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = edge.stats(nats).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_client_gets_compressed_pushes_that_inflate_to_what_a_plain_client_gets() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut z = RawWs::connect(edge.ws_addr(), Some(BROWSER_OFFER)).await;
    assert_eq!(z.extensions.as_deref(), Some(AGREED));
    z.auth(&Auth::new(1).room("live://1000")).await;
    let mut plain = Client::connect_auth(Transport::Ws, &edge, Auth::new(2).room("live://1000")).await.with_label("plain");

    let mut p = nats.raw().await;
    for i in 0..3 {
        let body = chat_body(i);
        p.publish("room.live.1000", &body).await;
        // The plain client's whole op-9 message, re-encoded: the exact bytes of its frame payload.
        let want = plain.recv_packet(WAIT).await.expect("plain push");
        assert_eq!(want.op, OP_RAW);
        let (compressed, got) = z.next_message().await;
        assert!(compressed, "a {}-byte chat push is sent compressed", body.len());
        assert_eq!(got, want.encode(), "push {i}: the inflated message is the plain one");
        let inner = unwrap_raw(&parse_one(&got).body, "deflate");
        assert_eq!((inner.len(), inner[0].op, &inner[0].body), (1, 1000, &body));
    }
    // A short push is not worth compressing: RSV1 clear, an ordinary op-9 message.
    p.publish("room.live.1000", br#"{"test":1}"#).await;
    let (compressed, packet) = z.next_packet().await;
    assert!(!compressed);
    assert_eq!(packet.op, OP_RAW);
    assert_eq!(unwrap_raw(&packet.body, "deflate")[0].body, br#"{"test":1}"#);
    plain.expect_push(1000, br#"{"test":1}"#).await;

    // A compressed heartbeat (client → edge) is inflated and answered.
    z.send_packet(&Packet::new(1, OP_HEARTBEAT, 7, Vec::new()), true).await;
    let (_, reply) = z.next_packet().await;
    assert_eq!((reply.op, reply.seq), (OP_HEARTBEAT_REPLY, 7), "{reply:?}");
    // And an uncompressed one too (RSV1 is per message).
    z.send_packet(&Packet::new(1, OP_HEARTBEAT, 8, Vec::new()), false).await;
    let (_, reply) = z.next_packet().await;
    assert_eq!((reply.op, reply.seq), (OP_HEARTBEAT_REPLY, 8), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_offer_or_with_the_switch_off_nothing_is_negotiated_or_compressed() {
    let nats = NatsServer::start().await;
    let on = Edge::start(&nats, EdgeOpts::new()).await;
    let off = Edge::start(&nats, EdgeOpts::new().with("listen", "ws_permessage_deflate", "false")).await;
    let mut clients = vec![
        ("no offer", RawWs::connect(on.ws_addr(), None).await),
        ("switched off", RawWs::connect(off.ws_addr(), Some(BROWSER_OFFER)).await),
        ("unacceptable offer", RawWs::connect(on.ws_addr(), Some("permessage-deflate; server_max_window_bits=10")).await),
    ];
    for (i, (what, c)) in clients.iter_mut().enumerate() {
        assert_eq!(c.extensions, None, "{what}");
        c.auth(&Auth::new(10 + i as i64).room("live://1000")).await;
    }
    let body = chat_body(1);
    nats.publish("room.live.1000", &body).await;
    for (what, c) in &mut clients {
        let f = c.next_frame(WAIT).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!f.rsv1, "{what}: RSV1 without the extension");
        let inner = unwrap_raw(&parse_one(&f.payload).body, what);
        assert_eq!(inner[0].body, body, "{what}");
    }
    // RSV1 from a client without the extension is a protocol error: the connection is closed.
    let (_, c) = &mut clients[1];
    c.send_packet(&Packet::new(1, OP_HEARTBEAT, 2, Vec::new()), true).await;
    let how = c.closed().await;
    eprintln!("switched-off edge closed a compressed message's connection: {how}");
    stats_until(&nats, &off, "protocol error counted", |s| s["closed"]["protocol_error"].as_u64() >= Some(1)).await;
    // Nothing was agreed on either edge: the ws_deflate counter stays at zero.
    for edge in [&on, &off] {
        stats_until(&nats, edge, "no deflate agreed", |s| s["ws_deflate"].as_u64() == Some(0)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inflate_bomb_closes_the_connection_and_nothing_else() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut bomb = RawWs::connect(edge.ws_addr(), Some(BROWSER_OFFER)).await;
    assert_eq!(bomb.extensions.as_deref(), Some(AGREED));
    bomb.auth(&Auth::new(1)).await;
    // A heartbeat packet padded with zeros to 8 MB: about 8 KB compressed, within the 16 KB message
    // limit, inflating 500 times past it.
    let mut packet = Packet::new(1, OP_HEARTBEAT, 3, Vec::new()).encode();
    packet.resize(8 << 20, 0);
    let z = compress(&packet);
    assert!(z.len() < 16384, "{} bytes compressed", z.len());
    bomb.send_frame(0x2, true, &z).await.expect("send");
    let how = bomb.closed().await;
    eprintln!("bomb connection ended: {how}");
    stats_until(&nats, &edge, "protocol error counted", |s| s["closed"]["protocol_error"].as_u64() >= Some(1)).await;
    // The edge serves on.
    let mut next = RawWs::connect(edge.ws_addr(), Some(BROWSER_OFFER)).await;
    next.auth(&Auth::new(2)).await;
    next.send_packet(&Packet::new(1, OP_HEARTBEAT, 4, Vec::new()), true).await;
    let (_, reply) = next.next_packet().await;
    assert_eq!((reply.op, reply.seq), (OP_HEARTBEAT_REPLY, 4));
    // Both agreed to the extension: counted.
    stats_until(&nats, &edge, "two deflate connections counted", |s| s["ws_deflate"].as_u64() == Some(2)).await;
}
