//! The control plane (issue 5): goim logic's HTTP API in goim-authsvc against a real nats-server and
//! two real goim-edge processes: pushes in goim's load tools' request shapes, cluster-wide online counts
//! and op-3 heartbeat counts from the edges' presence reports, node discovery (`/goim/nodes/...` and
//! `$SRV`), a killed edge disappearing, malformed input, push API keys, broadcast speed, and the
//! JetStream-acknowledged push mode.
//!
//! Presence runs with test-sized intervals (report every 200 ms, bucket max_age 2 s); the convergence
//! checks still assert the spec's bounds (a dead edge gone within 30 s, a change visible within 10 s)
//! and poll with bounded deadlines, never sleep as synchronisation.

use std::collections::BTreeSet;
use std::time::Duration;

use goim_nats_tests::goim::*;
use goim_nats_tests::logic::*;
use goim_nats_tests::*;
use serde_json::{json, Value};
use tokio::time::Instant;

const OK: &str = r#"{"code":0,"message":""}"#;
const ACC: [i32; 3] = [1000, 1001, 1002];

async fn authsvc(nats: &NatsServer, keys: &KeyDir, logic: &str) -> AuthSvc {
    let mut opts = AuthSvcOpts::new("k1");
    opts.extra_toml = logic_toml(logic);
    AuthSvc::start(nats, keys, opts).await
}

async fn conn(t: Transport, e: &Edge, mid: i64, room: &str, label: &str) -> Client {
    Client::connect_auth(t, e, Auth::new(mid).room(room).accepts(&ACC)).await.with_label(label)
}

