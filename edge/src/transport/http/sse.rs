//! Server-Sent Events: opening, re-attaching and streaming an SSE session (formats: `super` docs).
//!
//! `GET /sse?auth=<auth JSON>` (or `POST /sse`, body = the auth JSON) opens a session. Every event
//! from the session's log carries `id: <session>:<cursor>:<room>:<user>:<broadcast>` — the session, the
//! event's cursor, and the last history sequence (30-bit, subjects.md §11) delivered per class, empty
//! when none. A browser's `EventSource` reconnects to the same URL by itself with that id as
//! `Last-Event-ID`; so does `GET /sse?session=<id>` (optionally `&last_event_id=`) by hand:
//!
//! 1. The session is still alive (it outlives its stream by `listen.http_session_grace_ms`) and its
//!    log still holds every event after the cursor: the new stream continues the same session from
//!    there, nothing lost, nothing twice. First event: `session` with `{"session":id,"reattached":true}`;
//!    no new `reply` (op 8). An older stream of the session still open ends.
//! 2. Otherwise, when the request carries an auth: a new session, resumed from history with the id's
//!    positions (as if the auth body held `"resume":{"room":…,"user":…,"broadcast":…}`, unless it holds
//!    its own `resume`). Its `session` event says why the old one could not continue:
//!    `"previous":{"ok":false,"reason":"gone"|"evicted"|<close reason>}` (`evicted`: events after the
//!    cursor were dropped — written events are kept for a re-attach only up to a quarter of
//!    `limits.max_outbound_bytes`). Then op 8, then op 20 (per class: replayed or why not, as over
//!    TCP), the replay, and live pushes. Pushes of subjects without history (no sequence) sent while
//!    no session existed are lost, as they are for a TCP client that reconnects.
//! 3. Without an auth (`?session=` only): 404 (unknown), 409 (a poll session) or 410 (closed, or
//!    evicted) instead.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::session::{Attached, Event, HttpSession, Kind, Positions, Wait};
use super::{create, error, gone, packet_json, HttpState};
use crate::protocol::Packet;
use crate::stats::CloseReason;

/// A comment line on an event stream without events for this long keeps proxies from closing it.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(serde::Deserialize)]
pub struct SseQuery {
    auth: Option<String>,
    session: Option<String>,
    last_event_id: Option<String>,
}

/// A parsed event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub session: String,
    pub cursor: u64,
    pub pos: Positions,
}

/// `<session>:<cursor>:<room>:<user>:<broadcast>`, positions empty when unknown.
pub fn event_id(session: &str, e: &Event) -> String {
    let p = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    format!("{session}:{}:{}:{}:{}", e.cursor, p(e.pos.room), p(e.pos.user), p(e.pos.broadcast))
}

pub fn parse_event_id(s: &str) -> Option<EventId> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let [session, cursor, room, user, broadcast] = parts[..] else { return None };
    if session.len() != 32 || !session.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let pos = |v: &str| if v.is_empty() { Ok(None) } else { v.parse::<u64>().map(Some) };
    Some(EventId {
        session: session.to_string(),
        cursor: cursor.parse().ok()?,
        pos: Positions { room: pos(room).ok()?, user: pos(user).ok()?, broadcast: pos(broadcast).ok()? },
    })
}

/// One SSE event for a logged event.
fn render(session: &str, e: &Event) -> Bytes {
    Bytes::from(format!("event: {}\nid: {}\ndata: {}\n\n", e.name, event_id(session, e), packet_json(&e.packet)))
}

fn last_event_id(headers: &HeaderMap, q: &SseQuery) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.last_event_id.clone())
        .filter(|s| !s.trim().is_empty())
}

pub async fn open_get(State(state): State<Arc<HttpState>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, Query(q): Query<SseQuery>) -> Response {
    let last = last_event_id(&headers, &q);
    let auth = q.auth.map(Bytes::from);
    open(state, peer, auth, q.session, last).await
}

pub async fn open_post(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<SseQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let last = last_event_id(&headers, &q);
    let auth = (!body.is_empty()).then_some(body).or(q.auth.map(Bytes::from));
    open(state, peer, auth, q.session, last).await
}

/// Add `"resume"` from `pos` to the auth JSON, unless it has its own (or is not a JSON object: the
/// auth refuses it as it is).
fn with_resume(auth: Bytes, pos: Positions) -> Bytes {
    if pos.is_empty() {
        return auth;
    }
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&auth) else { return auth };
    if body.contains_key("resume") {
        return auth;
    }
    let mut resume = serde_json::Map::new();
    for (class, at) in [("room", pos.room), ("user", pos.user), ("broadcast", pos.broadcast)] {
        if let Some(at) = at {
            resume.insert(class.into(), at.into());
        }
    }
    body.insert("resume".into(), Value::Object(resume));
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

