//! Properties of the edge's pure input handling: the goim packet codec (TCP stream and WebSocket
//! message paths), the op-9 raw wrapper, and what the session does with client bodies (auth JSON, room
//! ids, accept lists) up to the NATS subjects they become.
//!
//! This file is compiled twice: as `goim_fuzz::edge_props` for the cargo-fuzz targets, and as a module of
//! `edge/tests/fuzz_smoke.rs` (proptest + corpus replay on stable). Keep it free of `crate::` paths and
//! of dependencies other than `goim_edge` and `bytes`.
//!
//! Input formats (documented in fuzz/README.md, produced by [`seeds`]):
//! - `packet_stream`: `[n] [n chunk-size bytes] [stream…]`, n = first byte % 8; chunk i has size
//!   `size[i % n] + 1`; n = 0 feeds the whole stream at once.
//! - `packet_frame`: the bytes of one WebSocket message.
//! - `ws_message`: a sequence of client WebSocket messages, each `[flags] [len: u16 BE] [payload]`
//!   (flags bit 0: text message); a short tail is the last message's payload.
//! - `ws_frames`: `[max] [n] [n chunk-size bytes] [client bytes after the upgrade…]` (see [`ws_frames`]).
//! - `auth_body`: `[key] [room] [accepts] [mode] [body…]`: the limits (byte × 4, × 4, × 8; 255 = the
//!   default) and which parser gets the body (mode % 3: auth body, op 12 room id, op 14/16 ops).

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use goim_edge::config::LimitsConfig;
use goim_edge::protocol::raw;
use goim_edge::protocol::websocket::{
    frame as ws_frame, Decoder as WsDecoder, FrameError, Message, OP_BINARY, OP_PING, OP_TEXT,
};
use goim_edge::protocol::{
    decode_frame, DecodeError, Packet, StreamDecoder, HEADER_LEN, MAX_BODY_LEN,
};
use goim_edge::session::auth::{check_room, parse_auth_body, parse_ops, AuthBody, AuthError};
use goim_edge::subjects::{key_subject, room_id_of, room_subject};

// ---------------------------------------------------------------------------------------------------
// (a) the packet decoder

/// What a decoder made of a byte stream: the packets, and how it stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamOutcome {
    pub packets: Vec<Packet>,
    /// The reason the connection would be closed, if any.
    pub error: Option<DecodeError>,
    /// Bytes left waiting for more input (only meaningful without an error).
    pub pending: usize,
}

/// Feed `stream` to a [`StreamDecoder`] in chunks of the given sizes (cycled; empty = all at once),
/// pulling every complete packet after each chunk and releasing an empty buffer, as the TCP reader does.
pub fn decode_stream(stream: &[u8], chunk_sizes: &[usize]) -> StreamOutcome {
    let mut d = if chunk_sizes.is_empty() {
        StreamDecoder::default()
    } else {
        StreamDecoder::with_capacity(0)
    };
    let mut packets = Vec::new();
    let mut fed = 0;
    let mut i = 0;
    loop {
        let n = if chunk_sizes.is_empty() {
            stream.len()
        } else {
            chunk_sizes[i % chunk_sizes.len()].max(1)
        };
        i += 1;
        let end = (fed + n).min(stream.len());
        d.buffer().extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match d.next_packet() {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => break,
                Err(e) => {
                    return StreamOutcome {
                        packets,
                        error: Some(e),
                        pending: d.pending(),
                    }
                }
            }
        }
        // As `transport/tcp.rs` does before it waits for the socket.
        d.release_if_empty();
        assert!(d.pending() <= fed, "decoder holds more than it was fed");
        if fed == stream.len() {
            return StreamOutcome {
                packets,
                error: None,
                pending: d.pending(),
            };
        }
    }
}

