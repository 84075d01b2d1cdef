//! One HTTP session (SSE or long-poll): the goim [`Session`], its event log, and the pump task that
//! owns the session's life from creation to teardown.
//!
//! The pump is the session's only outbox reader. It turns every queued packet into a numbered event
//! in the [`Log`] (cursor 1, 2, …), hands a reply to the request waiting for it, runs the goim
//! deadlines (handshake, heartbeat idle timeout, token expiry), and closes a session that has had no
//! event stream and no poll in flight for `listen.http_session_grace_ms`. Consumers (an SSE stream, a
//! poll) read the log after a cursor and never touch the outbox, so a long replay reaches the log while
//! no consumer is attached, and a consumer that comes back finds what it missed.
//!
//! Bounds (the WebSocket write bound, counted the same way: encoded packet bytes). The log plays the
//! socket's part: the pump takes from the outbox only while the events not yet written to a stream
//! (SSE) or not yet acknowledged (poll) hold at most half of `limits.max_outbound_bytes`, so what
//! the client does not take backs up into the outbox, whose bound closes the session as
//! `slow_consumer` (never a silent drop) — and a resume's replay, which waits for room in the outbox,
//! is paced by the client as over TCP instead of overflowing. SSE events already written are kept for
//! a re-attach, at most a quarter of the bound, oldest dropped first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use super::{packets, HttpState};
use crate::hub::Member;
use crate::outbox::{Batch, Outgoing};
use crate::protocol::Packet;
use crate::session::{Flow, Session};
use crate::stats::{CloseReason, Transport};
use crate::transport::admission::PacketRate;

/// How the session's events leave the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Poll,
}

/// The last history sequence (30-bit, subjects.md §11) delivered per class, as `resume` wants them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Positions {
    pub room: Option<u64>,
    pub user: Option<u64>,
    pub broadcast: Option<u64>,
}

