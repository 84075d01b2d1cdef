//! One goim packet: the 16-byte big-endian header plus an opaque body, and the two ways packets arrive.
//!
//! Over TCP packets are a byte stream ([`StreamDecoder`]); over WebSocket each message carries one packet
//! and only the first packet of a frame is parsed ([`decode_frame`]). Both enforce goim's inbound limits:
//! `headerLen` must be 16 and `packLen` must lie in `0..=4112`. Outbound packets have no size limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::op;

/// Size of the fixed header; goim rejects any other `headerLen`.
pub const HEADER_LEN: usize = 16;
/// goim's `MaxBodySize`: the largest inbound body.
pub const MAX_BODY_LEN: usize = 4096;
/// The largest inbound `packLen`.
pub const MAX_PACKET_LEN: usize = HEADER_LEN + MAX_BODY_LEN;

/// A decoded or to-be-encoded goim packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub ver: i16,
    pub op: i32,
    pub seq: i32,
    pub body: Bytes,
}

/// Why inbound bytes are not a packet. goim's reaction to every one of these is to close the
/// connection without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("headerLen is {0}, must be 16")]
    BadHeaderLen(i16),
    #[error("packLen {0} is outside 0..=4112")]
    BadPackLen(i32),
    #[error("frame of {0} bytes is shorter than the 16-byte header")]
    ShortFrame(usize),
    #[error("frame holds {have} bytes but packLen says {want}")]
    TruncatedFrame { have: usize, want: usize },
}

impl Packet {
    pub fn new(ver: i16, op: i32, seq: i32, body: impl Into<Bytes>) -> Self {
        Packet { ver, op, seq, body: body.into() }
    }

    /// A reply to `self`: goim reuses the inbound packet, so replies echo the client's ver and seq.
    pub fn reply(&self, op: i32, body: impl Into<Bytes>) -> Self {
        Packet { ver: self.ver, op, seq: self.seq, body: body.into() }
    }

    /// Total encoded length (`packLen`).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Append the encoded packet to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        put_header(dst, self.encoded_len(), self.ver, self.op, self.seq);
        dst.extend_from_slice(&self.body);
    }

    /// The encoded packet as one buffer.
    pub fn encode(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut dst);
        dst.freeze()
    }
}

/// Write a 16-byte header. `pack_len` is the whole packet's length; outbound packets beyond
/// `i32::MAX` bytes cannot be represented and are a caller bug, so they saturate.
pub(crate) fn put_header(dst: &mut BytesMut, pack_len: usize, ver: i16, op: i32, seq: i32) {
    dst.put_i32(i32::try_from(pack_len).unwrap_or(i32::MAX));
    dst.put_i16(HEADER_LEN as i16);
    dst.put_i16(ver);
    dst.put_i32(op);
    dst.put_i32(seq);
}

/// Encode a server push exactly as goim's job does: ver 1, the business op, seq 0.
/// The result is built once per message and shared by every recipient.
pub fn encode_push(op: i32, body: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(HEADER_LEN + body.len());
    put_header(&mut dst, HEADER_LEN + body.len(), op::PUSH_VER, op, 0);
    dst.extend_from_slice(body);
    dst.freeze()
}

/// A server push carrying a sequence in the header's seq field (history; see `crate::history`).
/// goim clients that do not know about it ignore the field, as goim leaves it at 0.
pub fn encode_push_seq(op: i32, seq: i32, body: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(HEADER_LEN + body.len());
    put_header(&mut dst, HEADER_LEN + body.len(), op::PUSH_VER, op, seq);
    dst.extend_from_slice(body);
    dst.freeze()
}

/// Validate a header and return the body length it announces.
fn check_header(header: &[u8]) -> Result<usize, DecodeError> {
    let mut h = header;
    let pack_len = h.get_i32();
    let header_len = h.get_i16();
    if header_len != HEADER_LEN as i16 {
        return Err(DecodeError::BadHeaderLen(header_len));
    }
    if pack_len < 0 || pack_len as usize > MAX_PACKET_LEN {
        return Err(DecodeError::BadPackLen(pack_len));
    }
    // goim reads no body when packLen <= 16 (there is no lower bound check over TCP).
    Ok((pack_len as usize).saturating_sub(HEADER_LEN))
}

