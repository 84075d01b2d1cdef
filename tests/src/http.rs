//! HTTP clients for the edge's HTTP transports (edge/src/transport/http): whole HTTP/1.0 exchanges,
//! an SSE client, long-poll helpers. HTTP/1.0 gives close-delimited bodies, so no chunked decoding:
//! what the SSE client reads is exactly what a browser's `EventSource` parses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::goim::WAIT;

/// `application/x-www-form-urlencoded`-safe percent-encoding of everything but unreserved bytes.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub id: Option<String>,
    pub data: Value,
}

impl Event {
    pub fn op(&self) -> i64 {
        self.data["op"].as_i64().unwrap_or_else(|| panic!("event without op: {self:?}"))
    }
    pub fn body(&self) -> Vec<u8> {
        b64(&self.data["body"])
    }
}

pub fn b64(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap_or_else(|| panic!("body is not a string: {v}"));
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_else(|e| panic!("body {s:?} is not base64: {e}"))
}

/// An open event stream.
pub struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    events: VecDeque<Event>,
    pub comments: usize,
    pub session: String,
    pub http: SocketAddr,
    /// The `session` event's data.
    pub first: Value,
    /// The id of the last push read.
    pub last_id: Option<String>,
}

/// Send `head` (+ `body`) and read the response head: (status, head text, bytes already read past it).
pub async fn request(stream: &mut TcpStream, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body).await.expect("send body");
    let mut buf = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            return (status, head, buf[end + 4..].to_vec());
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(deadline.saturating_duration_since(Instant::now()), stream.read(&mut chunk))
            .await
            .expect("response head timed out")
            .expect("read response head");
        assert!(n > 0, "connection closed before the response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A whole HTTP/1.0 exchange: (status, head, body).
pub async fn exchange(http: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(http).await.expect("connect http");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {http}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let (status, head, mut rest) = request(&mut s, &head, body).await;
    timeout(WAIT, s.read_to_end(&mut rest)).await.expect("response body timed out").expect("read body");
    (status, head, String::from_utf8_lossy(&rest).to_string())
}

impl Sse {
    /// `GET /sse?auth=...`; Err((status, body)) when the edge refuses.
    pub async fn open(http: SocketAddr, auth: &[u8]) -> Result<Sse, (u16, String)> {
        let path = format!("/sse?auth={}", urlencode(&String::from_utf8_lossy(auth)));
        Self::open_with(http, &format!("GET {path} HTTP/1.0\r\nHost: {http}\r\n\r\n"), b"").await
    }

    /// `POST /sse` with the auth body.
    pub async fn open_post(http: SocketAddr, auth: &[u8]) -> Result<Sse, (u16, String)> {
        let head = format!("POST /sse HTTP/1.0\r\nHost: {http}\r\nContent-Length: {}\r\n\r\n", auth.len());
        Self::open_with(http, &head, auth).await
    }

    /// `GET <path_and_query>` with extra headers (e.g. `Last-Event-ID`).
    pub async fn open_path(http: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Sse, (u16, String)> {
        let mut head = format!("GET {path} HTTP/1.0\r\nHost: {http}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        Self::open_with(http, &head, b"").await
    }

    /// Send the request; on 200 read the `session` event and, for a new session (not a re-attach),
    /// the auth reply (op 8).
    pub async fn open_with(http: SocketAddr, head: &str, body: &[u8]) -> Result<Sse, (u16, String)> {
        let mut stream = TcpStream::connect(http).await.expect("connect http");
        let (status, head, rest) = request(&mut stream, head, body).await;
        if status != 200 {
            let mut rest = rest;
            let _ = timeout(WAIT, stream.read_to_end(&mut rest)).await;
            return Err((status, String::from_utf8_lossy(&rest).to_string()));
        }
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        let mut sse = Sse { stream, buf: rest, events: VecDeque::new(), comments: 0, session: String::new(), http, first: Value::Null, last_id: None };
        let first = sse.next_event().await;
        assert_eq!(first.name, "session", "first event: {first:?}");
        sse.session = first.data["session"].as_str().expect("session id").to_string();
        assert_eq!(sse.session.len(), 32, "{first:?}");
        sse.first = first.data.clone();
        if first.data["reattached"] != Value::Bool(true) {
            let auth = sse.next_event().await;
            assert_eq!((auth.name.as_str(), auth.op(), auth.body().len()), ("reply", 8, 0), "auth reply: {auth:?}");
        }
        Ok(sse)
    }

    /// Parse the complete events in the buffer.
    fn parse(&mut self) {
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(self.buf[..end].to_vec()).expect("event stream is UTF-8");
            self.buf.drain(..end + 2);
            let (mut name, mut id, mut data) = ("message".to_string(), None, String::new());
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("event: ") {
                    name = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                } else {
                    panic!("unexpected line {line:?} in the event stream");
                }
            }
            if !data.is_empty() {
                let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("data {data:?} is not JSON: {e}"));
                self.events.push_back(Event { name, id, data });
            }
        }
    }

    /// The next event within `t`; None at a timeout. Panics if the stream ends.
    pub async fn try_next_event(&mut self, t: Duration) -> Option<Event> {
        let deadline = Instant::now() + t;
        loop {
            self.parse();
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let mut chunk = [0u8; 8192];
            match timeout(deadline.saturating_duration_since(Instant::now()), self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) => panic!("event stream ended; unparsed: {:?}", String::from_utf8_lossy(&self.buf)),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => panic!("event stream failed: {e}"),
            }
        }
    }

    /// The events left until the server ends the stream (panics if it does not within `t`).
    pub async fn until_end(&mut self, t: Duration) -> Vec<Event> {
        let deadline = Instant::now() + t;
        loop {
            let mut chunk = [0u8; 8192];
            match timeout(deadline.saturating_duration_since(Instant::now()), self.stream.read(&mut chunk)).await {
                Err(_) => panic!("event stream did not end within {t:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.parse();
                    return self.events.drain(..).collect();
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn next_event(&mut self) -> Event {
        self.try_next_event(WAIT).await.expect("no event in time")
    }

    /// The next push: (op, body).
    pub async fn next_push(&mut self) -> (i32, Vec<u8>) {
        let e = self.next_event().await;
        assert_eq!(e.name, "push", "expected a push: {e:?}");
        // `id:` (EventSource's Last-Event-ID): <session>:<cursor>:<room>:<user>:<broadcast>.
        let id = e.id.as_deref().unwrap_or_else(|| panic!("push without id: {e:?}"));
        assert_eq!(id.split(':').count(), 5, "{e:?}");
        assert!(id.starts_with(&format!("{}:", self.session)), "{e:?}");
        self.last_id = Some(id.to_string());
        (e.op() as i32, e.body())
    }

    /// The stream's end: the `close` event's reason.
    pub async fn expect_close(&mut self) -> String {
        loop {
            let e = self.next_event().await;
            if e.name == "close" {
                return e.data["reason"].as_str().expect("reason").to_string();
            }
        }
    }

    /// `POST /session/<id>/op/<op>`: (status, JSON answer).
    pub async fn op(&self, op: i32, body: &[u8]) -> (u16, Value) {
        post_op(self.http, &self.session, op, body).await
    }
}

pub async fn post_op(http: SocketAddr, session: &str, op: i32, body: &[u8]) -> (u16, Value) {
    let (status, _, text) = exchange(http, "POST", &format!("/session/{session}/op/{op}"), &[], body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer {text:?} ({status}) is not JSON: {e}"));
    (status, v)
}

/// (op, body) of the reply to a POSTed op, asserting 200.
pub async fn reply(sse: &Sse, op: i32, body: &[u8]) -> (i64, Vec<u8>) {
    let (status, v) = sse.op(op, body).await;
    assert_eq!(status, 200, "op {op}: {v}");
    (v["op"].as_i64().expect("op"), b64(&v["body"]))
}


/// A long-poll session (`POST /poll`, then `/session/<id>/poll?ack=`).
pub struct Poller {
    pub http: SocketAddr,
    pub session: String,
    /// The cursor the next poll acknowledges.
    pub ack: u64,
}

/// One polled event: (op, seq, body).
pub type Polled = (i64, i64, Vec<u8>);

impl Poller {
    /// `POST /poll` with the auth body; Err((status, body)) when the edge refuses.
    pub async fn open(http: SocketAddr, auth: &[u8]) -> Result<Poller, (u16, String)> {
        let (status, _, text) = exchange(http, "POST", "/poll", &[], auth).await;
        if status != 200 {
            return Err((status, text));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!((v["reply"]["op"].as_i64(), v["next"].as_u64()), (Some(8), Some(0)), "{v}");
        let session = v["session"].as_str().expect("session").to_string();
        assert_eq!(session.len(), 32, "{v}");
        Ok(Poller { http, session, ack: 0 })
    }

    /// One poll acknowledging `ack`: (status, JSON answer).
    pub async fn poll_raw(&self, ack: u64, timeout_ms: u64) -> (u16, Value) {
        let path = format!("/session/{}/poll?ack={ack}&timeout_ms={timeout_ms}", self.session);
        let (status, _, text) = exchange(self.http, "GET", &path, &[], b"").await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("poll answer {text:?} ({status}) is not JSON: {e}"));
        (status, v)
    }

    /// Poll (asserting 200), acknowledge what came with the next poll, return the events.
    pub async fn poll(&mut self, timeout_ms: u64) -> Vec<Polled> {
        let (status, v) = self.poll_raw(self.ack, timeout_ms).await;
        assert_eq!(status, 200, "poll: {v}");
        let events = parse_events(&v);
        let next = v["next"].as_u64().unwrap_or_else(|| panic!("no next: {v}"));
        assert!(next >= self.ack && next - self.ack == events.len() as u64, "cursor {} → {next} with {} events: {v}", self.ack, events.len());
        self.ack = next;
        events
    }

    /// Poll until `n` pushes (op ≥ 1000) came, within `WAIT`.
    pub async fn pushes(&mut self, n: usize) -> Vec<Polled> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} pushes within {WAIT:?}: {got:?}", got.len());
            got.extend(self.poll(1000).await.into_iter().filter(|e| e.0 >= 1000));
        }
        got
    }

    /// `POST /session/<id>/op/<op>`.
    pub async fn op(&self, op: i32, body: &[u8]) -> (u16, Value) {
        post_op(self.http, &self.session, op, body).await
    }

    /// The reply (op, body) to an upstream op, asserting 200.
    pub async fn reply(&self, op: i32, body: &[u8]) -> (i64, Vec<u8>) {
        let (status, v) = self.op(op, body).await;
        assert_eq!(status, 200, "op {op}: {v}");
        (v["op"].as_i64().expect("op"), b64(&v["body"]))
    }
}

/// The events of a poll answer.
pub fn parse_events(v: &Value) -> Vec<Polled> {
    v["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {v}"))
        .iter()
        .map(|e| (e["op"].as_i64().expect("op"), e["seq"].as_i64().expect("seq"), b64(&e["body"])))
        .collect()
}

/// The value of an unlabelled sample in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}
