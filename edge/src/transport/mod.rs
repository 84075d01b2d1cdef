//! Connection I/O: the loop that drives a [`Session`] over one socket, for every transport (goim
//! over TCP or WebSocket, each plain or over TLS).
//!
//! A transport is only its framing: a [`Decode`] turning socket bytes into packets (goim's TCP stream,
//! or WebSocket frames carrying one packet per message) and an [`Encode`] turning a batch from the
//! member's outbox into socket bytes, over a [`Socket`]: a plain `TcpStream`, or a
//! [`tls::TlsSocket`] once its handshake is done (the loop is generic over the socket, so the plain
//! path compiles to what it was before TLS). The loop is the same for all: one task per connection, with
//! a reader (socket → session, under the session's deadline) and a writer (outbox → socket) side by
//! side; whichever ends first ends the connection.
//!
//! An idle connection must cost little memory, because memory per connection is what bounds an edge:
//! the task waits through readiness polls (the wakers live in the socket's and the outbox's own
//! slots), holds no read or write buffer between packets, and runs anything that waits on NATS
//! (auth, room changes) and a write the client is too slow to take in boxed futures of their own.
//! The limits add one thing per connection: the inbound packet counter of
//! `limits.max_packets_per_sec` (two `u32`s in the read loop, [`admission::PacketRate`]); the other
//! limits are checked at accept, in shared state.

pub mod admission;
pub mod http;
pub mod socket;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::time::sleep_until;
use tracing::debug;

use self::admission::PacketRate;
pub use self::socket::Socket;
use crate::hub::Member;
use crate::outbox::{Batch, Outbox, Outgoing};
use crate::protocol::websocket::FrameError;
use crate::protocol::{DecodeError, Packet};
use crate::session::{Flow, Session};
use crate::stats::{CloseReason, Stats, Transport};

/// Bytes taken from the socket per read (a stack buffer; only a partial packet outlives the read).
const READ_CHUNK: usize = 4096;

/// What a transport's framing found in the client's bytes.
#[derive(Debug)]
pub enum Inbound {
    Packet(Packet),
    /// A transport-level answer to queue as it is (a WebSocket pong).
    Answer(Bytes),
    /// The client ended the connection cleanly, with the transport's farewell to send back (a
    /// WebSocket close frame).
    Goodbye(Option<Bytes>),
    /// Nothing for the session (a WebSocket pong).
    Nothing,
}

