//! A load-generating worker process (`goim-bench worker`, started by the coordinator, never by hand).
//!
//! It holds up to ~15k client sockets (the VM allows 20,000 open files per process), bound to its own
//! 127.0.0.x source addresses. The coordinator drives it with one JSON command per stdin line and
//! reads one JSON event per stdout line:
//!
//! | command | event |
//! |---|---|
//! | `{"cmd":"spec", ...Spec}` | `{"ev":"ready"}` (tokens minted, nothing connected yet) |
//! | `{"cmd":"connect"}` | `{"ev":"connected", ok, failed, errors, t_first_ok, t_last_ok, resume...}` |
//! | `{"cmd":"start"}` | `{"ev":"started"}`: deliveries and latencies are counted from now |
//! | `{"cmd":"count"}` | `{"ev":"count", deliveries}` |
//! | `{"cmd":"stop"}` | `{"ev":"measured", deliveries, bytes, wire_bytes, hist, heartbeat_replies, dropped, errors}` |
//! | `{"cmd":"close"}` | `{"ev":"closed"}`, then the process exits |
//!
//! Every loop is bounded: each connection has one attempt with a deadline for connect + auth (+ resume),
//! the connect phase has an overall deadline, and a connection ends at `close` or when the server
//! closes it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::hist::Hist;
use crate::proto::{self, NatsIn};
use crate::rawws::RawWs;
use crate::sys;

/// What kind of client connections a worker opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// goim over TCP (plain packets).
    GoimTcp,
    /// goim over WebSocket (`/sub`; pushes wrapped in op 9).
    GoimWs,
    /// The peer: a NATS client over nats-server's WebSocket listener, subscribed to `subject`.
    NatsWs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenSpec {
    pub kid: String,
    pub key_file: String,
    pub issuer: String,
    pub audience: String,
}

/// One worker's share of a scenario's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub kind: Kind,
    /// Server addresses; connection `g` goes to `targets[g % len]`.
    pub targets: Vec<SocketAddr>,
    pub ws_path: String,
    /// Source addresses (127.0.0.x); connection `i` binds `sources[i % len]`.
    pub sources: Vec<Ipv4Addr>,
    /// Global index of this worker's first connection (mids and rooms derive from it).
    pub first: u64,
    pub count: u64,
    /// Unique mids (`1_000_000 + g`), so each connection has its own user subject; else mid 0.
    pub mids: bool,
    /// Rooms `"{room_prefix}{g % rooms}"`; 0 = no room.
    pub rooms: u64,
    pub room_prefix: String,
    /// NATS peer: the subject to subscribe.
    pub subject: String,
    pub token: Option<TokenSpec>,
    /// Op-2 heartbeat period per connection (first beat at a random offset); 0 = none.
    pub heartbeat_ms: u64,
    /// Resume the room from this sequence (auth body `"resume": {"room": S}`), then wait for op 20.
    pub resume_room: Option<u64>,
    /// Connects + auths in flight at once.
    pub concurrency: usize,
    /// Deadline of one connection's connect + auth (+ resume).
    pub timeout_ms: u64,
    /// goim over WebSocket with the raw client ([`crate::rawws`]: wire bytes counted), offering
    /// permessage-deflate if true; None = tungstenite.
    #[serde(default)]
    pub ws_deflate: Option<bool>,
}

/// Counters shared by a worker's connection tasks.
#[derive(Default)]
struct Shared {
    measuring: AtomicBool,
    deliveries: AtomicU64,
    bytes: AtomicU64,
    /// Bytes read off the sockets (raw WebSocket client only).
    wire_bytes: AtomicU64,
    heartbeat_replies: AtomicU64,
    dropped: AtomicU64,
    hist: Mutex<Hist>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, what: impl Into<String>) {
        let mut e = self.errors.lock().unwrap();
        let what: String = what.into();
        // Bounded: distinct messages beyond 50 are lumped together.
        let key = if e.len() >= 50 && !e.contains_key(&what) { "other".to_string() } else { what };
        *e.entry(key).or_insert(0) += 1;
    }
}

