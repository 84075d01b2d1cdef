//! The edge process: its shared context, the TCP and WebSocket listeners (SO_REUSEPORT, so several
//! edges can share a port), the accept loops, and start-up/shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tracing::{debug, warn};

use crate::access::Access;
use crate::bridge::Bridge;
use crate::config::Config;
use crate::hub::Hub;
use crate::presence::Presence;
use crate::session::Session;
use crate::stats::{CloseReason, Stats};
use crate::transport::tcp::{TcpReader, TcpWriter};
use crate::transport::ws::{websocket_config, WsReader, WsWriter};
use crate::transport::serve;

/// What every connection task shares.
#[derive(Debug)]
pub struct EdgeContext {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub access: Arc<Access>,
    pub stats: Arc<Stats>,
    pub next_conn_id: AtomicU64,
    /// Connection/room counts reported to the cluster and the cluster-wide view (op-3 counts).
    pub presence: Arc<Presence>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

/// A started edge: listeners bound, NATS connected, control subjects served.
pub struct RunningEdge {
    pub ctx: Arc<EdgeContext>,
    pub tcp_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
}

/// `<hostname>-<pid>-<random>`, restricted to subject-token characters.
pub fn default_edge_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "edge".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..6])
}

fn bind(addr: &str, reuse_port: bool, backlog: u32) -> Result<TcpListener, StartError> {
    goim_common::bind(addr, reuse_port, backlog).map_err(|source| StartError::Listen { addr: addr.to_string(), source })
}

/// Connect to NATS, bind the listeners and start accepting.
pub async fn start(config: Config) -> Result<RunningEdge, StartError> {
    let edge_id = if config.edge.id.is_empty() { default_edge_id() } else { config.edge.id.clone() };
    let stats = Arc::new(Stats::default());
    let bridge = Bridge::connect(&config.nats, &edge_id).await;
    let access = Access::start(&config.auth, &bridge, &edge_id).await?;
    if config.auth.mode == crate::config::AuthMode::TrustBody {
        warn!("auth.mode = trust-body: auth bodies are trusted as they come (goim's behaviour); no tokens are checked");
    }
    let hub = Hub::new(edge_id, bridge, stats.clone(), &config);
    hub.start_control().await?;
    if config.history.enabled {
        if let Some(history) = crate::history::History::discover(hub.bridge().publisher(), config.push.default_op).await {
            hub.set_history(history);
        }
    }
    hub.start_per_connection_subjects().await?;

    let tcp = if config.listen.tcp.is_empty() {
        None
    } else {
        Some(bind(&config.listen.tcp, config.listen.reuse_port, config.listen.backlog)?)
    };
    let ws = if config.listen.ws.is_empty() {
        None
    } else {
        Some(bind(&config.listen.ws, config.listen.reuse_port, config.listen.backlog)?)
    };
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let ws_addr = ws.as_ref().and_then(|l| l.local_addr().ok());
    let presence = Presence::new(&config, hub.clone());
    presence.start(hub.bridge(), tcp_addr, ws_addr).await;
    let ctx = Arc::new(EdgeContext { config, hub, access, stats, next_conn_id: AtomicU64::new(1), presence });
    if let Some(listener) = tcp {
        tokio::spawn(accept_loop(ctx.clone(), listener, Transport::Tcp));
    }
    if let Some(listener) = ws {
        tokio::spawn(accept_loop(ctx.clone(), listener, Transport::Ws));
    }
    Ok(RunningEdge { ctx, tcp_addr, ws_addr })
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    Ws,
}

async fn accept_loop(ctx: Arc<EdgeContext>, listener: TcpListener, transport: Transport) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let accepted_at = Instant::now();
                ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    match transport {
                        Transport::Tcp => serve_tcp(ctx, stream, peer, accepted_at).await,
                        Transport::Ws => serve_ws(ctx, stream, peer, accepted_at).await,
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning on a failing accept.
                warn!(error = %e, ?transport, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_tcp(ctx: Arc<EdgeContext>, stream: TcpStream, peer: SocketAddr, accepted_at: Instant) {
    // Latency over packet count: the outbox already coalesces what is queued into one write.
    let _ = stream.set_nodelay(true);
    let session = Session::new(ctx, peer, accepted_at);
    serve(session, TcpReader::new(&stream), TcpWriter::new(&stream), "tcp").await;
}

// tungstenite's handshake callback fixes the (large) error type.
#[allow(clippy::result_large_err)]
async fn serve_ws(ctx: Arc<EdgeContext>, stream: TcpStream, peer: SocketAddr, accepted_at: Instant) {
    let _ = stream.set_nodelay(true);
    let path = ctx.config.listen.ws_path.clone();
    let check_path = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut refusal = ErrorResponse::new(Some(format!("goim WebSocket path is {path}\n")));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let config = websocket_config(&ctx.config.limits);
    let deadline = accepted_at + ctx.config.session.handshake_timeout();
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config));
    let ws = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => ws,
        outcome => {
            let reason = match outcome {
                Err(_) => CloseReason::HandshakeTimeout,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "websocket upgrade failed");
                    CloseReason::ProtocolError
                }
                Ok(Ok(_)) => CloseReason::ProtocolError,
            };
            ctx.stats.closed(reason);
            ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    let session = Session::new(ctx, peer, accepted_at);
    let (sink, stream) = ws.split();
    serve(session, WsReader::new(stream), WsWriter::new(sink), "ws").await;
}

pub use goim_common::shutdown_signal;
