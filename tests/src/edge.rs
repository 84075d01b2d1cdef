//! A goim-edge child process: writes its TOML config into a temp dir, starts it, waits for the ready
//! line on stdout and kills it on drop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::nats::NatsServer;
use crate::process::{Proc, Stream};

/// How long the edge may take to print its ready line.
pub const EDGE_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The goim-edge binary: `$GOIM_EDGE_BIN`, else `<target>/debug/goim-edge` next to this test's `deps/`.
pub fn edge_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GOIM_EDGE_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GOIM_EDGE_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/<test>-<hash>  →  <target>/<profile>/goim-edge
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary has no grandparent dir");
    let bin = profile_dir.join("goim-edge");
    assert!(
        bin.is_file(),
        "goim-edge binary not found at {}: run `cargo build --workspace --bins` first (make test does), \
         or set GOIM_EDGE_BIN",
        bin.display()
    );
    bin
}

/// Run the edge binary with `config` when it is expected to refuse to start: its exit status and
/// stderr. Panics (the process is killed) if it is still running after 20 s.
pub async fn run_to_exit(config: &std::path::Path) -> (std::process::ExitStatus, String) {
    let child = tokio::process::Command::new(edge_bin())
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn goim-edge");
    match tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("goim-edge output");
            (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
        }
        Err(_) => panic!("goim-edge with {} kept running; it should have refused to start", config.display()),
    }
}

static EDGE_SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh edge id, unique within this test process and safe as a subject token.
pub fn unique_edge_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        EDGE_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The edge's configuration for one test. Starts from the harness defaults (loopback listeners on
/// port 0, `reuse_port = false`, the test's NATS server) and takes arbitrary overrides.
#[derive(Debug, Clone)]
pub struct EdgeOpts {
    /// `edge.id`; None = a unique id.
    pub id: Option<String>,
    /// section → key → TOML value literal (already quoted for strings).
    values: BTreeMap<String, BTreeMap<String, String>>,
    /// Raw TOML appended after the generated sections (must not repeat a generated section).
    pub extra_toml: String,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
}

impl Default for EdgeOpts {
    fn default() -> Self {
        EdgeOpts::new()
    }
}

/// Quote a string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

impl EdgeOpts {
    pub fn new() -> EdgeOpts {
        let mut o = EdgeOpts {
            id: None,
            values: BTreeMap::new(),
            extra_toml: String::new(),
            env: Vec::new(),
        };
        o.set_str("listen", "tcp", "127.0.0.1:0");
        o.set_str("listen", "ws", "127.0.0.1:0");
        o.set("listen", "reuse_port", "false");
        // goim's behaviour for the protocol tests; the auth tests set "token" or "delegated".
        o.set_str("auth", "mode", "trust-body");
        o
    }

