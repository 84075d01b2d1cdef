//! RFC 6455 framing, server side, as pure code with no I/O: client frames (always masked) decoded
//! into messages, server frames (never masked) encoded.
//!
//! The edge frames WebSocket itself instead of through tungstenite so that an idle connection holds
//! no buffer (tungstenite keeps read and write buffers per connection, several KB each) and so that
//! one encoded frame can be shared by every member of a room. Only what goim needs is here: binary
//! and text messages (fragmented or not, bounded), ping/pong, close, and the one extension the edge
//! negotiates, permessage-deflate ([`super::deflate`]): with it, RSV1 on the first frame of a data
//! message marks the message compressed (inflated here, bounded by the message limit); any other
//! reserved bit, or RSV1 without the extension or on a control or continuation frame, is an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Binary(Bytes),
    /// Valid UTF-8 (checked).
    Text(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close frame, with its status code if it sent one.
    Close(Option<u16>),
}

/// Why the client's bytes are not valid WebSocket: the connection is failed (closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frame is not masked")]
    Unmasked,
    #[error("reserved bits set that no negotiated extension defines")]
    ReservedBits,
    #[error("compressed message: {0}")]
    Inflate(#[from] super::deflate::InflateError),
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame is fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is unfinished")]
    UnfinishedMessage,
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame payload is malformed")]
    BadClose,
}

/// Decoder state of one connection: only a fragmented message in progress, if any.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// permessage-deflate was negotiated (without client context takeover): RSV1 is allowed on the
    /// first frame of a data message, and such a message is inflated on its own.
    deflate: bool,
    /// Opcode, compressed flag and payload so far of a fragmented message (boxed: rare, and the
    /// decoder lives in every connection's memory).
    partial: Option<Box<(u8, bool, BytesMut)>>,
}

/// One unmasked frame: (fin, rsv1, opcode, payload).
type Frame = (bool, bool, u8, Bytes);

impl Decoder {
    /// `max_message`: the largest message, compressed or inflated; `deflate`: permessage-deflate
    /// was negotiated for this connection.
    pub fn new(max_message: usize, deflate: bool) -> Decoder {
        Decoder { max_message, deflate, partial: None }
    }