/// What a connection task reports during the connect phase.
enum ConnEvent {
    Up { at: Instant },
    Failed { why: String },
    Resumed { at: Instant, replayed: u64, answer: Option<Value> },
}

fn emit(v: Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Entry point of `goim-bench worker`.
pub fn run() -> std::process::ExitCode {
    sys::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        match serve().await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("goim-bench worker: {e}");
                emit(json!({"ev": "error", "error": e}));
                std::process::ExitCode::FAILURE
            }
        }
    })
}

async fn next_cmd(lines: &mut tokio::io::Lines<BufReader<tokio::io::Stdin>>) -> Result<Value, String> {
    match tokio::time::timeout(Duration::from_secs(3600), lines.next_line()).await {
        Ok(Ok(Some(l))) => serde_json::from_str::<Value>(&l).map_err(|e| format!("bad command {l:?}: {e}")),
        Ok(Ok(None)) => Err("stdin closed".to_string()),
        Ok(Err(e)) => Err(format!("stdin: {e}")),
        Err(_) => Err("no command for an hour".to_string()),
    }
}

async fn serve() -> Result<(), String> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let cmd = next_cmd(&mut lines).await?;
    if cmd["cmd"] != "spec" {
        return Err(format!("expected spec, got {cmd}"));
    }
    let spec: Spec = serde_json::from_value(cmd["spec"].clone()).map_err(|e| format!("bad spec: {e}"))?;
    let tokens = mint_tokens(&spec)?;
    emit(json!({"ev": "ready"}));

    let spec = Arc::new(spec);
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let cmd = next_cmd(&mut lines).await?;
        match cmd["cmd"].as_str().unwrap_or("") {
            "connect" => {
                let report = connect_all(&spec, &tokens, &shared, &stop_rx, &mut tasks).await;
                emit(report);
            }
            "start" => {
                shared.deliveries.store(0, Ordering::Relaxed);
                shared.bytes.store(0, Ordering::Relaxed);
                shared.wire_bytes.store(0, Ordering::Relaxed);
                shared.heartbeat_replies.store(0, Ordering::Relaxed);
                shared.hist.lock().unwrap().clear();
                shared.measuring.store(true, Ordering::Release);
                emit(json!({"ev": "started"}));
            }
            "count" => emit(json!({"ev": "count", "deliveries": shared.deliveries.load(Ordering::Relaxed),
                "dropped": shared.dropped.load(Ordering::Relaxed)})),
            "stop" => {
                shared.measuring.store(false, Ordering::Release);
                let hist = shared.hist.lock().unwrap().to_sparse();
                emit(json!({
                    "ev": "measured",
                    "deliveries": shared.deliveries.load(Ordering::Relaxed),
                    "bytes": shared.bytes.load(Ordering::Relaxed),
                    "wire_bytes": shared.wire_bytes.load(Ordering::Relaxed),
                    "heartbeat_replies": shared.heartbeat_replies.load(Ordering::Relaxed),
                    "dropped": shared.dropped.load(Ordering::Relaxed),
                    "errors": *shared.errors.lock().unwrap(),
                    "hist": hist,
                }));
            }
            "close" => {
                let _ = stop_tx.send(true);
                let deadline = Instant::now() + Duration::from_secs(20);
                while !tasks.is_empty() {
                    if timeout_at(deadline, tasks.join_next()).await.is_err() {
                        tasks.abort_all();
                        break;
                    }
                }
                emit(json!({"ev": "closed"}));
                return Ok(());
            }
            other => return Err(format!("unknown command {other:?}")),
        }
    }
}

fn mint_tokens(spec: &Spec) -> Result<Vec<String>, String> {
    let Some(t) = &spec.token else { return Ok(Vec::new()) };
    let key = goim_token::SigningKey::load(&t.kid, goim_token::Algorithm::EdDSA, std::path::Path::new(&t.key_file))
        .map_err(|e| format!("signing key: {e}"))?;
    let minter = goim_token::Minter {
        key,
        issuer: t.issuer.clone(),
        audience: t.audience.clone(),
        default_ttl_secs: 3600,
        max_ttl_secs: 86_400,
    };
    (0..spec.count)
        .map(|i| {
            let g = spec.first + i;
            let grant = goim_token::Grant {
                mid: mid_of(spec, g),
                rooms: room_of(spec, g).into_iter().collect(),
                accepts: vec![1000, 1001, 1002],
                ..Default::default()
            };
            minter.mint(&grant).map(|(t, _)| t).map_err(|e| format!("mint: {e}"))
        })
        .collect()
}

