//! Soak (issue 7): a bounded run of connection churn, room changes and pushes against two edges and
//! goim-history, asserting that nothing stored is lost and that the edges' memory stays flat.
//!
//! `#[ignore]`d in `make test` (it runs for minutes): `make soak` runs it for `GOIM_SOAK_SECS`
//! (default 1800); by hand: `GOIM_SOAK_SECS=60 cargo test -p goim-nats-tests --test soak -- --ignored
//! --nocapture`. RELIABILITY.md holds the results of the 30-minute run.
//!
//! Load: a publisher pushes `{"r": room, "n": k}` to four stored rooms (JetStream-acknowledged, retried
//! with a message id until acknowledged, so k is gap-free per room), while logical clients churn:
//! connect to either edge over TCP or WebSocket, follow a room for 0.2–2.5 s, sometimes change room in
//! band (op 12) or on reconnect, disconnect, pause, and reconnect with `"resume": {"room": <last seq>}`.
//! Every push a client receives while following a room must be the next k of that room (no gap, no
//! duplicate, across reconnects and edges); a resume must never answer recovery-failed; at the end
//! every client reaches the last k of its room. The edges' RSS is sampled every 5 s and the end of the
//! run must not exceed the start (after warm-up) by more than a bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use goim_nats_tests::goim::*;
use goim_nats_tests::history::{History, HistoryOpts};
use goim_nats_tests::*;
use serde_json::{json, Value};
use tokio::time::Instant;

const ROOMS: usize = 4;
const CLIENTS: usize = 24;
const PUSH_EVERY: Duration = Duration::from_millis(25);

/// What every logical client counted.
#[derive(Default, Debug)]
struct Tally {
    sessions: AtomicU64,
    room_changes: AtomicU64,
    received: AtomicU64,
    replayed: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    recovery_failed: AtomicU64,
}

/// A small deterministic generator (no dependency): xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn room_id(r: usize) -> String {
    format!("soak://{r}")
}

/// The room a logical client follows: last k and push seq received in it.
struct Follow {
    room: usize,
    last_n: u64,
    last_seq: Option<u64>,
}

impl Follow {
    fn new(room: usize) -> Follow {
        Follow { room, last_n: 0, last_seq: None }
    }

    /// Account for one push of room `r`, number `n`, header seq `seq`.
    fn on_push(&mut self, r: usize, n: u64, seq: i32, tally: &Tally, who: &str) {
        if r != self.room {
            return; // a leftover of the room just left
        }
        tally.received.fetch_add(1, Ordering::Relaxed);
        if self.last_n != 0 {
            if n <= self.last_n {
                tally.duplicates.fetch_add(1, Ordering::Relaxed);
                eprintln!("{who}: duplicate in room {r}: {n} after {}", self.last_n);
                return;
            }
            if n != self.last_n + 1 {
                tally.gaps.fetch_add(1, Ordering::Relaxed);
                eprintln!("{who}: GAP in room {r}: {} → {n}", self.last_n);
            }
        }
        self.last_n = n;
        self.last_seq = Some(u64::from(seq as u32 & ((1 << 30) - 1)));
    }
}

/// Read until `until` (or the connection ends), feeding pushes to `follow`. Returns false when the
/// connection closed.
async fn read_for(c: &mut Client, follow: &mut Follow, until: Instant, tally: &Tally) -> bool {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let p = match c.recv_packet(left).await {
            Ok(p) => p,
            Err(RecvError::Timeout) => return true,
            Err(RecvError::Closed(_)) => return false,
        };
        handle_packet(c, p, follow, tally);
    }
}

fn handle_packet(c: &Client, p: Packet, follow: &mut Follow, tally: &Tally) {
    let packets = if p.op == OP_RAW { unwrap_raw(&p.body, &c.label) } else { vec![p] };
    for p in packets {
        match p.op {
            op if op >= 1000 => {
                let v: Value = serde_json::from_slice(&p.body).unwrap_or_default();
                let (Some(r), Some(n)) = (v["r"].as_u64(), v["n"].as_u64()) else { continue };
                follow.on_push(r as usize, n, p.seq, tally, &c.label);
            }
            20 => {
                let v: Value = serde_json::from_slice(&p.body).unwrap_or_default();
                if v["room"]["ok"] == json!(true) {
                    tally.replayed.fetch_add(v["room"]["replayed"].as_u64().unwrap_or(0), Ordering::Relaxed);
                } else {
                    tally.recovery_failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{}: recovery failed: {v}", c.label);
                }
            }
            _ => {}
        }
    }
}

