//! authsvc's HTTP API on goim logic's port: `POST /auth/token` (mint, for backends holding an API
//! key), `GET /auth/keys` (the public token keys as JWKS), `GET /metrics` and `GET /healthz` (ready
//! only while NATS is connected). Errors use goim's shape
//! `{"code": -400|-401|-403|-404|-500, "message": "..."}` with the matching HTTP status.
//!
//! With `http.demo_path` set (the dev config: `/demo/`) it also serves the browser demo page
//! (`web/demo/`, [`demo_router`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use goim_token::Grant;

use crate::state::{AuthState, Minted};

/// `nats`: the service's NATS connection, whose state `/healthz` and `/metrics` report.
pub fn router(state: Arc<AuthState>, max_body_bytes: usize, nats: async_nats::Client) -> Router {
    let health = nats.clone();
    Router::new()
        .route("/auth/token", post(mint))
        .route("/auth/keys", get(keys))
        .route("/healthz", get(move || async move { healthz(&health) }))
        .route("/metrics", get(move |state| metrics(state, nats)))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Token minting and delegated-connect counters and the NATS connection's, Prometheus text
/// (`goim_authsvc_*`).
async fn metrics(State(state): State<Arc<AuthState>>, nats: async_nats::Client) -> Response {
    let counters = serde_json::to_value(&state.stats).unwrap_or_default();
    let mut text = goim_common::prometheus_text("goim_authsvc", &counters);
    let callout = serde_json::to_value(state.callout.snapshot()).unwrap_or_default();
    text.push_str(&goim_common::prometheus_text("goim_authsvc_callout", &callout));
    text.push_str(&goim_common::nats_prometheus("goim_authsvc", &[&nats]));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `200 ok` while the NATS connection is up, `503` with the reason while it reconnects: minting over
/// NATS, the callout and the control plane all need it.
fn healthz(nats: &async_nats::Client) -> Response {
    match goim_common::nats_ready(&[nats]) {
        Ok(()) => "ok".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// goim's error shape with a matching status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let code = -(status.as_u16() as i64);
    (status, Json(serde_json::json!({ "code": code, "message": message.into() }))).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

async fn mint(State(state): State<Arc<AuthState>>, headers: HeaderMap, body: Bytes) -> Response {
    if state.api_keys.is_empty() {
        return error(StatusCode::FORBIDDEN, "minting over HTTP is disabled: no http.api_keys configured");
    }
    match bearer(&headers) {
        Some(key) if state.api_key_ok(key) => {}
        Some(_) => return error(StatusCode::UNAUTHORIZED, "invalid API key"),
        None => return error(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <API key>"),
    }
    let grant: Grant = match serde_json::from_slice(&body) {
        Ok(g) => g,
        Err(e) => {
            state.stats.mint_refused.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, format!("invalid grant: {e}"));
        }
    };
    match state.keys.minter.mint(&grant) {
        Ok((token, claims)) => {
            state.stats.minted_http.fetch_add(1, Ordering::Relaxed);
            let kid = state.keys.minter.key.kid.clone();
            Json(Minted { token, exp: claims.exp, jti: claims.jti, kid }).into_response()
        }
        Err(e) => {
            state.stats.mint_refused.fetch_add(1, Ordering::Relaxed);
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

async fn keys(State(state): State<Arc<AuthState>>) -> Response {
    Json(state.jwks()).into_response()
}

/// The browser demo page (`web/demo/` of the repository), compiled into the binary: the page always
/// matches the binary that serves it, nothing depends on the working directory, and authsvc has no
/// file-serving code (no path to traverse) — the router knows exactly these files.
const DEMO_FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../web/demo/index.html")),
    ("goim.js", "text/javascript; charset=utf-8", include_str!("../../web/demo/goim.js")),
    ("demo.js", "text/javascript; charset=utf-8", include_str!("../../web/demo/demo.js")),
];

/// Same-origin scripts and styles only; the page connects to authsvc (same origin) and to an edge's
/// WebSocket anywhere.
const DEMO_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; frame-ancestors 'none'";

/// `GET <path>` (the page), `<path>index.html`, `<path>goim.js`, `<path>demo.js`, and `<path>`
/// without its trailing slash redirecting to it. `path` starts and ends with `/` (config-validated).
pub fn demo_router(path: &str) -> Router {
    let mut router = Router::new();
    for &(name, content_type, body) in DEMO_FILES {
        let serve = move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-store"),
                    (header::CONTENT_SECURITY_POLICY, DEMO_CSP),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
        };
        router = router.route(&format!("{path}{name}"), get(serve));
        if name == "index.html" {
            router = router.route(path, get(serve));
        }
    }
    let bare = path.trim_end_matches('/');
    if !bare.is_empty() {
        let target = path.to_string();
        router = router.route(
            bare,
            get(move || async move { (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, target)]) }),
        );
    }
    router
}
