//! goim logic's HTTP API on authsvc's HTTP port: the nine `/goim/...` routes with goim's request and
//! response shapes.
//!
//! Pushes publish to the subject map (`key.<esc key>`, `user.<mid>`, `room.<esc type>.<esc id>`,
//! `broadcast`) with header `Goim-Op` (and `Goim-Speed` for a paced broadcast); the body is the raw
//! request body whatever its Content-Type. The answer `{"code":0,"message":""}` is sent only once NATS
//! has taken every message: in `push_ack = "server"` mode a round trip on the same connection proves
//! the server processed the PUBs (a request to `_GOIM.barrier.authsvc.<instance>`, answered by the
//! server's "no responders"); in `"jetstream"` mode each message is a JetStream publish with a
//! `Nats-Msg-Id`, acknowledged by the stream that captures its subject.
//!
//! Online counts and nodes come from the presence bucket the edges report into
//! (`goim_edge::presence::ClusterView`), see `crate::nodes`.
//!
//! Binding follows goim (gin): parameters in the query string, list parameters repeated
//! (`mids=1&mids=2`), required parameters must be present and non-zero/non-empty, numbers must parse;
//! otherwise HTTP 400 `{"code":-400,"message":"..."}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap as NatsHeaders;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use goim_edge::presence::{self, BucketSettings, ClusterView};
use goim_edge::subjects;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::nodes;

/// `[logic]`: goim logic's HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicConfig {
    /// Serve the `/goim/...` routes on `http.listen`.
    pub enabled: bool,
    /// API keys accepted on the push routes (`Authorization: Bearer <key>`); none = open, as goim.
    pub push_api_keys: Vec<String>,
    /// Files holding one more push API key each (trailing newline trimmed).
    pub push_api_key_files: Vec<PathBuf>,
    /// Largest push body (bytes); larger is refused with 413. NATS' `max_payload` also bounds it.
    pub max_push_body_bytes: usize,
    /// A client that has not sent its whole body after this long gets 408.
    pub body_timeout_ms: u64,
    /// Most keys or mids one push request may name.
    pub max_targets: usize,
    /// Longest key, and longest room id `type://room`, in bytes.
    pub max_id_len: usize,
    /// How a push is confirmed before the answer: "server" or "jetstream".
    pub push_ack: PushAck,
    /// The confirmation must arrive within this time, or the answer is code -500.
    pub push_timeout_ms: u64,
    /// Credentials for a NATS connection of its own (e.g. a user in the application account when
    /// authsvc's own user lives in the callout account); empty = share authsvc's connection.
    pub nats_user: String,
    pub nats_password: String,
    pub nodes: NodesConfig,
    pub backoff: BackoffConfig,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            enabled: true,
            push_api_keys: Vec::new(),
            push_api_key_files: Vec::new(),
            max_push_body_bytes: 1024 * 1024,
            body_timeout_ms: 10_000,
            max_targets: 1000,
            max_id_len: 256,
            push_ack: PushAck::Server,
            push_timeout_ms: 5_000,
            nats_user: String::new(),
            nats_password: String::new(),
            nodes: NodesConfig::default(),
            backoff: BackoffConfig::default(),
        }
    }
}

/// How a push is confirmed before `{"code":0}` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PushAck {
    /// A round trip after the PUBs: the server has processed them (delivered to the edges'
    /// subscriptions, stored by a stream that captures the subject, if any).
    #[default]
    Server,
    /// JetStream publish with `Nats-Msg-Id`, acknowledged by the stream that stores the subject (as
    /// goim-history's `history.info` says); a subject no stream stores is confirmed as in "server".
    Jetstream,
}

