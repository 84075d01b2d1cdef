//! The socket the connection loop drives: readiness polls and non-blocking reads and writes, the
//! shape of tokio's `TcpStream` API, so that one loop ([`super::serve`]) and one WebSocket upgrade
//! serve plain and TLS connections alike.
//!
//! `TcpStream` implements [`Socket`] by forwarding to its own methods: the loop is generic over the
//! socket, so a plain connection compiles to exactly the code (and the task size) it had before TLS
//! existed. A TLS connection ([`super::tls::TlsSocket`]) is a `TcpStream` plus a sans-IO rustls
//! session; the only thing it adds to the contract is ciphertext the session could not hand to the
//! kernel yet ([`Socket::pending_output`]), which the write loop flushes like the rest of a write.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

/// A non-blocking byte stream with readiness, as the connection loop uses it. Every method takes
/// `&self`: the reader and the writer of one connection run side by side in the same task.
pub trait Socket: Send + Sync + 'static {
    /// Ready when [`Socket::try_read`] may make progress (bytes, end of stream, or an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Bytes the client sent: `Ok(0)` at end of stream, `WouldBlock` when nothing is available
    /// (which also clears the read readiness, as with `TcpStream`).
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Ready when [`Socket::try_write`] (or [`Socket::try_flush`]) may make progress.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Take bytes to send; `WouldBlock` when nothing can be taken now. Bytes taken may still be
    /// [`Socket::pending_output`] (bounded by the implementation).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;

    /// Whether bytes already taken are still waiting for the kernel (a TLS record the socket did not
    /// take in full). Never for a plain socket.
    fn pending_output(&self) -> bool {
        false
    }

    /// Hand [`Socket::pending_output`] to the kernel: `WouldBlock` if some is still waiting.
    fn try_flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Best effort before the socket is dropped (a TLS close_notify); never waits.
    fn close(&self) {}
}

impl Socket for TcpStream {
    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    #[inline]
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }

    #[inline]
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }

    #[inline]
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

/// Write all of `buf` and flush it to the kernel, waiting for writability as needed (the WebSocket
/// upgrade's answer: small, once per connection).
pub async fn write_all(stream: &impl Socket, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => poll_fn(|cx| stream.poll_write_ready(cx)).await?,
            Err(e) => return Err(e),
        }
    }
    // A TLS socket may hold the last record: the client waits for it before it says anything more.
    while stream.pending_output() {
        match stream.try_flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => poll_fn(|cx| stream.poll_write_ready(cx)).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