fn mid_of(spec: &Spec, g: u64) -> i64 {
    if spec.mids {
        1_000_000 + g as i64
    } else {
        0
    }
}

fn room_of(spec: &Spec, g: u64) -> Option<String> {
    (spec.rooms > 0).then(|| format!("{}{}", spec.room_prefix, g % spec.rooms))
}

fn auth_body(spec: &Spec, g: u64, token: Option<&String>) -> Vec<u8> {
    let mut body = json!({
        "mid": mid_of(spec, g),
        "key": "",
        "room_id": room_of(spec, g).unwrap_or_default(),
        "platform": "bench",
        "accepts": [1000, 1001, 1002],
    });
    if let Some(t) = token {
        body["token"] = json!(t);
    }
    if let Some(s) = spec.resume_room {
        body["resume"] = json!({"room": s});
    }
    body.to_string().into_bytes()
}

async fn connect_all(
    spec: &Arc<Spec>,
    tokens: &[String],
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Value {
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..spec.count {
        let g = spec.first + i;
        let ctx = Conn {
            spec: spec.clone(),
            shared: shared.clone(),
            src: spec.sources[i as usize % spec.sources.len()],
            target: spec.targets[g as usize % spec.targets.len()],
            auth: auth_body(spec, g, tokens.get(i as usize)),
            events: tx.clone(),
            stop: stop.clone(),
            hb_offset: if spec.heartbeat_ms > 0 { (g * 7919) % spec.heartbeat_ms } else { 0 },
        };
        let sem = sem.clone();
        tasks.spawn(async move {
            let Ok(permit) = sem.acquire_owned().await else { return };
            ctx.run(permit).await;
        });
    }
    drop(tx);
    let (mut ok, mut failed, mut resumed_ok, mut resumed_fail, mut replayed) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut first_ok, mut last_ok, mut last_resumed): (Option<f64>, f64, f64) = (None, 0.0, 0.0);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut resume_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let want_resume = spec.resume_room.is_some();
    // Each connection reports once (Up or Failed), plus Resumed when resuming; every one has its
    // own deadline, so this ends; the overall deadline is a safety net.
    let overall = t0 + Duration::from_millis(spec.timeout_ms) * 2 + Duration::from_secs(30 + spec.count / 100);
    let mut pending_resumes = 0u64;
    while ok + failed < spec.count || pending_resumes > 0 {
        match timeout_at(overall, rx.recv()).await {
            Ok(Some(ConnEvent::Up { at })) => {
                ok += 1;
                let t = (at - t0).as_secs_f64();
                first_ok = Some(first_ok.map_or(t, |f: f64| f.min(t)));
                last_ok = last_ok.max(t);
                if want_resume {
                    pending_resumes += 1;
                }
            }
            Ok(Some(ConnEvent::Failed { why })) => {
                failed += 1;
                let n = errors.len();
                let key = if n >= 20 && !errors.contains_key(&why) { "other".into() } else { why };
                *errors.entry(key).or_insert(0) += 1;
            }
            Ok(Some(ConnEvent::Resumed { at, replayed: n, answer })) => {
                pending_resumes = pending_resumes.saturating_sub(1);
                replayed += n;
                last_resumed = last_resumed.max((at - t0).as_secs_f64());
                let room = answer.as_ref().map(|a| a["room"].clone()).unwrap_or(Value::Null);
                if room["ok"] == true {
                    resumed_ok += 1;
                } else {
                    resumed_fail += 1;
                    let why = room["reason"].as_str().map(str::to_string).unwrap_or_else(|| format!("{room}"));
                    *resume_reasons.entry(why).or_insert(0) += 1;
                }
            }
            Ok(None) => break,
            Err(_) => {
                *errors.entry("connect phase deadline".into()).or_insert(0) += spec.count - ok - failed;
                break;
            }
        }
    }
    json!({
        "ev": "connected",
        "ok": ok,
        "failed": failed,
        "errors": errors,
        "t_first_ok": first_ok.unwrap_or(0.0),
        "t_last_ok": last_ok,
        "resumed_ok": resumed_ok,
        "resumed_fail": resumed_fail,
        "resume_reasons": resume_reasons,
        "replayed": replayed,
        "t_last_resumed": last_resumed,
    })
}