/// `[logic.nodes]`: the fixed part of `/goim/nodes/weighted` (goim logic's `[node]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodesConfig {
    /// `domain`, and the only node when no edge is live.
    pub domain: String,
    pub tcp_port: u16,
    pub ws_port: u16,
    pub wss_port: u16,
    /// Advertised client heartbeat interval (seconds) and missed beats tolerated.
    pub heartbeat_secs: u64,
    pub heartbeat_max: u32,
    /// Most nodes listed.
    pub max_nodes: usize,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            domain: "conn.goim.io".into(),
            tcp_port: 3101,
            ws_port: 3102,
            wss_port: 3103,
            heartbeat_secs: 240,
            heartbeat_max: 2,
            max_nodes: 5,
        }
    }
}

/// `[logic.backoff]`: the reconnect backoff advertised to clients (goim logic's `[backoff]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    pub max_delay: i32,
    pub base_delay: i32,
    pub factor: f32,
    pub jitter: f32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { max_delay: 300, base_delay: 3, factor: 1.8, jitter: 0.3 }
    }
}

/// `[presence]`: the bucket the edges report into (used to create it if authsvc comes first).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSection {
    pub bucket: String,
    pub max_age_ms: u64,
    pub replicas: usize,
}

impl Default for PresenceSection {
    fn default() -> Self {
        PresenceSection { bucket: "goim_presence".into(), max_age_ms: 20_000, replicas: 1 }
    }
}

impl LogicConfig {
    pub fn validate(&self, presence: &PresenceSection) -> Result<(), String> {
        presence::validate_bucket(&presence.bucket, presence.max_age_ms)?;
        if presence.replicas == 0 || presence.replicas > 5 {
            return Err("presence.replicas must be 1..=5".into());
        }
        if self.max_push_body_bytes == 0 || self.max_targets == 0 || self.max_id_len == 0 {
            return Err("logic.max_push_body_bytes, max_targets and max_id_len must be positive".into());
        }
        if self.push_timeout_ms == 0 || self.body_timeout_ms == 0 {
            return Err("logic.push_timeout_ms and body_timeout_ms must be positive".into());
        }
        if self.nodes.max_nodes == 0 {
            return Err("logic.nodes.max_nodes must be at least 1".into());
        }
        Ok(())
    }
}

/// What the logic routes share.
pub struct LogicState {
    cfg: LogicConfig,
    api_keys: Vec<String>,
    client: async_nats::Client,
    js: jetstream::Context,
    view: Arc<ClusterView>,
    barrier_subject: String,
    instance: String,
    seq: AtomicU64,
    /// Which subjects goim-history stores (`push_ack = "jetstream"`), learned on first use and kept;
    /// while no history service answers, asked again at most every 10 s.
    stored: std::sync::Mutex<Option<Arc<goim_edge::history::History>>>,
    stored_asked: std::sync::Mutex<Option<std::time::Instant>>,
    pub stats: LogicStats,
}

#[derive(Debug, Default, Serialize)]
pub struct LogicStats {
    pub pushes: AtomicU64,
    pub messages: AtomicU64,
    pub push_failed: AtomicU64,
    pub bad_requests: AtomicU64,
}

impl LogicState {
    /// goim-history's stored subjects, asked for until a history service answers.
    async fn stored_subjects(&self) -> Option<Arc<goim_edge::history::History>> {
        if let Some(h) = self.stored.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(h);
        }
        {
            let mut asked = self.stored_asked.lock().unwrap_or_else(|p| p.into_inner());
            if asked.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
                return None;
            }
            *asked = Some(std::time::Instant::now());
        }
        let found = goim_edge::history::History::discover(&self.client, 1000).await?;
        *self.stored.lock().unwrap_or_else(|p| p.into_inner()) = Some(found.clone());
        Some(found)
    }

    /// The presence view (for tests and diagnostics).
    pub fn view(&self) -> &Arc<ClusterView> {
        &self.view
    }
}

