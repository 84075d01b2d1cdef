//! (g) The edge survives a nats-server restart: its clients stay connected and pushes published after
//! the restart reach them once the edge has reconnected and restored its subscriptions.

use std::time::Duration;

use goim_nats_tests::*;
use tokio::time::Instant;

/// Publish `subject` with a numbered body until `c` receives one of them (bounded); returns the body.
async fn publish_until_delivered(
    nats: &NatsServer,
    c: &mut Client,
    subject: &str,
    limit: Duration,
) -> String {
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < limit {
        i += 1;
        // A fresh raw connection each time: the server may have just come back.
        let mut p = nats.raw().await;
        p.publish(subject, format!("{subject}#{i}").as_bytes())
            .await;
        if let Some(got) = c.try_next_push(Duration::from_millis(250)).await {
            assert_eq!(got.op, 1000, "{got:?}");
            let body = got.body_str();
            assert!(
                body.starts_with(&format!("{subject}#")),
                "unexpected push {got:?}"
            );
            return body;
        }
    }
    panic!(
        "{}: nothing published on {subject} was delivered within {limit:?} after the restart",
        c.label
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_survives_nats_restart() {
    let mut nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut t = Client::connect_auth(
        Transport::Tcp,
        &edge,
        Auth::new(7).key("k7").room("live://r").accepts(&[1000]),
    )
    .await
    .with_label("tcp");
    let mut w = Client::connect_auth(
        Transport::Ws,
        &edge,
        Auth::new(8).key("k8").room("live://r").accepts(&[1000]),
    )
    .await
    .with_label("ws");
    nats.publish("room.live.r", b"before").await;
    t.expect_push(1000, b"before").await;
    w.expect_push(1000, b"before").await;

    nats.restart().await;
    edge.assert_alive();

    // The edge reconnects asynchronously: retry (bounded) until a room push is delivered.
    let first =
        publish_until_delivered(&nats, &mut t, "room.live.r", Duration::from_secs(15)).await;
    // The WS member shares the same room subscription, so its first push after the restart is the same one.
    let got = w.next_push().await;
    assert_eq!(
        got.body_str(),
        first,
        "ws and tcp members must see the same first message after the restart"
    );
    // Drain whatever else of the retries reached them, then check the other subjects are back too.
    while t.try_next_push(Duration::from_millis(300)).await.is_some() {}
    while w.try_next_push(Duration::from_millis(50)).await.is_some() {}
    publish_until_delivered(&nats, &mut t, "user.7", Duration::from_secs(15)).await;
    publish_until_delivered(&nats, &mut w, "key.k8", Duration::from_secs(15)).await;

    // The connections themselves never dropped.
    assert_eq!(t.heartbeat().await, 2);
    assert_eq!(w.heartbeat().await, 2);
    // New clients and new subjects work after the restart, without retries (op 8 guarantees it).
    let mut n = Client::connect_auth(Transport::Tcp, &edge, Auth::new(9).room("live://new")).await;
    nats.publish("room.live.new", b"fresh").await;
    n.expect_push(1000, b"fresh").await;
    // Stats requests are answered again.
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["connections"].as_u64(), Some(3), "{stats}");
    edge.assert_alive();
}