/// One client connection.
struct Conn {
    spec: Arc<Spec>,
    shared: Arc<Shared>,
    src: Ipv4Addr,
    target: SocketAddr,
    auth: Vec<u8>,
    events: mpsc::UnboundedSender<ConnEvent>,
    stop: watch::Receiver<bool>,
    hb_offset: u64,
}

enum Link {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<TcpStream>>),
    Raw(Box<RawWs>),
}

impl Link {
    /// Append what arrives to `buf`; Ok(false) at EOF.
    async fn read(&mut self, buf: &mut BytesMut) -> Result<bool, String> {
        match self {
            Link::Tcp(s) => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(4096);
                }
                match s.read_buf(buf).await {
                    Ok(0) => Ok(false),
                    Ok(_) => Ok(true),
                    Err(e) => Err(format!("read: {e}")),
                }
            }
            Link::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(false),
                    Some(Err(e)) => return Err(format!("ws read: {e}")),
                    Some(Ok(Message::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Some(Ok(Message::Text(t))) => {
                        buf.extend_from_slice(t.as_bytes());
                        return Ok(true);
                    }
                    Some(Ok(_)) => continue,
                }
            },
            Link::Raw(ws) => ws.read(buf).await,
        }
    }

    async fn send(&mut self, data: Vec<u8>) -> Result<(), String> {
        match self {
            Link::Tcp(s) => s.write_all(&data).await.map_err(|e| format!("write: {e}")),
            Link::Ws(ws) => ws.send(Message::Binary(data.into())).await.map_err(|e| format!("ws write: {e}")),
            Link::Raw(ws) => ws.send(&data).await,
        }
    }
}

/// Per-connection progress through the protocol.
#[derive(Default)]
struct ConnState {
    authed: bool,
    resume_answer: Option<Value>,
    replayed: u64,
    deliveries: u64,
    bytes: u64,
    heartbeat_replies: u64,
    pong: bool,
    pings: u32,
    latencies: Vec<u64>,
}

impl Conn {
    async fn open(&self) -> Result<Link, String> {
        let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        sys::bind_address_no_port(&sock);
        sock.bind(SocketAddr::new(self.src.into(), 0)).map_err(|e| format!("bind {}: {e}", self.src))?;
        let stream = sock.connect(self.target).await.map_err(|e| format!("connect: {e}"))?;
        sys::linger_zero(&stream);
        let _ = stream.set_nodelay(true);
        match self.spec.kind {
            Kind::GoimTcp => Ok(Link::Tcp(stream)),
            Kind::GoimWs if self.spec.ws_deflate.is_some() => {
                let deflate = self.spec.ws_deflate == Some(true);
                Ok(Link::Raw(Box::new(RawWs::connect(stream, &self.target.to_string(), &self.spec.ws_path, deflate).await?)))
            }
            Kind::GoimWs | Kind::NatsWs => {
                let url = format!("ws://{}{}", self.target, self.spec.ws_path);
                // Small buffers: tungstenite's defaults cost ~135 KB per connection.
                let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
                let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
                    .await
                    .map_err(|e| format!("ws handshake: {e}"))?;
                Ok(Link::Ws(Box::new(ws)))
            }
        }
    }

