//! goim-authsvc: the control plane that replaces goim's logic.
//!
//! It mints JWT-scoped tokens (`keys` loads the signing keys, `http` and `bus` are the front doors),
//! decides delegated goim connects (`connect`), and is nats-server's auth callout for native NATS
//! clients (`callout`, with `natsjwt` for the server's JWT format). `config` holds every setting.

pub mod bus;
pub mod callout;
pub mod config;
pub mod connect;
pub mod http;
pub mod keys;
pub mod logic;
pub mod natsjwt;
pub mod nodes;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::Config;
use crate::connect::Connector;
use crate::state::{AuthState, Stats};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    #[error("cannot read API key file {path}: {source}")]
    ApiKeyFile { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("auth callout: {0}")]
    Callout(String),
    #[error("logic API: {0}")]
    Logic(String),
}

/// A started authsvc.
pub struct Running {
    pub state: Arc<AuthState>,
    pub client: async_nats::Client,
    pub http_addr: Option<SocketAddr>,
}

fn load_api_keys(cfg: &Config) -> Result<Vec<String>, StartError> {
    let mut keys: Vec<String> = cfg.http.api_keys.iter().filter(|k| !k.is_empty()).cloned().collect();
    for path in &cfg.http.api_key_files {
        let text = std::fs::read_to_string(path)
            .map_err(|source| StartError::ApiKeyFile { path: path.display().to_string(), source })?;
        let key = text.trim_end_matches(['\n', '\r']).to_string();
        if !key.is_empty() {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Connect to NATS with `cfg`'s credentials, retrying (with a logged reason) until a server answers.
pub async fn connect_nats(cfg: &config::NatsConfig) -> async_nats::Client {
    goim_common::connect_nats(&cfg.urls, || goim_common::credentials(&cfg.name, &cfg.user, &cfg.password)).await
}

fn bind(addr: &str, reuse_port: bool) -> Result<tokio::net::TcpListener, StartError> {
    goim_common::bind(addr, reuse_port, 1024).map_err(|source| StartError::Listen { addr: addr.to_string(), source })
}

/// Load keys, connect to NATS, serve the request subjects, the callout and HTTP.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let keys = keys::load(&cfg)?;
    info!(signing_key = %keys.minter.key.kid, accepted = ?keys.verifying.kids(), "token keys loaded");
    let api_keys = load_api_keys(&cfg)?;
    if api_keys.is_empty() && !cfg.http.listen.is_empty() {
        info!("no http.api_keys: POST /auth/token is disabled (mint over NATS auth.mint instead)");
    }
    let state = Arc::new(AuthState {
        keys,
        api_keys,
        connector: Connector::new(cfg.connect.clone()),
        stats: Stats::default(),
        callout: Default::default(),
    });
    let client = connect_nats(&cfg.nats).await;
    bus::serve(state.clone(), client.clone(), &cfg.nats.queue_group).await?;
    if cfg.callout.enabled {
        start_callout(&cfg, &state, &client).await?;
    }
    let http_addr = if cfg.http.listen.is_empty() {
        None
    } else {
        let listener = bind(&cfg.http.listen, cfg.http.reuse_port)?;
        let addr = listener.local_addr().ok();
        let mut app = http::router(state.clone(), cfg.http.max_body_bytes, client.clone());
        if !cfg.http.demo_path.is_empty() {
            info!(path = %cfg.http.demo_path, "serving the browser demo page (development aid)");
            app = app.merge(http::demo_router(&cfg.http.demo_path));
        }
        if cfg.logic.enabled {
            let logic = logic::start(&cfg.logic, &cfg.presence, &cfg.nats, client.clone()).await.map_err(StartError::Logic)?;
            app = app.merge(logic::router(logic));
        }
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "HTTP server stopped");
            }
        });
        addr
    };
    Ok(Running { state, client, http_addr })
}

/// Serve nats-server's auth callout, on a connection of its own in the callout account when
/// `callout.nats_user` is set (nats-conf/dev.conf: user `callout` in account AUTH), else on `client`.
async fn start_callout(cfg: &Config, state: &Arc<AuthState>, client: &async_nats::Client) -> Result<(), StartError> {
    let callout_cfg = callout::CalloutConfig::from_files(
        &cfg.callout.issuer_seed_file,
        cfg.callout.xkey_seed_file.as_deref(),
        &cfg.callout.account,
    )
    .map_err(|e| StartError::Callout(e.to_string()))?;
    let verifier = goim_token::Verifier::new(
        state.keys.verifying.clone(),
        &cfg.tokens.issuer,
        &cfg.tokens.audience,
        cfg.tokens.leeway_secs,
    );
    let callout = callout::Callout::new(callout_cfg, verifier).map_err(|e| StartError::Callout(e.to_string()))?;
    let callout = Arc::new(callout.with_stats(state.callout.clone()));
    let connection = if cfg.callout.nats_user.is_empty() {
        client.clone()
    } else {
        let nats = config::NatsConfig {
            user: cfg.callout.nats_user.clone(),
            password: cfg.callout.nats_password.clone(),
            name: format!("{}-callout", cfg.nats.name),
            ..cfg.nats.clone()
        };
        connect_nats(&nats).await
    };
    info!(issuer = %callout.issuer_public_key(), account = %cfg.callout.account, "serving the NATS auth callout");
    callout.spawn(connection, &cfg.nats.queue_group).await.map_err(|e| StartError::Callout(e.to_string()))?;
    Ok(())
}
