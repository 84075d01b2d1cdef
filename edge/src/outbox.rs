//! Per-connection outbound queue with a byte bound: the edge's backpressure.
//!
//! Producers (the fan-out hub for pushes, the session for replies) append already-encoded packets; the
//! connection's writer takes everything queued at once and writes it in one go. That is the adaptive
//! coalescing: an idle connection's writer is parked on the queue and writes a message the moment it
//! arrives, while a busy one picks up whatever accumulated during its last write. No timer is involved.
//!
//! When queued bytes would exceed the bound the connection is closed with `SlowConsumer`: it is never
//! left connected while some of its messages are dropped, and a producer never waits on a slow client.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::stats::CloseReason;

/// One queued item. Pushes may be coalesced into one op-9 wrapper for WebSocket clients; replies are
/// always sent as their own packet/message (goim never wraps replies). A `Push` holds one or more
/// whole encoded packets (a coalesced batch from the hub is one item).
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An encoded server push (ver 1, business op, seq 0), shared by all recipients.
    Push(Push),
    /// An encoded reply to one of this client's packets.
    Reply(Bytes),
    /// Bytes already framed for the transport (a WebSocket pong or close), written as they are.
    Control(Bytes),
}

impl Outgoing {
    /// The item's uncompressed size: what the outbound bound counts.
    pub fn len(&self) -> usize {
        match self {
            Outgoing::Push(p) => p.len(),
            Outgoing::Reply(b) | Outgoing::Control(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One or more encoded push packets, shared by every recipient (one allocation per hub batch, cloned
/// per member as a reference count), with a form that transports derive from them once for all
/// recipients: the permessage-deflate WebSocket message, computed by the first writer of a
/// connection that negotiated the extension and reused by every other one
/// (`crate::transport::ws`). Derefs to the packets.
#[derive(Clone)]
pub struct Push(Arc<PushInner>);

struct PushInner {
    packets: Bytes,
    /// When the first of these packets' NATS messages was taken off its subscription: where the push
    /// latency histogram (`crate::stats::Stats::push_latency`) starts.
    arrived: Instant,
    /// The compressed WebSocket message payload; `Some(None)` once found not worth compressing.
    deflated: OnceLock<Option<Bytes>>,
}

impl Push {
    /// Packets whose message arrived just now.
    pub fn new(packets: Bytes) -> Push {
        Push::arrived_at(packets, Instant::now())
    }

    /// Packets whose (first) message arrived at `arrived` (a coalesced batch: its first message).
    pub fn arrived_at(packets: Bytes, arrived: Instant) -> Push {
        Push(Arc::new(PushInner { packets, arrived, deflated: OnceLock::new() }))
    }

    pub fn arrived(&self) -> Instant {
        self.0.arrived
    }

    /// The encoded packets.
    pub fn packets(&self) -> &Bytes {
        &self.0.packets
    }

    /// The shared compressed form: `compress(packets)` on the first call (concurrent callers wait for
    /// it), the stored result after. `compress` must depend on the packets only.
    pub fn deflated(&self, compress: impl FnOnce(&Bytes) -> Option<Bytes>) -> Option<&Bytes> {
        self.0.deflated.get_or_init(|| compress(&self.0.packets)).as_ref()
    }
}

impl Deref for Push {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.0.packets
    }
}

impl From<Bytes> for Push {
    fn from(packets: Bytes) -> Push {
        Push::new(packets)
    }
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push").field("len", &self.0.packets.len()).field("deflated", &self.0.deflated.get()).finish()
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// Until the auth reply is queued ([`Outbox::open_with`]) the writer takes nothing: a push for a
    /// subject joined during the auth must not reach the client before its op 8.
    open: bool,
}

/// See the module docs. Small on purpose (one per connection): an idle outbox holds no heap memory.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// The writer (one per outbox), woken when something is queued or the outbox closes.
    writer: AtomicWaker,
    /// Signalled whenever the writer takes what is queued (room for [`Outbox::push_paced`]) and on
    /// close (so a writer blocked on a socket that is not being read can be abandoned).
    drained: Notify,
    limit: usize,
}

/// What the writer gets from [`Outbox::next_batch`]: everything queued, oldest first.
#[derive(Debug)]
pub enum Batch {
    Items(VecDeque<Outgoing>),
    Closed(CloseReason),
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Outbox { state: Mutex::new(State::default()), writer: AtomicWaker::new(), drained: Notify::new(), limit }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (every update is a few
        // plain field writes), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue an item. Returns `Err(SlowConsumer)` (and closes the outbox) when the bound is
    /// exceeded, or the earlier reason if the outbox is already closed.
    pub fn push(&self, item: Outgoing) -> Result<(), CloseReason> {
        let mut st = self.lock();
        if let Some(reason) = st.closed {
            return Err(reason);
        }
        if st.bytes + item.len() > self.limit {
            drop(st);
            self.close(CloseReason::SlowConsumer);
            return Err(CloseReason::SlowConsumer);
        }
        st.bytes += item.len();
        st.items.push_back(item);
        let was_empty = st.items.len() == 1;
        drop(st);
        if was_empty {
            self.writer.wake();
        }
        Ok(())
    }

    /// Queue an item, first waiting (not failing) while the queue is over half full: for long
    /// replays, which must reach a client that reads, however long they are. The close is still
    /// immediate for a client that stops reading: its writer never drains.
    pub async fn push_paced(&self, item: Outgoing) -> Result<(), CloseReason> {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let st = self.lock();
                if let Some(reason) = st.closed {
                    return Err(reason);
                }
                if st.bytes + item.len() <= self.limit / 2 || st.items.is_empty() {
                    drop(st);
                    return self.push(item);
                }
            }
            // The close also signals `drained`.
            drained.await;
        }
    }

    /// Queue `first` ahead of everything queued so far and let the writer take what is queued: the
    /// auth reply, which must precede any push.
    pub fn open_with(&self, first: Outgoing) -> Result<(), CloseReason> {
        let mut st = self.lock();
        if let Some(reason) = st.closed {
            return Err(reason);
        }
        st.bytes += first.len();
        st.items.push_front(first);
        st.open = true;
        drop(st);
        self.writer.wake();
        Ok(())
    }

    /// Let the writer take what is queued, with nothing put first.
    pub fn open(&self) {
        self.lock().open = true;
        self.writer.wake();
    }

    /// Close the outbox; the first reason wins. Queued items are discarded: the connection is going.
    pub fn close(&self, reason: CloseReason) -> CloseReason {
        let mut st = self.lock();
        let reason = *st.closed.get_or_insert(reason);
        st.items = VecDeque::new();
        st.bytes = 0;
        drop(st);
        self.writer.wake();
        self.drained.notify_waiters();
        reason
    }

    /// Resolves once the outbox is closed, with the reason.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if let Some(reason) = self.closed_reason() {
                return reason;
            }
            drained.await;
        }
    }

    /// Why the outbox was closed, if it was.
    pub fn closed_reason(&self) -> Option<CloseReason> {
        self.lock().closed
    }

    /// Wait for queued items (all of them, in order) or for the close.
    pub async fn next_batch(&self) -> Batch {
        std::future::poll_fn(|cx| self.poll_next_batch(cx)).await
    }

    /// [`Outbox::next_batch`] as a poll, for the connection's single writer: waiting costs the writer
    /// no memory of its own (the waker lives here).
    pub fn poll_next_batch(&self, cx: &mut Context<'_>) -> Poll<Batch> {
        // Register before checking, so a push between the check and the return is seen.
        self.writer.register(cx.waker());
        let mut st = self.lock();
        if let Some(reason) = st.closed {
            return Poll::Ready(Batch::Closed(reason));
        }
        if st.items.is_empty() || !st.open {
            return Poll::Pending;
        }
        st.bytes = 0;
        // The whole queue moves to the writer; the outbox keeps no capacity while idle.
        let items = std::mem::take(&mut st.items);
        drop(st);
        self.drained.notify_waiters();
        Poll::Ready(Batch::Items(items))
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_everything_queued_in_order() {
        let o = Outbox::new(1024);
        o.open();
        o.push(Outgoing::Push(Push::from(Bytes::from_static(b"a")))).unwrap();
        o.push(Outgoing::Reply(Bytes::from_static(b"bb"))).unwrap();
        assert_eq!(o.queued_bytes(), 3);
        match o.next_batch().await {
            Batch::Items(items) => {
                assert_eq!(items.len(), 2);
                assert!(matches!(&items[0], Outgoing::Push(b) if b.as_ref() == b"a"));
                assert!(matches!(&items[1], Outgoing::Reply(b) if b.as_ref() == b"bb"));
            }
            Batch::Closed(r) => panic!("closed: {r:?}"),
        }
        assert_eq!(o.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn exceeding_the_bound_closes_as_slow_consumer() {
        let o = Outbox::new(10);
        o.push(Outgoing::Push(Push::from(Bytes::from_static(b"12345678")))).unwrap();
        assert_eq!(
            o.push(Outgoing::Push(Push::from(Bytes::from_static(b"123")))),
            Err(CloseReason::SlowConsumer)
        );
        // Later pushes are refused with the same reason, and the writer sees the close.
        assert_eq!(o.push(Outgoing::Push(Push::from(Bytes::from_static(b"1")))), Err(CloseReason::SlowConsumer));
        assert!(matches!(o.next_batch().await, Batch::Closed(CloseReason::SlowConsumer)));
    }

    #[tokio::test]
    async fn writer_wakes_on_push() {
        let o = std::sync::Arc::new(Outbox::new(100));
        o.open();
        let o2 = o.clone();
        let writer = tokio::spawn(async move { o2.next_batch().await });
        tokio::task::yield_now().await;
        o.push(Outgoing::Push(Push::from(Bytes::from_static(b"x")))).unwrap();
        assert!(matches!(writer.await.unwrap(), Batch::Items(v) if v.len() == 1));
    }

    #[tokio::test]
    async fn paced_push_waits_for_the_writer_instead_of_overflowing() {
        let o = std::sync::Arc::new(Outbox::new(100));
        o.open();
        let item = || Outgoing::Push(Push::from(Bytes::from(vec![0u8; 30])));
        // More than half full after each push: every further paced push waits for the writer.
        let o2 = o.clone();
        let pusher = tokio::spawn(async move {
            for _ in 0..10 {
                o2.push_paced(item()).await.unwrap();
            }
        });
        let mut taken = 0;
        while taken < 10 {
            match o.next_batch().await {
                Batch::Items(items) => taken += items.len(),
                Batch::Closed(r) => panic!("closed: {r:?}"),
            }
        }
        pusher.await.unwrap();
        assert_eq!(o.closed_reason(), None, "300 bytes went through a 100-byte bound");
    }

    #[tokio::test]
    async fn nothing_goes_out_before_the_auth_reply_which_goes_first() {
        let o = std::sync::Arc::new(Outbox::new(100));
        o.push(Outgoing::Push(Push::from(Bytes::from_static(b"early")))).unwrap();
        let o2 = o.clone();
        let writer = tokio::spawn(async move { o2.next_batch().await });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "the writer took a push before the auth reply");
        o.open_with(Outgoing::Reply(Bytes::from_static(b"op8"))).unwrap();
        match writer.await.unwrap() {
            Batch::Items(items) => {
                assert!(matches!(&items[0], Outgoing::Reply(b) if b.as_ref() == b"op8"));
                assert!(matches!(&items[1], Outgoing::Push(b) if b.as_ref() == b"early"));
            }
            Batch::Closed(r) => panic!("closed: {r:?}"),
        }
    }

    #[tokio::test]
    async fn first_close_reason_wins() {
        let o = Outbox::new(100);
        assert_eq!(o.close(CloseReason::Kicked), CloseReason::Kicked);
        assert_eq!(o.close(CloseReason::IdleTimeout), CloseReason::Kicked);
        assert_eq!(o.closed_reason(), Some(CloseReason::Kicked));
    }
}