    async fn run(self, permit: tokio::sync::OwnedSemaphorePermit) {
        let deadline = Instant::now() + Duration::from_millis(self.spec.timeout_ms);
        let mut link = match timeout_at(deadline, self.open()).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return self.fail(e),
            Err(_) => return self.fail("connect timeout".into()),
        };
        let mut buf = BytesMut::with_capacity(512);
        let mut st = ConnState::default();
        // Authenticate (goim) or subscribe (NATS peer).
        let hello = match self.spec.kind {
            Kind::NatsWs => format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"goim-bench\"}}\r\nSUB {} 1\r\nPING\r\n",
                self.spec.subject
            )
            .into_bytes(),
            _ => proto::packet(1, proto::OP_AUTH, 1, &self.auth),
        };
        if let Err(e) = link.send(hello).await {
            return self.fail(e);
        }
        let resuming = self.spec.resume_room.is_some() && self.spec.kind != Kind::NatsWs;
        loop {
            match timeout_at(deadline, link.read(&mut buf)).await {
                Err(_) => return self.fail("auth timeout".into()),
                Ok(Err(e)) => return self.fail(e),
                Ok(Ok(false)) => return self.fail("closed before auth".into()),
                Ok(Ok(true)) => {}
            }
            if let Err(e) = self.consume(&mut buf, &mut st, false) {
                return self.fail(e);
            }
            if let Err(e) = self.answer_pings(&mut link, &mut st).await {
                return self.fail(e);
            }
            let up = match self.spec.kind {
                Kind::NatsWs => st.pong,
                _ => st.authed,
            };
            if up {
                break;
            }
        }
        if self.events.send(ConnEvent::Up { at: Instant::now() }).is_err() {
            return;
        }
        if resuming {
            return self.finish_resume(link, buf, st, deadline, permit).await;
        }
        drop(permit);
        self.live(link, buf, st).await;
    }

    async fn finish_resume(
        self,
        mut link: Link,
        mut buf: BytesMut,
        mut st: ConnState,
        deadline: Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        while st.resume_answer.is_none() {
            match timeout_at(deadline, link.read(&mut buf)).await {
                Err(_) => return self.resume_failed("resume timeout", &st),
                Ok(Err(e)) => return self.resume_failed(&e, &st),
                Ok(Ok(false)) => return self.resume_failed("closed during resume", &st),
                Ok(Ok(true)) => {}
            }
            if let Err(e) = self.consume(&mut buf, &mut st, false) {
                return self.resume_failed(&e, &st);
            }
        }
        let _ = self.events.send(ConnEvent::Resumed { at: Instant::now(), replayed: st.replayed, answer: st.resume_answer.clone() });
        drop(permit);
        self.live(link, buf, st).await;
    }

    fn resume_failed(&self, why: &str, st: &ConnState) {
        self.shared.error(format!("resume: {why}"));
        let _ = self.events.send(ConnEvent::Resumed {
            at: Instant::now(),
            replayed: st.replayed,
            answer: Some(json!({"room": {"ok": false, "reason": why}})),
        });
    }

    fn fail(&self, why: String) {
        let _ = self.events.send(ConnEvent::Failed { why });
    }

    /// The established connection: count deliveries, send heartbeats, until `close`.
    async fn live(self, mut link: Link, mut buf: BytesMut, mut st: ConnState) {
        let mut stop = self.stop.clone();
        // A resume's op 20 arrived; anything after it in the buffer is live.
        let hb = self.spec.heartbeat_ms;
        let mut next_hb = Instant::now() + Duration::from_millis(self.hb_offset);
        let hb_packet = proto::packet(1, proto::OP_HEARTBEAT, 0, b"");
        if let Link::Raw(ws) = &mut link {
            ws.take_wire_bytes();
        }
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                r = link.read(&mut buf) => match r {
                    Ok(true) => {
                        if let Link::Raw(ws) = &mut link {
                            let n = ws.take_wire_bytes();
                            if self.shared.measuring.load(Ordering::Acquire) {
                                self.shared.wire_bytes.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                        if let Err(e) = self.consume(&mut buf, &mut st, true) {
                            self.dropped(e);
                            break;
                        }
                        if let Err(e) = self.answer_pings(&mut link, &mut st).await {
                            self.dropped(e);
                            break;
                        }
                    }
                    Ok(false) => { self.dropped("closed by server".into()); break; }
                    Err(e) => { self.dropped(e); break; }
                },
                _ = sleep_until(next_hb), if hb > 0 && self.spec.kind != Kind::NatsWs => {
                    next_hb += Duration::from_millis(hb);
                    if let Err(e) = link.send(hb_packet.clone()).await {
                        self.dropped(e);
                        break;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // Dropping the socket with SO_LINGER 0 resets it.
        drop(link);
    }

    fn dropped(&self, why: String) {
        if !*self.stop.borrow() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.error(format!("dropped: {why}"));
        }
    }

    async fn answer_pings(&self, link: &mut Link, st: &mut ConnState) -> Result<(), String> {
        while st.pings > 0 {
            st.pings -= 1;
            link.send(b"PONG\r\n".to_vec()).await?;
        }
        Ok(())
    }

    /// Parse every complete unit in `buf`; `live` = deliveries count toward the measurement.
    fn consume(&self, buf: &mut BytesMut, st: &mut ConnState, live: bool) -> Result<(), String> {
        let measuring = live && self.shared.measuring.load(Ordering::Acquire);
        let mut now = 0u64;
        let mut used = 0;
        {
            let data = &buf[..];
            match self.spec.kind {
                Kind::NatsWs => {
                    while let Some((unit, n)) = proto::parse_nats(&data[used..])? {
                        used += n;
                        match unit {
                            NatsIn::Msg { payload } => {
                                st.deliveries += 1;
                                st.bytes += payload.len() as u64;
                                if measuring {
                                    if let Some(ts) = proto::body_ts(payload) {
                                        if now == 0 {
                                            now = proto::now_ns();
                                        }
                                        st.latencies.push(now.saturating_sub(ts));
                                    }
                                }
                            }
                            NatsIn::Ping => st.pings += 1,
                            NatsIn::Pong => st.pong = true,
                            NatsIn::Info | NatsIn::Ok => {}
                            NatsIn::Err(e) => return Err(e),
                        }
                    }
                }
                _ => {
                    while let Some((p, n)) = proto::parse(&data[used..])? {
                        used += n;
                        self.on_packet(p, st, measuring, &mut now)?;
                    }
                }
            }
        }
        buf.advance(used);
        if live && (st.deliveries > 0 || st.heartbeat_replies > 0) {
            if measuring {
                self.shared.deliveries.fetch_add(st.deliveries, Ordering::Relaxed);
                self.shared.bytes.fetch_add(st.bytes, Ordering::Relaxed);
                if !st.latencies.is_empty() {
                    let mut h = self.shared.hist.lock().unwrap();
                    for v in st.latencies.drain(..) {
                        h.record(v);
                    }
                }
            }
            self.shared.heartbeat_replies.fetch_add(st.heartbeat_replies, Ordering::Relaxed);
            st.deliveries = 0;
            st.bytes = 0;
            st.heartbeat_replies = 0;
            st.latencies.clear();
        }
        Ok(())
    }

    fn on_packet(&self, p: proto::Pkt<'_>, st: &mut ConnState, measuring: bool, now: &mut u64) -> Result<(), String> {
        match p.op {
            proto::OP_AUTH_REPLY => st.authed = true,
            proto::OP_HEARTBEAT_REPLY => st.heartbeat_replies += 1,
            proto::OP_RESUME_RESULT => {
                st.resume_answer = Some(serde_json::from_slice(p.body).map_err(|e| format!("op 20 JSON: {e}"))?);
            }
            proto::OP_RAW => {
                let mut inner_err = None;
                proto::for_each_inner(p.body, &mut |q| {
                    if let Err(e) = self.on_packet(q, st, measuring, now) {
                        inner_err = Some(e);
                    }
                })?;
                if let Some(e) = inner_err {
                    return Err(e);
                }
            }
            op if op >= proto::FIRST_PUSH_OP => {
                if st.authed && self.spec.resume_room.is_some() && st.resume_answer.is_none() {
                    st.replayed += 1;
                    return Ok(());
                }
                st.deliveries += 1;
                st.bytes += (proto::HEADER_LEN + p.body.len()) as u64;
                if measuring {
                    if let Some(ts) = proto::body_ts(p.body) {
                        if *now == 0 {
                            *now = proto::now_ns();
                        }
                        st.latencies.push(now.saturating_sub(ts));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