fn pack_len_at(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// `p` was decoded from the front of `input`: its re-encoding is the same bytes, except that a
/// `packLen` below 16 (goim reads no body then) re-encodes as 16. Returns the bytes it used.
pub fn assert_reencodes(p: &Packet, input: &[u8]) -> usize {
    assert!(
        p.body.len() <= MAX_BODY_LEN,
        "inbound body of {} bytes",
        p.body.len()
    );
    let used = HEADER_LEN + p.body.len();
    assert!(input.len() >= used);
    let declared = pack_len_at(input);
    if declared >= HEADER_LEN as i32 {
        assert_eq!(
            declared as usize, used,
            "packLen and the bytes consumed disagree"
        );
    } else {
        assert!(
            p.body.is_empty(),
            "packLen {declared} < 16 but a body was read"
        );
    }
    let enc = p.encode();
    assert_eq!(enc.len(), used);
    assert_eq!(pack_len_at(&enc), declared.max(HEADER_LEN as i32));
    assert_eq!(
        &enc[4..],
        &input[4..used],
        "re-encoding differs from the input"
    );
    used
}

/// The TCP path: no panic; the same packets and the same verdict whatever the chunking; every packet
/// re-encodes to the bytes it came from and equals what [`decode_frame`] reads at its offset; what
/// stops the decoder is exactly what `decode_frame` reports there.
pub fn check_stream(stream: &[u8], chunk_sizes: &[usize]) {
    let whole = decode_stream(stream, &[]);
    let mut off = 0;
    for p in &whole.packets {
        assert_eq!(
            decode_frame(&stream[off..]).as_ref(),
            Ok(p),
            "stream and frame decoders disagree at {off}"
        );
        off += assert_reencodes(p, &stream[off..]);
    }
    let rest = &stream[off..];
    match &whole.error {
        Some(e) => assert_eq!(decode_frame(rest).as_ref(), Err(e)),
        None => {
            assert_eq!(whole.pending, rest.len(), "bytes lost or duplicated");
            match decode_frame(rest) {
                Err(DecodeError::ShortFrame(_)) | Err(DecodeError::TruncatedFrame { .. }) => {}
                other => panic!("decoder waits for more, but decode_frame says {other:?}"),
            }
        }
    }
    if !chunk_sizes.is_empty() {
        let chunked = decode_stream(stream, chunk_sizes);
        assert_eq!(
            chunked.packets, whole.packets,
            "chunking changed the packets"
        );
        assert_eq!(chunked.error, whole.error, "chunking changed the verdict");
        if whole.error.is_none() {
            assert_eq!(chunked.pending, whole.pending);
        }
    }
}

/// Target `packet_stream`: `[n] [n chunk sizes] [stream…]`.
pub fn packet_stream(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 8) as usize;
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);
    let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize + 1).collect();
    check_stream(stream, &sizes);
}

/// Target `packet_frame`: one WebSocket message through [`decode_frame`] (no panic, re-encodes to
/// the bytes it came from, agrees with the stream decoder), and the op-9 unwrapper on the same bytes
/// and on a decoded op-9 body.
pub fn packet_frame(data: &[u8]) {
    let _ = check_frame(data);
    check_raw(data);
}

pub fn check_frame(msg: &[u8]) -> Result<Packet, DecodeError> {
    let r = decode_frame(msg);
    let mut d = StreamDecoder::default();
    d.buffer().extend_from_slice(msg);
    let s = d.next_packet();
    match &r {
        Ok(p) => {
            assert_reencodes(p, msg);
            assert_eq!(s.as_ref(), Ok(&Some(p.clone())));
            if p.op == goim_edge::protocol::op::RAW {
                check_raw(&p.body);
            }
        }
        Err(DecodeError::ShortFrame(n)) => {
            assert_eq!(*n, msg.len());
            assert!(msg.len() < HEADER_LEN);
            assert_eq!(s, Ok(None));
        }
        Err(DecodeError::TruncatedFrame { have, want }) => {
            assert_eq!(*have, msg.len());
            assert!(have < want && *want <= goim_edge::protocol::MAX_PACKET_LEN);
            assert_eq!(s, Ok(None));
        }
        Err(e) => assert_eq!(s.as_ref(), Err(e)),
    }
    r
}

