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

use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::bridge::Bridge;
use crate::history::{widen, History, RecoveryFailed, Sequenced, Stored};
use crate::outbox::{Outbox, Outgoing};
use crate::protocol::encode_push;
use crate::stats::{CloseReason, Stats};
use crate::subjects;

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
    accepts: RwLock<HashSet<i32>>,
    /// Unix nanoseconds of the successful auth; orders duplicate-key kicks across edges.
    auth_time: AtomicU64,
}

impl Member {
    pub fn new(id: u64, max_outbound_bytes: usize) -> Self {
        Member {
            id,
            outbox: Outbox::new(max_outbound_bytes),
            accepts: RwLock::new(HashSet::new()),
            auth_time: AtomicU64::new(0),
        }
    }

    pub fn accepts(&self, op: i32) -> bool {
        self.accepts.read().unwrap_or_else(|p| p.into_inner()).contains(&op)
    }

    /// Apply `f` to the accept set (auth, op 14, op 16).
    pub fn edit_accepts<R>(&self, f: impl FnOnce(&mut HashSet<i32>) -> R) -> R {
        f(&mut self.accepts.write().unwrap_or_else(|p| p.into_inner()))
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

/// The local members of one subject and the task that owns its NATS subscription.
#[derive(Debug)]
pub struct Group {
    pub subject: String,
    delivery: Delivery,
    members: RwLock<HashMap<u64, Arc<Member>>>,
    state: watch::Sender<SubState>,
    task: Mutex<Option<AbortHandle>>,
    /// Set for a stored subject (goim-history): the group follows its sequenced `live.` copy.
    seq: Option<Sequenced>,
}

impl Group {
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
    groups: Mutex<HashMap<String, Arc<Group>>>,
    keys: Mutex<HashMap<String, Arc<Member>>>,
    /// Live edges in the cluster, this one included (kept by `crate::presence`; 1 until known). A
    /// broadcast's `Goim-Speed` is split over them.
    live_edges: Arc<AtomicUsize>,
    /// Stored subjects and JetStream access, when a history service answered at start.
    history: std::sync::OnceLock<Arc<History>>,
}

impl Hub {
    pub fn new(edge_id: String, bridge: Bridge, stats: Arc<Stats>, default_op: i32) -> Arc<Hub> {
        Arc::new(Hub {
            edge_id,
            bridge,
            stats,
            default_op,
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
            .map(|(subject, group)| (subject.clone(), group.len()))
            .collect()
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
                let mut snapshot = hub.stats.snapshot(&hub.edge_id);
                if let Some(history) = hub.history() {
                    snapshot.history_fetches = history.fetches.load(Ordering::Relaxed);
                }
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

    fn bridge_connections(&self) -> usize {
        // Every index is reachable through client_index' range; the bridge knows its size.
        self.bridge.connections()
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Group>>> {
        // Map updates are single inserts/removes; a poisoned lock holds a consistent map.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add `member` to `subject`; the subject's first local member subscribes on NATS. Returns once
    /// the server has processed the subscription, so a message published after that is delivered.
    ///
    /// The subscription is made by the group's own task, not by this future, so a join abandoned
    /// half-way (its connection closed) cannot leave the subject half-subscribed for later members.
    pub async fn join(self: &Arc<Self>, subject: &str, delivery: Delivery, member: &Arc<Member>) -> Arc<Group> {
        self.join_held(subject, delivery, member, false).await
    }

    /// [`Hub::join`]; with `hold`, live messages of a stored subject are held for this member until
    /// [`Hub::resume`] has replayed what it missed (so the replay comes first, in order).
    pub async fn join_held(self: &Arc<Self>, subject: &str, delivery: Delivery, member: &Arc<Member>, hold: bool) -> Arc<Group> {
        let group = {
            let mut groups = self.lock_groups();
            let group = match groups.get(subject) {
                Some(g) => g.clone(),
                None => {
                    let g = Arc::new(Group {
                        subject: subject.to_string(),
                        delivery,
                        members: RwLock::new(HashMap::new()),
                        state: watch::channel(SubState::Pending).0,
                        task: Mutex::new(None),
                        seq: self.history().and_then(|h| h.stream_of(subject)).map(|(class, _)| Sequenced::new(class)),
                    });
                    groups.insert(subject.to_string(), g.clone());
                    let task = tokio::spawn(self.clone().run_group(g.clone()));
                    *g.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
                    g
                }
            };
            let mut members = group.members.write().unwrap_or_else(|p| p.into_inner());
            if let (true, Some(seq)) = (hold, &group.seq) {
                seq.hold(member.id);
            }
            members.insert(member.id, member.clone());
            drop(members);
            group
        };
        let mut state = group.state.subscribe();
        // An Err means the group's task ended (aborted with the group): nothing left to wait for.
        let _ = state.wait_for(|s| *s != SubState::Pending).await;
        group
    }

    /// A group's task: subscribe, confirm with a round trip, then deliver until aborted (the last
    /// member left; dropping the Subscriber sends UNSUB).
    async fn run_group(self: Arc<Self>, group: Arc<Group>) {
        // A stored subject is followed through its republished copy, which carries the sequences.
        let nats_subject = match &group.seq {
            Some(_) => format!("{}.{}", subjects::LIVE_PREFIX, group.subject),
            None => group.subject.clone(),
        };
        let mut sub = match self.bridge.subscribe(&nats_subject).await {
            Ok(sub) => sub,
            Err(e) => {
                warn!(error = %e, "subscription failed; members of this subject receive nothing");
                group.state.send_replace(SubState::Failed);
                return;
            }
        };
        self.bridge.barrier(self.bridge.client_index(&nats_subject)).await;
        group.state.send_replace(SubState::Active);
        debug!(subject = %group.subject, "subscribed");
        while let Some(msg) = sub.next().await {
            if let Some(seq) = &group.seq {
                self.deliver_stored(&group, seq, &msg).await;
                continue;
            }
            match self.broadcast_rate(&group, &msg) {
                // Paced in this group's own task: later broadcasts wait (their order is kept), other
                // subjects are not held up.
                Some(rate) => self.deliver_paced(&group, &msg, rate).await,
                None => self.deliver(&group, &msg),
            }
        }
    }

    /// Connections per second this edge may reach for a broadcast carrying `Goim-Speed` (a
    /// cluster-wide rate, split evenly over the live edges; at least 1); None = no pacing.
    fn broadcast_rate(&self, group: &Group, msg: &Message) -> Option<u64> {
        if group.subject != subjects::BROADCAST {
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
        members.remove(&member_id);
        if members.is_empty() {
            drop(members);
            groups.remove(subject);
            drop(groups);
            abort_task(&group);
            debug!(subject, "unsubscribed (last local member left)");
        }
    }

    /// Number of distinct subjects this edge is subscribed to for its clients.
    pub fn subject_count(&self) -> usize {
        self.lock_groups().len()
    }

    fn deliver(&self, group: &Group, msg: &Message) {
        let Some((op, frame)) = self.encode(msg) else { return };
        self.fan_out(group, op, &frame, None);
    }

    /// A broadcast spread over time (`Goim-Speed`).
    async fn deliver_paced(&self, group: &Group, msg: &Message, rate: u64) {
        let Some((op, frame)) = self.encode(msg) else { return };
        self.fan_out_paced(group, op, &frame, None, rate).await;
    }

    /// Queue one push for `member`: into its held buffer while it resumes this stored subject, else
    /// into its outbox. Returns whether it was queued for sending now.
    fn offer(&self, group: &Group, member: &Member, frame: &Bytes, held: Option<(&mut HashMap<u64, Vec<Stored>>, &Stored)>) -> bool {
        if let Some((held, stored)) = held {
            if let Some(buffer) = held.get_mut(&member.id) {
                if buffer.len() >= crate::history::MAX_HELD {
                    // Resuming far slower than the subject moves: a slow consumer, said so.
                    member.outbox.close(CloseReason::SlowConsumer);
                } else {
                    buffer.push(stored.clone());
                }
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
    fn fan_out(&self, group: &Group, op: i32, frame: &Bytes, stored: Option<(&Sequenced, &Stored)>) {
        let members = group.members.read().unwrap_or_else(|p| p.into_inner());
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

    /// [`Hub::fan_out`] spread over time: the members present now (that accept the op) are reached
    /// at `rate` connections per second, the first at once. Runs in the subject's own task, so later
    /// messages of the subject wait (their order is kept) and other subjects are not held up.
    async fn fan_out_paced(&self, group: &Group, op: i32, frame: &Bytes, stored: Option<(&Sequenced, &Stored)>, rate: u64) {
        let members: Vec<Arc<Member>> = group
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|m| m.accepts(op))
            .cloned()
            .collect();
        debug!(members = members.len(), rate, "paced broadcast");
        let start = tokio::time::Instant::now();
        let mut delivered = 0u64;
        for (i, member) in members.iter().enumerate() {
            let due = start + std::time::Duration::from_secs_f64(i as f64 / rate as f64);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            let mut held = stored.map(|(seq, s)| (seq.held(), s));
            let held = held.as_mut().map(|(guard, s)| (&mut **guard, *s));
            if self.offer(group, member, frame, held) {
                delivered += 1;
            }
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    }

    /// Register `key` for `member` and kick the older holder of the key on this edge; then tell the
    /// other edges, whose holders are older, to kick theirs.
    pub async fn claim_key(&self, key: &str, member: &Arc<Member>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        member.auth_time.store(now, Ordering::Relaxed);
        let older = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), member.clone());
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
        let Some(local) = keys.get(&key) else { return };
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
    if let Some(task) = group.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
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
                        self.fan_out(group, stored.op, &stored.frame, Some((seq, stored)));
                        seq.record(before, stored.clone());
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
                // Fan out first, record after: a resume that misses this message in the ring is
                // still holding, so the message reaches it through its held buffer.
                match self.broadcast_rate(group, msg) {
                    Some(rate) => self.fan_out_paced(group, stored.op, &stored.frame, Some((seq, &stored)), rate).await,
                    None => self.fan_out(group, stored.op, &stored.frame, Some((seq, &stored))),
                }
                seq.record(prev, stored);
            }
            None => {
                self.stats.bad_push_op.fetch_add(1, Ordering::Relaxed);
                warn!(subject = %msg.subject, "push refused: Goim-Op is not an int32");
                seq.set_last_seq(this);
            }
        }
    }

    /// Replay to `member` what it missed on `group` after sequence `from` (a full stream sequence or
    /// the 30-bit value of a push's seq field) and stop holding its live messages. Returns the replay's
    /// outcome and the held live messages past it, for the caller to queue after its resume answer:
    /// in order, no duplicates.
    pub async fn resume(&self, group: &Group, member: &Arc<Member>, from: u64) -> (Result<usize, RecoveryFailed>, Vec<Bytes>) {
        let Some(seq) = &group.seq else {
            return (Err(RecoveryFailed::Unavailable(format!("{} is not stored", group.subject))), Vec::new());
        };
        let after = widen(from, seq.last_seq());
        let result = self.replay(group, seq, member, after).await;
        if result.is_err() {
            self.stats.recovery_failed.fetch_add(1, Ordering::Relaxed);
        }
        let floor = match &result {
            Ok((_, last)) => *last,
            Err(_) => after,
        };
        // Under the members lock, so no live message is between the hold and the direct path.
        let members = group.members.read().unwrap_or_else(|p| p.into_inner());
        let held = seq.release(member.id);
        drop(members);
        let live = held.into_iter().filter(|s| s.seq > floor).map(|s| s.frame).collect();
        (result.map(|(n, _)| n), live)
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
                // What was fetched was stored before the fetch: its live copy has come or will
                // never come to this group; a late one must not duplicate the replay.
                if let Some(newest) = fetched.messages.last() {
                    seq.set_last_seq(newest.seq);
                }
                fetched.messages.clone()
            }
        };
        let mut last = after;
        let mut n = 0;
        for stored in messages.into_iter().filter(|s| s.seq > after) {
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
