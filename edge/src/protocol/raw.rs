//! goim's op-9 (raw) wrapper: a packet whose body is one or more complete packets.
//!
//! WebSocket clients receive every push wrapped this way (the JS demo walks the inner packets from offset
//! 16); TCP clients receive the inner packets unwrapped, exactly like goim's comet `WriteTCP`.

use bytes::{Buf, Bytes, BytesMut};

use super::op;
use super::packet::{put_header, Packet, HEADER_LEN};

/// Why an op-9 body cannot be split into packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error("inner packet at offset {offset} has packLen {pack_len}")]
    BadInnerLen { offset: usize, pack_len: i32 },
    #[error("inner packet at offset {offset} is truncated")]
    Truncated { offset: usize },
}

/// Build one op-9 packet (ver 1, seq 0) around already-encoded inner packets.
pub fn wrap<'a>(inner: impl IntoIterator<Item = &'a Bytes> + Clone) -> Bytes {
    let body_len: usize = inner.clone().into_iter().map(Bytes::len).sum();
    let mut dst = BytesMut::with_capacity(HEADER_LEN + body_len);
    wrap_into(&mut dst, inner, body_len);
    dst.freeze()
}

/// Append an op-9 packet around `inner` (whose total length is `body_len`) to `dst`.
pub fn wrap_into<'a>(dst: &mut BytesMut, inner: impl IntoIterator<Item = &'a Bytes>, body_len: usize) {
    dst.reserve(HEADER_LEN + body_len);
    put_header(dst, HEADER_LEN + body_len, op::PUSH_VER, op::RAW, 0);
    for p in inner {
        dst.extend_from_slice(p);
    }
}

/// Split the body of an op-9 packet into its inner packets, as goim's JS client does.
pub fn unwrap(body: &[u8]) -> Result<Vec<Packet>, RawError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < body.len() {
        let rest = &body[offset..];
        if rest.len() < HEADER_LEN {
            return Err(RawError::Truncated { offset });
        }
        let mut h = rest;
        let pack_len = h.get_i32();
        let _header_len = h.get_i16();
        let ver = h.get_i16();
        let op = h.get_i32();
        let seq = h.get_i32();
        if pack_len < HEADER_LEN as i32 {
            return Err(RawError::BadInnerLen { offset, pack_len });
        }
        let len = pack_len as usize;
        if rest.len() < len {
            return Err(RawError::Truncated { offset });
        }
        out.push(Packet { ver, op, seq, body: Bytes::copy_from_slice(&rest[HEADER_LEN..len]) });
        offset += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packet::encode_push;
    use proptest::prelude::*;

    /// Split an outbound op-9 packet into (ver, op, seq) and body. Outbound packets have no size
    /// limit, so the inbound decoder (4112 bytes at most) is not the tool here.
    fn outer(frame: &[u8]) -> ((i16, i32, i32), &[u8]) {
        let mut h = &frame[..HEADER_LEN];
        let pack_len = h.get_i32() as usize;
        assert_eq!(h.get_i16(), HEADER_LEN as i16);
        assert_eq!(pack_len, frame.len());
        ((h.get_i16(), h.get_i32(), h.get_i32()), &frame[HEADER_LEN..])
    }

    #[test]
    fn wrap_then_unwrap() {
        let a = encode_push(1000, b"{\"test\":1}");
        let b = encode_push(1001, b"");
        let frame = wrap([&a, &b]);
        let (header, body) = outer(&frame);
        assert_eq!(header, (1, op::RAW, 0));
        assert_eq!(body.len(), a.len() + b.len());
        let inner = unwrap(body).unwrap();
        assert_eq!(inner.len(), 2);
        assert_eq!((inner[0].op, inner[0].body.as_ref()), (1000, &b"{\"test\":1}"[..]));
        assert_eq!((inner[1].op, inner[1].body.len()), (1001, 0));
    }

    #[test]
    fn unwrap_rejects_bad_inner() {
        let a = encode_push(1000, b"hello");
        assert_eq!(unwrap(&a[..a.len() - 1]), Err(RawError::Truncated { offset: 0 }));
        let mut zero = a.to_vec();
        zero[..4].copy_from_slice(&0i32.to_be_bytes());
        assert_eq!(unwrap(&zero), Err(RawError::BadInnerLen { offset: 0, pack_len: 0 }));
    }

    proptest! {
        #[test]
        fn round_trip(msgs in proptest::collection::vec((any::<i32>(), proptest::collection::vec(any::<u8>(), 0..600)), 1..20)) {
            let enc: Vec<Bytes> = msgs.iter().map(|(op, body)| encode_push(*op, body)).collect();
            let frame = wrap(enc.iter());
            let (header, body) = outer(&frame);
            prop_assert_eq!(header, (1, op::RAW, 0));
            let inner = unwrap(body).unwrap();
            prop_assert_eq!(inner.len(), msgs.len());
            for (p, (op, body)) in inner.iter().zip(&msgs) {
                prop_assert_eq!(p.op, *op);
                prop_assert_eq!(p.body.as_ref(), body.as_slice());
            }
        }

        #[test]
        fn unwrap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = unwrap(&bytes);
        }
    }
}
