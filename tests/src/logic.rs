//! Helpers for the control-plane tests (goim logic's HTTP API in goim-authsvc, edge presence and
//! discovery): test-sized presence settings, an HTTP client that survives a server answering before
//! the whole body is sent, and `$SRV` discovery over a raw NATS connection.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::edge::EdgeOpts;
use crate::nats::NatsServer;

/// Presence report interval of the test edges (production default 5 s).
pub const REPORT_MS: u64 = 200;
/// Presence bucket max_age in the tests (production default 20 s; nats-server's floor for the delete
/// marker TTL is 1 s).
pub const MAX_AGE_MS: u64 = 2000;
/// The spec's bound for a dead edge's counts to disappear.
pub const DEAD_EDGE_BOUND: Duration = Duration::from_secs(30);
/// The spec's bound for a live edge's change to show.
pub const CHANGE_BOUND: Duration = Duration::from_secs(10);

/// An edge with test-sized presence intervals advertising `host`.
pub fn presence_edge(host: &str) -> EdgeOpts {
    EdgeOpts::new()
        .with("presence", "report_interval_ms", REPORT_MS.to_string())
        .with("presence", "max_age_ms", MAX_AGE_MS.to_string())
        .with("advertise", "host", crate::edge::toml_str(host))
}

/// authsvc TOML for the control-plane tests (appended after the harness' own sections).
pub fn logic_toml(logic: &str) -> String {
    format!("[presence]\nmax_age_ms = {MAX_AGE_MS}\n[logic]\n{logic}\n")
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("HTTP {}: body is not JSON ({e}): {:?}", self.status, self.body))
    }

    /// `data` of a goim success answer, asserting HTTP 200 and code 0.
    pub fn data(&self) -> Value {
        assert_eq!(self.status, 200, "expected HTTP 200, got {self:?}");
        let v = self.json();
        assert_eq!(v["code"], 0, "expected code 0: {v}");
        assert_eq!(v["message"], "", "expected an empty message: {v}");
        v["data"].clone()
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    ContentLength,
    Chunked,
}

/// One HTTP/1.1 request (`Connection: close`). The body is written while the answer is read, so a
/// server that answers early (413) and closes is seen, not deadlocked on; bounded by 20 s.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], framing: Framing) -> Reply {
    let fut = async {
        let stream = TcpStream::connect(addr).await.expect("connect HTTP");
        let (mut r, mut w) = stream.into_split();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        match framing {
            Framing::ContentLength => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
            Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let body = body.to_vec();
        let writer = tokio::spawn(async move {
            w.write_all(head.as_bytes()).await?;
            match framing {
                Framing::ContentLength => w.write_all(&body).await?,
                Framing::Chunked => {
                    for chunk in body.chunks(64 * 1024) {
                        w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                        w.write_all(chunk).await?;
                        w.write_all(b"\r\n").await?;
                    }
                    w.write_all(b"0\r\n\r\n").await?;
                }
            }
            w.flush().await?;
            // Keep the write half open until the server closes: shutting it down early is fine for
            // HTTP, but some servers treat a half-close as an abort.
            Ok::<_, std::io::Error>(w)
        });
        let mut resp = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                // A reset after the answer (the server closed with our body unread) ends the read.
                Err(_) => break,
            }
        }
        writer.abort();
        resp
    };
    let resp = timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete HTTP answer within 20 s (a hang)"));
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, headers: head.to_string(), body: body.to_string() }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"", Framing::ContentLength).await
}

pub async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Reply {
    http(addr, "POST", path, &[("Content-Type", content_type)], body, Framing::ContentLength).await
}

/// GET `path` until `check(data)` holds, every 50 ms, for at most `within`; returns the time it took.
/// Panics with the last answer otherwise.
pub async fn wait_data(addr: SocketAddr, path: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < within {
        let r = get(addr, path).await;
        if r.status == 200 {
            last = r.json()["data"].clone();
            if check(&last) {
                return start.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("GET {path}: condition not met within {within:?}; last data: {last}");
}

/// The edge ids answering `$SRV.PING.goim-edge` within `wait` (all replies collected until `want`
/// distinct ids were seen or the time is up).
pub async fn srv_ping(nats: &NatsServer, want: usize, wait: Duration) -> BTreeSet<String> {
    let mut c = nats.raw().await;
    let inbox = format!("_INBOX.srvping{}", std::process::id());
    let sid = c.subscribe(&inbox).await;
    c.write_raw(format!("PUB $SRV.PING.goim-edge {inbox} 0\r\n\r\n").as_bytes()).await;
    c.flush().await;
    let deadline = Instant::now() + wait;
    let mut ids = BTreeSet::new();
    while ids.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = c.next_msg(left).await else { break };
        if m.sid != sid || m.status.is_some() {
            continue;
        }
        let v: Value = serde_json::from_slice(&m.payload).expect("$SRV PING reply is JSON");
        assert_eq!(v["type"], "io.nats.micro.v1.ping_response", "{v}");
        assert_eq!(v["name"], "goim-edge", "{v}");
        ids.insert(v["metadata"]["edge_id"].as_str().expect("edge_id metadata").to_string());
    }
    ids
}