/// Load the push API keys, pick the NATS connection, and start following the presence bucket (in the
/// background: the routes answer at once, with empty counts until the bucket is read).
pub async fn start(
    cfg: &LogicConfig,
    presence_cfg: &PresenceSection,
    nats: &crate::config::NatsConfig,
    shared: async_nats::Client,
) -> Result<Arc<LogicState>, String> {
    let mut api_keys: Vec<String> = cfg.push_api_keys.iter().filter(|k| !k.is_empty()).cloned().collect();
    for path in &cfg.push_api_key_files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = text.trim_end_matches(['\n', '\r']).to_string();
        if !key.is_empty() {
            api_keys.push(key);
        }
    }
    if api_keys.is_empty() {
        info!("no logic.push_api_keys: the /goim/push routes are open to anyone who reaches the port (goim's behaviour)");
    }
    let client = if cfg.nats_user.is_empty() {
        shared
    } else {
        let own = crate::config::NatsConfig {
            user: cfg.nats_user.clone(),
            password: cfg.nats_password.clone(),
            name: format!("{}-logic", nats.name),
            ..nats.clone()
        };
        crate::connect_nats(&own).await
    };
    let max_age = Duration::from_millis(presence_cfg.max_age_ms);
    let view = ClusterView::new(None, max_age, None);
    let js = jetstream::new(client.clone());
    let settings = BucketSettings { bucket: presence_cfg.bucket.clone(), max_age, replicas: presence_cfg.replicas };
    {
        let js = js.clone();
        let view = view.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let store = loop {
                match presence::open_bucket(&js, &settings).await {
                    Ok(store) => break store,
                    Err(e) => {
                        warn!(bucket = %settings.bucket, error = %e, retry_in = ?backoff, "presence bucket unavailable: online counts and nodes stay empty");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            };
            view.set_max_age(presence::bucket_max_age(&store, settings.max_age).await);
            view.spawn_watch(store);
            info!(bucket = %settings.bucket, "following edge presence");
        });
    }
    let instance = uuid::Uuid::new_v4().simple().to_string();
    Ok(Arc::new(LogicState {
        cfg: cfg.clone(),
        api_keys,
        client,
        js,
        view,
        barrier_subject: format!("_GOIM.barrier.authsvc.{instance}"),
        instance,
        seq: AtomicU64::new(0),
        stats: LogicStats::default(),
            stored: std::sync::Mutex::new(None),
        stored_asked: std::sync::Mutex::new(None),
    }))
}

/// The nine routes. Wrong methods get 405 in goim's error shape; unknown paths fall through to the
/// router they are merged into.
pub fn router(state: Arc<LogicState>) -> Router {
    Router::new()
        .route("/goim/push/keys", post(push_keys).fallback(wrong_method))
        .route("/goim/push/mids", post(push_mids).fallback(wrong_method))
        .route("/goim/push/room", post(push_room).fallback(wrong_method))
        .route("/goim/push/all", post(push_all).fallback(wrong_method))
        .route("/goim/online/top", get(online_top).fallback(wrong_method))
        .route("/goim/online/room", get(online_room).fallback(wrong_method))
        .route("/goim/online/total", get(online_total).fallback(wrong_method))
        .route("/goim/nodes/weighted", get(nodes_weighted).fallback(wrong_method))
        .route("/goim/nodes/instances", get(nodes_instances).fallback(wrong_method))
        .with_state(state)
}

// ---- responses -------------------------------------------------------------------------------

