//! (d) Hostile input: malformed headers and lengths, truncated packets, garbage before auth, bad auth
//! bodies, and room ids / keys that would break a subject if they were not escaped. Every case must
//! close (or be contained) without a reply, and afterwards the same edge still serves a well-behaved
//! client, the process is alive, and no subscription outside the subject map exists.

use std::time::Duration;

use goim_nats_tests::goim::*;
use goim_nats_tests::*;
use tokio_tungstenite::tungstenite::Message;

const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Ws];

fn lorem(n: usize) -> Vec<u8> {
    let text = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. ";
    text.iter().copied().cycle().take(n).collect()
}

/// Connect, optionally authenticate, send `bytes`, and require a close without any packet.
async fn expect_close_after(edge: &Edge, t: Transport, authed: bool, what: &str, bytes: &[u8]) {
    let mut c = Client::connect(t, edge)
        .await
        .with_label(&format!("{what}/{t:?}/authed={authed}"));
    if authed {
        c.auth(&Auth::new(1).room("live://bad").accepts(&[1000]))
            .await;
    }
    // The edge may close while we are still writing: a failed write is fine, a reply is not.
    let _ = c.try_send_raw(bytes).await;
    c.expect_closed(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_without_reply() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, EdgeOpts::new()).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("headerLen 15", raw_packet(16, 15, 1, OP_HEARTBEAT, 1, b"")),
        ("headerLen 17", raw_packet(17, 17, 1, OP_HEARTBEAT, 1, b"x")),
        ("headerLen 0", raw_packet(16, 0, 1, OP_HEARTBEAT, 1, b"")),
        (
            "headerLen -16",
            raw_packet(16, -16, 1, OP_HEARTBEAT, 1, b""),
        ),
        (
            "packLen 4113",
            raw_packet(4113, 16, 1, OP_SEND_MSG, 1, &[b'x'; 4097]),
        ),
        ("packLen -1", raw_packet(-1, 16, 1, OP_HEARTBEAT, 1, b"")),
        (
            "packLen i32::MIN",
            raw_packet(i32::MIN, 16, 1, OP_HEARTBEAT, 1, b""),
        ),
        (
            "packLen 10256",
            raw_packet(10256, 16, 1, OP_SEND_MSG, 1, &lorem(10240)),
        ),
        ("10 KB of text", lorem(10 * 1024)),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
        ),
    ];
    for t in TRANSPORTS {
        for authed in [false, true] {
            for (what, bytes) in &cases {
                expect_close_after(&edge, t, authed, what, bytes).await;
            }
        }
    }
    // A WebSocket message beyond limits.max_ws_message_bytes (16 KiB) closes even with a valid header.
    let mut big = Packet::new(1, OP_HEARTBEAT, 1, b"").encode();
    big.extend(lorem(20_000));
    expect_close_after(&edge, Transport::Ws, true, "20 KB WS message", &big).await;

    // The limits are exact: a 4112-byte packet is fine before and after auth.
    for t in TRANSPORTS {
        let mut c = Client::connect(t, &edge).await;
        c.send(&Packet::new(1, OP_SEND_MSG, 1, vec![b'y'; 4096]))
            .await; // ignored before auth
        c.auth(&Auth::new(1)).await;
        let r = c.request_with(1, OP_SEND_MSG, 2, &[b'z'; 4096]).await;
        assert_eq!(
            r,
            Packet::new(1, OP_SEND_MSG, 2, vec![]),
            "{t:?}: 4096-byte body must be accepted"
        );
    }
    assert_edge_healthy(&nats, &mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_packets_and_stalls() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(
        &nats,
        EdgeOpts::new()
            .handshake_timeout_ms(1000)
            .idle_timeout_ms(2000),
    )
    .await;
    let hb = Packet::new(1, OP_HEARTBEAT, 5, b"").encode();
    let big = Packet::new(1, OP_SEND_MSG, 6, vec![b'q'; 100]).encode();

    // Half a header, then the client closes its write side: the edge closes too, no reply.
    let mut c = Client::connect(Transport::Tcp, &edge)
        .await
        .with_label("half-header+FIN");
    c.send_raw(&hb[..8]).await;
    c.shutdown_write().await;
    c.expect_closed(WAIT).await;

    // After auth: a header announcing 100 bytes of body, 50 sent, FIN.
    let mut c = Client::connect_auth(Transport::Tcp, &edge, Auth::new(2))
        .await
        .with_label("half-body+FIN");
    c.send_raw(&big[..66]).await;
    c.shutdown_write().await;
    c.expect_closed(WAIT).await;

    // After auth: truncated, then the client vanishes abruptly.
    let mut c = Client::connect_auth(Transport::Tcp, &edge, Auth::new(3)).await;
    c.send_raw(&big[..40]).await;
    drop(c);

    // Truncated and stalled before auth: the handshake timer still closes it.
    let mut pre = Client::connect(Transport::Tcp, &edge)
        .await
        .with_label("stall-pre-auth");
    pre.send_raw(&hb[..10]).await;
    // Truncated and stalled after auth: partial bytes are not a heartbeat; the idle timer closes it.
    let mut post = Client::connect_auth(Transport::Tcp, &edge, Auth::new(4))
        .await
        .with_label("stall-post-auth");
    post.send_raw(&big[..30]).await;
    // Meanwhile the edge serves others.
    assert_edge_healthy(&nats, &mut edge).await;
    pre.expect_closed(Duration::from_secs(6)).await;
    post.expect_closed(Duration::from_secs(8)).await;

    // WebSocket: a message shorter than its packLen says, and a message shorter than a header.
    for (what, bytes) in [
        ("truncated frame", big[..50].to_vec()),
        ("short frame", hb[..10].to_vec()),
    ] {
        expect_close_after(&edge, Transport::Ws, true, what, &bytes).await;
        expect_close_after(&edge, Transport::Ws, false, what, &bytes).await;
    }
    // WebSocket upgrade request cut short, then FIN.
    let mut c = Client::connect_tcp(edge.ws_addr())
        .await
        .with_label("half-upgrade+FIN");
    c.send_raw(b"GET /sub HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
        .await;
    c.shutdown_write().await;
    c.expect_closed(WAIT).await;

    assert_edge_healthy(&nats, &mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_auth() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut rng = Rng::new(0x601d_cafe);
    for i in 0..24 {
        let len = 16 + (rng.next_u64() % 200) as usize;
        let mut g = rng.bytes(len);
        // Make sure the header is invalid (headerLen != 16; every other case a negative packLen).
        if g[4] == 0 && g[5] == 16 {
            g[5] = 17;
        }
        if i % 2 == 0 {
            g[0] |= 0x80;
        }
        let t = TRANSPORTS[i % 2];
        expect_close_after(&edge, t, false, &format!("garbage #{i}"), &g).await;
    }
    // Valid packets other than auth before auth: ignored, then auth works and is the first reply.
    for t in TRANSPORTS {
        let mut c = Client::connect(t, &edge).await;
        for (seq, op) in [
            (1, OP_HEARTBEAT),
            (2, OP_SEND_MSG),
            (3, 1000),
            (4, OP_CHANGE_ROOM),
            (5, OP_UNSUB),
            (6, 0),
        ] {
            c.send(&Packet::new(1, op, seq, b"live://x")).await;
        }
        c.auth(&Auth::new(5)).await;
        assert_eq!(c.heartbeat().await, 0);
    }
    assert_edge_healthy(&nats, &mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_bodies_close_without_reply() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, EdgeOpts::new()).await;
    let long_key = "k".repeat(300);
    let long_room = format!("live://{}", "r".repeat(300));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"not json".to_vec()),
        ("open brace", b"{".to_vec()),
        ("empty body", b"".to_vec()),
        (
            "mid as string",
            br#"{"mid":"123","key":"k","room_id":"","platform":"web","accepts":[]}"#.to_vec(),
        ),
        (
            "mid float",
            br#"{"mid":1.5,"key":"k","room_id":"","platform":"web","accepts":[]}"#.to_vec(),
        ),
        (
            "mid overflow",
            br#"{"mid":99999999999999999999,"key":"k"}"#.to_vec(),
        ),
        (
            "accepts strings",
            br#"{"mid":1,"key":"k","accepts":["x"]}"#.to_vec(),
        ),
        (
            "accepts not a list",
            br#"{"mid":1,"key":"k","accepts":"1000"}"#.to_vec(),
        ),
        (
            "accept overflow",
            br#"{"mid":1,"key":"k","accepts":[4294967296]}"#.to_vec(),
        ),
        ("key number", br#"{"mid":1,"key":5}"#.to_vec()),
        ("room number", br#"{"mid":1,"room_id":7}"#.to_vec()),
        ("array", b"[1,2]".to_vec()),
        ("string", br#""auth""#.to_vec()),
        ("not utf-8", vec![0xff, 0xfe, b'{', b'}']),
        ("key too long", Auth::new(1).key(&long_key).body()),
        ("room too long", Auth::new(1).room(&long_room).body()),
    ];
    let mut n = 0;
    for t in TRANSPORTS {
        for (what, body) in &bodies {
            let mut c = Client::connect(t, &edge)
                .await
                .with_label(&format!("{what}/{t:?}"));
            c.send(&Packet::new(1, OP_AUTH, 1, body.clone())).await;
            c.expect_closed(WAIT).await;
            n += 1;
        }
    }
    // All of them are gone from the edge, and counted.
    let mut stats = serde_json::Value::Null;
    for _ in 0..100 {
        stats = edge.stats(&nats).await;
        if stats["connections"].as_u64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stats["connections"].as_u64(),
        Some(0),
        "closed connections still counted: {stats}"
    );
    let bad = stats["closed"]["bad_auth"].as_u64().unwrap_or(0);
    assert!(
        bad >= n - 4,
        "closed.bad_auth = {bad}, expected at least {} of the {n} bad auths: {stats}",
        n - 4
    );
    assert_edge_healthy(&nats, &mut edge).await;
}

/// (room id, the subject the edge must use, subjects it must NOT receive from)
const HOSTILE_ROOMS: &[(&str, &str, &[&str])] = &[
    (
        "live://a.b",
        "room.live.a=2Eb",
        &["room.live.a.b", "room.live.a"],
    ),
    ("live://*", "room.live.=2A", &["room.live.x", "room.live.*"]),
    (
        "live://>",
        "room.live.=3E",
        &["room.live.y.z", "room.live.y", "room.live.>", "room.>"],
    ),
    ("a b://c d", "room.a=20b.c=20d", &["room.a", "room.a.b"]),
    (
        "live://1\r\nPUB x 1\r\n",
        "room.live.1=0D=0APUB=20x=201=0D=0A",
        &["room.live.1", "x"],
    ),
    (
        "live://\u{1}\u{7f}\t",
        "room.live.=01=7F=09",
        &["room.live"],
    ),
    (
        "lobby.>",
        "room.lobby=2E=3E",
        &["room.lobby.q", "room.lobby"],
    ),
    ("*", "room.=2A", &["room.q"]),
    (">", "room.=3E", &["room.q.r"]),
    ("live://房间", "room.live.=E6=88=BF=E9=97=B4", &[]),
    ("x://a://b", "room.x.a=3A=2F=2Fb", &["room.x.a"]),
    ("://x", "room.=.x", &["room.x"]),
    ("live://", "room.live.=", &["room.live"]),
    ("=3D", "room.=3D3D", &["room.=3D"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_room_ids_and_keys_are_escaped() {
    hostile_case(true).await;
}

/// Keys ride the edge's `key.*` wildcard by default: escaping must hold for its dispatch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_room_ids_and_keys_are_escaped_wildcard_subjects() {
    hostile_case(false).await;
}

async fn hostile_case(exact: bool) {
    let nats = NatsServer::start().await;
    // Each client must be reached through its escaped subject; the publishes to unescaped / wildcard
    // variants would reach it only through a subscription that must not exist (the subscription
    // list is checked below too).
    let opts = if exact { EdgeOpts::new().exact_subjects() } else { EdgeOpts::new() };
    let mut edge = Edge::start(&nats, opts).await;
    let mut p = nats.raw().await;
    let mut clients = Vec::new();
    for (i, (room, _, _)) in HOSTILE_ROOMS.iter().enumerate() {
        let t = TRANSPORTS[i % 2];
        let c = if i % 3 == 0 {
            // Into the room with op 12 from no room.
            let mut c = Client::connect_auth(t, &edge, Auth::new(100 + i as i64)).await;
            c.change_room(room).await;
            c
        } else {
            Client::connect_auth(t, &edge, Auth::new(100 + i as i64).room(room)).await
        };
        clients.push(c.with_label(&format!("room {room:?}")));
    }
    for (i, (room, subject, negatives)) in HOSTILE_ROOMS.iter().enumerate() {
        for neg in *negatives {
            // Non-pedantic nats-server accepts wildcard tokens in PUB; only a wildcard sub would match.
            p.publish(neg, format!("leak from {neg}").as_bytes()).await;
        }
        p.publish(subject, format!("pos-{i}").as_bytes()).await;
        let got = clients[i].next_push().await;
        assert_eq!(
            (got.op, got.body_str()),
            (1000, format!("pos-{i}")),
            "room {room:?} must be reached via {subject} only"
        );
    }
    // Hostile keys.
    let keys: &[(&str, &str)] = &[
        ("k.*>", "key.k=2E=2A=3E"),
        ("k\r\nPUB x 1\r\n", "key.k=0D=0APUB=20x=201=0D=0A"),
    ];
    let mut key_clients = Vec::new();
    for (i, (key, subject)) in keys.iter().enumerate() {
        let mut c = Client::connect_auth(
            TRANSPORTS[i % 2],
            &edge,
            Auth::new(200).key(key).accepts(&[1000]),
        )
        .await;
        p.publish("key.k", b"leak").await;
        p.publish(subject, b"key-pos").await;
        c.expect_push(1000, b"key-pos").await;
        key_clients.push(c);
    }

    // The subscriptions are exactly the escaped ones; nothing outside the map.
    let subs = nats.edge_subjects().await;
    for (room, subject, _) in HOSTILE_ROOMS {
        assert_eq!(
            subs.iter().filter(|s| s == subject).count(),
            1,
            "room {room:?}: {subject} not subscribed once: {subs:?}"
        );
    }
    for (_, subject) in keys.iter().filter(|_| exact) {
        assert!(
            subs.iter().any(|s| s == subject),
            "{subject} not subscribed: {subs:?}"
        );
    }
    let outside: Vec<&String> = subs.iter().filter(|s| !subject_in_map(s)).collect();
    assert!(
        outside.is_empty(),
        "subscriptions outside the map: {outside:?}"
    );
    let wild = |s: &String| s.split('.').any(|t| t == "*" || t == ">");
    assert!(
        !subs
            .iter()
            .any(|s| s == "x" || (!s.starts_with("_INBOX.") && wild(s) && !(!exact && (s == "user.*" || s == "key.*")))),
        "a client-controlled subscription is a wildcard or injected: {subs:?}"
    );

    // No client received anything but its own pushes: each one's next push is a final marker.
    for (i, (_, subject, _)) in HOSTILE_ROOMS.iter().enumerate() {
        p.publish(subject, format!("end-{i}").as_bytes()).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.expect_push(1000, format!("end-{i}").as_bytes()).await;
    }

    // A room id beyond limits.max_room_id_len in op 12: replied (echo) and left in no room.
    let mut c =
        Client::connect_auth(Transport::Tcp, &edge, Auth::new(300).room("live://keep")).await;
    let long = format!("live://{}", "r".repeat(300));
    c.change_room(&long).await;
    assert_eq!(
        c.heartbeat().await,
        0,
        "a too-long room id leaves the connection in no room"
    );
    // A non-UTF-8 room id in op 12: answered (echo) and left in no room too (subjects.md §2).
    let mut c =
        Client::connect_auth(Transport::Ws, &edge, Auth::new(302).room("live://keep")).await;
    let r = c.request(OP_CHANGE_ROOM, &[b'l', 0xff, 0xfe, b'x']).await;
    assert_eq!(
        (r.op, r.body.as_slice()),
        (OP_CHANGE_ROOM_REPLY, &[b'l', 0xff, 0xfe, b'x'][..])
    );
    assert_eq!(
        c.heartbeat().await,
        0,
        "a non-UTF-8 room id leaves the connection in no room"
    );

    // A WebSocket text frame carrying a hostile change room works the same way.
    let mut w = Client::connect_auth(Transport::Ws, &edge, Auth::new(301)).await;
    let pkt = Packet::new(1, OP_CHANGE_ROOM, 9, b"live://t.x".to_vec()).encode();
    w.send_ws_message(Message::Text(String::from_utf8(pkt).unwrap().into()))
        .await
        .unwrap();
    let r = w.recv_packet(WAIT).await.expect("op 13");
    assert_eq!(
        (r.op, r.seq, r.body.as_slice()),
        (OP_CHANGE_ROOM_REPLY, 9, &b"live://t.x"[..])
    );
    p.publish("room.live.t.x", b"leak").await;
    p.publish("room.live.t=2Ex", b"text-frame-room").await;
    w.expect_push(1000, b"text-frame-room").await;

    assert_edge_healthy(&nats, &mut edge).await;
}

/// The table above is written by hand from the documented escaping; the edge's own subject map must
/// agree with it (a disagreement is a contract change, not a test detail).
#[test]
fn hostile_table_matches_the_subject_map_code() {
    for (room, subject, _) in HOSTILE_ROOMS {
        assert_eq!(
            goim_edge::subjects::room_subject(room),
            *subject,
            "room {room:?}"
        );
        assert_eq!(
            goim_edge::subjects::room_id_of(subject).as_deref(),
            Some(*room),
            "subject {subject}"
        );
    }
}
