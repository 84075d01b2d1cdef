//! The fan-out hub: which local connections belong to which NATS subject, one reference-counted
//! subscription per distinct subject, and the delivery of each NATS message to every member.
//!
//! A message is encoded into its goim packet once and the same buffer is queued for every recipient
//! (each [`Member`]'s outbox). Room subjects deliver to every member; user, key and broadcast subjects
//! only to members whose accept set holds the op, exactly as goim's comet does. The hub also keeps the
//! local key registry that kicks an older connection with the same key, here and on other edges.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{HeaderMap, Message, Subscriber};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Duration, Instant};
use tracing::{debug, info, warn};

use crate::bridge::Bridge;
use crate::config::{Config, PerConnectionSubjects};
use crate::history::{widen, History, Holds, RecoveryFailed, Sequenced, Stored};
use crate::outbox::{Outbox, Outgoing, Push};
use crate::protocol::encode_push;
use crate::stats::{CloseReason, Stats};
use crate::subjects;

/// Most messages handed to a member as one queue entry (one write): the accept filter of a batch is a
/// 64-bit mask.
const MAX_BATCH: usize = 64;
/// Most messages one subject collects within one coalescing window (bounds the memory of a window).
const MAX_WINDOW_MESSAGES: usize = 4096;

/// Headers of the `ctl.kick` notice.
const KICK_EDGE: &str = "Goim-Edge";
const KICK_CONN: &str = "Goim-Conn";
const KICK_AUTH_TIME: &str = "Goim-Auth-Time";

/// Whether a subject's pushes are filtered by the members' accept sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Room pushes: every member, whatever its accepts.
    All,
    /// User, key and broadcast pushes: only members that accept the op.
    Accepting,
}

/// The hub's view of one connection.
#[derive(Debug)]
pub struct Member {
    pub id: u64,
    pub outbox: Outbox,
    accepts: RwLock<AcceptSet>,
    /// Unix nanoseconds of the successful auth; orders duplicate-key kicks across edges.
    auth_time: AtomicU64,
}

impl Member {
    pub fn new(id: u64, max_outbound_bytes: usize) -> Self {
        Member {
            id,
            outbox: Outbox::new(max_outbound_bytes),
            accepts: RwLock::new(AcceptSet::default()),
            auth_time: AtomicU64::new(0),
        }
    }

    pub fn accepts(&self, op: i32) -> bool {
        self.accepts.read().unwrap_or_else(|p| p.into_inner()).contains(&op)
    }

    /// Apply `f` to the accept set (auth, op 14, op 16).
    pub fn edit_accepts<R>(&self, f: impl FnOnce(&mut AcceptSet) -> R) -> R {
        let mut accepts = self.accepts.write().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut accepts);
        accepts.ops.shrink_to_fit();
        r
    }
}

/// The ops a connection accepts (goim's accept set): a sorted vector, a few bytes for the usual one
/// to three ops, where a hash set would cost a table per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptSet {
    ops: Vec<i32>,
}

impl AcceptSet {
    pub fn contains(&self, op: &i32) -> bool {
        self.ops.binary_search(op).is_ok()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn clear(&mut self) {
        self.ops.clear();
    }

    pub fn remove(&mut self, op: &i32) {
        if let Ok(i) = self.ops.binary_search(op) {
            self.ops.remove(i);
        }
    }

    pub fn retain(&mut self, f: impl FnMut(&i32) -> bool) {
        self.ops.retain(f);
    }
}

impl Extend<i32> for AcceptSet {
    fn extend<T: IntoIterator<Item = i32>>(&mut self, ops: T) {
        self.ops.extend(ops);
        self.ops.sort_unstable();
        self.ops.dedup();
    }
}

/// Where a subject's NATS subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// SUB not yet sent, or not yet confirmed by a round trip.
    Pending,
    /// The server has processed the SUB: messages published from now on are delivered.
    Active,
    /// The subscription could not be made (the NATS client is gone).
    Failed,
}

/// Members of a group by connection id: a short vector for the many groups of one or a few members
/// (a user's devices), a hash map once a group is large (rooms).
#[derive(Debug)]
pub enum Members {
    Few(Vec<Arc<Member>>),
    Many(HashMap<u64, Arc<Member>>),
}

/// Where [`Members`] switches from a vector to a map.
const FEW_MEMBERS: usize = 16;

impl Default for Members {
    fn default() -> Self {
        Members::Few(Vec::new())
    }
}

impl Members {
    pub fn len(&self) -> usize {
        match self {
            Members::Few(v) => v.len(),
            Members::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add (or replace) the member with this id.
    pub fn insert(&mut self, member: Arc<Member>) {
        match self {
            Members::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|m| m.id == member.id) {
                    *slot = member;
                } else if v.len() < FEW_MEMBERS {
                    v.push(member);
                } else {
                    let mut map: HashMap<u64, Arc<Member>> = v.drain(..).map(|m| (m.id, m)).collect();
                    map.insert(member.id, member);
                    *self = Members::Many(map);
                }
            }
            Members::Many(m) => {
                m.insert(member.id, member);
            }
        }
    }