/// goim's `resp`: `code`, `message`, then `data` (omitted when absent).
#[derive(Serialize)]
struct Resp<T: Serialize> {
    code: i32,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

fn json_response<T: Serialize>(status: StatusCode, code: i32, message: String, data: Option<T>) -> Response {
    let body = serde_json::to_vec(&Resp { code, message, data }).unwrap_or_else(|_| b"{\"code\":-500,\"message\":\"encoding\"}".to_vec());
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
}

fn ok<T: Serialize>(data: Option<T>) -> Response {
    json_response(StatusCode::OK, 0, String::new(), data)
}

/// A refused request: `{"code": -<status>, "message": ...}` with that HTTP status (400 → -400, as goim).
fn refuse(state: &LogicState, status: StatusCode, message: impl Into<String>) -> Response {
    state.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    json_response::<()>(status, -i32::from(status.as_u16()), message.into(), None)
}

/// goim's logic error: HTTP 200 with code -500.
fn server_error(message: impl Into<String>) -> Response {
    json_response::<()>(StatusCode::OK, -500, message.into(), None)
}

async fn wrong_method() -> Response {
    json_response::<()>(StatusCode::METHOD_NOT_ALLOWED, -405, "method not allowed".into(), None)
}

// ---- query binding (gin's BindQuery) --------------------------------------------------------

/// A parsed query string: every `name=value` pair in order, percent-decoded (`+` = space).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_component(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) else {
                    return Err(format!("invalid URL escape in {s:?}"));
                };
                out.push(h << 4 | l);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, String> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode_component(k)?, decode_component(v)?));
        }
        Ok(Query(pairs))
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The first value of `name` (gin takes the first), empty when absent.
    pub fn first(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
    }

    /// A required string: present and non-empty.
    pub fn required(&self, name: &str) -> Result<&str, String> {
        match self.first(name) {
            "" => Err(format!("Key: '{name}' Error:Field validation for '{name}' failed on the 'required' tag")),
            v => Ok(v),
        }
    }

    /// An integer parameter: None when absent or empty (gin's zero value), an error when not a number.
    pub fn int<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.first(name) {
            "" => Ok(None),
            v => v.parse::<T>().map(Some).map_err(|_| format!("{name}={v:?}: not a valid {}", std::any::type_name::<T>())),
        }
    }

    /// A required integer: present, numeric and non-zero.
    pub fn required_int<T: std::str::FromStr + Default + PartialEq>(&self, name: &str) -> Result<T, String> {
        match self.int::<T>(name)? {
            Some(v) if v != T::default() => Ok(v),
            _ => Err(format!("Key: '{name}' Error:Field validation for '{name}' failed on the 'required' tag")),
        }
    }
}

// ---- pushes ------------------------------------------------------------------------------------

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}


