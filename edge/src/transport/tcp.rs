//! goim over TCP: a byte stream of packets in, plain packets out (TCP clients never see op 9).

use std::collections::VecDeque;

use bytes::BytesMut;

use super::{Decode, Encode, FramingError, Inbound};
use crate::outbox::Outgoing;
use crate::protocol::next_packet;

/// Packets off the byte stream; no state beyond the connection's input buffer.
#[derive(Debug, Default)]
pub struct TcpDecoder;

impl Decode for TcpDecoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, FramingError> {
        Ok(next_packet(buf)?.map(Inbound::Packet))
    }
}

/// Every queued packet, concatenated: one write per batch.
#[derive(Debug, Default)]
pub struct TcpEncoder;

impl Encode for TcpEncoder {
    fn encode(&self, items: &VecDeque<Outgoing>, out: &mut BytesMut) {
        out.reserve(items.iter().map(Outgoing::len).sum());
        for item in items {
            match item {
                Outgoing::Push(p) => out.extend_from_slice(p),
                Outgoing::Reply(b) | Outgoing::Control(b) => out.extend_from_slice(b),
            }
        }
    }
}