fn read_header_fields(header: &[u8]) -> (i16, i32, i32) {
    let mut h = &header[6..HEADER_LEN];
    (h.get_i16(), h.get_i32(), h.get_i32())
}

/// Parse the first packet of a WebSocket message; trailing bytes are ignored, as goim does.
pub fn decode_frame(frame: &[u8]) -> Result<Packet, DecodeError> {
    if frame.len() < HEADER_LEN {
        return Err(DecodeError::ShortFrame(frame.len()));
    }
    let body_len = check_header(&frame[..HEADER_LEN])?;
    let want = HEADER_LEN + body_len;
    if frame.len() < want {
        return Err(DecodeError::TruncatedFrame { have: frame.len(), want });
    }
    let (ver, op, seq) = read_header_fields(frame);
    Ok(Packet { ver, op, seq, body: Bytes::copy_from_slice(&frame[HEADER_LEN..want]) })
}

/// The next complete packet at the front of a TCP byte stream (consumed from `buf`), `Ok(None)` if more
/// bytes are needed, or the reason to close.
pub fn next_packet(buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let body_len = check_header(&buf[..HEADER_LEN])?;
    if buf.len() < HEADER_LEN + body_len {
        buf.reserve(HEADER_LEN + body_len - buf.len());
        return Ok(None);
    }
    let (ver, op, seq) = read_header_fields(buf);
    buf.advance(HEADER_LEN);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(Packet { ver, op, seq, body }))
}

/// Incremental decoder for the TCP byte stream. Feed it bytes with [`StreamDecoder::buffer`] and pull
/// packets with [`StreamDecoder::next_packet`]; it never holds more than one packet beyond what it
/// returned, because the header is validated before the body is awaited.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: BytesMut,
}

impl StreamDecoder {
    pub fn with_capacity(cap: usize) -> Self {
        StreamDecoder { buf: BytesMut::with_capacity(cap) }
    }

