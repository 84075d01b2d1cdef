//! goim over HTTP for clients that cannot open a WebSocket: Server-Sent Events downstream, one POST per
//! upstream packet (issue 9, first slice).
//!
//! `GET /sse?auth=<url-encoded auth JSON>` (or `POST /sse` with the auth JSON as body) runs the goim
//! auth (op 7) of a fresh [`Session`] and, on success, answers `200 text/event-stream`:
//!
//! ```text
//! event: session
//! data: {"session":"<32 hex digits>"}
//!
//! event: reply
//! data: {"op":8,"seq":0,"body":""}
//!
//! event: push
//! id: 17                                      (only when the push carries a sequence, seq != 0)
//! data: {"op":1000,"seq":17,"body":"<base64 of the body>"}
//!
//! : keepalive                                 (a comment every 15 s without events)
//!
//! event: close
//! data: {"reason":"slow_consumer"}            (the last event when the edge ends the session)
//! ```
//!
//! The session id is random (122 bits) and is the only credential for `POST
//! /session/<id>/op/<op>` (ops 2, 4, 12, 14, 16; body = the goim body, at most 4096 bytes), answered
//! with goim's reply as JSON `{"op":3,"seq":1,"body":"<base64>"}`. The session lives exactly as long
//! as its event stream: it ends when the client disconnects, and with goim's idle timeout (only op 2
//! resets it) or any other close reason, sent as the `close` event. Buffering is the session's outbox,
//! bounded by `limits.max_outbound_bytes` like every connection: a client that does not read its
//! stream is closed as `slow_consumer`.
//!
//! Replies and pushes share the outbox in order; the stream hands each reply to the POST waiting for
//! it (POSTs of one session are serialised), and replies nobody waits for (op 8) become `reply` events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, warn};

use crate::hub::Member;
use crate::outbox::{Batch, Outgoing};
use crate::protocol::{op, Packet, HEADER_LEN, MAX_BODY_LEN};
use crate::server::EdgeContext;
use crate::session::{Flow, Session};
use crate::stats::CloseReason;

/// A comment line on an event stream without events for this long keeps proxies from closing it.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a POST waits for its reply to come through the session's stream.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The upstream ops a POST may carry.
const UPSTREAM_OPS: [i32; 5] = [op::HEARTBEAT, op::SEND_MSG, op::CHANGE_ROOM, op::SUB, op::UNSUB];

/// One HTTP session: a goim [`Session`] driven by requests instead of a socket.
struct HttpSession {
    member: Arc<Member>,
    session: tokio::sync::Mutex<Session>,
    /// Serialises the POSTs of the session, so that the next reply in the outbox is theirs.
    upstream: tokio::sync::Mutex<()>,
    /// The POST waiting for its reply.
    reply: Mutex<Option<oneshot::Sender<Packet>>>,
    next_seq: AtomicI32,
}

/// What the HTTP listener shares.
pub struct HttpState {
    ctx: Arc<EdgeContext>,
    sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
}

impl HttpState {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HttpSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
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
        .route("/sse", get(sse_get).post(sse_post))
        .route("/session/{id}/op/{op}", post(upstream))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_LEN))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// Prometheus text exposition of the edge's counters.
async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let body = state.ctx.hub.stats_snapshot().prometheus();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// 200 while every shared NATS connection is up, 503 while any reconnects: a load balancer stops
/// sending clients to an edge that cannot serve them.
async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    let snapshot = state.ctx.hub.stats_snapshot();
    if snapshot.nats_connected == snapshot.nats_connections {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("NATS: {} of {} connections up\n", snapshot.nats_connected, snapshot.nats_connections)).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
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

#[derive(serde::Deserialize)]
struct SseQuery {
    auth: Option<String>,
}

async fn sse_get(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<SseQuery>,
) -> Response {
    match q.auth {
        Some(auth) => open(state, peer, Bytes::from(auth)).await,
        None => error(StatusCode::BAD_REQUEST, "missing ?auth=<goim auth JSON>"),
    }
}

