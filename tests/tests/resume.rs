//! History on the edge: stored subjects are followed through their sequenced `live.` copies, pushes
//! carry the stream sequence in the header seq field, a client that reconnects with the last
//! sequences it saw (auth body `resume`) gets everything it missed — in order, no duplicates, on any
//! edge — or an explicit recovery-failed answer; concurrent resumes share one JetStream fetch; gaps in
//! the live copy (a NATS restart) are filled from JetStream.
//!
//! The streams and `history.info` are set up here directly (the contract of subjects.md §9), so these
//! tests exercise the edge alone; goim-history's own provisioning is tested in history.rs.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use goim_nats_tests::goim::*;
use goim_nats_tests::*;
use serde_json::{json, Value};

const CLASS_ROOM: u32 = 1;
const CLASS_USER: u32 = 2;

/// Streams as goim-history provisions them, and a `history.info` responder.
struct Stored {
    _responder: tokio::task::JoinHandle<()>,
    js: jetstream::Context,
}

async fn stored(nats: &NatsServer, room_cap: i64) -> Stored {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    for (name, subjects, cap) in [("GOIM_ROOMS", "room.>", room_cap), ("GOIM_USERS", "user.>", 10_000), ("GOIM_BROADCAST", "broadcast", 10_000)] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            max_messages_per_subject: cap,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            republish: Some(stream::Republish { source: ">".into(), destination: "live.>".into(), headers_only: false }),
            ..Default::default()
        })
        .await
        .expect("create stream");
    }
    let info = json!({
        "streams": {
            "rooms": {"stream": "GOIM_ROOMS", "subjects": ["room.>"]},
            "users": {"stream": "GOIM_USERS", "subjects": ["user.>"]},
            "broadcast": {"stream": "GOIM_BROADCAST", "subjects": ["broadcast"]},
        },
        "max_resume": 10000,
    });
    let mut sub = client.subscribe("history.info").await.expect("subscribe");
    client.flush().await.expect("flush");
    let responder = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = client.publish(reply, info.to_string().into()).await;
            }
        }
    });
    Stored { _responder: responder, js }
}

impl Stored {
    /// Publish and wait for JetStream's acknowledgement; returns the stream sequence.
    async fn push(&self, subject: &str, body: String) -> u64 {
        self.js.publish(subject.to_string(), body.into()).await.expect("publish").await.expect("ack").sequence
    }
}

/// The class and 30-bit sequence of a push's seq field.
fn decode(seq: i32) -> (u32, u64) {
    let v = seq as u32;
    (v >> 30, (v & ((1 << 30) - 1)) as u64)
}