    /// The next complete message in `buf` (consumed), `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(frame) = self.next_frame(buf)? else { return Ok(None) };
            let (fin, rsv1, opcode, payload) = frame;
            // RSV1 means "compressed" on the first frame of a data message only (RFC 7692 §6.1).
            if rsv1 && !(self.deflate && (opcode == OP_TEXT || opcode == OP_BINARY)) {
                return Err(FrameError::ReservedBits);
            }
            match opcode {
                OP_CONTINUATION => {
                    let Some(mut partial) = self.partial.take() else {
                        return Err(FrameError::UnexpectedContinuation);
                    };
                    partial.2.extend_from_slice(&payload);
                    if !fin {
                        self.partial = Some(partial);
                        continue;
                    }
                    let (first, compressed, so_far) = *partial;
                    return self.data_message(first, compressed, so_far.freeze()).map(Some);
                }
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(FrameError::UnfinishedMessage);
                    }
                    if !fin {
                        self.partial = Some(Box::new((opcode, rsv1, BytesMut::from(&payload[..]))));
                        continue;
                    }
                    return self.data_message(opcode, rsv1, payload).map(Some);
                }
                OP_PING => return Ok(Some(Message::Ping(payload))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_CLOSE => {
                    return match payload.len() {
                        0 => Ok(Some(Message::Close(None))),
                        1 => Err(FrameError::BadClose),
                        _ => {
                            std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::BadClose)?;
                            Ok(Some(Message::Close(Some(u16::from_be_bytes([payload[0], payload[1]])))))
                        }
                    };
                }
                other => return Err(FrameError::UnknownOpcode(other)),
            }
        }
    }

    /// One whole frame off the front of `buf`, unmasked.
    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = b0 & 0x0F;
        // RSV2 and RSV3: no extension defines them. RSV1 is checked against the message in decode.
        if b0 & 0x30 != 0 {
            return Err(FrameError::ReservedBits);
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let (len, len_bytes) = match b1 & 0x7F {
            126 if buf.len() < 4 => return Ok(None),
            126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 2),
            127 if buf.len() < 10 => return Ok(None),
            127 => (u64::from_be_bytes([buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9]]), 8),
            n => (u64::from(n), 0),
        };
        let control = opcode & 0x08 != 0;
        if control && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
            return Err(FrameError::BadControlFrame);
        }
        // Checked before buffering the payload: a hostile length never makes the edge allocate.
        let so_far = self.partial.as_ref().map_or(0, |p| p.2.len() as u64);
        if !control && len.saturating_add(so_far) > self.max_message as u64 {
            return Err(FrameError::TooLarge { len: len.saturating_add(so_far), max: self.max_message });
        }
        let header = 2 + len_bytes + 4;
        let len = len as usize; // ≤ max_message or ≤ 125
        if buf.len() < header + len {
            buf.reserve(header + len - buf.len());
            return Ok(None);
        }
        let mask = [buf[header - 4], buf[header - 3], buf[header - 2], buf[header - 1]];
        buf.advance(header);
        let mut payload = buf.split_to(len);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        Ok(Some((fin, rsv1, opcode, payload.freeze())))
    }

    /// A whole data message, inflated first if it was compressed.
    fn data_message(&self, opcode: u8, compressed: bool, payload: Bytes) -> Result<Message, FrameError> {
        let payload = if compressed { super::deflate::inflate(&payload, self.max_message)? } else { payload };
        data_message(opcode, payload)
    }
}

fn data_message(opcode: u8, payload: Bytes) -> Result<Message, FrameError> {
    if opcode == OP_TEXT {
        std::str::from_utf8(&payload).map_err(|_| FrameError::InvalidUtf8)?;
        return Ok(Message::Text(payload));
    }
    Ok(Message::Binary(payload))
}

/// Append the header of an unmasked, final server frame carrying `len` payload bytes.
pub fn put_frame_header(dst: &mut BytesMut, opcode: u8, len: usize) {
    put_header(dst, 0x80 | opcode, len);
}

/// Append the header of an unmasked, final server frame carrying a whole compressed message of
/// `len` payload bytes (RSV1 set: permessage-deflate, RFC 7692 §6.1).
pub fn put_compressed_frame_header(dst: &mut BytesMut, opcode: u8, len: usize) {
    put_header(dst, 0x80 | 0x40 | opcode, len);
}

fn put_header(dst: &mut BytesMut, b0: u8, len: usize) {
    dst.put_u8(b0);
    if len < 126 {
        dst.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        dst.put_u8(126);
        dst.put_u16(len as u16);
    } else {
        dst.put_u8(127);
        dst.put_u64(len as u64);
    }
}

