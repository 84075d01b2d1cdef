//! goim over TCP: a byte stream of packets in, plain packets out (TCP clients never see op 9).

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::{BatchWriter, PacketReader, ReadError};
use crate::outbox::Outgoing;
use crate::protocol::{Packet, StreamDecoder, MAX_PACKET_LEN};

/// Read side: socket bytes through the stream decoder.
pub struct TcpReader<'a> {
    half: ReadHalf<'a>,
    decoder: StreamDecoder,
}

impl<'a> TcpReader<'a> {
    pub fn new(half: ReadHalf<'a>) -> Self {
        // Most clients send a few small packets; the buffer grows to one full packet at most.
        TcpReader { half, decoder: StreamDecoder::with_capacity(256) }
    }
}

impl PacketReader for TcpReader<'_> {
    async fn next_packet(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(p) = self.decoder.next_packet()? {
                return Ok(Some(p));
            }
            let buf = self.decoder.buffer();
            if buf.capacity() - buf.len() < 256 {
                buf.reserve(256.min(MAX_PACKET_LEN));
            }
            if self.half.read_buf(buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Write side: every queued packet concatenated into one write.
pub struct TcpWriter<'a> {
    half: WriteHalf<'a>,
    buf: BytesMut,
}

impl<'a> TcpWriter<'a> {
    pub fn new(half: WriteHalf<'a>) -> Self {
        TcpWriter { half, buf: BytesMut::new() }
    }
}

impl BatchWriter for TcpWriter<'_> {
    async fn write_batch(&mut self, items: Vec<Outgoing>) -> std::io::Result<()> {
        if let [one] = items.as_slice() {
            let (Outgoing::Push(b) | Outgoing::Reply(b)) = one;
            return self.half.write_all(b).await;
        }
        self.buf.clear();
        for item in &items {
            let (Outgoing::Push(b) | Outgoing::Reply(b)) = item;
            self.buf.extend_from_slice(b);
        }
        let result = self.half.write_all(&self.buf).await;
        // Keep a modest buffer between batches; a burst's big buffer is released.
        if self.buf.capacity() > 64 * 1024 {
            self.buf = BytesMut::new();
        }
        result
    }
}
