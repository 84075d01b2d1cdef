//! One client's goim session: the state machine from accept to close, independent of the transport.
//!
//! The transport (`crate::transport`) feeds decoded packets to [`Session::on_packet`] and calls
//! [`Session::on_deadline`] when [`Session::deadline`] passes; the session answers through the
//! member's outbox and joins or leaves hub subjects. States: `Handshake` (packets other than op 7 are
//! ignored, the handshake timer runs) and `Active` (heartbeat, change room, sub/unsub, send message,
//! echo of anything else), as goim's comet. In token and delegated modes the session also holds the
//! token's claims and enforces them on every request, and closes at the token's expiry unless it
//! was refreshed (token mode: a new op 7 in-band; delegated mode: the edge asks authsvc again).

pub mod auth;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use goim_token::Claims;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::access::Denied;
use crate::config::AuthMode;
use crate::hub::{Delivery, Group, Member};
use crate::outbox::Outgoing;
use crate::protocol::{op, Packet};
use crate::server::EdgeContext;
use crate::stats::CloseReason;
use crate::subjects;

use self::auth::AuthBody;

/// Headers of an ingress (op 4) message.
pub const INGRESS_MID: &str = "Goim-Mid";
pub const INGRESS_KEY: &str = "Goim-Key";
pub const INGRESS_ROOM: &str = "Goim-Room";
pub const INGRESS_EDGE: &str = "Goim-Edge";

/// What the transport should do after a packet or a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close(CloseReason),
}

#[derive(Debug)]
struct Room {
    id: String,
    /// Its subject is `group.subject`.
    group: Arc<Group>,
}

/// What a verified token allows, and until when.
#[derive(Debug)]
struct Scope {
    claims: Claims,
    /// The token itself: history reads are scoped by it at goim-history.
    token: String,
    expires_at: Instant,
    /// Delegated mode: the auth body, sent to authsvc again to renew the grant at its expiry.
    delegated_body: Option<Bytes>,
}

impl Scope {
    fn new(claims: Claims, token: String, delegated_body: Option<Bytes>) -> Scope {
        let left = claims.exp.saturating_sub(goim_token::now_secs());
        Scope { claims, token, expires_at: Instant::now() + Duration::from_secs(left), delegated_body }
    }
}