/// Why a client's bytes cannot be framed: the connection is closed without reply.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("protocol error: {0}")]
    Packet(#[from] DecodeError),
    #[error("websocket error: {0}")]
    WebSocket(#[from] FrameError),
}

/// The inbound half of a transport's framing.
pub trait Decode: Send {
    /// The next unit at the front of `buf` (consumed), `Ok(None)` if more bytes are needed.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, FramingError>;
}

/// The outbound half of a transport's framing.
pub trait Encode: Send + Sync {
    /// Append everything in `items`, in order, to `out`: the bytes of one socket write.
    fn encode(&self, items: &VecDeque<Outgoing>, out: &mut BytesMut);

    /// What to write, if anything, before the socket is closed for `reason` (a WebSocket close frame
    /// 1001 at shutdown); only written between whole frames.
    fn farewell(&self, reason: CloseReason) -> Option<Bytes> {
        let _ = reason;
        None
    }
}

/// Run `session` over one connection until it ends, then clean up and count the reason. `inbuf`
/// holds bytes the client already sent (after a WebSocket upgrade request).
///
/// A plain function returning its future (not an `async fn`): the arguments are captured once, not
/// copied again into the future's locals, which would double the session's share of every idle
/// connection's memory.
pub fn serve<S: Socket>(
    session: Session,
    stream: S,
    inbuf: BytesMut,
    decoder: impl Decode,
    encoder: impl Encode,
    transport: Transport,
) -> impl std::future::Future<Output = ()> + Send {
    let mut session = session;
    let mut decoder = decoder;
    let mut inbuf = inbuf;
    async move {
        // Used by the loops only: `stream.close()` below goes through the captured socket itself,
        // as a reference still used after the loops would live across their awaits (8 more bytes in
        // every connection's future; measured).
        let socket = &stream;
        let member = session.member().clone();
        let ctx = session.context().clone();
        let reason = {
            let reading = read_loop(&mut session, socket, &mut inbuf, &mut decoder);
            let writing = write_loop(&member, &ctx.stats, socket, &encoder);
            tokio::select! {
                r = reading => r,
                r = writing => r,
            }
        };
        // TLS: a close_notify after the last record (best effort, like the close frame).
        stream.close();
        // The first recorded reason wins (a kick or overflow may have closed the outbox first).
        let reason = member.outbox.close(reason);
        session.finish();
        ctx.stats.closed(reason);
        ctx.stats.connection_closed(transport);
        let transport = transport.as_str();
        match reason {
            // The drain logs its own summary.
            CloseReason::ClientGone | CloseReason::Shutdown => debug!(conn = member.id, transport, %reason, "connection closed"),
            CloseReason::SlowConsumer => tracing::warn!(conn = member.id, transport, %reason, limit = ctx.config.limits.max_outbound_bytes, "client too slow: disconnected"),
            CloseReason::PacketRate => {
                let detail = format!("over limits.max_packets_per_sec = {} ({transport})", ctx.config.limits.max_packets_per_sec);
                ctx.stats.log_close(reason, member.id, None, &detail);
            }
            _ => ctx.stats.log_close(reason, member.id, None, transport),
        }
    }
}

/// Socket → session, packet by packet, under the session's deadline. Returns why the connection ends.
/// (A `fn` returning `async move`, like [`serve`], so that its arguments are stored once.)
#[allow(clippy::manual_async_fn)] // deliberate, see above: an `async fn` would store them twice
fn read_loop<'a>(
    session: &'a mut Session,
    stream: &'a impl Socket,
    inbuf: &'a mut BytesMut,
    decoder: &'a mut impl Decode,
) -> impl std::future::Future<Output = CloseReason> + Send + 'a {
    async move {
        let mut rate = PacketRate::default();
        let mut armed = session.deadline();
        let sleep = sleep_until(armed);
        tokio::pin!(sleep);
        loop {
            // Everything already received, packet by packet. Only a box is held across an await.
            loop {
                let waiting = match decoder.decode(inbuf) {
                    Ok(None) => break,
                    Ok(Some(_)) if !within_rate(session, &mut rate) => return CloseReason::PacketRate,
                    Ok(Some(unit)) => match handle(session, stream, unit) {
                        Ok(Flow::Continue) => continue,
                        Ok(Flow::Close(reason)) => return reason,
                        Err(waiting) => waiting,
                    },
                    Err(e) => {
                        // Counted, and logged at a bounded rate, by `serve`: garbage comes by the thousand.
                        debug!(conn = session.member().id, error = %e, "closing without reply");
                        return CloseReason::ProtocolError;
                    }
                };
                if let Flow::Close(reason) = waiting.await {
                    return reason;
                }
            }
            if inbuf.is_empty() {
                // Drop the (possibly shared) allocation: an idle connection keeps no buffer.
                *inbuf = BytesMut::new();
            }
            let deadline = session.deadline();
            if deadline != armed {
                armed = deadline;
                sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                ready = poll_fn(|cx| stream.poll_read_ready(cx)) => {
                    match ready.and_then(|()| read_chunk(stream, inbuf)) {
                        Ok(0) => return CloseReason::ClientGone,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            // Only a TLS socket says this: records that do not decrypt or parse.
                            debug!(conn = session.member().id, error = %e, "closing without reply");
                            return CloseReason::ProtocolError;
                        }
                        Err(e) => {
                            debug!(conn = session.member().id, error = %e, "read failed");
                            return CloseReason::ClientGone;
                        }
                    }
                }
                () = &mut sleep => {
                    if let Flow::Close(reason) = Box::pin(session.on_deadline()).await {
                        return reason;
                    }
                    armed = session.deadline();
                    sleep.as_mut().reset(armed);
                }
            }
        }
    }
}

/// Count one inbound unit against `limits.max_packets_per_sec`.
fn within_rate(session: &Session, rate: &mut PacketRate) -> bool {
    let ctx = session.context();
    let now_secs = ctx.started.elapsed().as_secs() as u32;
    rate.allow(now_secs, ctx.config.limits.max_packets_per_sec)
}

/// A request that waits (auth, room change, NATS round trips), boxed: the connection's future stays
/// small while idle, which is most of the time.
type Waiting<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Flow> + Send + 'a>>;