/// Read packets until `pred` says stop; pushes (op ≥ 1000) are collected as (class, seq, body).
async fn collect(c: &mut Client, mut want: impl FnMut(&[(u32, u64, String)], &Packet) -> bool) -> Vec<(u32, u64, String)> {
    let mut got = Vec::new();
    loop {
        let p = c.recv_packet(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{}: {e:?} after {} pushes", c.label, got.len()));
        let packets = if p.op == OP_RAW { unwrap_raw(&p.body, &c.label) } else { vec![p] };
        for p in packets {
            if p.op >= 1000 {
                let (class, seq) = decode(p.seq);
                got.push((class, seq, p.body_str()));
            }
            if !want(&got, &p) {
                return got;
            }
        }
    }
}

async fn auth_raw(c: &mut Client, body: Value) -> Packet {
    c.send(&Packet::new(1, OP_AUTH, 1, body.to_string().into_bytes())).await;
    let p = c.recv_packet(Duration::from_secs(10)).await.expect("auth reply");
    assert_eq!(p.op, OP_AUTH_REPLY, "{p:?}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_everything_it_missed_on_another_edge() {
    let nats = NatsServer::start().await;
    let st = stored(&nats, 10_000).await;
    let a = Edge::start(&nats, EdgeOpts::new()).await;
    let b = Edge::start(&nats, EdgeOpts::new()).await;

    // Connected on edge A: live pushes carry their stream sequence.
    let mut first = Client::connect_tcp(a.tcp_addr()).await.with_label("on-a");
    auth_raw(&mut first, json!({"mid": 7, "room_id": "live://h", "accepts": [1000]})).await;
    let room_seq = st.push("room.live.h", "before-room".into()).await;
    let user_seq = st.push("user.7", "before-user".into()).await;
    let seen = collect(&mut first, |got, _| got.len() < 2).await;
    let mut seen = seen.clone();
    seen.sort();
    assert_eq!(seen, vec![(CLASS_ROOM, room_seq, "before-room".into()), (CLASS_USER, user_seq, "before-user".into())]);
    drop(first);

    // Away: 1,000 messages to the room and 1,000 to the user.
    for i in 0..1000 {
        st.push("room.live.h", format!("r{i}")).await;
        st.push("user.7", format!("u{i}")).await;
    }

    // Back on edge B with the last sequences it saw (the 30-bit values of the seq field).
    let mut back = Client::connect_tcp(b.tcp_addr()).await.with_label("on-b");
    auth_raw(&mut back, json!({"mid": 7, "room_id": "live://h", "accepts": [1000], "resume": {"room": room_seq, "user": user_seq}})).await;
    let mut resume_answer = None;
    let replayed = collect(&mut back, |_, p| {
        if p.op == 20 {
            resume_answer = Some(serde_json::from_slice::<Value>(&p.body).expect("op 20 JSON"));
            return false;
        }
        true
    })
    .await;
    let answer = resume_answer.expect("op 20");
    assert_eq!(answer["room"], json!({"ok": true, "replayed": 1000}), "{answer}");
    assert_eq!(answer["user"], json!({"ok": true, "replayed": 1000}), "{answer}");
    for (class, prefix) in [(CLASS_ROOM, 'r'), (CLASS_USER, 'u')] {
        let bodies: Vec<&str> = replayed.iter().filter(|(c, _, _)| *c == class).map(|(_, _, b)| b.as_str()).collect();
        let want: Vec<String> = (0..1000).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(bodies, want.iter().map(String::as_str).collect::<Vec<_>>(), "class {class}: in order, no gaps, no duplicates");
        let seqs: Vec<u64> = replayed.iter().filter(|(c, _, _)| *c == class).map(|(_, s, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequences increase");
    }
    assert_eq!(replayed.len(), 2000);

    // Then live messages, with their sequences.
    let live = st.push("room.live.h", "live-after".into()).await;
    let next = collect(&mut back, |got, _| got.is_empty()).await;
    assert_eq!(next, vec![(CLASS_ROOM, live, "live-after".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_past_the_gap_is_an_explicit_recovery_failure() {
    let nats = NatsServer::start().await;
    let st = stored(&nats, 10).await; // rooms keep 10 messages per subject
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let last = st.push("room.live.ret", "seen".into()).await;
    for i in 0..50 {
        st.push("room.live.ret", format!("m{i}")).await;
    }
    let mut c = Client::connect_tcp(edge.tcp_addr()).await.with_label("late");
    auth_raw(&mut c, json!({"mid": 1, "room_id": "live://ret", "resume": {"room": last}})).await;
    let p = c.recv_packet(Duration::from_secs(10)).await.expect("op 20");
    assert_eq!(p.op, 20, "recovery failure comes before anything else: {p:?}");
    let answer: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(answer["room"]["ok"], false, "{answer}");
    assert_eq!(answer["room"]["reason"], "retention", "{answer}");
    // Live delivery goes on after the signal.
    let live = st.push("room.live.ret", "after".into()).await;
    let got = collect(&mut c, |got, _| got.is_empty()).await;
    assert_eq!(got, vec![(CLASS_ROOM, live, "after".into())]);
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["recovery_failed"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_storm_costs_one_jetstream_fetch() {
    let nats = NatsServer::start().await;
    let st = stored(&nats, 10_000).await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let from = st.push("room.live.storm", "seen".into()).await;
    for i in 0..50 {
        st.push("room.live.storm", format!("m{i}")).await;
    }
    let clients = futures_util::future::join_all((0..200).map(|i| {
        let edge = &edge;
        async move {
            let mut c = Client::connect_tcp(edge.tcp_addr()).await.with_label(&format!("storm-{i}"));
            auth_raw(&mut c, json!({"mid": 0, "room_id": "live://storm", "resume": {"room": from}})).await;
            let got = collect(&mut c, |_, p| p.op != 20).await;
            assert_eq!(got.len(), 50, "client {i} replayed {}", got.len());
            assert!(got.iter().enumerate().all(|(k, (_, _, b))| *b == format!("m{k}")), "client {i}: order");
            c
        }
    }))
    .await;
    assert_eq!(clients.len(), 200);
    let stats = edge.stats(&nats).await;
    assert!(stats["history_fetches"].as_u64().unwrap() <= 1, "200 resumes of one gap made {} JetStream fetches", stats["history_fetches"]);
    assert_eq!(stats["replayed"], 200 * 50, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_nothing_jetstream_acknowledged() {
    let mut nats = NatsServer::start().await;
    let st = stored(&nats, 10_000).await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut c = Client::connect_tcp(edge.tcp_addr()).await.with_label("through-restart");
    auth_raw(&mut c, json!({"mid": 3, "room_id": "live://r"})).await;
    let mut acked = Vec::new();
    for i in 0..100 {
        st.push("room.live.r", format!("a{i}")).await;
        acked.push(format!("a{i}"));
    }
    nats.restart().await;
    // Publishing resumes once JetStream is back (bounded retries); each ack counts.
    let client = async_nats::connect(nats.url()).await.expect("reconnect publisher");
    let js = jetstream::new(client);
    for i in 0..100 {
        let body = format!("b{i}");
        let mut tries = 0;
        loop {
            tries += 1;
            match js.publish("room.live.r", body.clone().into()).await {
                Ok(ack) => match ack.await {
                    Ok(_) => break,
                    Err(e) if tries < 100 => { let _ = e; tokio::time::sleep(Duration::from_millis(100)).await }
                    Err(e) => panic!("no ack after restart: {e}"),
                },
                Err(e) if tries < 100 => { let _ = e; tokio::time::sleep(Duration::from_millis(100)).await }
                Err(e) => panic!("cannot publish after restart: {e}"),
            }
        }
        acked.push(body);
    }
    // The client stayed connected to the edge; everything acknowledged arrives, in order, once.
    let got = collect(&mut c, |got, _| got.len() < acked.len()).await;
    let bodies: Vec<String> = got.into_iter().map(|(_, _, b)| b).collect();
    assert_eq!(bodies, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_during_a_resume_come_after_the_replay_exactly_once() {
    let nats = NatsServer::start().await;
    let st = stored(&nats, 10_000).await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    // Another member keeps the room's live copy flowing on this edge (and its ring warm).
    let mut other = Client::connect_tcp(edge.tcp_addr()).await.with_label("other");
    auth_raw(&mut other, json!({"mid": 0, "room_id": "live://mix"})).await;
    let from = st.push("room.live.mix", "seen".into()).await;
    for i in 0..600 {
        st.push("room.live.mix", format!("m{i}")).await;
    }
    // Live pushes keep coming while the client resumes.
    let publisher = {
        let js = st.js.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                js.publish("room.live.mix", format!("m{}", 600 + i).into()).await.expect("publish").await.expect("ack");
            }
        })
    };
    let mut c = Client::connect_tcp(edge.tcp_addr()).await.with_label("resumer");
    auth_raw(&mut c, json!({"mid": 0, "room_id": "live://mix", "resume": {"room": from}})).await;
    publisher.await.unwrap();
    let got = collect(&mut c, |got, _| got.len() < 900).await;
    let bodies: Vec<String> = got.iter().map(|(_, _, b)| b.clone()).collect();
    let want: Vec<String> = (0..900).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want, "replay then live: in order, each once");
    drop(other);
}

/// With the real goim-history: its streams drive the edge (sequences, resume), and op 18 reads page
/// through history.get scoped by the connection's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_over_the_client_op_with_the_real_history_service() {
    use goim_nats_tests::history::{bodies, seqs, History, HistoryOpts};
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let _history = History::start(&nats, HistoryOpts::new().key(&keys, "k1")).await;
    let edge = Edge::start(
        &nats,
        EdgeOpts::new()
            .with("auth", "mode", "\"token\"")
            .with("auth", "keys_from_nats", "false")
            .extra_toml(&format!("[[auth.keys]]\nid = \"k1\"\nfile = {:?}\n", keys.public("k1").display().to_string())),
    )
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let mut sent = Vec::new();
    for i in 0..120 {
        let seq = js.publish("room.live.hist", format!("h{i}").into()).await.unwrap().await.unwrap().sequence;
        sent.push(seq);
    }
    let (token, _) = keys.mint("k1", &goim_token::Grant { mid: 5, rooms: vec!["live://hist".into()], ..Default::default() });
    let mut c = Client::connect_tcp(edge.tcp_addr()).await.with_label("reader");
    auth_raw(&mut c, json!({"mid": 5, "room_id": "live://hist", "token": token})).await;

    // Newest 50, then page back with before = the oldest seq seen.
    let read = |before: Option<u64>| {
        let mut q = json!({"target": "room", "limit": 50});
        if let Some(b) = before {
            q["before"] = b.into();
        }
        q.to_string().into_bytes()
    };
    let mut pages = Vec::new();
    let mut before = None;
    for _ in 0..3 {
        let r = c.request(18, &read(before)).await;
        assert_eq!(r.op, 19, "{r:?}");
        let page: Value = serde_json::from_slice(&r.body).unwrap();
        before = seqs(&page).first().copied();
        pages.push(page);
    }
    let all: Vec<u64> = pages.iter().rev().flat_map(seqs).collect();
    assert_eq!(all, sent, "three pages (20 + 50 + 50) cover every message once, in order");
    assert_eq!(bodies(&pages[0]).last().unwrap(), "h119");
    assert_eq!(pages[2]["more"], false, "{}", pages[2]);

    // The token scopes the read: no user history for another room's member, and the client op can only
    // name its own room/user, so a token without the room is refused by history itself.
    let (other_token, _) = keys.mint("k1", &goim_token::Grant { mid: 6, ..Default::default() });
    let mut other = Client::connect_tcp(edge.tcp_addr()).await.with_label("no-room");
    auth_raw(&mut other, json!({"mid": 6, "token": other_token})).await;
    let r = other.request(18, br#"{"target":"room"}"#).await;
    let answer: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(answer["error"].as_str().unwrap_or("").contains("not in a room"), "{answer}");
    let r = other.request(18, br#"{"target":"user","limit":5}"#).await;
    let answer: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(answer.get("messages").is_some() || answer.get("error").is_some(), "{answer}");
    let r = other.request(18, b"not json").await;
    let answer: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(answer["error"].as_str().unwrap_or("").contains("invalid history request"), "{answer}");

    // Live pushes of the stored room carry the room class and their sequence.
    let live = js.publish("room.live.hist", "live".into()).await.unwrap().await.unwrap().sequence;
    let got = collect(&mut c, |got, _| got.is_empty()).await;
    assert_eq!(got, vec![(CLASS_ROOM, live, "live".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_larger_than_the_outbound_bound_is_paced_not_cut_off() {
    let nats = NatsServer::start().await;
    let st = stored(&nats, 100_000).await;
    // 64 KiB outbound bound; 3,000 × ~200 B ≈ 600 KiB to replay.
    let edge = Edge::start(&nats, EdgeOpts::new().max_outbound_bytes(65_536)).await;
    let from = st.push("room.live.big", "seen".into()).await;
    let pad = "x".repeat(180);
    for i in 0..3000 {
        st.push("room.live.big", format!("{i:05}{pad}")).await;
    }
    let mut c = Client::connect_tcp(edge.tcp_addr()).await.with_label("big-resume");
    auth_raw(&mut c, json!({"mid": 0, "room_id": "live://big", "resume": {"room": from}})).await;
    let mut answer = None;
    let got = collect(&mut c, |_, p| {
        if p.op == 20 {
            answer = Some(serde_json::from_slice::<Value>(&p.body).unwrap());
            return false;
        }
        true
    })
    .await;
    assert_eq!(answer.unwrap()["room"], json!({"ok": true, "replayed": 3000}));
    assert_eq!(got.len(), 3000);
    assert!(got.iter().enumerate().all(|(i, (_, _, b))| b.starts_with(&format!("{i:05}"))), "in order");
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["closed"]["slow_consumer"], 0, "{stats}");
}
