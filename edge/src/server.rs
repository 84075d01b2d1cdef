//! The edge process: its shared context, the TCP and WebSocket listeners (SO_REUSEPORT, so several
//! edges can share a port), the accept loops, and start-up/shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::access::Access;
use crate::bridge::Bridge;
use crate::config::Config;
use crate::hub::Hub;
use crate::presence::Presence;
use crate::session::Session;
use crate::stats::{CloseReason, Stats};
use crate::transport::serve;
use crate::transport::tcp::{TcpDecoder, TcpEncoder};
use crate::transport::ws::{self, WsDecoder, WsEncoder};

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
                // One task type per transport: a task's memory is the size of its future, and a TCP
                // connection must not pay for the WebSocket upgrade's.
                match transport {
                    Transport::Tcp => {
                        let task = serve_tcp(ctx, stream, peer, accepted_at);
                        log_task_size("tcp", &task);
                        tokio::spawn(task);
                    }
                    Transport::Ws => {
                        tokio::spawn(upgrade_ws(ctx, stream, peer, accepted_at));
                    }
                };
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning on a failing accept.
                warn!(error = %e, ?transport, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The memory of a connection's task is mostly its future: logged once per transport (debug).
fn log_task_size<F>(transport: &'static str, task: &F) {
    static LOGGED: [std::sync::Once; 2] = [std::sync::Once::new(), std::sync::Once::new()];
    LOGGED[usize::from(transport == "ws")].call_once(|| debug!(transport, bytes = std::mem::size_of_val(task), "connection task size"));
}

/// A plain function (no future of its own around [`serve`]'s): the connection's task is exactly the
/// serve future.
fn serve_tcp(ctx: Arc<EdgeContext>, stream: TcpStream, peer: SocketAddr, accepted_at: Instant) -> impl std::future::Future<Output = ()> + Send {
    // Latency over packet count: the outbox already coalesces what is queued into one write.
    let _ = stream.set_nodelay(true);
    let session = Session::new(ctx, peer, accepted_at);
    serve(session, stream, BytesMut::new(), TcpDecoder, TcpEncoder, "tcp")
}

/// The WebSocket upgrade, in a task of its own that then hands the connection to a task of exactly
/// the [`serve`] future (as over TCP): the upgrade's state does not stay in the connection's memory.
async fn upgrade_ws(ctx: Arc<EdgeContext>, stream: TcpStream, peer: SocketAddr, accepted_at: Instant) {
    let _ = stream.set_nodelay(true);
    let deadline = accepted_at + ctx.config.session.handshake_timeout();
    let inbuf = match tokio::time::timeout_at(deadline, ws::upgrade(&stream, &ctx.config.listen.ws_path)).await {
        Ok(Ok(inbuf)) => inbuf,
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
    let decoder = WsDecoder::new(ctx.config.limits.max_ws_message_bytes);
    let session = Session::new(ctx, peer, accepted_at);
    let task = serve(session, stream, inbuf, decoder, WsEncoder, "ws");
    log_task_size("ws", &task);
    tokio::spawn(task);
}

pub use goim_common::shutdown_signal;