/// Act on one inbound unit now, or hand back the boxed request that must wait.
fn handle<'a>(session: &'a mut Session, stream: &impl Socket, unit: Inbound) -> Result<Flow, Waiting<'a>> {
    match unit {
        Inbound::Packet(packet) => match session.on_packet_now(packet) {
            Ok(flow) => Ok(flow),
            Err(packet) => Err(Box::pin(session.on_packet(packet))),
        },
        Inbound::Answer(bytes) => Ok(match session.member().outbox.push(Outgoing::Control(bytes)) {
            Ok(()) => Flow::Continue,
            Err(reason) => Flow::Close(reason),
        }),
        Inbound::Goodbye(farewell) => {
            if let Some(farewell) = farewell {
                // Best effort, the connection is ending: a few bytes on a writable socket.
                let _ = stream.try_write(&farewell);
            }
            Ok(Flow::Close(CloseReason::ClientGone))
        }
        Inbound::Nothing => Ok(Flow::Continue),
    }
}

/// Outbox → socket, one write per batch. Returns why the connection ends.
#[allow(clippy::manual_async_fn)] // as `read_loop`: arguments stored once
fn write_loop<'a>(
    member: &'a Member,
    stats: &'a Stats,
    stream: &'a impl Socket,
    encoder: &'a impl Encode,
) -> impl std::future::Future<Output = CloseReason> + Send + 'a {
    async move {
        loop {
            let (out, oldest) = match poll_fn(|cx| member.outbox.poll_next_batch(cx)).await {
                Batch::Items(items) => {
                    let mut out = BytesMut::new();
                    encoder.encode(&items, &mut out);
                    (out, oldest_push(&items))
                }
                Batch::Closed(reason) => {
                    // Between whole frames here (an interrupted write ends in `write_rest`).
                    if let Some(farewell) = encoder.farewell(reason) {
                        let _ = stream.try_write(&farewell);
                    }
                    return reason;
                }
            };
            stats.writes.fetch_add(1, Ordering::Relaxed);
            stats.bytes_written.fetch_add(out.len() as u64, Ordering::Relaxed);
            let written = match stream.try_write(&out) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => {
                    debug!(conn = member.id, error = %e, "write failed");
                    return CloseReason::ClientGone;
                }
            };
            // (`pending_output`: a TLS socket took the batch but holds its last record.)
            if written < out.len() || stream.pending_output() {
                // The client is not keeping up: wait for it in a boxed future of its own (which also
                // records the latency, so that nothing more is held across this await while idle).
                if let Err(reason) = Box::pin(write_rest(stream, &out[written..], &member.outbox, stats, oldest)).await {
                    return reason;
                }
            } else if let Some(arrived) = oldest {
                stats.push_latency.record(arrived.elapsed());
            }
        }
    }
}

/// When the oldest push of a batch arrived at the edge: what the push latency histogram measures from.
fn oldest_push(items: &VecDeque<Outgoing>) -> Option<std::time::Instant> {
    items.iter().find_map(|item| match item {
        Outgoing::Push(p) => Some(p.arrived()),
        _ => None,
    })
}

/// One non-blocking read appended to `inbuf`: `Ok(0)` at end of stream.
fn read_chunk(stream: &impl Socket, inbuf: &mut BytesMut) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut chunk)?;
    inbuf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// The rest of a write the socket did not take at once (and, over TLS, the record it still holds);
/// gives up as soon as the outbox closes (a kick, or the bound exceeded while this client does not
/// read). Records the push latency (from `oldest`) when the write is complete.
async fn write_rest(
    stream: &impl Socket,
    buf: &[u8],
    outbox: &Outbox,
    stats: &Stats,
    oldest: Option<std::time::Instant>,
) -> Result<(), CloseReason> {
    write_all_or_closed(stream, buf, outbox).await?;
    if let Some(arrived) = oldest {
        stats.push_latency.record(arrived.elapsed());
    }
    Ok(())
}

async fn write_all_or_closed(stream: &impl Socket, mut buf: &[u8], outbox: &Outbox) -> Result<(), CloseReason> {
    loop {
        tokio::select! {
            ready = poll_fn(|cx| stream.poll_write_ready(cx)) => ready.map_err(|_| CloseReason::ClientGone)?,
            reason = outbox.closed() => return Err(reason),
        }
        let progress = if buf.is_empty() {
            stream.try_flush().map(|()| 0)
        } else {
            stream.try_write(buf)
        };
        match progress {
            Ok(0) if !buf.is_empty() => return Err(CloseReason::ClientGone),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                debug!(error = %e, "write failed");
                return Err(CloseReason::ClientGone);
            }
        }
        if buf.is_empty() && !stream.pending_output() {
            return Ok(());
        }
    }
}
