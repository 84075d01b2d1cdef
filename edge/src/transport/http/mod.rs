//! goim over HTTP for clients that cannot open a WebSocket (issue 9): Server-Sent Events or
//! long-polling downstream, one POST per upstream packet; plus `/metrics` and `/healthz`.
//!
//! Both kinds of session run the goim auth (op 7) of a fresh [`Session`] with the auth JSON (token
//! included), and then behave like a TCP or WebSocket connection: the same rooms, user and broadcast
//! pushes, accepts (ops 14/16), heartbeat and idle timeout (op 2), resume (auth `resume`).
//!
//! **Sessions.** The session id (32 hex digits, 122 random bits) is the only credential of every
//! later request. Every session keeps a log of numbered events (cursor 1, 2, …; [`session`]): what a
//! consumer has not yet received is never lost while the session lives. A session lives on without a
//! consumer (no event stream open, no poll in flight) for `listen.http_session_grace_ms`, then closes
//! (`client_gone`). A closed session answers `410 {"error":"session closed: <reason>","reason":…}`
//! (so a client learns why: `slow_consumer`, `idle_timeout`, `kicked`, …) until it has told the client
//! once (a poll's 410, an SSE `close` event), at most for the grace period; then `404`. Buffering is
//! bounded like a WebSocket connection's (`session` docs).
//!
//! **SSE** ([`sse`]): `GET /sse?auth=<url-encoded auth JSON>` or `POST /sse` (body: the auth JSON):
//!
//! ```text
//! event: session
//! data: {"session":"<32 hex>"}                    (+ "reattached":true, or "previous":{…}: see sse.rs)
//!
//! event: reply
//! data: {"op":8,"seq":1,"body":""}
//!
//! event: push
//! id: <session>:<cursor>:<room>:<user>:<broadcast>
//! data: {"op":1000,"seq":1073741841,"body":"<base64 of the body>"}
//!
//! : keepalive                                      (a comment every 15 s without events)
//!
//! event: close
//! data: {"reason":"slow_consumer"}                 (the last event when the edge ends the session)
//! ```
//!
//! The event id carries the session, the event's cursor and the last history sequence delivered per
//! class (empty when none): a reconnecting `EventSource` sends it back as `Last-Event-ID` and either
//! continues its session without loss or, once that is gone, gets a new one resumed from history.
//!
//! **Long-poll** ([`poll`]): `POST /poll` (body: the auth JSON) or `GET /poll?auth=` answers
//! `{"session":"<id>","reply":{"op":8,"seq":1,"body":""},"next":0}`; then
//! `GET|POST /session/<id>/poll?ack=<cursor>&timeout_ms=<ms>` answers `{"next":<cursor>,"events":[{"op",
//! "seq","body"},…]}` as soon as there are events after `ack` (or empty at the timeout); the next
//! poll's `ack=<next>` drops them at the edge. Without that ack they come again.
//!
//! **Upstream**: `POST /session/<id>/op/<op>` (ops 2, 4, 12, 14, 16, and 7 — a token refresh — in
//! `auth.mode = "token"`; body = the goim body, at most 4096 bytes) answers goim's reply as
//! `{"op":3,"seq":2,"body":"<base64>"}`.
//!
//! **Errors** are JSON `{"error":"…"}`: 400 malformed, 401 bad or missing token, 403 outside the
//! token's scope, 404 unknown session or route, 409 wrong kind of session, 410 closed session, 413 a
//! body over 4096 bytes, 429 over `limits.connects_per_ip_per_sec` (session creation) or
//! `limits.max_packets_per_sec` (upstream POSTs: refused, the session stays), 503 over
//! `limits.max_connections` or `limits.max_handshakes` (HTTP sessions count as connections).
//! CORS: `listen.http_cors_origins`.

pub mod poll;
pub mod session;
pub mod sse;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

use self::session::{HttpSession, Kind};
use crate::protocol::{op, Packet, HEADER_LEN, MAX_BODY_LEN};
use crate::server::EdgeContext;
use crate::session::{Flow, Session};
use crate::stats::{CloseReason, Transport};

/// How long a POST waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The upstream ops a POST may carry.
const UPSTREAM_OPS: [i32; 5] = [op::HEARTBEAT, op::SEND_MSG, op::CHANGE_ROOM, op::SUB, op::UNSUB];

/// What the HTTP listener shares.
pub struct HttpState {
    ctx: Arc<EdgeContext>,
    sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
}

impl HttpState {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HttpSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Option<Arc<HttpSession>> {
        self.sessions().get(id).cloned()
    }