/// A frame as a client (a browser) sends it, masked with `mask`: the other direction, for the edge's
/// tests and for test clients. `opcode` is the first byte's low seven bits, so the RSV bits can be set
/// too (RSV1 = 0x40: a permessage-deflate message).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    v.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= 65535 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// A whole unmasked server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(10 + payload.len());
    put_frame_header(&mut dst, opcode, payload.len());
    dst.extend_from_slice(payload);
    dst.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut buf)? {
            out.push(m);
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn messages_of_every_length_class() {
        let mut d = Decoder::new(1 << 20, false);
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let got = decode_all(&mut d, &client_frame(true, OP_BINARY, &payload, [1, 2, 3, 4])).unwrap();
            assert_eq!(got, vec![Message::Binary(Bytes::from(payload))], "len {len}");
        }
    }

    #[test]
    fn fragments_with_control_frames_between() {
        let mut d = Decoder::new(100, false);
        let mut bytes = client_frame(false, OP_TEXT, b"he", [9, 9, 9, 9]);
        bytes.extend(client_frame(true, OP_PING, b"p", [1, 1, 1, 1]));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"ll", [2, 2, 2, 2]));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"o", [3, 3, 3, 3]));
        bytes.extend(client_frame(true, OP_CLOSE, &[0x03, 0xE8], [4, 4, 4, 4]));
        let got = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(Bytes::from_static(b"hello")),
                Message::Close(Some(1000))
            ]
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![0x82, 0x01, b'x'], FrameError::Unmasked),
            (client_frame(true, 0x2 | 0x40, b"x", [0; 4]), FrameError::ReservedBits),
            (client_frame(true, 0x3, b"x", [0; 4]), FrameError::UnknownOpcode(3)),
            (client_frame(false, OP_PING, b"x", [0; 4]), FrameError::BadControlFrame),
            (client_frame(true, OP_PING, &[0; 126], [0; 4]), FrameError::BadControlFrame),
            (client_frame(true, OP_CONTINUATION, b"x", [0; 4]), FrameError::UnexpectedContinuation),
            (client_frame(true, OP_TEXT, &[0xFF, 0xFE], [0; 4]), FrameError::InvalidUtf8),
            (client_frame(true, OP_CLOSE, &[0x03], [0; 4]), FrameError::BadClose),
            (client_frame(true, OP_BINARY, &[0; 11], [0; 4]), FrameError::TooLarge { len: 11, max: 10 }),
        ];
        for (bytes, want) in cases {
            let mut d = Decoder::new(10, false);
            assert_eq!(decode_all(&mut d, &bytes), Err(want.clone()), "{want}");
        }
        // A new data frame in the middle of a fragmented message.
        let mut d = Decoder::new(10, false);
        let mut bytes = client_frame(false, OP_BINARY, b"a", [0; 4]);
        bytes.extend(client_frame(true, OP_BINARY, b"b", [0; 4]));
        assert_eq!(decode_all(&mut d, &bytes), Err(FrameError::UnfinishedMessage));
        // Fragments adding up beyond the limit.
        let mut d = Decoder::new(10, false);
        let mut bytes = client_frame(false, OP_BINARY, &[0; 6], [0; 4]);
        bytes.extend(client_frame(true, OP_CONTINUATION, &[0; 6], [0; 4]));
        assert_eq!(decode_all(&mut d, &bytes), Err(FrameError::TooLarge { len: 12, max: 10 }));
    }

    /// A client's compressed message: RSV1 on the first frame, payload deflated as RFC 7692 says.
    fn compressed(message: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(message).unwrap();
        let mut z = enc.flush_finish().unwrap();
        assert!(z.ends_with(&[0, 0, 0xFF, 0xFF]));
        z.truncate(z.len() - 4);
        z
    }

    #[test]
    fn compressed_messages_are_inflated_when_deflate_was_negotiated() {
        let text = b"a heartbeat or any other goim packet, compressed by the client".repeat(2);
        let z = compressed(&text);
        let mut d = Decoder::new(1000, true);
        // Whole, then fragmented (RSV1 on the first frame only), then uncompressed (legal too).
        let mut bytes = client_frame(true, OP_BINARY | 0x40, &z, [1, 2, 3, 4]);
        bytes.extend(client_frame(false, OP_TEXT | 0x40, &z[..5], [5, 5, 5, 5]));
        bytes.extend(client_frame(true, OP_PING, b"p", [1, 1, 1, 1]));
        bytes.extend(client_frame(true, OP_CONTINUATION, &z[5..], [6, 6, 6, 6]));
        bytes.extend(client_frame(true, OP_BINARY, b"plain", [7, 7, 7, 7]));
        let got = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Message::Binary(Bytes::from(text.clone())),
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(Bytes::from(text.clone())),
                Message::Binary(Bytes::from_static(b"plain")),
            ]
        );
    }

    #[test]
    fn rsv1_is_an_error_where_it_means_nothing() {
        let z = compressed(b"hello hello hello");
        // Without the extension.
        let mut d = Decoder::new(1000, false);
        assert_eq!(decode_all(&mut d, &client_frame(true, OP_BINARY | 0x40, &z, [0; 4])), Err(FrameError::ReservedBits));
        // On control frames and continuation frames, and RSV2/RSV3 always.
        let cases = [
            client_frame(true, OP_PING | 0x40, b"p", [0; 4]),
            client_frame(true, OP_CLOSE | 0x40, &[], [0; 4]),
            client_frame(true, OP_BINARY | 0x20, b"x", [0; 4]),
            client_frame(true, OP_BINARY | 0x10, b"x", [0; 4]),
            {
                let mut b = client_frame(false, OP_BINARY, b"a", [0; 4]);
                b.extend(client_frame(true, OP_CONTINUATION | 0x40, b"b", [0; 4]));
                b
            },
        ];
        for bytes in cases {
            let mut d = Decoder::new(1000, true);
            assert_eq!(decode_all(&mut d, &bytes), Err(FrameError::ReservedBits), "{bytes:02x?}");
        }
    }

    #[test]
    fn an_inflated_message_is_bounded_by_the_message_limit() {
        let z = compressed(&[0u8; 100_000]);
        assert!(z.len() < 1000);
        let mut d = Decoder::new(16384, true);
        assert_eq!(
            decode_all(&mut d, &client_frame(true, OP_BINARY | 0x40, &z, [3; 4])),
            Err(FrameError::Inflate(crate::protocol::deflate::InflateError::TooLarge { max: 16384 }))
        );
        let mut d = Decoder::new(16384, true);
        assert_eq!(
            decode_all(&mut d, &client_frame(true, OP_BINARY | 0x40, &[0xFF; 20], [3; 4])),
            Err(FrameError::Inflate(crate::protocol::deflate::InflateError::Corrupt))
        );
    }

    #[test]
    fn compressed_server_frames_set_rsv1() {
        let mut dst = BytesMut::new();
        put_compressed_frame_header(&mut dst, OP_BINARY, 300);
        assert_eq!(&dst[..], &[0xC2, 126, 1, 44]);
    }

    #[test]
    fn a_huge_declared_length_is_refused_from_the_header_alone() {
        let mut d = Decoder::new(16384, false);
        let mut buf = BytesMut::from(&[0x82u8, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(d.decode(&mut buf), Err(FrameError::TooLarge { .. })));
        assert!(buf.capacity() < 1024, "no allocation for the declared length");
    }

    #[test]
    fn server_frames_have_the_shortest_length_encoding() {
        assert_eq!(&frame(OP_BINARY, b"ab")[..], &[0x82, 2, b'a', b'b']);
        assert_eq!(&frame(OP_PONG, &[])[..], &[0x8A, 0]);
        let f = frame(OP_BINARY, &[7; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = frame(OP_BINARY, &vec![7; 70000]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    proptest! {
        /// Any split of a valid frame sequence decodes to the same messages.
        #[test]
        fn any_chunking_decodes_the_same(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            for p in &payloads {
                bytes.extend(client_frame(true, OP_BINARY, p, [5, 6, 7, 8]));
            }
            let at = cut.index(bytes.len() + 1);
            let mut d = Decoder::new(1 << 16, false);
            let mut buf = BytesMut::from(&bytes[..at]);
            let mut got = Vec::new();
            while let Some(m) = d.decode(&mut buf).unwrap() { got.push(m); }
            buf.extend_from_slice(&bytes[at..]);
            while let Some(m) = d.decode(&mut buf).unwrap() { got.push(m); }
            let want: Vec<Message> = payloads.into_iter().map(|p| Message::Binary(Bytes::from(p))).collect();
            prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::new(256, false);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
        }
    }
}
