//! The edge process: its shared context, the TCP and WebSocket listeners, plain and over TLS
//! (SO_REUSEPORT, so several edges can share a port), the accept loops (with the TLS handshake and
//! the WebSocket upgrade in a task of their own before a connection's task), and start-up/shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::access::Access;
use crate::bridge::Bridge;
use crate::config::{Config, DRAIN_MARGIN};
use crate::hub::Hub;
use crate::presence::Presence;
use crate::session::Session;
use crate::stats::{CloseReason, Stats, Transport};
use crate::transport::admission::{self, Admit, ConnectRate};
use crate::transport::serve;
use crate::transport::tcp::{TcpDecoder, TcpEncoder};
use crate::transport::tls::{self, TlsSocket};
use crate::transport::ws::{self, WsDecoder, WsEncoder};
use crate::transport::Socket;

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
    /// When the edge started: the clock of the per-connection packet-rate windows.
    pub started: Instant,
    /// `limits.connects_per_ip_per_sec`.
    pub connect_rate: ConnectRate,
    /// The TLS listeners' configuration (`[tls]`), loaded at start; None = TLS off.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    #[error("cannot use the TLS certificate: {0}")]
    Tls(#[from] tls::TlsConfigError),
}

/// A started edge: listeners bound, NATS connected, control subjects served.
pub struct RunningEdge {
    pub ctx: Arc<EdgeContext>,
    pub tcp_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    /// WebSocket over TLS (`listen.wss`), if TLS is on and it is enabled.
    pub wss_addr: Option<SocketAddr>,
    /// goim TCP over TLS (`listen.tls`), if enabled.
    pub tls_addr: Option<SocketAddr>,
    /// The HTTP transports' listener (`listen.http`), if enabled.
    pub http_addr: Option<SocketAddr>,
    /// The accept loops; each owns its listener, which closes when the task is aborted.
    accept_loops: Vec<JoinHandle<()>>,
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
    // First: a bad certificate path is a configuration error, found before anything connects.
    let tls_config = if config.tls.enabled() {
        Some(tls::server_config(&config.tls.cert_path, &config.tls.key_path)?)
    } else {
        None
    };
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
    // The TLS listeners exist only with a certificate (listen.wss has goim's default port otherwise).
    let tls_listener = |addr: &str| -> Result<Option<TcpListener>, StartError> {
        if tls_config.is_none() || addr.is_empty() {
            return Ok(None);
        }
        bind(addr, config.listen.reuse_port, config.listen.backlog).map(Some)
    };
    let wss = tls_listener(&config.listen.wss)?;
    let tls_tcp = tls_listener(&config.listen.tls)?;
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let ws_addr = ws.as_ref().and_then(|l| l.local_addr().ok());
    let wss_addr = wss.as_ref().and_then(|l| l.local_addr().ok());
    let tls_addr = tls_tcp.as_ref().and_then(|l| l.local_addr().ok());
    // HTTP transports (SSE + POST), off unless listen.http is set.
    let http = if config.listen.http.is_empty() {
        None
    } else {
        Some(bind(&config.listen.http, config.listen.reuse_port, config.listen.backlog)?)
    };
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let presence = Presence::new(&config, hub.clone());
    presence.start(hub.bridge(), tcp_addr, ws_addr, wss_addr).await;
    let connect_rate = ConnectRate::new(config.limits.connects_per_ip_per_sec);
    let ctx = Arc::new(EdgeContext {
        config,
        hub,
        access,
        stats,
        next_conn_id: AtomicU64::new(1),
        presence,
        started: Instant::now(),
        connect_rate,
        tls: tls_config,
    });
    let mut accept_loops = Vec::new();
    if let Some(listener) = tcp {
        accept_loops.push(tokio::spawn(accept_loop(ctx.clone(), listener, Transport::Tcp)));
    }
    if let Some(listener) = ws {
        accept_loops.push(tokio::spawn(accept_loop(ctx.clone(), listener, Transport::Ws)));
    }
    if let Some(listener) = wss {
        accept_loops.push(tokio::spawn(accept_loop(ctx.clone(), listener, Transport::Wss)));
    }
    if let Some(listener) = tls_tcp {
        accept_loops.push(tokio::spawn(accept_loop(ctx.clone(), listener, Transport::Tls)));
    }
    if let Some(listener) = http {
        accept_loops.push(tokio::spawn(crate::transport::http::serve(ctx.clone(), listener)));
    }
    Ok(RunningEdge { ctx, tcp_addr, ws_addr, wss_addr, tls_addr, http_addr, accept_loops })
}