/// Connect to `edge` and authenticate into `follow.room`, resuming from its last seq if any.
async fn session_start(edge: &Edge, ws: bool, mid: i64, follow: &Follow, label: &str) -> Option<Client> {
    let mut c = if ws { Client::connect_ws(edge.ws_addr()).await } else { Client::connect_tcp(edge.tcp_addr()).await }.with_label(label);
    let mut body = json!({"mid": mid, "room_id": room_id(follow.room), "accepts": [1000]});
    if let Some(seq) = follow.last_seq {
        body["resume"] = json!({"room": seq});
    }
    c.send(&Packet::new(1, OP_AUTH, 1, body.to_string().into_bytes())).await;
    match c.recv_packet(Duration::from_secs(10)).await {
        Ok(p) if p.op == OP_AUTH_REPLY => Some(c),
        other => {
            eprintln!("{label}: auth failed: {other:?}");
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn logical_client(
    i: usize,
    edges: Arc<Vec<Edge>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    published: Arc<Vec<AtomicU64>>,
) -> Result<(), String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut follow = Follow::new(i % ROOMS);
    let mid = 10_000 + i as i64;
    while !stop.load(Ordering::Relaxed) {
        let edge = &edges[rng.below(2) as usize];
        let ws = rng.below(2) == 1;
        let label = format!("client{i}");
        tally.sessions.fetch_add(1, Ordering::Relaxed);
        let Some(mut c) = session_start(edge, ws, mid, &follow, &label).await else {
            return Err(format!("{label}: could not authenticate"));
        };
        let until = Instant::now() + Duration::from_millis(200 + rng.below(2300));
        if !read_for(&mut c, &mut follow, until, &tally).await {
            return Err(format!("{label}: closed by the edge"));
        }
        if rng.below(4) == 0 {
            // In-band room change: from the op-13 answer on, the new room's pushes count.
            let to = (follow.room + 1 + rng.below(ROOMS as u64 - 1) as usize) % ROOMS;
            c.send(&Packet::new(1, OP_CHANGE_ROOM, 2, room_id(to).into_bytes())).await;
            let mut old = std::mem::replace(&mut follow, Follow::new(to));
            loop {
                let p = c.recv_packet(Duration::from_secs(10)).await.map_err(|e| format!("{label}: no op 13: {e:?}"))?;
                if p.op == OP_CHANGE_ROOM_REPLY {
                    break;
                }
                handle_packet(&c, p, &mut old, &tally);
            }
            tally.room_changes.fetch_add(1, Ordering::Relaxed);
            let until = Instant::now() + Duration::from_millis(200 + rng.below(1000));
            if !read_for(&mut c, &mut follow, until, &tally).await {
                return Err(format!("{label}: closed by the edge"));
            }
        }
        drop(c);
        if rng.below(5) == 0 {
            // Reconnect into another room (no resume: a new follow).
            follow = Follow::new((follow.room + 1) % ROOMS);
            tally.room_changes.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
    }
    // Final: back once more (resuming) and read up to the last acknowledged push of the room.
    let edge = &edges[i % 2];
    let Some(mut c) = session_start(edge, false, mid, &follow, &format!("client{i}-final")).await else {
        return Err(format!("client{i}: final auth failed"));
    };
    let want = published[follow.room].load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while follow.last_n < want {
        if Instant::now() > deadline {
            return Err(format!("client{i}: reached {} of {want} in room {}", follow.last_n, follow.room));
        }
        if !read_for(&mut c, &mut follow, Instant::now() + Duration::from_millis(500), &tally).await {
            return Err(format!("client{i}: closed during the final read"));
        }
        if follow.last_n == 0 {
            // Joined without anything to resume and nothing new arrives: nothing to check.
            break;
        }
    }
    Ok(())
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: make soak"]
async fn soak_churn_rooms_and_pushes_lose_nothing_and_memory_stays_flat() {
    let secs: u64 = std::env::var("GOIM_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1800);
    let nats = NatsServer::start().await;
    let _history = History::start(&nats, HistoryOpts::new()).await;
    let edges = Arc::new(vec![Edge::start(&nats, EdgeOpts::new()).await, Edge::start(&nats, EdgeOpts::new()).await]);
    let pids: Vec<u32> = edges.iter().filter_map(|e| e.pid()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..ROOMS).map(|_| AtomicU64::new(0)).collect());

    // Publisher: gap-free k per room, each JetStream-acknowledged (retried with its id until it is).
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let publisher = {
        let (stop, published) = (stop.clone(), published.clone());
        tokio::spawn(async move {
            let mut n = [0u64; ROOMS];
            let mut retries = 0u64;
            let mut tick = tokio::time::interval(PUSH_EVERY);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for (r, k) in n.iter_mut().enumerate() {
                    *k += 1;
                    let body = json!({"r": r, "n": *k}).to_string();
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("soak-{r}-{k}").as_str());
                    for attempt in 0..100 {
                        let acked = match js.publish_with_headers(format!("room.soak.{r}"), headers.clone(), body.clone().into()).await {
                            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        match acked {
                            Ok(()) => break,
                            Err(e) if attempt == 99 => panic!("push {r}/{k} never acknowledged: {e}"),
                            Err(_) => retries += 1,
                        }
                    }
                    published[r].store(*k, Ordering::Relaxed);
                }
            }
            (n.iter().sum::<u64>(), retries)
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(logical_client(i, edges.clone(), stop.clone(), tally.clone(), published.clone())))
        .collect();

    // RSS every 5 s; progress every minute.
    let started = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss: u64 = pids.iter().map(|p| rss_kb(*p)).sum();
        samples.push((started.elapsed().as_secs(), rss));
        #[allow(clippy::manual_is_multiple_of)] // usize::is_multiple_of is Rust 1.87; the workspace promises 1.85
        if samples.len() % 12 == 0 {
            println!(
                "soak {:>5} s: edges RSS {:>6} KB, sessions {}, received {}, replayed {}, gaps {}, dups {}, recovery failed {}",
                started.elapsed().as_secs(),
                rss,
                tally.sessions.load(Ordering::Relaxed),
                tally.received.load(Ordering::Relaxed),
                tally.replayed.load(Ordering::Relaxed),
                tally.gaps.load(Ordering::Relaxed),
                tally.duplicates.load(Ordering::Relaxed),
                tally.recovery_failed.load(Ordering::Relaxed),
            );
        }
        for e in edges.iter() {
            assert!(e.pid().is_some_and(|p| rss_kb(p) > 0), "an edge died");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (pushed, retries) = publisher.await.expect("publisher");
    let mut failures = Vec::new();
    for c in clients {
        if let Err(e) = c.await.expect("client task") {
            failures.push(e);
        }
    }

    let n = samples.len().max(1);
    let early = &samples[..(n / 5).max(1)];
    let late = &samples[n - (n / 5).max(1)..];
    let early_max = early.iter().map(|s| s.1).max().unwrap_or(0);
    let late_max = late.iter().map(|s| s.1).max().unwrap_or(0);
    let stats: Vec<Value> = {
        let mut v = Vec::new();
        for e in edges.iter() {
            v.push(e.stats(&nats).await);
        }
        v
    };
    let closed_slow: u64 = stats.iter().map(|s| s["closed"]["slow_consumer"].as_u64().unwrap_or(0)).sum();
    println!(
        "SOAK RESULT: {secs} s, {} pushes ({retries} publish retries), {} sessions, {} room changes, {} received, {} replayed by resume, gaps {}, duplicates {}, recovery failed {}, client failures {}, slow_consumer closes {closed_slow}, edges RSS first fifth max {early_max} KB → last fifth max {late_max} KB ({} samples)",
        pushed,
        tally.sessions.load(Ordering::Relaxed),
        tally.room_changes.load(Ordering::Relaxed),
        tally.received.load(Ordering::Relaxed),
        tally.replayed.load(Ordering::Relaxed),
        tally.gaps.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed),
        tally.recovery_failed.load(Ordering::Relaxed),
        failures.len(),
        samples.len(),
    );
    assert!(failures.is_empty(), "client failures: {failures:?}");
    assert_eq!(tally.gaps.load(Ordering::Relaxed), 0, "gaps");
    assert_eq!(tally.duplicates.load(Ordering::Relaxed), 0, "duplicates");
    assert_eq!(tally.recovery_failed.load(Ordering::Relaxed), 0, "recovery failed");
    assert!(tally.replayed.load(Ordering::Relaxed) > 0, "no resume replayed anything: the churn did not exercise resume");
    // Flat memory: the end may exceed the start by 25 % plus 8 MB (allocator and map growth noise).
    assert!(late_max <= early_max + early_max / 4 + 8 * 1024, "edge RSS grew: {early_max} KB → {late_max} KB: {samples:?}");
}
