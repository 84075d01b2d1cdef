//! A goim-history child process for the history tests, and the small helpers they share: reads over
//! NATS (`history.get`) and HTTP (`GET /history`), JetStream stream info over a raw connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::authsvc::{http_request, KeyDir};
use crate::edge::toml_str;
use crate::nats::NatsServer;
use crate::process::{Proc, Stream};

/// How long goim-history may take to print its ready line (it provisions streams first).
pub const HISTORY_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The backend API key of the test history service (reads anything).
pub const HISTORY_API_KEY: &str = "test-history-api-key-0123";

/// The goim-history binary: `$GOIM_HISTORY_BIN`, else next to goim-edge.
pub fn history_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GOIM_HISTORY_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GOIM_HISTORY_BIN={} is not a file", p.display());
        return p;
    }
    let bin = crate::edge::edge_bin().with_file_name("goim-history");
    assert!(bin.is_file(), "goim-history not found at {}: run `cargo build --workspace --bins` first", bin.display());
    bin
}

/// goim-history's configuration for one test: loopback HTTP on port 0, the test's NATS server, the
/// test API key, no key announcements from NATS (tests add key files or turn them on), no periodic
/// re-check; plus arbitrary overrides.
#[derive(Debug, Clone)]
pub struct HistoryOpts {
    /// section → key → TOML literal.
    values: BTreeMap<String, BTreeMap<String, String>>,
    /// `[[tokens.keys]]`: (kid, public key file).
    keys: Vec<(String, PathBuf)>,
}

impl Default for HistoryOpts {
    fn default() -> Self {
        HistoryOpts::new()
    }
}

impl HistoryOpts {
    pub fn new() -> HistoryOpts {
        let mut o = HistoryOpts { values: BTreeMap::new(), keys: Vec::new() };
        o.set("http", "listen", toml_str("127.0.0.1:0"));
        o.set("http", "reuse_port", "false");
        o.set("tokens", "keys_from_nats", "false");
        o.set("tokens", "api_keys", format!("[{}]", toml_str(HISTORY_API_KEY)));
        o.set("provision", "recheck_interval_secs", "0");
        o.set("provision", "retry_max_ms", "500");
        o
    }