impl RunningEdge {
    /// The graceful exit (SIGTERM/SIGINT): stop accepting (the listeners close, so a sibling edge on
    /// the same SO_REUSEPORT port takes every new connect), withdraw the presence report, then let the
    /// authenticated clients go evenly over `edge.drain_ms` with a close that goim clients know (TCP:
    /// the socket closes; WebSocket: close 1001 "going away", then the socket closes), counted as
    /// `shutdown`. Returns at most [`DRAIN_MARGIN`] after the drain bound, whatever the clients do;
    /// connections still open then (unauthenticated ones, which no group holds) are counted as
    /// `shutdown` and closed by the exit.
    pub async fn shutdown(mut self) {
        let ctx = &self.ctx;
        let began = Instant::now();
        let bound = ctx.config.edge.drain();
        let spread_until = began + bound;
        let hard_deadline = spread_until + DRAIN_MARGIN;
        for task in self.accept_loops.drain(..) {
            task.abort();
            // Returns once the task is gone, and its listener with it.
            let _ = task.await;
        }
        let online = ctx.presence.online();
        info!(clients = online, drain_ms = ctx.config.edge.drain_ms, "shutting down: listeners closed, draining");
        // Bounded: an unreachable NATS must not eat the drain.
        let withdraw_bound = (bound / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
        if tokio::time::timeout(withdraw_bound, ctx.presence.withdraw()).await.is_err() {
            warn!(?withdraw_bound, "presence report not withdrawn in time; it expires by itself");
        }
        let drained = drain_clients(ctx, spread_until, hard_deadline).await;
        // Whatever is still open goes with the process: counted here, as the tasks will not be.
        let left = ctx.stats.connections.load(Ordering::Relaxed).max(0) as u64;
        for _ in 0..left {
            ctx.stats.closed(CloseReason::Shutdown);
        }
        info!(
            drained,
            closed_by_exit = left,
            took_ms = began.elapsed().as_millis() as u64,
            "drain complete"
        );
    }
}

/// Close every authenticated connection, spread evenly until `spread_until`, then those that
/// authenticated meanwhile; wait (until `hard_deadline`) for their tasks to end. Returns how many
/// were closed.
async fn drain_clients(ctx: &EdgeContext, spread_until: Instant, hard_deadline: Instant) -> usize {
    const TICK: Duration = Duration::from_millis(10);
    let members = ctx.hub.members_of(crate::subjects::BROADCAST);
    let start = Instant::now();
    let spread = spread_until.saturating_duration_since(start);
    let n = members.len();
    let mut closed = 0;
    let mut next = 0;
    while next < n {
        // Member i is due at start + spread × i / n: the first at once, the last just before the bound.
        let elapsed = start.elapsed();
        let due = if spread.is_zero() {
            n
        } else {
            ((elapsed.as_nanos() * n as u128 / spread.as_nanos()) as usize + 1).min(n)
        };
        for member in &members[next..due.max(next)] {
            if member.outbox.closed_reason().is_none() {
                closed += 1;
            }
            member.outbox.close(CloseReason::Shutdown);
        }
        next = due.max(next);
        if next < n {
            tokio::time::sleep(TICK).await;
        }
    }
    // Latecomers (authenticated during the drain), then wait for the tasks to finish their closes.
    loop {
        for member in ctx.hub.members_of(crate::subjects::BROADCAST) {
            if member.outbox.closed_reason().is_none() {
                closed += 1;
                member.outbox.close(CloseReason::Shutdown);
            }
        }
        if ctx.presence.online() == 0 {
            // The last tasks count their close right after leaving presence: let them.
            tokio::time::sleep(TICK).await;
            return closed;
        }
        if Instant::now() >= hard_deadline {
            return closed;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Whether a new connection from `peer` may come in, or the reason it is closed at once.
pub(crate) fn admit(ctx: &EdgeContext, peer: SocketAddr) -> Result<(), (CloseReason, String)> {
    let limits = &ctx.config.limits;
    match ctx.connect_rate.admit(peer.ip()) {
        Admit::Yes => {}
        Admit::No => return Err((CloseReason::ConnectRate, format!("over limits.connects_per_ip_per_sec = {}", limits.connects_per_ip_per_sec))),
        Admit::Untracked => {
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| warn!(max = admission::MAX_TRACKED_IPS, "connect-rate table full of active addresses: new addresses are admitted untracked"));
        }
    }
    let open = ctx.stats.connections.load(Ordering::Relaxed).max(0) as u64;
    if limits.max_connections > 0 && open >= limits.max_connections as u64 {
        return Err((CloseReason::MaxConnections, format!("limits.max_connections = {} reached", limits.max_connections)));
    }
    // Open minus authenticated: the handshakes in progress (WebSocket upgrades included).
    let handshakes = open.saturating_sub(ctx.presence.online());
    if limits.max_handshakes > 0 && handshakes >= limits.max_handshakes as u64 {
        return Err((CloseReason::MaxHandshakes, format!("limits.max_handshakes = {} reached", limits.max_handshakes)));
    }
    Ok(())
}

async fn accept_loop(ctx: Arc<EdgeContext>, listener: TcpListener, transport: Transport) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let accepted_at = Instant::now();
                if let Err((reason, detail)) = admit(&ctx, peer) {
                    // Closed at once: nothing read, nothing written, no task.
                    drop(stream);
                    ctx.stats.closed(reason);
                    ctx.stats.log_close(reason, 0, Some(peer), &detail);
                    continue;
                }
                ctx.stats.connection_opened(transport);
                let ctx = ctx.clone();
                // One task type per transport: a task's memory is the size of its future, and a TCP
                // connection must not pay for the WebSocket upgrade's.
                match transport {
                    Transport::Tcp => {
                        let task = serve_tcp(ctx, stream, peer, accepted_at);
                        log_task_size(Transport::Tcp, &task);
                        tokio::spawn(task);
                    }
                    Transport::Ws => {
                        tokio::spawn(upgrade_ws(ctx, stream, peer, accepted_at));
                    }
                    Transport::Wss | Transport::Tls => {
                        tokio::spawn(accept_tls(ctx, stream, peer, accepted_at, transport));
                    }
                    // Not reached: HTTP sessions come through the HTTP listener's own server.
                    Transport::Http => ctx.stats.connection_closed(transport),
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
fn log_task_size<F>(transport: Transport, task: &F) {
    static LOGGED: [std::sync::Once; Transport::ALL.len()] = [const { std::sync::Once::new() }; Transport::ALL.len()];
    LOGGED[transport as usize].call_once(|| debug!(transport = transport.as_str(), bytes = std::mem::size_of_val(task), "connection task size"));
}

/// A plain function (no future of its own around [`serve`]'s): the connection's task is exactly the
/// serve future.
fn serve_tcp(ctx: Arc<EdgeContext>, stream: TcpStream, peer: SocketAddr, accepted_at: Instant) -> impl std::future::Future<Output = ()> + Send {
    // Latency over packet count: the outbox already coalesces what is queued into one write.
    let _ = stream.set_nodelay(true);
    let session = Session::new(ctx, peer, accepted_at);
    serve(session, stream, BytesMut::new(), TcpDecoder, TcpEncoder, Transport::Tcp)
}

/// The WebSocket upgrade, in a task of its own that then hands the connection to a task of exactly
/// the [`serve`] future (as over TCP): the upgrade's state does not stay in the connection's memory.
async fn upgrade_ws(ctx: Arc<EdgeContext>, stream: TcpStream, peer: SocketAddr, accepted_at: Instant) {
    let _ = stream.set_nodelay(true);
    let deadline = accepted_at + ctx.config.session.handshake_timeout();
    let Some((inbuf, deflate)) = ws_upgrade(&ctx, &stream, peer, deadline, Transport::Ws).await else { return };
    let decoder = WsDecoder::new(ctx.config.limits.max_ws_message_bytes, deflate);
    let session = Session::new(ctx, peer, accepted_at);
    let task = serve(session, stream, inbuf, decoder, WsEncoder::new(deflate), Transport::Ws);
    log_task_size(Transport::Ws, &task);
    tokio::spawn(task);
}

/// Upgrade `stream` to WebSocket before `deadline` (with whether permessage-deflate was agreed); on
/// failure the connection is counted as closed (and the caller drops it).
async fn ws_upgrade(ctx: &EdgeContext, stream: &impl Socket, peer: SocketAddr, deadline: Instant, transport: Transport) -> Option<(BytesMut, bool)> {
    let upgrade = ws::upgrade(stream, &ctx.config.listen.ws_path, ctx.config.listen.ws_permessage_deflate);
    let reason = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(upgraded)) => {
            if upgraded.1 {
                ctx.stats.ws_deflate.fetch_add(1, Ordering::Relaxed);
            }
            return Some(upgraded);
        }
        Err(_) => CloseReason::HandshakeTimeout,
        // The client went away mid-request: not a protocol error.
        Ok(Err(ws::UpgradeError::Closed | ws::UpgradeError::Io(_))) => CloseReason::ClientGone,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "websocket upgrade failed");
            CloseReason::ProtocolError
        }
    };
    handshake_failed(ctx, peer, reason, "websocket upgrade", transport);
    None
}

