//! Edge lifecycle: a SIGTERM drains an edge (listeners closed at once, presence withdrawn, clients let
//! go with a goim-compatible close spread over `edge.drain_ms`, exit 0 within the bound), a SIGKILL
//! just drops everyone; either way the clients reconnect to another edge, resume from the last
//! sequence they saw and get every JetStream-acknowledged message of their stored room exactly once,
//! in order. New connects during a drain go to a sibling edge on the same SO_REUSEPORT port, or are
//! refused where no sibling listens.
//!
//! Real goim-history (provisions the streams), real edges, real goim clients over TCP and WebSocket.
//! Every measured figure is printed (`-- --nocapture`); RELIABILITY.md quotes them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use goim_nats_tests::edge::toml_str;
use goim_nats_tests::goim::*;
use goim_nats_tests::history::{History, HistoryOpts, JsPub};
use goim_nats_tests::*;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

const ROOM: &str = "live://drain";
const SUBJECT: &str = "room.live.drain";
/// Clients per test, half TCP, half WebSocket (`GOIM_DRAIN_CLIENTS` for a larger run by hand).
fn clients() -> usize {
    std::env::var("GOIM_DRAIN_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}
/// `edge.drain_ms` of edge A (`GOIM_DRAIN_MS` for a run by hand).
fn drain_ms() -> u64 {
    std::env::var("GOIM_DRAIN_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}
/// The edge's own margin (edge/src/config.rs DRAIN_MARGIN) plus process start/stop slack.
const EXIT_SLACK: Duration = Duration::from_millis(1_500);
/// Messages published after the edge went away, before the publisher stops.
const AFTER: usize = 300;
/// Messages a client misses between its close and its reconnect (so the resume has to replay).
const RECONNECT_AFTER: u64 = 50;

/// The 30-bit stream sequence of a push's seq field (class in the top two bits).
fn stream_seq(seq: i32) -> u64 {
    (seq as u32 & ((1 << 30) - 1)) as u64
}

/// What one roaming client saw.
#[derive(Debug)]
struct Roamed {
    label: String,
    /// Bodies of every push, in arrival order, over both connections.
    bodies: Vec<String>,
    /// When and how the first edge closed the connection.
    closed_at: Instant,
    closed_how: String,
    /// The op-20 answer on the second edge.
    resume: Value,
    /// For failure reports: pushes received on the first edge, the sequence resumed from, and the
    /// (sequence, body) of every push in arrival order.
    on_first: usize,
    resumed_from: u64,
    seqs: Vec<(u64, String)>,
}

/// Shared progress: pushes received so far by every client.
#[derive(Default)]
struct Progress {
    min_received: Vec<AtomicUsize>,
    /// Clients authenticated on the first edge.
    joined: AtomicUsize,
    /// Clients whose resume on the second edge was answered (op 20).
    resumed: AtomicUsize,
}

/// Authenticate (op 7 with `body`), return after op 8. Room pushes may come first (the edge joins the
/// room before it answers): they are kept.
async fn auth(c: &mut Client, body: Value, bodies: &mut Vec<(u64, String)>, last_seq: &mut u64) {
    c.send(&Packet::new(1, OP_AUTH, 1, body.to_string().into_bytes())).await;
    loop {
        let p = c.recv_packet(WAIT).await.unwrap_or_else(|e| panic!("{}: no auth reply: {e:?}", c.label));
        if p.op == OP_AUTH_REPLY {
            return;
        }
        let packets = if p.op == OP_RAW { unwrap_raw(&p.body, &c.label) } else { vec![p] };
        for p in packets {
            assert!(p.op >= 1000, "{}: {p:?} before the auth reply", c.label);
            *last_seq = stream_seq(p.seq);
            bodies.push((*last_seq, p.body_str()));
        }
    }
}

async fn connect(transport: Transport, addr: std::net::SocketAddr) -> Client {
    match transport {
        Transport::Tcp => Client::connect_tcp(addr).await,
        Transport::Ws => Client::connect_ws(addr).await,
    }
}

/// Read pushes until `stop` (the number of acknowledged messages, once the publisher is done) is
/// reached or the connection closes. Returns the close description, if closed.
async fn read_until(
    c: &mut Client,
    bodies: &mut Vec<(u64, String)>,
    last_seq: &mut u64,
    resume: &mut Option<Value>,
    stop: &watch::Receiver<Option<usize>>,
    progress: &AtomicUsize,
    resumed: Option<&AtomicUsize>,
) -> Option<String> {
    loop {
        if let Some(total) = *stop.borrow() {
            if bodies.len() >= total {
                return None;
            }
        }
        let p = match c.recv_packet(Duration::from_millis(200)).await {
            Ok(p) => p,
            Err(RecvError::Timeout) => continue,
            Err(RecvError::Closed(how)) => return Some(how),
        };
        let packets = if p.op == OP_RAW { unwrap_raw(&p.body, &c.label) } else { vec![p] };
        for p in packets {
            if p.op == 20 {
                *resume = Some(serde_json::from_slice(&p.body).expect("op 20 JSON"));
                if let Some(resumed) = resumed {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
            } else if p.op >= 1000 {
                *last_seq = stream_seq(p.seq);
                bodies.push((*last_seq, p.body_str()));
                progress.store(bodies.len(), Ordering::Relaxed);
            }
        }
    }
}

/// One client: on edge `first` in the stored room until that edge closes it, then on `second` with
/// `resume` from the last sequence it saw, until it has `stop` messages.
async fn roam(i: usize, first: std::net::SocketAddr, second: std::net::SocketAddr, transport: Transport, stop: watch::Receiver<Option<usize>>, progress: Arc<Progress>, acked: Arc<AtomicU64>) -> Roamed {
    let label = format!("{transport:?}-{i}");
    let mut c = connect(transport, first).await.with_label(&label);
    let (mut bodies, mut last_seq, mut resume) = (Vec::new(), 0u64, None);
    auth(&mut c, json!({"mid": 100 + i, "room_id": ROOM, "accepts": [1000]}), &mut bodies, &mut last_seq).await;
    progress.joined.fetch_add(1, Ordering::Relaxed);
    let closed_how = read_until(&mut c, &mut bodies, &mut last_seq, &mut resume, &stop, &progress.min_received[i], None)
        .await
        .unwrap_or_else(|| panic!("{label}: the publisher stopped before the first edge closed the connection"));
    let closed_at = Instant::now();
    let on_first = bodies.len();
    assert!(last_seq > 0, "{label}: closed before its first push");
    // A client's reconnect backoff: away while RECONNECT_AFTER more messages are acknowledged.
    let away_from = acked.load(Ordering::Relaxed);
    poll(&format!("{label}: {RECONNECT_AFTER} messages acknowledged while away"), 1000, Duration::from_millis(5), || {
        let n = acked.load(Ordering::Relaxed);
        async move { (n >= away_from + RECONNECT_AFTER).then_some(()) }
    })
    .await;
    // Reconnect elsewhere and resume from the last sequence seen.
    let mut c = connect(transport, second).await.with_label(&format!("{label}-resumed"));
    let resume_from = last_seq;
    auth(&mut c, json!({"mid": 100 + i, "room_id": ROOM, "accepts": [1000], "resume": {"room": resume_from}}), &mut bodies, &mut last_seq).await;
    let resumed = &progress.resumed;
    let progress = &progress.min_received[i];
    if let Some(how) = read_until(&mut c, &mut bodies, &mut last_seq, &mut resume, &stop, progress, Some(resumed)).await {
        panic!("{label}: the second edge closed the connection too: {how}");
    }
    Roamed {
        label,
        bodies: bodies.iter().map(|(_, b)| b.clone()).collect(),
        closed_at,
        closed_how,
        resume: resume.unwrap_or(Value::Null),
        on_first,
        resumed_from: resume_from,
        seqs: bodies,
    }
}

/// Publishes to the stored room until stopped; returns the acknowledged bodies in stream order.
async fn publisher(nats: &NatsServer, stop: watch::Receiver<bool>, acked_count: Arc<AtomicU64>) -> tokio::task::JoinHandle<Vec<String>> {
    let mut js = JsPub::new(nats).await;
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut last = 0;
        for n in 0.. {
            if *stop.borrow() {
                break;
            }
            let body = format!("m{n:06}");
            let seq = js.seq(SUBJECT, &[], body.as_bytes()).await;
            assert!(seq > last, "stream sequences increase");
            last = seq;
            acked.push(body);
            acked_count.store(acked.len() as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        acked
    })
}

/// How edge A goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Sigterm,
    Sigkill,
}

async fn clients_move_to_another_edge_without_loss(fault: Fault) {
    let (n_clients, drain) = (clients(), drain_ms());
    let nats = NatsServer::start().await;
    let _history = History::start(&nats, HistoryOpts::new()).await;
    let opts = || EdgeOpts::new().with("edge", "drain_ms", drain.to_string());
    let mut a = Edge::start(&nats, opts()).await;
    let b = Edge::start(&nats, opts()).await;

    // A's presence report is in the KV bucket while it serves.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let a_key = format!("edge.{}", a.id());
    let kv = poll("presence bucket", 200, Duration::from_millis(50), || {
        let js = js.clone();
        async move { js.get_key_value("goim_presence").await.ok() }
    })
    .await;
    poll("A's presence report", 200, Duration::from_millis(50), || {
        let kv = kv.clone();
        let key = a_key.clone();
        async move { kv.get(&key).await.ok().flatten().map(|_| ()) }
    })
    .await;

    let (stop_tx, stop_rx) = watch::channel(None);
    let acked_count = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress { min_received: (0..n_clients).map(|_| AtomicUsize::new(0)).collect(), joined: AtomicUsize::new(0), resumed: AtomicUsize::new(0) });
    let clients: Vec<_> = (0..n_clients)
        .map(|i| {
            let transport = if i % 2 == 0 { Transport::Tcp } else { Transport::Ws };
            let (first, second) = match transport {
                Transport::Tcp => (a.tcp_addr(), b.tcp_addr()),
                Transport::Ws => (a.ws_addr(), b.ws_addr()),
            };
            tokio::spawn(roam(i, first, second, transport, stop_rx.clone(), progress.clone(), acked_count.clone()))
        })
        .collect();
    // Every client is in the room before the first message.
    poll("every client joined on edge A", 400, Duration::from_millis(25), || {
        let progress = progress.clone();
        async move { (progress.joined.load(Ordering::Relaxed) == n_clients).then_some(()) }
    })
    .await;
    let (pub_stop_tx, pub_stop_rx) = watch::channel(false);
    let publishing = publisher(&nats, pub_stop_rx, acked_count.clone()).await;
    // Every client is receiving on A before the fault.
    poll("every client receiving on edge A", 400, Duration::from_millis(25), || {
        let progress = progress.clone();
        async move { progress.min_received.iter().all(|n| n.load(Ordering::Relaxed) >= 10).then_some(()) }
    })
    .await;

    // A presence watcher: when did A's report disappear?
    let withdrawn_at = Arc::new(Mutex::new(None::<Instant>));
    let watcher = {
        let (kv, key, at) = (kv.clone(), a_key.clone(), withdrawn_at.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if kv.get(&key).await.ok().flatten().is_none() {
                    *at.lock().unwrap() = Some(Instant::now());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let acked_before = acked_count.load(Ordering::Relaxed);
    let fault_at = Instant::now();
    let status = match fault {
        // Blocks this worker while the edge drains; the clients run on the others.
        Fault::Sigterm => tokio::task::block_in_place(|| a.terminate()),
        Fault::Sigkill => {
            a.kill();
            None
        }
    };
    let exited_after = fault_at.elapsed();
    let bound = Duration::from_millis(drain) + EXIT_SLACK;
    if fault == Fault::Sigterm {
        let status = status.unwrap_or_else(|| panic!("edge A did not exit within 10 s of SIGTERM"));
        assert!(status.success(), "edge A exited with {status:?} after SIGTERM");
        assert!(exited_after <= bound, "edge A took {exited_after:?} to exit (bound {bound:?})");
    }

    // Keep publishing until every client is back on B and AFTER more messages were acknowledged, then
    // stop and let the clients catch up.
    poll("every client resumed on edge B", 1000, Duration::from_millis(10), || {
        let progress = progress.clone();
        async move { (progress.resumed.load(Ordering::Relaxed) == n_clients).then_some(()) }
    })
    .await;
    let all_resumed = fault_at.elapsed();
    let acked_at_resume = acked_count.load(Ordering::Relaxed);
    poll("publisher progress after the fault", 600, Duration::from_millis(25), || {
        let acked_count = acked_count.clone();
        async move { (acked_count.load(Ordering::Relaxed) >= acked_at_resume + AFTER as u64).then_some(()) }
    })
    .await;
    pub_stop_tx.send(true).unwrap();
    let acked = publishing.await.expect("publisher");
    stop_tx.send(Some(acked.len())).unwrap();
    let mut roamed = Vec::new();
    // Clients that have not caught up within 30 s are stopped where they are; the checks below say what
    // they miss.
    let caught_up = poll("clients catching up", 1500, Duration::from_millis(20), || {
        let done = clients.iter().all(|c| c.is_finished());
        async move { Some(done).filter(|d| *d).or(None) }
    });
    if tokio::time::timeout(Duration::from_secs(30), caught_up).await.is_err() {
        let counts: Vec<usize> = progress.min_received.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        eprintln!("clients did not catch up within 30 s: {} acknowledged, received per client {counts:?}", acked.len());
        stop_tx.send(Some(0)).unwrap();
    }
    for c in clients {
        roamed.push(c.await.expect("client task"));
    }
    // A killed edge cannot withdraw its report (it expires after the bucket's max_age): stop looking.
    if fault == Fault::Sigkill {
        watcher.abort();
    }
    let _ = watcher.await;

    // Every client: every acknowledged message, once, in order, across both edges.
    for r in &roamed {
        assert_eq!(r.resume["room"]["ok"], true, "{}: resume answer {}", r.label, r.resume);
        if r.bodies != acked {
            let dupes = r.bodies.len() as i64 - {
                let mut d = r.bodies.clone();
                d.dedup();
                d.len() as i64
            };
            let missing: Vec<&String> = acked.iter().filter(|m| !r.bodies.contains(m)).take(10).collect();
            let around: Vec<&(u64, String)> = r.seqs.iter().skip(r.on_first.saturating_sub(3)).take(8).collect();
            let hole = missing.first().and_then(|m| r.bodies.iter().position(|b| b > *m)).unwrap_or(0);
            let at_hole: Vec<&(u64, String)> = r.seqs.iter().skip(hole.saturating_sub(3)).take(6).collect();
            // Where the order first differs from the stream's (same set, other order).
            let first_diff = r.bodies.iter().zip(&acked).position(|(a, b)| a != b).unwrap_or(r.bodies.len().min(acked.len()));
            let at_diff: Vec<&(u64, String)> = r.seqs.iter().skip(first_diff.saturating_sub(4)).take(10).collect();
            eprintln!("{}: first difference from the stream order at index {first_diff}: {at_diff:?}", r.label);
            panic!(
                "{}: received {} of {} acknowledged (duplicates {dupes}, first missing {missing:?}); {} on the first edge, resumed from {}, around the switch {around:?}, around the hole (index {hole}) {at_hole:?}; resume answer {}",
                r.label,
                r.bodies.len(),
                acked.len(),
                r.on_first,
                r.resumed_from,
                r.resume
            );
        }
    }
    let closes: Vec<Duration> = roamed.iter().map(|r| r.closed_at.saturating_duration_since(fault_at)).collect();
    let (first_close, last_close) = (closes.iter().min().copied().unwrap_or_default(), closes.iter().max().copied().unwrap_or_default());
    let replayed: Vec<u64> = roamed.iter().map(|r| r.resume["room"]["replayed"].as_u64().unwrap_or(0)).collect();
    // Each client missed RECONNECT_AFTER or more while away: part replayed, the newest maybe held live
    // during the replay and delivered after op 20.
    assert!(replayed.iter().all(|n| *n > 0), "every resume replayed something: {replayed:?}");
    println!(
        "{fault:?}: {} clients ({} TCP, {} WS), {} acknowledged ({acked_before} before the fault), lost 0; edge exited after {:?}; \
         clients closed {:?} .. {:?} after the fault; resumes replayed {}..{} messages; all resumed on B {:?} after the fault; presence withdrawn after {:?}",
        n_clients,
        n_clients / 2,
        n_clients / 2,
        acked.len(),
        exited_after,
        first_close,
        last_close,
        replayed.iter().min().unwrap_or(&0),
        replayed.iter().max().unwrap_or(&0),
        all_resumed,
        withdrawn_at.lock().unwrap().map(|t| t.saturating_duration_since(fault_at)),
    );

    match fault {
        Fault::Sigterm => {
            // Closed within the bound, spread over it (not all at once), and in goim's way.
            assert!(last_close <= bound, "a client was closed {last_close:?} after SIGTERM (bound {bound:?})");
            assert!(
                last_close - first_close >= Duration::from_millis(drain / 2),
                "closes not spread over the drain: {first_close:?} .. {last_close:?}"
            );
            for r in &roamed {
                if r.label.starts_with("Ws") {
                    assert!(r.closed_how.contains("Away") && r.closed_how.contains("going away"), "{}: closed by {}", r.label, r.closed_how);
                } else {
                    assert_eq!(r.closed_how, "EOF", "{}: TCP clients get a plain close", r.label);
                }
            }
            // Presence withdrawn before the edge was gone.
            let withdrawn = withdrawn_at.lock().unwrap().expect("A's presence report never disappeared");
            assert!(withdrawn.saturating_duration_since(fault_at) < closes.iter().max().copied().unwrap_or_default(), "presence withdrawn only after the last client was closed");
            // Counted as shutdown, in the final counters the edge logged.
            let counters = final_counters(&a);
            assert_eq!(counters["closed"]["shutdown"], n_clients as u64, "{counters}");
            assert_eq!(counters["connections"], 0, "{counters}");
        }
        Fault::Sigkill => {
            assert!(roamed.iter().all(|r| !r.closed_how.contains("Away")), "no close frame from a killed edge");
        }
    }
}

/// The `final counters` JSON the edge logs at exit.
fn final_counters(edge: &Edge) -> Value {
    let logs = edge.logs();
    let line = logs.iter().rev().find(|l| l.contains("final counters")).unwrap_or_else(|| panic!("no final counters in the edge's log"));
    let from = line.find("stats=").expect("stats= field");
    let json = &line[from..];
    let (start, end) = (json.find('{').expect("{"), json.rfind('}').expect("}"));
    serde_json::from_str(&json[start..=end]).unwrap_or_else(|e| panic!("final counters are not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_clients_within_the_bound_and_they_resume_elsewhere_without_loss() {
    clients_move_to_another_edge_without_loss(Fault::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_nothing_acknowledged_for_clients_that_resume_elsewhere() {
    clients_move_to_another_edge_without_loss(Fault::Sigkill).await;
}

/// During A's drain its listeners are closed: connects to the port it shares with B (SO_REUSEPORT)
/// all reach B, connects to a port only A had are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_connects_during_a_drain_go_to_the_sibling_or_are_refused() {
    let nats = NatsServer::start().await;
    let mut a = Edge::start(&nats, EdgeOpts::new().with("listen", "reuse_port", "true").with("edge", "drain_ms", "4000")).await;
    let shared = a.tcp_addr();
    let b = Edge::start(
        &nats,
        EdgeOpts::new().with("listen", "reuse_port", "true").with("listen", "tcp", toml_str(&shared.to_string())).no_ws(),
    )
    .await;
    assert_eq!(b.tcp_addr(), shared, "B shares A's TCP port");
    // Clients on A keep its drain going for a while.
    let mut on_a = Vec::new();
    for i in 0..8 {
        on_a.push(Client::connect_auth(Transport::Ws, &a, Auth::new(i).room("live://stay")).await);
    }
    let b_before = b.stats(&nats).await["authenticated"].as_u64().unwrap();

    let pid = a.pid().expect("pid") as libc::pid_t;
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    poll("A logs that its listeners are closed", 400, Duration::from_millis(10), || {
        let closed = a.logs().iter().any(|l| l.contains("listeners closed"));
        async move { closed.then_some(()) }
    })
    .await;
    let during = Instant::now();
    // 40 new clients on the shared port: every one is served, by B.
    for i in 0..40 {
        let mut c = Client::connect_tcp(shared).await.with_label(&format!("new-{i}"));
        c.auth(&Auth::new(1000 + i).room("live://new")).await;
        assert!(c.heartbeat().await >= 1);
    }
    let b_after = b.stats(&nats).await["authenticated"].as_u64().unwrap();
    assert_eq!(b_after - b_before, 40, "every connect during the drain was B's");
    // A's own WebSocket port has no listener any more.
    let refused = tokio::net::TcpStream::connect(a.ws_addr()).await;
    assert!(refused.is_err(), "A's WebSocket port still accepts during the drain");
    // All of that happened while A was still draining its clients.
    let still_draining = on_a.iter().filter(|c| !c.is_closed()).count();
    assert!(a.logs().iter().all(|l| !l.contains("drain complete")), "A finished draining before the checks ({:?})", during.elapsed());
    println!("during the drain: 40/40 new connects served by the sibling, A's own port refused; {still_draining} clients still on A");
    // The clients still on A are let go with 1001, and A exits.
    for c in &mut on_a {
        match c.recv_packet(Duration::from_secs(6)).await {
            Err(RecvError::Closed(how)) => assert!(how.contains("Away"), "{}: {how}", c.label),
            other => panic!("{}: expected the going-away close, got {other:?}", c.label),
        }
    }
    poll("A exits", 300, Duration::from_millis(20), || {
        let alive = a.is_alive();
        async move { (!alive).then_some(()) }
    })
    .await;
}