// A ready answer as the error: small enough, built once per refused request.
#[allow(clippy::result_large_err)]
fn check_api_key(state: &LogicState, headers: &HeaderMap) -> Result<(), Response> {
    if state.api_keys.is_empty() {
        return Ok(());
    }
    match bearer(headers) {
        Some(k) if state.api_keys.iter().fold(false, |ok, key| ok | goim_common::constant_time_eq(key.as_bytes(), k.as_bytes())) => Ok(()),
        Some(_) => Err(refuse(state, StatusCode::UNAUTHORIZED, "invalid API key")),
        None => Err(refuse(state, StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <API key>")),
    }
}

/// The largest body NATS will take on this connection: `max_payload` minus room for our headers.
fn body_limit(state: &LogicState) -> usize {
    let server = state.client.server_info().max_payload;
    let nats_limit = if server == 0 { usize::MAX } else { server.saturating_sub(256) };
    state.cfg.max_push_body_bytes.min(nats_limit)
}

async fn read_body(state: &LogicState, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let limit = body_limit(state);
    let too_large = || refuse(state, StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Some(e.to_string()))?;
            if buf.len() + chunk.len() > limit {
                return Err(None::<String>);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(Duration::from_millis(state.cfg.body_timeout_ms), read).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(None)) => Err(too_large()),
        Ok(Err(Some(e))) => Err(refuse(state, StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
        Err(_) => Err(refuse(state, StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
    }
}

/// The part every push shares: API key, query binding, body. `bind` turns the query into the
/// target subjects and the extra headers.
async fn push(
    state: Arc<LogicState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    bind: impl FnOnce(&LogicState, &Query) -> Result<(i32, Vec<String>, Option<i64>), String>,
) -> Response {
    if let Err(r) = check_api_key(&state, &headers) {
        return r;
    }
    let query = match Query::parse(uri.query()) {
        Ok(q) => q,
        Err(e) => return refuse(&state, StatusCode::BAD_REQUEST, e),
    };
    let (op, targets, speed) = match bind(&state, &query) {
        Ok(t) => t,
        Err(e) => return refuse(&state, StatusCode::BAD_REQUEST, e),
    };
    let body = match read_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let msg_id = headers
        .get("nats-msg-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string);
    match publish(&state, op, &targets, speed, body, msg_id).await {
        Ok(()) => {
            state.stats.pushes.fetch_add(1, Ordering::Relaxed);
            ok::<()>(None)
        }
        Err(e) => {
            state.stats.push_failed.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, targets = targets.len(), "push not confirmed by NATS");
            server_error(e)
        }
    }
}

/// Publish `body` to every subject and wait for the confirmation `push_ack` asks for.
async fn publish(
    state: &LogicState,
    op: i32,
    subjects_: &[String],
    speed: Option<i64>,
    body: Bytes,
    msg_id: Option<String>,
) -> Result<(), String> {
    let mut headers = NatsHeaders::new();
    headers.insert(subjects::OP_HEADER, op.to_string().as_str());
    if let Some(speed) = speed {
        headers.insert(subjects::SPEED_HEADER, speed.to_string().as_str());
    }
    let timeout = Duration::from_millis(state.cfg.push_timeout_ms);
    state.stats.messages.fetch_add(subjects_.len() as u64, Ordering::Relaxed);
    match state.cfg.push_ack {
        PushAck::Server => {
            for subject in subjects_ {
                state
                    .client
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                    .await
                    .map_err(|e| format!("publish {subject}: {e}"))?;
            }
            // The server answers this request only after it has processed the PUBs queued before it.
            let req = async_nats::Request::new().timeout(Some(timeout));
            match state.client.send_request(state.barrier_subject.clone(), req).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
                Err(e) => Err(format!("NATS did not confirm the push: {e}")),
            }
        }
        PushAck::Jetstream => {
            let base = msg_id.unwrap_or_else(|| format!("{}-{}", state.instance, state.seq.fetch_add(1, Ordering::Relaxed)));
            let stored = state.stored_subjects().await;
            let is_stored = |subject: &str| stored.as_ref().is_some_and(|h| h.stream_of(subject).is_some());
            // Subjects no stream stores (keys, ephemeral rooms) go out as core messages, confirmed by
            // a server round trip; the stored ones are JetStream publishes with a message id.
            let core: Vec<&String> = subjects_.iter().filter(|s| !is_stored(s)).collect();
            for subject in &core {
                state
                    .client
                    .publish_with_headers(subject.to_string(), headers.clone(), body.clone())
                    .await
                    .map_err(|e| format!("publish {subject}: {e}"))?;
            }
            if !core.is_empty() {
                let req = async_nats::Request::new().timeout(Some(timeout));
                match state.client.send_request(state.barrier_subject.clone(), req).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
                    Err(e) => return Err(format!("NATS did not confirm the push: {e}")),
                }
            }
            let mut acks = Vec::with_capacity(subjects_.len());
            for (i, subject) in subjects_.iter().enumerate().filter(|(_, s)| is_stored(s)) {
                let id = if subjects_.len() == 1 { base.clone() } else { format!("{base}-{i}") };
                let publish = jetstream::message::PublishMessage::build().headers(headers.clone()).message_id(id).payload(body.clone());
                let ack = state.js.send_publish(subject.clone(), publish).await.map_err(|e| format!("publish {subject}: {e}"))?;
                acks.push((subject, ack));
            }
            for (subject, ack) in acks {
                match tokio::time::timeout(timeout, ack).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("JetStream did not store {subject}: {e}")),
                    Err(_) => return Err(format!("no JetStream ack for {subject} (is a stream capturing it?)")),
                }
            }
            Ok(())
        }
    }
}

fn bind_operation(q: &Query) -> Result<i32, String> {
    q.required_int::<i32>("operation")
}

fn check_targets(state: &LogicState, name: &str, n: usize) -> Result<(), String> {
    if n == 0 {
        return Err(format!("Key: '{name}' Error:Field validation for '{name}' failed on the 'required' tag"));
    }
    if n > state.cfg.max_targets {
        return Err(format!("{n} {name}: at most {} per request", state.cfg.max_targets));
    }
    Ok(())
}

async fn push_keys(State(state): State<Arc<LogicState>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    push(state, uri, headers, body, |state, q| {
        let op = bind_operation(q)?;
        let keys = q.all("keys");
        check_targets(state, "keys", keys.len())?;
        let mut subjects_ = Vec::with_capacity(keys.len());
        for key in keys {
            if key.is_empty() || key.len() > state.cfg.max_id_len {
                return Err(format!("keys: {key:?} is empty or longer than {} bytes", state.cfg.max_id_len));
            }
            let s = subjects::key_subject(key);
            if !subjects_.contains(&s) {
                subjects_.push(s);
            }
        }
        Ok((op, subjects_, None))
    })
    .await
}

async fn push_mids(State(state): State<Arc<LogicState>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    push(state, uri, headers, body, |state, q| {
        let op = bind_operation(q)?;
        let mids = q.all("mids");
        check_targets(state, "mids", mids.len())?;
        let mut subjects_ = Vec::with_capacity(mids.len());
        for mid in mids {
            let mid: i64 = mid.parse().map_err(|_| format!("mids={mid:?}: not a valid int64"))?;
            let s = subjects::user_subject(mid);
            if !subjects_.contains(&s) {
                subjects_.push(s);
            }
        }
        Ok((op, subjects_, None))
    })
    .await
}

/// goim's `model.EncodeRoomKey`: `type://room`.
fn room_key(typ: &str, room: &str) -> String {
    format!("{typ}://{room}")
}

async fn push_room(State(state): State<Arc<LogicState>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    push(state, uri, headers, body, |state, q| {
        let op = bind_operation(q)?;
        let typ = q.required("type")?;
        let room = q.required("room")?;
        let id = room_key(typ, room);
        if id.len() > state.cfg.max_id_len {
            return Err(format!("room id {id:?} is longer than {} bytes", state.cfg.max_id_len));
        }
        Ok((op, vec![subjects::room_subject(&id)], None))
    })
    .await
}

async fn push_all(State(state): State<Arc<LogicState>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    push(state, uri, headers, body, |_, q| {
        let op = bind_operation(q)?;
        // goim: int32; 0 or negative = no pacing.
        let speed = q.int::<i32>("speed")?.filter(|s| *s > 0).map(i64::from);
        Ok((op, vec![subjects::BROADCAST.to_string()], speed))
    })
    .await
}

// ---- online and nodes --------------------------------------------------------------------------

// A ready answer as the error: small enough, built once per refused request.
#[allow(clippy::result_large_err)]
fn bind_get<T>(state: &LogicState, uri: &Uri, f: impl FnOnce(&Query) -> Result<T, String>) -> Result<T, Response> {
    Query::parse(uri.query()).and_then(|q| f(&q)).map_err(|e| refuse(state, StatusCode::BAD_REQUEST, e))
}

async fn online_top(State(state): State<Arc<LogicState>>, uri: Uri) -> Response {
    let (typ, limit) = match bind_get(&state, &uri, |q| {
        let typ = q.required("type")?.to_string();
        let limit = q.required_int::<i64>("limit")?;
        let limit = usize::try_from(limit).map_err(|_| format!("limit={limit}: must be positive"))?;
        Ok((typ, limit))
    }) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let tops = nodes::online_top(state.view.rooms_where(|r| r.starts_with(&typ)), &typ, limit);
    ok(Some(tops))
}

async fn online_room(State(state): State<Arc<LogicState>>, uri: Uri) -> Response {
    let (typ, rooms) = match bind_get(&state, &uri, |q| {
        let typ = q.required("type")?.to_string();
        let rooms: Vec<String> = q.all("rooms").into_iter().map(str::to_string).collect();
        if rooms.is_empty() {
            return Err("Key: 'rooms' Error:Field validation for 'rooms' failed on the 'required' tag".into());
        }
        Ok((typ, rooms))
    }) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let counts: BTreeMap<String, u64> =
        rooms.into_iter().map(|room| { let n = state.view.room_count(&room_key(&typ, &room)); (room, n) }).collect();
    ok(Some(counts))
}

async fn online_total(State(state): State<Arc<LogicState>>) -> Response {
    let (ip_count, conn_count) = state.view.totals();
    ok(Some(nodes::Total { conn_count, ip_count }))
}

async fn nodes_weighted(State(state): State<Arc<LogicState>>, uri: Uri) -> Response {
    let platform = match bind_get(&state, &uri, |q| Ok(q.first("platform").to_string())) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let edges = state.view.edges();
    ok(Some(nodes::nodes_weighted(&edges, &platform, &state.cfg.nodes, &state.cfg.backoff)))
}

async fn nodes_instances(State(state): State<Arc<LogicState>>) -> Response {
    ok(Some(nodes::instances(&state.view.edges())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_binding_follows_gin() {
        let q = Query::parse(Some("operation=1000&mids=1&mids=2&type=test&room=a%2Fb+c&empty=")).unwrap();
        assert_eq!(q.required_int::<i32>("operation").unwrap(), 1000);
        assert_eq!(q.all("mids"), vec!["1", "2"]);
        assert_eq!(q.required("room").unwrap(), "a/b c");
        assert!(q.required("empty").is_err());
        assert!(q.required("missing").is_err());
        assert!(q.int::<i32>("type").is_err(), "non-numeric");
        assert_eq!(q.int::<i32>("empty").unwrap(), None);
        let q = Query::parse(Some("operation=0")).unwrap();
        assert!(q.required_int::<i32>("operation").is_err(), "zero fails required");
        let q = Query::parse(Some("operation=99999999999")).unwrap();
        assert!(q.required_int::<i32>("operation").is_err(), "out of int32");
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%ff")).is_err(), "not UTF-8");
        assert!(Query::parse(None).unwrap().all("x").is_empty());
        let q = Query::parse(Some("operation=1&operation=2")).unwrap();
        assert_eq!(q.required_int::<i32>("operation").unwrap(), 1, "the first value wins");
    }

    #[test]
    fn response_shape_is_goims() {
        let r = serde_json::to_string(&Resp::<()> { code: 0, message: String::new(), data: None }).unwrap();
        assert_eq!(r, r#"{"code":0,"message":""}"#);
        let r = serde_json::to_string(&Resp { code: 0, message: String::new(), data: Some(Vec::<u8>::new()) }).unwrap();
        assert_eq!(r, r#"{"code":0,"message":"","data":[]}"#);
    }

    #[test]
    fn defaults_match_goim() {
        let c = LogicConfig::default();
        assert_eq!((c.nodes.heartbeat_secs, c.nodes.heartbeat_max), (240, 2));
        assert_eq!((c.backoff.max_delay, c.backoff.base_delay, c.backoff.factor, c.backoff.jitter), (300, 3, 1.8, 0.3));
        assert_eq!((c.nodes.tcp_port, c.nodes.ws_port, c.nodes.wss_port), (3101, 3102, 3103));
        assert!(c.validate(&PresenceSection::default()).is_ok());
        assert!(c.validate(&PresenceSection { max_age_ms: 999, ..PresenceSection::default() }).is_err());
    }
}
