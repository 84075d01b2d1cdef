//! (e) Handshake and idle timeouts, and duplicate keys kicking the older connection (same edge and
//! across edges).

use std::time::Duration;

use goim_nats_tests::goim::*;
use goim_nats_tests::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_unauthenticated_connections() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, EdgeOpts::new().handshake_timeout_ms(300)).await;

    let start = Instant::now();
    // TCP, silent.
    let mut tcp = Client::connect_tcp(edge.tcp_addr())
        .await
        .with_label("tcp-silent");
    // TCP sending only (ignored) heartbeats: they do not stop the handshake timer.
    let mut tcp_hb = Client::connect_tcp(edge.tcp_addr())
        .await
        .with_label("tcp-heartbeats");
    // A TCP connection to the WebSocket port that never upgrades.
    let mut no_upgrade = Client::connect_tcp(edge.ws_addr())
        .await
        .with_label("ws-never-upgrades");
    // A WebSocket that upgrades but never authenticates.
    let mut ws = Client::connect_ws(edge.ws_addr())
        .await
        .with_label("ws-no-auth");
    // A client that authenticates at once stays.
    let mut ok = Client::connect_auth(Transport::Tcp, &edge, Auth::new(1).room("live://1")).await;

    for _ in 0..3 {
        tcp_hb.send(&Packet::new(1, OP_HEARTBEAT, 1, b"")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in [&mut tcp, &mut tcp_hb, &mut no_upgrade, &mut ws] {
        c.expect_closed(Duration::from_secs(5)).await;
        // Not immediately: the timer is 300 ms (allow scheduling slack below it).
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{} closed after only {:?}",
            c.label,
            start.elapsed()
        );
    }
    // The authenticated client outlived the handshake timeout.
    let waited = start.elapsed();
    if waited < Duration::from_millis(600) {
        tokio::time::sleep(Duration::from_millis(600) - waited).await;
    }
    assert_eq!(ok.heartbeat().await, 1);
    let stats = edge.stats(&nats).await;
    assert!(
        stats["closed"]["handshake_timeout"].as_u64().unwrap_or(0) >= 4,
        "closed.handshake_timeout must count the 4 closes: {stats}"
    );
    edge.assert_alive();
}