impl Positions {
    /// Note a push's seq field: `class << 30 | seq mod 2^30` (class 1 room, 2 user, 3 broadcast).
    fn note(&mut self, seq: i32) {
        let v = seq as u32;
        let at = u64::from(v & ((1 << 30) - 1));
        match v >> 30 {
            1 => self.room = Some(at),
            2 => self.user = Some(at),
            3 => self.broadcast = Some(at),
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Positions::default()
    }
}

/// One logged event.
#[derive(Debug, Clone)]
pub struct Event {
    pub cursor: u64,
    /// `push` or `reply` (a reply no request waited for: op 20 of a resume).
    pub name: &'static str,
    pub packet: Packet,
    /// The positions once this event is delivered: what a reconnect resumes from.
    pub pos: Positions,
}

#[derive(Debug)]
struct Log {
    events: VecDeque<Event>,
    /// Encoded bytes of the events after `sent` (SSE) or after the last ack (poll): the bound.
    unsent_bytes: usize,
    /// Encoded bytes of the retained events up to `sent` (SSE only).
    sent_bytes: usize,
    /// The cursor of the next event.
    next: u64,
    /// SSE: the last cursor handed to a stream.
    sent: u64,
    /// Every event up to this cursor was acknowledged (poll) or dropped after being written (SSE).
    dropped: u64,
    pos: Positions,
    closed: Option<CloseReason>,
    /// Event streams and polls in flight.
    attached: usize,
    detached_since: Instant,
    /// Bumped when a stream attaches: an older stream of the session ends.
    stream_gen: u64,
}

/// What a consumer waiting on the log gets.
#[derive(Debug)]
pub enum Wait {
    Events(Vec<Event>),
    Closed(CloseReason),
    Timeout,
    /// A newer event stream took the session over.
    Replaced,
}

/// The request waiting for a reply: the reply with this seq (and op, when set).
struct Waiter {
    seq: i32,
    op: Option<i32>,
    tx: oneshot::Sender<Packet>,
}

/// See the module docs.
pub struct HttpSession {
    pub id: String,
    pub kind: Kind,
    pub member: Arc<Member>,
    pub session: Arc<tokio::sync::Mutex<Session>>,
    /// Serialises the upstream POSTs of the session.
    pub upstream: tokio::sync::Mutex<()>,
    waiter: Mutex<Option<Waiter>>,
    /// Upstream packets use seq 2, 3, …; the auth is seq 1.
    pub next_seq: AtomicI32,
    /// `limits.max_packets_per_sec` over the upstream POSTs.
    pub rate: Mutex<PacketRate>,
    /// Authenticated: from then on a closed session stays known (410) for the grace period.
    pub authed: AtomicBool,
    log: Mutex<Log>,
    /// Consumers: events appended, closed, stream replaced.
    changed: Notify,
    /// The pump: attach or detach, room in the log.
    wake_pump: Notify,
    limit: usize,
    grace: Duration,
}

/// Held by an event stream or a poll in flight; dropping it starts the grace period when it was
/// the last one.
pub struct Attached(Arc<HttpSession>);

impl Drop for Attached {
    fn drop(&mut self) {
        let mut log = self.0.lock_log();
        log.attached = log.attached.saturating_sub(1);
        log.detached_since = Instant::now();
        drop(log);
        self.0.wake_pump.notify_one();
    }
}

impl HttpSession {
    pub fn new(id: String, kind: Kind, session: Session, limit: usize, grace: Duration) -> HttpSession {
        let member = session.member().clone();
        HttpSession {
            id,
            kind,
            member,
            session: Arc::new(tokio::sync::Mutex::new(session)),
            upstream: tokio::sync::Mutex::new(()),
            waiter: Mutex::new(None),
            next_seq: AtomicI32::new(2),
            rate: Mutex::new(PacketRate::default()),
            authed: AtomicBool::new(false),
            log: Mutex::new(Log {
                events: VecDeque::new(),
                unsent_bytes: 0,
                sent_bytes: 0,
                next: 1,
                sent: 0,
                dropped: 0,
                pos: Positions::default(),
                closed: None,
                attached: 0,
                detached_since: Instant::now(),
                stream_gen: 0,
            }),
            changed: Notify::new(),
            wake_pump: Notify::new(),
            limit,
            grace,
        }
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, Log> {
        // Plain counters and a queue, each update complete under the lock: usable after a panic.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reply with `seq` (and `op`) goes to `tx` instead of the log.
    pub fn expect_reply(&self, seq: i32, op: Option<i32>, tx: oneshot::Sender<Packet>) {
        *self.waiter.lock().unwrap_or_else(|p| p.into_inner()) = Some(Waiter { seq, op, tx });
    }

    pub fn forget_reply(&self) {
        self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn closed_reason(&self) -> Option<CloseReason> {
        self.lock_log().closed.or_else(|| self.member.outbox.closed_reason())
    }

    /// Count a consumer in; a stream also replaces any earlier stream (returned: its generation).
    pub fn attach(self: &Arc<Self>, stream: bool) -> (Attached, u64) {
        let mut log = self.lock_log();
        log.attached += 1;
        if stream {
            log.stream_gen += 1;
        }
        let generation = log.stream_gen;
        drop(log);
        self.wake_pump.notify_one();
        if stream {
            self.changed.notify_waiters();
        }
        (Attached(self.clone()), generation)
    }

    /// The last cursor written to an event stream.
    pub fn sent(&self) -> u64 {
        self.lock_log().sent
    }

    /// Whether every event after `cursor` is still in the log (a consumer can continue from it).
    pub fn has_after(&self, cursor: u64) -> bool {
        let log = self.lock_log();
        cursor >= log.dropped && cursor < log.next
    }

    /// Poll: drop the events up to `cursor`, which the client has received. Err when `cursor` was never
    /// handed out.
    pub fn ack(&self, cursor: u64) -> Result<(), u64> {
        let mut log = self.lock_log();
        if cursor >= log.next {
            return Err(log.next - 1);
        }
        while log.events.front().is_some_and(|e| e.cursor <= cursor) {
            if let Some(e) = log.events.pop_front() {
                log.unsent_bytes = log.unsent_bytes.saturating_sub(e.packet.encoded_len());
            }
        }
        log.dropped = log.dropped.max(cursor);
        drop(log);
        self.wake_pump.notify_one();
        Ok(())
    }

    /// SSE: everything up to `cursor` was handed to the stream. Written events stay for a re-attach,
    /// at most a quarter of the bound.
    pub fn mark_sent(&self, cursor: u64) {
        let mut log = self.lock_log();
        let log = &mut *log;
        if cursor <= log.sent {
            return;
        }
        for e in log.events.iter().filter(|e| e.cursor > log.sent && e.cursor <= cursor) {
            let n = e.packet.encoded_len();
            log.unsent_bytes = log.unsent_bytes.saturating_sub(n);
            log.sent_bytes += n;
        }
        log.sent = cursor;
        while log.sent_bytes > self.limit / 4 {
            let Some(e) = log.events.pop_front() else { break };
            log.sent_bytes = log.sent_bytes.saturating_sub(e.packet.encoded_len());
            log.dropped = e.cursor;
        }
        self.wake_pump.notify_one();
    }

    /// The events after `cursor`, once there are any; or the close, a timeout at `until`, or (for the
    /// stream of generation `stream`) its replacement.
    pub async fn wait_after(&self, cursor: u64, until: Instant, stream: Option<u64>) -> Wait {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let log = self.lock_log();
                if let Some(reason) = log.closed {
                    return Wait::Closed(reason);
                }
                if stream.is_some_and(|g| g != log.stream_gen) {
                    return Wait::Replaced;
                }
                let events: Vec<Event> = log.events.iter().filter(|e| e.cursor > cursor).cloned().collect();
                if !events.is_empty() {
                    return Wait::Events(events);
                }
            }
            tokio::select! {
                () = &mut changed => {}
                () = sleep_until(until) => return Wait::Timeout,
            }
        }
    }

    /// Turn a batch from the outbox into events (or replies for the waiting request).
    fn take(&self, items: VecDeque<Outgoing>) {
        for item in items {
            let (name, bytes) = match item {
                Outgoing::Push(p) => ("push", p.packets().clone()),
                Outgoing::Reply(b) => ("reply", b),
                Outgoing::Control(_) => continue,
            };
            for p in packets(&bytes) {
                if name == "reply" {
                    let mut waiter = self.waiter.lock().unwrap_or_else(|e| e.into_inner());
                    if waiter.as_ref().is_some_and(|w| w.seq == p.seq && w.op.is_none_or(|op| op == p.op)) {
                        if let Some(w) = waiter.take() {
                            let _ = w.tx.send(p);
                        }
                        continue;
                    }
                }
                if let Err(reason) = self.append(name, p) {
                    self.member.outbox.close(reason);
                    return;
                }
            }
        }
        self.changed.notify_waiters();
    }

    fn append(&self, name: &'static str, packet: Packet) -> Result<(), CloseReason> {
        let mut log = self.lock_log();
        // Unreachable while the pump takes only with room (half the bound plus one outbox batch of
        // at most the bound): kept as the hard bound.
        if log.unsent_bytes + packet.encoded_len() > 2 * self.limit {
            return Err(CloseReason::SlowConsumer);
        }
        if name == "push" && packet.seq != 0 {
            log.pos.note(packet.seq);
        }
        log.unsent_bytes += packet.encoded_len();
        let cursor = log.next;
        log.next += 1;
        let pos = log.pos;
        log.events.push_back(Event { cursor, name, packet, pos });
        Ok(())
    }

    /// Whether the pump may take the next outbox batch.
    fn has_room(&self) -> bool {
        self.lock_log().unsent_bytes <= self.limit / 2
    }

    /// When the session expires for want of a consumer (None while one is attached).
    fn grace_deadline(&self) -> Option<Instant> {
        let log = self.lock_log();
        (log.attached == 0).then(|| log.detached_since + self.grace)
    }

    fn close_log(&self, reason: CloseReason) {
        let mut log = self.lock_log();
        log.closed.get_or_insert(reason);
        log.events = VecDeque::new();
        log.unsent_bytes = 0;
        log.sent_bytes = 0;
        drop(log);
        self.forget_reply();
        self.changed.notify_waiters();
    }
}

/// The goim deadline (handshake, idle, token expiry) of the session: the close reason once it passes.
/// Waits for the session's lock while a request or the auth holds it, without holding up the pump.
async fn goim_deadline(session: &tokio::sync::Mutex<Session>) -> CloseReason {
    loop {
        let deadline = session.lock().await.deadline();
        sleep_until(deadline).await;
        let mut session = session.lock().await;
        // Re-checked under the lock: a heartbeat may just have moved it.
        if Instant::now() >= session.deadline() {
            if let Flow::Close(reason) = session.on_deadline().await {
                return reason;
            }
        }
    }
}

/// The next outbox batch, or only its close while the log has no room.
async fn next_batch(hs: &HttpSession) -> Batch {
    if hs.has_room() {
        hs.member.outbox.next_batch().await
    } else {
        Batch::Closed(hs.member.outbox.closed().await)
    }
}

/// The session's life: see the module docs. Returns after the teardown.
pub async fn pump(state: Arc<HttpState>, hs: Arc<HttpSession>) {
    // One future for the whole life: a delegated renewal in progress is not cut short by pushes.
    let deadline = goim_deadline(&hs.session);
    tokio::pin!(deadline);
    let mut deadline_passed = false;
    let reason = loop {
        let wake_pump = hs.wake_pump.notified();
        let grace = hs.grace_deadline();
        tokio::select! {
            // Without room in the log the outbox fills up instead (and a replay waits for room).
            batch = next_batch(&hs) => match batch {
                Batch::Items(items) => hs.take(items),
                Batch::Closed(reason) => break reason,
            },
            reason = &mut deadline, if !deadline_passed => {
                deadline_passed = true;
                hs.member.outbox.close(reason);
            }
            () = sleep_until(grace.unwrap_or_else(Instant::now)), if grace.is_some() => {
                if hs.grace_deadline().is_some_and(|d| Instant::now() >= d) {
                    debug!(conn = hs.member.id, grace = ?hs.grace, "http session without a stream or poll: closed");
                    hs.member.outbox.close(CloseReason::ClientGone);
                }
            }
            () = wake_pump => {}
        }
    };
    hs.close_log(reason);
    let ctx = state.ctx.clone();
    // The auth holds the lock until it is done (a failed or cut-short resume ends on the closed
    // outbox): `finish` runs after it.
    hs.session.lock().await.finish();
    ctx.stats.closed(reason);
    ctx.stats.connection_closed(Transport::Http);
    match reason {
        CloseReason::ClientGone | CloseReason::Shutdown => debug!(conn = hs.member.id, %reason, "http session closed"),
        _ => ctx.stats.log_close(reason, hs.member.id, None, "http"),
    }
    // An authenticated session answers 410 with its reason for the grace period, then is unknown.
    if hs.authed.load(Ordering::Relaxed) {
        tokio::time::sleep(hs.grace).await;
    }
    state.remove(&hs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_seq_field_classes() {
        let mut p = Positions::default();
        p.note(0);
        assert!(p.is_empty());
        p.note((1 << 30) | 17);
        p.note((2u32 << 30 | 5) as i32);
        p.note((3u32 << 30 | ((1 << 30) - 1)) as i32);
        assert_eq!(p, Positions { room: Some(17), user: Some(5), broadcast: Some((1 << 30) - 1) });
    }
}
