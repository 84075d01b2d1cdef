//! NATS cluster failover (issue 7, RELIABILITY.md "NATS node crash"): a three-node cluster, goim-history
//! with R3 streams, two edges and TCP clients in one stored room. The node that leads the room stream
//! (made to hold the most edge connections) is SIGKILLed while JetStream-acknowledged pushes flow; the
//! edges must move to the survivors, the clients must stay connected — two of them leave on purpose and
//! resume on the other edge, during the election and after it — and every acknowledged message must
//! reach every client in order, once. An edge and a goim-history started with the dead node first in
//! their URL list must work. The interruption is measured and printed. Then the node is restarted and
//! must rejoin (routes back, the stream has three current replicas, pushes still reach everyone).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use goim_nats_tests::cluster::{stream_cluster, stream_stepdown, try_monitor_port, NatsCluster, StreamCluster};
use goim_nats_tests::edge::toml_str;
use goim_nats_tests::goim::*;
use goim_nats_tests::history::{History, HistoryOpts};
use goim_nats_tests::*;
use serde_json::{json, Value};
use tokio::time::Instant;

const ROOM: &str = "live://failover";
const SUBJECT: &str = "room.live.failover";
const STREAM: &str = "GOIM_ROOMS";
/// Clients per edge.
const CLIENTS_PER_EDGE: usize = 3;
/// NATS connections per edge (`nats.connections`).
const EDGE_CONNECTIONS: usize = 2;
/// Load: PUBLISH_BATCH JetStream publishes started every PUBLISH_EVERY (2,000/s), at most
/// PUBLISH_WINDOW awaiting their ack at once.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
const PUBLISH_BATCH: u64 = 10;
const PUBLISH_WINDOW: usize = 64;
/// Acknowledged messages before the kill, and after the kill.
const ACKED_BEFORE_KILL: u64 = 2000;
const ACKED_AFTER_KILL: u64 = 6000;
/// Acknowledged after the kill before the late roamer resumes.
const ROAM_LATE_AFTER: u64 = 1000;
/// The goim room class in the seq field of stored pushes.
const CLASS_ROOM: u32 = 1;

fn toml_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", "))
}

fn decode(seq: i32) -> (u32, u64) {
    let v = seq as u32;
    (v >> 30, (v & ((1 << 30) - 1)) as u64)
}

/// The longest interval between consecutive instants (sorted) and the instant that ended it.
fn longest_gap(times: &[Instant]) -> (Duration, Instant) {
    times.windows(2).map(|w| (w[1] - w[0], w[1])).max_by_key(|(d, _)| *d).expect("at least two instants")
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// One acknowledged publish.
#[derive(Debug, Clone)]
struct Acked {
    seq: u64,
    body: String,
    at: Instant,
}

/// What the publisher did.
#[derive(Debug, Default)]
struct PubLog {
    /// In the order the acks arrived.
    acked: Vec<Acked>,
    /// Publish attempts that failed (no ack, error ack, timeout) and were retried with the same id.
    failed_attempts: u64,
    /// Acks that said `duplicate`: a retry of a message that had been stored but whose ack was lost.
    duplicates: u64,
}

/// Publish `m<i>` to the room as JetStream publishes with `Nats-Msg-Id` = `failover-<i>`: a batch per
/// tick, at most PUBLISH_WINDOW unacknowledged; each message is retried (same id, so stored once)
/// until acknowledged. Stops starting new messages at `stop`, returns when all started ones are acked.
async fn publisher(urls: Vec<String>, log: Arc<Mutex<PubLog>>, acked_count: Arc<AtomicU64>, stop: Arc<AtomicBool>, deadline: Instant) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let client = async_nats::ConnectOptions::new().name("goim-test-publisher").connect(urls).await.expect("publisher connect");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_millis(1000));
    let js = js;
    let publish_one = |i: u64| {
        let js = js.clone();
        let log = log.clone();
        let acked_count = acked_count.clone();
        async move {
            let body = format!("m{i}");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("failover-{i}").as_str());
            headers.insert("Goim-Op", "1000");
            loop {
                assert!(Instant::now() < deadline, "message {body} not acknowledged by JetStream before the test deadline");
                let r = match js.publish_with_headers(SUBJECT, headers.clone(), body.clone().into()).await {
                    Ok(f) => f.await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(ack) => {
                        assert_eq!(ack.stream, STREAM);
                        let mut l = log.lock().unwrap();
                        if ack.duplicate {
                            l.duplicates += 1;
                        }
                        l.acked.push(Acked { seq: ack.sequence, body, at: Instant::now() });
                        acked_count.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        log.lock().unwrap().failed_attempts += 1;
                        // Retry pause (not synchronisation): the stream has no leader yet.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            }
        }
    };
    let mut inflight = FuturesUnordered::new();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                for _ in 0..PUBLISH_BATCH {
                    if inflight.len() >= PUBLISH_WINDOW {
                        break;
                    }
                    inflight.push(publish_one(next));
                    next += 1;
                }
            }
            Some(()) = inflight.next(), if !inflight.is_empty() => {}
        }
    }
    while inflight.next().await.is_some() {}
}