#[derive(Debug)]
struct Active {
    mid: i64,
    /// Shared with the hub's key registry.
    key: Arc<str>,
    room: Option<Room>,
    /// None in trust-body mode: everything goim allows is allowed.
    scope: Option<Box<Scope>>,
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
    /// Handshake deadline, then the idle (heartbeat) deadline.
    deadline: Instant,
    /// Every group this member is in, recorded before the join is awaited, so that
    /// [`Session::finish`] leaves them all even if the connection ends half-way through an auth.
    joined: Vec<Arc<Group>>,
    /// Counted in presence (conn_count, ip_count) since its auth.
    counted_online: bool,
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
            counted_online: false,
        }
    }

    pub fn context(&self) -> &Arc<EdgeContext> {
        &self.ctx
    }

    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// When [`Session::on_deadline`] must run: the handshake or idle deadline, or the token's expiry.
    pub fn deadline(&self) -> Instant {
        match &self.state {
            State::Active(Active { scope: Some(scope), .. }) => self.deadline.min(scope.expires_at),
            _ => self.deadline,
        }
    }

    /// The deadline passed: close with its reason, or renew a delegated grant.
    pub async fn on_deadline(&mut self) -> Flow {
        let now = Instant::now();
        let active = match &mut self.state {
            State::Handshake => return Flow::Close(CloseReason::HandshakeTimeout),
            State::Active(a) => a,
        };
        if now >= self.deadline {
            return Flow::Close(CloseReason::IdleTimeout);
        }
        let Some(body) = active.scope.as_ref().and_then(|s| s.delegated_body.clone()) else {
            info!(peer = %self.peer, mid = active.mid, "token expired without an in-band refresh");
            return Flow::Close(CloseReason::TokenExpired);
        };
        match self.ctx.access.delegate(&body, &self.peer.to_string()).await {
            Ok((claims, token)) => match self.apply_refresh(claims) {
                Ok(()) => {
                    if let State::Active(Active { scope: Some(scope), .. }) = &mut self.state {
                        scope.token = token;
                    }
                    Flow::Continue
                }
                Err(reason) => Flow::Close(reason),
            },
            Err(denied) => {
                self.ctx.stats.count_denied(denied.reason());
                info!(peer = %self.peer, error = %denied, "delegated grant not renewed");
                Flow::Close(CloseReason::TokenExpired)
            }
        }
    }

    fn reply(&self, packet: Packet) -> Flow {
        match self.member.outbox.push(Outgoing::Reply(packet.encode())) {
            Ok(()) => Flow::Continue,
            Err(reason) => Flow::Close(reason),
        }
    }

    fn scope(&self) -> Option<&Claims> {
        match &self.state {
            State::Active(Active { scope: Some(s), .. }) => Some(&s.claims),
            _ => None,
        }
    }

    /// Handle `p` now if that needs no waiting (heartbeat, sub/unsub, refresh, echo: the packets an
    /// established connection sends most); else give it back for [`Session::on_packet`].
    pub fn on_packet_now(&mut self, p: Packet) -> Result<Flow, Packet> {
        if let State::Handshake = self.state {
            return Err(p);
        }
        match p.op {
            op::CHANGE_ROOM | op::SEND_MSG | op::HISTORY => Err(p),
            _ => Ok(self.on_active_packet_now(p)),
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
            op::CHANGE_ROOM => {
                self.change_room(&p).await;
                self.reply(p.reply(op::CHANGE_ROOM_REPLY, p.body.clone()))
            }
            op::SEND_MSG => {
                self.publish_ingress(&p).await;
                self.reply(p.reply(p.op, Bytes::new()))
            }
            op::HISTORY => self.read_history(&p).await,
            _ => self.on_active_packet_now(p),
        }
    }

    /// The packets of an authenticated session that are answered without waiting.
    fn on_active_packet_now(&mut self, p: Packet) -> Flow {
        match p.op {
            op::HEARTBEAT => {
                self.deadline = Instant::now() + self.ctx.config.session.idle_timeout();
                // Cluster-wide: this edge's live members plus the other edges' last reports.
                let online = match &self.state {
                    State::Active(Active { room: Some(room), .. }) => {
                        self.ctx.presence.room_online(&room.id, room.group.len())
                    }
                    _ => 0,
                };
                let online = i32::try_from(online).unwrap_or(i32::MAX);
                self.reply(p.reply(op::HEARTBEAT_REPLY, online.to_be_bytes().to_vec()))
            }
            op::SUB | op::UNSUB => {
                self.edit_accepts(&p);
                let reply_op = if p.op == op::SUB { op::SUB_REPLY } else { op::UNSUB_REPLY };
                self.reply(p.reply(reply_op, p.body.clone()))
            }
            op::AUTH if self.ctx.access.mode == AuthMode::Token => self.refresh(p),
            // goim's default path: any other op (0, 7, business numbers, …) is echoed, body empty.
            _ => self.reply(p.reply(p.op, Bytes::new())),
        }
    }

    /// Refuse a connect: count and log the reason; goim's reaction is a close without reply.
    fn deny(&self, denied: Denied) -> Flow {
        self.ctx.stats.count_denied(denied.reason());
        info!(peer = %self.peer, reason = denied.reason(), error = %denied, "auth refused; closing without reply");
        Flow::Close(match denied {
            Denied::Unavailable(_) => CloseReason::AuthUnavailable,
            _ => CloseReason::BadToken,
        })
    }

    fn out_of_scope(&self, what: &str) -> Flow {
        info!(peer = %self.peer, what, "auth refused: outside the token's scope; closing without reply");
        Flow::Close(CloseReason::OutOfScope)
    }

    async fn authenticate(&mut self, p: Packet) -> Flow {
        let body = match auth::parse_auth_body(&p.body, &self.ctx.config.limits) {
            Ok(body) => body,
            Err(e) => {
                info!(peer = %self.peer, error = %e, "auth refused; closing without reply");
                return Flow::Close(CloseReason::BadAuth);
            }
        };
        let claims = match self.ctx.access.mode {
            AuthMode::TrustBody => None,
            AuthMode::Token => match body.token.as_deref() {
                None => return self.deny(Denied::NoToken),
                Some(token) => match self.ctx.access.verify(token) {
                    Ok(c) => Some((c, token.to_string())),
                    Err(e) => return self.deny(e.into()),
                },
            },
            AuthMode::Delegated => match self.ctx.access.delegate(&p.body, &self.peer.to_string()).await {
                Ok(granted) => Some(granted),
                Err(denied) => return self.deny(denied),
            },
        };
        let (mid, key) = match claims.as_ref().map(|(c, _)| c) {
            None => (body.mid, if body.key.is_empty() { new_key() } else { body.key.clone() }),
            Some(c) => match scoped_identity(&body, c) {
                Ok(identity) => identity,
                Err(what) => return self.out_of_scope(what),
            },
        };
        self.member.edit_accepts(|a| {
            a.clear();
            a.extend(body.accepts.iter().copied());
        });

        let hub = self.ctx.hub.clone();
        let mut subjects = vec![(subjects::BROADCAST.to_string(), Delivery::Accepting)];
        if hub.key_groups() {
            subjects.push((subjects::key_subject(&key), Delivery::Accepting));
        }
        if mid != 0 {
            subjects.push((subjects::user_subject(mid), Delivery::Accepting));
        }
        // History resume: live messages of a resumed subject are held from the join on, until what
        // was missed has been replayed after op 8.
        let resume = body.resume.unwrap_or_default();
        let mut resumes: Vec<(&'static str, u64, Arc<Group>)> = Vec::new();
        for (subject, delivery) in subjects {
            let from = if subject == subjects::BROADCAST {
                resume.broadcast.map(|f| ("broadcast", f))
            } else if subject.starts_with("user.") {
                resume.user.map(|f| ("user", f))
            } else {
                None
            };
            let group = hub.enter(&subject, delivery, &self.member, from.is_some());
            self.joined.push(group.clone());
            group.subscribed().await;
            if let Some((class, from)) = from {
                resumes.push((class, from, group));
            }
        }
        let room = if body.room_id.is_empty() {
            None
        } else {
            let subject = subjects::room_subject(&body.room_id);
            let group = hub.enter(&subject, Delivery::All, &self.member, resume.room.is_some());
            self.joined.push(group.clone());
            group.subscribed().await;
            if let Some(from) = resume.room {
                resumes.push(("room", from, group.clone()));
            }
            Some(Room { id: body.room_id, group })
        };
        debug!(peer = %self.peer, conn = self.member.id, mid, key, room = ?room.as_ref().map(|r| &r.id), platform = body.platform, "authenticated");
        let delegated_body = (self.ctx.access.mode == AuthMode::Delegated).then(|| p.body.clone());
        // Active before the key is claimed: from here on `finish` releases it.
        let key: Arc<str> = Arc::from(key);
        let claim = key.clone();
        self.state = State::Active(Active {
            mid,
            key,
            room,
            scope: claims.map(|(c, token)| Box::new(Scope::new(c, token, delegated_body))),
        });
        hub.claim_key(&claim, &self.member).await;
        drop(claim);
        self.ctx.stats.authenticated.fetch_add(1, Ordering::Relaxed);
        self.ctx.presence.conn_up(self.peer.ip());
        self.counted_online = true;
        self.deadline = Instant::now() + self.ctx.config.session.idle_timeout();
        // Op 8 goes out first, ahead of any push of the subjects joined above.
        if let Err(reason) = self.member.outbox.open_with(Outgoing::Reply(p.reply(op::AUTH_REPLY, Bytes::new()).encode())) {
            return Flow::Close(reason);
        }
        if body.resume.is_none() {
            return Flow::Continue;
        }
        self.resume(&p, resumes, resume).await
    }

    /// Replay what the client missed per requested class, answer op 20, then release live messages.
    async fn resume(&mut self, p: &Packet, resumes: Vec<(&'static str, u64, Arc<Group>)>, asked: auth::Resume) -> Flow {
        let hub = self.ctx.hub.clone();
        let mut answer = serde_json::Map::new();
        let mut reached = Vec::with_capacity(resumes.len());
        for (class, from, group) in &resumes {
            let (result, floor) = hub.replay_missed(group, &self.member, *from).await;
            reached.push((&**group, floor));
            let status = match result {
                Ok(n) => serde_json::json!({ "ok": true, "replayed": n }),
                Err(e) => {
                    info!(peer = %self.peer, class, from, error = %e, "recovery failed");
                    serde_json::json!({ "ok": false, "reason": e.reason(), "error": e.to_string() })
                }
            };
            answer.insert(class.to_string(), status);
        }
        // Classes asked for but not joined (no room, mid 0) cannot be resumed: say so.
        for (class, asked) in [("room", asked.room), ("user", asked.user), ("broadcast", asked.broadcast)] {
            if asked.is_some() && !answer.contains_key(class) {
                answer.insert(class.to_string(), serde_json::json!({ "ok": false, "reason": "not_joined" }));
            }
        }
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        // The answer and the live messages held meanwhile go out together, before any later live one.
        let reply = Outgoing::Reply(p.reply(op::RESUME_REPLY, body).encode());
        match hub.release_held(&reached, &self.member, reply) {
            Ok(()) => Flow::Continue,
            Err(reason) => Flow::Close(reason),
        }
    }

    /// Op 18: a history read of the client's room, own user or broadcast, forwarded to goim-history
    /// with the client's token (which scopes it there); answered by op 19 with its JSON.
    async fn read_history(&self, p: &Packet) -> Flow {
        let body = match self.history_answer(&p.body).await {
            Ok(body) => body,
            Err(error) => Bytes::from(serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default()),
        };
        self.reply(p.reply(op::HISTORY_REPLY, body))
    }

    async fn history_answer(&self, body: &[u8]) -> Result<Bytes, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Read {
            target: String,
            before: Option<u64>,
            limit: Option<u32>,
        }
        let read: Read = serde_json::from_slice(body).map_err(|e| format!("invalid history request: {e}"))?;
        let State::Active(active) = &self.state else { return Err("not authenticated".into()) };
        let token = active
            .scope
            .as_ref()
            .map(|s| s.token.clone())
            .ok_or("history reads need a token (auth.mode token or delegated)")?;
        let mut request = serde_json::json!({ "token": token });
        if let Some(before) = read.before {
            request["before"] = before.into();
        }
        if let Some(limit) = read.limit {
            request["limit"] = limit.into();
        }
        match read.target.as_str() {
            "room" => request["room"] = active.room.as_ref().map(|r| r.id.clone()).ok_or("not in a room")?.into(),
            "user" if active.mid != 0 => request["user"] = active.mid.into(),
            "broadcast" => request["broadcast"] = true.into(),
            other => return Err(format!("target {other:?} is not room, user (mid ≠ 0) or broadcast")),
        }
        let payload = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
        let reply = self
            .ctx
            .hub
            .bridge()
            .request(subjects::HISTORY_GET.to_string(), HeaderMap::new(), payload, Duration::from_secs(5))
            .await
            .map_err(|e| format!("history unavailable: {e}"))?;
        Ok(reply.payload)
    }

    /// Token mode, op 7 on an open connection: a fresh token for the same mid (and key) replaces the
    /// scope and moves the expiry; answered by op 8. Anything invalid closes the connection.
    fn refresh(&mut self, p: Packet) -> Flow {
        let token = match auth::parse_auth_body(&p.body, &self.ctx.config.limits) {
            Ok(AuthBody { token: Some(token), .. }) => token,
            Ok(_) => return self.deny(Denied::NoToken),
            Err(e) => {
                info!(peer = %self.peer, error = %e, "token refresh refused; closing");
                return Flow::Close(CloseReason::BadAuth);
            }
        };
        let claims = match self.ctx.access.verify(&token) {
            Ok(c) => c,
            Err(e) => return self.deny(e.into()),
        };
        match self.apply_refresh(claims) {
            Ok(()) => {
                if let State::Active(Active { scope: Some(scope), .. }) = &mut self.state {
                    scope.token = token;
                }
                self.reply(p.reply(op::AUTH_REPLY, Bytes::new()))
            }
            Err(reason) => Flow::Close(reason),
        }
    }

    /// Replace the scope with `claims` (same mid and key), dropping what they no longer allow.
    fn apply_refresh(&mut self, claims: Claims) -> Result<(), CloseReason> {
        let State::Active(active) = &mut self.state else { return Err(CloseReason::BadAuth) };
        if claims.mid != active.mid || claims.key.as_deref().is_some_and(|k| k != &*active.key) {
            info!(peer = %self.peer, mid = active.mid, "refresh refused: token is for another mid or key");
            return Err(CloseReason::OutOfScope);
        }
        if let Some(room) = active.room.as_ref().filter(|r| !claims.may_join(&r.id)) {
            info!(peer = %self.peer, room = %room.id, "refreshed token no longer covers the room: leaving it");
            self.ctx.hub.leave(&room.group.subject, self.member.id);
            self.joined.retain(|g| !Arc::ptr_eq(g, &room.group));
            active.room = None;
        }
        self.member.edit_accepts(|a| a.retain(|op| claims.may_accept(*op)));
        debug!(peer = %self.peer, mid = active.mid, exp = claims.exp, "token refreshed");
        let (token, body) = active.scope.as_ref().map(|s| (s.token.clone(), s.delegated_body.clone())).unwrap_or_default();
        active.scope = Some(Box::new(Scope::new(claims, token, body)));
        Ok(())
    }

    async fn change_room(&mut self, p: &Packet) {
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
        if let (Some(target), Some(claims)) = (&target, self.scope()) {
            if !claims.may_join(target) {
                info!(peer = %self.peer, room = %target, "change room outside the token's scope: staying");
                return;
            }
        }
        let State::Active(active) = &mut self.state else { return };
        if let (Some(target), Some(room)) = (&target, &active.room) {
            if *target == room.id {
                return;
            }
        }
        let hub = &self.ctx.hub;
        if let Some(old) = active.room.take() {
            hub.leave(&old.group.subject, self.member.id);
            self.joined.retain(|g| !Arc::ptr_eq(g, &old.group));
        }
        let Some(target) = target.filter(|t| !t.is_empty()) else { return };
        let group = hub.enter(&subjects::room_subject(&target), Delivery::All, &self.member, false);
        self.joined.push(group.clone());
        active.room = Some(Room { id: target, group: group.clone() });
        group.subscribed().await;
    }

    fn edit_accepts(&self, p: &Packet) {
        let Some(ops) = auth::parse_ops(&p.body) else {
            debug!(peer = %self.peer, op = p.op, "malformed accept list ignored");
            return;
        };
        if p.op == op::SUB {
            if let Some(claims) = self.scope() {
                if let Some(op) = ops.iter().find(|o| !claims.may_accept(**o)) {
                    info!(peer = %self.peer, op, "sub ignored: op outside the token's accepts");
                    return;
                }
            }
        }
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
        if let Some(scope) = &active.scope {
            if !scope.claims.may_send_ingress() {
                self.ctx.stats.ingress_denied.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %self.peer, mid = active.mid, "op 4 not forwarded: the token grants no ingress");
                return;
            }
        }
        let room_subject = active.room.as_ref().map(|r| &*r.group.subject);
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
        for group in self.joined.drain(..) {
            hub.leave(&group.subject, self.member.id);
        }
        if let State::Active(active) = &self.state {
            hub.release_key(&active.key, self.member.id);
        }
        if std::mem::take(&mut self.counted_online) {
            self.ctx.presence.conn_down(self.peer.ip());
        }
        self.state = State::Handshake;
    }
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The mid and key of a token-scoped connect, or what in the body the token does not cover.
fn scoped_identity(body: &AuthBody, c: &Claims) -> Result<(i64, String), &'static str> {
    if body.mid != 0 && body.mid != c.mid {
        return Err("mid differs from the token's");
    }
    let key = match &c.key {
        Some(k) if body.key.is_empty() || body.key == *k => k.clone(),
        Some(_) => return Err("key differs from the token's"),
        // No key in the token: a fresh random key, so no client can take over (or kick) another's.
        None => new_key(),
    };
    if !c.may_join(&body.room_id) {
        return Err("room");
    }
    if body.accepts.iter().any(|op| !c.may_accept(*op)) {
        return Err("accepts");
    }
    Ok((c.mid, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "9".into(),
            mid: 9,
            key: None,
            rooms: vec!["live://1".into()],
            room_prefixes: vec![],
            accepts: vec![1000, 1001],
            publish: Default::default(),
            iat: 0,
            nbf: 0,
            exp: u64::MAX,
            jti: "j".into(),
        }
    }

    fn body(mid: i64, key: &str, room: &str, accepts: &[i32]) -> AuthBody {
        AuthBody { mid, key: key.into(), room_id: room.into(), accepts: accepts.to_vec(), ..AuthBody::default() }
    }

    #[test]
    fn identity_comes_from_the_token() {
        let c = claims();
        let (mid, key) = scoped_identity(&body(0, "chosen", "live://1", &[1000]), &c).unwrap();
        assert_eq!(mid, 9);
        assert_ne!(key, "chosen", "without a key claim the client's key is not trusted");
        assert_eq!(scoped_identity(&body(8, "", "", &[]), &c), Err("mid differs from the token's"));
        assert_eq!(scoped_identity(&body(9, "", "live://2", &[]), &c), Err("room"));
        assert_eq!(scoped_identity(&body(9, "", "", &[1002]), &c), Err("accepts"));
        let bound = Claims { key: Some("dev-1".into()), ..claims() };
        assert_eq!(scoped_identity(&body(9, "", "", &[]), &bound).unwrap().1, "dev-1");
        assert_eq!(scoped_identity(&body(9, "dev-1", "", &[]), &bound).unwrap().1, "dev-1");
        assert_eq!(scoped_identity(&body(9, "dev-2", "", &[]), &bound), Err("key differs from the token's"));
    }
}
