//! The edge's side of history: which subjects are stored (learned from goim-history's `history.info`),
//! the sequence numbers clients see, and fetching what a client missed from JetStream — with
//! concurrent fetches of the same gap collapsed into one, so a reconnect storm is not a JetStream storm.
//!
//! Sequences in pushes: goim leaves the header seq field of server pushes at 0; for a stored subject
//! the edge writes `class << 30 | (stream sequence mod 2^30)` there, read as an unsigned 32-bit value
//! (class 1 = room, 2 = user, 3 = broadcast; each class is its own stream with its own sequences).
//! A client resumes with that value (or the full 64-bit sequence from a history read); the edge widens
//! a 30-bit value to the most recent stream sequence with those low bits, so the field wraps every
//! 2^30 ≈ 1.07 billion messages per class without ambiguity as long as a client is not that far behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::StreamExt;
use serde::Deserialize;
use tracing::{info, warn};

use crate::outbox::Push;
use crate::protocol::encode_push_seq;
use crate::subjects;

/// Bits of the stream sequence carried in a push's seq field.
pub const SEQ_BITS: u32 = 30;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// The stored subject classes, one stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Room = 1,
    User = 2,
    Broadcast = 3,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Room => "room",
            Class::User => "user",
            Class::Broadcast => "broadcast",
        }
    }
}

/// The header seq value of a stored push.
pub fn encode_seq(class: Class, seq: u64) -> i32 {
    (((class as u32) << SEQ_BITS) | (seq & SEQ_MASK) as u32) as i32
}

/// The class and 30-bit sequence of a header seq value (None for goim's 0 / non-history pushes).
pub fn decode_seq(v: i32) -> Option<(Class, u64)> {
    let v = v as u32;
    let class = match v >> SEQ_BITS {
        1 => Class::Room,
        2 => Class::User,
        3 => Class::Broadcast,
        _ => return None,
    };
    Some((class, (v as u64) & SEQ_MASK))
}

/// Widen a client's sequence to a stream sequence: values beyond 30 bits are taken as full
/// sequences; a 30-bit value becomes the largest sequence ≤ `latest` with those low bits.
pub fn widen(seq: u64, latest: u64) -> u64 {
    if seq > SEQ_MASK || latest <= SEQ_MASK {
        return seq;
    }
    let candidate = (latest & !SEQ_MASK) | seq;
    if candidate <= latest {
        candidate
    } else {
        candidate.saturating_sub(1 << SEQ_BITS)
    }
}

/// NATS subject pattern match (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamInfo {
    pub stream: String,
    pub subjects: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistoryInfo {
    pub streams: HashMap<String, Option<StreamInfo>>,
    pub max_resume: u64,
}

/// A stored message ready to be queued: its sequence, op (for accept filtering) and encoded push.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub op: i32,
    /// The encoded push, shared by its live fan-out, the ring and every replay of it.
    pub frame: Push,
}

/// Messages kept per stored room for joins and resumes without a JetStream round trip.
pub const RING_SIZE: usize = 256;
/// Live messages held for one resuming connection before it is disconnected as too slow.
pub const MAX_HELD: usize = 65_536;

/// How the members of a stored subject's group that resume get its live messages.
#[derive(Debug, Default)]
pub struct Holds {
    /// Members resuming now: their live messages, held until their replay is done.
    pub held: HashMap<u64, Vec<Stored>>,
    /// Members whose replay went past the group's live position (a group that had delivered nothing
    /// live yet replays everything fetched): a late live copy at or below the floor is theirs already
    /// and is skipped for them alone — until the group's position passes the floor, after which such a
    /// copy is dropped for everyone anyway. (Moving the group's own position instead dropped those
    /// copies for members whose replay had ended earlier: a loss.)
    pub floors: HashMap<u64, u64>,
}

