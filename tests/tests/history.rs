//! goim-history against a real nats-server: stream provisioning (idempotent, updated on a config
//! change, never deleting), republish with per-subject sequences, history pages over NATS and HTTP,
//! token scoping, dedup by Nats-Msg-Id, retention per class, key announcements from authsvc, the
//! NATS service registration, a memory stream re-created after a server restart, and pages cut by
//! NATS' max_payload.

use std::time::Duration;

use goim_nats_tests::authsvc::{AUDIENCE, ISSUER};
use goim_nats_tests::history::*;
use goim_nats_tests::*;
use goim_token::{now_secs, Claims, Grant, PublishRights};
use serde_json::{json, Value};

fn grant(mid: i64, rooms: &[&str], prefixes: &[&str]) -> Grant {
    Grant {
        mid,
        rooms: rooms.iter().map(|s| s.to_string()).collect(),
        room_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        accepts: vec![1000],
        ..Default::default()
    }
}

/// URL-encode a query value (room ids hold `:` and `/`).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Poll (bounded) until the stream holds `count` messages of `subject`.
async fn wait_subject_count(nats: &NatsServer, stream: &str, subject: &str, count: u64) {
    poll(&format!("{stream} holds {count} of {subject}"), 100, Duration::from_millis(50), || async {
        let info = stream_info(nats, stream, Some(subject)).await;
        (info["state"]["subjects"][subject].as_u64().unwrap_or(0) == count).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_idempotent_follows_the_config_and_never_deletes() {
    let nats = NatsServer::start().await;
    // Two replicas starting at the same moment both come up (one creates, the other finds).
    let (mut a, mut b) = tokio::join!(History::start(&nats, HistoryOpts::new()), History::start(&nats, HistoryOpts::new()));
    assert!(a.log_contains("history stream created") || b.log_contains("history stream created"));
    a.kill();
    b.kill();
    for (stream, subject) in [("GOIM_ROOMS", "room.>"), ("GOIM_USERS", "user.>"), ("GOIM_BROADCAST", "broadcast")] {
        let c = &stream_info(&nats, stream, None).await["config"];
        assert_eq!(c["subjects"], json!([subject]), "{stream}: {c}");
        assert_eq!(c["max_msgs_per_subject"], 10_000, "{stream}: {c}");
        assert_eq!(c["discard"], "old", "{stream}: {c}");
        assert_eq!(c["retention"], "limits", "{stream}: {c}");
        assert_eq!(c["storage"], "file", "{stream}: {c}");
        assert_eq!(c["num_replicas"], 1, "{stream}: {c}");
        assert_eq!(c["allow_direct"], true, "{stream}: {c}");
        assert_eq!(c["duplicate_window"], 120_000_000_000u64, "{stream}: {c}");
        assert_eq!(c["republish"]["src"], ">", "{stream}: {c}");
        assert_eq!(c["republish"]["dest"], "live.>", "{stream}: {c}");
    }
    assert_eq!(stream_info(&nats, "GOIM_ROOMS", None).await["config"]["max_age"], 86_400_000_000_000u64);
    assert_eq!(stream_info(&nats, "GOIM_USERS", None).await["config"]["max_age"], 604_800_000_000_000u64);
    let created = stream_info(&nats, "GOIM_ROOMS", None).await["created"].clone();

    let mut js = JsPub::new(&nats).await;
    for i in 1..=3u64 {
        assert_eq!(js.seq("room.live.1", &[], format!("m{i}").as_bytes()).await, i);
    }

    // Same config again: nothing changes.
    let mut h = History::start(&nats, HistoryOpts::new()).await;
    assert!(h.log_contains("GOIM_ROOMS") && h.log_contains("history stream up to date"), "{}", h.log_tail(30));
    assert!(!h.log_contains("history stream created") && !h.log_contains("updated"), "{}", h.log_tail(30));
    h.kill();
    let info = stream_info(&nats, "GOIM_ROOMS", None).await;
    assert_eq!(info["created"], created);
    assert_eq!(info["state"]["messages"], 3);

    // A changed config updates the stream in place: retention applies, the messages that remain and
    // their sequences survive.
    let changed = HistoryOpts::new()
        .with("rooms", "max_msgs_per_subject", "2")
        .with("rooms", "max_age_secs", "3600")
        .with("users", "duplicate_window_secs", "30");
    let mut h = History::start(&nats, changed.clone()).await;
    assert!(h.log_contains("history stream updated to the config"), "{}", h.log_tail(30));
    let info = stream_info(&nats, "GOIM_ROOMS", None).await;
    assert_eq!(info["created"], created, "the stream was not re-created");
    assert_eq!(info["config"]["max_msgs_per_subject"], 2);
    assert_eq!(info["config"]["max_age"], 3_600_000_000_000u64);
    assert_eq!((info["state"]["messages"].as_u64(), info["state"]["first_seq"].as_u64()), (Some(2), Some(2)));
    assert_eq!(stream_info(&nats, "GOIM_USERS", None).await["config"]["duplicate_window"], 30_000_000_000u64);
    let page = nats_read(&nats, json!({"token": HISTORY_API_KEY, "room": "live://1"})).await;
    assert_eq!(bodies(&page), ["m2", "m3"]);
    h.kill();

    // A change nats-server cannot make in place is refused, and the data stays.
    let err = match History::try_start(&nats, changed.with("rooms", "storage", "\"memory\"")).await {
        Ok(_) => panic!("goim-history started although the storage type cannot change"),
        Err(e) => e,
    };
    assert!(err.contains("cannot change the storage"), "{err}");
    let info = stream_info(&nats, "GOIM_ROOMS", None).await;
    assert_eq!((info["config"]["storage"].as_str(), info["state"]["messages"].as_u64()), (Some("file"), Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_pushes_are_republished_with_per_subject_sequences() {
    let nats = NatsServer::start().await;
    let _h = History::start(&nats, HistoryOpts::new()).await;
    let mut live = nats.raw().await;
    live.subscribe("live.>").await;
    let mut js = JsPub::new(&nats).await;
    js.publish("room.x.y", &[("Goim-Op", "1001")], b"a").await;
    js.publish("room.x.z", &[], b"b").await;
    js.publish("room.x.y", &[], b"c").await;
    js.publish("user.5", &[], b"d").await;
    js.publish("broadcast", &[("Goim-Op", "1002")], b"e").await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = live.next_msg(Duration::from_secs(5)).await.unwrap_or_else(|| panic!("only {} republished: {got:?}", got.len()));
        got.push(m);
    }
    let find = |subject: &str, body: &[u8]| {
        got.iter().find(|m| m.subject == subject && m.payload == body).unwrap_or_else(|| panic!("no {subject} {body:?} in {got:?}"))
    };
    // (live subject, body, stream, stream sequence, previous sequence of the same subject, Goim-Op)
    for (subject, body, stream, seq, last, op) in [
        ("live.room.x.y", &b"a"[..], "GOIM_ROOMS", "1", "0", Some("1001")),
        ("live.room.x.z", b"b", "GOIM_ROOMS", "2", "0", None),
        ("live.room.x.y", b"c", "GOIM_ROOMS", "3", "1", None),
        ("live.user.5", b"d", "GOIM_USERS", "1", "0", None),
        ("live.broadcast", b"e", "GOIM_BROADCAST", "1", "0", Some("1002")),
    ] {
        let m = find(subject, body);
        assert_eq!(m.header("Nats-Stream"), Some(stream), "{m:?}");
        assert_eq!(m.header("Nats-Subject"), subject.strip_prefix("live."), "{m:?}");
        assert_eq!(m.header("Nats-Sequence"), Some(seq), "{m:?}");
        assert_eq!(m.header("Nats-Last-Sequence"), Some(last), "{m:?}");
        assert_eq!(m.header("Goim-Op"), op, "{m:?}");
        assert!(m.header("Nats-Time-Stamp").is_some_and(|t| t.contains('T')), "{m:?}");
    }
    // Per-subject order on the live subjects.
    let y: Vec<&[u8]> = got.iter().filter(|m| m.subject == "live.room.x.y").map(|m| m.payload.as_slice()).collect();
    assert_eq!(y, [b"a", b"c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_over_nats_and_http() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let h = History::start(&nats, HistoryOpts::new().key(&keys, "k1")).await;
    let (token, _) = keys.mint("k1", &grant(77, &["live://1000"], &[]));
    let mut js = JsPub::new(&nats).await;
    let mut seqs_1000 = Vec::new();
    for i in 0..120 {
        let op = if i % 2 == 0 { vec![("Goim-Op", "1002")] } else { vec![] };
        seqs_1000.push(js.seq("room.live.1000", &op, format!("m{i}").as_bytes()).await);
        if i % 3 == 0 {
            js.publish("room.live.1001", &[], b"noise").await;
        }
    }
    for i in 0..5 {
        js.publish("user.77", &[], format!("u{i}").as_bytes()).await;
    }
    js.publish("broadcast", &[], b"all").await;

    // Pages of 50, newest first, over NATS; the same pages over HTTP.
    let mut before: Option<u64> = None;
    let mut pages = Vec::new();
    for expect_len in [50usize, 50, 20] {
        let mut req = json!({"token": token, "room": "live://1000"});
        let mut query = format!("room={}", enc("live://1000"));
        if let Some(b) = before {
            req["before"] = json!(b);
            query.push_str(&format!("&before={b}"));
        }
        let page = nats_read(&nats, req).await;
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(expect_len), "{page}");
        let (status, http_page) = h.get_http(&query, Some(&token)).await;
        assert_eq!(status, 200, "{http_page}");
        assert_eq!(http_page, page, "HTTP and NATS answer the same page");
        assert_eq!(page["subject"], "room.live.1000");
        assert_eq!(page["first_seq"].as_u64(), Some(seqs_1000[0]));
        assert_eq!(page["last_seq"].as_u64(), Some(seqs_1000[119]));
        assert_eq!(page["more"], expect_len == 50, "{page}");
        before = Some(seqs(&page)[0]);
        pages.push(page);
    }
    let mut all = Vec::new();
    let mut all_bodies = Vec::new();
    for p in pages.iter().rev() {
        all.extend(seqs(p));
        all_bodies.extend(bodies(p));
    }
    assert_eq!(all, seqs_1000, "three pages hold every message once, oldest first");
    assert_eq!(all_bodies, (0..120).map(|i| format!("m{i}")).collect::<Vec<_>>());
    for (i, m) in pages[2]["messages"].as_array().unwrap().iter().enumerate() {
        assert_eq!(m["op"], if i % 2 == 0 { 1002 } else { 1000 }, "{m}");
        let t = m["time"].as_str().unwrap();
        assert!(t.len() > 20 && t.contains('T') && t.ends_with('Z'), "time {t:?} is not RFC 3339 UTC");
    }

    // limit, before past the end, before at the first message.
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "limit": 7})).await;
    assert_eq!(seqs(&p), seqs_1000[113..].to_vec());
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "limit": 3, "before": 1_000_000})).await;
    assert_eq!(seqs(&p), seqs_1000[117..].to_vec());
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "before": seqs_1000[0]})).await;
    assert_eq!((seqs(&p).len(), &p["more"]), (0, &json!(false)), "{p}");
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "before": seqs_1000[1], "limit": 5})).await;
    assert_eq!((seqs(&p), &p["more"]), (vec![seqs_1000[0]], &json!(false)), "{p}");

    // Catching up after a known sequence: the oldest messages after it, oldest first.
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "after": seqs_1000[9], "limit": 5})).await;
    assert_eq!((seqs(&p), &p["more"]), (seqs_1000[10..15].to_vec(), &json!(true)), "{p}");
    let (status, hp) = h.get_http(&format!("room={}&after={}&limit=5", enc("live://1000"), seqs_1000[9]), Some(&token)).await;
    assert_eq!((status, &hp), (200, &p));
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "after": 0})).await;
    assert_eq!(seqs(&p), seqs_1000[..50].to_vec());
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "after": seqs_1000[115]})).await;
    assert_eq!((seqs(&p), &p["more"]), (seqs_1000[116..].to_vec(), &json!(false)), "{p}");
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "after": seqs_1000[119]})).await;
    assert_eq!((seqs(&p).len(), &p["more"]), (0, &json!(false)), "{p}");
    let p = nats_read(&nats, json!({"token": token, "room": "live://1000", "after": 1, "before": 5})).await;
    assert_eq!(p["code"], 400, "{p}");

    // The token's own user subject, and broadcast.
    let p = nats_read(&nats, json!({"token": token, "user": 77})).await;
    assert_eq!(bodies(&p), ["u0", "u1", "u2", "u3", "u4"]);
    assert_eq!((p["subject"].as_str(), &p["more"]), (Some("user.77"), &json!(false)));
    let (status, p2) = h.get_http("user=77&limit=2", Some(&token)).await;
    assert_eq!((status, bodies(&p2)), (200, vec!["u3".to_string(), "u4".to_string()]));
    assert_eq!(p2["more"], true);
    let (status, b) = h.get_http("broadcast=true", Some(&token)).await;
    assert_eq!((status, bodies(&b)), (200, vec!["all".to_string()]));

    // A stored room with nothing in it.
    let (status, empty) = h.get_http(&format!("room={}", enc("live://9")), Some(HISTORY_API_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!({"subject": "room.live.9", "messages": [], "first_seq": 0, "last_seq": 0, "more": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reads_only_its_rooms_and_its_user() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1", "k2"]);
    let h = History::start(&nats, HistoryOpts::new().key(&keys, "k1")).await;
    let mut js = JsPub::new(&nats).await;
    for s in ["room.live.1", "room.live.2", "room.chat.x", "user.5", "user.6", "user.0", "broadcast"] {
        js.publish(s, &[], format!("secret of {s}").as_bytes()).await;
    }
    let (token, _) = keys.mint("k1", &grant(5, &["live://1"], &["chat://"]));
    let (anon, _) = keys.mint("k1", &grant(0, &["live://1"], &[]));
    let (other_key, _) = keys.mint("k2", &grant(5, &["live://1", "live://2"], &[]));
    let now = now_secs();
    let claims = |iss: &str, aud: &str, exp: u64| Claims {
        iss: iss.into(),
        aud: aud.into(),
        sub: "5".into(),
        mid: 5,
        key: None,
        rooms: vec!["live://1".into(), "live://2".into()],
        room_prefixes: vec![],
        accepts: vec![],
        publish: PublishRights::default(),
        iat: now - 1000,
        nbf: now - 1000,
        exp,
        jti: "t".into(),
    };
    let expired = keys.sign("k1", claims(ISSUER, AUDIENCE, now - 100));
    let wrong_aud = keys.sign("k1", claims(ISSUER, "someone-else", now + 600));
    let wrong_iss = keys.sign("k1", claims("mallory", AUDIENCE, now + 600));

    // (credential, target as NATS JSON fields, target as HTTP query, expected status)
    let live1 = format!("room={}", enc("live://1"));
    let live2 = format!("room={}", enc("live://2"));
    let chat = format!("room={}", enc("chat://x"));
    let cases: Vec<(Option<&str>, Value, String, u16)> = vec![
        (Some(&token), json!({"room": "live://1"}), live1.clone(), 200),
        (Some(&token), json!({"room": "chat://x"}), chat.clone(), 200),
        (Some(&token), json!({"room": "live://2"}), live2.clone(), 403),
        (Some(&token), json!({"user": 5}), "user=5".into(), 200),
        (Some(&token), json!({"user": 6}), "user=6".into(), 403),
        (Some(&token), json!({"broadcast": true}), "broadcast=true".into(), 200),
        (Some(&anon), json!({"user": 0}), "user=0".into(), 403),
        (Some(&anon), json!({"room": "live://1"}), live1.clone(), 200),
        (None, json!({"room": "live://1"}), live1.clone(), 401),
        (Some("not-a-token"), json!({"room": "live://1"}), live1.clone(), 401),
        (Some(&other_key), json!({"room": "live://2"}), live2.clone(), 401),
        (Some(&expired), json!({"room": "live://2"}), live2.clone(), 401),
        (Some(&wrong_aud), json!({"room": "live://2"}), live2.clone(), 401),
        (Some(&wrong_iss), json!({"room": "live://2"}), live2.clone(), 401),
        (Some(HISTORY_API_KEY), json!({"room": "live://2"}), live2.clone(), 200),
        (Some(HISTORY_API_KEY), json!({"user": 6}), "user=6".into(), 200),
        (Some(HISTORY_API_KEY), json!({"user": 0}), "user=0".into(), 200),
        (Some(&token), json!({"room": "live://1", "user": 5}), format!("{live1}&user=5"), 400),
        (Some(&token), json!({"room": "live://1", "limit": 501}), format!("{live1}&limit=501"), 400),
        (Some(&token), json!({"room": "live://1", "before": 0}), format!("{live1}&before=0"), 400),
        (Some(&token), json!({}), String::new(), 400),
    ];
    for (cred, target, query, want) in cases {
        let mut body = target.clone();
        if let Some(c) = cred {
            body["token"] = json!(c);
        }
        let nats_answer = nats_read(&nats, body.clone()).await;
        let (status, http_answer) = h.get_http(&query, cred).await;
        let label = format!("{target} with {:?}", cred.map(|c| &c[..c.len().min(12)]));
        assert_eq!(status, want, "HTTP {label}: {http_answer}");
        if want == 200 {
            assert_eq!(bodies(&nats_answer).len(), 1, "NATS {label}: {nats_answer}");
            assert_eq!(http_answer, nats_answer, "{label}");
        } else {
            assert_eq!(nats_answer["code"], want, "NATS {label}: {nats_answer}");
            assert!(nats_answer["error"].as_str().is_some_and(|e| !e.is_empty()), "NATS {label}: {nats_answer}");
            assert_eq!(http_answer["code"], -(want as i64), "HTTP {label}: {http_answer}");
            assert!(http_answer["message"].is_string(), "HTTP {label}: {http_answer}");
            for answer in [&nats_answer, &http_answer] {
                assert!(answer.get("messages").is_none() && !answer.to_string().contains("secret"), "{label} leaked: {answer}");
            }
        }
    }
    // A body that is not the request's JSON.
    let mut raw = nats.raw().await;
    let m = raw.request("history.get", b"{\"token\": 1", Duration::from_secs(5)).await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["code"], 400, "{v}");
    let m = raw.request("history.get", format!("{{\"token\":\"{token}\",\"rooms\":\"live://1\"}}").as_bytes(), Duration::from_secs(5)).await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["code"], 400, "an unknown field is refused: {v}");
    // HTTP: a token in the query string is not a credential; unknown routes and methods.
    let (status, v) = h.get_http(&format!("{live1}&token={token}"), None).await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = h.get_path("/nothing").await;
    assert_eq!((status, &v["code"]), (404, &json!(-404)), "{v}");
    let (status, _) = goim_nats_tests::authsvc::http_request(h.http, "POST", "/history", &[], b"").await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_with_the_same_msg_id_are_stored_once() {
    let nats = NatsServer::start().await;
    let _h = History::start(&nats, HistoryOpts::new()).await;
    let mut live = nats.raw().await;
    live.subscribe("live.room.d.1").await;
    let mut js = JsPub::new(&nats).await;
    let first = js.publish("room.d.1", &[("Nats-Msg-Id", "abc")], b"one").await;
    let again = js.publish("room.d.1", &[("Nats-Msg-Id", "abc")], b"one").await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["seq"], first["seq"]);
    // A core publish (no ack) of the same id, as goim-compatible HTTP pushes retried would send.
    nats.hpublish("room.d.1", &[("Nats-Msg-Id", "abc")], b"one").await;
    let second = js.publish("room.d.1", &[("Nats-Msg-Id", "def")], b"two").await;
    assert_eq!(second["seq"].as_u64(), Some(first["seq"].as_u64().unwrap() + 1));
    let page = nats_read(&nats, json!({"token": HISTORY_API_KEY, "room": "d://1"})).await;
    assert_eq!(bodies(&page), ["one", "two"]);
    // Republished once each.
    let a = live.next_msg(Duration::from_secs(5)).await.expect("first republished");
    let b = live.next_msg(Duration::from_secs(5)).await.expect("second republished");
    assert_eq!((a.payload.as_slice(), b.payload.as_slice()), (&b"one"[..], &b"two"[..]));
    assert!(live.next_msg(Duration::from_millis(500)).await.is_none(), "a duplicate was republished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_storage_are_per_class() {
    let nats = NatsServer::start().await;
    let opts = HistoryOpts::new()
        .with("rooms", "subjects", "[\"room.chat.>\"]")
        .with("rooms", "max_msgs_per_subject", "5")
        .with("users", "max_msgs_per_subject", "3")
        .with("broadcast", "enabled", "false");
    let h = History::start(&nats, opts).await;
    let mut js = JsPub::new(&nats).await;
    let room: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(js.seq("room.chat.1", &[], format!("r{i}").as_bytes()).await);
        }
        v
    };
    let user: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(js.seq("user.9", &[], format!("u{i}").as_bytes()).await);
        }
        v
    };
    let p = nats_read(&nats, json!({"token": HISTORY_API_KEY, "room": "chat://1"})).await;
    assert_eq!(seqs(&p), room[5..].to_vec());
    assert_eq!((p["first_seq"].as_u64(), &p["more"]), (Some(room[5]), &json!(false)), "{p}");
    let p = nats_read(&nats, json!({"token": HISTORY_API_KEY, "user": 9})).await;
    assert_eq!(bodies(&p), ["u7", "u8", "u9"]);
    assert_eq!((p["first_seq"].as_u64(), &p["more"]), (Some(user[7]), &json!(false)), "{p}");
    // Catching up from before the retained range: first_seq shows what was dropped.
    let p = nats_read(&nats, json!({"token": HISTORY_API_KEY, "user": 9, "after": user[2]})).await;
    assert_eq!(bodies(&p), ["u7", "u8", "u9"]);
    assert!(p["first_seq"].as_u64().unwrap() > user[2] + 1, "the gap is visible: {p}");

    // Classes and rooms that are not stored: 404, and their pushes are not stored.
    for (body, query) in [
        (json!({"token": HISTORY_API_KEY, "broadcast": true}), "broadcast=true".to_string()),
        (json!({"token": HISTORY_API_KEY, "room": "live://1"}), format!("room={}", enc("live://1"))),
    ] {
        let v = nats_read(&nats, body).await;
        assert_eq!(v["code"], 404, "{v}");
        let (status, v) = h.get_http(&query, Some(HISTORY_API_KEY)).await;
        assert_eq!((status, &v["code"]), (404, &json!(-404)), "{v}");
    }
    nats.publish("room.live.1", b"ephemeral").await;
    nats.publish("broadcast", b"ephemeral").await;
    js.publish("room.chat.1", &[], b"marker").await;
    let info = stream_info(&nats, "GOIM_ROOMS", None).await;
    assert_eq!(info["state"]["messages"], 5, "only room.chat.> is stored: {info}");
    let missing = stream_info(&nats, "GOIM_BROADCAST", None).await;
    assert_eq!(missing["error"]["code"], 404, "no broadcast stream: {missing}");

    // history.info (NATS and HTTP) tells the edges which subjects are stored.
    let info = nats_json(&nats, "history.info", &json!({})).await;
    assert_eq!(info["max_resume"], 10_000);
    assert_eq!(info["streams"]["rooms"], json!({"stream": "GOIM_ROOMS", "subjects": ["room.chat.>"], "max_msgs_per_subject": 5, "max_age_secs": 86400}));
    assert_eq!(info["streams"]["users"], json!({"stream": "GOIM_USERS", "subjects": ["user.>"], "max_msgs_per_subject": 3, "max_age_secs": 604800}));
    assert_eq!(info["streams"]["broadcast"], Value::Null);
    let (status, http_info) = h.get_path("/history/info").await;
    assert_eq!((status, http_info), (200, info));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_keys_come_from_authsvc_announcements() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let h = History::start(&nats, HistoryOpts::new().with("tokens", "keys_from_nats", "true")).await;
    let mut js = JsPub::new(&nats).await;
    js.publish("room.live.1", &[], b"hello").await;
    let (token, _) = keys.mint("k1", &grant(1, &["live://1"], &[]));
    let query = format!("room={}", enc("live://1"));
    let (status, v) = h.get_http(&query, Some(&token)).await;
    assert_eq!(status, 401, "no key known yet: {v}");
    // authsvc announces its keys when it starts.
    let _authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    poll("history accepts authsvc's key", 100, Duration::from_millis(50), || async {
        let (status, v) = h.get_http(&query, Some(&token)).await;
        (status == 200).then_some(v)
    })
    .await;
    let v = nats_read(&nats, json!({"token": token, "room": "live://1"})).await;
    assert_eq!(bodies(&v), ["hello"]);
    // A second history started now asks authsvc for the keys (auth.keys.get).
    let h2 = History::start(&nats, HistoryOpts::new().with("tokens", "keys_from_nats", "true")).await;
    let (status, v) = h2.get_http(&query, Some(&token)).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_as_the_nats_service_goim_history() {
    let nats = NatsServer::start().await;
    let h = History::start(&nats, HistoryOpts::new()).await;
    let ping = nats_json(&nats, "$SRV.PING.goim-history", &json!({})).await;
    assert_eq!(ping["name"], "goim-history", "{ping}");
    let info = nats_json(&nats, "$SRV.INFO.goim-history", &json!({})).await;
    let endpoints = info["endpoints"].as_array().unwrap_or_else(|| panic!("{info}"));
    let subjects: Vec<&str> = endpoints.iter().filter_map(|e| e["subject"].as_str()).collect();
    for s in ["history.get", "history.info", "history.stats"] {
        assert!(subjects.contains(&s), "{s} missing: {info}");
    }
    assert!(endpoints.iter().all(|e| e["queue_group"] == "goim-history"), "{info}");
    assert_eq!(info["metadata"]["http"], h.http.to_string());
    nats_read(&nats, json!({"token": HISTORY_API_KEY, "broadcast": true})).await;
    let stats = nats_json(&nats, "history.stats", &json!({})).await;
    assert_eq!(stats["reads"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_stream_is_recreated_after_a_server_restart() {
    let mut nats = NatsServer::start().await;
    let opts = HistoryOpts::new()
        .with("rooms", "storage", "\"memory\"")
        .with("provision", "recheck_interval_secs", "1");
    let h = History::start(&nats, opts).await;
    JsPub::new(&nats).await.publish("room.m.1", &[], b"before").await;
    nats.restart().await;
    // The file streams survive; the memory stream is gone until the recheck re-creates it.
    poll("GOIM_ROOMS re-created", 200, Duration::from_millis(50), || async {
        let info = stream_info(&nats, "GOIM_ROOMS", None).await;
        (info["config"]["storage"] == "memory").then_some(())
    })
    .await;
    assert!(stream_info(&nats, "GOIM_USERS", None).await["config"].is_object());
    JsPub::new(&nats).await.publish("room.m.1", &[], b"after").await;
    wait_subject_count(&nats, "GOIM_ROOMS", "room.m.1", 1).await;
    let p = nats_read(&nats, json!({"token": HISTORY_API_KEY, "room": "m://1"})).await;
    assert_eq!(bodies(&p), ["after"]);
    assert!(h.log_contains("re-created"), "{}", h.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pages_are_cut_to_what_nats_can_carry() {
    let nats = NatsServer::start().await;
    let h = History::start(&nats, HistoryOpts::new()).await;
    let mut js = JsPub::new(&nats).await;
    let mut want = Vec::new();
    for i in 0..5u8 {
        // 400 KB each: one fits into a NATS answer (max_payload 1 MB once base64), two do not.
        let body = vec![b'a' + i; 400 * 1024];
        want.push(js.seq("room.big.1", &[], &body).await);
    }
    let (status, all) = h.get_http(&format!("room={}", enc("big://1")), Some(HISTORY_API_KEY)).await;
    assert_eq!((status, seqs(&all)), (200, want.clone()), "HTTP carries all five (4 MiB pages)");
    let mut before: Option<u64> = None;
    let mut got = Vec::new();
    for _ in 0..10 {
        let mut req = json!({"token": HISTORY_API_KEY, "room": "big://1", "limit": 5});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        let p = nats_read(&nats, req).await;
        let s = seqs(&p);
        assert_eq!(s.len(), 1, "one 400 KB message per NATS page: {}", p["more"]);
        got.splice(0..0, s.clone());
        if p["more"] != true {
            break;
        }
        before = Some(s[0]);
    }
    assert_eq!(got, want, "paging over NATS still yields everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_nats_and_jetstream_before_it_is_ready() {
    let mut nats = NatsServer::start().await;
    let url = nats.url();
    nats.kill();
    let started = tokio::time::Instant::now();
    let (h, ()) = tokio::join!(History::try_start_at(&url, HistoryOpts::new()), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats.restart().await;
    });
    let h = h.unwrap_or_else(|e| panic!("{e}"));
    assert!(started.elapsed() >= Duration::from_millis(1500), "ready before NATS was up");
    assert!(h.log_contains("cannot connect to NATS"), "{}", h.log_tail(30));
    assert_eq!(stream_info(&nats, "GOIM_ROOMS", None).await["config"]["republish"]["dest"], "live.>");
    let info = nats_json(&nats, "history.info", &json!({})).await;
    assert_eq!(info["max_resume"], 10_000);
}

/// Page back (`before`) and forward (`after`) through a subject over NATS with `limit`; every sequence
/// once, in order.
async fn page_through(nats: &NatsServer, room: &str, limit: usize) -> (Vec<u64>, Vec<u64>) {
    let mut back = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..10_000 {
        let mut req = json!({"token": HISTORY_API_KEY, "room": room, "limit": limit});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        let p = nats_read(nats, req).await;
        let s = seqs(&p);
        assert!(s.len() <= limit && (s.len() == limit || p["more"] == false), "{room} limit {limit}: {p}");
        back.splice(0..0, s.iter().copied());
        if p["more"] != true {
            break;
        }
        before = Some(s[0]);
    }
    let mut fwd = Vec::new();
    let mut after = 0u64;
    for _ in 0..10_000 {
        let p = nats_read(nats, json!({"token": HISTORY_API_KEY, "room": room, "limit": limit, "after": after})).await;
        let s = seqs(&p);
        fwd.extend(s.iter().copied());
        if p["more"] != true {
            break;
        }
        after = *s.last().expect("more implies messages");
    }
    (back, fwd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_exact_for_dense_sparse_and_bursty_subjects() {
    let nats = NatsServer::start().await;
    let h = History::start(&nats, HistoryOpts::new().with("log", "level", "\"info,goim_history::store=debug\"")).await;
    let subject_of = |i: u64| -> String {
        if i % 500 == 250 {
            "room.p.sparse".into()
        } else if i % 400 == 100 || (2300..2900).contains(&i) {
            // Sparse for long, then a burst: the average density underestimates the end.
            "room.p.burst".into()
        } else if i.is_multiple_of(3) {
            "room.p.dense".into()
        } else {
            format!("room.p.noise{}", i % 50)
        }
    };
    let total = 3000u64;
    // One publisher into a fresh stream: message i gets stream sequence i + 1.
    let mut raw = nats.raw().await;
    for i in 0..total {
        raw.publish_nowait(&subject_of(i), format!("{i}").as_bytes()).await;
    }
    raw.flush().await;
    poll("all stored", 100, Duration::from_millis(50), || async {
        (stream_info(&nats, "GOIM_ROOMS", None).await["state"]["messages"] == total).then_some(())
    })
    .await;
    for (room, limits) in [("p://sparse", &[1usize, 4, 50][..]), ("p://burst", &[3, 50, 200]), ("p://dense", &[7, 50, 500])] {
        let subject = format!("room.p.{}", room.trim_start_matches("p://"));
        let expected: Vec<u64> = (0..total).filter(|i| subject_of(*i) == subject).map(|i| i + 1).collect();
        for &limit in limits {
            let (back, fwd) = page_through(&nats, room, limit).await;
            assert_eq!(back, expected, "{room}: paging back with limit {limit}");
            assert_eq!(fwd, expected, "{room}: paging forward with limit {limit}");
        }
    }
    assert!(h.log_contains("skipping ahead"), "the burst was read without skipping ahead");
}
