//! goim over TCP: a byte stream of packets in, plain packets out (TCP clients never see op 9).
//!
//! Both halves work on a shared `&TcpStream` through readiness (`readable`/`try_read`,
//! `writable`/`try_write`), so an idle connection holds no buffer at all: bytes are read into a
//! short-lived stack chunk and only a partial packet is kept between reads.

use std::collections::VecDeque;
use std::io;

use tokio::net::TcpStream;

use super::{BatchWriter, PacketReader, ReadError};
use crate::outbox::Outgoing;
use crate::protocol::{Packet, StreamDecoder};

/// Bytes taken from the socket per read.
const READ_CHUNK: usize = 4096;

/// Read side: socket bytes through the stream decoder.
pub struct TcpReader<'a> {
    stream: &'a TcpStream,
    decoder: StreamDecoder,
}

impl<'a> TcpReader<'a> {
    pub fn new(stream: &'a TcpStream) -> Self {
        TcpReader { stream, decoder: StreamDecoder::with_capacity(0) }
    }

    /// One non-blocking read into the decoder: `Ok(0)` at end of stream.
    fn read_ready(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.stream.try_read(&mut chunk)?;
        self.decoder.buffer().extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

impl PacketReader for TcpReader<'_> {
    async fn next_packet(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(p) = self.decoder.next_packet()? {
                return Ok(Some(p));
            }
            self.decoder.release_if_empty();
            self.stream.readable().await?;
            match self.read_ready() {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Write side: every queued packet concatenated into one write.
pub struct TcpWriter<'a> {
    stream: &'a TcpStream,
}

impl<'a> TcpWriter<'a> {
    pub fn new(stream: &'a TcpStream) -> Self {
        TcpWriter { stream }
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.stream.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stream.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl BatchWriter for TcpWriter<'_> {
    async fn write_batch(&mut self, items: VecDeque<Outgoing>) -> io::Result<()> {
        if items.len() == 1 {
            let (Outgoing::Push(b) | Outgoing::Reply(b)) = &items[0];
            return self.write_all(b).await;
        }
        // One write for the batch. The buffer lives only for this write: an idle connection keeps no
        // buffer (memory per connection is what bounds an edge's connection count).
        let mut buf = Vec::with_capacity(items.iter().map(Outgoing::len).sum());
        for item in &items {
            let (Outgoing::Push(b) | Outgoing::Reply(b)) = item;
            buf.extend_from_slice(b);
        }
        self.write_all(&buf).await
    }
}