    /// Set `[section] key = <value>` where `value` is a TOML literal (`"text"`, `42`, `true`, `[1, 2]`).
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<String>) -> &mut Self {
        self.values
            .entry(section.to_string())
            .or_default()
            .insert(key.to_string(), value.into());
        self
    }

    pub fn set_str(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        self.set(section, key, toml_str(value))
    }

    /// Builder-style [`EdgeOpts::set`].
    pub fn with(mut self, section: &str, key: &str, value: impl Into<String>) -> Self {
        self.set(section, key, value);
        self
    }

    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_string());
        self
    }

    pub fn handshake_timeout_ms(self, ms: u64) -> Self {
        self.with("session", "handshake_timeout_ms", ms.to_string())
    }

    pub fn idle_timeout_ms(self, ms: u64) -> Self {
        self.with("session", "idle_timeout_ms", ms.to_string())
    }

    pub fn max_outbound_bytes(self, n: usize) -> Self {
        self.with("limits", "max_outbound_bytes", n.to_string())
    }

    /// `nats.connections` (shared NATS connections of the edge).
    pub fn nats_connections(self, n: usize) -> Self {
        self.with("nats", "connections", n.to_string())
    }

    /// `nats.per_connection_subjects = "exact"`: one NATS subscription per user/key subject
    /// (the default is one `user.*` and one `key.*` wildcard per edge).
    pub fn exact_subjects(self) -> Self {
        self.with("nats", "per_connection_subjects", "\"exact\"")
    }

    /// Disable the TCP listener.
    pub fn no_tcp(self) -> Self {
        self.with("listen", "tcp", "\"\"")
    }

    /// Disable the WebSocket listener.
    pub fn no_ws(self) -> Self {
        self.with("listen", "ws", "\"\"")
    }

    /// TLS on with this PEM certificate and key: WSS and goim over TLS-TCP on loopback port 0
    /// (the ready line's `wss=` and `tls=`).
    pub fn tls(self, cert_path: &std::path::Path, key_path: &std::path::Path) -> Self {
        let path = |p: &std::path::Path| toml_str(&p.display().to_string());
        self.with("tls", "cert_path", path(cert_path))
            .with("tls", "key_path", path(key_path))
            .with("listen", "wss", toml_str("127.0.0.1:0"))
            .with("listen", "tls", toml_str("127.0.0.1:0"))
    }

    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    fn render(&self, id: &str, nats_urls: &[String]) -> String {
        let mut values = self.values.clone();
        values
            .entry("edge".into())
            .or_default()
            .entry("id".into())
            .or_insert_with(|| toml_str(id));
        let urls: Vec<String> = nats_urls.iter().map(|u| toml_str(u)).collect();
        let nats = values.entry("nats".into()).or_default();
        nats.entry("urls".into())
            .or_insert_with(|| format!("[{}]", urls.join(", ")));
        nats.entry("name".into())
            .or_insert_with(|| toml_str(&format!("goim-edge-{id}")));
        let mut out = String::new();
        for (section, kv) in &values {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in kv {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&self.extra_toml);
        out
    }
}

/// A running goim-edge.
pub struct Edge {
    proc: Proc,
    id: String,
    tcp: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    /// `listen.http` (HTTP transports), when enabled.
    http: Option<SocketAddr>,
    /// `listen.wss` and `listen.tls`, when TLS is on.
    wss: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    config: String,
    _dir: tempfile::TempDir,
}

impl Edge {
    /// Start an edge against `nats` with `opts` and wait (≤ 20 s) for its ready line.
    pub async fn start(nats: &NatsServer, opts: EdgeOpts) -> Edge {
        Self::start_with_urls(&[nats.url()], opts).await
    }

    pub async fn start_with_urls(urls: &[String], opts: EdgeOpts) -> Edge {
        let id = opts.id.clone().unwrap_or_else(|| unique_edge_id("e"));
        let dir = tempfile::Builder::new()
            .prefix("goim-edge-")
            .tempdir()
            .expect("tempdir");
        let config = opts.render(&id, urls);
        let path = dir.path().join("goim-edge.toml");
        std::fs::write(&path, &config).expect("write edge config");
        let mut cmd = Command::new(edge_bin());
        cmd.arg("--config").arg(&path);
        // Plain log lines in failure reports.
        cmd.env("NO_COLOR", "1");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(&format!("goim-edge {id}"), cmd)
            .unwrap_or_else(|e| panic!("spawn goim-edge: {e}"));
        let deadline = Instant::now() + EDGE_READY_TIMEOUT;
        let ready = loop {
            match tokio::time::timeout_at(deadline, proc.lines.recv()).await {
                Err(_) => panic!(
                    "goim-edge {id} printed no ready line within {EDGE_READY_TIMEOUT:?}\nconfig:\n{config}\noutput:\n{}",
                    proc.log_tail(100)
                ),
                Ok(None) => {
                    let st = proc.try_wait();
                    panic!(
                        "goim-edge {id} exited before its ready line ({st:?})\nconfig:\n{config}\noutput:\n{}",
                        proc.log_tail(100)
                    )
                }
                Ok(Some(l)) if l.stream == Stream::Stdout && l.text.contains("goim-edge ready") => break l.text,
                Ok(Some(_)) => {}
            }
        };
        let (rid, tcp, ws) = parse_ready_line(&ready);
        assert_eq!(rid, id, "ready line reports another id: {ready:?}");
        let http = parse_ready_http(&ready);
        let wss = parse_ready_addr(&ready, "wss");
        let tls = parse_ready_addr(&ready, "tls");
        Edge {
            proc,
            id,
            tcp,
            ws,
            http,
            wss,
            tls,
            config,
            _dir: dir,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The TCP listener address (panics if disabled).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
            .unwrap_or_else(|| panic!("edge {} has no TCP listener", self.id))
    }

    /// The WebSocket listener address (panics if disabled).
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws
            .unwrap_or_else(|| panic!("edge {} has no WebSocket listener", self.id))
    }

