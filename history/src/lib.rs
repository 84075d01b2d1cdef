//! goim-history: JetStream history for goim-nats.
//!
//! At start it provisions one stream per subject class (`streams`: `GOIM_ROOMS` over `room.>`,
//! `GOIM_USERS` over `user.>`, `GOIM_BROADCAST` over `broadcast`, each with its own retention, dedup
//! window and a republish of every stored message to `live.<subject>` carrying its sequence), then
//! serves token-scoped history reads (`store` reads pages with direct gets, `access` decides who may
//! read what, `query` holds the request and answer formats) over NATS (`bus`: `history.get`,
//! `history.info`, the micro service `goim-history`) and HTTP (`http`: `GET /history`). `config`
//! holds every setting.

pub mod access;
pub mod bus;
pub mod config;
pub mod http;
pub mod query;
pub mod service;
pub mod store;
pub mod streams;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::query::Limits;
use crate::service::History;
use crate::store::Reader;
use crate::streams::Catalog;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Access(#[from] access::AccessError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot provision the history streams: {0}")]
    Provision(#[from] streams::ProvisionError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

/// A started history service.
pub struct Running {
    pub history: Arc<History>,
    pub client: async_nats::Client,
    pub http_addr: Option<SocketAddr>,
}

/// Connect, provision the streams (retrying while JetStream is unavailable), serve NATS and HTTP.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let n = &cfg.nats;
    let client = goim_common::connect_nats(&n.urls, || goim_common::credentials(&n.name, &n.user, &n.password)).await;
    let access = access::Access::start(&cfg.tokens, &client).await?;
    let catalog = Catalog::new(&cfg);
    let js = async_nats::jetstream::new(client.clone());
    streams::provision_until_ready(&js, &catalog, Duration::from_millis(cfg.provision.retry_max_ms)).await?;
    streams::spawn_recheck(js, catalog.clone(), Duration::from_secs(cfg.provision.recheck_interval_secs));
    let history = Arc::new(History {
        access,
        catalog,
        reader: Reader::new(client.clone(), Duration::from_millis(cfg.read.timeout_ms), cfg.read.default_op),
        limits: Limits { default_limit: cfg.read.default_limit, max_limit: cfg.read.max_limit },
        max_resume: cfg.read.max_resume,
        reads: tokio::sync::Semaphore::new(cfg.read.max_concurrent),
        stats: Default::default(),
    });
    let listener = if cfg.http.listen.is_empty() {
        None
    } else {
        let addr = &cfg.http.listen;
        let listener = goim_common::bind(addr, cfg.http.reuse_port, 1024)
            .map_err(|source| StartError::Listen { addr: addr.clone(), source })?;
        Some(listener)
    };
    let http_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let metadata = [("http".to_string(), http_addr.map_or(String::new(), |a| a.to_string()))].into_iter().collect();
    bus::serve(history.clone(), client.clone(), &cfg.nats.queue_group, metadata).await?;
    if let Some(listener) = listener {
        let app = http::router(history.clone(), cfg.read.max_page_bytes, client.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "HTTP server stopped");
            }
        });
    }
    // A round trip on this connection (any service's answer will do: the server handles one
    // connection's protocol in order), so the endpoints' subscriptions are in place when the ready
    // line is printed.
    let ping = client.request(format!("$SRV.PING.{}", bus::SERVICE_NAME), bytes::Bytes::new());
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "the NATS service does not answer its own ping"),
        Err(_) => warn!("the NATS service does not answer its own ping within 5 s"),
    }
    info!(streams = ?history.catalog.enabled().map(|(_, s)| s.stream.as_str()).collect::<Vec<_>>(), "history service started");
    Ok(Running { history, client, http_addr })
}
