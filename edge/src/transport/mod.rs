//! Connection I/O: the TCP and WebSocket transports and the loop that drives a [`Session`] over them.
//!
//! Each connection is one task running two halves side by side: the reader feeds packets to the session
//! under its deadline, the writer drains the member's outbox in batches. Whichever ends first ends the
//! connection; the outbox's close signal also ends it while the writer is blocked on a client that does
//! not read.

pub mod tcp;
pub mod ws;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use tokio::time::sleep_until;
use tracing::{debug, info};

use crate::outbox::{Batch, Outgoing};
use crate::protocol::{DecodeError, Packet};
use crate::session::{Flow, Session};
use crate::stats::CloseReason;

/// Why a transport stopped producing packets.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// The inbound half of a transport.
pub trait PacketReader {
    /// The next packet; `Ok(None)` when the client closed.
    fn next_packet(&mut self) -> impl std::future::Future<Output = Result<Option<Packet>, ReadError>> + Send;
}

/// The outbound half of a transport.
pub trait BatchWriter {
    /// Write a batch of queued items in as few writes as the transport allows.
    fn write_batch(&mut self, items: VecDeque<Outgoing>) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

/// Run `session` over one connection until it ends, then clean up and count the reason.
pub async fn serve<R: PacketReader, W: BatchWriter>(mut session: Session, mut reader: R, mut writer: W, transport: &'static str) {
    let member = session.member().clone();
    let ctx = session.context().clone();
    let reading = async {
        loop {
            tokio::select! {
                read = reader.next_packet() => match read {
                    Ok(Some(packet)) => {
                        // Requests that wait (auth, room changes, NATS round trips) run boxed: the
                        // connection's future stays small while idle, which is most of the time.
                        let flow = match session.on_packet_now(packet) {
                            Ok(flow) => flow,
                            Err(packet) => Box::pin(session.on_packet(packet)).await,
                        };
                        if let Flow::Close(reason) = flow {
                            return reason;
                        }
                    }
                    Ok(None) => return CloseReason::ClientGone,
                    Err(ReadError::Protocol(e)) => {
                        info!(conn = member.id, transport, error = %e, "closing without reply");
                        return CloseReason::ProtocolError;
                    }
                    Err(e) => {
                        debug!(conn = member.id, transport, error = %e, "read failed");
                        return CloseReason::ClientGone;
                    }
                },
                _ = sleep_until(session.deadline()) => {
                    if let Flow::Close(reason) = Box::pin(session.on_deadline()).await {
                        return reason;
                    }
                }
            }
        }
    };
    let writing = async {
        loop {
            match member.outbox.next_batch().await {
                Batch::Items(items) => {
                    ctx.stats.writes.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = writer.write_batch(items).await {
                        debug!(conn = member.id, transport, error = %e, "write failed");
                        return CloseReason::ClientGone;
                    }
                }
                Batch::Closed(reason) => return reason,
            }
        }
    };
    let reason = tokio::select! {
        r = reading => r,
        r = writing => r,
        r = member.outbox.closed() => r,
    };
    // The first recorded reason wins (a kick or overflow may have closed the outbox first).
    let reason = member.outbox.close(reason);
    session.finish();
    ctx.stats.closed(reason);
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
    match reason {
        CloseReason::ClientGone => debug!(conn = member.id, transport, %reason, "connection closed"),
        CloseReason::SlowConsumer => tracing::warn!(conn = member.id, transport, %reason, limit = ctx.config.limits.max_outbound_bytes, "client too slow: disconnected"),
        _ => info!(conn = member.id, transport, %reason, "connection closed"),
    }
}
