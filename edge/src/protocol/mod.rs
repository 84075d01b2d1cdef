//! goim's binary wire protocol, as pure code with no I/O.
//!
//! `packet` owns the 16-byte header and the stream/frame decoders, `op` the operation numbers and
//! `raw` the op-9 wrapper that carries one or more complete packets to WebSocket clients, `websocket`
//! the RFC 6455 frames those travel in and `deflate` their permessage-deflate extension. Everything here
//! is deterministic and unit-tested; the transports in `crate::transport` only move the bytes.

pub mod deflate;
pub mod op;
pub mod packet;
pub mod raw;
pub mod websocket;

pub use packet::{
    decode_frame, encode_push, next_packet, encode_push_seq, DecodeError, Packet, StreamDecoder, HEADER_LEN, MAX_BODY_LEN,
    MAX_PACKET_LEN,
};
