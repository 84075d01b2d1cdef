//! HTTP transports (issue 9): a goim session over Server-Sent Events downstream and POSTs upstream
//! (`edge/src/transport/http/`), against a real nats-server and edge: pushes as a TCP client gets
//! them, 4xx answers, tokens, the write bound, expiry, re-attaching a dropped stream by its
//! `Last-Event-ID`, and resuming from history once the session is gone.
//!
//! The SSE client (tests/src/http.rs) is a tiny hand-written HTTP/1.0 client: what it reads is
//! exactly what a browser's `EventSource` parses.

use goim_nats_tests::goim::*;
use goim_nats_tests::authsvc::claims_for;
use goim_nats_tests::http::*;
use goim_nats_tests::*;
use serde_json::{json, Value};
use tokio::time::Instant;

fn http_edge() -> EdgeOpts {
    EdgeOpts::new()
        .with("listen", "http", "\"127.0.0.1:0\"")
        .with("listen", "http_cors_origins", "[\"https://app.example\"]")
        .with("listen", "http_session_grace_ms", "500")
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

    // The client goes away: its session ends once no stream came back for the grace period (500 ms
    // here); the edge counts it, and the id is unknown from then on.
    let id = sse.session.clone();
    drop(sse);
    until_unknown(edge.http_addr(), &id).await;
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
    // An id this edge never issued as Last-Event-ID; an unknown session to re-attach to.
    assert_eq!(Sse::open_path(http, "/sse?auth=%7B%7D", &[("Last-Event-ID", "17")]).await.err().map(|e| e.0), Some(400));
    assert_eq!(Sse::open_path(http, "/sse?session=0123456789abcdef0123456789abcdef", &[]).await.err().map(|e| e.0), Some(404));
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

    let forged = keys.forge("k1", "k9", claims_for(7, 600));
    let refused = |r: Result<Sse, (u16, String)>| r.err().map(|e| e.0);
    assert_eq!(refused(Sse::open(http, &Auth::new(7).room("live://1").token(&forged).body()).await), Some(401));
    assert_eq!(refused(Sse::open(http, &Auth::new(7).room("live://1").body()).await), Some(401), "no token");
    assert_eq!(refused(Sse::open(http, &Auth::new(7).room("live://2").token(&token).body()).await), Some(403), "room out of scope");
    assert_eq!(refused(Sse::open(http, &Auth::new(7).accepts(&[1002]).token(&token).body()).await), Some(403), "accepts");

    let mut sse = Sse::open(http, &Auth::new(7).room("live://1").accepts(&[1000]).token(&token).body()).await.expect("valid token");
    nats.publish("user.7", b"to-7").await;
    assert_eq!(sse.next_push().await, (1000, b"to-7".to_vec()));
    // Op 7: an in-band token refresh (op 8); a forged one closes the session, as over TCP.
    let fresh = authsvc.token(json!({"mid": 7, "rooms": ["live://1"], "accepts": [1000]})).await;
    assert_eq!(reply(&sse, 7, json!({"token": fresh}).to_string().as_bytes()).await, (8, vec![]));
    // Change room outside the scope: answered (op 13), but the session stays in live://1.
    assert_eq!(reply(&sse, 12, b"live://2").await, (13, b"live://2".to_vec()));
    nats.publish("room.live.2", b"not-here").await;
    nats.publish("room.live.1", b"still-here").await;
    assert_eq!(sse.next_push().await, (1000, b"still-here".to_vec()));
    let (status, v) = sse.op(7, json!({"token": forged}).to_string().as_bytes()).await;
    assert_eq!(status, 410, "{v}");
    assert_eq!(sse.expect_close().await, "bad_token");
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

/// Poll (POST op 2) until the session is unknown (404), within `WAIT`.
async fn until_unknown(http: std::net::SocketAddr, id: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = post_op(http, id, 2, b"").await;
        if status == 404 {
            return;
        }
        assert!(Instant::now() < deadline, "session {id} still known: {status} {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_reattaches_to_its_session_by_last_event_id_without_loss() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, http_edge().with("listen", "http_session_grace_ms", "20000")).await;
    let http = edge.http_addr();
    let auth = Auth::new(8).room("live://re").accepts(&[1000]);
    let path = format!("/sse?auth={}", urlencode(&String::from_utf8_lossy(&auth.body())));
    let mut sse = Sse::open_path(http, &path, &[]).await.expect("sse open");
    let id = sse.session.clone();
    let mut p = nats.raw().await;
    for i in 0..3 {
        p.publish("room.live.re", format!("a{i}").as_bytes()).await;
    }
    for i in 0..3 {
        assert_eq!(sse.next_push().await, (1000, format!("a{i}").into_bytes()));
    }
    let last = sse.last_id.clone().expect("an id");
    drop(sse);
    // While no stream is attached the session keeps what comes (a heartbeat proves it is alive).
    for i in 0..5 {
        p.publish("room.live.re", format!("b{i}").as_bytes()).await;
        p.publish("user.8", format!("u{i}").as_bytes()).await;
    }
    p.flush().await;
    assert_eq!(post_op(http, &id, 2, b"").await.0, 200);
    // What an EventSource does by itself: the same URL, with Last-Event-ID.
    let mut back = Sse::open_path(http, &path, &[("Last-Event-ID", &last)]).await.expect("re-attach");
    assert_eq!(back.first, json!({"session": id, "reattached": true}));
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(String::from_utf8(back.next_push().await.1).unwrap());
    }
    let rooms: Vec<&str> = got.iter().filter(|b| b.starts_with('b')).map(String::as_str).collect();
    let users: Vec<&str> = got.iter().filter(|b| b.starts_with('u')).map(String::as_str).collect();
    assert_eq!(rooms, ["b0", "b1", "b2", "b3", "b4"], "{got:?}");
    assert_eq!(users, ["u0", "u1", "u2", "u3", "u4"], "{got:?}");
    // By hand: ?session= with the Last-Event-ID of the middle of that; the new stream replaces the
    // old one, which ends.
    let mid = back.last_id.clone().expect("id");
    p.publish("room.live.re", b"c0").await;
    assert_eq!(back.next_push().await, (1000, b"c0".to_vec()));
    let mut third = Sse::open_path(http, &format!("/sse?session={id}&last_event_id={}", urlencode(&mid)), &[]).await.expect("by session");
    assert_eq!(third.next_push().await, (1000, b"c0".to_vec()), "from the event after the id on");
    let rest = back.until_end(WAIT).await;
    assert!(rest.iter().all(|e| e.name != "push"), "the replaced stream got more: {rest:?}");
    // The same session throughout: still one member in the room.
    let (status, v) = post_op(http, &id, 2, b"").await;
    assert_eq!((status, b64(&v["body"])), (200, 1i32.to_be_bytes().to_vec()), "{v}");
}

/// Streams as goim-history provisions them (the real service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_from_history_once_the_session_is_gone() {
    use goim_nats_tests::history::{History, HistoryOpts, JsPub};
    let nats = NatsServer::start().await;
    let _history = History::start(&nats, HistoryOpts::new()).await;
    let edge = Edge::start(&nats, http_edge()).await;
    let http = edge.http_addr();
    let auth = Auth::new(9).room("live://hist").accepts(&[1000]);
    let path = format!("/sse?auth={}", urlencode(&String::from_utf8_lossy(&auth.body())));
    let mut sse = Sse::open_path(http, &path, &[]).await.expect("sse open");
    let id = sse.session.clone();
    let mut js = JsPub::new(&nats).await;
    let room1 = js.seq("room.live.hist", &[], b"r-seen").await;
    let user1 = js.seq("user.9", &[], b"u-seen").await;
    let mut seen = vec![sse.next_push().await.1, sse.next_push().await.1];
    seen.sort();
    assert_eq!(seen, [b"r-seen".to_vec(), b"u-seen".to_vec()]);
    let last = sse.last_id.clone().expect("id");
    assert!(last.ends_with(&format!(":{room1}:{user1}:")), "the id carries the positions: {last}");
    drop(sse);
    // Gone after the grace period (500 ms); meanwhile 20 stored messages.
    until_unknown(http, &id).await;
    for i in 0..10 {
        js.seq("room.live.hist", &[], format!("r{i}").as_bytes()).await;
        js.seq("user.9", &[], format!("u{i}").as_bytes()).await;
    }
    let mut back = Sse::open_path(http, &path, &[("Last-Event-ID", &last)]).await.expect("resume");
    assert_ne!(back.session, id);
    assert_eq!(back.first["previous"], json!({"ok": false, "reason": "gone"}), "{}", back.first);
    let mut got = Vec::new();
    let answer = loop {
        let e = back.next_event().await;
        match e.name.as_str() {
            "push" => got.push(String::from_utf8(e.body()).unwrap()),
            "reply" if e.op() == 20 => break serde_json::from_slice::<Value>(&e.body()).expect("op 20 JSON"),
            _ => panic!("unexpected {e:?}"),
        }
    };
    assert_eq!(answer["room"], json!({"ok": true, "replayed": 10}), "{answer}");
    assert_eq!(answer["user"], json!({"ok": true, "replayed": 10}), "{answer}");
    let rooms: Vec<String> = got.iter().filter(|b| b.starts_with('r')).cloned().collect();
    let users: Vec<String> = got.iter().filter(|b| b.starts_with('u')).cloned().collect();
    assert_eq!(rooms, (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>());
    assert_eq!(users, (0..10).map(|i| format!("u{i}")).collect::<Vec<_>>());
    // Live after the replay; and an explicit `resume` in the auth body works over SSE too.
    js.seq("room.live.hist", &[], b"live").await;
    assert_eq!(back.next_push().await.1, b"live".to_vec());
    let explicit = json!({"mid": 9, "room_id": "live://hist", "accepts": [1000], "resume": {"room": room1}}).to_string();
    let mut again = Sse::open(http, explicit.as_bytes()).await.expect("explicit resume");
    let mut n = 0;
    loop {
        let e = again.next_event().await;
        if e.name == "reply" && e.op() == 20 {
            let a: Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(a["room"], json!({"ok": true, "replayed": 11}), "{a}");
            break;
        }
        n += 1;
    }
    assert_eq!(n, 11);
}

/// A replay ten times the write bound reaches a reading client whole (paced by it, as over TCP),
/// over SSE and over long-polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_larger_than_the_bound_is_paced_not_cut_off() {
    use goim_nats_tests::history::{History, HistoryOpts, JsPub};
    let nats = NatsServer::start().await;
    let _history = History::start(&nats, HistoryOpts::new()).await;
    let edge = Edge::start(&nats, http_edge().max_outbound_bytes(8192)).await;
    let http = edge.http_addr();
    let mut js = JsPub::new(&nats).await;
    let from = js.seq("room.live.big", &[], b"seen").await;
    let want: Vec<String> = (0..200).map(|i| format!("{i:04}{}", "x".repeat(400))).collect();
    for body in &want {
        js.seq("room.live.big", &[], body.as_bytes()).await;
    }
    let auth = json!({"mid": 11, "room_id": "live://big", "resume": {"room": from}}).to_string();

    let mut sse = Sse::open(http, auth.as_bytes()).await.expect("sse open");
    let mut got = Vec::new();
    let answer = loop {
        let e = sse.next_event().await;
        match (e.name.as_str(), e.op()) {
            ("push", _) => got.push(String::from_utf8(e.body()).unwrap()),
            ("reply", 20) => break serde_json::from_slice::<Value>(&e.body()).unwrap(),
            _ => panic!("unexpected {e:?}"),
        }
    };
    assert_eq!(answer["room"], json!({"ok": true, "replayed": 200}), "{answer}");
    assert!(got == want, "SSE: {} of 200 replayed, in order?", got.len());

    let mut poller = Poller::open(http, auth.as_bytes()).await.expect("poll open");
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    let answer = 'outer: loop {
        assert!(Instant::now() < deadline, "{} replayed, no op 20", got.len());
        for (op, _, body) in poller.poll(1000).await {
            if op == 20 {
                break 'outer serde_json::from_slice::<Value>(&body).unwrap();
            }
            got.push(String::from_utf8(body).unwrap());
        }
    };
    assert_eq!(answer["room"], json!({"ok": true, "replayed": 200}), "{answer}");
    assert!(got == want, "long-poll: {} of 200 replayed, in order?", got.len());
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["closed"]["slow_consumer"], 0, "{stats}");
}

/// SIGTERM: an SSE client is told `shutdown` (its close event) before the edge exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_tells_sse_clients() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, http_edge().with("edge", "drain_ms", "200")).await;
    let mut sse = Sse::open(edge.http_addr(), &Auth::new(1).room("live://down").body()).await.expect("sse open");
    // terminate() blocks (it waits for the exit): off the runtime's workers, while the stream is read.
    let exited = tokio::task::spawn_blocking(move || {
        let st = edge.terminate();
        (edge, st)
    });
    let events = sse.until_end(WAIT).await;
    let close = events.iter().find(|e| e.name == "close").unwrap_or_else(|| panic!("no close event: {events:?}"));
    assert_eq!(close.data["reason"], "shutdown", "{close:?}");
    let (_edge, st) = exited.await.expect("terminate");
    assert!(st.is_some_and(|s| s.success()), "the edge exits cleanly: {st:?}");
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
