//! Long-polling (issue 9; `edge/src/transport/http/poll.rs`) against a real nats-server and edge: the
//! same pushes a TCP client gets, goim's replies to POSTed ops, 1,000 polls without loss while pushes
//! flow (lost responses included), the write bound, expiry of abandoned sessions, the admission
//! limits, clear 4xx answers, tokens, and an edge serving HTTP alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use goim_nats_tests::goim::*;
use goim_nats_tests::authsvc::claims_for;
use goim_nats_tests::http::*;
use goim_nats_tests::*;
use serde_json::json;
use tokio::time::Instant;

fn poll_edge() -> EdgeOpts {
    EdgeOpts::new().with("listen", "http", "\"127.0.0.1:0\"")
}

/// The edge's Prometheus sample `name`.
async fn sample(edge: &Edge, name: &str) -> u64 {
    let (status, _, text) = exchange(edge.http_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    metric(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Wait (polling /metrics, within `WAIT`) until sample `name` satisfies `ok`.
async fn until_sample(edge: &Edge, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = sample(edge, name).await;
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} = {v} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_client_gets_what_a_tcp_client_gets_and_drives_its_session_by_post() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, poll_edge()).await;
    let mut poller = Poller::open(edge.http_addr(), &Auth::new(42).room("live://1").accepts(&[1000]).body()).await.expect("poll open");
    let mut tcp = Client::connect_auth(Transport::Tcp, &edge, Auth::new(42).room("live://1").accepts(&[1000])).await.with_label("tcp");

    // Room pushes ignore accepts; user and broadcast pushes honour them (the 1002s are not accepted).
    let mut p = nats.raw().await;
    p.hpublish("room.live.1", &[("Goim-Op", "1001")], b"room-1001").await;
    p.publish("user.42", b"user-1000").await;
    p.hpublish("user.42", &[("Goim-Op", "1002")], b"user-1002").await;
    p.publish("broadcast", &[0, 1, 2, 255]).await;
    p.hpublish("broadcast", &[("Goim-Op", "1002")], b"bc-1002").await;
    p.publish("user.42", b"user-marker").await;
    p.publish("broadcast", b"bc-marker").await;
    let mut got_poll: Vec<(i64, Vec<u8>)> = poller.pushes(5).await.into_iter().map(|(op, _, body)| (op, body)).collect();
    let mut got_tcp = Vec::new();
    for _ in 0..5 {
        let t = tcp.next_push().await;
        got_tcp.push((i64::from(t.op), t.body));
    }
    got_poll.sort();
    got_tcp.sort();
    assert_eq!(got_poll, got_tcp, "long-poll and TCP clients in the same room got different pushes");
    assert!(got_poll.contains(&(1001, b"room-1001".to_vec())) && got_poll.contains(&(1000, vec![0, 1, 2, 255])), "{got_poll:?}");
    assert!(poller.poll(0).await.is_empty(), "nothing more (the 1002s are not accepted)");

    assert_eq!(poller.reply(2, b"").await, (3, 2i32.to_be_bytes().to_vec()), "heartbeat: two in live://1");
    assert_eq!(poller.reply(14, b"1002").await, (15, b"1002".to_vec()));
    p.hpublish("user.42", &[("Goim-Op", "1002")], b"now-1002").await;
    assert_eq!(poller.pushes(1).await[0].2, b"now-1002".to_vec());
    assert_eq!(poller.reply(16, b"1002").await, (17, b"1002".to_vec()));
    assert_eq!(poller.reply(4, b"hello").await, (4, vec![]));
    assert_eq!(poller.reply(12, b"live://2").await, (13, b"live://2".to_vec()));
    p.publish("room.live.1", b"old-room").await;
    tcp.expect_push(1000, b"old-room").await;
    p.publish("room.live.2", b"new-room").await;
    assert_eq!(poller.pushes(1).await, vec![(1000, 0, b"new-room".to_vec())]);
    assert_eq!(poller.reply(2, b"").await, (3, 1i32.to_be_bytes().to_vec()), "alone in live://2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_polls_lose_nothing_while_pushes_flow() {
    const POLLS: usize = 1000;
    /// The publisher stays at most this far ahead of the poller: a continuous flow inside the bound.
    const AHEAD: usize = 200;
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, poll_edge()).await;
    let mut poller = Poller::open(edge.http_addr(), &Auth::new(1).room("live://flow").body()).await.expect("poll open");
    let tcp = Client::connect_auth(Transport::Tcp, &edge, Auth::new(2).room("live://flow")).await.with_label("tcp");
    let witness = tokio::spawn(async move {
        let mut tcp = tcp;
        let mut got = Vec::new();
        loop {
            let p = tcp.try_next_push(Duration::from_secs(30)).await.expect("tcp: the flow stopped before its end marker");
            if p.body == b"end" {
                return got;
            }
            got.push(String::from_utf8(p.body).expect("utf-8"));
        }
    });
    let (received, mut progress) = tokio::sync::watch::channel(0usize);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut p = nats.raw().await;
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if progress.wait_for(|r| sent < r + AHEAD).await.is_err() {
                    break;
                }
                p.publish("room.live.flow", format!("m{sent}").as_bytes()).await;
                sent += 1;
            }
            p.publish("room.live.flow", b"end").await;
            sent
        })
    };
    let mut got: Vec<String> = Vec::new();
    fn take(events: Vec<Polled>, got: &mut Vec<String>) {
        for (op, _, body) in events {
            assert_eq!(op, 1000);
            got.push(String::from_utf8(body).expect("utf-8"));
        }
    }
    let started = Instant::now();
    for k in 0..POLLS {
        if k % 25 == 13 {
            // A response lost on the way: the same ack again brings the same events (and maybe more).
            let (status, v) = poller.poll_raw(poller.ack, 5000).await;
            assert_eq!(status, 200, "{v}");
            let lost = parse_events(&v);
            let again = poller.poll(5000).await;
            assert!(again.len() >= lost.len() && again[..lost.len()] == lost[..], "poll {k}: re-sent {again:?} after {lost:?}");
            take(again, &mut got);
        } else {
            let events = poller.poll(5000).await;
            take(events, &mut got);
        }
        let _ = received.send(got.len());
    }
    stop.store(true, Ordering::Relaxed);
    // Unblock a publisher waiting for progress.
    let _ = received.send(usize::MAX / 2);
    let published = publisher.await.expect("publisher");
    let deadline = Instant::now() + WAIT;
    let mut ended = false;
    while !ended {
        assert!(Instant::now() < deadline, "{} of {published} after the flow stopped", got.len());
        for (_, _, body) in poller.poll(1000).await {
            if body == b"end" {
                ended = true;
            } else {
                got.push(String::from_utf8(body).expect("utf-8"));
            }
        }
    }
    let want: Vec<String> = (0..published).map(|i| format!("m{i}")).collect();
    assert!(published > POLLS, "the flow was continuous: {published} pushes over {POLLS} polls");
    assert_eq!(got.len(), want.len(), "long-poll: {} of {published}", got.len());
    assert!(got == want, "long-poll: gaps, duplicates or reordering (first difference at {:?})", got.iter().zip(&want).position(|(a, b)| a != b));
    let tcp_got = witness.await.expect("tcp witness");
    assert!(tcp_got == want, "the TCP client in the same room got something else ({} pushes)", tcp_got.len());
    eprintln!("{POLLS} polls, {published} pushes in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_that_does_not_poll_is_closed_as_slow_consumer_and_told_so() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, poll_edge().max_outbound_bytes(8192)).await;
    let poller = Poller::open(edge.http_addr(), &Auth::new(5).room("live://slow").body()).await.expect("poll open");
    let mut p = nats.raw().await;
    for _ in 0..20 {
        p.publish_nowait("room.live.slow", &[b'z'; 1000]).await;
    }
    p.flush().await;
    until_sample(&edge, "goim_edge_connections", |n| n == 0).await;
    let (status, v) = poller.poll_raw(0, 0).await;
    assert_eq!((status, v["reason"].as_str()), (410, Some("slow_consumer")), "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("slow_consumer"), "{v}");
    let (status, v) = poller.poll_raw(0, 0).await;
    assert_eq!(status, 404, "told once, then unknown: {v}");
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["closed"]["slow_consumer"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_sessions_expire_and_their_memory_goes() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, poll_edge().with("listen", "http_session_grace_ms", "1500")).await;
    let http = edge.http_addr();
    let mut pollers = Vec::new();
    for i in 0..40 {
        pollers.push(Poller::open(http, &Auth::new(i).room("live://gone").body()).await.expect("poll open"));
    }
    for i in 0..10 {
        drop(Sse::open(http, &Auth::new(100 + i).room("live://gone").body()).await.expect("sse open"));
    }
    assert!(sample(&edge, "goim_edge_http_sessions").await >= 25, "the sessions are held for a while");
    // Nobody polls: closed after the grace period (client_gone), and the room is empty.
    until_sample(&edge, "goim_edge_connections", |n| n == 0).await;
    // The last one closed last: still answering 410 (for the grace period) with its reason.
    let last = &pollers[39];
    let (status, v) = last.poll_raw(0, 0).await;
    assert_eq!((status, v["reason"].as_str()), (410, Some("client_gone")), "an expired session says why: {v}");
    assert_eq!(last.poll_raw(0, 0).await.0, 404);
    // Then forgotten: the map is empty again.
    until_sample(&edge, "goim_edge_http_sessions", |n| n == 0).await;
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["closed"]["client_gone"], 50, "{stats}");
    let tcp = Client::connect_auth(Transport::Tcp, &edge, Auth::new(999).room("live://gone")).await;
    let mut tcp = tcp;
    assert_eq!(tcp.heartbeat().await, 1, "nobody else left in the room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_poll_requests_get_clear_4xx_answers() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, poll_edge()).await;
    let http = edge.http_addr();
    let mut poller = Poller::open(http, &Auth::new(3).room("live://bad").body()).await.expect("poll open");
    let fake = Poller { http, session: "0123456789abcdef0123456789abcdef".into(), ack: 0 };
    assert_eq!(fake.poll_raw(0, 0).await.0, 404, "unknown session");
    assert_eq!(fake.op(2, b"").await.0, 404);
    let (status, v) = poller.poll_raw(5, 0).await;
    assert_eq!(status, 400, "an ack beyond what was handed out: {v}");
    let (status, _, body) = exchange(http, "GET", &format!("/session/{}/poll?ack=x", poller.session), &[], b"").await;
    assert_eq!(status, 400, "{body}");
    // Sessions are of one kind.
    let sse = Sse::open(http, &Auth::new(4).body()).await.expect("sse open");
    assert_eq!(Poller { http, session: sse.session.clone(), ack: 0 }.poll_raw(0, 0).await.0, 409);
    assert_eq!(Sse::open_path(http, &format!("/sse?session={}", poller.session), &[]).await.err().map(|e| e.0), Some(409));
    // Bodies over goim's 4096 bytes, bad auth JSON, no auth.
    assert_eq!(Poller::open(http, &vec![b' '; 5000]).await.err().map(|e| e.0), Some(413));
    assert_eq!(poller.op(4, &vec![b'x'; 5000]).await.0, 413);
    assert_eq!(Poller::open(http, b"{nope").await.err().map(|e| e.0), Some(400));
    assert_eq!(exchange(http, "GET", "/poll", &[], b"").await.0, 400);
    // timeout_ms=0 answers at once; the session is unharmed by all that.
    let t0 = Instant::now();
    assert!(poller.poll(0).await.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(poller.reply(2, b"").await.0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_refuses_forged_and_out_of_scope_tokens_for_polls() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1", "k9"]);
    let authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    let edge = Edge::start(&nats, poll_edge().with("auth", "mode", "\"token\"")).await;
    let http = edge.http_addr();
    let token = authsvc.token(json!({"mid": 7, "rooms": ["live://1"], "accepts": [1000]})).await;
    // Signed with another key under k1's id.
    let forged = keys.forge("k1", "k9", claims_for(7, 600));
    let refused = |r: Result<Poller, (u16, String)>| r.err().map(|e| e.0);
    assert_eq!(refused(Poller::open(http, &Auth::new(7).room("live://1").token(&forged).body()).await), Some(401));
    assert_eq!(refused(Poller::open(http, &Auth::new(7).room("live://1").body()).await), Some(401), "no token");
    assert_eq!(refused(Poller::open(http, &Auth::new(7).room("live://2").token(&token).body()).await), Some(403), "room out of scope");
    let mut poller = Poller::open(http, &Auth::new(7).room("live://1").accepts(&[1000]).token(&token).body()).await.expect("valid token");
    nats.publish("user.7", b"to-7").await;
    assert_eq!(poller.pushes(1).await, vec![(1000, 0, b"to-7".to_vec())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sessions_meet_the_admission_limits() {
    let nats = NatsServer::start().await;
    let http_only = || poll_edge().with("listen", "tcp", "\"\"").with("listen", "ws", "\"\"");
    // An edge serving HTTP alone; max_connections counts its sessions.
    let edge = Edge::start(&nats, http_only().with("limits", "max_connections", "2")).await;
    assert!(edge.tcp().is_none() && edge.ws().is_none());
    let http = edge.http_addr();
    let a = Poller::open(http, &Auth::new(1).body()).await.expect("first");
    let _b = Sse::open(http, &Auth::new(2).body()).await.expect("second");
    let (status, body) = Poller::open(http, &Auth::new(3).body()).await.err().expect("a third is refused");
    assert!(status == 503 && body.contains("max_connections"), "{status} {body}");
    assert_eq!(a.reply(2, b"").await.0, 3, "the admitted sessions work");

    // Connects per address per second: a burst of 1 (the next token comes a second later).
    let edge = Edge::start(&nats, poll_edge().with("limits", "connects_per_ip_per_sec", "1")).await;
    let http = edge.http_addr();
    Poller::open(http, &Auth::new(1).body()).await.expect("first");
    let (status, body) = Poller::open(http, &Auth::new(2).body()).await.err().expect("a second at once is refused");
    assert!(status == 429 && body.contains("connects_per_ip_per_sec"), "{status} {body}");

    // Upstream packets per second: refused with 429, the session stays.
    let edge = Edge::start(&nats, poll_edge().with("limits", "max_packets_per_sec", "3")).await;
    let poller = Poller::open(edge.http_addr(), &Auth::new(1).body()).await.expect("open");
    let mut refused = 0;
    for _ in 0..10 {
        let (status, v) = poller.op(2, b"").await;
        if status == 429 {
            assert!(v["error"].as_str().unwrap_or("").contains("max_packets_per_sec"), "{v}");
            refused += 1;
        } else {
            assert_eq!(status, 200, "{v}");
        }
    }
    assert!(refused >= 4, "10 heartbeats within two one-second windows of 3: {refused} refused");
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = poller.op(2, b"").await;
        if status == 200 {
            break;
        }
        assert!(status == 429 && Instant::now() < deadline, "{status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
