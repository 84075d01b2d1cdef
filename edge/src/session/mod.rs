//! One client's goim session: the state machine from accept to close, independent of the transport.
//!
//! The transport (`crate::transport`) feeds decoded packets to [`Session::on_packet`] and watches
//! [`Session::deadline`]; the session answers through the member's outbox and joins or leaves hub
//! subjects. States: `Handshake` (packets other than op 7 are ignored, the handshake timer runs) and
//! `Active` (heartbeat, change room, sub/unsub, send message, echo of anything else), as goim's comet.

pub mod auth;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::HeaderMap;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::AuthMode;
use crate::hub::{Delivery, Group, Member};
use crate::outbox::Outgoing;
use crate::protocol::{op, Packet};
use crate::server::EdgeContext;
use crate::stats::CloseReason;
use crate::subjects;

/// Headers of an ingress (op 4) message.
pub const INGRESS_MID: &str = "Goim-Mid";
pub const INGRESS_KEY: &str = "Goim-Key";
pub const INGRESS_ROOM: &str = "Goim-Room";
pub const INGRESS_EDGE: &str = "Goim-Edge";

/// What the transport should do after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close(CloseReason),
}

#[derive(Debug)]
struct Room {
    id: String,
    subject: String,
    group: Arc<Group>,
}

#[derive(Debug)]
struct Active {
    mid: i64,
    key: String,
    room: Option<Room>,
}

#[derive(Debug)]
enum State {
    Handshake,
    Active(Active),
}

/// See the module docs.
#[derive(Debug)]
pub struct Session {
    ctx: Arc<EdgeContext>,
    member: Arc<Member>,
    peer: SocketAddr,
    state: State,
    deadline: Instant,
    /// Every subject this member may have joined, recorded before the join is awaited, so that
    /// [`Session::finish`] leaves them all even if the connection ends half-way through an auth.
    joined: Vec<String>,
    /// The key registered in the hub, recorded the same way.
    claimed_key: Option<String>,
}

