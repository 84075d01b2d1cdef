//! permessage-deflate (RFC 7692) as pure code: the negotiation of the extension from a client's
//! `Sec-WebSocket-Extensions` offers, and the compression and bounded inflation of one message.
//!
//! The edge only ever agrees to the extension **without context takeover in either direction**
//! (`server_no_context_takeover; client_no_context_takeover`), whatever the client offered. RFC 7692
//! §7.1.1.1 and §7.1.1.2 both let the server add these parameters to its response even when the offer
//! did not carry them, so this is always a legal answer to any acceptable offer. It buys two things:
//!
//! * every message the edge sends is compressed on its own, so one compressed push can be shared by
//!   every connection that negotiated the extension (compressed once per broadcast batch, not once per
//!   connection; `crate::outbox::Push` holds the shared form);
//! * every message a client sends can be inflated on its own, so no connection keeps an LZ77 window
//!   (32 KB) or a compressor/decompressor between messages: an idle connection costs what it cost
//!   before (one flag). The (de)compressor state lives in one thread-local per worker thread, reset
//!   before each message (flate2 with the zlib-rs backend, pure Rust: the reset is most of the cost
//!   of compressing a short message, and zlib-rs's is about half miniz_oxide's; compression level 6,
//!   zlib's default, since the cost is shared by every recipient of a push and the bytes are not).
//!
//! What is declined (the offer is skipped; the next one, or no compression, is used — falling back to
//! no compression is always legal): any offer with an unknown or duplicated parameter or an invalid
//! value (§7.1: such an offer must be declined), and `server_max_window_bits` below 15: honouring it
//! would need a compressed form per window size, and no browser asks for it. `client_max_window_bits` needs no answer: the edge inflates with a 32 KB window, which decodes
//! any smaller window too, and the response never names it (§7.1.2.2 forbids naming it when the client
//! did not offer it, and it is optional otherwise).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The edge's answer to an accepted offer (the header value of `Sec-WebSocket-Extensions`).
pub const RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Messages shorter than this are sent uncompressed (legal per message: RSV1 clear): deflate's own
/// overhead (block header, the sync flush's empty block) eats what a short message would save.
pub const MIN_COMPRESS_LEN: usize = 64;

/// The four bytes a sync flush ends with; removed from a compressed message by the sender and
/// appended again by the receiver (RFC 7692 §7.2.1, §7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Whether any of the client's offers (the values of all its `Sec-WebSocket-Extensions` headers, in
/// order) is a `permessage-deflate` offer the edge can accept; if so it answers [`RESPONSE`].
pub fn accepts<'a>(header_values: impl IntoIterator<Item = &'a str>) -> bool {
    header_values.into_iter().flat_map(|v| v.split(',')).any(acceptable)
}

/// One offer: `permessage-deflate` followed by `; name[=value]` parameters.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION)) {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
            None => (param, None),
        };
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return false; // §7.1: a parameter appears at most once
        }
        seen.push(name);
        let ok = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // We can only compress with the full 32 KB window.
            "server_max_window_bits" => value.and_then(window_bits) == Some(15),
            // Without a value: the client supports the parameter; with one: its own window, 8..=15.
            "client_max_window_bits" => value.is_none_or(|v| window_bits(v).is_some()),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A quoted-string value without its quotes (RFC 6455 §9.1 allows either form).
fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

/// A window-bits value: 1*DIGIT in 8..=15, no leading zero (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// One compressor per thread, reset before each message (no context takeover).
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    /// One decompressor per thread, reset before each message (no context takeover).
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The payload of `message` compressed as one permessage-deflate message (raw DEFLATE, sync
/// flushed, the trailing `00 00 ff ff` removed), or None when it is not worth it: shorter than
/// [`MIN_COMPRESS_LEN`], or no smaller compressed.
pub fn compress(message: &[u8]) -> Option<Bytes> {
    if message.len() < MIN_COMPRESS_LEN {
        return None;
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(message.len() / 2 + 64);
        // Bounded: each round either consumes input or doubles the output room; deflate's output is
        // at most a few bytes per 16 KB over its input, so a few doublings end it.
        for _ in 0..64 {
            let consumed = c.total_in() as usize;
            c.compress_vec(&message[consumed..], &mut out, FlushCompress::Sync).ok()?;
            // Room left after a sync flush with all input taken: the flush is complete.
            if c.total_in() as usize == message.len() && out.len() < out.capacity() {
                if !out.ends_with(&SYNC_TAIL) {
                    return None;
                }
                out.truncate(out.len() - SYNC_TAIL.len());
                return (out.len() < message.len()).then(|| Bytes::from(out));
            }
            out.reserve(out.capacity().max(64));
        }
        None
    })
}

/// Why a compressed message from the client cannot be inflated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("compressed message inflates beyond the limit of {max} bytes")]
    TooLarge { max: usize },
    #[error("compressed message is not valid DEFLATE data")]
    Corrupt,
}