    /// Forget `hs` (only that one: the id is random, but be exact).
    fn remove(&self, hs: &Arc<HttpSession>) {
        let mut sessions = self.sessions();
        if sessions.get(&hs.id).is_some_and(|s| Arc::ptr_eq(s, hs)) {
            sessions.remove(&hs.id);
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_millis(self.ctx.config.listen.http_session_grace_ms)
    }
}

/// Serve the HTTP transports on `listener` until the task is aborted.
pub async fn serve(ctx: Arc<EdgeContext>, listener: TcpListener) {
    let state = Arc::new(HttpState { ctx, sessions: Mutex::new(HashMap::new()) });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "http listener failed");
    }
}

fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/sse", get(sse::open_get).post(sse::open_post))
        .route("/poll", get(poll::open_get).post(poll::open_post))
        .route("/session/{id}/poll", get(poll::poll).post(poll::poll))
        .route("/session/{id}/op/{op}", post(upstream))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_LEN))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// Prometheus text exposition of the edge's counters, and the HTTP sessions held.
async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let mut body = state.ctx.hub.stats_snapshot().prometheus();
    let held = state.sessions().len();
    body.push_str(&format!(
        "# HELP goim_edge_http_sessions HTTP sessions held (open, or closed and still answering 410).\n\
         # TYPE goim_edge_http_sessions gauge\ngoim_edge_http_sessions {held}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// 200 while every shared NATS connection is up, 503 while any reconnects: a load balancer stops
/// sending clients to an edge that cannot serve them.
/// Ready while every shared NATS connection is up: the connection states, not a stats snapshot.
async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    match state.ctx.hub.bridge().ready() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// 410 for a closed session, with its reason.
fn gone(reason: CloseReason) -> Response {
    (StatusCode::GONE, Json(serde_json::json!({ "error": format!("session closed: {reason}"), "reason": reason.as_str() }))).into_response()
}

/// `listen.http_cors_origins`: an allowed `Origin` (or `*`) gets `Access-Control-Allow-Origin` and
/// its preflight answered.
async fn cors(State(state): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    let origins = &state.ctx.config.listen.http_cors_origins;
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| origins.iter().any(|a| a == "*" || a.as_bytes() == o.as_bytes()))
        .cloned();
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    if let Some(origin) = allowed {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        if preflight {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type, Last-Event-ID"));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
    }
    resp
}

/// The HTTP status of an auth that closed the session.
fn auth_status(reason: CloseReason) -> StatusCode {
    match reason {
        CloseReason::BadAuth | CloseReason::ProtocolError => StatusCode::BAD_REQUEST,
        CloseReason::BadToken | CloseReason::TokenExpired => StatusCode::UNAUTHORIZED,
        CloseReason::OutOfScope => StatusCode::FORBIDDEN,
        CloseReason::AuthUnavailable | CloseReason::HandshakeTimeout => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    }
}

/// Create a session of `kind` from `peer` and run its auth with `auth` (op 7's body). Ok once op 8
/// is out: the session is registered and its pump runs (a resume may still be replaying into its log).
async fn create(state: &Arc<HttpState>, peer: SocketAddr, auth: Bytes, kind: Kind) -> Result<(Arc<HttpSession>, Packet), Response> {
    if auth.len() > MAX_BODY_LEN {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("auth body over {MAX_BODY_LEN} bytes")));
    }
    let ctx = state.ctx.clone();
    // The accept loops' limits, at session creation.
    if let Err((reason, detail)) = crate::server::admit(&ctx, peer) {
        ctx.stats.closed(reason);
        ctx.stats.log_close(reason, 0, Some(peer), &detail);
        let status = if reason == CloseReason::ConnectRate { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::SERVICE_UNAVAILABLE };
        return Err(error(status, format!("session refused: {detail}")));
    }
    ctx.stats.connection_opened(Transport::Http);
    let session = Session::new(ctx.clone(), peer, Instant::now());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let hs = Arc::new(HttpSession::new(id.clone(), kind, session, ctx.config.limits.max_outbound_bytes, state.grace()));
    let (tx, rx) = oneshot::channel();
    hs.expect_reply(1, Some(op::AUTH_REPLY), tx);
    // The auth holds the session until it is done, a resume's replay included; the pump drains the
    // outbox meanwhile, so a replay of any length goes through. (A fresh lock: taken at once, and
    // without an await, so that a client going away cannot leave a session without its pump.)
    let Ok(guard) = hs.session.clone().try_lock_owned() else {
        ctx.stats.connection_closed(Transport::Http);
        return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "a new session's lock was taken"));
    };
    // Nobody knows the id before the answer; registered now so that the pump's teardown finds it.
    state.sessions().insert(id, hs.clone());
    tokio::spawn(session::pump(state.clone(), hs.clone()));
    let handshake = ctx.config.session.handshake_timeout();
    let auth_hs = hs.clone();
    tokio::spawn(async move {
        let mut session = guard;
        let packet = Packet::new(1, op::AUTH, 1, auth);
        let flow = tokio::time::timeout(handshake, session.on_packet(packet)).await.unwrap_or(Flow::Close(CloseReason::HandshakeTimeout));
        if let Flow::Close(reason) = flow {
            auth_hs.member.outbox.close(reason);
        }
    });
    let outcome = tokio::select! {
        biased;
        reply = rx => reply.ok(),
        _ = hs.member.outbox.closed() => None,
    };
    match outcome {
        Some(op8) => {
            hs.authed.store(true, Ordering::Relaxed);
            debug!(conn = hs.member.id, %peer, ?kind, "http session opened");
            Ok((hs, op8))
        }
        None => {
            let reason = hs.member.outbox.close(CloseReason::ClientGone);
            Err(error(auth_status(reason), format!("auth refused: {reason}")))
        }
    }
}