async fn sse_post(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => open(state, peer, body).await,
        Err(e) => error(e.status(), e.body_text()),
    }
}

/// The HTTP status of an auth that closed the session.
fn auth_status(reason: CloseReason) -> StatusCode {
    match reason {
        CloseReason::BadAuth | CloseReason::ProtocolError => StatusCode::BAD_REQUEST,
        CloseReason::BadToken | CloseReason::TokenExpired => StatusCode::UNAUTHORIZED,
        CloseReason::OutOfScope => StatusCode::FORBIDDEN,
        CloseReason::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    }
}

/// Authenticate a new session with `auth` (op 7's body) and answer with its event stream.
async fn open(state: Arc<HttpState>, peer: SocketAddr, auth: Bytes) -> Response {
    if auth.len() > MAX_BODY_LEN {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("auth body over {MAX_BODY_LEN} bytes"));
    }
    // A long replay would wait for a stream that only starts after the auth: not over HTTP yet.
    if serde_json::from_slice::<serde_json::Value>(&auth).is_ok_and(|v| v.get("resume").is_some()) {
        return error(StatusCode::BAD_REQUEST, "\"resume\" is not supported over HTTP yet");
    }
    let ctx = state.ctx.clone();
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut session = Session::new(ctx.clone(), peer, Instant::now());
    let member = session.member().clone();
    let packet = Packet::new(1, op::AUTH, 0, auth);
    let flow = match tokio::time::timeout(ctx.config.session.handshake_timeout(), session.on_packet(packet)).await {
        Ok(flow) => flow,
        Err(_) => Flow::Close(CloseReason::HandshakeTimeout),
    };
    if let Flow::Close(reason) = flow {
        let reason = member.outbox.close(reason);
        session.finish();
        ctx.stats.closed(reason);
        ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
        ctx.stats.log_close(reason, member.id, Some(peer), "http");
        return error(auth_status(reason), format!("auth refused: {reason}"));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let hs = Arc::new(HttpSession {
        member,
        session: tokio::sync::Mutex::new(session),
        upstream: tokio::sync::Mutex::new(()),
        reply: Mutex::new(None),
        next_seq: AtomicI32::new(1),
    });
    state.sessions().insert(id.clone(), hs.clone());
    debug!(conn = hs.member.id, %peer, "http session opened");
    let first = format!("event: session\ndata: {}\n\n", serde_json::json!({ "session": id }));
    let stream = EventStream { state, id, hs, pending: VecDeque::from([Bytes::from(first)]), done: false };
    let body = Body::from_stream(futures_util::stream::unfold(stream, EventStream::next));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // nginx: do not buffer the stream.
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The event stream of one session; dropping it (the client went away, or the last event was sent)
/// ends the session.
struct EventStream {
    state: Arc<HttpState>,
    id: String,
    hs: Arc<HttpSession>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, EventStream)> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some((Ok(chunk), self));
            }
            if self.done {
                return None;
            }
            let deadline = self.hs.session.lock().await.deadline();
            tokio::select! {
                batch = self.hs.member.outbox.next_batch() => match batch {
                    Batch::Items(items) => self.take(items),
                    Batch::Closed(reason) => {
                        // Unknown from here on: a POST after the `close` event gets 404.
                        self.state.sessions().remove(&self.id);
                        let close = format!("event: close\ndata: {}\n\n", serde_json::json!({ "reason": reason.as_str() }));
                        self.pending.push_back(Bytes::from(close));
                        self.done = true;
                    }
                },
                () = sleep(KEEPALIVE) => self.pending.push_back(Bytes::from_static(b": keepalive\n\n")),
                () = sleep_until(deadline) => {
                    let mut session = self.hs.session.lock().await;
                    // Re-checked under the lock: a heartbeat may just have moved it.
                    if Instant::now() >= session.deadline() {
                        if let Flow::Close(reason) = session.on_deadline().await {
                            self.hs.member.outbox.close(reason);
                        }
                    }
                }
            }
        }
    }

    /// Turn a batch from the outbox into events, handing replies to the waiting POST.
    fn take(&mut self, items: VecDeque<Outgoing>) {
        for item in items {
            match item {
                Outgoing::Push(bytes) => {
                    for p in packets(&bytes) {
                        self.pending.push_back(event("push", &p));
                    }
                }
                Outgoing::Reply(bytes) => {
                    for p in packets(&bytes) {
                        let waiting = self.hs.reply.lock().unwrap_or_else(|e| e.into_inner()).take();
                        match waiting {
                            Some(tx) => {
                                let _ = tx.send(p);
                            }
                            None => self.pending.push_back(event("reply", &p)),
                        }
                    }
                }
                Outgoing::Control(_) => {}
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.state.sessions().remove(&self.id);
        let hs = self.hs.clone();
        let ctx = self.state.ctx.clone();
        let reason = hs.member.outbox.close(CloseReason::ClientGone);
        let finish = async move {
            hs.session.lock().await.finish();
            ctx.stats.closed(reason);
            ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
            match reason {
                CloseReason::ClientGone | CloseReason::Shutdown => debug!(conn = hs.member.id, %reason, "http session closed"),
                _ => ctx.stats.log_close(reason, hs.member.id, None, "http"),
            }
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(finish);
        }
    }
}

/// One SSE event carrying packet `p`.
fn event(name: &str, p: &Packet) -> Bytes {
    let mut out = format!("event: {name}\n");
    if name == "push" && p.seq != 0 {
        out.push_str(&format!("id: {}\n", p.seq));
    }
    out.push_str(&format!("data: {}\n\n", packet_json(p)));
    Bytes::from(out)
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
async fn upstream(
    State(state): State<Arc<HttpState>>,
    Path((id, op)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let Some(hs) = state.sessions().get(&id).cloned() else {
        return error(StatusCode::NOT_FOUND, "no such session");
    };
    let Some(op) = op.parse::<i32>().ok().filter(|o| UPSTREAM_OPS.contains(o)) else {
        return error(StatusCode::BAD_REQUEST, "op must be 2, 4, 12, 14 or 16");
    };
    let _turn = hs.upstream.lock().await;
    let seq = hs.next_seq.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    *hs.reply.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let flow = {
        let mut session = hs.session.lock().await;
        match session.on_packet_now(Packet::new(1, op, seq, body)) {
            Ok(flow) => flow,
            Err(packet) => session.on_packet(packet).await,
        }
    };
    if let Flow::Close(reason) = flow {
        let reason = hs.member.outbox.close(reason);
        return error(StatusCode::GONE, format!("session closed: {reason}"));
    }
    // The reply comes through the event stream; the session may close meanwhile (a client that
    // does not read its stream is closed as slow_consumer once the outbox bound is exceeded).
    let waited = tokio::time::timeout(REPLY_TIMEOUT, async {
        tokio::select! {
            reply = rx => reply.map_err(|_| hs.member.outbox.closed_reason().unwrap_or(CloseReason::ClientGone)),
            reason = hs.member.outbox.closed() => Err(reason),
        }
    });
    match waited.await {
        Ok(Ok(reply)) => Json(packet_json(&reply)).into_response(),
        Ok(Err(reason)) => error(StatusCode::GONE, format!("session closed: {reason}")),
        Err(_) => {
            hs.reply.lock().unwrap_or_else(|e| e.into_inner()).take();
            error(StatusCode::GATEWAY_TIMEOUT, "the reply did not come through the session's event stream in time")
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

    #[test]
    fn events_are_what_event_source_reads() {
        let e = event("push", &Packet::new(1, 1000, 5, Bytes::from_static(b"hi")));
        assert_eq!(&e[..], &b"event: push\nid: 5\ndata: {\"body\":\"aGk=\",\"op\":1000,\"seq\":5}\n\n"[..]);
        let e = event("reply", &Packet::new(1, 8, 0, Bytes::new()));
        assert_eq!(&e[..], &b"event: reply\ndata: {\"body\":\"\",\"op\":8,\"seq\":0}\n\n"[..]);
    }
}