/// One compressed message from the client inflated (the sync tail appended first), refusing it as
/// soon as it would exceed `max` bytes: a small message that inflates to gigabytes never makes the
/// edge hold more than `max + 1` bytes.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Bytes, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out: Vec<u8> = Vec::with_capacity(compressed.len().saturating_mul(4).max(64).min(max.saturating_add(1)));
        'inputs: for input in [compressed, &SYNC_TAIL[..]] {
            let mut pos = 0;
            // Bounded: a round without progress is an error, and progress is bounded by the input
            // length and by `max` output bytes.
            loop {
                let (in_before, out_before) = (d.total_in(), d.total_out());
                let status = d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
                pos += (d.total_in() - in_before) as usize;
                if out.len() > max {
                    return Err(InflateError::TooLarge { max });
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the message's data; anything after it is ignored.
                    break 'inputs;
                }
                if out.len() == out.capacity() {
                    if out.capacity() > max {
                        return Err(InflateError::TooLarge { max });
                    }
                    let grow = out.capacity().max(64).min(max + 1 - out.capacity());
                    out.reserve_exact(grow);
                    continue;
                }
                if pos == input.len() {
                    break;
                }
                if d.total_in() == in_before && d.total_out() == out_before {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn browser_and_library_offers_are_accepted() {
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "Permessage-Deflate ; Client_Max_Window_Bits",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=\"12\"",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15",
            // Firefox lists an x-webkit offer first in some versions; the second one is ours.
            "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
        ] {
            assert!(accepts([offer]), "{offer}");
        }
        // Offers spread over two header lines.
        assert!(accepts(["x-foo", "permessage-deflate"]));
    }

    #[test]
    fn offers_the_edge_cannot_honour_or_that_are_malformed_are_declined() {
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflatex",
        ] {
            assert!(!accepts([offer]), "{offer:?}");
        }
        // A declined first offer falls back to an acceptable second one (§5.1: offers in preference
        // order; the server picks one it supports).
        assert!(accepts(["permessage-deflate; server_max_window_bits=10, permessage-deflate"]));
        assert!(!accepts(std::iter::empty::<&str>()));
    }

    /// Inflate with an independent implementation of the RFC's procedure (flate2's streaming
    /// decoder over payload + sync tail), not with [`inflate`].
    fn reference_inflate(payload: &[u8]) -> Vec<u8> {
        let mut dec = flate2::write::DeflateDecoder::new(Vec::new());
        dec.write_all(payload).unwrap();
        dec.write_all(&SYNC_TAIL).unwrap();
        dec.flush().unwrap();
        dec.get_ref().clone()
    }

    #[test]
    fn compressed_messages_inflate_back_independently() {
        let json = br#"{"from":"alice","room":"live://1000","text":"hello everyone, this is a chat message","ts":1700000000000}"#.repeat(3);
        let z = compress(&json).expect("worth compressing");
        assert!(z.len() < json.len() / 2, "{} -> {}", json.len(), z.len());
        assert!(!z.ends_with(&SYNC_TAIL), "the sync tail is removed");
        assert_eq!(reference_inflate(&z), json);
        assert_eq!(inflate(&z, json.len()).unwrap(), json.as_slice());
        // No context carried over: the same message compresses to the same bytes again, and a
        // message inflates alone after another one.
        assert_eq!(compress(&json).unwrap(), z);
        let other = b"another message that is long enough to be compressed, with words words words".to_vec();
        let z2 = compress(&other).unwrap();
        assert_eq!(inflate(&z2, 1000).unwrap(), other.as_slice());
        assert_eq!(inflate(&z, json.len()).unwrap(), json.as_slice());
    }

    #[test]
    fn short_or_incompressible_messages_stay_uncompressed() {
        assert_eq!(compress(&[b'a'; MIN_COMPRESS_LEN - 1]), None);
        assert!(compress(&[b'a'; MIN_COMPRESS_LEN]).is_some());
        // Pseudo-random bytes do not shrink.
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn large_messages_round_trip() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 ^ (i / 1000) as u8).collect();
        let z = compress(&big).unwrap();
        assert_eq!(reference_inflate(&z), big);
        assert_eq!(inflate(&z, big.len()).unwrap(), big.as_slice());
        assert_eq!(inflate(&z, big.len() - 1), Err(InflateError::TooLarge { max: big.len() - 1 }));
    }

    #[test]
    fn an_inflate_bomb_is_refused_at_the_limit() {
        // 10 MB of zeros compress to about 10 KB.
        let bomb = {
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::best());
            enc.write_all(&vec![0u8; 10 << 20]).unwrap();
            enc.finish().unwrap()
        };
        assert!(bomb.len() < 16 << 10);
        assert_eq!(inflate(&bomb, 16384), Err(InflateError::TooLarge { max: 16384 }));
        // A client's own compressor (streaming, final block) within the limit is fine.
        let ok = {
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(&[7u8; 1000]).unwrap();
            enc.finish().unwrap()
        };
        assert_eq!(inflate(&ok, 1000).unwrap(), vec![7u8; 1000].as_slice());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert_eq!(inflate(&[0xFF; 32], 1000), Err(InflateError::Corrupt));
        // An empty compressed message is an empty message (the tail alone is an empty stored block).
        assert_eq!(inflate(&[], 1000).unwrap(), Bytes::new());
    }
}
