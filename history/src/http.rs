//! goim-history over HTTP: `GET /history` (a page, `Authorization: Bearer <token or API key>`),
//! `GET /history/info` (which subjects are stored; no credential needed), `GET /history/stats`
//! (counters), `GET /metrics` and `GET /healthz` (ready only while NATS is connected). Errors use goim's shape `{"code": -status, "message": "..."}` with
//! the matching HTTP status.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::query::{RawParams, Refusal};
use crate::service::History;

/// `nats`: the service's NATS connection, whose state `/healthz` and `/metrics` report.
pub fn router(history: Arc<History>, max_page_bytes: usize, nats: async_nats::Client) -> Router {
    let health = nats.clone();
    Router::new()
        .route("/history", get(read))
        .route("/history/info", get(info))
        .route("/history/stats", get(stats))
        .route("/metrics", get(move |state| metrics(state, nats)))
        .route("/healthz", get(move || async move { healthz(&health) }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
        .with_state((history, max_page_bytes))
}

/// goim's error shape with a matching status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let code = -(status.as_u16() as i64);
    (status, Json(serde_json::json!({ "code": code, "message": message.into() }))).into_response()
}

fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, r.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

type AppState = (Arc<History>, usize);

async fn read(
    State((history, max_page_bytes)): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = match query {
        Ok(Query(pairs)) => RawParams::from_pairs(&pairs),
        Err(e) => Err(Refusal::BadRequest(format!("bad query string: {e}"))),
    };
    match history.read(bearer(&headers), params, max_page_bytes).await {
        Ok(page) => Json(page).into_response(),
        Err(r) => refusal(r),
    }
}

async fn info(State((history, _)): State<AppState>) -> Response {
    Json(history.info()).into_response()
}

/// The read counters and the NATS connection's, Prometheus text (`goim_history_*`).
async fn metrics(State((history, _)): State<AppState>, nats: async_nats::Client) -> Response {
    let mut text = goim_common::prometheus_text("goim_history", &history.stats_json());
    text.push_str(&goim_common::nats_prometheus("goim_history", &[&nats]));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `200 ok` while the NATS connection is up (every read is a JetStream request), `503` with the
/// reason while it reconnects.
fn healthz(nats: &async_nats::Client) -> Response {
    match goim_common::nats_ready(&[nats]) {
        Ok(()) => "ok".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn stats(State((history, _)): State<AppState>) -> Response {
    Json(history.stats_json()).into_response()
}
