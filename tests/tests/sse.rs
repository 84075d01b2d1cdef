//! HTTP transports (issue 9, first slice): a goim session over Server-Sent Events downstream and
//! POSTs upstream (`edge/src/transport/http.rs`), against a real nats-server and edge.
//!
//! The SSE client is a tiny hand-written HTTP/1.0 client (a close-delimited body, so no chunked
//! decoding): what it reads is exactly what a browser's `EventSource` parses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use goim_nats_tests::goim::*;
use goim_nats_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

fn http_edge() -> EdgeOpts {
    EdgeOpts::new()
        .with("listen", "http", "\"127.0.0.1:0\"")
        .with("listen", "http_cors_origins", "[\"https://app.example\"]")
}

/// `application/x-www-form-urlencoded`-safe percent-encoding of everything but unreserved bytes.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Event {
    name: String,
    id: Option<String>,
    data: Value,
}

impl Event {
    fn op(&self) -> i64 {
        self.data["op"].as_i64().unwrap_or_else(|| panic!("event without op: {self:?}"))
    }
    fn body(&self) -> Vec<u8> {
        b64(&self.data["body"])
    }
}

fn b64(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap_or_else(|| panic!("body is not a string: {v}"));
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_else(|e| panic!("body {s:?} is not base64: {e}"))
}

/// An open event stream.
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    events: VecDeque<Event>,
    comments: usize,
    session: String,
    http: SocketAddr,
}

