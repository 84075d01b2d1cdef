//! authsvc's HTTP API on goim logic's port: `POST /auth/token` (mint, for backends holding an API
//! key), `GET /auth/keys` (the public token keys as JWKS) and `GET /healthz`. Errors use goim's shape
//! `{"code": -400|-401|-403|-404|-500, "message": "..."}` with the matching HTTP status.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use goim_token::Grant;

use crate::state::{AuthState, Minted};

pub fn router(state: Arc<AuthState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/auth/token", post(mint))
        .route("/auth/keys", get(keys))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
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