/// The history state of one stored subject's group: the last sequence delivered, a ring of recent
/// messages (rooms), and how its resuming members get live messages ([`Holds`]).
#[derive(Debug)]
pub struct Sequenced {
    pub class: Class,
    last_seq: AtomicU64,
    /// (previous sequence of the subject, message), oldest first; contiguous in the subject.
    ring: Mutex<std::collections::VecDeque<(u64, Stored)>>,
    held: Mutex<Holds>,
    /// The last JetStream fetch for a resume (its `after` and result): later resumes of the same gap
    /// beyond the ring reuse it instead of fetching again.
    last_fetch: Mutex<Option<(u64, Arc<Fetched>)>>,
}

impl Sequenced {
    pub fn new(class: Class) -> Sequenced {
        Sequenced {
            class,
            last_seq: AtomicU64::new(0),
            ring: Mutex::new(std::collections::VecDeque::new()),
            held: Mutex::new(Holds::default()),
            last_fetch: Mutex::new(None),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    pub fn set_last_seq(&self, seq: u64) {
        self.last_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Start holding live messages for `member`.
    pub fn hold(&self, member: u64) {
        self.held().held.entry(member).or_default();
    }

    /// Forget `member` (it left): nothing held for it, no floor.
    pub fn release(&self, member: u64) {
        let mut holds = self.held();
        holds.held.remove(&member);
        holds.floors.remove(&member);
    }

    /// The held buffers and floors of resuming members.
    pub fn held(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember a delivered message (ring for rooms) and advance the last sequence.
    pub fn record(&self, prev: u64, stored: Stored) {
        let seq = stored.seq;
        if self.class == Class::Room {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            // A gap in what this edge saw breaks the ring's contiguity: start it again.
            if ring.back().is_some_and(|(_, last)| last.seq != prev) {
                ring.clear();
            }
            ring.push_back((prev, stored));
            if ring.len() > RING_SIZE {
                ring.pop_front();
            }
        }
        self.set_last_seq(seq);
        let mut holds = self.held();
        if !holds.floors.is_empty() {
            // At or past a floor, the group's own position skips what the floor skipped.
            holds.floors.retain(|_, floor| *floor > seq);
        }
    }

    /// After a JetStream fetch of everything after `after` up to the newest: if the ring is empty,
    /// fill it with the fetched messages, so the next resumes of this room (a reconnect storm that is
    /// not perfectly simultaneous) are served from memory.
    pub fn seed(&self, after: u64, messages: &[Stored]) {
        if self.class != Class::Room || messages.is_empty() {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if !ring.is_empty() {
            return;
        }
        let mut prev = after;
        for stored in messages {
            ring.push_back((prev, stored.clone()));
            prev = stored.seq;
        }
        while ring.len() > RING_SIZE {
            ring.pop_front();
        }
    }

    /// The messages after `after` up to `latest` from the last resume fetch, if it covers them.
    pub fn from_last_fetch(&self, after: u64, latest: u64) -> Option<Vec<Stored>> {
        let cache = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        let (fetched_after, fetched) = cache.as_ref()?;
        let newest = fetched.messages.last().map_or(*fetched_after, |s| s.seq);
        if *fetched_after > after || newest < latest {
            return None;
        }
        Some(fetched.messages.iter().filter(|s| s.seq > after).cloned().collect())
    }

    pub fn remember_fetch(&self, after: u64, fetched: Arc<Fetched>) {
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some((after, fetched));
    }

    /// The messages after `after` up to `latest` if the ring holds all of them.
    pub fn from_ring(&self, after: u64, latest: u64) -> Option<Vec<Stored>> {
        if latest == 0 {
            return None;
        }
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let (first_prev, _) = ring.front()?;
        if *first_prev > after || ring.back().map(|(_, s)| s.seq) != Some(latest) {
            return None;
        }
        Some(ring.iter().filter(|(_, s)| s.seq > after).map(|(_, s)| s.clone()).collect())
    }
}

/// What a fetch found.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub messages: Vec<Stored>,
}

/// Why missed messages cannot be delivered: the client gets an explicit "recovery failed".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryFailed {
    #[error("retention dropped messages after sequence {0}")]
    Retention(u64),
    #[error("{0} missed messages, more than history.max_resume")]
    TooMany(u64),
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

impl RecoveryFailed {
    pub fn reason(&self) -> &'static str {
        match self {
            RecoveryFailed::Retention(_) => "retention",
            RecoveryFailed::TooMany(_) => "too_many",
            RecoveryFailed::Unavailable(_) => "unavailable",
        }
    }
}

type FetchFuture = Shared<BoxFuture<'static, Result<Arc<Fetched>, RecoveryFailed>>>;

/// See the module docs.
pub struct History {
    js: jetstream::Context,
    info: HistoryInfo,
    default_op: i32,
    inflight: Mutex<HashMap<(String, u64, u64), FetchFuture>>,
    /// JetStream fetches started (collapsed ones are not counted again).
    pub fetches: AtomicU64,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("info", &self.info).finish_non_exhaustive()
    }
}

impl History {
    /// Ask goim-history which subjects are stored; None (everything on the core path) if no history
    /// service answers.
    pub async fn discover(client: &async_nats::Client, default_op: i32) -> Option<Arc<History>> {
        let reply = match tokio::time::timeout(
            Duration::from_secs(2),
            client.request(subjects::HISTORY_INFO.to_string(), Bytes::new()),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                info!(error = %e, "no history service: every subject stays on the core path");
                return None;
            }
            Err(_) => {
                warn!("history.info timed out: every subject stays on the core path");
                return None;
            }
        };
        let info: HistoryInfo = match serde_json::from_slice(&reply.payload) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "invalid history.info answer: every subject stays on the core path");
                return None;
            }
        };
        info!(streams = ?info.streams.keys().collect::<Vec<_>>(), max_resume = info.max_resume, "history: stored subjects learned");
        Some(Arc::new(History {
            js: jetstream::new(client.clone()),
            info,
            default_op,
            inflight: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
        }))
    }

    pub fn max_resume(&self) -> u64 {
        self.info.max_resume
    }

    /// The class and stream of a subject, if it is stored.
    pub fn stream_of(&self, subject: &str) -> Option<(Class, String)> {
        let class = if subject.starts_with("room.") {
            Class::Room
        } else if subject.starts_with("user.") {
            Class::User
        } else if subject == subjects::BROADCAST {
            Class::Broadcast
        } else {
            return None;
        };
        let key = match class {
            Class::Room => "rooms",
            Class::User => "users",
            Class::Broadcast => "broadcast",
        };
        let s = self.info.streams.get(key)?.as_ref()?;
        s.subjects.iter().any(|p| subject_matches(p, subject)).then(|| (class, s.stream.clone()))
    }

    /// Whether goim-history runs a stream for user subjects (some or all of them).
    pub fn stores_users(&self) -> bool {
        self.info.streams.get("users").is_some_and(|s| s.is_some())
    }

    /// A stored message as a push with its sequence; None when its `Goim-Op` is not an int32.
    pub fn stored(&self, class: Class, seq: u64, headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> Option<Stored> {
        let op = match headers.and_then(|h| h.get(subjects::OP_HEADER)) {
            None => self.default_op,
            Some(v) => subjects::parse_op(v.as_str())?,
        };
        Some(Stored { seq, op, frame: Push::new(encode_push_seq(op, encode_seq(class, seq), payload)) })
    }

    /// Messages of `subject` with sequence in `(after, upto]` (`upto` = 0: up to the newest), at most
    /// `max_resume`; concurrent calls for the same range share one JetStream fetch.
    pub async fn fetch(self: &Arc<Self>, subject: &str, after: u64, upto: u64) -> Result<Arc<Fetched>, RecoveryFailed> {
        let key = (subject.to_string(), after, upto);
        let fut = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    let subject = subject.to_string();
                    let f = async move { this.fetch_now(&subject, after, upto).await.map(Arc::new) }.boxed().shared();
                    inflight.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let result = fut.await;
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        result
    }

    async fn fetch_now(&self, subject: &str, after: u64, upto: u64) -> Result<Fetched, RecoveryFailed> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let (class, stream_name) = self
            .stream_of(subject)
            .ok_or_else(|| RecoveryFailed::Unavailable(format!("{subject} is not stored")))?;
        let unavailable = |e: &dyn std::fmt::Display| RecoveryFailed::Unavailable(e.to_string());
        let stream = self.js.get_stream(&stream_name).await.map_err(|e| unavailable(&e))?;
        self.check_retention(&stream, subject, after).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_string(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(unavailable(&e)),
                Ok(None) => break,
                Err(_) => return Err(RecoveryFailed::Unavailable("JetStream fetch timed out".into())),
            };
            let (seq, pending) = match msg.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(e) => return Err(unavailable(&e)),
            };
            if upto != 0 && seq > upto {
                break;
            }
            if out.is_empty() && (pending + 1) > self.info.max_resume {
                return Err(RecoveryFailed::TooMany(pending + 1));
            }
            if let Some(stored) = self.stored(class, seq, msg.headers.as_ref(), &msg.payload) {
                out.push(stored);
            }
            if pending == 0 || (upto != 0 && seq >= upto) {
                break;
            }
        }
        Ok(Fetched { messages: out })
    }

    /// Fail when retention may have dropped a message of `subject` after `after`: the stream's oldest
    /// message is past it (age or stream limits), or the subject is at its per-subject cap and its
    /// oldest stored message is past it. Both limits drop oldest-first, so otherwise nothing is lost.
    async fn check_retention(&self, stream: &jetstream::stream::Stream, subject: &str, after: u64) -> Result<(), RecoveryFailed> {
        let unavailable = |e: &dyn std::fmt::Display| RecoveryFailed::Unavailable(e.to_string());
        let info = stream.get_info().await.map_err(|e| unavailable(&e))?;
        // Every sequence below the stream's first was removed; some may have been this subject's.
        if info.state.first_sequence > after + 1 {
            return Err(RecoveryFailed::Retention(after));
        }
        let cap = info.config.max_messages_per_subject;
        if cap > 0 {
            let count = match stream.info_with_subjects(subject).await {
                Ok(mut subjects) => {
                    let mut n = 0;
                    while let Some(Ok((_, c))) = subjects.next().await {
                        n += c;
                    }
                    n
                }
                Err(e) => return Err(unavailable(&e)),
            };
            if count as i64 >= cap {
                let first = stream.direct_get_first_for_subject(subject).await.map_err(|e| unavailable(&e))?;
                if first.sequence > after + 1 {
                    return Err(RecoveryFailed::Retention(after));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_encoding_round_trips_and_marks_the_class() {
        for (class, seq) in [(Class::Room, 1u64), (Class::User, 12345), (Class::Broadcast, SEQ_MASK), (Class::Room, SEQ_MASK + 5)] {
            let v = encode_seq(class, seq);
            assert_ne!(v, 0);
            assert_eq!(decode_seq(v), Some((class, seq & SEQ_MASK)));
        }
        assert_eq!(decode_seq(0), None);
        assert_eq!(decode_seq(17), None);
    }

    #[test]
    fn widening_picks_the_latest_matching_sequence() {
        assert_eq!(widen(5, 100), 5);
        assert_eq!(widen(SEQ_MASK + 10, 100), SEQ_MASK + 10);
        let latest = (3 << SEQ_BITS) + 100;
        assert_eq!(widen(50, latest), (3 << SEQ_BITS) + 50);
        assert_eq!(widen(200, latest), (2 << SEQ_BITS) + 200);
        assert_eq!(widen(100, latest), latest);
    }

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("room.>", "room.live.1"));
        assert!(subject_matches("room.*.1", "room.live.1"));
        assert!(!subject_matches("room.chat.>", "room.live.1"));
        assert!(subject_matches("broadcast", "broadcast"));
        assert!(!subject_matches("room.>", "room"));
        assert!(!subject_matches("user.*", "user.1.2"));
    }
}