fn packet_json(p: &Packet) -> serde_json::Value {
    serde_json::json!({
        "op": p.op,
        "seq": p.seq,
        "body": base64::engine::general_purpose::STANDARD.encode(&p.body),
    })
}

/// The whole packets in `bytes` (the edge's own encoding: outbound packets have no size limit).
fn packets(bytes: &Bytes) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + HEADER_LEN {
        let h = &bytes[at..at + HEADER_LEN];
        let len = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let Ok(len) = usize::try_from(len) else { break };
        if len < HEADER_LEN || at + len > bytes.len() {
            break;
        }
        let ver = i16::from_be_bytes([h[6], h[7]]);
        let op = i32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let seq = i32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        out.push(Packet::new(ver, op, seq, bytes.slice(at + HEADER_LEN..at + len)));
        at += len;
    }
    out
}

/// `POST /session/<id>/op/<op>`: one upstream packet, answered with goim's reply.
async fn upstream(State(state): State<Arc<HttpState>>, Path((id, op)): Path<(String, String)>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let Some(hs) = state.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such session");
    };
    if let Some(reason) = hs.closed_reason() {
        return gone(reason);
    }
    // Op 7 in token mode: an in-band token refresh (answered by op 8), as over TCP.
    let token_mode = state.ctx.access.mode == crate::config::AuthMode::Token;
    let Some(op) = op.parse::<i32>().ok().filter(|o| UPSTREAM_OPS.contains(o) || (token_mode && *o == op::AUTH)) else {
        return error(StatusCode::BAD_REQUEST, "op must be 2, 4, 12, 14 or 16 (or 7, a token refresh, in auth.mode token)");
    };
    let max = state.ctx.config.limits.max_packets_per_sec;
    let now_secs = state.ctx.started.elapsed().as_secs() as u32;
    if !hs.rate.lock().unwrap_or_else(|p| p.into_inner()).allow(now_secs, max) {
        return error(StatusCode::TOO_MANY_REQUESTS, format!("over limits.max_packets_per_sec = {max}: this packet was not taken"));
    }
    let _turn = hs.upstream.lock().await;
    let seq = hs.next_seq.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let flow = {
        // The session first (a resume's op 20 is queued under it), then the reply this packet expects.
        let mut session = hs.session.lock().await;
        hs.expect_reply(seq, None, tx);
        match session.on_packet_now(Packet::new(1, op, seq, body)) {
            Ok(flow) => flow,
            Err(packet) => session.on_packet(packet).await,
        }
    };
    if let Flow::Close(reason) = flow {
        return gone(hs.member.outbox.close(reason));
    }
    let waited = tokio::time::timeout(REPLY_TIMEOUT, async {
        tokio::select! {
            reply = rx => reply.map_err(|_| hs.closed_reason().unwrap_or(CloseReason::ClientGone)),
            reason = hs.member.outbox.closed() => Err(reason),
        }
    });
    match waited.await {
        Ok(Ok(reply)) => Json(packet_json(&reply)).into_response(),
        Ok(Err(reason)) => gone(reason),
        Err(_) => {
            hs.forget_reply();
            error(StatusCode::GATEWAY_TIMEOUT, "the reply did not come in time")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_walks_concatenated_packets_and_stops_at_garbage() {
        let mut b = bytes::BytesMut::new();
        Packet::new(1, 1000, 0, Bytes::from_static(b"a")).encode_into(&mut b);
        Packet::new(1, 1001, 7, Bytes::from(vec![7u8; 5000])).encode_into(&mut b);
        b.extend_from_slice(&[0, 0, 0, 99, 0]);
        let ps = packets(&b.freeze());
        assert_eq!(ps.len(), 2);
        assert_eq!((ps[0].op, &ps[0].body[..]), (1000, &b"a"[..]));
        assert_eq!((ps[1].op, ps[1].seq, ps[1].body.len()), (1001, 7, 5000));
        assert!(packets(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0, 16, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])).is_empty());
    }
}