async fn open(state: Arc<HttpState>, peer: SocketAddr, auth: Option<Bytes>, session: Option<String>, last: Option<String>) -> Response {
    let last = match last.map(|s| parse_event_id(&s)) {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => return error(StatusCode::BAD_REQUEST, "Last-Event-ID is not an event id of this edge (<session>:<cursor>:<room>:<user>:<broadcast>)"),
    };
    let mut previous = None;
    if let Some(id) = session.clone().or_else(|| last.as_ref().map(|l| l.session.clone())) {
        let cursor = last.as_ref().filter(|l| l.session == id).map(|l| l.cursor);
        let (status, reason) = match state.get(&id) {
            Some(hs) if hs.kind != Kind::Sse => (StatusCode::CONFLICT, "not an SSE session".to_string()),
            Some(hs) => match hs.closed_reason() {
                Some(reason) => (StatusCode::GONE, reason.as_str().to_string()),
                None => {
                    let from = cursor.unwrap_or_else(|| hs.sent());
                    if hs.has_after(from) {
                        return stream(state, hs, from, json!({ "session": id, "reattached": true }), None);
                    }
                    // It cannot continue without a gap: it ends, and a new session resumes from history.
                    hs.member.outbox.close(CloseReason::ClientGone);
                    (StatusCode::GONE, "evicted".to_string())
                }
            },
            None => (StatusCode::NOT_FOUND, "gone".to_string()),
        };
        if auth.is_none() {
            return match status {
                StatusCode::GONE if reason != "evicted" => gone(hs_reason(&reason)),
                StatusCode::GONE => error(status, "events after Last-Event-ID were dropped: open a new session (with auth) to resume from history"),
                StatusCode::CONFLICT => error(status, "not an SSE session"),
                _ => error(status, "no such session"),
            };
        }
        previous = Some(json!({ "ok": false, "reason": reason }));
    }
    let Some(auth) = auth else {
        return error(StatusCode::BAD_REQUEST, "missing ?auth=<goim auth JSON> (or ?session=<id> to re-attach)");
    };
    let auth = with_resume(auth, last.map(|l| l.pos).unwrap_or_default());
    let (hs, op8) = match create(&state, peer, auth, Kind::Sse).await {
        Ok(created) => created,
        Err(resp) => return resp,
    };
    let mut first = json!({ "session": hs.id });
    if let Some(previous) = previous {
        first["previous"] = previous;
    }
    stream(state, hs, 0, first, Some(op8))
}

/// The close reason named `s` (only ever one of ours).
fn hs_reason(s: &str) -> CloseReason {
    CloseReason::ALL.into_iter().find(|r| r.as_str() == s).unwrap_or(CloseReason::ClientGone)
}

/// Answer with the session's event stream: `first` as the `session` event, the auth reply, then the
/// log after `from`.
fn stream(state: Arc<HttpState>, hs: Arc<HttpSession>, from: u64, first: Value, op8: Option<Packet>) -> Response {
    let (attached, generation) = hs.attach(true);
    let mut pending = VecDeque::from([Bytes::from(format!("event: session\ndata: {first}\n\n"))]);
    if let Some(p) = op8 {
        pending.push_back(Bytes::from(format!("event: reply\ndata: {}\n\n", packet_json(&p))));
    }
    let s = EventStream { state, hs, cursor: from, generation, pending, done: false, _attached: attached };
    let body = Body::from_stream(futures_util::stream::unfold(s, EventStream::next));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // nginx: do not buffer the stream.
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One open event stream; dropping it (the client went away) detaches it from its session, which
/// then waits for a re-attach for the grace period.
struct EventStream {
    state: Arc<HttpState>,
    hs: Arc<HttpSession>,
    cursor: u64,
    generation: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    _attached: Attached,
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
            match self.hs.wait_after(self.cursor, Instant::now() + KEEPALIVE, Some(self.generation)).await {
                Wait::Events(events) => {
                    for e in &events {
                        self.pending.push_back(render(&self.hs.id, e));
                        self.cursor = e.cursor;
                    }
                    self.hs.mark_sent(self.cursor);
                }
                Wait::Closed(reason) => {
                    // The client is told here: unknown from now on (404).
                    self.state.remove(&self.hs);
                    self.pending.push_back(Bytes::from(format!("event: close\ndata: {}\n\n", json!({ "reason": reason.as_str() }))));
                    self.done = true;
                }
                Wait::Timeout => self.pending.push_back(Bytes::from_static(b": keepalive\n\n")),
                Wait::Replaced => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_what_event_source_reads_and_ids_round_trip() {
        let id = "0123456789abcdef0123456789abcdef";
        let pos = Positions { room: Some(17), user: None, broadcast: Some(3) };
        let e = Event { cursor: 5, name: "push", packet: Packet::new(1, 1000, (1 << 30) | 17, Bytes::from_static(b"hi")), pos };
        let text = String::from_utf8(render(id, &e).to_vec()).unwrap();
        assert_eq!(text, format!("event: push\nid: {id}:5:17::3\ndata: {{\"body\":\"aGk=\",\"op\":1000,\"seq\":1073741841}}\n\n"));
        assert_eq!(parse_event_id(&format!("{id}:5:17::3")), Some(EventId { session: id.into(), cursor: 5, pos }));
        assert_eq!(parse_event_id(&format!("{id}:0:::")).map(|e| e.pos), Some(Positions::default()));
        for bad in ["17", "", &format!("{id}:x:::"), &format!("{id}:1:a::"), "zz:1:::", &format!("{id}:1::")] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn last_event_id_positions_become_the_auth_resume_unless_it_has_one() {
        let pos = Positions { room: Some(4), user: None, broadcast: Some(9) };
        let out: Value = serde_json::from_slice(&with_resume(Bytes::from_static(br#"{"mid":1}"#), pos)).unwrap();
        assert_eq!(out, json!({"mid": 1, "resume": {"room": 4, "broadcast": 9}}));
        let own = Bytes::from_static(br#"{"mid":1,"resume":{"user":2}}"#);
        assert_eq!(with_resume(own.clone(), pos), own);
        assert_eq!(with_resume(Bytes::from_static(b"{bad"), pos), Bytes::from_static(b"{bad"));
        assert_eq!(with_resume(Bytes::from_static(br#"{"mid":1}"#), Positions::default()), Bytes::from_static(br#"{"mid":1}"#));
    }
}