/// What one goim client saw.
struct ClientLog {
    label: String,
    /// (stream sequence, body, when received).
    got: Vec<(u64, String, Instant)>,
    /// Disconnects (how, when) and the resume answers after the reconnects.
    disconnects: Vec<(String, Instant)>,
    resumes: Vec<Value>,
    roam: Roam,
    client: Option<Client>,
}

async fn auth(c: &mut Client, body: Value) {
    c.send(&Packet::new(1, OP_AUTH, 1, body.to_string().into_bytes())).await;
    let p = c.recv_packet(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{}: no auth reply: {e:?}", c.label));
    assert_eq!(p.op, OP_AUTH_REPLY, "{}: {p:?}", c.label);
}

/// Whether a client leaves on purpose when the node is killed, to resume on the other edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Roam {
    /// Stays connected (reconnects and resumes only if the edge closes it).
    Stay,
    /// Disconnects at the kill and resumes on the other edge at once, during the leader election.
    Early,
    /// Disconnects at the kill and resumes on the other edge once ROAM_LATE_AFTER messages were
    /// acknowledged after the kill: more than the edge's 256-message ring, so from JetStream.
    Late,
}

/// Phases of the test, for the roaming clients: 0 load, 1 node killed, 2 late roamers may return.
type Phase = tokio::sync::watch::Receiver<u8>;

/// Read pushes until the client has `final_seq` (once the publisher has set it) or the deadline. A
/// closed connection is reopened (its own edge, else the other) with `resume` from the last sequence
/// it saw; a resume that fails is retried on a fresh connection, nothing after its op 20 is kept.
async fn collect(mut c: Client, mid: i64, edges: [std::net::SocketAddr; 2], roam: Roam, mut phase: Phase, final_seq: Arc<AtomicU64>, deadline: Instant) -> ClientLog {
    let label = c.label.clone();
    let mut log = ClientLog { label: label.clone(), got: Vec::new(), disconnects: Vec::new(), resumes: Vec::new(), roam, client: None };
    let mut roamed = roam == Roam::Stay;
    loop {
        let target = final_seq.load(Ordering::Relaxed);
        if target != 0 && log.got.last().is_some_and(|(s, _, _)| *s >= target) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if !roamed && *phase.borrow() >= 1 {
            roamed = true;
            drop(c);
            log.disconnects.push(("left on purpose at the kill".into(), Instant::now()));
            if roam == Roam::Late {
                tokio::time::timeout(left, phase.wait_for(|p| *p >= 2)).await.expect("phase 2 before the deadline").expect("phase sender");
            }
            c = reconnect_and_resume(&label, mid, [edges[1], edges[0]], &mut log, deadline).await;
            continue;
        }
        match c.recv_packet(left.min(Duration::from_millis(50))).await {
            Ok(p) if p.op == 1000 => {
                let (class, seq) = decode(p.seq);
                assert_eq!(class, CLASS_ROOM, "{label}: a stored room push carries the room class: {p:?}");
                log.got.push((seq, p.body_str(), Instant::now()));
            }
            Ok(p) => panic!("{label}: unexpected packet {p:?}"),
            Err(RecvError::Timeout) => {}
            Err(RecvError::Closed(how)) => {
                log.disconnects.push((how, Instant::now()));
                c = reconnect_and_resume(&label, mid, edges, &mut log, deadline).await;
            }
        }
    }
    log.client = Some(c);
    log
}