/// Send `op` every `every` (reading the echo) until the edge closes the connection or `limit` passes.
/// Returns how long after the start the close came, or None if it stayed open.
async fn keep_sending(
    c: &mut Client,
    op: i32,
    every: Duration,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut seq = 1000;
    while start.elapsed() < limit {
        seq += 1;
        if c.try_send_raw(&Packet::new(1, op, seq, b"x").encode())
            .await
            .is_err()
        {
            return Some(start.elapsed());
        }
        match c.recv_packet(every).await {
            Ok(p) => {
                assert_eq!(p.seq, seq, "{}: unexpected packet {p:?}", c.label);
                let want = match op {
                    OP_HEARTBEAT => OP_HEARTBEAT_REPLY,
                    OP_CHANGE_ROOM => OP_CHANGE_ROOM_REPLY,
                    _ => op,
                };
                assert_eq!(p.op, want, "{}: {p:?}", c.label);
            }
            Err(RecvError::Closed(_)) => return Some(start.elapsed()),
            Err(RecvError::Timeout) => panic!("{}: no reply to op {op} within {every:?}", c.label),
        }
        tokio::time::sleep(every).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_reset_only_by_heartbeats() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, EdgeOpts::new().idle_timeout_ms(500)).await;
    let limit = Duration::from_secs(4);
    let every = Duration::from_millis(100);
    let tasks = [
        (Transport::Tcp, OP_SEND_MSG, false),
        (Transport::Ws, 1000, false),
        (Transport::Tcp, OP_CHANGE_ROOM, false),
        (Transport::Tcp, OP_HEARTBEAT, true),
        (Transport::Ws, OP_HEARTBEAT, true),
    ]
    .map(|(t, op, stays)| {
        let edge = &edge;
        async move {
            let mut c = Client::connect_auth(t, edge, Auth::new(1))
                .await
                .with_label(&format!("{t:?}-op{op}"));
            // Heartbeaters keep going for 3x the idle timeout; the others must be closed before `limit`.
            let run = if stays {
                Duration::from_millis(1500)
            } else {
                limit
            };
            let closed = keep_sending(&mut c, op, every, run).await;
            (c.label.clone(), stays, closed)
        }
    });
    let results = futures_util::future::join_all(tasks).await;
    for (label, stays, closed) in results {
        if stays {
            assert!(
                closed.is_none(),
                "{label}: heartbeating client was closed after {closed:?}"
            );
        } else {
            let at = closed.unwrap_or_else(|| {
                panic!("{label}: not closed within {limit:?} without heartbeats")
            });
            assert!(
                at >= Duration::from_millis(300),
                "{label}: closed after only {at:?} (idle timeout 500 ms)"
            );
        }
    }
    let stats = edge.stats(&nats).await;
    assert!(
        stats["closed"]["idle_timeout"].as_u64().unwrap_or(0) >= 3,
        "closed.idle_timeout: {stats}"
    );
    edge.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_key_kicks_the_older_connection() {
    duplicate_key_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_key_kicks_the_older_connection_wildcard_subjects() {
    duplicate_key_case(false).await;
}

/// `exact`: one subscription per key subject (whose count is checked); else one `key.*` per edge.
async fn duplicate_key_case(exact: bool) {
    let nats = NatsServer::start().await;
    let opts = || if exact { EdgeOpts::new().exact_subjects() } else { EdgeOpts::new() };
    let mut a = Edge::start(&nats, opts()).await;
    let mut b = Edge::start(&nats, opts()).await;

    // Across edges: key on A, then on B → A's connection closed.
    let mut c1 = Client::connect_auth(
        Transport::Tcp,
        &a,
        Auth::new(1).key("dup1").accepts(&[1000]),
    )
    .await
    .with_label("c1@A");
    let mut c2 = Client::connect_auth(Transport::Ws, &b, Auth::new(1).key("dup1").accepts(&[1000]))
        .await
        .with_label("c2@B");
    c1.expect_closed(WAIT).await;
    nats.publish("key.dup1", b"to-newest").await;
    c2.expect_push(1000, b"to-newest").await;
    // A dropped its subscription with its last member: key.dup1 is held once (by B).
    if exact {
    poll(
        "key.dup1 only on B",
        100,
        Duration::from_millis(50),
        || async {
            let n = nats
                .edge_subjects()
                .await
                .iter()
                .filter(|s| *s == "key.dup1")
                .count();
            (n == 1).then_some(())
        },
    )
    .await;
    }

    // Same edge: the older one closed, the newer receives.
    let mut c3 = Client::connect_auth(Transport::Ws, &a, Auth::new(2).key("dup2").accepts(&[1000]))
        .await
        .with_label("c3@A");
    let mut c4 = Client::connect_auth(
        Transport::Tcp,
        &a,
        Auth::new(3).key("dup2").accepts(&[1000]),
    )
    .await
    .with_label("c4@A");
    c3.expect_closed(WAIT).await;
    nats.publish("key.dup2", b"to-c4").await;
    c4.expect_push(1000, b"to-c4").await;
    if exact {
        assert_eq!(
            nats.edge_subjects()
                .await
                .iter()
                .filter(|s| *s == "key.dup2")
                .count(),
            1
        );
    }

    // And back from B to A: the WS connection on B is kicked by a new one on A.
    let mut c5 = Client::connect_auth(
        Transport::Tcp,
        &a,
        Auth::new(1).key("dup1").accepts(&[1000]),
    )
    .await
    .with_label("c5@A");
    c2.expect_closed(WAIT).await;
    nats.publish("key.dup1", b"to-c5").await;
    c5.expect_push(1000, b"to-c5").await;
    // The user subscription of mid 1 survives on A (c5), and pushes to it reach only c5.
    nats.publish("user.1", b"user-1").await;
    c5.expect_push(1000, b"user-1").await;

    let sa = a.stats(&nats).await;
    let sb = b.stats(&nats).await;
    assert!(
        sa["closed"]["kicked"].as_u64().unwrap_or(0) >= 2,
        "A kicked c1 and c3: {sa}"
    );
    assert!(
        sb["closed"]["kicked"].as_u64().unwrap_or(0) >= 1,
        "B kicked c2: {sb}"
    );
    a.assert_alive();
    b.assert_alive();
}