    /// The HTTP transports' listener address (panics if disabled).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .unwrap_or_else(|| panic!("edge {} has no HTTP listener", self.id))
    }

    /// The WebSocket-over-TLS listener address (panics if TLS or WSS is off).
    pub fn wss_addr(&self) -> SocketAddr {
        self.wss
            .unwrap_or_else(|| panic!("edge {} has no WSS listener", self.id))
    }

    /// The goim-over-TLS-TCP listener address (panics if disabled).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls
            .unwrap_or_else(|| panic!("edge {} has no TLS listener", self.id))
    }

    pub fn tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    pub fn ws(&self) -> Option<SocketAddr> {
        self.ws
    }

    /// The generated config text.
    pub fn config(&self) -> &str {
        &self.config
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.proc.try_wait() {
            panic!(
                "goim-edge {} exited: {st:?}\noutput:\n{}",
                self.id,
                self.proc.log_tail(100)
            );
        }
    }

    /// The edge's output so far (stdout and stderr lines, tagged).
    pub fn logs(&self) -> Vec<String> {
        self.proc.log_lines()
    }

    /// `ctl.stats.<id>` through `nats`.
    pub async fn stats(&self, nats: &NatsServer) -> Value {
        let v = nats.edge_stats(&self.id).await;
        assert_eq!(
            v["id"].as_str(),
            Some(self.id.as_str()),
            "stats reply of another edge: {v}"
        );
        v
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.terminate(Duration::from_secs(10))
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// The optional `http=<ip:port|->` of the ready line (absent in older edges' lines: None).
pub fn parse_ready_http(line: &str) -> Option<SocketAddr> {
    parse_ready_addr(line, "http")
}

/// An optional `<key>=<ip:port|->` of the ready line (`http`, `wss`, `tls`; absent: None).
pub fn parse_ready_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let prefix = format!("{key}=");
    let v = line.split_whitespace().find_map(|t| t.strip_prefix(prefix.as_str()))?;
    if v == "-" {
        return None;
    }
    let a: SocketAddr = v
        .parse()
        .unwrap_or_else(|e| panic!("bad address {v:?} in ready line {line:?}: {e}"));
    assert!(a.ip().is_loopback() && a.port() != 0, "edge reports {key}={a} ({line:?})");
    Some(a)
}

/// `goim-edge ready id=<id> tcp=<ip:port|-> ws=<ip:port|-> [http=<ip:port|->]`.
pub fn parse_ready_line(line: &str) -> (String, Option<SocketAddr>, Option<SocketAddr>) {
    let mut id = None;
    let mut tcp = None;
    let mut ws = None;
    for tok in line.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            let addr = || -> Option<SocketAddr> {
                if v == "-" {
                    None
                } else {
                    Some(v.parse().unwrap_or_else(|e| {
                        panic!("bad address {v:?} in ready line {line:?}: {e}")
                    }))
                }
            };
            match k {
                "id" => id = Some(v.to_string()),
                "tcp" => tcp = addr(),
                "ws" => ws = addr(),
                _ => {}
            }
        }
    }
    let id = id.unwrap_or_else(|| panic!("ready line without id=: {line:?}"));
    for a in [tcp, ws].into_iter().flatten() {
        assert!(
            a.ip().is_loopback(),
            "edge listens on a non-loopback address {a} ({line:?})"
        );
        assert_ne!(a.port(), 0, "edge reports port 0 ({line:?})");
    }
    (id, tcp, ws)
}