/// Send `head` (+ `body`) and read the response head: (status, head text, bytes already read past it).
async fn request(stream: &mut TcpStream, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
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
async fn exchange(http: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
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
    async fn open(http: SocketAddr, auth: &[u8]) -> Result<Sse, (u16, String)> {
        let path = format!("/sse?auth={}", urlencode(&String::from_utf8_lossy(auth)));
        Self::open_with(http, &format!("GET {path} HTTP/1.0\r\nHost: {http}\r\n\r\n"), b"").await
    }

    /// `POST /sse` with the auth body.
    async fn open_post(http: SocketAddr, auth: &[u8]) -> Result<Sse, (u16, String)> {
        let head = format!("POST /sse HTTP/1.0\r\nHost: {http}\r\nContent-Length: {}\r\n\r\n", auth.len());
        Self::open_with(http, &head, auth).await
    }

    async fn open_with(http: SocketAddr, head: &str, body: &[u8]) -> Result<Sse, (u16, String)> {
        let mut stream = TcpStream::connect(http).await.expect("connect http");
        let (status, head, rest) = request(&mut stream, head, body).await;
        if status != 200 {
            let mut rest = rest;
            let _ = timeout(WAIT, stream.read_to_end(&mut rest)).await;
            return Err((status, String::from_utf8_lossy(&rest).to_string()));
        }
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        let mut sse = Sse { stream, buf: rest, events: VecDeque::new(), comments: 0, session: String::new(), http };
        let first = sse.next_event().await;
        assert_eq!(first.name, "session", "first event: {first:?}");
        sse.session = first.data["session"].as_str().expect("session id").to_string();
        assert_eq!(sse.session.len(), 32, "{first:?}");
        let auth = sse.next_event().await;
        assert_eq!((auth.name.as_str(), auth.op(), auth.body().len()), ("reply", 8, 0), "auth reply: {auth:?}");
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
    async fn try_next_event(&mut self, t: Duration) -> Option<Event> {
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

    async fn next_event(&mut self) -> Event {
        self.try_next_event(WAIT).await.expect("no event in time")
    }

    /// The next push: (op, body).
    async fn next_push(&mut self) -> (i32, Vec<u8>) {
        let e = self.next_event().await;
        assert_eq!(e.name, "push", "expected a push: {e:?}");
        // `id:` (EventSource's Last-Event-ID) is the push's sequence, present only when it has one.
        let seq = e.data["seq"].as_i64().expect("seq");
        assert_eq!(e.id, (seq != 0).then(|| seq.to_string()), "{e:?}");
        (e.op() as i32, e.body())
    }

    /// The stream's end: the `close` event's reason.
    async fn expect_close(&mut self) -> String {
        loop {
            let e = self.next_event().await;
            if e.name == "close" {
                return e.data["reason"].as_str().expect("reason").to_string();
            }
        }
    }

    /// `POST /session/<id>/op/<op>`: (status, JSON answer).
    async fn op(&self, op: i32, body: &[u8]) -> (u16, Value) {
        post_op(self.http, &self.session, op, body).await
    }
}

async fn post_op(http: SocketAddr, session: &str, op: i32, body: &[u8]) -> (u16, Value) {
    let (status, _, text) = exchange(http, "POST", &format!("/session/{session}/op/{op}"), &[], body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer {text:?} ({status}) is not JSON: {e}"));
    (status, v)
}

/// (op, body) of the reply to a POSTed op, asserting 200.
async fn reply(sse: &Sse, op: i32, body: &[u8]) -> (i64, Vec<u8>) {
    let (status, v) = sse.op(op, body).await;
    assert_eq!(status, 200, "op {op}: {v}");
    (v["op"].as_i64().expect("op"), b64(&v["body"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_client_gets_what_a_tcp_client_gets_and_drives_its_session_by_post() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, http_edge()).await;
    let auth = Auth::new(42).room("live://1").accepts(&[1000]);
    let mut sse = Sse::open(edge.http_addr(), &auth.body()).await.expect("sse open");
    let mut tcp = Client::connect_auth(Transport::Tcp, &edge, Auth::new(42).room("live://1").accepts(&[1000])).await.with_label("tcp");

    // Room pushes ignore accepts; user and broadcast pushes honour them. The 1002 pushes are not
    // accepted: the marker published after them on the same subjects is the next thing either sees.
    let mut p = nats.raw().await;
    p.hpublish("room.live.1", &[("Goim-Op", "1001")], b"room-1001").await;
    p.publish("user.42", b"user-1000").await;
    p.hpublish("user.42", &[("Goim-Op", "1002")], b"user-1002").await;
    p.publish("broadcast", &[0, 1, 2, 255]).await;
    p.hpublish("broadcast", &[("Goim-Op", "1002")], b"bc-1002").await;
    p.publish("user.42", b"user-marker").await;
    p.publish("broadcast", b"bc-marker").await;
    let mut got_sse = Vec::new();
    let mut got_tcp = Vec::new();
    for _ in 0..5 {
        got_sse.push(sse.next_push().await);
        let t = tcp.next_push().await;
        got_tcp.push((t.op, t.body));
    }
    got_sse.sort();
    got_tcp.sort();
    assert_eq!(got_sse, got_tcp, "SSE and TCP clients in the same room got different pushes");
    let mut want = vec![
        (1001, b"room-1001".to_vec()),
        (1000, b"user-1000".to_vec()),
        (1000, vec![0, 1, 2, 255]),
        (1000, b"user-marker".to_vec()),
        (1000, b"bc-marker".to_vec()),
    ];
    want.sort();
    assert_eq!(got_sse, want);

    // Heartbeat: op 3 with the room's online count (both clients are in live://1).
    let (op, body) = reply(&sse, 2, b"").await;
    assert_eq!((op, body), (3, 2i32.to_be_bytes().to_vec()));
    // Sub 1002: op 15 echo, and user pushes of op 1002 now arrive.
    assert_eq!(reply(&sse, 14, b"1002").await, (15, b"1002".to_vec()));
    p.hpublish("user.42", &[("Goim-Op", "1002")], b"now-1002").await;
    assert_eq!(sse.next_push().await, (1002, b"now-1002".to_vec()));
    assert_eq!(reply(&sse, 16, b"1002").await, (17, b"1002".to_vec()));
    // Op 4 is echoed with an empty body.
    assert_eq!(reply(&sse, 4, b"hello").await, (4, vec![]));

    // Change room: op 13 echo; the old room's pushes stop (the TCP client, still there, is the witness).
    assert_eq!(reply(&sse, 12, b"live://2").await, (13, b"live://2".to_vec()));
    p.publish("room.live.1", b"old-room").await;
    tcp.expect_push(1000, b"old-room").await;
    p.publish("room.live.2", b"new-room").await;
    assert_eq!(sse.next_push().await, (1000, b"new-room".to_vec()));
    let (op, body) = reply(&sse, 2, b"").await;
    assert_eq!((op, body), (3, 1i32.to_be_bytes().to_vec()), "alone in live://2");

    // POST /sse opens a session the same way.
    let post = Sse::open_post(edge.http_addr(), &Auth::new(43).room("live://2").body()).await.expect("POST /sse");
    p.publish("room.live.2", b"both").await;
    assert_eq!(sse.next_push().await, (1000, b"both".to_vec()));
    drop(post);

    // The client goes away: its session ends (the edge counts it, and its id is unknown from then on).
    let id = sse.session.clone();
    drop(sse);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = post_op(edge.http_addr(), &id, 2, b"").await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "session {id} still answers after its stream closed: {status} {v}");
        tokio::task::yield_now().await;
    }
    let stats = edge.stats(&nats).await;
    assert!(stats["closed"]["client_gone"].as_u64().unwrap_or(0) >= 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_clear_4xx_answers() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, http_edge()).await;
    let http = edge.http_addr();
    let sse = Sse::open(http, &Auth::new(1).body()).await.expect("sse open");

    // Unknown (or guessed) session ids.
    let (status, v) = post_op(http, "0123456789abcdef0123456789abcdef", 2, b"").await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = post_op(http, "../../x", 2, b"").await;
    assert_eq!(status, 404, "{v}");
    // Ops that are not upstream ops.
    for op in ["7", "1000", "x", "-1"] {
        let (status, _, body) = exchange(http, "POST", &format!("/session/{}/op/{op}", sse.session), &[], b"").await;
        assert_eq!(status, 400, "op {op}: {body}");
    }
    // Oversized bodies: over goim's 4096-byte packet body.
    let (status, v) = sse.op(4, &vec![b'x'; 5000]).await;
    assert_eq!(status, 413, "{v}");
    let (status, _, body) = exchange(http, "POST", "/sse", &[], &vec![b' '; 5000]).await;
    assert_eq!(status, 413, "{body}");
    // Bad auth JSON, a missing auth, unknown routes.
    assert_eq!(Sse::open(http, b"{not json").await.err().map(|e| e.0), Some(400));
    assert_eq!(Sse::open_post(http, br#"{"mid":"seven"}"#).await.err().map(|e| e.0), Some(400));
    assert_eq!(Sse::open(http, br#"{"mid":1,"resume":{"room":1}}"#).await.err().map(|e| e.0), Some(400), "resume");
    let (status, _, _) = exchange(http, "GET", "/sse", &[], b"").await;
    assert_eq!(status, 400);
    let (status, _, _) = exchange(http, "GET", "/sub", &[], b"").await;
    assert_eq!(status, 404);
    // The session itself is unharmed by all that.
    assert_eq!(reply(&sse, 2, b"").await.0, 3);

    // CORS: an allowed origin gets its headers and preflight; another gets none.
    let (status, head, _) = exchange(http, "OPTIONS", "/sse", &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "GET")], b"").await;
    let head = head.to_ascii_lowercase();
    assert!((200..300).contains(&status), "{status} {head}");
    assert!(head.contains("access-control-allow-origin: https://app.example"), "{head}");
    assert!(head.contains("access-control-allow-methods:"), "{head}");
    let (_, head, _) = exchange(http, "POST", &format!("/session/{}/op/2", sse.session), &[("Origin", "https://evil.example")], b"").await;
    assert!(!head.to_ascii_lowercase().contains("access-control-allow-origin"), "{head}");
    let (_, head, _) = exchange(http, "POST", &format!("/session/{}/op/2", sse.session), &[("Origin", "https://app.example")], b"").await;
    assert!(head.to_ascii_lowercase().contains("access-control-allow-origin: https://app.example"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_refuses_forged_and_out_of_scope_tokens() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1", "k9"]);
    let authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    let edge = Edge::start(&nats, http_edge().with("auth", "mode", "\"token\"")).await;
    let http = edge.http_addr();
    let token = authsvc.token(json!({"mid": 7, "rooms": ["live://1"], "accepts": [1000]})).await;

    let mut forger = keys.minter("k9");
    forger.key.kid = "k1".into();
    let now = goim_token::now_secs();
    let claims = goim_token::Claims {
        iss: goim_nats_tests::authsvc::ISSUER.into(),
        aud: goim_nats_tests::authsvc::AUDIENCE.into(),
        sub: "7".into(),
        mid: 7,
        key: None,
        rooms: vec!["live://1".into()],
        room_prefixes: vec![],
        accepts: vec![1000],
        publish: Default::default(),
        iat: now - 100,
        nbf: now - 100,
        exp: now + 600,
        jti: "forged".into(),
    };
    let forged = forger.sign(claims).expect("sign").0;
    let refused = |r: Result<Sse, (u16, String)>| r.err().map(|e| e.0);
    assert_eq!(refused(Sse::open(http, &Auth::new(7).room("live://1").token(&forged).body()).await), Some(401));
    assert_eq!(refused(Sse::open(http, &Auth::new(7).room("live://1").body()).await), Some(401), "no token");
    assert_eq!(refused(Sse::open(http, &Auth::new(7).room("live://2").token(&token).body()).await), Some(403), "room out of scope");
    assert_eq!(refused(Sse::open(http, &Auth::new(7).accepts(&[1002]).token(&token).body()).await), Some(403), "accepts");

    let mut sse = Sse::open(http, &Auth::new(7).room("live://1").accepts(&[1000]).token(&token).body()).await.expect("valid token");
    nats.publish("user.7", b"to-7").await;
    assert_eq!(sse.next_push().await, (1000, b"to-7".to_vec()));
    // Change room outside the scope: answered (op 13), but the session stays in live://1.
    assert_eq!(reply(&sse, 12, b"live://2").await, (13, b"live://2".to_vec()));
    nats.publish("room.live.2", b"not-here").await;
    nats.publish("room.live.1", b"still-here").await;
    assert_eq!(sse.next_push().await, (1000, b"still-here".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_stream_is_closed_as_slow_consumer() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, http_edge().max_outbound_bytes(8192)).await;
    let mut sse = Sse::open(edge.http_addr(), &Auth::new(5).room("live://9").body()).await.expect("sse open");
    // Far more than the socket buffers and the outbox bound hold, while the client reads nothing.
    let mut p = nats.raw().await;
    let body = vec![b'z'; 60_000];
    for _ in 0..400 {
        p.publish_nowait("room.live.9", &body).await;
    }
    p.flush().await;
    // A heartbeat's reply cannot come through a stream nobody reads: the session closes first.
    // (410 while the stream still holds the session, 404 once the stream has ended it.)
    let (status, v) = sse.op(2, b"").await;
    assert!(status == 410 || status == 404, "the session survived 24 MB it never read: {status} {v}");
    if status == 410 {
        assert!(v["error"].as_str().unwrap_or("").contains("slow_consumer"), "{v}");
    }
    // What the client reads now ends with the reason.
    assert_eq!(sse.expect_close().await, "slow_consumer");
    let stats = edge.stats(&nats).await;
    assert!(stats["closed"]["slow_consumer"].as_u64().unwrap_or(0) >= 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_heartbeats_expires_with_goims_idle_timeout() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, http_edge().idle_timeout_ms(400)).await;
    let mut sse = Sse::open(edge.http_addr(), &Auth::new(6).body()).await.expect("sse open");
    assert_eq!(sse.expect_close().await, "idle_timeout");
    let (status, v) = sse.op(2, b"").await;
    assert_eq!(status, 404, "{v}");
    let stats = edge.stats(&nats).await;
    assert!(stats["closed"]["idle_timeout"].as_u64().unwrap_or(0) >= 1, "{stats}");
}

#[test]
fn ready_line_http_address_is_optional() {
    use goim_nats_tests::edge::{parse_ready_http, parse_ready_line};
    let old = "goim-edge ready id=e1 tcp=127.0.0.1:4000 ws=-";
    assert_eq!(parse_ready_http(old), None);
    let new = "goim-edge ready id=e1 tcp=127.0.0.1:4000 ws=- http=127.0.0.1:4004";
    assert_eq!(parse_ready_line(new).1, parse_ready_line(old).1);
    assert_eq!(parse_ready_http(new), Some("127.0.0.1:4004".parse().unwrap()));
    assert_eq!(parse_ready_http("goim-edge ready id=e1 tcp=- ws=- http=-"), None);
}