/// The op-9 body splitter (what goim's JS client does with a push): no panic; what it splits re-joins
/// to the same bytes (apart from the inner headerLen, which the splitter does not read), and
/// re-wrapping gives an op-9 packet around exactly those bytes.
pub fn check_raw(body: &[u8]) {
    let Ok(inner) = raw::unwrap(body) else { return };
    let mut off = 0;
    let mut encoded = Vec::with_capacity(inner.len());
    for p in &inner {
        let enc = p.encode();
        assert!(off + enc.len() <= body.len());
        let src = &body[off..off + enc.len()];
        assert_eq!(&enc[..4], &src[..4]);
        assert_eq!(&enc[6..], &src[6..]);
        off += enc.len();
        encoded.push(enc);
    }
    assert_eq!(off, body.len(), "unwrap left bytes unaccounted for");
    let wrapped = raw::wrap(encoded.iter());
    assert_eq!(wrapped.len(), HEADER_LEN + body.len());
    assert_eq!(pack_len_at(&wrapped) as usize, wrapped.len());
    assert_eq!(&wrapped[8..12], &goim_edge::protocol::op::RAW.to_be_bytes());
    let again = raw::unwrap(&wrapped[HEADER_LEN..]).expect("re-wrapped packets unwrap");
    assert_eq!(again, inner);
}

// ---------------------------------------------------------------------------------------------------
// (b) the WebSocket path

/// One client WebSocket message as the edge's reader sees it after tungstenite's framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsMessage {
    pub text: bool,
    pub payload: Vec<u8>,
}

/// Split the `ws_message` input into messages: `[flags] [len u16 BE] [payload]`, repeated.
pub fn ws_messages_of(mut data: &[u8]) -> Vec<WsMessage> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let text = data[0] & 1 == 1;
        let len = u16::from_be_bytes([data[1], data[2]]) as usize;
        let rest = &data[3..];
        let take = len.min(rest.len());
        out.push(WsMessage {
            text,
            payload: rest[..take].to_vec(),
        });
        data = &rest[take..];
    }
    out
}

