//! (b) Pushes published with raw NATS PUB/HPUB: user pushes across two edges, room pushes ignoring
//! accepts, broadcast and key pushes honouring them, Goim-Op, TCP plain packets vs WebSocket op 9,
//! and the op-4 ingress publish.
//!
//! Negatives are proven with a later push that IS delivered: "the first push received is the marker".
//! Pushes on one subject reach a connection in publish order. Where the unwanted push and the marker
//! travel on different subjects, the marker is published only after a legitimate member of the
//! unwanted push's subject on the same edge (a witness) has received it: by then a leak would already
//! be queued on the connection, ahead of the marker.

use std::time::Duration;

use goim_nats_tests::goim::*;
use goim_nats_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_push_reaches_every_connection_of_the_mid_on_every_edge() {
    user_push_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_push_reaches_every_connection_of_the_mid_on_every_edge_exact_subjects() {
    user_push_case(true).await;
}

/// `exact`: one subscription per user subject; else the default, one `user.*` wildcard per edge.
async fn user_push_case(exact: bool) {
    let nats = NatsServer::start().await;
    let opts = || if exact { EdgeOpts::new().exact_subjects() } else { EdgeOpts::new() };
    let a = Edge::start(&nats, opts()).await;
    let b = Edge::start(&nats, opts()).await;
    let acc = [1000, 1001];
    let mut conns = vec![
        Client::connect_auth(Transport::Tcp, &a, Auth::new(42).accepts(&acc))
            .await
            .with_label("A-tcp"),
        Client::connect_auth(Transport::Ws, &a, Auth::new(42).accepts(&acc))
            .await
            .with_label("A-ws"),
        Client::connect_auth(
            Transport::Ws,
            &b,
            Auth::new(42).accepts(&acc).room("live://1"),
        )
        .await
        .with_label("B-ws"),
        Client::connect_auth(Transport::Tcp, &b, Auth::new(42).accepts(&acc))
            .await
            .with_label("B-tcp"),
    ];
    let mut other_mid = Client::connect_auth(Transport::Tcp, &a, Auth::new(43).accepts(&acc))
        .await
        .with_label("mid43");

    let mut p = nats.raw().await;
    p.publish("user.42", br#"{"test":1}"#).await; // no Goim-Op header → default op 1000
    p.hpublish("user.42", &[("Goim-Op", "1001")], br#"{"test":2}"#)
        .await;
    for c in &mut conns {
        c.expect_push(1000, br#"{"test":1}"#).await;
        c.expect_push(1001, br#"{"test":2}"#).await;
    }
    // mid 43 (on A, where two witnesses got mid 42's pushes) got none of them: its first is its own.
    p.publish("user.43", b"for-43").await;
    other_mid.expect_push(1000, b"for-43").await;

    let subs = nats.edge_subjects().await;
    if !exact {
        // One wildcard per edge, whatever the number of users; no subscription per user.
        assert_eq!(subs.iter().filter(|s| *s == "user.*").count(), 2, "{subs:?}");
        assert_eq!(subs.iter().filter(|s| *s == "key.*").count(), 2, "{subs:?}");
        assert!(!subs.iter().any(|s| s.starts_with("user.4") || (s.starts_with("key.") && s != "key.*")), "{subs:?}");
        return;
    }
    // Both edges hold user.42, one subscription each (two here; mid 43 only on A).
    assert_eq!(
        subs.iter().filter(|s| *s == "user.42").count(),
        2,
        "{subs:?}"
    );
    assert_eq!(
        subs.iter().filter(|s| *s == "user.43").count(),
        1,
        "{subs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_push_ignores_accepts_and_goim_op_sets_the_op() {
    let nats = NatsServer::start().await;
    let a = Edge::start(&nats, EdgeOpts::new()).await;
    let b = Edge::start(&nats, EdgeOpts::new()).await;
    let room = "live://1000";
    let mut members = vec![
        Client::connect_auth(Transport::Tcp, &a, Auth::new(1).room(room).accepts(&[]))
            .await
            .with_label("A-tcp-none"),
        Client::connect_auth(Transport::Ws, &a, Auth::new(2).room(room).accepts(&[]))
            .await
            .with_label("A-ws-none"),
        Client::connect_auth(Transport::Tcp, &a, Auth::new(3).room(room).accepts(&[1000]))
            .await
            .with_label("A-tcp-1000"),
        Client::connect_auth(Transport::Ws, &b, Auth::new(4).room(room).accepts(&[7]))
            .await
            .with_label("B-ws-7"),
        Client::connect_auth(Transport::Tcp, &b, Auth::new(0).room(room))
            .await
            .with_label("B-tcp-anon"),
    ];
    let mut outsider = Client::connect_auth(
        Transport::Ws,
        &a,
        Auth::new(5).room("live://2000").accepts(&[1000, 1005]),
    )
    .await
    .with_label("outsider");

    let mut p = nats.raw().await;
    // Exactly what `nats pub -H 'Goim-Op:1005' room.live.1000 '{"test":1}'` writes.
    p.hpublish("room.live.1000", &[("Goim-Op", "1005")], br#"{"test":1}"#)
        .await;
    p.publish("room.live.1000", br#"{"test":2}"#).await;
    p.hpublish("room.live.1000", &[("Other", "x")], br#"{"test":3}"#)
        .await;
    for m in &mut members {
        m.expect_push(1005, br#"{"test":1}"#).await;
        m.expect_push(1000, br#"{"test":2}"#).await;
        m.expect_push(1000, br#"{"test":3}"#).await;
    }
    // The outsider on A (where members witnessed the room pushes) got none of them.
    p.publish("room.live.2000", b"own-room").await;
    outsider.expect_push(1000, b"own-room").await;

    // A large push (beyond the 4 KB inbound limit: outbound has none) arrives intact.
    let big: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    p.publish("room.live.1000", &big).await;
    for m in &mut members {
        let got = m.next_push().await;
        assert_eq!((got.op, got.body.len()), (1000, big.len()), "{}", m.label);
        assert!(got.body == big, "{}: large push corrupted", m.label);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_and_key_pushes_honour_accepts() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let edge_b = Edge::start(&nats, EdgeOpts::new()).await;
    let mut pc = Client::connect_auth(
        Transport::Tcp,
        &edge,
        Auth::new(1).key("kp").accepts(&[1000]),
    )
    .await
    .with_label("P");
    let mut q = Client::connect_auth(
        Transport::Ws,
        &edge,
        Auth::new(2).key("kq").accepts(&[1001]),
    )
    .await
    .with_label("Q");
    let mut r = Client::connect_auth(Transport::Tcp, &edge_b, Auth::new(3).key("kr").accepts(&[]))
        .await
        .with_label("R");
    let mut p = nats.raw().await;

    // Broadcast, all on one subject so order is guaranteed.
    p.hpublish("broadcast", &[("Goim-Op", "1001")], b"b1").await;
    p.publish("broadcast", b"b2").await; // op 1000
    p.hpublish("broadcast", &[("Goim-Op", "1001")], b"b3").await;
    p.hpublish("broadcast", &[("Goim-Op", "1000")], b"b4").await;
    pc.expect_push(1000, b"b2").await; // b1 was filtered
    pc.expect_push(1000, b"b4").await; // b3 was filtered
    q.expect_push(1001, b"b1").await;
    q.expect_push(1001, b"b3").await; // b2 was filtered
                                      // R accepts nothing; let it accept 1002 and prove that b1..b4 never arrived.
    r.sub("1002").await;
    p.hpublish("broadcast", &[("Goim-Op", "1002")], b"b5").await;
    p.hpublish("broadcast", &[("Goim-Op", "1001")], b"b6").await;
    p.hpublish("broadcast", &[("Goim-Op", "1000")], b"b7").await;
    r.expect_push(1002, b"b5").await;
    q.expect_push(1001, b"b6").await; // b5 filtered
    pc.expect_push(1000, b"b7").await; // b5, b6 filtered

    // Key pushes: to one connection only, filtered by its accepts.
    p.hpublish("key.kp", &[("Goim-Op", "1001")], b"k1").await;
    p.publish("key.kp", b"k2").await;
    p.publish("key.kq", b"k3").await;
    p.hpublish("key.kq", &[("Goim-Op", "1001")], b"k4").await;
    pc.expect_push(1000, b"k2").await;
    q.expect_push(1001, b"k4").await;

    // Sub adds an op to the accept set, unsub removes it.
    pc.sub("1003,1004").await;
    p.hpublish("key.kp", &[("Goim-Op", "1003")], b"k5").await;
    p.hpublish("key.kp", &[("Goim-Op", "1004")], b"k6").await;
    pc.expect_push(1003, b"k5").await;
    pc.expect_push(1004, b"k6").await;
    pc.unsub("1003").await;
    p.hpublish("key.kp", &[("Goim-Op", "1003")], b"k7").await;
    p.hpublish("key.kp", &[("Goim-Op", "1004")], b"k8").await;
    pc.expect_push(1004, b"k8").await;
    // A sub with a bad element is ignored as a whole (1005 not added).
    pc.sub("1005,abc").await;
    p.hpublish("key.kp", &[("Goim-Op", "1005")], b"k9").await;
    p.publish("key.kp", b"k10").await;
    pc.expect_push(1000, b"k10").await;

    // Keys are escaped into one token.
    let mut odd = Client::connect_auth(
        Transport::Ws,
        &edge,
        Auth::new(9).key("a.b c*>").accepts(&[1000]),
    )
    .await;
    p.publish("key.a.b", b"unescaped").await;
    p.publish("key.a", b"unescaped").await;
    p.publish("key.a=2Eb=20c=2A=3E", b"escaped").await;
    odd.expect_push(1000, b"escaped").await;

    // Nobody received anything else: every client's next push is a final broadcast it accepts.
    p.hpublish("broadcast", &[("Goim-Op", "1000")], b"end")
        .await;
    p.hpublish("broadcast", &[("Goim-Op", "1001")], b"end")
        .await;
    p.hpublish("broadcast", &[("Goim-Op", "1002")], b"end")
        .await;
    pc.expect_push(1000, b"end").await;
    q.expect_push(1001, b"end").await;
    r.expect_push(1002, b"end").await;
    odd.expect_push(1000, b"end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_gets_plain_packets_and_websocket_gets_op9() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut t = Client::connect_auth(Transport::Tcp, &edge, Auth::new(1).room("test://1")).await;
    let mut w = Client::connect_auth(Transport::Ws, &edge, Auth::new(2).room("test://1")).await;
    nats.hpublish("room.test.1", &[("Goim-Op", "1002")], b"hello")
        .await;
    let raw_t = t.recv_packet(WAIT).await.expect("tcp push");
    assert_eq!(
        raw_t,
        Packet::new(1, 1002, 0, b"hello".to_vec()),
        "TCP push must be the plain packet"
    );
    let raw_w = w.recv_packet(WAIT).await.expect("ws push");
    assert_eq!(
        (raw_w.ver, raw_w.op, raw_w.seq),
        (1, OP_RAW, 0),
        "WS push must be an op-9 wrapper: {raw_w:?}"
    );
    let inner = unwrap_raw(&raw_w.body, "ws");
    assert_eq!(inner, vec![Packet::new(1, 1002, 0, b"hello".to_vec())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op4_is_echoed_and_published_to_ingress() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut sub = nats.raw().await;
    sub.subscribe("ingress.>").await;
    let mut c = Client::connect_auth(
        Transport::Tcp,
        &edge,
        Auth::new(42).key("k.1").room("live://1000"),
    )
    .await;
    let r = c.request_with(3, OP_SEND_MSG, 55, br#"{"say":"hi"}"#).await;
    assert_eq!(r, Packet::new(3, OP_SEND_MSG, 55, vec![]));
    let m = sub.next_msg(WAIT).await.expect("ingress message");
    assert_eq!(m.subject, "ingress.room.live.1000");
    assert_eq!(m.header("Goim-Mid"), Some("42"), "{m:?}");
    assert_eq!(m.header("Goim-Key"), Some("k=2E1"), "{m:?}");
    assert_eq!(m.header("Goim-Room"), Some("room.live.1000"), "{m:?}");
    assert_eq!(m.header("Goim-Edge"), Some(edge.id()), "{m:?}");
    // subjects.md §3 lists Goim-Mid/Key/Room/Edge; a Goim-Op header, if the edge adds one, must say 4.
    assert!(matches!(m.header("Goim-Op"), None | Some("4")), "{m:?}");
    assert_eq!(m.payload, br#"{"say":"hi"}"#);

    let mut w = Client::connect_auth(Transport::Ws, &edge, Auth::new(0).key("anon")).await;
    let r = w.request(OP_SEND_MSG, b"no room").await;
    assert_eq!((r.op, r.body.len()), (OP_SEND_MSG, 0));
    let m = sub.next_msg(WAIT).await.expect("ingress message");
    assert_eq!(m.subject, "ingress.none");
    assert_eq!(m.header("Goim-Mid"), Some("0"));
    assert_eq!(m.header("Goim-Key"), Some("anon"));
    assert_eq!(
        m.header("Goim-Room"),
        None,
        "no room, no Goim-Room header: {m:?}"
    );
    assert_eq!(m.payload, b"no room");
    // Nothing else was published (e.g. for the auth or heartbeats).
    w.heartbeat().await;
    assert!(sub.next_msg(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_have_no_user_subscription() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new().exact_subjects()).await;
    let mut c = Client::connect_auth(
        Transport::Tcp,
        &edge,
        Auth::new(0).key("anon-1").accepts(&[1000]),
    )
    .await;
    let subs = nats.edge_subjects().await;
    assert!(
        !subs.iter().any(|s| s.starts_with("user.")),
        "mid 0 must not subscribe a user subject: {subs:?}"
    );
    assert!(subs.iter().any(|s| s == "key.anon-1"), "{subs:?}");
    nats.publish("user.0", b"to-mid-0").await;
    nats.publish("key.anon-1", b"marker").await;
    c.expect_push(1000, b"marker").await;
}

/// The same with the default wildcard subscriptions: a push to `user.0` reaches no anonymous
/// connection, though `user.*` brings it to the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_get_no_user_pushes_through_the_wildcard() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut c = Client::connect_auth(Transport::Tcp, &edge, Auth::new(0).key("anon-1").accepts(&[1000])).await;
    let subs = nats.edge_subjects().await;
    assert!(subs.iter().any(|s| s == "user.*"), "{subs:?}");
    nats.publish("user.0", b"to-mid-0").await;
    nats.publish("key.anon-1", b"marker").await;
    c.expect_push(1000, b"marker").await;
}

/// subjects.md §1: a push whose Goim-Op is not a decimal int32 is refused (never delivered with a
/// guessed op) and counted as `bad_push_op`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_a_bad_goim_op_is_refused_and_counted() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut t = Client::connect_auth(Transport::Tcp, &edge, Auth::new(1).room("live://1")).await;
    let mut w = Client::connect_auth(Transport::Ws, &edge, Auth::new(2).room("live://1")).await;
    let mut p = nats.raw().await;
    let bad = ["abc", "1000x", "4294967296", "", "1.5"];
    for v in bad {
        p.hpublish(
            "room.live.1",
            &[("Goim-Op", v)],
            format!("bad op {v:?}").as_bytes(),
        )
        .await;
    }
    p.hpublish("room.live.1", &[("Goim-Op", " 1001 ")], b"padded")
        .await;
    p.hpublish("room.live.1", &[("Goim-Op", "-7")], b"negative")
        .await;
    // Same subject, so in order: the refused ones would have come first.
    for c in [&mut t, &mut w] {
        let first = c.next_push().await;
        assert!(
            (first.op, first.body.as_slice()) == (1001, &b"padded"[..])
                || (first.op, first.body.as_slice()) == (-7, &b"negative"[..]),
            "{}: a push with a bad Goim-Op was delivered: {first:?}",
            c.label
        );
        if first.op == 1001 {
            c.expect_push(-7, b"negative").await;
        }
    }
    let stats = edge.stats(&nats).await;
    assert!(
        stats["bad_push_op"].as_u64().unwrap_or(0) >= 4,
        "bad_push_op must count the refused pushes: {stats}"
    );
}

/// `push.coalesce_ms`: a room's pushes that arrive within the window reach each member together, in
/// order, in one write (one op-9 message over WebSocket) instead of one write per push; broadcasts
/// filtered by accepts get the packets each member accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_window_batches_pushes_per_member() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new().with("push", "coalesce_ms", "1500")).await;
    let mut tcp = Client::connect_auth(Transport::Tcp, &edge, Auth::new(1).room("live://c").accepts(&[1000])).await.with_label("tcp");
    let mut ws = Client::connect_auth(Transport::Ws, &edge, Auth::new(2).room("live://c").accepts(&[1001])).await.with_label("ws");
    nats.wait_subscription("room.live.c", true, Duration::from_secs(5)).await;
    let before = edge.stats(&nats).await;

    // Ten room pushes spread over ~300 ms (each alone on the wire without a window), then two
    // broadcasts each member accepts only one of.
    let mut p = nats.raw().await;
    for i in 0..10 {
        p.hpublish("room.live.c", &[("Goim-Op", &(2000 + i).to_string())], format!("r{i}").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    p.hpublish("broadcast", &[("Goim-Op", "1000")], b"b-1000").await;
    p.hpublish("broadcast", &[("Goim-Op", "1001")], b"b-1001").await;
    for c in [&mut tcp, &mut ws] {
        for i in 0..10 {
            c.expect_push(2000 + i, format!("r{i}").as_bytes()).await;
        }
    }
    tcp.expect_push(1000, b"b-1000").await;
    ws.expect_push(1001, b"b-1001").await;

    let after = edge.stats(&nats).await;
    let delivered = after["delivered"].as_u64().unwrap() - before["delivered"].as_u64().unwrap();
    let writes = after["writes"].as_u64().unwrap() - before["writes"].as_u64().unwrap();
    assert_eq!(delivered, 22, "{after}");
    // One window per subject: room and broadcast batches, each at most split in two by timing.
    assert!(writes <= 6, "22 deliveries took {writes} writes with a 1.5 s window: {after}");
    // Nothing else arrived (the marker is the next push).
    p.publish("room.live.c", b"end").await;
    tcp.expect_push(1000, b"end").await;
    ws.expect_push(1000, b"end").await;
}