    /// The buffer to read socket bytes into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete packet, `Ok(None)` if more bytes are needed, or the reason to close.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        next_packet(&mut self.buf)
    }

    /// Give the buffer's memory back when it holds nothing (between packets of an idle connection).
    /// Also when its capacity is 0: an emptied buffer still shares the allocation of the last packet's
    /// body until it is replaced.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Bytes buffered but not yet returned as a packet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(pack_len: i32, header_len: i16, ver: i16, op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&pack_len.to_be_bytes());
        v.extend_from_slice(&header_len.to_be_bytes());
        v.extend_from_slice(&ver.to_be_bytes());
        v.extend_from_slice(&op.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn heartbeat_bytes_match_goim_example() {
        // goim-reference §1.5: heartbeat request `00000010 0010 0001 00000002 00000001`.
        let p = Packet::new(1, op::HEARTBEAT, 1, Bytes::new());
        assert_eq!(
            p.encode().as_ref(),
            &[0, 0, 0, 16, 0, 16, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1]
        );
        let reply = p.reply(op::HEARTBEAT_REPLY, 42i32.to_be_bytes().to_vec());
        let enc = reply.encode();
        assert_eq!(&enc[..4], &20i32.to_be_bytes());
        assert_eq!(&enc[8..12], &3i32.to_be_bytes());
        assert_eq!(&enc[12..16], &1i32.to_be_bytes());
        assert_eq!(&enc[16..], &42i32.to_be_bytes());
    }

    #[test]
    fn push_uses_ver_1_and_seq_0() {
        let b = encode_push(1000, b"{\"test\":1}");
        let p = decode_frame(&b).unwrap();
        assert_eq!((p.ver, p.op, p.seq), (1, 1000, 0));
        assert_eq!(p.body.as_ref(), b"{\"test\":1}");
    }

    #[test]
    fn stream_decoder_handles_split_and_coalesced_packets() {
        let a = raw(20, 16, 1, 7, 1, b"abcd");
        let b = raw(16, 16, 1, 2, 2, b"");
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut d = StreamDecoder::default();
        for chunk in all.chunks(3) {
            d.buffer().extend_from_slice(chunk);
        }
        let p1 = d.next_packet().unwrap().unwrap();
        assert_eq!((p1.op, p1.seq, p1.body.as_ref()), (7, 1, &b"abcd"[..]));
        let p2 = d.next_packet().unwrap().unwrap();
        assert_eq!((p2.op, p2.seq, p2.body.len()), (2, 2, 0));
        assert_eq!(d.next_packet().unwrap(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn stream_decoder_waits_for_truncated_packet() {
        let a = raw(30, 16, 1, 4, 9, &[7u8; 14]);
        let mut d = StreamDecoder::default();
        d.buffer().extend_from_slice(&a[..25]);
        assert_eq!(d.next_packet().unwrap(), None);
        d.buffer().extend_from_slice(&a[25..]);
        assert_eq!(d.next_packet().unwrap().unwrap().body.len(), 14);
    }

    #[test]
    fn pack_len_below_header_means_empty_body() {
        let mut d = StreamDecoder::default();
        d.buffer().extend_from_slice(&raw(3, 16, 1, 2, 0, b""));
        let p = d.next_packet().unwrap().unwrap();
        assert!(p.body.is_empty());
    }

    #[test]
    fn limits_are_goims() {
        let mut d = StreamDecoder::default();
        d.buffer().extend_from_slice(&raw(16, 15, 1, 2, 0, b""));
        assert_eq!(d.next_packet(), Err(DecodeError::BadHeaderLen(15)));

        let mut d = StreamDecoder::default();
        d.buffer().extend_from_slice(&raw(4113, 16, 1, 2, 0, b""));
        assert_eq!(d.next_packet(), Err(DecodeError::BadPackLen(4113)));

        let mut d = StreamDecoder::default();
        d.buffer().extend_from_slice(&raw(-1, 16, 1, 2, 0, b""));
        assert_eq!(d.next_packet(), Err(DecodeError::BadPackLen(-1)));

        // Exactly 4112 is allowed.
        let mut d = StreamDecoder::default();
        d.buffer().extend_from_slice(&raw(4112, 16, 1, 4, 0, &[0u8; 4096]));
        assert_eq!(d.next_packet().unwrap().unwrap().body.len(), 4096);

        assert_eq!(decode_frame(&[0u8; 15]), Err(DecodeError::ShortFrame(15)));
        assert_eq!(
            decode_frame(&raw(20, 16, 1, 4, 0, b"ab")),
            Err(DecodeError::TruncatedFrame { have: 18, want: 20 })
        );
    }

    #[test]
    fn frame_ignores_trailing_bytes() {
        let mut f = raw(18, 16, 1, 12, 3, b"ab");
        f.extend_from_slice(b"trailing garbage");
        let p = decode_frame(&f).unwrap();
        assert_eq!((p.op, p.seq, p.body.as_ref()), (12, 3, &b"ab"[..]));
    }

    proptest! {
        #[test]
        fn round_trip(ver: i16, op: i32, seq: i32, body in proptest::collection::vec(any::<u8>(), 0..=MAX_BODY_LEN)) {
            let p = Packet::new(ver, op, seq, body);
            let enc = p.encode();
            prop_assert_eq!(&decode_frame(&enc).unwrap(), &p);
            let mut d = StreamDecoder::default();
            d.buffer().extend_from_slice(&enc);
            prop_assert_eq!(d.next_packet().unwrap().unwrap(), p);
            prop_assert_eq!(d.pending(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000), split in 0usize..9000) {
            let _ = decode_frame(&bytes);
            let mut d = StreamDecoder::default();
            let split = split.min(bytes.len());
            d.buffer().extend_from_slice(&bytes[..split]);
            while let Ok(Some(p)) = d.next_packet() {
                prop_assert!(p.body.len() <= MAX_BODY_LEN);
            }
            d.buffer().extend_from_slice(&bytes[split..]);
            while let Ok(Some(p)) = d.next_packet() {
                prop_assert!(p.body.len() <= MAX_BODY_LEN);
            }
        }
    }
}