    /// `[section] key = <TOML literal>`.
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<String>) -> &mut Self {
        self.values.entry(section.into()).or_default().insert(key.into(), value.into());
        self
    }

    pub fn with(mut self, section: &str, key: &str, value: impl Into<String>) -> Self {
        self.set(section, key, value);
        self
    }

    /// Verify tokens with `kid`'s public key from `keys`.
    pub fn key(mut self, keys: &KeyDir, kid: &str) -> Self {
        self.keys.push((kid.into(), keys.public(kid)));
        self
    }

    fn toml(&self, nats_url: &str) -> String {
        let mut values = self.values.clone();
        values.entry("nats".into()).or_default().entry("urls".into()).or_insert(format!("[{}]", toml_str(nats_url)));
        let mut out = String::new();
        for (section, kv) in &values {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in kv {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (kid, file) in &self.keys {
            out.push_str(&format!("[[tokens.keys]]\nid = {}\nfile = {}\n", toml_str(kid), toml_str(&file.display().to_string())));
        }
        out
    }
}

/// A running goim-history, killed on drop.
pub struct History {
    proc: Proc,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl History {
    pub async fn start(nats: &NatsServer, opts: HistoryOpts) -> History {
        match Self::try_start(nats, opts).await {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    /// Start; `Err` with the config and output when it exits or is not ready in time.
    pub async fn try_start(nats: &NatsServer, opts: HistoryOpts) -> Result<History, String> {
        Self::try_start_at(&nats.url(), opts).await
    }

    /// Start against a NATS URL (which need not be up yet: goim-history retries).
    pub async fn try_start_at(nats_url: &str, opts: HistoryOpts) -> Result<History, String> {
        let dir = tempfile::Builder::new().prefix("goim-history-").tempdir().expect("tempdir");
        let toml = opts.toml(nats_url);
        let path = dir.path().join("goim-history.toml");
        std::fs::write(&path, &toml).expect("write history config");
        let mut proc = spawn(&path);
        let deadline = Instant::now() + HISTORY_READY_TIMEOUT;
        let ready = loop {
            match tokio::time::timeout_at(deadline, proc.lines.recv()).await {
                Ok(Some(l)) if l.stream == Stream::Stdout && l.text.starts_with("goim-history ready") => break l.text,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // Give the output readers a moment to collect the last lines.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(format!(
                        "goim-history did not become ready (exit: {:?})\nconfig:\n{toml}\noutput:\n{}",
                        proc.try_wait(),
                        proc.log_tail(100)
                    ));
                }
            }
        };
        let http = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no http address in {ready:?}"));
        Ok(History { proc, http, _dir: dir })
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Whether some output line contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.proc.log_lines().iter().any(|l| l.contains(needle))
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }

    /// `GET /history?<query>` with `Authorization: Bearer <credential>` when given.
    pub async fn get_http(&self, query: &str, credential: Option<&str>) -> (u16, Value) {
        let auth = credential.map(|c| format!("Bearer {c}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (status, body) = http_request(self.http, "GET", &format!("/history?{query}"), &headers, b"").await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /history?{query}: HTTP {status}, not JSON ({e}): {body:?}"));
        (status, v)
    }

    /// `GET <path>` without credentials.
    pub async fn get_path(&self, path: &str) -> (u16, Value) {
        let (status, body) = http_request(self.http, "GET", path, &[], b"").await;
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }
}

fn spawn(config: &Path) -> Proc {
    let mut cmd = Command::new(history_bin());
    cmd.arg("--config").arg(config).env("NO_COLOR", "1");
    Proc::spawn("goim-history", cmd).expect("spawn goim-history")
}

/// A NATS request with a JSON body; the answer as JSON.
pub async fn nats_json(nats: &NatsServer, subject: &str, body: &Value) -> Value {
    let mut c = nats.raw().await;
    let m = c.request(subject, body.to_string().as_bytes(), Duration::from_secs(10)).await;
    serde_json::from_slice(&m.payload)
        .unwrap_or_else(|e| panic!("{subject}: answer is not JSON ({e}): {:?}", String::from_utf8_lossy(&m.payload)))
}

/// `history.get` with `body`.
pub async fn nats_read(nats: &NatsServer, body: Value) -> Value {
    nats_json(nats, "history.get", &body).await
}

/// `$JS.API.STREAM.INFO.<stream>` (with per-subject counts for `subjects_filter` when given).
pub async fn stream_info(nats: &NatsServer, stream: &str, subjects_filter: Option<&str>) -> Value {
    let body = match subjects_filter {
        Some(f) => serde_json::json!({ "subjects_filter": f }),
        None => serde_json::json!({}),
    };
    nats_json(nats, &format!("$JS.API.STREAM.INFO.{stream}"), &body).await
}

/// The sequences of a page's messages.
pub fn seqs(page: &Value) -> Vec<u64> {
    page["messages"].as_array().unwrap_or_else(|| panic!("no messages in {page}")).iter().map(|m| m["seq"].as_u64().expect("seq")).collect()
}

/// The decoded bodies of a page's messages.
pub fn bodies(page: &Value) -> Vec<String> {
    use base64::Engine;
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {page}"))
        .iter()
        .map(|m| {
            let b = base64::engine::general_purpose::STANDARD.decode(m["body"].as_str().expect("body")).expect("base64 body");
            String::from_utf8(b).expect("utf-8 body")
        })
        .collect()
}

static PUB_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// JetStream publishes over a raw connection (HPUB with a reply inbox; the stream's ack is the
/// answer), so a test knows each message's stream sequence and that it is stored.
pub struct JsPub {
    raw: crate::nats::NatsRaw,
    sid: u64,
    prefix: String,
    n: u64,
}

impl JsPub {
    pub async fn new(nats: &NatsServer) -> JsPub {
        let mut raw = nats.raw().await;
        let prefix = format!("_INBOX.jspub{}x{}", std::process::id(), PUB_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let sid = raw.subscribe(&format!("{prefix}.*")).await;
        JsPub { raw, sid, prefix, n: 0 }
    }

    /// Publish and wait for the ack: `{"stream","seq"[,"duplicate"]}` (panics on an error ack or none).
    pub async fn publish(&mut self, subject: &str, headers: &[(&str, &str)], body: &[u8]) -> Value {
        self.n += 1;
        let reply = format!("{}.{}", self.prefix, self.n);
        let mut hdr = String::from("NATS/1.0\r\n");
        for (k, v) in headers {
            hdr.push_str(&format!("{k}: {v}\r\n"));
        }
        hdr.push_str("\r\n");
        let mut buf = format!("HPUB {subject} {reply} {} {}\r\n", hdr.len(), hdr.len() + body.len()).into_bytes();
        buf.extend_from_slice(hdr.as_bytes());
        buf.extend_from_slice(body);
        buf.extend_from_slice(b"\r\n");
        self.raw.write_raw(&buf).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.raw.next_msg(left).await.unwrap_or_else(|| panic!("no JetStream ack for {subject} within 10 s"));
            if m.sid != self.sid || m.subject != reply {
                continue;
            }
            assert!(m.status.is_none(), "publish to {subject}: status {:?} (no stream captures it?)", m.status);
            let ack: Value = serde_json::from_slice(&m.payload).expect("ack is JSON");
            assert!(ack.get("error").is_none(), "publish to {subject} refused: {ack}");
            return ack;
        }
    }

    /// Publish and return the stream sequence.
    pub async fn seq(&mut self, subject: &str, headers: &[(&str, &str)], body: &[u8]) -> u64 {
        self.publish(subject, headers, body).await["seq"].as_u64().expect("seq in ack")
    }
}
