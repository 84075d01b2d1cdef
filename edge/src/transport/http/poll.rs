//! Long-polling: opening a poll session and its polls, with acknowledgements (formats: `super` docs).
//!
//! `POST /poll` (body: the auth JSON) or `GET /poll?auth=` runs the auth and answers
//! `{"session":"<id>","reply":{"op":8,"seq":1,"body":""},"next":0}`.
//!
//! `GET|POST /session/<id>/poll?ack=<cursor>&timeout_ms=<ms>`: `ack` (default 0) acknowledges every
//! event up to that cursor — the edge drops them — and the poll answers as soon as the session's log
//! holds events after it: `{"next":<cursor of the last event>,"events":[{"op","seq","body"},…]}`
//! (body base64), or `{"next":<ack>,"events":[]}` after `timeout_ms` (default and maximum
//! `listen.http_poll_max_ms`). The client passes `next` as the following poll's `ack`; a response that
//! got lost is simply sent again by a poll with the old `ack`. An `ack` beyond the last cursor handed
//! out is 400. Events after the last ack fill the session's log (half of `limits.max_outbound_bytes`)
//! and then its outbox (the bound): a client that stops polling (or acking) is closed as
//! `slow_consumer` and its next poll answers 410 with the reason; a session with no poll in flight for `listen.http_session_grace_ms` closes (`client_gone`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::time::Instant;

use super::session::{Kind, Wait};
use super::{create, error, gone, packet_json, HttpState};

#[derive(serde::Deserialize)]
pub struct OpenQuery {
    auth: Option<String>,
}

pub async fn open_get(State(state): State<Arc<HttpState>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Query(q): Query<OpenQuery>) -> Response {
    match q.auth {
        Some(auth) => open(state, peer, Bytes::from(auth)).await,
        None => error(StatusCode::BAD_REQUEST, "missing ?auth=<goim auth JSON>"),
    }
}

pub async fn open_post(State(state): State<Arc<HttpState>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(body) => open(state, peer, body).await,
        Err(e) => error(e.status(), e.body_text()),
    }
}

async fn open(state: Arc<HttpState>, peer: SocketAddr, auth: Bytes) -> Response {
    match create(&state, peer, auth, Kind::Poll).await {
        Ok((hs, op8)) => {
            // The grace period runs from here: the first poll is due within it.
            let _ = hs.attach(false);
            Json(json!({ "session": hs.id, "reply": packet_json(&op8), "next": 0 })).into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(serde::Deserialize)]
pub struct PollQuery {
    ack: Option<u64>,
    timeout_ms: Option<u64>,
}

pub async fn poll(State(state): State<Arc<HttpState>>, Path(id): Path<String>, Query(q): Query<PollQuery>) -> Response {
    let Some(hs) = state.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such session");
    };
    if hs.kind != Kind::Poll {
        return error(StatusCode::CONFLICT, "not a long-poll session (an SSE session reads its event stream)");
    }
    let ack = q.ack.unwrap_or(0);
    if let Some(reason) = hs.closed_reason() {
        // Told now: unknown from here on.
        state.remove(&hs);
        return gone(reason);
    }
    if let Err(last) = hs.ack(ack) {
        return error(StatusCode::BAD_REQUEST, format!("ack={ack} is beyond the last cursor handed out ({last})"));
    }
    let max = state.ctx.config.listen.http_poll_max_ms;
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(max).min(max));
    let (_attached, _) = hs.attach(false);
    match hs.wait_after(ack, Instant::now() + wait, None).await {
        Wait::Events(events) => {
            let next = events.last().map_or(ack, |e| e.cursor);
            let events: Vec<_> = events.iter().map(|e| packet_json(&e.packet)).collect();
            Json(json!({ "next": next, "events": events })).into_response()
        }
        Wait::Timeout | Wait::Replaced => Json(json!({ "next": ack, "events": [] })).into_response(),
        Wait::Closed(reason) => {
            state.remove(&hs);
            gone(reason)
        }
    }
}
