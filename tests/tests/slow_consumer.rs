//! (f) A client that never reads is disconnected as a slow consumer once its queued bytes pass
//! `limits.max_outbound_bytes`, while 1,000 other clients in the same room on the same edge receive
//! every single message, in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use goim_nats_tests::*;
use tokio::time::Instant;

const FAST: usize = 1000;
const BODY: usize = 4096;
const LIMIT: usize = 16384;
/// Messages per round; a round is published, then every fast client must have it before the next.
/// A round (8 KiB) is below the limit, so a client that keeps reading never has more than that queued
/// in the edge, whatever the scheduling; only the client that stopped reading accumulates.
const ROUND: usize = 2;
/// At least this many rounds (512 KiB, several times the slow socket's kernel buffers + the 16 KiB
/// limit), at most MAX_ROUNDS (4 MiB) until the edge reports the slow consumer.
const MIN_ROUNDS: usize = 64;
const MAX_ROUNDS: usize = 512;
const END_OP: i32 = 1999;

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:010}:").into_bytes();
    b.resize(BODY, b'.');
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_others_get_everything() {
    let nats = NatsServer::start().await;
    let mut edge = Edge::start(&nats, EdgeOpts::new().max_outbound_bytes(LIMIT).no_ws()).await;
    let room = "live://slow";
    let subject = "room.live.slow";

    // The slow client: small kernel buffers on its side and a small MSS (which keeps the edge's send
    // buffer for it small too), authenticates, then never reads again.
    let mut slow = Client::connect_tcp_small_buffers(edge.tcp_addr())
        .await
        .with_label("slow");
    slow.auth(&Auth::new(1).room(room)).await;

    // 1,000 fast clients in the same room, each in its own task counting every message.
    let received = Arc::new(AtomicU64::new(0));
    let mut fast = Vec::with_capacity(FAST);
    for chunk in 0..(FAST / 100) {
        let conns = futures_util::future::join_all((0..100).map(|j| {
            let edge = &edge;
            async move {
                let mid = 1000 + (chunk * 100 + j) as i64;
                Client::connect_auth(Transport::Tcp, edge, Auth::new(mid).room(room).accepts(&[]))
                    .await
            }
        }))
        .await;
        fast.extend(conns);
    }
    let mut tasks: Vec<_> = fast
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let received = received.clone();
            tokio::spawn(async move {
                let mut next = 0usize;
                loop {
                    let p = c
                        .try_next_push(Duration::from_secs(60))
                        .await
                        .unwrap_or_else(|| {
                            panic!("fast client #{k}: stalled after {next} messages")
                        });
                    if p.op == END_OP {
                        return (c, next);
                    }
                    assert_eq!(p.op, 1000, "fast client #{k}: {p:?}");
                    assert_eq!(
                        p.body.len(),
                        BODY,
                        "fast client #{k}: message {next} has the wrong size"
                    );
                    let want = format!("{next:010}:");
                    assert!(
                        p.body.starts_with(want.as_bytes()),
                        "fast client #{k}: expected message {next}, got {:?}",
                        String::from_utf8_lossy(&p.body[..11])
                    );
                    next += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let stats = edge.stats(&nats).await;
    assert_eq!(
        stats["connections"].as_u64(),
        Some(FAST as u64 + 1),
        "{stats}"
    );

    let mut p = nats.raw().await;
    let mut published = 0usize;
    let mut rounds = 0;
    let started = Instant::now();
    loop {
        for _ in 0..ROUND {
            p.publish_nowait(subject, &body(published)).await;
            published += 1;
        }
        p.flush().await;
        rounds += 1;
        // Pace: wait until every fast client has everything so far (bounded).
        let want = (published * FAST) as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Relaxed) < want {
            if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
                let r = tasks.swap_remove(i).await;
                panic!(
                    "fast client finished early in round {rounds}: {:?}",
                    r.map(|(c, n)| (c.label, n))
                );
            }
            assert!(
                Instant::now() < deadline,
                "fast clients fell behind: {} of {want} deliveries after round {rounds}",
                received.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if rounds >= MIN_ROUNDS {
            let s = edge.stats(&nats).await;
            if s["closed"]["slow_consumer"].as_u64().unwrap_or(0) >= 1 || rounds >= MAX_ROUNDS {
                eprintln!("stats after round {rounds}: {s}");
                break;
            }
        }
    }
    eprintln!(
        "published {published} x {BODY} B in {rounds} rounds, {:?}",
        started.elapsed()
    );
    p.hpublish(subject, &[("Goim-Op", &END_OP.to_string())], b"end")
        .await;

    let mut fast = Vec::with_capacity(FAST);
    for t in tasks {
        let (c, n) = t.await.expect("fast client task panicked");
        assert_eq!(n, published, "{}: got {n} of {published} messages", c.label);
        fast.push(c);
    }

    let stats = edge.stats(&nats).await;
    assert!(
        stats["closed"]["slow_consumer"].as_u64().unwrap_or(0) >= 1,
        "the non-reading client was not disconnected as a slow consumer after {published} x {BODY} B: {stats}"
    );
    // The slow client was really cut off: reading now yields part of the stream, then EOF.
    let drained = slow
        .expect_closed_after_draining(Duration::from_secs(10))
        .await;
    assert!(
        drained < published,
        "slow client got {drained} of {published}: it was not cut off"
    );
    // Only it: the fast clients are all still connected and in the room.
    assert_eq!(
        fast[0].heartbeat().await,
        FAST as i32,
        "room count on the edge"
    );
    assert_eq!(fast[FAST - 1].heartbeat().await, FAST as i32);
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["connections"].as_u64(), Some(FAST as u64), "{stats}");
    assert_eq!(
        stats["closed"]["slow_consumer"].as_u64(),
        Some(1),
        "only the slow client: {stats}"
    );
    edge.assert_alive();
}