/// A connection that ends before it has a session: counted as closed, logged unless the client
/// just went away.
fn handshake_failed(ctx: &EdgeContext, peer: SocketAddr, reason: CloseReason, what: &str, transport: Transport) {
    ctx.stats.closed(reason);
    ctx.stats.connection_closed(transport);
    if reason != CloseReason::ClientGone {
        ctx.stats.log_close(reason, 0, Some(peer), what);
    }
}

/// The TLS handshake (then, for WSS, the WebSocket upgrade) in a task of its own, under the session's
/// handshake timeout like the upgrade; then the connection's own task, exactly the [`serve`] future
/// over a [`TlsSocket`] (see `transport::tls` for why the session is driven sans-IO, and with
/// rustls's unbuffered API, from the handshake on).
async fn accept_tls(ctx: Arc<EdgeContext>, stream: TcpStream, peer: SocketAddr, accepted_at: Instant, transport: Transport) {
    let _ = stream.set_nodelay(true);
    let deadline = accepted_at + ctx.config.session.handshake_timeout();
    let Some(config) = ctx.tls.clone() else {
        // Not reached: TLS listeners are bound only with a configuration.
        handshake_failed(&ctx, peer, CloseReason::ProtocolError, "no TLS configuration", transport);
        return;
    };
    let socket: TlsSocket = match tokio::time::timeout_at(deadline, tls::accept(stream, config)).await {
        Ok(Ok(socket)) => socket,
        outcome => {
            let reason = match outcome {
                Err(_) => CloseReason::HandshakeTimeout,
                // rustls refused what the client sent (plaintext on a TLS port, a bad hello).
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    CloseReason::ProtocolError
                }
                _ => CloseReason::ClientGone,
            };
            handshake_failed(&ctx, peer, reason, "TLS handshake", transport);
            return;
        }
    };
    if transport == Transport::Wss {
        let Some((inbuf, deflate)) = ws_upgrade(&ctx, &socket, peer, deadline, transport).await else { return };
        let decoder = WsDecoder::new(ctx.config.limits.max_ws_message_bytes, deflate);
        let session = Session::new(ctx, peer, accepted_at);
        let task = serve(session, socket, inbuf, decoder, WsEncoder::new(deflate), transport);
        log_task_size(transport, &task);
        tokio::spawn(task);
    } else {
        let session = Session::new(ctx, peer, accepted_at);
        let task = serve(session, socket, BytesMut::new(), TcpDecoder, TcpEncoder, transport);
        log_task_size(transport, &task);
        tokio::spawn(task);
    }
}

pub use goim_common::shutdown_signal;