    pub fn remove(&mut self, id: u64) {
        match self {
            Members::Few(v) => {
                if let Some(i) = v.iter().position(|m| m.id == id) {
                    v.swap_remove(i);
                    if v.is_empty() {
                        *v = Vec::new();
                    }
                }
            }
            Members::Many(m) => {
                m.remove(&id);
            }
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Member>> {
        let (few, many) = match self {
            Members::Few(v) => (Some(v.iter()), None),
            Members::Many(m) => (None, Some(m.values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// The local members of one subject and how its messages arrive.
#[derive(Debug)]
pub struct Group {
    /// Shared with the hub's map key: one allocation per subject.
    pub subject: Arc<str>,
    delivery: Delivery,
    members: RwLock<Members>,
    /// The group's own NATS subscription (rooms, broadcast; users and keys with
    /// `nats.per_connection_subjects = "exact"`). None when the edge's wildcard subscription for the
    /// subject's class carries its messages: a user or key group then costs no NATS subscription.
    own: Option<Box<OwnSubscription>>,
    /// Set for a stored subject (goim-history): the group follows its sequenced `live.` copy.
    seq: Option<Box<Sequenced>>,
}

/// A group's own subscription: where it stands, and the task that holds it.
#[derive(Debug)]
struct OwnSubscription {
    state: watch::Sender<SubState>,
    task: Mutex<Option<AbortHandle>>,
}

impl Group {
    /// Resolves once the group's subscription is active at the server (or failed): a message published
    /// after that reaches its members. At once for a group on a per-edge wildcard.
    pub async fn subscribed(&self) {
        if let Some(own) = &self.own {
            let mut state = own.state.subscribe();
            // An Err means the group's task ended (aborted with the group): nothing left to wait for.
            let _ = state.wait_for(|s| *s != SubState::Pending).await;
        }
    }

    /// Local members (the op-3 heartbeat count for a room).
    pub fn len(&self) -> usize {
        self.members.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Hub {
    edge_id: String,
    bridge: Bridge,
    stats: Arc<Stats>,
    default_op: i32,
    /// `push.coalesce_ms`: how long a subject with its own subscription collects messages per batch.
    window: Option<Duration>,
    per_connection: PerConnectionSubjects,
    /// Largest batch entry (bytes) queued for one member: well inside its outbound bound.
    max_batch_bytes: usize,
    groups: Mutex<HashMap<Arc<str>, Arc<Group>>>,
    /// Key → its connection on this edge; the key string is shared with the session's.
    keys: Mutex<HashMap<Arc<str>, Arc<Member>>>,
    /// Live edges in the cluster, this one included (kept by `crate::presence`; 1 until known). A
    /// broadcast's `Goim-Speed` is split over them.
    live_edges: Arc<AtomicUsize>,
    /// Stored subjects and JetStream access, when a history service answered at start.
    history: std::sync::OnceLock<Arc<History>>,
}

impl Hub {
    pub fn new(edge_id: String, bridge: Bridge, stats: Arc<Stats>, config: &Config) -> Arc<Hub> {
        Arc::new(Hub {
            edge_id,
            bridge,
            stats,
            default_op: config.push.default_op,
            window: config.push.coalesce_window(),
            per_connection: config.nats.per_connection_subjects,
            max_batch_bytes: (config.limits.max_outbound_bytes / 4).min(32 * 1024),
            groups: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            live_edges: Arc::new(AtomicUsize::new(1)),
            history: std::sync::OnceLock::new(),
        })
    }

    /// Turn on history for stored subjects (set once at start, before clients connect).
    pub fn set_history(&self, history: Arc<History>) {
        let _ = self.history.set(history);
    }

    pub fn history(&self) -> Option<&Arc<History>> {
        self.history.get()
    }

    /// The live-edge counter presence keeps up to date.
    pub fn live_edges(&self) -> &Arc<AtomicUsize> {
        &self.live_edges
    }

    /// Local member count of every room subject (presence reports).
    pub fn room_counts(&self) -> Vec<(String, usize)> {
        self.lock_groups()
            .iter()
            .filter(|(subject, _)| subject.starts_with("room."))
            .map(|(subject, group)| (subject.to_string(), group.len()))
            .collect()
    }

    /// This edge's members of `subject` (the drain at shutdown takes `broadcast`'s: every
    /// authenticated connection).
    pub fn members_of(&self, subject: &str) -> Vec<Arc<Member>> {
        let Some(group) = self.lock_groups().get(subject).cloned() else { return Vec::new() };
        let members = group.members.read().unwrap_or_else(|p| p.into_inner());
        members.values().cloned().collect()
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    pub fn edge_id(&self) -> &str {
        &self.edge_id
    }

    /// Subscribe the control subjects every edge serves: kick notices and the stats responder.
    pub async fn start_control(self: &Arc<Self>) -> Result<(), crate::bridge::BridgeError> {
        let mut kicks = self.bridge.subscribe(subjects::KICK).await?;
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = kicks.next().await {
                hub.on_kick_notice(&msg);
            }
        });
        let stats_subject = format!("ctl.stats.{}", self.edge_id);
        let mut requests = self.bridge.publisher().subscribe(stats_subject.clone()).await.map_err(
            |source| crate::bridge::BridgeError::Subscribe { subject: stats_subject, source },
        )?;
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = requests.next().await {
                let Some(reply) = msg.reply else { continue };
                let snapshot = hub.stats_snapshot();
                let body = serde_json::to_vec(&snapshot).unwrap_or_default();
                if let Err(e) = hub.bridge.publisher().publish(reply, body.into()).await {
                    warn!(error = %e, "cannot answer stats request");
                }
            }
        });
        for index in 0..self.bridge_connections() {
            self.bridge.barrier(index).await;
        }
        Ok(())
    }

    /// The edge's counters, with the hub's own (subjects, history fetches, NATS connections up):
    /// what `ctl.stats.<id>` and `/metrics` report.
    pub fn stats_snapshot(&self) -> crate::stats::Snapshot {
        let mut snapshot = self.stats.snapshot(&self.edge_id);
        snapshot.subjects = self.subject_count();
        if let Some(history) = self.history() {
            snapshot.history_fetches = history.fetches.load(Ordering::Relaxed);
        }
        snapshot.nats_connected = self.bridge.connected();
        snapshot.nats_connections = self.bridge.connections();
        snapshot.nats_reconnects = self.bridge.reconnects();
        snapshot
    }

    fn bridge_connections(&self) -> usize {
        // Every index is reachable through client_index' range; the bridge knows its size.
        self.bridge.connections()
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Group>>> {
        // Map updates are single inserts/removes; a poisoned lock holds a consistent map.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add `member` to `subject` (with `hold`, live messages of a stored subject are held for it until
    /// [`Hub::resume`] has replayed what it missed, so the replay comes first, in order). The member is
    /// in the group when this returns, so the caller can record the group before it awaits
    /// [`Group::subscribed`] and can always leave it. The subject's first local member starts the
    /// group's subscription in the group's own task, so a join abandoned half-way (its connection
    /// closed) cannot leave the subject half-subscribed for later members.
    pub fn enter(self: &Arc<Self>, subject: &str, delivery: Delivery, member: &Arc<Member>, hold: bool) -> Arc<Group> {
        let mut groups = self.lock_groups();
        let group = match groups.get(subject) {
            Some(g) => g.clone(),
            None => {
                let own = !self.on_wildcard(subject);
                let g = Arc::new(Group {
                    subject: Arc::from(subject),
                    delivery,
                    members: RwLock::new(Members::default()),
                    own: own.then(|| {
                        Box::new(OwnSubscription { state: watch::channel(SubState::Pending).0, task: Mutex::new(None) })
                    }),
                    seq: self
                        .history()
                        .and_then(|h| h.stream_of(subject))
                        .map(|(class, _)| Box::new(Sequenced::new(class))),
                });
                groups.insert(g.subject.clone(), g.clone());
                self.count_group(&g, 1);
                if let Some(own) = &g.own {
                    let task = tokio::spawn(self.clone().run_group(g.clone()));
                    *own.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
                }
                g
            }
        };
        let mut members = group.members.write().unwrap_or_else(|p| p.into_inner());
        if let (true, Some(seq)) = (hold, &group.seq) {
            seq.hold(member.id);
        }
        members.insert(member.clone());
        drop(members);
        group
    }

    /// Whether `subject`'s messages come through the edge's wildcard subscription of its class.
    fn on_wildcard(&self, subject: &str) -> bool {
        self.per_connection == PerConnectionSubjects::Wildcard
            && (subject.starts_with("user.") || subject.starts_with("key."))
    }

    /// Whether connections join their `key.<key>` subject as a group. Not with the `key.*` wildcard:
    /// the key registry ([`Hub::claim_key`]) already maps each key to its one connection, and
    /// key pushes are delivered through it (no group, no per-connection cost).
    pub fn key_groups(&self) -> bool {
        self.per_connection == PerConnectionSubjects::Exact
    }

    /// With `nats.per_connection_subjects = "wildcard"`: subscribe `key.*` and `user.*` (or
    /// `live.user.*` where goim-history stores users) once for the whole edge, and dispatch each
    /// message to its subject's group, if this edge has one. Call after history discovery.
    pub async fn start_per_connection_subjects(self: &Arc<Self>) -> Result<(), crate::bridge::BridgeError> {
        if self.per_connection != PerConnectionSubjects::Wildcard {
            return Ok(());
        }
        let key_wildcard = format!("{}.*", subjects::KEY_PREFIX);
        let user_wildcard = format!("{}.*", subjects::USER_PREFIX);
        let mut wildcards = vec![key_wildcard];
        let (users_stored, all_users_stored) = match self.history() {
            Some(h) => (h.stores_users(), h.stream_of(&user_wildcard).is_some()),
            None => (false, false),
        };
        if users_stored {
            wildcards.push(format!("{}.{user_wildcard}", subjects::LIVE_PREFIX));
        }
        if !all_users_stored {
            wildcards.push(user_wildcard);
        }
        let mut indexes = HashSet::new();
        for wildcard in wildcards {
            let mut sub = self.bridge.subscribe(&wildcard).await?;
            self.stats.nats_subscriptions.fetch_add(1, Ordering::Relaxed);
            indexes.insert(self.bridge.client_index(&wildcard));
            let hub = self.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    hub.dispatch(msg).await;
                }
            });
            debug!(subject = %wildcard, "subscribed for every connection of this edge");
        }
        for index in indexes {
            self.bridge.barrier(index).await;
        }
        Ok(())
    }

    /// A message of a wildcard subscription: to its subject's group, if any here. A stored subject's
    /// group takes only the sequenced `live.` copy, any other only the plain one.
    async fn dispatch(&self, msg: Message) {
        if let Some(token) = msg.subject.strip_prefix(subjects::KEY_PREFIX).and_then(|s| s.strip_prefix('.')) {
            self.deliver_to_key(token, &msg);
            return;
        }
        let (subject, live) = match msg.subject.strip_prefix(subjects::LIVE_PREFIX).and_then(|s| s.strip_prefix('.')) {
            Some(subject) => (subject, true),
            None => (msg.subject.as_str(), false),
        };
        let group = self.lock_groups().get(subject).cloned();
        let Some(group) = group.filter(|g| g.own.is_none() && g.seq.is_some() == live) else { return };
        self.on_messages(&group, vec![msg], std::time::Instant::now()).await;
    }

    /// A group's task: subscribe, confirm with a round trip, then deliver until aborted (the last
    /// member left; dropping the Subscriber sends UNSUB).
    async fn run_group(self: Arc<Self>, group: Arc<Group>) {
        // A stored subject is followed through its republished copy, which carries the sequences.
        let nats_subject = match &group.seq {
            Some(_) => format!("{}.{}", subjects::LIVE_PREFIX, group.subject),
            None => group.subject.to_string(),
        };
        let Some(own) = &group.own else { return };
        let mut sub = match self.bridge.subscribe(&nats_subject).await {
            Ok(sub) => sub,
            Err(e) => {
                warn!(error = %e, "subscription failed; members of this subject receive nothing");
                own.state.send_replace(SubState::Failed);
                return;
            }
        };
        self.bridge.barrier(self.bridge.client_index(&nats_subject)).await;
        own.state.send_replace(SubState::Active);
        debug!(subject = %group.subject, "subscribed");
        while let Some((batch, arrived)) = self.collect(&mut sub).await {
            self.on_messages(&group, batch, arrived).await;
        }
    }

    /// The next batch of a subscription: its next message, then everything that arrives within the
    /// coalescing window — or, without a window, only what is already waiting (adaptive coalescing:
    /// a busy subject batches by itself, an idle one adds no latency), with when the first arrived.
    /// None when the subscription ends.
    async fn collect(&self, sub: &mut Subscriber) -> Option<(Vec<Message>, std::time::Instant)> {
        let first = sub.next().await?;
        let arrived = std::time::Instant::now();
        let mut batch = vec![first];
        match self.window {
            Some(window) => {
                let deadline = Instant::now() + window;
                while batch.len() < MAX_WINDOW_MESSAGES {
                    tokio::select! {
                        biased;
                        msg = sub.next() => match msg {
                            Some(msg) => batch.push(msg),
                            None => break,
                        },
                        _ = sleep_until(deadline) => break,
                    }
                }
            }
            None => {
                while batch.len() < MAX_BATCH {
                    match sub.next().now_or_never() {
                        Some(Some(msg)) => batch.push(msg),
                        _ => break,
                    }
                }
            }
        }
        Some((batch, arrived))
    }

    /// Deliver a batch of one subject's messages, in order. Stored subjects go message by message
    /// (sequence bookkeeping and resume holds are per message; the writer still sends what queued up
    /// in one write); others are encoded once and handed to each member as one queue entry per
    /// [`MAX_BATCH`] messages. A broadcast paced by `Goim-Speed` ends the batch before it and is
    /// spread over time in this group's own task (later messages wait, other subjects do not).
    async fn on_messages(&self, group: &Group, batch: Vec<Message>, arrived: std::time::Instant) {
        if let Some(seq) = &group.seq {
            for msg in &batch {
                self.deliver_stored(group, seq, msg).await;
            }
            return;
        }
        let mut frames: Vec<(i32, Bytes)> = Vec::with_capacity(batch.len());
        for msg in &batch {
            match self.broadcast_rate(group, msg) {
                Some(rate) => {
                    self.fan_out_frames(group, &frames, arrived);
                    frames.clear();
                    if let Some((op, frame)) = self.encode(msg) {
                        self.fan_out_paced(group, op, &Push::new(frame), None, rate).await;
                    }
                }
                None => frames.extend(self.encode(msg)),
            }
        }
        self.fan_out_frames(group, &frames, arrived);
    }

    /// Connections per second this edge may reach for a broadcast carrying `Goim-Speed` (a
    /// cluster-wide rate, split evenly over the live edges; at least 1); None = no pacing.
    fn broadcast_rate(&self, group: &Group, msg: &Message) -> Option<u64> {
        if &*group.subject != subjects::BROADCAST {
            return None;
        }
        let value = msg.headers.as_ref()?.get(subjects::SPEED_HEADER)?;
        let speed: u64 = match value.as_str().trim().parse::<i64>() {
            Ok(s) if s > 0 => s as u64,
            Ok(_) => return None,
            Err(_) => {
                warn!(value = value.as_str(), "Goim-Speed is not an integer: broadcast delivered unpaced");
                return None;
            }
        };
        let edges = self.live_edges.load(Ordering::Relaxed).max(1) as u64;
        Some((speed / edges).max(1))
    }

    /// The goim packet of a push, or None when its `Goim-Op` is refused (counted and logged).
    fn encode(&self, msg: &Message) -> Option<(i32, Bytes)> {
        let op = match msg.headers.as_ref().and_then(|h| h.get(subjects::OP_HEADER)) {
            None => self.default_op,
            Some(v) => match subjects::parse_op(v.as_str()) {
                Some(op) => op,
                None => {
                    self.stats.bad_push_op.fetch_add(1, Ordering::Relaxed);
                    warn!(subject = %msg.subject, value = v.as_str(), "push refused: Goim-Op is not an int32");
                    return None;
                }
            },
        };
        Some((op, encode_push(op, &msg.payload)))
    }

    /// Remove `member_id` from `subject`; the last local member's leave unsubscribes.
    pub fn leave(&self, subject: &str, member_id: u64) {
        let mut groups = self.lock_groups();
        let Some(group) = groups.get(subject).cloned() else { return };
        let mut members = group.members.write().unwrap_or_else(|p| p.into_inner());
        members.remove(member_id);
        // A member that left while resuming (its connection closed mid-replay) holds nothing more.
        if let Some(seq) = &group.seq {
            seq.release(member_id);
        }
        if members.is_empty() {
            drop(members);
            groups.remove(subject);
            drop(groups);
            self.count_group(&group, -1);
            abort_task(&group);
            debug!(subject, "unsubscribed (last local member left)");
        }
    }

    /// Number of distinct subjects this edge is subscribed to for its clients.
    pub fn subject_count(&self) -> usize {
        self.lock_groups().len()
    }

    /// Keep the `rooms` and `nats_subscriptions` gauges as groups come and go (`delta` = ±1), so a
    /// metrics scrape reads two atomics instead of walking every subject.
    fn count_group(&self, group: &Group, delta: i64) {
        if subjects::room_id_of(&group.subject).is_some() {
            self.stats.rooms.fetch_add(delta, Ordering::Relaxed);
        }
        if group.own.is_some() {
            self.stats.nats_subscriptions.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Queue one push for `member`: into its held buffer while it resumes this stored subject, else
    /// into its outbox. Returns whether it was queued for sending now.
    fn offer(&self, group: &Group, member: &Member, frame: &Push, held: Option<(&mut Holds, &Stored)>) -> bool {
        if let Some((holds, stored)) = held {
            if let Some(buffer) = holds.held.get_mut(&member.id) {
                if buffer.len() >= crate::history::MAX_HELD {
                    // Resuming far slower than the subject moves: a slow consumer, said so.
                    member.outbox.close(CloseReason::SlowConsumer);
                } else {
                    buffer.push(stored.clone());
                }
                return false;
            }
            if holds.floors.get(&member.id).is_some_and(|floor| stored.seq <= *floor) {
                // Its replay had it already.
                return false;
            }
        }
        match member.outbox.push(Outgoing::Push(frame.clone())) {
            Ok(()) => true,
            Err(CloseReason::SlowConsumer) => {
                // The connection's own task sees the closed outbox, logs and counts the reason.
                debug!(member = member.id, subject = %group.subject, "outbound bound exceeded");
                false
            }
            Err(_) => false,
        }
    }

    /// The hub's fan-out: `frame` to every member that should get it (room: all; user, key,
    /// broadcast: those accepting `op`). `stored` is set for a stored subject's message, whose
    /// resuming members get it through their held buffer.
    fn fan_out(&self, group: &Group, op: i32, frame: &Push, stored: Option<(&Sequenced, &Stored)>) {
        let members = group.members.read().unwrap_or_else(|p| p.into_inner());
        self.fan_out_to(group, &members, op, frame, stored);
    }

    /// A stored subject's message: fanned out and recorded (ring, last sequence) under one hold of
    /// the members lock, so a member cannot enter (and start holding) between the two — it would get
    /// the message neither live nor from its replay.
    fn fan_out_stored(&self, group: &Group, seq: &Sequenced, prev: u64, stored: Stored) {
        let members = group.members.read().unwrap_or_else(|p| p.into_inner());
        self.fan_out_to(group, &members, stored.op, &stored.frame, Some((seq, &stored)));
        seq.record(prev, stored);
    }

    fn fan_out_to(&self, group: &Group, members: &Members, op: i32, frame: &Push, stored: Option<(&Sequenced, &Stored)>) {
        let mut held = stored.map(|(seq, s)| (seq.held(), s));
        let mut delivered = 0u64;
        for member in members.values() {
            if group.delivery == Delivery::Accepting && !member.accepts(op) {
                continue;
            }
            let held = held.as_mut().map(|(guard, s)| (&mut **guard, *s));
            if self.offer(group, member, frame, held) {
                delivered += 1;
            }
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    }

    /// Several encoded pushes of one subject to every member that should get them: each member gets
    /// the packets it accepts (room: all) concatenated into one queue entry per chunk of at most
    /// [`MAX_BATCH`] packets and `max_batch_bytes` bytes. The concatenation is built once per distinct
    /// accepted subset (normally one: the whole chunk), not once per member.
    fn fan_out_frames(&self, group: &Group, frames: &[(i32, Bytes)], arrived: std::time::Instant) {
        let mut start = 0;
        while start < frames.len() {
            let mut end = start + 1;
            let mut bytes = frames[start].1.len();
            while end < frames.len() && end - start < MAX_BATCH && bytes + frames[end].1.len() <= self.max_batch_bytes {
                bytes += frames[end].1.len();
                end += 1;
            }
            match &frames[start..end] {
                [(op, frame)] => self.fan_out(group, *op, &Push::arrived_at(frame.clone(), arrived), None),
                chunk => self.fan_out_chunk(group, chunk, arrived),
            }
            start = end;
        }
    }

    fn fan_out_chunk(&self, group: &Group, chunk: &[(i32, Bytes)], arrived: std::time::Instant) {
        let concat = |mask: u64| {
            let mut buf = BytesMut::new();
            for (i, (_, frame)) in chunk.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    buf.extend_from_slice(frame);
                }
            }
            buf.freeze()
        };
        let full: u64 = if chunk.len() == 64 { u64::MAX } else { (1u64 << chunk.len()) - 1 };
        let whole = Push::arrived_at(concat(full), arrived);
        // The distinct ops of the chunk and which packets carry each: one accepts check per op.
        let mut ops: Vec<(i32, u64)> = Vec::new();
        for (i, (op, _)) in chunk.iter().enumerate() {
            match ops.iter_mut().find(|(o, _)| o == op) {
                Some((_, mask)) => *mask |= 1 << i,
                None => ops.push((*op, 1 << i)),
            }
        }
        let mut subsets: HashMap<u64, Push> = HashMap::new();
        let members = group.members.read().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0u64;
        for member in members.values() {
            let mask = match group.delivery {
                Delivery::All => full,
                Delivery::Accepting => ops.iter().filter(|(op, _)| member.accepts(*op)).fold(0, |m, (_, bits)| m | bits),
            };
            let item = match mask {
                0 => continue,
                m if m == full => whole.clone(),
                m => subsets.entry(m).or_insert_with(|| Push::arrived_at(concat(m), arrived)).clone(),
            };
            if self.offer(group, member, &item, None) {
                delivered += u64::from(mask.count_ones());
            }
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    }

    /// [`Hub::fan_out`] spread over time: the members present now (that accept the op) are reached
    /// at `rate` connections per second, the first at once. Runs in the subject's own task, so later
    /// messages of the subject wait (their order is kept) and other subjects are not held up.
    async fn fan_out_paced(&self, group: &Group, op: i32, frame: &Push, stored: Option<(&Sequenced, u64, &Stored)>, rate: u64) {
        // Under the members lock, at once: the members to reach, and for a stored message its
        // recording and its copies for members still resuming (their held buffers). A member that
        // joins later finds it in the ring; one that is resuming now gets it after its replay, unless
        // the replay already had it — exactly once either way, however long the pacing takes.
        let members: Vec<Arc<Member>> = {
            let members = group.members.read().unwrap_or_else(|p| p.into_inner());
            let accepting = members.values().filter(|m| m.accepts(op));
            match stored {
                None => accepting.cloned().collect(),
                Some((seq, prev, s)) => {
                    let mut held = seq.held();
                    let live: Vec<Arc<Member>> = accepting
                        .filter(|m| {
                            let holding = held.held.contains_key(&m.id);
                            if holding {
                                self.offer(group, m, frame, Some((&mut *held, s)));
                            }
                            let replayed = held.floors.get(&m.id).is_some_and(|floor| s.seq <= *floor);
                            !holding && !replayed
                        })
                        .cloned()
                        .collect();
                    drop(held);
                    seq.record(prev, s.clone());
                    live
                }
            }
        };
        debug!(members = members.len(), rate, "paced broadcast");
        let start = tokio::time::Instant::now();
        let mut delivered = 0u64;
        for (i, member) in members.iter().enumerate() {
            let due = start + std::time::Duration::from_secs_f64(i as f64 / rate as f64);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if self.offer(group, member, frame, None) {
                delivered += 1;
            }
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    }

    /// A push to `key.<token>` (the key escaped), for the connection that holds the key here, if any
    /// and if it accepts the op.
    fn deliver_to_key(&self, token: &str, msg: &Message) {
        let Ok(key) = subjects::unescape_token(token) else { return };
        let Some(member) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(key.as_str()).cloned() else { return };
        let Some((op, frame)) = self.encode(msg) else { return };
        if member.accepts(op) && member.outbox.push(Outgoing::Push(Push::new(frame))).is_ok() {
            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Register `key` for `member` and kick the older holder of the key on this edge; then tell the
    /// other edges, whose holders are older, to kick theirs.
    pub async fn claim_key(&self, key: &Arc<str>, member: &Arc<Member>) {
        let key_ref: &str = key;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        member.auth_time.store(now, Ordering::Relaxed);
        let older = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), member.clone());
        let key = key_ref;
        if let Some(older) = older {
            if older.id != member.id {
                info!(key, old = older.id, new = member.id, "duplicate key on this edge: kicking the older connection");
                older.outbox.close(CloseReason::Kicked);
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(KICK_EDGE, self.edge_id.as_str());
        headers.insert(KICK_CONN, member.id.to_string().as_str());
        headers.insert(KICK_AUTH_TIME, now.to_string().as_str());
        let body = Bytes::from(subjects::escape_token(key));
        if let Err(e) = self.bridge.publish(subjects::KICK.to_string(), headers, body).await {
            warn!(error = %e, "cannot announce key to other edges");
        }
    }

    /// Forget `key` if `member` still holds it.
    pub fn release_key(&self, key: &str, member_id: u64) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.get(key).is_some_and(|m| m.id == member_id) {
            keys.remove(key);
        }
    }

    fn on_kick_notice(&self, msg: &Message) {
        let Some(headers) = msg.headers.as_ref() else { return };
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        let (Some(edge), Some(conn), Some(time)) = (header(KICK_EDGE), header(KICK_CONN), header(KICK_AUTH_TIME)) else {
            warn!("ignoring malformed kick notice");
            return;
        };
        if edge == self.edge_id {
            return;
        }
        let Ok(key) = std::str::from_utf8(&msg.payload).map_err(|_| ()).and_then(|t| subjects::unescape_token(t).map_err(|_| ())) else {
            warn!("ignoring kick notice with a malformed key");
            return;
        };
        let their_time: u64 = time.parse().unwrap_or(0);
        let their_conn: u64 = conn.parse().unwrap_or(0);
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let Some(local) = keys.get(key.as_str()) else { return };
        // The newer auth wins; equal clocks fall back to (edge id, conn id) so exactly one survives.
        let ours = (local.auth_time.load(Ordering::Relaxed), self.edge_id.as_str(), local.id);
        let theirs = (their_time, edge.as_str(), their_conn);
        if ours < theirs {
            info!(key, conn = local.id, by_edge = %edge, "duplicate key on another edge: kicking ours");
            local.outbox.close(CloseReason::Kicked);
        }
    }
}

fn abort_task(group: &Group) {
    let Some(own) = &group.own else { return };
    if let Some(task) = own.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
        // Dropping the Subscriber inside the task sends UNSUB.
        task.abort();
    }
}

/// History: sequenced delivery of stored subjects, gap filling and resume.
impl Hub {
    /// Deliver one republished message of a stored subject: duplicates are dropped, and a gap
    /// (`Nats-Last-Sequence` newer than what this group delivered) is filled from JetStream first.
    async fn deliver_stored(&self, group: &Group, seq: &Sequenced, msg: &Message) {
        let Some(history) = self.history() else { return };
        let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).and_then(|v| v.as_str().parse::<u64>().ok());
        let Some(this) = header("Nats-Sequence") else {
            warn!(subject = %msg.subject, "republished message without Nats-Sequence ignored");
            return;
        };
        let prev = header("Nats-Last-Sequence").unwrap_or(0);
        let last = seq.last_seq();
        if this <= last {
            return;
        }
        if last != 0 && prev > last {
            // Missed republished messages (a reconnect, a leader change): fetch them, in order.
            self.stats.gaps.fetch_add(1, Ordering::Relaxed);
            match history.fetch(&group.subject, last, prev).await {
                Ok(fetched) => {
                    let mut before = last;
                    for stored in fetched.messages.iter().filter(|s| s.seq > last) {
                        self.fan_out_stored(group, seq, before, stored.clone());
                        before = stored.seq;
                    }
                }
                Err(e) => {
                    self.stats.gaps_unfilled.fetch_add(1, Ordering::Relaxed);
                    warn!(subject = %group.subject, after = last, upto = prev, error = %e, "gap could not be filled; clients that resume get recovery-failed");
                }
            }
        }
        match history.stored(seq.class, this, msg.headers.as_ref(), &msg.payload) {
            Some(stored) => {
                // Fanned out and recorded under one hold of the members lock (paced: the recording
                // and the resuming members' copies at once, the rest over time): a member that is
                // resuming gets it either from the ring or through its held buffer, never neither.
                match self.broadcast_rate(group, msg) {
                    Some(rate) => self.fan_out_paced(group, stored.op, &stored.frame, Some((seq, prev, &stored)), rate).await,
                    None => self.fan_out_stored(group, seq, prev, stored),
                }
            }
            None => {
                self.stats.bad_push_op.fetch_add(1, Ordering::Relaxed);
                warn!(subject = %msg.subject, "push refused: Goim-Op is not an int32");
                seq.set_last_seq(this);
            }
        }
    }

    /// Replay to `member` what it missed of `group` since `from` (the 30-bit value of a push's seq
    /// field, widened here), while the group keeps holding its live messages (see [`Hub::enter`]'s
    /// `hold`). Returns the replay's outcome and the sequence it reached: [`Hub::release_held`] then
    /// queues the held messages past that point.
    pub async fn replay_missed(&self, group: &Group, member: &Arc<Member>, from: u64) -> (Result<usize, RecoveryFailed>, u64) {
        let Some(seq) = &group.seq else {
            return (Err(RecoveryFailed::Unavailable(format!("{} is not stored", group.subject))), 0);
        };
        let after = widen(from, seq.last_seq());
        let result = self.replay(group, seq, member, after).await;
        if result.is_err() {
            self.stats.recovery_failed.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok((n, last)) => (Ok(n), last),
            Err(e) => (Err(e), after),
        }
    }

    /// End `member`'s resume of `resumed` (each group with the sequence its replay reached): queue
    /// `answer` (the op-20 reply), then every group's live messages held past its replay, and stop
    /// holding — all while the held buffers of every group are locked. A live message is fanned out
    /// under its group's held lock ([`Hub::fan_out_to`]), so it is either in a held buffer (queued
    /// here, in order) or reaches the outbox after everything queued here: replay, answer, held, live,
    /// in stream order, with nothing in between. (Queuing them after the release instead let a live
    /// message overtake the held ones.) The locks are taken in class order, the only place that holds
    /// more than one, so two resumes cannot deadlock.
    pub fn release_held(&self, resumed: &[(&Group, u64)], member: &Member, answer: Outgoing) -> Result<(), CloseReason> {
        let mut stored: Vec<(&Sequenced, u64)> = resumed.iter().filter_map(|(g, floor)| g.seq.as_deref().map(|s| (s, *floor))).collect();
        stored.sort_by_key(|(s, _)| s.class as u8);
        let mut guards: Vec<_> = stored.iter().map(|(s, floor)| (*s, s.held(), *floor)).collect();
        let mut queued = member.outbox.push(answer);
        for (seq, holds, floor) in &mut guards {
            let messages = holds.held.remove(&member.id).unwrap_or_default();
            if *floor > seq.last_seq() {
                // The replay went past the live position (the group had delivered nothing live yet):
                // late live copies up to the floor are skipped for this member.
                holds.floors.insert(member.id, *floor);
            }
            if queued.is_ok() {
                for m in messages.into_iter().filter(|m| m.seq > *floor) {
                    if let Err(reason) = member.outbox.push(Outgoing::Push(m.frame)) {
                        queued = Err(reason);
                        break;
                    }
                }
            }
        }
        queued
    }

    /// Queue the messages after `after` (from the ring, else JetStream); returns (count, last seq).
    async fn replay(&self, group: &Group, seq: &Sequenced, member: &Arc<Member>, after: u64) -> Result<(usize, u64), RecoveryFailed> {
        let history = self.history().ok_or_else(|| RecoveryFailed::Unavailable("no history".into()))?;
        let latest = seq.last_seq();
        let cached = seq.from_ring(after, latest).or_else(|| seq.from_last_fetch(after, latest));
        let messages = match cached {
            Some(messages) => messages,
            None if latest != 0 && after >= latest => Vec::new(),
            None => {
                let fetched = history.fetch(&group.subject, after, latest).await?;
                seq.seed(after, &fetched.messages);
                seq.remember_fetch(after, fetched.clone());
                // A group that has delivered nothing live yet replays everything fetched; the live
                // copies of the newest of it may still come, and are skipped for this member by its
                // floor ([`Hub::release_held`]), not by moving the group's position: other members
                // resuming from an older fetch need them.
                fetched.messages.clone()
            }
        };
        // A group that is delivering live replays only up to where its live delivery stands: what
        // came after is reaching this member live (held until the release). Moving the group's
        // position past it instead would drop those live copies for every other member.
        let upto = if latest == 0 { u64::MAX } else { latest };
        let mut last = after;
        let mut n = 0;
        for stored in messages.into_iter().filter(|s| s.seq > after && s.seq <= upto) {
            last = stored.seq;
            if group.delivery == Delivery::Accepting && !member.accepts(stored.op) {
                continue;
            }
            // Paced: a replay of thousands of messages waits for the client's writer instead of
            // overflowing its outbound bound.
            if member.outbox.push_paced(Outgoing::Push(stored.frame)).await.is_err() {
                break;
            }
            n += 1;
        }
        self.stats.replayed.fetch_add(n as u64, Ordering::Relaxed);
        Ok((n, last))
    }
}

#[cfg(test)]
mod tests {
    use super::AcceptSet;

    #[test]
    fn members_grow_from_a_vector_into_a_map_and_stay_a_set() {
        use super::{Member, Members};
        use std::sync::Arc;
        let mut m = Members::default();
        for id in 0..40u64 {
            m.insert(Arc::new(Member::new(id, 4096)));
            m.insert(Arc::new(Member::new(id, 4096)));
        }
        assert_eq!(m.len(), 40);
        assert!(matches!(m, Members::Many(_)));
        let mut ids: Vec<u64> = m.values().map(|x| x.id).collect();
        ids.sort();
        assert_eq!(ids, (0..40).collect::<Vec<_>>());
        for id in 0..40u64 {
            m.remove(id);
        }
        assert!(m.is_empty());
        let mut few = Members::default();
        few.insert(Arc::new(Member::new(1, 4096)));
        few.insert(Arc::new(Member::new(2, 4096)));
        few.remove(1);
        assert_eq!(few.values().map(|x| x.id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn accept_set_is_a_set() {
        let mut a = AcceptSet::default();
        a.extend([1001, 1000, 1001, 7]);
        assert_eq!(a.len(), 3);
        assert!(a.contains(&1000) && a.contains(&1001) && a.contains(&7) && !a.contains(&8));
        a.remove(&1001);
        a.remove(&5);
        assert!(!a.contains(&1001) && a.len() == 2);
        a.retain(|op| *op > 10);
        assert!(a.contains(&1000) && !a.contains(&7));
        a.clear();
        assert!(a.is_empty());
    }
}