/// Heartbeat until the op-3 count is `want` (bounded by `within`); returns how long it took.
async fn heartbeat_until(c: &mut Client, want: i32, within: Duration) -> Duration {
    let start = Instant::now();
    let mut last = -1;
    while start.elapsed() < within {
        last = c.heartbeat().await;
        if last == want {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{}: heartbeat count {last}, expected {want} within {within:?}", c.label);
}

fn assert_ok(r: &Reply, what: &str) {
    assert_eq!((r.status, r.body.as_str()), (200, OK), "{what}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goim_load_tool_pushes_reach_the_right_clients_on_both_edges() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test")).await;
    let b = Edge::start(&nats, presence_edge("edge-b.test")).await;
    // goim's benchmark client: room test://1, accepts 1000-1002, platform ios, empty key.
    let mut a7 = Client::connect_auth(Transport::Tcp, &a, Auth::new(7).room("test://1").accepts(&ACC).platform("ios"))
        .await
        .with_label("A-tcp-mid7");
    let mut a8 = Client::connect_auth(Transport::Ws, &a, Auth::new(8).key("key-a8").room("test://1").accepts(&ACC))
        .await
        .with_label("A-ws-mid8");
    let mut b7 = Client::connect_auth(Transport::Ws, &b, Auth::new(7).room("test://1").accepts(&ACC))
        .await
        .with_label("B-ws-mid7");
    let mut b9 = Client::connect_auth(Transport::Tcp, &b, Auth::new(9).key("key-b9").room("test://2").accepts(&ACC))
        .await
        .with_label("B-tcp-mid9");

    // push_room: POST /goim/push/room?operation=1000&type=test&room=1, JSON body.
    let r = post(auth.http, "/goim/push/room?operation=1000&type=test&room=1", "application/json", br#"{"test":1}"#).await;
    assert_ok(&r, "push/room");
    for c in [&mut a7, &mut a8, &mut b7] {
        c.expect_push(1000, br#"{"test":1}"#).await;
    }

    // push (mids): POST /goim/push/mids?operation=1000&mids=7, form content type, the tool's body.
    let body = br#"{"m":{"test":1},"u":7}"#;
    let r = post(auth.http, "/goim/push/mids?operation=1000&mids=7", "application/x-www-form-urlencoded", body).await;
    assert_ok(&r, "push/mids");
    a7.expect_push(1000, body).await;
    b7.expect_push(1000, body).await;

    // Repeated list parameters; b9's first push is this one, so neither the test://1 push nor the
    // mid-7 push (both witnessed on its edge by b7) reached it.
    let r = post(auth.http, "/goim/push/mids?operation=1001&mids=7&mids=9", "text/plain", b"both").await;
    assert_ok(&r, "push/mids with two mids");
    for c in [&mut a7, &mut b7, &mut b9] {
        c.expect_push(1001, b"both").await;
    }

    // push/keys, one key per edge; a8's next push is this one (mid 7 and 9 pushes, witnessed on A by
    // a7, did not reach mid 8).
    let r = post(auth.http, "/goim/push/keys?operation=1002&keys=key-a8&keys=key-b9", "application/octet-stream", b"keys").await;
    assert_ok(&r, "push/keys");
    a8.expect_push(1002, b"keys").await;
    b9.expect_push(1002, b"keys").await;

    // push/all reaches everyone on both edges, TCP and WebSocket.
    let r = post(auth.http, "/goim/push/all?operation=1000", "application/json", br#"{"all":1}"#).await;
    assert_ok(&r, "push/all");
    for c in [&mut a7, &mut a8, &mut b7, &mut b9] {
        c.expect_push(1000, br#"{"all":1}"#).await;
    }

    // Room 2 is b9's only; the others' next push is a marker after b9 received it.
    let r = post(auth.http, "/goim/push/room?operation=1000&type=test&room=2", "application/json", b"room2").await;
    assert_ok(&r, "push/room 2");
    b9.expect_push(1000, b"room2").await;
    let r = post(auth.http, "/goim/push/room?operation=1000&type=test&room=1", "application/json", b"marker").await;
    assert_ok(&r, "push/room marker");
    for c in [&mut a7, &mut a8, &mut b7] {
        c.expect_push(1000, b"marker").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_counts_and_heartbeats_are_cluster_wide_and_converge_after_sigkill() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test")).await;
    let mut b = Edge::start(&nats, presence_edge("edge-b.test")).await;
    let mut a1 = conn(Transport::Tcp, &a, 1, "live://1", "a1").await;
    let _a2 = conn(Transport::Ws, &a, 2, "live://1", "a2").await;
    let _a3 = conn(Transport::Tcp, &a, 3, "live://1", "a3").await;
    let mut a4 = conn(Transport::Ws, &a, 4, "live://2", "a4").await;
    let mut b1 = conn(Transport::Ws, &b, 5, "live://1", "b1").await;
    let _b2 = conn(Transport::Tcp, &b, 6, "live://1", "b2").await;
    let mut b3 = conn(Transport::Tcp, &b, 7, "test://9", "b3").await;
    let mut b4 = conn(Transport::Ws, &b, 8, "", "b4-no-room").await;

    // goim sums its comets' ip_count: every client is 127.0.0.1, so one per edge.
    wait_data(auth.http, "/goim/online/total", CHANGE_BOUND, |d| *d == json!({"conn_count": 8, "ip_count": 2})).await;
    wait_data(auth.http, "/goim/online/room?type=live&rooms=1&rooms=2&rooms=3", CHANGE_BOUND, |d| {
        *d == json!({"1": 5, "2": 1, "3": 0})
    })
    .await;
    let top = get(auth.http, "/goim/online/top?type=live&limit=10").await.data();
    assert_eq!(top, json!([{"room_id": "1", "count": 5}, {"room_id": "2", "count": 1}]));
    let top = get(auth.http, "/goim/online/top?type=live&limit=1").await.data();
    assert_eq!(top, json!([{"room_id": "1", "count": 5}]));
    let top = get(auth.http, "/goim/online/top?type=test&limit=5").await.data();
    assert_eq!(top, json!([{"room_id": "9", "count": 1}]));
    // goim's filter is a plain prefix of the room key.
    let top = get(auth.http, "/goim/online/top?type=l&limit=5").await.data();
    assert_eq!(top, json!([{"room_id": "1", "count": 5}, {"room_id": "2", "count": 1}]));
    let top = get(auth.http, "/goim/online/top?type=nothing&limit=5").await.data();
    assert_eq!(top, json!([]));

    // op-3 carries the cluster-wide room count on both edges.
    heartbeat_until(&mut a1, 5, CHANGE_BOUND).await;
    heartbeat_until(&mut b1, 5, CHANGE_BOUND).await;
    assert_eq!(a4.heartbeat().await, 1);
    assert_eq!(b3.heartbeat().await, 1);
    assert_eq!(b4.heartbeat().await, 0, "no room: 0");

    // A live edge's change shows within 10 s, in the API and in the other edge's heartbeats.
    let _a5 = conn(Transport::Tcp, &a, 9, "live://1", "a5").await;
    let took = wait_data(auth.http, "/goim/online/room?type=live&rooms=1", CHANGE_BOUND, |d| *d == json!({"1": 6})).await;
    heartbeat_until(&mut b1, 6, CHANGE_BOUND).await;
    eprintln!("a join showed in online/room after {took:?}");

    // SIGKILL B: its report is not renewed, the bucket purges it with a marker.
    b.kill();
    let killed = Instant::now();
    wait_data(auth.http, "/goim/online/total", DEAD_EDGE_BOUND, |d| *d == json!({"conn_count": 5, "ip_count": 1})).await;
    wait_data(auth.http, "/goim/online/room?type=live&rooms=1&rooms=2", DEAD_EDGE_BOUND, |d| *d == json!({"1": 4, "2": 1})).await;
    let left = DEAD_EDGE_BOUND.saturating_sub(killed.elapsed());
    heartbeat_until(&mut a1, 4, left).await;
    assert_eq!(get(auth.http, "/goim/online/top?type=test&limit=5").await.data(), json!([]));
    let converged = killed.elapsed();
    eprintln!("counts converged {converged:?} after the SIGKILL");
    assert!(converged < DEAD_EDGE_BOUND, "converged after {converged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_list_live_edges_least_loaded_first_and_drop_a_killed_edge() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test").with("advertise", "domain", "\"a.web.test\"")).await;
    let mut b = Edge::start(&nats, presence_edge("edge-b.test").with("advertise", "domain", "\"b.web.test\"")).await;

    // Both edges are NATS services (`nats micro ls`).
    let ids = srv_ping(&nats, 2, WAIT).await;
    assert_eq!(ids, BTreeSet::from([a.id().to_string(), b.id().to_string()]), "$SRV.PING.goim-edge");

    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Client::connect_auth(Transport::Tcp, &a, Auth::new(100 + i).room("live://7").accepts(&ACC)).await);
    }
    clients.push(Client::connect_auth(Transport::Ws, &b, Auth::new(200).room("live://7").accepts(&ACC)).await);
    let nodes = |d: &Value| d["nodes"].clone();
    wait_data(auth.http, "/goim/nodes/weighted?platform=ios", CHANGE_BOUND, |d| nodes(d) == json!(["edge-b.test", "edge-a.test"])).await;
    let reply = get(auth.http, "/goim/nodes/weighted?platform=ios").await.data();
    assert_eq!(
        reply,
        json!({
            "domain": "conn.goim.io", "tcp_port": 3101, "ws_port": 3102, "wss_port": 3103,
            "heartbeat": 240, "heartbeat_max": 2, "nodes": ["edge-b.test", "edge-a.test"],
            "backoff": {"max_delay": 300, "base_delay": 3, "factor": 1.8, "jitter": 0.3}
        })
    );
    assert_eq!(nodes(&get(auth.http, "/goim/nodes/weighted?platform=web").await.data()), json!(["b.web.test", "a.web.test"]));
    assert_eq!(nodes(&get(auth.http, "/goim/nodes/weighted").await.data()), json!(["edge-b.test", "edge-a.test"]));

    // B becomes the busier one: the order flips.
    for i in 0..3 {
        clients.push(Client::connect_auth(Transport::Tcp, &b, Auth::new(300 + i).accepts(&ACC)).await);
    }
    wait_data(auth.http, "/goim/nodes/weighted?platform=android", CHANGE_BOUND, |d| nodes(d) == json!(["edge-a.test", "edge-b.test"])).await;

    // nodes/instances: goim discovery's instance shape with the real listener ports.
    let inst = get(auth.http, "/goim/nodes/instances").await.data();
    let list = inst.as_array().expect("instances array");
    assert_eq!(list.len(), 2, "{inst}");
    let find = |id: &str| list.iter().find(|i| i["hostname"] == id).cloned().unwrap_or_else(|| panic!("{id} not in {inst}"));
    let ia = find(a.id());
    assert_eq!(ia["appid"], "goim.comet");
    assert_eq!(
        ia["addrs"],
        json!([format!("tcp://edge-a.test:{}", a.tcp_addr().port()), format!("ws://edge-a.test:{}/sub", a.ws_addr().port())])
    );
    assert_eq!(ia["metadata"]["conn_count"], "3");
    assert_eq!(ia["metadata"]["ip_count"], "1");
    assert_eq!(ia["metadata"]["weight"], "10");
    assert_eq!(ia["rooms"], json!({"live://7": 3}));
    assert_eq!(find(b.id())["metadata"]["conn_count"], "4");

    // The service endpoint answers the edge's current report.
    let mut raw = nats.raw().await;
    let m = raw.request(&format!("ctl.presence.{}", a.id()), b"", WAIT).await;
    let report: Value = serde_json::from_slice(&m.payload).expect("presence report JSON");
    assert_eq!((report["id"].as_str(), report["conn_count"].as_u64()), (Some(a.id()), Some(3)), "{report}");

    // SIGKILL B: it leaves the lists and the service registry.
    b.kill();
    let killed = Instant::now();
    wait_data(auth.http, "/goim/nodes/weighted?platform=ios", DEAD_EDGE_BOUND, |d| nodes(d) == json!(["edge-a.test"])).await;
    wait_data(auth.http, "/goim/nodes/instances", DEAD_EDGE_BOUND, |d| d.as_array().is_some_and(|l| l.len() == 1)).await;
    eprintln!("killed edge dropped from the node lists after {:?}", killed.elapsed());
    let ids = srv_ping(&nats, 2, Duration::from_millis(500)).await;
    assert_eq!(ids, BTreeSet::from([a.id().to_string()]), "only the live edge answers $SRV.PING");
    drop(clients);
}

/// A refused request: a 4xx status and goim's error shape `{"code": -status, "message": "..."}`.
fn assert_refused(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    let v = r.json();
    assert_eq!(v["code"], -(status as i64), "{what}: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    assert!(v.get("data").is_none(), "{what}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_goim_errors_never_a_5xx_or_a_hang() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test")).await;
    let mut c = Client::connect_auth(Transport::Tcp, &a, Auth::new(7).key("k7").room("test://1").accepts(&ACC)).await;

    let long_key = "k".repeat(300);
    let bad_requests: Vec<(&str, String)> = vec![
        ("POST", "/goim/push/room?type=test&room=1".into()),
        ("POST", "/goim/push/room?operation=&type=test&room=1".into()),
        ("POST", "/goim/push/room?operation=abc&type=test&room=1".into()),
        ("POST", "/goim/push/room?operation=0&type=test&room=1".into()),
        ("POST", "/goim/push/room?operation=99999999999&type=test&room=1".into()),
        ("POST", "/goim/push/room?operation=1000&room=1".into()),
        ("POST", "/goim/push/room?operation=1000&type=test".into()),
        ("POST", "/goim/push/room?operation=1000&type=test&room=".into()),
        ("POST", "/goim/push/mids?mids=7".into()),
        ("POST", "/goim/push/mids?operation=1000".into()),
        ("POST", "/goim/push/mids?operation=1000&mids=abc".into()),
        ("POST", "/goim/push/mids?operation=1000&mids=7&mids=x".into()),
        ("POST", "/goim/push/mids?operation=1000&mids=".into()),
        ("POST", "/goim/push/mids?operation=1000&mids=99999999999999999999".into()),
        ("POST", "/goim/push/mids?operation=1000&mids=%zz".into()),
        ("POST", "/goim/push/keys?keys=k7".into()),
        ("POST", "/goim/push/keys?operation=1000".into()),
        ("POST", format!("/goim/push/keys?operation=1000&keys={long_key}")),
        ("POST", "/goim/push/all".into()),
        ("POST", "/goim/push/all?operation=x".into()),
        ("POST", "/goim/push/all?operation=1000&speed=fast".into()),
        ("GET", "/goim/online/top?type=live".into()),
        ("GET", "/goim/online/top?limit=5".into()),
        ("GET", "/goim/online/top?type=live&limit=x".into()),
        ("GET", "/goim/online/top?type=live&limit=-1".into()),
        ("GET", "/goim/online/top?type=live&limit=0".into()),
        ("GET", "/goim/online/room?type=live".into()),
        ("GET", "/goim/online/room?rooms=1".into()),
    ];
    for (method, path) in &bad_requests {
        let r = http(auth.http, method, path, &[("Content-Type", "application/json")], br#"{"x":1}"#, Framing::ContentLength).await;
        assert_refused(&r, 400, &format!("{method} {path}"));
    }
    // Unknown routes (including goim's multi_push tool's malformed v1 URL) and wrong methods.
    for path in ["/goim/push/mids=7", "/goim/nope", "/1/push", "/goim/online"] {
        assert_refused(&post(auth.http, path, "application/json", b"{}").await, 404, path);
    }
    for (method, path) in [
        ("GET", "/goim/push/room?operation=1000&type=test&room=1"),
        ("PUT", "/goim/push/all?operation=1000"),
        ("POST", "/goim/online/total"),
        ("DELETE", "/goim/nodes/weighted"),
    ] {
        let r = http(auth.http, method, path, &[], b"", Framing::ContentLength).await;
        assert_refused(&r, 405, &format!("{method} {path}"));
    }
    // A 10 MB body, declared up front or chunked: 413, no hang, nothing published.
    let big = vec![b'x'; 10 * 1024 * 1024];
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let r = http(auth.http, "POST", "/goim/push/room?operation=1000&type=test&room=1", &[("Content-Type", "application/json")], &big, framing).await;
        assert_refused(&r, 413, &format!("10 MB body, {framing:?}"));
    }
    // No refused request published anything: the client's first push is a valid one's.
    let r = post(auth.http, "/goim/push/keys?operation=1000&keys=k7", "application/json", b"valid").await;
    assert_ok(&r, "valid push after the malformed ones");
    c.expect_push(1000, b"valid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_api_key_guards_the_push_routes_only() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "push_api_keys = [\"push-secret\"]").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test")).await;
    let mut c = Client::connect_auth(Transport::Ws, &a, Auth::new(5).room("test://1").accepts(&ACC)).await;
    let path = "/goim/push/room?operation=1000&type=test&room=1";
    let r = post(auth.http, path, "application/json", b"no-key").await;
    assert_refused(&r, 401, "no API key");
    let r = http(auth.http, "POST", path, &[("Authorization", "Bearer wrong")], b"bad-key", Framing::ContentLength).await;
    assert_refused(&r, 401, "wrong API key");
    let r = http(auth.http, "POST", path, &[("Authorization", "Bearer push-secret")], b"with-key", Framing::ContentLength).await;
    assert_ok(&r, "right API key");
    c.expect_push(1000, b"with-key").await;
    // Reads stay open, as in goim.
    get(auth.http, "/goim/online/total").await.data();
    get(auth.http, "/goim/nodes/weighted").await.data();
}

/// A client's task: the client back, and the pushes it took with their arrival times.
type Collector = tokio::task::JoinHandle<(Client, Vec<(Packet, Instant)>)>;

/// Spawn one task per client that takes `n` pushes and stamps each.
fn collect(clients: Vec<Client>, n: usize) -> Vec<Collector> {
    clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..n {
                    let p = c.next_push().await;
                    got.push((p, Instant::now()));
                }
                (c, got)
            })
        })
        .collect()
}

async fn join(tasks: Vec<Collector>) -> (Vec<Client>, Vec<Vec<(Packet, Instant)>>) {
    let mut clients = Vec::new();
    let mut pushes = Vec::new();
    for t in tasks {
        let (c, got) = t.await.expect("client task panicked");
        clients.push(c);
        pushes.push(got);
    }
    (clients, pushes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_speed_is_a_cluster_wide_rate_split_over_the_edges() {
    const PER_EDGE: usize = 6;
    const SPEED: u64 = 4; // connections per second, cluster-wide → 2 per second on each of 2 edges
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test")).await;
    let b = Edge::start(&nats, presence_edge("edge-b.test")).await;
    let mut clients = Vec::new();
    for (e, edge) in [&a, &b].into_iter().enumerate() {
        for i in 0..PER_EDGE {
            let t = if i % 2 == 0 { Transport::Tcp } else { Transport::Ws };
            let c = Client::connect_auth(t, edge, Auth::new((e * 100 + i) as i64 + 1).room("speed://1").accepts(&[1000]))
                .await
                .with_label(&format!("{}-{i}", ["A", "B"][e]));
            clients.push(c);
        }
    }
    // Each edge sees the other (the cluster-wide count proves it), so each takes half the speed.
    heartbeat_until(&mut clients[0], 2 * PER_EDGE as i32, CHANGE_BOUND).await;
    heartbeat_until(&mut clients[PER_EDGE], 2 * PER_EDGE as i32, CHANGE_BOUND).await;

    // Control: without speed every connection has it at once.
    let tasks = collect(clients, 1);
    assert_ok(&post(auth.http, "/goim/push/all?operation=1000", "application/json", b"fast").await, "push/all");
    let (clients, got) = join(tasks).await;
    let times: Vec<Instant> = got.iter().map(|g| g[0].1).collect();
    for g in &got {
        assert_eq!(g[0].0.body, b"fast");
    }
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(spread < Duration::from_secs(1), "unpaced broadcast spread over {spread:?}");

    // speed=4: each edge reaches 2 connections per second; its 6 connections span ≈ 2.5 s. A room
    // push sent meanwhile is not held up behind the paced broadcast.
    let tasks = collect(clients, 2);
    let start = Instant::now();
    let r = post(auth.http, &format!("/goim/push/all?operation=1000&speed={SPEED}"), "application/json", b"slow").await;
    assert_ok(&r, "push/all with speed");
    assert_ok(&post(auth.http, "/goim/push/room?operation=1000&type=speed&room=1", "application/json", b"room").await, "push/room");
    let (_clients, got) = join(tasks).await;
    let mut slow = Vec::new();
    let mut room_first = 0;
    for g in &got {
        let bodies: BTreeSet<&[u8]> = g.iter().map(|(p, _)| p.body.as_slice()).collect();
        assert_eq!(bodies, BTreeSet::from([&b"slow"[..], &b"room"[..]]), "{g:?}");
        let (_, at) = g.iter().find(|(p, _)| p.body == b"slow").unwrap();
        slow.push(*at);
        if g[0].0.body == b"room" {
            room_first += 1;
        }
    }
    let spread = *slow.iter().max().unwrap() - *slow.iter().min().unwrap();
    let last = *slow.iter().max().unwrap() - start;
    eprintln!("paced broadcast spread {spread:?}, last delivery {last:?} after the request; room push first on {room_first} connections");
    // Unpaced: ~0 s; per-edge speed not split: (6-1)/4 = 1.25 s; split: (6-1)/2 = 2.5 s.
    assert!(spread >= Duration::from_millis(2000), "broadcast not paced at {SPEED}/s split over 2 edges: spread {spread:?}");
    assert!(last <= Duration::from_secs(8), "paced broadcast far slower than {SPEED}/s: last after {last:?}");
    assert!(room_first >= PER_EDGE, "the room push waited behind the paced broadcast ({room_first} of {})", 2 * PER_EDGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_ack_mode_stores_pushes_with_message_ids() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "push_ack = \"jetstream\"\npush_timeout_ms = 1000").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test")).await;
    let mut c = Client::connect_auth(Transport::Tcp, &a, Auth::new(3).key("k3").room("test://1").accepts(&ACC)).await;
    let mut raw = nats.raw().await;
    let created = raw
        .request(
            "$JS.API.STREAM.CREATE.GOIM_ROOMS",
            br#"{"name":"GOIM_ROOMS","subjects":["room.>"],"storage":"memory","duplicate_window":60000000000}"#,
            WAIT,
        )
        .await;
    let created: Value = serde_json::from_slice(&created.payload).unwrap();
    assert!(created.get("error").is_none(), "stream create: {created}");
    // goim-history's contract: history.info says which subjects are stored.
    let info_client = async_nats::connect(nats.url()).await.unwrap();
    let mut info_sub = info_client.subscribe("history.info").await.unwrap();
    info_client.flush().await.unwrap();
    let _responder = tokio::spawn(async move {
        use futures_util::StreamExt;
        let info = r#"{"streams":{"rooms":{"stream":"GOIM_ROOMS","subjects":["room.>"]},"users":null,"broadcast":null},"max_resume":10000}"#;
        while let Some(m) = info_sub.next().await {
            if let Some(reply) = m.reply {
                let _ = info_client.publish(reply, info.into()).await;
            }
        }
    });

    // The responder answers before authsvc asks (its first push asks once, then not again for 10 s):
    // async-nats' flush is no round trip, so prove the subscription is live with a request of our own.
    let mut live = false;
    for _ in 0..100 {
        let answer = raw.request("history.info", b"", WAIT).await;
        if String::from_utf8_lossy(&answer.payload).contains("GOIM_ROOMS") {
            live = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(live, "history.info responder not live after 100 requests");

    let path = "/goim/push/room?operation=1000&type=test&room=1";
    let r = http(auth.http, "POST", path, &[("Nats-Msg-Id", "order-42")], b"stored", Framing::ContentLength).await;
    assert_ok(&r, "JetStream-acked push");
    c.expect_push(1000, b"stored").await;
    // A retry with the same id is acknowledged but stored once.
    let r = http(auth.http, "POST", path, &[("Nats-Msg-Id", "order-42")], b"stored", Framing::ContentLength).await;
    assert_ok(&r, "retried push");
    let info = raw.request("$JS.API.STREAM.INFO.GOIM_ROOMS", b"", WAIT).await;
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["state"]["messages"], 1, "{info}");
    let msg = raw.request("$JS.API.STREAM.MSG.GET.GOIM_ROOMS", br#"{"seq":1}"#, WAIT).await;
    let msg: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(msg["message"]["subject"], "room.test.1", "{msg}");

    // No stream captures key.>: the server's "no stream" answer (after routing it) confirms it.
    let r = post(auth.http, "/goim/push/keys?operation=1000&keys=k3", "application/json", b"unstored").await;
    assert_ok(&r, "push to a subject no stream stores");
    // This edge started before history.info answered, so it follows the core subject, where the
    // retry is delivered again (JetStream dedups what it stores; edges following the stored copy
    // never see the retry).
    c.expect_push(1000, b"stored").await;
    c.expect_push(1000, b"unstored").await;
    let info = raw.request("$JS.API.STREAM.INFO.GOIM_ROOMS", b"", WAIT).await;
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["state"]["messages"], 1, "the key push is not stored: {info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_recovers_after_a_nats_server_restart() {
    let mut nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = authsvc(&nats, &keys, "").await;
    let a = Edge::start(&nats, presence_edge("edge-a.test")).await;
    let b = Edge::start(&nats, presence_edge("edge-b.test")).await;
    let mut a1 = conn(Transport::Tcp, &a, 1, "live://1", "a1").await;
    let mut b1 = conn(Transport::Ws, &b, 2, "live://1", "b1").await;
    let _b2 = conn(Transport::Tcp, &b, 3, "live://1", "b2").await;
    let total = json!({"conn_count": 3, "ip_count": 2});
    wait_data(auth.http, "/goim/online/total", CHANGE_BOUND, |d| *d == total).await;
    heartbeat_until(&mut a1, 3, CHANGE_BOUND).await;

    // The presence bucket is in memory: a restarted server has none. The edges create it again and
    // re-report; authsvc and the edges watch it again.
    nats.restart().await;
    let restarted = Instant::now();
    wait_data(auth.http, "/goim/online/total", DEAD_EDGE_BOUND, |d| *d == total).await;
    wait_data(auth.http, "/goim/nodes/instances", DEAD_EDGE_BOUND, |d| d.as_array().is_some_and(|l| l.len() == 2)).await;
    // A change made after the restart reaches the API and the other edge's heartbeats.
    let _a2 = conn(Transport::Ws, &a, 4, "live://1", "a2").await;
    wait_data(auth.http, "/goim/online/room?type=live&rooms=1", DEAD_EDGE_BOUND, |d| *d == json!({"1": 4})).await;
    heartbeat_until(&mut b1, 4, DEAD_EDGE_BOUND).await;
    heartbeat_until(&mut a1, 4, DEAD_EDGE_BOUND).await;
    eprintln!("presence recovered {:?} after the restart", restarted.elapsed());
}
