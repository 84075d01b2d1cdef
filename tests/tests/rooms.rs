//! (c) Room membership: moving rooms (op 12) stops delivery from the old room and starts it from the
//! new; one NATS subscription per subject per edge; the last local member leaving (move, room "",
//! disconnect) removes the edge's subscription.

use std::time::Duration;

use goim_nats_tests::*;

const GONE: Duration = Duration::from_secs(5);

fn count(subs: &[String], subject: &str) -> usize {
    subs.iter().filter(|s| *s == subject).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_rooms_and_last_member_unsubscribes() {
    let nats = NatsServer::start().await;
    // Negatives across subjects use a witness: a member of the old subject receives the push first,
    // then a marker is sent to the connection under test on another subject.
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut x = Client::connect_auth(
        Transport::Tcp,
        &edge,
        Auth::new(1).key("kx").room("live://1").accepts(&[1000]),
    )
    .await
    .with_label("X");
    let mut y = Client::connect_auth(
        Transport::Ws,
        &edge,
        Auth::new(2).key("ky").room("live://1").accepts(&[1000]),
    )
    .await
    .with_label("Y");
    let mut z = Client::connect_auth(
        Transport::Tcp,
        &edge,
        Auth::new(3).key("kz").room("live://2").accepts(&[1000]),
    )
    .await
    .with_label("Z");
    let subs = nats.edge_subjects().await;
    assert_eq!(
        count(&subs, "room.live.1"),
        1,
        "one subscription per subject per edge: {subs:?}"
    );
    assert_eq!(count(&subs, "room.live.2"), 1, "{subs:?}");

    // X moves from live://1 to live://2.
    x.change_room("live://2").await;
    assert_eq!(x.heartbeat().await, 2, "X and Z in live://2");
    assert_eq!(y.heartbeat().await, 1, "Y alone in live://1");
    let mut p = nats.raw().await;
    p.publish("room.live.1", b"old").await;
    p.publish("room.live.2", b"new").await;
    y.expect_push(1000, b"old").await; // witness: the edge has fanned "old" out
    z.expect_push(1000, b"new").await;
    p.publish("key.kx", b"after-old").await;
    x.expect_push(1000, b"new").await;
    x.expect_push(1000, b"after-old").await; // "old" did not reach X
    let subs = nats.edge_subjects().await;
    assert_eq!(
        count(&subs, "room.live.1"),
        1,
        "Y still in live://1: {subs:?}"
    );
    assert_eq!(count(&subs, "room.live.2"), 1, "{subs:?}");

    // Y leaves with room "": the last member of live://1 is gone, so is the subscription.
    y.change_room("").await;
    assert_eq!(y.heartbeat().await, 0);
    nats.wait_subscription("room.live.1", false, GONE).await;
    p.publish("room.live.1", b"nobody-home").await;
    p.publish("key.ky", b"marker-y").await;
    y.expect_push(1000, b"marker-y").await;

    // X leaves live://2 but Z stays: the subscription stays.
    x.change_room("").await;
    assert_eq!(z.heartbeat().await, 1);
    let subs = nats.edge_subjects().await;
    assert_eq!(
        count(&subs, "room.live.2"),
        1,
        "Z still in live://2: {subs:?}"
    );
    p.publish("room.live.2", b"only-z").await;
    z.expect_push(1000, b"only-z").await; // witness
    p.publish("key.kx", b"marker-x").await;
    x.expect_push(1000, b"marker-x").await;

    // Z moves to live://3 together with X and Y: live://2 is unsubscribed, live://3 subscribed once.
    z.change_room("live://3").await;
    x.change_room("live://3").await;
    y.change_room("live://3").await;
    nats.wait_subscription("room.live.2", false, GONE).await;
    let subs = nats.edge_subjects().await;
    assert_eq!(count(&subs, "room.live.3"), 1, "{subs:?}");
    assert_eq!(z.heartbeat().await, 3);
    p.publish("room.live.3", b"three").await;
    for c in [&mut x, &mut y, &mut z] {
        c.expect_push(1000, b"three").await;
    }

    // Moving to the same room again keeps membership intact (no double count, still delivered).
    x.change_room("live://3").await;
    assert_eq!(x.heartbeat().await, 3);

    // Disconnects are leaves too.
    drop(x);
    drop(y);
    let mut n = -1;
    for _ in 0..100 {
        n = z.heartbeat().await;
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 1, "X and Y disconnected: Z alone in live://3");
    drop(z);
    nats.wait_subscription("room.live.3", false, GONE).await;
    // Their user and key subjects went with them: no subscription but the per-edge wildcards, and
    // no subject left in the edge's hub.
    poll(
        "user/key subjects gone",
        100,
        Duration::from_millis(50),
        || async {
            let subs = nats.edge_subjects().await;
            let stats = edge.stats(&nats).await;
            (!subs.iter().any(|s| {
                (s.starts_with("user.") || s.starts_with("key.") || s.starts_with("room.")) && !s.ends_with(".*")
            }) && stats["subjects"] == 0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_in_auth_and_rooms_without_scheme() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut a = Client::connect_auth(Transport::Ws, &edge, Auth::new(1).room("lobby")).await;
    let mut b = Client::connect_auth(Transport::Tcp, &edge, Auth::new(2)).await;
    b.change_room("lobby").await;
    nats.wait_subscription("room.lobby", true, GONE).await;
    nats.hpublish("room.lobby", &[("Goim-Op", "1010")], b"hi")
        .await;
    a.expect_push(1010, b"hi").await;
    b.expect_push(1010, b"hi").await;
    assert_eq!(a.heartbeat().await, 2);
}