/// Encode messages in the `ws_message` input format (seeds, tests).
pub fn ws_input(msgs: &[WsMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.push(m.text as u8);
        out.extend_from_slice(&(m.payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&m.payload);
    }
    out
}

/// Target `ws_message`: what a WebSocket client's messages do to a connection, without the socket.
/// Per message, as in `transport/ws.rs`: oversized messages and text that is not UTF-8 end the
/// connection (tungstenite), the first packet of the message is decoded (`decode_frame`; an error
/// closes), and the body goes to the parser the session uses for its op (auth, room change, sub/unsub,
/// raw). Checks no panic and every per-parser property.
pub fn ws_message(data: &[u8]) {
    let limits = LimitsConfig::default();
    for m in ws_messages_of(data) {
        if m.payload.len() > limits.max_ws_message_bytes {
            return;
        }
        if m.text && std::str::from_utf8(&m.payload).is_err() {
            return;
        }
        let Ok(p) = check_frame(&m.payload) else {
            return;
        };
        dispatch(&p, &limits);
    }
}

/// What the session does with a decoded client packet's body, minus the I/O.
pub fn dispatch(p: &Packet, limits: &LimitsConfig) {
    use goim_edge::protocol::op;
    match p.op {
        op::AUTH => {
            check_auth_body(&p.body, limits);
        }
        op::CHANGE_ROOM => check_room_body(&p.body, limits),
        op::SUB | op::UNSUB => check_ops(&p.body),
        op::RAW => check_raw(&p.body),
        _ => {}
    }
}

/// Decode a client byte stream (after the HTTP upgrade) with the edge's RFC 6455 decoder, fed in
/// chunks of the given sizes (cycled; empty = all at once): the messages, and the error if any.
pub fn decode_ws_frames(
    stream: &[u8],
    chunk_sizes: &[usize],
    max_message: usize,
) -> (Vec<Message>, Option<FrameError>) {
    // With permessage-deflate agreed: the superset (RSV1 messages are inflated, bounded by the same
    // limit; every stream valid without the extension decodes the same with it).
    let mut d = WsDecoder::new(max_message, true);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let (mut fed, mut i) = (0, 0);
    loop {
        let n = if chunk_sizes.is_empty() {
            stream.len()
        } else {
            chunk_sizes[i % chunk_sizes.len()].max(1)
        };
        i += 1;
        let end = (fed + n).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        // A declared length never makes the decoder allocate beyond one message (plus Vec growth).
        assert!(
            buf.capacity() <= 2 * (stream.len() + max_message.max(125) + 14) + 64,
            "buffer capacity {} for {} input bytes",
            buf.capacity(),
            stream.len()
        );
        if fed == stream.len() {
            return (out, None);
        }
    }
}

/// The same message as a client would send it: one final frame, masked with `mask`.
pub fn client_ws_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let server = ws_frame(opcode, payload);
    let len_bytes = server.len() - payload.len() - 2;
    let mut v = vec![server[0], server[1] | 0x80];
    v.extend_from_slice(&server[2..2 + len_bytes]);
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// Target `ws_frames`: `[max] [n] [n chunk sizes] [stream…]`, max = byte × 64 (255 = the default
/// `limits.max_ws_message_bytes`). The edge's own WebSocket frame decoder (`protocol::websocket`): no
/// panic, no allocation driven by a declared length, the same messages and verdict whatever the
/// chunking, text is UTF-8, data messages within the limit, control payloads within 125 bytes, every
/// message re-framed by a client decodes to itself; then each data message goes down the goim path
/// as in [`ws_message`].
pub fn ws_frames(data: &[u8]) {
    let [max, n, rest @ ..] = data else { return };
    let limits = LimitsConfig::default();
    let max_message = if *max == 255 {
        limits.max_ws_message_bytes
    } else {
        *max as usize * 64
    };
    let n = (n % 8) as usize;
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);
    let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize + 1).collect();
    let (msgs, err) = decode_ws_frames(stream, &[], max_message);
    if !sizes.is_empty() {
        assert_eq!(
            decode_ws_frames(stream, &sizes, max_message),
            (msgs.clone(), err.clone()),
            "chunking changed the result"
        );
    }
    for m in &msgs {
        let (opcode, payload) = match m {
            Message::Binary(p) => (OP_BINARY, p.clone()),
            Message::Text(p) => {
                assert!(std::str::from_utf8(p).is_ok(), "text message is not UTF-8");
                (OP_TEXT, p.clone())
            }
            Message::Ping(p) => (OP_PING, p.clone()),
            Message::Pong | Message::Close(_) => continue,
        };
        if opcode == OP_PING {
            assert!(payload.len() <= 125);
        } else {
            assert!(
                payload.len() <= max_message,
                "message of {} bytes over the limit {max_message}",
                payload.len()
            );
        }
        let again = decode_ws_frames(
            &client_ws_frame(opcode, &payload, [0x37, 0xfa, 0x21, 0x3d]),
            &[],
            max_message,
        );
        assert_eq!(
            again,
            (vec![m.clone()], None),
            "re-framed message decodes differently"
        );
        if opcode != OP_PING {
            if let Ok(p) = check_frame(&payload) {
                dispatch(&p, &limits);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// (c) auth bodies, room ids and accept lists

/// Limits from three selector bytes: 255 = the default, otherwise byte × 4 (key, room) or × 8 (accepts).
pub fn limits_of(key: u8, room: u8, accepts: u8) -> LimitsConfig {
    let d = LimitsConfig::default();
    LimitsConfig {
        max_key_len: if key == 255 {
            d.max_key_len
        } else {
            key as usize * 4
        },
        max_room_id_len: if room == 255 {
            d.max_room_id_len
        } else {
            room as usize * 4
        },
        max_accepts: if accepts == 255 {
            d.max_accepts
        } else {
            accepts as usize * 8
        },
        ..d
    }
}

/// Target `auth_body`: `[key] [room] [accepts] [mode] [body…]`.
pub fn auth_body(data: &[u8]) {
    let [k, r, a, mode, body @ ..] = data else {
        return;
    };
    let limits = limits_of(*k, *r, *a);
    match mode % 3 {
        0 => {
            check_auth_body(body, &limits);
        }
        1 => check_room_body(body, &limits),
        _ => check_ops(body),
    }
}

/// A room id or key becomes NATS subject tokens: only `[A-Za-z0-9_=-]`, never empty, and the room map
/// is reversible (so one client's room can never be confused with another's).
pub fn check_subjects(room_id: &str, key: &str) {
    let subject = room_subject(room_id);
    let tokens: Vec<&str> = subject.split('.').collect();
    assert!(tokens.len() == 2 || tokens.len() == 3, "{subject:?}");
    for t in &tokens {
        assert!(
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_=-".contains(&b)),
            "unsafe subject {subject:?} for room {room_id:?}"
        );
    }
    assert_eq!(
        room_id_of(&subject).as_deref(),
        Some(room_id),
        "room map not reversible"
    );
    let ks = key_subject(key);
    let t = ks.strip_prefix("key.").expect("key subject prefix");
    assert!(
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_=-".contains(&b)),
        "{ks:?}"
    );
}

/// Serialize an accepted auth body back to JSON (goim field names).
pub fn auth_json(a: &AuthBody) -> Vec<u8> {
    fn s(v: &str) -> String {
        // Minimal JSON string escaping, independent of serde_json (not a goim-edge dependency here).
        let mut o = String::from("\"");
        for c in v.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }
    let accepts: Vec<String> = a.accepts.iter().map(|o| o.to_string()).collect();
    let mut out = format!(
        "{{\"mid\":{},\"key\":{},\"room_id\":{},\"platform\":{},\"accepts\":[{}]",
        a.mid,
        s(&a.key),
        s(&a.room_id),
        s(&a.platform),
        accepts.join(",")
    );
    if let Some(t) = &a.token {
        out.push_str(&format!(",\"token\":{}", s(t)));
    }
    if let Some(r) = &a.resume {
        let f = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        out.push_str(&format!(
            ",\"resume\":{{\"room\":{},\"user\":{},\"broadcast\":{}}}",
            f(r.room),
            f(r.user),
            f(r.broadcast)
        ));
    }
    out.push('}');
    out.into_bytes()
}

/// `parse_auth_body`: no panic; an accepted body respects every limit, re-serializes to a body that
/// parses to the same value, and is accepted under the default limits whenever they are at least as
/// large; a bound error names a length beyond its limit; its key and room make safe subjects.
pub fn check_auth_body(body: &[u8], limits: &LimitsConfig) -> Option<AuthBody> {
    let r = parse_auth_body(body, limits);
    match &r {
        Ok(a) => {
            assert!(a.key.len() <= limits.max_key_len);
            assert!(a.room_id.len() <= limits.max_room_id_len);
            assert!(a.accepts.len() <= limits.max_accepts);
            assert_eq!(check_room(&a.room_id, limits), Ok(()));
            let again = parse_auth_body(&auth_json(a), limits);
            assert_eq!(again.as_ref(), Ok(a), "auth body does not round-trip");
            let wide = LimitsConfig {
                max_key_len: usize::MAX,
                max_room_id_len: usize::MAX,
                max_accepts: usize::MAX,
                ..limits.clone()
            };
            assert_eq!(
                parse_auth_body(body, &wide).as_ref(),
                Ok(a),
                "wider limits changed the result"
            );
            check_subjects(&a.room_id, &a.key);
        }
        Err(AuthError::KeyTooLong(n)) => assert!(*n > limits.max_key_len),
        Err(AuthError::RoomTooLong(n)) => assert!(*n > limits.max_room_id_len),
        Err(AuthError::TooManyAccepts(n)) => assert!(*n > limits.max_accepts),
        Err(AuthError::Json(_)) => {
            // JSON errors do not depend on the limits.
            let wide = LimitsConfig {
                max_key_len: usize::MAX,
                max_room_id_len: usize::MAX,
                max_accepts: usize::MAX,
                ..limits.clone()
            };
            assert!(matches!(
                parse_auth_body(body, &wide),
                Err(AuthError::Json(_))
            ));
        }
    }
    r.ok()
}

/// Op 12: the body must be UTF-8 and within the room bound (as the session checks it).
pub fn check_room_body(body: &[u8], limits: &LimitsConfig) {
    let Ok(id) = std::str::from_utf8(body) else {
        return;
    };
    match check_room(id, limits) {
        Ok(()) => {
            assert!(id.len() <= limits.max_room_id_len);
            check_subjects(id, id);
        }
        Err(AuthError::RoomTooLong(n)) => assert!(n == id.len() && n > limits.max_room_id_len),
        Err(e) => panic!("check_room returned {e:?}"),
    }
}

/// Ops 14/16: `parse_ops` accepts exactly comma-separated int32s, and what it returns prints back to
/// a list it parses to the same ops.
pub fn check_ops(body: &[u8]) {
    let Some(ops) = parse_ops(body) else { return };
    assert!(!ops.is_empty());
    let text = std::str::from_utf8(body).expect("accepted ops are UTF-8");
    assert_eq!(text.split(',').count(), ops.len());
    let printed: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
    assert_eq!(parse_ops(printed.join(",").as_bytes()), Some(ops));
}

// ---------------------------------------------------------------------------------------------------
// Seeds

fn packet(ver: i16, op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
    Packet::new(ver, op, seq, Bytes::copy_from_slice(body))
        .encode()
        .to_vec()
}

/// The committed seed corpus: `(target, file name, bytes)`. `edge/tests/fuzz_smoke.rs` writes them to
/// `fuzz/corpus/<target>/<name>` with `GOIM_WRITE_CORPUS=1` and otherwise checks they are there.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use goim_edge::protocol::{encode_push, op};
    let auth = br#"{"mid":123,"key":"","room_id":"live://1000","platform":"web","accepts":[1000,1001,1002]}"#;
    let auth_token = br#"{"mid":0,"room_id":"live://1000","platform":"ios","accepts":[1000],"token":"eyJhbGciOiJFZERTQSJ9.e30.c2ln","resume":{"room":5,"user":null}}"#;
    let hb = packet(1, op::HEARTBEAT, 1, b"");
    let auth_p = packet(1, op::AUTH, 1, auth);
    let room_p = packet(1, op::CHANGE_ROOM, 2, b"live://1001");
    let sub_p = packet(1, op::SUB, 3, b"1000,1001");
    let unsub_p = packet(0, op::UNSUB, 4, b"-5,+7");
    let send_p = packet(1, op::SEND_MSG, 5, b"{\"hello\":1}");
    let hist_p = packet(1, op::HISTORY, 6, br#"{"target":"room","limit":10}"#);
    let short_len = {
        let mut v = packet(1, op::HEARTBEAT, 7, b"");
        v[..4].copy_from_slice(&3i32.to_be_bytes());
        v
    };
    let max_body = packet(1, op::SEND_MSG, 8, &[b'x'; MAX_BODY_LEN]);
    let too_big = {
        let mut v = packet(1, op::SEND_MSG, 9, b"");
        v[..4].copy_from_slice(&4113i32.to_be_bytes());
        v
    };
    let bad_header = {
        let mut v = packet(1, op::HEARTBEAT, 10, b"");
        v[4..6].copy_from_slice(&15i16.to_be_bytes());
        v
    };
    let raw9 = raw::wrap([&encode_push(1000, b"{\"test\":1}"), &encode_push(1001, b"")]).to_vec();
    let session: Vec<u8> = [
        &auth_p[..],
        &hb,
        &room_p,
        &sub_p,
        &unsub_p,
        &send_p,
        &hist_p,
    ]
    .concat();

    let mut out: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    let mut stream = |name, sizes: &[u8], bytes: &[u8]| {
        let mut v = vec![sizes.len() as u8];
        v.extend_from_slice(sizes);
        v.extend_from_slice(bytes);
        out.push(("packet_stream", name, v));
    };
    stream("session-whole", &[], &session);
    stream("session-1byte", &[0], &session);
    stream("session-3-7-16", &[2, 6, 15], &session);
    stream("heartbeat", &[], &hb);
    stream("packlen-below-16", &[4], &short_len);
    stream("max-body", &[255, 100], &max_body);
    stream("packlen-4113", &[], &too_big);
    stream("headerlen-15", &[], &bad_header);
    stream("truncated", &[1], &auth_p[..auth_p.len() - 5]);
    stream("raw-push", &[], &raw9);

    for (name, bytes) in [
        ("heartbeat", hb.clone()),
        ("auth", auth_p.clone()),
        ("auth-trailing", [&auth_p[..], b"trailing garbage"].concat()),
        ("change-room", room_p.clone()),
        ("sub", sub_p.clone()),
        ("raw-push", raw9.clone()),
        ("max-body", max_body.clone()),
        ("packlen-below-16", short_len.clone()),
        ("truncated", auth_p[..20].to_vec()),
        ("short", hb[..15].to_vec()),
    ] {
        out.push(("packet_frame", name, bytes));
    }

    let m = |text: bool, payload: &[u8]| WsMessage {
        text,
        payload: payload.to_vec(),
    };
    out.push((
        "ws_message",
        "session",
        ws_input(&[
            m(false, &auth_p),
            m(false, &hb),
            m(false, &room_p),
            m(false, &sub_p),
            m(true, &unsub_p),
            m(false, &send_p),
        ]),
    ));
    out.push((
        "ws_message",
        "text-auth",
        ws_input(&[m(true, &auth_p), m(true, &hb)]),
    ));
    out.push((
        "ws_message",
        "raw-then-garbage",
        ws_input(&[m(false, &raw9), m(false, b"\x00\x01garbage")]),
    ));
    out.push((
        "ws_message",
        "two-packets-one-message",
        ws_input(&[m(false, &[&hb[..], &sub_p[..]].concat())]),
    ));

    let ws = |opcode: u8, payload: &[u8]| client_ws_frame(opcode, payload, [1, 2, 3, 4]);
    let fragmented = {
        // auth split over a text frame, a ping, and a continuation.
        let (a, b) = auth_p.split_at(10);
        let mut first = ws(0x2, a);
        first[0] &= 0x7f; // not final
        let mut v = first;
        v.extend(ws(OP_PING, b"ping"));
        v.extend(ws(0x0, b));
        v
    };
    let mut frames = |name, max: u8, sizes: &[u8], bytes: &[u8]| {
        let mut v = vec![max, sizes.len() as u8];
        v.extend_from_slice(sizes);
        v.extend_from_slice(bytes);
        out.push(("ws_frames", name, v));
    };
    let session_frames: Vec<u8> = [
        ws(OP_BINARY, &auth_p),
        ws(OP_BINARY, &hb),
        ws(OP_TEXT, &room_p),
        ws(OP_BINARY, &sub_p),
        ws(0x8, &[0x03, 0xe8]),
    ]
    .concat();
    frames("session", 255, &[], &session_frames);
    frames("session-chunked", 255, &[0, 6, 40], &session_frames);
    frames("fragmented-auth-with-ping", 255, &[3], &fragmented);
    frames("max-body-packet", 255, &[], &ws(OP_BINARY, &max_body));
    frames("over-limit", 1, &[], &ws(OP_BINARY, &[0u8; 65]));
    frames(
        "huge-declared-length",
        255,
        &[],
        &[
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ],
    );
    frames("unmasked", 255, &[], &[0x82, 0x02, 0, 0]);

    let mut auth_seed = |name, prefix: [u8; 4], body: &[u8]| {
        let mut v = prefix.to_vec();
        v.extend_from_slice(body);
        out.push(("auth_body", name, v));
    };
    let d = [255, 255, 255, 0];
    auth_seed("goim-js-demo", d, auth);
    auth_seed("token-resume", d, auth_token);
    auth_seed("empty-object", d, b"{}");
    auth_seed(
        "zero-values",
        d,
        br#"{"mid":null,"extra":{"x":[1,2]},"token":"t"}"#,
    );
    auth_seed("wrong-type", d, br#"{"mid":"123"}"#);
    auth_seed(
        "escapes",
        d,
        br#"{"key":"a\"b\\c\u0000\ud83d\ude00","room_id":"a.b://c d*>"}"#,
    );
    auth_seed("tight-limits", [1, 2, 0, 0], auth);
    auth_seed("room", [255, 255, 255, 1], b"live://1000");
    auth_seed("room-odd", [255, 255, 255, 1], b"a.b://c d://e");
    auth_seed("ops", [255, 255, 255, 2], b"1000,1001,-5,+7");
    auth_seed("ops-bad", [255, 255, 255, 2], b"1000, 1001");
    out
}