impl Session {
    /// A session for a socket accepted at `accepted_at` (the handshake timer starts there, so it covers
    /// the WebSocket upgrade too).
    pub fn new(ctx: Arc<EdgeContext>, peer: SocketAddr, accepted_at: Instant) -> Session {
        let id = ctx.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member::new(id, ctx.config.limits.max_outbound_bytes));
        let deadline = accepted_at + ctx.config.session.handshake_timeout();
        Session {
            ctx,
            member,
            peer,
            state: State::Handshake,
            deadline,
            joined: Vec::new(),
            claimed_key: None,
        }
    }

    pub fn context(&self) -> &Arc<EdgeContext> {
        &self.ctx
    }

    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// When the connection must close unless something resets the timer.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The reason to give when [`Session::deadline`] passes.
    pub fn timeout_reason(&self) -> CloseReason {
        match self.state {
            State::Handshake => CloseReason::HandshakeTimeout,
            State::Active(_) => CloseReason::IdleTimeout,
        }
    }

    fn reply(&self, packet: Packet) -> Flow {
        match self.member.outbox.push(Outgoing::Reply(packet.encode())) {
            Ok(()) => Flow::Continue,
            Err(reason) => Flow::Close(reason),
        }
    }

    /// Handle one inbound packet.
    pub async fn on_packet(&mut self, p: Packet) -> Flow {
        if let State::Handshake = self.state {
            if p.op != op::AUTH {
                debug!(peer = %self.peer, op = p.op, "packet before auth ignored");
                return Flow::Continue;
            }
            return self.authenticate(p).await;
        }
        match p.op {
            op::HEARTBEAT => {
                self.deadline = Instant::now() + self.ctx.config.session.idle_timeout();
                let online = match &self.state {
                    State::Active(Active { room: Some(room), .. }) => room.group.len(),
                    _ => 0,
                };
                let online = i32::try_from(online).unwrap_or(i32::MAX);
                self.reply(p.reply(op::HEARTBEAT_REPLY, online.to_be_bytes().to_vec()))
            }
            op::CHANGE_ROOM => {
                self.change_room(&p).await;
                self.reply(p.reply(op::CHANGE_ROOM_REPLY, p.body.clone()))
            }
            op::SUB | op::UNSUB => {
                self.edit_accepts(&p);
                let reply_op = if p.op == op::SUB { op::SUB_REPLY } else { op::UNSUB_REPLY };
                self.reply(p.reply(reply_op, p.body.clone()))
            }
            op::SEND_MSG => {
                self.publish_ingress(&p).await;
                self.reply(p.reply(p.op, bytes::Bytes::new()))
            }
            // goim's default path: any other op (0, 7, business numbers, …) is echoed, body empty.
            _ => self.reply(p.reply(p.op, bytes::Bytes::new())),
        }
    }

    async fn authenticate(&mut self, p: Packet) -> Flow {
        let limits = &self.ctx.config.limits;
        let body = match auth::parse_auth_body(&p.body, limits) {
            Ok(body) => body,
            Err(e) => {
                info!(peer = %self.peer, error = %e, "auth refused; closing without reply");
                return Flow::Close(CloseReason::BadAuth);
            }
        };
        match self.ctx.config.auth.mode {
            AuthMode::TrustBody => {
                if body.token.is_some() {
                    debug!(peer = %self.peer, "auth token ignored: auth.mode is trust-body");
                }
            }
        }
        let key = if body.key.is_empty() { uuid::Uuid::new_v4().to_string() } else { body.key };
        self.member.edit_accepts(|a| {
            a.clear();
            a.extend(body.accepts.iter().copied());
        });

        let hub = self.ctx.hub.clone();
        let mut subjects = vec![
            (subjects::BROADCAST.to_string(), Delivery::Accepting),
            (subjects::key_subject(&key), Delivery::Accepting),
        ];
        if body.mid != 0 {
            subjects.push((subjects::user_subject(body.mid), Delivery::Accepting));
        }
        for (subject, delivery) in subjects {
            self.joined.push(subject.clone());
            hub.join(&subject, delivery, &self.member).await;
        }
        let room = if body.room_id.is_empty() {
            None
        } else {
            let subject = subjects::room_subject(&body.room_id);
            self.joined.push(subject.clone());
            let group = hub.join(&subject, Delivery::All, &self.member).await;
            Some(Room { id: body.room_id, subject, group })
        };
        self.claimed_key = Some(key.clone());
        hub.claim_key(&key, &self.member).await;

        debug!(peer = %self.peer, conn = self.member.id, mid = body.mid, key, room = ?room.as_ref().map(|r| &r.id), platform = body.platform, "authenticated");
        self.state = State::Active(Active { mid: body.mid, key, room });
        self.ctx.stats.authenticated.fetch_add(1, Ordering::Relaxed);
        self.deadline = Instant::now() + self.ctx.config.session.idle_timeout();
        self.reply(p.reply(op::AUTH_REPLY, bytes::Bytes::new()))
    }

    async fn change_room(&mut self, p: &Packet) {
        let State::Active(active) = &mut self.state else { return };
        let target = match std::str::from_utf8(&p.body) {
            Ok(id) => match auth::check_room(id, &self.ctx.config.limits) {
                Ok(()) => Some(id.to_string()),
                Err(e) => {
                    info!(peer = %self.peer, error = %e, "change room refused; connection is now in no room");
                    None
                }
            },
            Err(_) => {
                info!(peer = %self.peer, "change room refused: room id is not UTF-8; connection is now in no room");
                None
            }
        };
        if let (Some(target), Some(room)) = (&target, &active.room) {
            if *target == room.id {
                return;
            }
        }
        let hub = &self.ctx.hub;
        if let Some(old) = active.room.take() {
            hub.leave(&old.subject, self.member.id);
            self.joined.retain(|s| *s != old.subject);
        }
        let Some(target) = target.filter(|t| !t.is_empty()) else { return };
        let subject = subjects::room_subject(&target);
        self.joined.push(subject.clone());
        let group = hub.join(&subject, Delivery::All, &self.member).await;
        active.room = Some(Room { id: target, subject, group });
    }

    fn edit_accepts(&self, p: &Packet) {
        let Some(ops) = auth::parse_ops(&p.body) else {
            debug!(peer = %self.peer, op = p.op, "malformed accept list ignored");
            return;
        };
        let max = self.ctx.config.limits.max_accepts;
        self.member.edit_accepts(|a| {
            if p.op == op::SUB {
                let mut grown = a.clone();
                grown.extend(ops.iter().copied());
                if grown.len() > max {
                    info!(peer = %self.peer, max, "sub ignored: accept set would exceed limits.max_accepts");
                    return;
                }
                *a = grown;
            } else {
                for o in &ops {
                    a.remove(o);
                }
            }
        });
    }

    async fn publish_ingress(&self, p: &Packet) {
        let State::Active(active) = &self.state else { return };
        let room_subject = active.room.as_ref().map(|r| r.subject.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(INGRESS_MID, active.mid.to_string().as_str());
        headers.insert(INGRESS_KEY, subjects::escape_token(&active.key).as_str());
        if let Some(room) = room_subject {
            headers.insert(INGRESS_ROOM, room);
        }
        headers.insert(INGRESS_EDGE, self.ctx.hub.edge_id());
        let subject = subjects::ingress_subject(room_subject);
        match self.ctx.hub.bridge().publish(subject, headers, p.body.clone()).await {
            Ok(()) => {
                self.ctx.stats.ingress.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.ctx.stats.ingress_failed.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %self.peer, error = %e, "op 4 not forwarded upstream");
            }
        }
    }

    /// Leave every subject and release the key. Called once, when the connection ends.
    pub fn finish(&mut self) {
        let hub = &self.ctx.hub;
        for subject in self.joined.drain(..) {
            hub.leave(&subject, self.member.id);
        }
        if let Some(key) = self.claimed_key.take() {
            hub.release_key(&key, self.member.id);
        }
        self.state = State::Handshake;
    }
}