async fn reconnect_and_resume(label: &str, mid: i64, edges: [std::net::SocketAddr; 2], log: &mut ClientLog, deadline: Instant) -> Client {
    let mut attempt = 0usize;
    loop {
        assert!(Instant::now() < deadline, "{label}: could not reconnect and resume before the deadline: {:?}", log.resumes);
        let addr = edges[attempt % 2];
        attempt += 1;
        // The edges stay up in this test: a failed connect fails the test.
        let mut c = Client::connect_tcp(addr).await.with_label(label);
        let last = log.got.last().map(|(s, _, _)| *s).unwrap_or(0);
        let mut body = json!({"mid": mid, "room_id": ROOM, "accepts": [1000]});
        if last != 0 {
            body["resume"] = json!({"room": last});
        } else {
            panic!("{label}: disconnected before it received anything; cannot resume");
        }
        auth(&mut c, body).await;
        // Replayed pushes, then op 20.
        let mut replay = Vec::new();
        let answer = loop {
            match c.recv_packet(Duration::from_secs(10)).await {
                Ok(p) if p.op == 1000 => {
                    let (_, seq) = decode(p.seq);
                    replay.push((seq, p.body_str(), Instant::now()));
                }
                Ok(p) if p.op == 20 => break Some(serde_json::from_slice::<Value>(&p.body).expect("op 20 JSON")),
                Ok(p) => panic!("{label}: unexpected packet during resume {p:?}"),
                Err(_) => break None,
            }
        };
        match answer {
            Some(a) if a["room"]["ok"] == json!(true) => {
                log.resumes.push(a);
                log.got.extend(replay);
                return c;
            }
            other => {
                // Keep what was replayed in order before the failure answer, then try again.
                log.resumes.push(other.unwrap_or(Value::Null));
                log.got.extend(replay);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Wait until `check` passes on the stream's cluster info (polled through `client`); returns it.
async fn wait_stream(client: &async_nats::Client, what: &str, limit: Duration, check: impl Fn(&StreamCluster) -> bool) -> StreamCluster {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        if let Some(s) = stream_cluster(client, STREAM, Duration::from_secs(2)).await {
            if check(&s) {
                return s;
            }
            last = Some(s);
        }
        assert!(Instant::now() < deadline, "{what}: not reached within {limit:?}; last stream cluster info: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn edge_stats(client: &async_nats::Client, id: &str) -> Value {
    let m = tokio::time::timeout(Duration::from_secs(5), client.request(format!("ctl.stats.{id}"), "".into()))
        .await
        .unwrap_or_else(|_| panic!("ctl.stats.{id}: timeout"))
        .unwrap_or_else(|e| panic!("ctl.stats.{id}: {e}"));
    serde_json::from_slice(&m.payload).expect("stats JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_stream_leader_loses_nothing_acknowledged() {
    let test_start = Instant::now();
    let mut cluster = NatsCluster::start().await;
    let urls = cluster.urls();
    println!("cluster formed in {} ({})", ms(test_start.elapsed()), urls.join(" "));

    // goim-history provisions R3 streams on the cluster.
    let history_opts = || {
        HistoryOpts::new()
            .with("rooms", "replicas", "3")
            .with("users", "replicas", "3")
            .with("broadcast", "replicas", "3")
    };
    let _history = History::try_start_at(&urls[0], history_opts().with("nats", "urls", toml_list(&urls))).await.unwrap_or_else(|e| panic!("{e}"));
    let admin = async_nats::ConnectOptions::new().name("goim-test-admin").connect(urls.clone()).await.expect("admin connect");
    let info = wait_stream(&admin, "GOIM_ROOMS R3 with current replicas", Duration::from_secs(20), |s| s.num_replicas == 3 && s.healthy()).await;
    println!("GOIM_ROOMS: leader {}, replicas {:?}", info.leader, info.replicas);

    // Two edges on the whole URL list, presence bucket R3 as in a real cluster.
    let edge_opts = || EdgeOpts::new().with("presence", "replicas", "3").nats_connections(EDGE_CONNECTIONS);
    let mut edge_a = Edge::start_with_urls(&urls, edge_opts()).await;
    let rev: Vec<String> = urls.iter().rev().cloned().collect();
    let mut edge_b = Edge::start_with_urls(&rev, edge_opts()).await;
    let edges = [edge_a.tcp_addr(), edge_b.tcp_addr()];

    // Kill the node that holds the most edge connections: make it the stream leader first.
    let mut layout = Vec::new();
    for e in [&edge_a, &edge_b] {
        let per_node = cluster.connections_matching(&format!(":{}:", e.id())).await;
        assert_eq!(per_node.iter().map(|(_, n)| n).sum::<usize>(), EDGE_CONNECTIONS, "edge {} connections: {per_node:?}", e.id());
        layout.push(per_node);
    }
    let score = |i: usize| {
        let edges_there = layout.iter().filter(|p| p[i].1 > 0).count();
        let conns: usize = layout.iter().map(|p| p[i].1).sum();
        (edges_there, conns)
    };
    let target = (0..3).max_by_key(|i| score(*i)).unwrap();
    let target_name = cluster.nodes[target].name.clone();
    for _ in 0..10 {
        let s = wait_stream(&admin, "a stream leader", Duration::from_secs(20), |s| s.healthy()).await;
        if s.leader == target_name {
            break;
        }
        let answer = stream_stepdown(&admin, STREAM, &target_name).await;
        let old = s.leader.clone();
        wait_stream(&admin, "a new stream leader after the step-down", Duration::from_secs(20), |s| s.healthy() && s.leader != old)
            .await;
        println!("step-down of {old} (preferring {target_name}): {answer:?}");
    }
    let before = wait_stream(&admin, "a stream leader", Duration::from_secs(20), |s| s.healthy()).await;
    assert_eq!(before.leader, target_name, "could not move the GOIM_ROOMS leader to {target_name}");
    let meta_leader = cluster.nodes[target].monitor("/jsz").await["meta_cluster"]["leader"].as_str().unwrap_or("").to_string();
    println!(
        "victim {target_name}: GOIM_ROOMS leader{}; edge A NATS connections per node {:?}, edge B {:?}",
        if meta_leader == target_name { " and JetStream meta leader" } else { "" },
        layout[0],
        layout[1]
    );

    // Clients: CLIENTS_PER_EDGE TCP clients on each edge, all in the stored room.
    let mut clients = Vec::new();
    for (e, edge) in [&edge_a, &edge_b].into_iter().enumerate() {
        for k in 0..CLIENTS_PER_EDGE {
            let mid = (100 + e * 10 + k) as i64;
            let mut c = Client::connect_tcp(edge.tcp_addr()).await.with_label(&format!("edge{}-client{k}", ["A", "B"][e]));
            auth(&mut c, json!({"mid": mid, "room_id": ROOM, "accepts": [1000]})).await;
            clients.push((c, mid, if e == 0 { edges } else { [edges[1], edges[0]] }, Roam::Stay));
        }
    }
    // Two roaming clients on edge A that move to edge B with a resume: at once, and after the election.
    for (k, roam) in [Roam::Early, Roam::Late].into_iter().enumerate() {
        let mut c = Client::connect_tcp(edge_a.tcp_addr()).await.with_label(&format!("roamer-{roam:?}(A->B)"));
        let mid = 200 + k as i64;
        auth(&mut c, json!({"mid": mid, "room_id": ROOM, "accepts": [1000]})).await;
        clients.push((c, mid, edges, roam));
    }
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(0u8);

    // Load: JetStream publishes, each acknowledged before the next.
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = Arc::new(Mutex::new(PubLog::default()));
    let acked_count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let final_seq = Arc::new(AtomicU64::new(0));
    let collectors: Vec<_> = clients
        .into_iter()
        .map(|(c, mid, edges, roam)| tokio::spawn(collect(c, mid, edges, roam, phase_rx.clone(), final_seq.clone(), deadline)))
        .collect();
    let publisher = tokio::spawn(publisher(urls.clone(), log.clone(), acked_count.clone(), stop.clone(), deadline));

    // Kill the leader once the load is established.
    let load_start = Instant::now();
    poll("acknowledged messages before the kill", 400, Duration::from_millis(50), || async {
        (acked_count.load(Ordering::Relaxed) >= ACKED_BEFORE_KILL).then_some(())
    })
    .await;
    let killed_at = Instant::now();
    cluster.kill(target);
    phase_tx.send(1).unwrap();
    let acked_before_kill = acked_count.load(Ordering::Relaxed);
    // When the survivors agree on a JetStream meta leader (needed for consumer creation, so for
    // resumes served from JetStream), measured alongside.
    let meta_elected = {
        let ports: Vec<u16> = cluster.nodes.iter().filter(|n| n.name != target_name).map(|n| n.monitor_port()).collect();
        let victim = target_name.clone();
        tokio::spawn(async move {
            while killed_at.elapsed() < Duration::from_secs(30) {
                let mut leaders = Vec::new();
                for p in &ports {
                    let v = try_monitor_port(*p, "/jsz").await.unwrap_or(Value::Null);
                    leaders.push(v["meta_cluster"]["leader"].as_str().unwrap_or("").to_string());
                }
                if leaders.iter().all(|l| !l.is_empty() && *l != victim && *l == leaders[0]) {
                    return Some((leaders[0].clone(), killed_at.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        })
    };
    println!("SIGKILL {target_name} after {acked_before_kill} acknowledged messages ({})", ms(killed_at - load_start));

    // Edges move every NATS connection to the survivors.
    let mut edges_moved = Vec::new();
    for e in [&edge_a, &edge_b] {
        let needle = format!(":{}:", e.id());
        let d = poll("edge connections on the survivors", 300, Duration::from_millis(20), || {
            let cluster = &cluster;
            let needle = needle.clone();
            let target_name = &target_name;
            async move {
                let per_node = cluster.connections_matching(&needle).await;
                let on_survivors: usize = per_node.iter().filter(|(n, _)| n != target_name).map(|(_, c)| c).sum();
                (on_survivors == EDGE_CONNECTIONS).then(|| killed_at.elapsed())
            }
        })
        .await;
        edges_moved.push(d);
    }

    // A new stream leader among the survivors (short requests: during the election none answers).
    let after = loop {
        if let Some(s) = stream_cluster(&admin, STREAM, Duration::from_millis(300)).await {
            if !s.leader.is_empty() && s.leader != target_name {
                break s;
            }
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no new GOIM_ROOMS leader 30 s after the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let leader_elected = killed_at.elapsed();
    let (meta_leader_after, meta_elected) = meta_elected.await.expect("meta leader task").expect("no JetStream meta leader 30 s after the kill");

    // The late roamer returns once ROAM_LATE_AFTER messages were acknowledged after the kill.
    poll("acknowledged messages after the kill (late roamer)", 1200, Duration::from_millis(25), || async {
        let l = log.lock().unwrap();
        (l.acked.iter().filter(|a| a.at > killed_at).count() as u64 >= ROAM_LATE_AFTER).then_some(())
    })
    .await;
    phase_tx.send(2).unwrap();

    // Keep the load on until ACKED_AFTER_KILL messages were acknowledged after the kill.
    poll("acknowledged messages after the kill", 1200, Duration::from_millis(25), || async {
        let l = log.lock().unwrap();
        (l.acked.iter().filter(|a| a.at > killed_at).count() as u64 >= ACKED_AFTER_KILL).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(30), publisher).await.expect("publisher stops").expect("publisher task");
    let load_time = load_start.elapsed();
    let (acked, failed_attempts, dup_acks) = {
        let l = log.lock().unwrap();
        (l.acked.clone(), l.failed_attempts, l.duplicates)
    };
    // What every client must get: every acknowledged message, in stream order.
    let mut want: Vec<(u64, &str)> = acked.iter().map(|a| (a.seq, a.body.as_str())).collect();
    want.sort();
    assert!(want.windows(2).all(|w| w[0].0 < w[1].0), "one stream sequence per acknowledged message: {:?}", want.windows(2).find(|w| w[0].0 >= w[1].0));
    final_seq.store(want.last().expect("acked").0, Ordering::Relaxed);

    let mut logs = Vec::new();
    for h in collectors {
        logs.push(h.await.expect("collector task"));
    }

    // Publisher interruption: the longest pause between acks (in arrival time) and when it ended.
    let mut ack_times: Vec<Instant> = acked.iter().map(|a| a.at).collect();
    ack_times.sort();
    let (ack_gap, ack_resumed) = longest_gap(&ack_times);
    let acked_after_kill = ack_times.iter().filter(|t| **t > killed_at).count();
    let steady_rate = {
        let pre: Vec<&Instant> = ack_times.iter().filter(|t| **t <= killed_at).collect();
        (pre.len() as f64 - 1.0) / (*pre[pre.len() - 1] - *pre[0]).as_secs_f64()
    };

    let mut report = Vec::new();
    let mut worst_gap = Duration::ZERO;
    let mut worst_resume = Duration::ZERO;
    for l in &logs {
        let got: Vec<(u64, &str)> = l.got.iter().map(|(s, b, _)| (*s, b.as_str())).collect();
        let missing: Vec<u64> = want.iter().filter(|w| !got.contains(w)).map(|w| w.0).take(20).collect();
        let dups = got.len() - got.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(
            got == want,
            "{}: received {} messages, {} acknowledged; missing (first 20) {missing:?}; duplicates {dups}; in order: {}; disconnects {:?}; resumes {:?}",
            l.label,
            got.len(),
            want.len(),
            got.windows(2).all(|w| w[0].0 < w[1].0),
            l.disconnects,
            l.resumes
        );
        let times: Vec<Instant> = l.got.iter().map(|g| g.2).collect();
        let (gap, resumed) = longest_gap(&times);
        let resumed = resumed.saturating_duration_since(killed_at);
        if l.roam == Roam::Stay {
            worst_gap = worst_gap.max(gap);
            worst_resume = worst_resume.max(resumed);
        }
        let resumes: Vec<String> = l.resumes.iter().map(|r| r["room"].to_string()).collect();
        report.push(format!(
            "  {}: {} delivered, longest gap between deliveries {}, kill -> deliveries resumed {}, disconnects {}{}",
            l.label,
            l.got.len(),
            ms(gap),
            ms(resumed),
            l.disconnects.len(),
            if resumes.is_empty() { String::new() } else { format!(", resume answers {}", resumes.join(" ")) }
        ));
    }

    let stats_a = edge_stats(&admin, edge_a.id()).await;
    let stats_b = edge_stats(&admin, edge_b.id()).await;

    // The edges and history also start with a dead node first in their URL list.
    let dead_first: Vec<String> = std::iter::once(urls[target].clone()).chain(urls.iter().filter(|u| **u != urls[target]).cloned()).collect();
    let late_start = Instant::now();
    let edge_c = Edge::start_with_urls(&dead_first, edge_opts()).await;
    let edge_c_ready = late_start.elapsed();
    let late_start = Instant::now();
    let _history2 = History::try_start_at(&dead_first[0], history_opts().with("nats", "urls", toml_list(&dead_first)))
        .await
        .unwrap_or_else(|e| panic!("goim-history with a dead first URL: {e}"));
    let history2_ready = late_start.elapsed();
    let mut late = Client::connect_tcp(edge_c.tcp_addr()).await.with_label("edgeC-client");
    auth(&mut late, json!({"mid": 999, "room_id": ROOM, "accepts": [1000]})).await;
    let js = jetstream::new(admin.clone());
    let seq = js.publish(SUBJECT, "on-edge-c".into()).await.expect("publish").await.expect("ack").sequence;
    let p = late.recv_packet(Duration::from_secs(10)).await.expect("edge C delivers");
    assert_eq!((p.op, decode(p.seq), p.body_str().as_str()), (1000, (CLASS_ROOM, seq), "on-edge-c"), "edge C started on [dead, alive, alive]");

    // Restart the killed node: it rejoins the routes and the stream has three current replicas again.
    let restart_at = Instant::now();
    cluster.restart(target).await;
    cluster.wait_formed(Duration::from_secs(30)).await;
    let routes_back = restart_at.elapsed();
    let rejoined = wait_stream(&admin, "GOIM_ROOMS with 3 current replicas after the restart", Duration::from_secs(30), |s| {
        s.num_replicas == 3 && s.healthy() && (s.leader == target_name || s.replicas.iter().any(|r| r.0 == target_name && r.3 == 0))
    })
    .await;
    let replicas_back = restart_at.elapsed();
    // The restarted node's own copy has caught up.
    let node = cluster.node(&target_name);
    let jsz = poll("the restarted node's copy of GOIM_ROOMS caught up", 300, Duration::from_millis(100), || async {
        let v = node.try_monitor("/jsz?streams=true").await?;
        let streams = v["account_details"].as_array()?.iter().flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default()).collect::<Vec<_>>();
        let s = streams.into_iter().find(|s| s["name"] == STREAM)?;
        (s["state"]["last_seq"].as_u64()? >= seq).then_some(s)
    })
    .await;
    assert_eq!(jsz["cluster"]["leader"].as_str().map(|l| !l.is_empty()), Some(true), "{jsz}");

    // Pushes after the rejoin reach everyone, the original clients are still connected.
    let mut after_rejoin = Vec::new();
    for i in 0..20 {
        after_rejoin.push(js.publish(SUBJECT, format!("r{i}").into()).await.expect("publish").await.expect("ack").sequence);
    }
    for l in logs.iter_mut() {
        let c = l.client.as_mut().expect("client");
        let mut got = Vec::new();
        while got.len() < 1 + after_rejoin.len() {
            let p = c.recv_packet(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{}: after the rejoin: {e:?}", l.label));
            assert_eq!(p.op, 1000, "{}: {p:?}", l.label);
            got.push(decode(p.seq).1);
        }
        let mut want = vec![seq];
        want.extend(&after_rejoin);
        assert_eq!(got, want, "{}: pushes after the rejoin", l.label);
        assert!(c.heartbeat().await >= 1, "{}: heartbeat", l.label);
    }
    edge_a.assert_alive();
    edge_b.assert_alive();

    println!("\n===== FAILOVER REPORT: SIGKILL of the GOIM_ROOMS leader =====");
    println!(
        "load: {} JetStream-acknowledged pushes to {SUBJECT} in {:.1} s ({steady_rate:.0}/s before the kill; {PUBLISH_BATCH} every {PUBLISH_EVERY:?}, \
         at most {PUBLISH_WINDOW} unacknowledged); {} TCP clients on 2 edges ({CLIENTS_PER_EDGE} each, {EDGE_CONNECTIONS} NATS connections per edge); stream R3",
        acked.len(),
        load_time.as_secs_f64(),
        logs.len()
    );
    println!(
        "killed: {target_name} (stream leader{}) after {acked_before_kill} acks; new stream leader {} answering {} after the kill; \
         survivors agree on meta leader {meta_leader_after} after {}",
        if meta_leader == target_name { ", meta leader" } else { "" },
        after.leader,
        ms(leader_elected),
        ms(meta_elected)
    );
    println!(
        "publisher: longest pause between acks {}, acks resumed {} after the kill; {acked_after_kill} acked after the kill; \
         failed attempts retried {failed_attempts}; duplicate acks (stored, ack lost, retried) {dup_acks}",
        ms(ack_gap),
        ms(ack_resumed.saturating_duration_since(killed_at))
    );
    println!("edges: all NATS connections on survivors after {} (A) / {} (B)", ms(edges_moved[0]), ms(edges_moved[1]));
    println!("clients:");
    for r in &report {
        println!("{r}");
    }
    println!(
        "lost: 0 of {} acknowledged messages at every client (in order, no duplicates); clients that stayed: worst gap {}, worst kill -> resumed {}",
        acked.len(),
        ms(worst_gap),
        ms(worst_resume)
    );
    println!(
        "edge A stats: gaps {} unfilled {} history_fetches {}; edge B: gaps {} unfilled {} history_fetches {}",
        stats_a["gaps"], stats_a["gaps_unfilled"], stats_a["history_fetches"], stats_b["gaps"], stats_b["gaps_unfilled"], stats_b["history_fetches"]
    );
    println!("dead first URL: a new edge ready in {}, a new goim-history in {}", ms(edge_c_ready), ms(history2_ready));
    println!(
        "rejoin: {target_name} routed and in the meta group {} after restart, GOIM_ROOMS 3 current replicas after {} (leader {}, replicas {:?})",
        ms(routes_back),
        ms(replicas_back),
        rejoined.leader,
        rejoined.replicas
    );
    println!("test wall time {}", ms(test_start.elapsed()));
}
