//! The scenarios of issue 6 (S1–S6) and the resume-throughput benchmark of issue 4 (R1). Each starts
//! its own nats-server and edges in a temp dir, drives worker processes, and returns its results as
//! JSON (printed as a summary, appended to `--json`).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::time::{sleep, sleep_until, Instant};

use crate::hist::{Hist, Sparse};
use crate::procs::{self, split, workers_for, Edge, EdgeConf, NatsServer, Pool, Result};
use crate::proto;
use crate::sys;
use crate::worker::{Kind, Spec, TokenSpec};

/// What every scenario shares: the scratch dir (configs, logs) and the command-line edge overrides.
pub struct Env {
    pub dir: PathBuf,
    pub edge_set: Vec<String>,
    /// `KEY=VALUE` environment of the edge processes.
    pub edge_env: Vec<String>,
    /// Record the edges with `perf` during fan-out measurements.
    pub perf: bool,
}

impl Env {
    fn edge_conf(&self) -> Result<EdgeConf> {
        let mut c = EdgeConf::new();
        c.apply_overrides(&self.edge_set)?;
        for kv in &self.edge_env {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("--edge-env {kv:?}: want KEY=VALUE"))?;
            c.env.push((k.to_string(), v.to_string()));
        }
        Ok(c)
    }

    async fn edges(&self, nats: &NatsServer, n: usize, conf: &EdgeConf) -> Result<Vec<Edge>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(Edge::start(&self.dir, &nats.url(), conf).await?);
        }
        Ok(out)
    }
}

fn base_spec(kind: Kind, targets: Vec<std::net::SocketAddr>, first: u64, count: u64) -> Spec {
    Spec {
        kind,
        targets,
        ws_path: "/sub".into(),
        sources: Vec::new(),
        first,
        count,
        mids: false,
        rooms: 1,
        room_prefix: "test://".into(),
        subject: "room.test.0".into(),
        token: None,
        heartbeat_ms: 0,
        resume_room: None,
        concurrency: 256,
        timeout_ms: 30_000,
        ws_deflate: None,
        tls_ca: None,
    }
}

/// Specs for `n` connections over `workers` processes.
fn specs(n: u64, workers: usize, mut make: impl FnMut(usize, u64, u64) -> Spec) -> Vec<Spec> {
    split(n, workers).into_iter().enumerate().map(|(w, (first, count))| make(w, first, count)).collect()
}

/// Sum of the workers' `connected` events.
fn connected_summary(events: &[Value]) -> Value {
    let sum = |k: &str| events.iter().map(|e| e[k].as_u64().unwrap_or(0)).sum::<u64>();
    let maxf = |k: &str| events.iter().map(|e| e[k].as_f64().unwrap_or(0.0)).fold(0.0, f64::max);
    let mut errors = serde_json::Map::new();
    let mut reasons = serde_json::Map::new();
    for e in events {
        for (src, dst) in [(&e["errors"], &mut errors), (&e["resume_reasons"], &mut reasons)] {
            if let Some(m) = src.as_object() {
                for (k, v) in m {
                    let prev = dst.get(k).and_then(Value::as_u64).unwrap_or(0);
                    dst.insert(k.clone(), json!(prev + v.as_u64().unwrap_or(0)));
                }
            }
        }
    }
    let ok = sum("ok");
    let wall = maxf("t_last_ok");
    json!({
        "ok": ok,
        "failed": sum("failed"),
        "errors": errors,
        "wall_s": round(wall, 3),
        "connects_per_s": round(if wall > 0.0 { ok as f64 / wall } else { 0.0 }, 0),
        "resumed_ok": sum("resumed_ok"),
        "resumed_fail": sum("resumed_fail"),
        "resume_reasons": reasons,
        "replayed": sum("replayed"),
        "resume_wall_s": round(maxf("t_last_resumed"), 3),
    })
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn require_connected(what: &str, c: &Value, want: u64) -> Result<()> {
    let ok = c["ok"].as_u64().unwrap_or(0);
    if ok * 10 < want * 9 {
        return Err(format!("{what}: only {ok} of {want} connections established: {}", c["errors"]));
    }
    Ok(())
}

/// CPU seconds of the processes that matter, and of the machine, at one instant.
#[derive(Debug, Clone, Copy)]
struct Snap {
    at: Instant,
    edges: f64,
    edges_sys: f64,
    nats: f64,
    workers: f64,
    me: f64,
    machine: f64,
}

fn snap(edges: &[u32], nats: u32, workers: &[u32]) -> Snap {
    Snap {
        at: Instant::now(),
        edges: sys::cpu_sum(edges),
        edges_sys: edges.iter().filter_map(|p| sys::cpu_split(*p)).map(|(_, s)| s).sum(),
        nats: sys::cpu_secs(nats).unwrap_or(0.0),
        workers: sys::cpu_sum(workers),
        me: sys::cpu_secs(std::process::id()).unwrap_or(0.0),
        machine: sys::machine_cpu().0,
    }
}

fn cpu_delta(a: Snap, b: Snap) -> Value {
    let ours = (b.edges - a.edges) + (b.nats - a.nats) + (b.workers - a.workers) + (b.me - a.me);
    let machine = b.machine - a.machine;
    json!({
        "wall_s": round((b.at - a.at).as_secs_f64(), 3),
        "edge_cpu_s": round(b.edges - a.edges, 3),
        "edge_sys_cpu_s": round(b.edges_sys - a.edges_sys, 3),
        "nats_cpu_s": round(b.nats - a.nats, 3),
        "loadgen_cpu_s": round((b.workers - a.workers) + (b.me - a.me), 3),
        "machine_busy_cpu_s": round(machine, 3),
        "others_cpu_s": round((machine - ours).max(0.0), 3),
    })
}

fn latency(h: &Hist) -> Value {
    let ms = |ns: u64| round(ns as f64 / 1e6, 3);
    json!({
        "samples": h.count(),
        "p50_ms": ms(h.quantile(0.5)),
        "p90_ms": ms(h.quantile(0.9)),
        "p99_ms": ms(h.quantile(0.99)),
        "p999_ms": ms(h.quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

async fn edge_stats(client: &async_nats::Client, id: &str) -> Value {
    match tokio::time::timeout(Duration::from_secs(5), client.request(format!("ctl.stats.{id}"), "".into())).await {
        Ok(Ok(m)) => serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Publish `pushes` messages to each of `subjects` at `rate` per second (per subject), with the
/// publish time in the body, in bursts of `burst` back-to-back messages (1 = evenly spaced); returns
/// the time of the first publish.
async fn publish_paced(client: &async_nats::Client, subjects: &[String], rate: f64, pushes: u64, burst: u64, body_bytes: usize) -> Result<Instant> {
    let t0 = Instant::now();
    let burst = burst.max(1);
    let period = Duration::from_secs_f64(burst as f64 / rate.max(0.001));
    let mut sent = 0;
    let mut k = 0u32;
    while sent < pushes {
        sleep_until(t0 + period * k).await;
        k += 1;
        for _ in 0..burst.min(pushes - sent) {
            for s in subjects {
                client
                    .publish(s.clone(), proto::push_body_sized(proto::now_ns(), body_bytes).into())
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
            }
            sent += 1;
        }
        client.flush().await.map_err(|e| format!("flush: {e}"))?;
    }
    Ok(t0)
}

/// A fan-out measurement: count from now, publish, wait (bounded) until every expected delivery
/// arrived, stop counting. CPU is read around the publish + drain window.
#[allow(clippy::too_many_arguments)]
async fn measure_fanout(
    env: &Env,
    pool: &mut Pool,
    client: &async_nats::Client,
    subjects: &[String],
    rate: f64,
    burst: u64,
    body_bytes: usize,
    pushes: u64,
    expected: u64,
    drain: Duration,
    edge_pids: &[u32],
    nats_pid: u32,
) -> Result<Value> {
    pool.all("start", "started", Duration::from_secs(30)).await?;
    let workers = pool.pids();
    let perf = if env.perf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(procs::Perf::start(edge_pids, env.dir.join(format!("perf-{n}.data")))?)
    } else {
        None
    };
    let a = snap(edge_pids, nats_pid, &workers);
    publish_paced(client, subjects, rate, pushes, burst, body_bytes).await?;
    let published = Instant::now();
    let deadline = published + drain;
    let mut last = 0;
    while Instant::now() < deadline {
        let (n, _) = pool.count().await?;
        last = n;
        if n >= expected {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let b = snap(edge_pids, nats_pid, &workers);
    let profile = match perf {
        Some(p) => p.finish().await,
        None => Value::Null,
    };
    let measured = pool.all("stop", "measured", Duration::from_secs(30)).await?;
    let mut hist = Hist::default();
    let mut delivered = 0;
    let mut dropped = 0;
    let mut heartbeat_replies = 0;
    let (mut app_bytes, mut wire_bytes) = (0u64, 0u64);
    let mut errors = serde_json::Map::new();
    for m in &measured {
        delivered += m["deliveries"].as_u64().unwrap_or(0);
        app_bytes += m["bytes"].as_u64().unwrap_or(0);
        wire_bytes += m["wire_bytes"].as_u64().unwrap_or(0);
        dropped += m["dropped"].as_u64().unwrap_or(0);
        heartbeat_replies += m["heartbeat_replies"].as_u64().unwrap_or(0);
        if let Ok(s) = serde_json::from_value::<Sparse>(m["hist"].clone()) {
            hist.merge_sparse(&s);
        }
        if let Some(e) = m["errors"].as_object() {
            for (k, v) in e {
                let prev = errors.get(k).and_then(Value::as_u64).unwrap_or(0);
                errors.insert(k.clone(), json!(prev + v.as_u64().unwrap_or(0)));
            }
        }
    }
    let _ = last;
    let mut profile = profile;
    if let Some(counts) = profile["counts"].as_object().cloned() {
        let per = |k: &str| counts.get(k).and_then(Value::as_f64).map(|n| round(delivered as f64 / n.max(1.0), 2));
        profile["deliveries_per_sendto"] = json!(per("sendto"));
        profile["deliveries_per_context_switch"] = json!(per("context-switches"));
    }
    let cpu = cpu_delta(a, b);
    let wall = (b.at - a.at).as_secs_f64();
    let edge_cpu = cpu["edge_cpu_s"].as_f64().unwrap_or(0.0);
    let nats_cpu = cpu["nats_cpu_s"].as_f64().unwrap_or(0.0);
    let per = |cpu: f64| if cpu > 0.0 { round(delivered as f64 / cpu, 0) } else { 0.0 };
    Ok(json!({
        "pushes_per_subject": pushes,
        "burst": burst,
        "subjects": subjects.len(),
        "expected": expected,
        "delivered": delivered,
        "delivered_fraction": round(delivered as f64 / expected.max(1) as f64, 4),
        "deliveries_per_s": round(delivered as f64 / wall.max(1e-9), 0),
        "publish_s": round((published - a.at).as_secs_f64(), 3),
        "drain_s": round((b.at - published).as_secs_f64(), 3),
        "cpu": cpu,
        "deliveries_per_edge_cpu_s": per(edge_cpu),
        "deliveries_per_nats_cpu_s": per(nats_cpu),
        "edge_ns_per_delivery": if delivered > 0 { round(edge_cpu * 1e9 / delivered as f64, 1) } else { 0.0 },
        "nats_ns_per_delivery": if delivered > 0 { round(nats_cpu * 1e9 / delivered as f64, 1) } else { 0.0 },
        "latency": latency(&hist),
        // Per delivery: the goim packet (header + body), and what the raw WebSocket client read off
        // the socket (frames, op-9 wrappers, compressed or not; 0 for other clients).
        "packet_bytes_per_delivery": if delivered > 0 { round(app_bytes as f64 / delivered as f64, 1) } else { 0.0 },
        "wire_bytes_per_delivery": if delivered > 0 { round(wire_bytes as f64 / delivered as f64, 1) } else { 0.0 },
        "dropped_connections": dropped,
        "heartbeat_replies": heartbeat_replies,
        "client_errors": errors,
        "profile": profile,
    }))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

// ---------------------------------------------------------------------------------------------
// S1 room fan-out, edge vs the nats-server WebSocket peer

pub struct S1 {
    pub conns: u64,
    /// Push body size: 0 = goim's `{"test":1}` (+ ts), else a chat-like JSON message of about this
    /// many bytes ([`proto::push_body_sized`]).
    pub body_bytes: usize,
    /// Publish in bursts of this many back-to-back messages (same average rate): emulates what a
    /// coalescing window of burst/rate seconds would hand each connection's writer.
    pub burst: u64,
    pub edges: usize,
    pub rate: f64,
    pub secs: f64,
    pub phases: Vec<String>,
    pub drain_secs: f64,
}

pub async fn s1(env: &Env, a: &S1) -> Result<Value> {
    let nats = NatsServer::start(&env.dir, true).await?;
    let client = async_nats::connect(nats.url()).await.map_err(|e| format!("connect: {e}"))?;
    let conf = env.edge_conf()?;
    let mut edges = env.edges(&nats, a.edges, &conf).await?;
    let edge_pids: Vec<u32> = edges.iter().map(|e| e.pid).collect();
    let pushes = (a.rate * a.secs).round().max(1.0) as u64;
    let subject = "room.test.0".to_string();
    let mut phases = serde_json::Map::new();
    for phase in &a.phases {
        let (kind, targets): (Kind, Vec<_>) = match phase.as_str() {
            "tcp" => (Kind::GoimTcp, edges.iter().map(|e| e.tcp).collect()),
            "ws" | "ws-raw" | "ws-deflate" => (Kind::GoimWs, edges.iter().map(|e| e.ws).collect()),
            "peer" => (
                Kind::NatsWs,
                vec![std::net::SocketAddr::from(([127, 0, 0, 1], nats.ws_port.ok_or("no NATS websocket port")?))],
            ),
            other => return Err(format!("unknown S1 phase {other:?} (tcp, ws, ws-raw, ws-deflate, peer)")),
        };
        let specs = specs(a.conns, workers_for(a.conns, 2), |_, first, count| {
            let mut s = base_spec(kind, targets.clone(), first, count);
            if kind == Kind::NatsWs {
                s.ws_path = "/".into();
            }
            // The raw client, counting wire bytes, without and with permessage-deflate.
            s.ws_deflate = match phase.as_str() {
                "ws-raw" => Some(false),
                "ws-deflate" => Some(true),
                _ => None,
            };
            s
        });
        let mut pool = Pool::start(specs).await?;
        let c = connected_summary(&pool.all("connect", "connected", Duration::from_secs(600)).await?);
        require_connected(&format!("S1 {phase}"), &c, a.conns)?;
        sleep(Duration::from_secs(1)).await;
        let rss_edges = sys::rss_sum(&edge_pids);
        let rss_nats = sys::rss_bytes(nats.pid).unwrap_or(0);
        let ok = c["ok"].as_u64().unwrap_or(0);
        let mut m = measure_fanout(
            env,
            &mut pool,
            &client,
            std::slice::from_ref(&subject),
            a.rate,
            a.burst,
            a.body_bytes,
            pushes,
            pushes * ok,
            Duration::from_secs_f64(a.drain_secs),
            &edge_pids,
            nats.pid,
        )
        .await?;
        m["connect"] = c;
        m["edge_rss_mb"] = json!(round(rss_edges as f64 / 1048576.0, 1));
        m["nats_rss_mb"] = json!(round(rss_nats as f64 / 1048576.0, 1));
        if kind != Kind::NatsWs {
            let mut stats = Vec::new();
            for e in &edges {
                let s = edge_stats(&client, &e.id).await;
                stats.push(json!({"id": e.id, "delivered": s["delivered"], "closed": s["closed"]}));
            }
            m["edge_stats"] = json!(stats);
        }
        pool.close().await;
        for e in &mut edges {
            if !e.alive() {
                return Err(format!("edge {} died during S1 {phase}", e.id));
            }
        }
        phases.insert(phase.clone(), m);
        sleep(Duration::from_millis(500)).await;
    }
    // The peer comparison: the edge's CPU per delivery against nats-server's on its WebSocket listener.
    let mut ratios = serde_json::Map::new();
    // permessage-deflate against the same raw client without it, same run.
    let mut deflate = serde_json::Map::new();
    if let (Some(z), Some(plain)) = (phases.get("ws-deflate"), phases.get("ws-raw")) {
        let r = |k: &str| {
            let (a, b) = (z[k].as_f64().unwrap_or(0.0), plain[k].as_f64().unwrap_or(0.0));
            if b > 0.0 { json!(round(a / b, 3)) } else { Value::Null }
        };
        deflate.insert("deflate_vs_plain_edge_cpu_per_delivery".into(), r("edge_ns_per_delivery"));
        deflate.insert("deflate_vs_plain_wire_bytes_per_delivery".into(), r("wire_bytes_per_delivery"));
        deflate.insert("compress_ns_per_message".into(), json!(compress_cost(a.body_bytes)));
    }
    if let Some(peer) = phases.get("peer") {
        let peer_ns = peer["nats_ns_per_delivery"].as_f64().unwrap_or(0.0);
        for t in ["tcp", "ws"] {
            if let Some(p) = phases.get(t) {
                let edge_ns = p["edge_ns_per_delivery"].as_f64().unwrap_or(0.0);
                if peer_ns > 0.0 {
                    ratios.insert(format!("edge_{t}_vs_nats_ws_cpu_per_delivery"), json!(round(edge_ns / peer_ns, 3)));
                }
            }
        }
    }
    let best = ["tcp", "ws"]
        .iter()
        .filter_map(|t| phases.get(*t))
        .map(|p| p["deliveries_per_edge_cpu_s"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let ratio_ok = !ratios.is_empty() && ratios.values().all(|r| r.as_f64().unwrap_or(9.9) <= 0.5);
    for e in edges {
        e.stop().await;
    }
    nats.stop().await;
    Ok(json!({
        "scenario": "S1",
        "params": {"conns": a.conns, "edges": a.edges, "rate_per_s": a.rate, "burst": a.burst, "secs": a.secs,
            "body": if a.body_bytes == 0 { "{\"test\":1,\"ts\":<ns>}".to_string() } else { format!("chat JSON of ~{} bytes", a.body_bytes) }},
        "phases": phases,
        "ratios": ratios,
        "deflate": deflate,
        "targets": {
            "deliveries_per_edge_cpu_s >= 3M": verdict(best >= 3e6),
            "edge cpu per delivery <= 0.5x nats-server ws": verdict(ratio_ok),
        },
    }))
}

/// What compressing one push costs with the edge's settings (flate2/zlib-rs, default level, raw
/// DEFLATE, reset per message, sync flush), in ns, over 2,000 bodies of `body_bytes`: the edge pays it
/// once per push item for all its deflate connections; per connection it would pay it per delivery.
fn compress_cost(body_bytes: usize) -> f64 {
    use flate2::{Compress, Compression, FlushCompress};
    let bodies: Vec<Vec<u8>> = (0..2000u64).map(|i| proto::push_body_sized(1_700_000_000_000_000_000 + i * 7919, body_bytes)).collect();
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(64 << 10);
    let t = std::time::Instant::now();
    for b in &bodies {
        c.reset();
        out.clear();
        if c.compress_vec(b, &mut out, FlushCompress::Sync).is_err() {
            return f64::NAN;
        }
    }
    round(t.elapsed().as_nanos() as f64 / bodies.len() as f64, 0)
}

// ---------------------------------------------------------------------------------------------
// S2 latency

pub struct S2 {
    pub conns: u64,
    pub rate: f64,
    pub secs: f64,
    pub transport: String,
    pub edges: usize,
}

pub async fn s2(env: &Env, a: &S2) -> Result<Value> {
    let nats = NatsServer::start(&env.dir, false).await?;
    let client = async_nats::connect(nats.url()).await.map_err(|e| format!("connect: {e}"))?;
    let edges = env.edges(&nats, a.edges, &env.edge_conf()?).await?;
    let edge_pids: Vec<u32> = edges.iter().map(|e| e.pid).collect();
    let (kind, targets) = match a.transport.as_str() {
        "ws" => (Kind::GoimWs, edges.iter().map(|e| e.ws).collect::<Vec<_>>()),
        _ => (Kind::GoimTcp, edges.iter().map(|e| e.tcp).collect::<Vec<_>>()),
    };
    let mut pool = Pool::start(specs(a.conns, workers_for(a.conns, 2), |_, f, c| base_spec(kind, targets.clone(), f, c))).await?;
    let c = connected_summary(&pool.all("connect", "connected", Duration::from_secs(600)).await?);
    require_connected("S2", &c, a.conns)?;
    sleep(Duration::from_secs(1)).await;
    let ok = c["ok"].as_u64().unwrap_or(0);
    let pushes = (a.rate * a.secs).round().max(1.0) as u64;
    let mut m = measure_fanout(env, &mut pool, &client, &["room.test.0".into()], a.rate, 1, 0, pushes, pushes * ok, Duration::from_secs(10), &edge_pids, nats.pid).await?;
    m["connect"] = c;
    let stats = edge_stats(&client, &edges[0].id).await;
    m["edge_closed"] = stats["closed"].clone();
    pool.close().await;
    for e in edges {
        e.stop().await;
    }
    nats.stop().await;
    let p99 = m["latency"]["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let p999 = m["latency"]["p999_ms"].as_f64().unwrap_or(f64::MAX);
    let rate = m["deliveries_per_s"].as_f64().unwrap_or(0.0);
    let offered = a.rate * a.conns as f64;
    Ok(json!({
        "scenario": "S2",
        "params": {"conns": a.conns, "rate_per_s": a.rate, "offered_deliveries_per_s": offered, "secs": a.secs, "transport": a.transport, "edges": a.edges},
        "result": m,
        "targets": {
            "p99 <= 5 ms": verdict(p99 <= 5.0),
            "p99.9 <= 20 ms": verdict(p999 <= 20.0),
            "at 200k deliveries/s": verdict(offered >= 200_000.0 && rate >= 190_000.0),
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// S3 idle memory per authenticated connection

pub struct S3 {
    pub conns: u64,
    /// Each connection with its own mid (user subject); false = anonymous (mid 0).
    pub mids: bool,
    pub transports: Vec<String>,
    pub room_size: u64,
}

/// What the TLS phases' clients are (worker.rs `tls_connector`; rcgen's default key type).
const TLS_CLIENT: &str = "rustls 0.23 (ring) client, TLS 1.3 (AES-256-GCM, its first choice), full handshakes (resumption off), ECDSA P-256 self-signed certificate";

/// A self-signed certificate for `localhost` and 127.0.0.1 in the scratch dir (generated once per
/// run), and the edge's TLS listeners on loopback with it: `listen.tls` and `listen.wss` (whose
/// default would be 0.0.0.0:3103). Returns the certificate's PEM path, which the clients trust.
fn tls_listeners(env: &Env, conf: &mut EdgeConf) -> Result<String> {
    let cert = env.dir.join("tls-cert.pem");
    let key = env.dir.join("tls-key.pem");
    if !cert.is_file() {
        let certified = rcgen::generate_simple_self_signed(vec![crate::worker::TLS_NAME.to_string(), "127.0.0.1".to_string()])
            .map_err(|e| format!("self-signed certificate: {e}"))?;
        std::fs::write(&key, certified.key_pair.serialize_pem()).map_err(|e| format!("write {}: {e}", key.display()))?;
        std::fs::write(&cert, certified.cert.pem()).map_err(|e| format!("write {}: {e}", cert.display()))?;
    }
    let cert = cert.display().to_string();
    conf.set("tls", "cert_path", procs::toml_str(&cert));
    conf.set("tls", "key_path", procs::toml_str(&key.display().to_string()));
    conf.set("listen", "tls", procs::toml_str("127.0.0.1:0"));
    conf.set("listen", "wss", procs::toml_str("127.0.0.1:0"));
    Ok(cert)
}

pub async fn s3(env: &Env, a: &S3) -> Result<Value> {
    let nats = NatsServer::start(&env.dir, false).await?;
    let client = async_nats::connect(nats.url()).await.map_err(|e| format!("connect: {e}"))?;
    let mut phases = serde_json::Map::new();
    let mut worst = 0.0f64;
    for t in &a.transports {
        let mut conf = env.edge_conf()?;
        let tls_ca = match t.as_str() {
            "tls" | "wss" => Some(tls_listeners(env, &mut conf)?),
            "tcp" | "ws" => None,
            other => return Err(format!("unknown S3 transport {other:?} (tcp, ws, tls, wss)")),
        };
        let edge = Edge::start(&env.dir, &nats.url(), &conf).await?;
        let (kind, target) = match t.as_str() {
            "ws" => (Kind::GoimWs, edge.ws),
            "tls" => (Kind::GoimTls, edge.tls.ok_or("the edge has no listen.tls")?),
            "wss" => (Kind::GoimWss, edge.wss.ok_or("the edge has no listen.wss")?),
            _ => (Kind::GoimTcp, edge.tcp),
        };
        sleep(Duration::from_secs(1)).await;
        let rss0 = sys::rss_bytes(edge.pid).unwrap_or(0);
        let nrss0 = sys::rss_bytes(nats.pid).unwrap_or(0);
        let rooms = (a.conns / a.room_size.max(1)).max(1);
        let mut pool = Pool::start(specs(a.conns, workers_for(a.conns, 2), |_, f, c| {
            let mut s = base_spec(kind, vec![target], f, c);
            s.mids = a.mids;
            s.rooms = rooms;
            s.tls_ca = tls_ca.clone();
            s
        }))
        .await?;
        let c = connected_summary(&pool.all("connect", "connected", Duration::from_secs(600)).await?);
        require_connected(&format!("S3 {t}"), &c, a.conns)?;
        sleep(Duration::from_secs(3)).await;
        let rss1 = sys::rss_bytes(edge.pid).unwrap_or(0);
        let nrss1 = sys::rss_bytes(nats.pid).unwrap_or(0);
        let ok = c["ok"].as_u64().unwrap_or(1).max(1);
        let stats = edge_stats(&client, &edge.id).await;
        let per = (rss1.saturating_sub(rss0)) as f64 / ok as f64;
        worst = worst.max(per);
        phases.insert(
            t.clone(),
            json!({
                "connect": c,
                "rooms": rooms,
                "edge_rss_before_mb": round(rss0 as f64 / 1048576.0, 1),
                "edge_rss_after_mb": round(rss1 as f64 / 1048576.0, 1),
                "edge_bytes_per_conn": round(per, 0),
                "nats_bytes_per_conn": round(nrss1.saturating_sub(nrss0) as f64 / ok as f64, 0),
                "edge_authenticated": stats["authenticated"],
                "tls": if tls_ca.is_some() { json!(TLS_CLIENT) } else { Value::Null },
            }),
        );
        pool.close().await;
        edge.stop().await;
    }
    nats.stop().await;
    Ok(json!({
        "scenario": "S3",
        "params": {"conns": a.conns, "room_size": a.room_size, "each_conn": if a.mids { "own mid (user subject), a room, an empty key (edge-generated)" } else { "anonymous (mid 0, no user subject), a room, an empty key (edge-generated)" }},
        "phases": phases,
        "targets": {"<= 2 KB edge RSS per connection": verdict(worst <= 2048.0)},
    }))
}

// ---------------------------------------------------------------------------------------------
// S4 idle CPU with heartbeats

pub struct S4 {
    pub conns: u64,
    pub heartbeat_secs: f64,
    pub window_secs: f64,
    pub baseline_secs: f64,
    pub transport: String,
}

pub async fn s4(env: &Env, a: &S4) -> Result<Value> {
    let nats = NatsServer::start(&env.dir, false).await?;
    let edge = Edge::start(&env.dir, &nats.url(), &env.edge_conf()?).await?;
    let (kind, target) = match a.transport.as_str() {
        "ws" => (Kind::GoimWs, edge.ws),
        _ => (Kind::GoimTcp, edge.tcp),
    };
    sleep(Duration::from_secs(1)).await;
    // The edge's own idle cost (presence reports, NATS pings) with no connection at all.
    let b0 = sys::cpu_secs(edge.pid).unwrap_or(0.0);
    sleep(Duration::from_secs_f64(a.baseline_secs)).await;
    let baseline_rate = (sys::cpu_secs(edge.pid).unwrap_or(0.0) - b0) / a.baseline_secs.max(0.001);
    let hb_ms = (a.heartbeat_secs * 1000.0) as u64;
    let mut pool = Pool::start(specs(a.conns, workers_for(a.conns, 2), |_, f, c| {
        let mut s = base_spec(kind, vec![target], f, c);
        s.mids = true;
        s.rooms = (a.conns / 100).max(1);
        s.heartbeat_ms = hb_ms;
        s
    }))
    .await?;
    let c = connected_summary(&pool.all("connect", "connected", Duration::from_secs(600)).await?);
    require_connected("S4", &c, a.conns)?;
    // Heartbeats start at a random offset per connection within the first period.
    sleep(Duration::from_secs(2)).await;
    pool.all("start", "started", Duration::from_secs(30)).await?;
    let workers = pool.pids();
    let perf = if env.perf { Some(procs::Perf::start(&[edge.pid], env.dir.join("perf-s4.data"))?) } else { None };
    let s0 = snap(&[edge.pid], nats.pid, &workers);
    sleep(Duration::from_secs_f64(a.window_secs)).await;
    let s1 = snap(&[edge.pid], nats.pid, &workers);
    let profile = match perf {
        Some(p) => p.finish().await,
        None => Value::Null,
    };
    let measured = pool.all("stop", "measured", Duration::from_secs(30)).await?;
    let replies: u64 = measured.iter().map(|m| m["heartbeat_replies"].as_u64().unwrap_or(0)).sum();
    let dropped: u64 = measured.iter().map(|m| m["dropped"].as_u64().unwrap_or(0)).sum();
    pool.close().await;
    edge.stop().await;
    nats.stop().await;
    let ok = c["ok"].as_u64().unwrap_or(1).max(1) as f64;
    let cpu = cpu_delta(s0, s1);
    let window = (s1.at - s0.at).as_secs_f64();
    let edge_cpu = s1.edges - s0.edges;
    let per_conn_s_us = edge_cpu / (ok * window) * 1e6;
    let net_us = ((edge_cpu - baseline_rate * window).max(0.0)) / (ok * window) * 1e6;
    Ok(json!({
        "scenario": "S4",
        "params": {"conns": a.conns, "heartbeat_s": a.heartbeat_secs, "window_s": a.window_secs, "transport": a.transport},
        "result": {
            "connect": c,
            "cpu": cpu,
            "heartbeat_replies": replies,
            "expected_heartbeats": round(ok * window / a.heartbeat_secs.max(0.001), 0),
            "dropped_connections": dropped,
            "edge_idle_cpu_s_per_s_without_conns": round(baseline_rate, 5),
            "edge_cpu_us_per_conn_s": round(per_conn_s_us, 4),
            "edge_cpu_us_per_conn_s_net_of_baseline": round(net_us, 4),
            "profile": profile,
        },
        "targets": {"<= 1 us edge CPU per connection-second": verdict(per_conn_s_us <= 1.0)},
    }))
}

// ---------------------------------------------------------------------------------------------
// S5 connect storm

pub struct S5 {
    pub conns: u64,
    pub modes: Vec<String>,
    pub concurrency: usize,
    pub transport: String,
}

pub async fn s5(env: &Env, a: &S5) -> Result<Value> {
    let nats = NatsServer::start(&env.dir, false).await?;
    let client = async_nats::connect(nats.url()).await.map_err(|e| format!("connect: {e}"))?;
    let keydir = env.dir.join("keys");
    let (_, private, public) = goim_token::SigningKey::generate_ed25519_files("k1", &keydir).map_err(|e| format!("key: {e}"))?;
    let mut phases = serde_json::Map::new();
    let mut token_per_core = None;
    for mode in &a.modes {
        let mut conf = env.edge_conf()?;
        let token = match mode.as_str() {
            "trust-body" => None,
            "token" => {
                conf.set("auth", "mode", procs::toml_str("token"));
                conf.set("auth", "keys_from_nats", "false");
                conf.extra.push_str(&format!("[[auth.keys]]\nid = \"k1\"\nfile = {}\n", procs::toml_str(&public.display().to_string())));
                Some(TokenSpec {
                    kid: "k1".into(),
                    key_file: private.display().to_string(),
                    issuer: "goim-authsvc".into(),
                    audience: "goim".into(),
                })
            }
            other => return Err(format!("unknown S5 mode {other:?} (trust-body, token)")),
        };
        let edge = Edge::start(&env.dir, &nats.url(), &conf).await?;
        let (kind, target) = match a.transport.as_str() {
            "ws" => (Kind::GoimWs, edge.ws),
            _ => (Kind::GoimTcp, edge.tcp),
        };
        let mut pool = Pool::start(specs(a.conns, workers_for(a.conns, 2), |_, f, c| {
            let mut s = base_spec(kind, vec![target], f, c);
            s.mids = true;
            s.rooms = (a.conns / 100).max(1);
            s.token = token.clone();
            s.concurrency = a.concurrency;
            s
        }))
        .await?;
        sleep(Duration::from_millis(500)).await;
        let workers = pool.pids();
        let s0 = snap(&[edge.pid], nats.pid, &workers);
        let c = connected_summary(&pool.all("connect", "connected", Duration::from_secs(600)).await?);
        let s1 = snap(&[edge.pid], nats.pid, &workers);
        require_connected(&format!("S5 {mode}"), &c, a.conns)?;
        let stats = edge_stats(&client, &edge.id).await;
        pool.close().await;
        edge.stop().await;
        let ok = c["ok"].as_u64().unwrap_or(0) as f64;
        let edge_cpu = s1.edges - s0.edges;
        let per_core = if edge_cpu > 0.0 { ok / edge_cpu } else { 0.0 };
        if mode == "token" {
            token_per_core = Some(per_core);
        }
        phases.insert(
            mode.clone(),
            json!({
                "connect": c,
                "cpu": cpu_delta(s0, s1),
                "connects_per_edge_cpu_s": round(per_core, 0),
                "edge_denied": stats["denied"],
            }),
        );
    }
    nats.stop().await;
    Ok(json!({
        "scenario": "S5",
        "params": {"conns": a.conns, "concurrency_per_worker": a.concurrency, "transport": a.transport, "each_conn": "own mid, room of 100, op 7 -> op 8"},
        "phases": phases,
        "targets": {">= 5,000 authenticated connects/s per edge core (token)": match token_per_core {
            Some(v) => verdict(v >= 5000.0),
            None => "not run (token mode not selected)",
        }},
    }))
}

// ---------------------------------------------------------------------------------------------
// S6 scale across edges sharing a port

pub struct S6 {
    pub conns: u64,
    pub edges: usize,
    pub room_size: u64,
    pub ws_every: usize,
}

pub async fn s6(env: &Env, a: &S6) -> Result<Value> {
    let nats = NatsServer::start(&env.dir, false).await?;
    let client = async_nats::connect(nats.url()).await.map_err(|e| format!("connect: {e}"))?;
    let (tcp_port, ws_port) = (procs::free_port()?, procs::free_port()?);
    let mut conf = env.edge_conf()?;
    conf.set("listen", "tcp", procs::toml_str(&format!("127.0.0.1:{tcp_port}")));
    conf.set("listen", "ws", procs::toml_str(&format!("127.0.0.1:{ws_port}")));
    conf.set("listen", "reuse_port", "true");
    let mut edges = env.edges(&nats, a.edges, &conf).await?;
    let edge_pids: Vec<u32> = edges.iter().map(|e| e.pid).collect();
    sleep(Duration::from_millis(500)).await;
    let rss0 = sys::rss_sum(&edge_pids);
    let rooms = (a.conns / a.room_size.max(1)).max(1);
    let (tcp, ws) = (edges[0].tcp, edges[0].ws);
    let nworkers = workers_for(a.conns, 2);
    let mut ws_conns = 0;
    let specs = specs(a.conns, nworkers, |w, f, c| {
        let is_ws = a.ws_every > 0 && w % a.ws_every == a.ws_every - 1;
        if is_ws {
            ws_conns += c;
        }
        let mut s = if is_ws { base_spec(Kind::GoimWs, vec![ws], f, c) } else { base_spec(Kind::GoimTcp, vec![tcp], f, c) };
        s.mids = true;
        s.rooms = rooms;
        s
    });
    let mut pool = Pool::start(specs).await?;
    let workers = pool.pids();
    let s0 = snap(&edge_pids, nats.pid, &workers);
    let c = connected_summary(&pool.all("connect", "connected", Duration::from_secs(900)).await?);
    let s1 = snap(&edge_pids, nats.pid, &workers);
    require_connected("S6", &c, a.conns)?;
    sleep(Duration::from_secs(2)).await;
    let ok = c["ok"].as_u64().unwrap_or(0);
    let mut per_edge = Vec::new();
    for e in &mut edges {
        let s = edge_stats(&client, &e.id).await;
        per_edge.push(json!({
            "id": e.id,
            "authenticated": s["authenticated"],
            "connections": s["connections"],
            "rss_mb": round(sys::rss_bytes(e.pid).unwrap_or(0) as f64 / 1048576.0, 1),
            "alive": e.alive(),
        }));
    }
    let rss1 = sys::rss_sum(&edge_pids);
    // Every connection still served: one push per room reaches every connection.
    let subjects: Vec<String> = (0..rooms).map(|r| format!("room.test.{r}")).collect();
    let m = measure_fanout(env, &mut pool, &client, &subjects, 1.0, 1, 0, 1, ok, Duration::from_secs(30), &edge_pids, nats.pid).await?;
    pool.close().await;
    let all_alive = edges.iter_mut().all(|e| e.alive());
    for e in edges {
        e.stop().await;
    }
    nats.stop().await;
    let delivered = m["delivered"].as_u64().unwrap_or(0);
    Ok(json!({
        "scenario": "S6",
        "params": {"conns": a.conns, "edges": a.edges, "ws_conns": ws_conns, "rooms": rooms, "shared_ports": {"tcp": tcp_port, "ws": ws_port}},
        "result": {
            "connect": c,
            "connect_cpu": cpu_delta(s0, s1),
            "per_edge": per_edge,
            "edges_rss_mb": round(rss1 as f64 / 1048576.0, 1),
            "edge_bytes_per_conn": round(rss1.saturating_sub(rss0) as f64 / ok.max(1) as f64, 0),
            "push_check": {"expected": ok, "delivered": delivered, "latency": m["latency"], "drain_s": m["drain_s"]},
            "all_edges_alive": all_alive,
        },
        "targets": {"100k concurrent connections across >= 5 edges": verdict(ok >= 100_000 && a.edges >= 5 && delivered >= ok && all_alive)},
    }))
}

// ---------------------------------------------------------------------------------------------
// R1 resume throughput (issue 4)

pub struct R1 {
    pub messages: u64,
    pub clients: u64,
    pub edges: usize,
    pub concurrency: usize,
}

pub async fn r1(env: &Env, a: &R1) -> Result<Value> {
    let nats = NatsServer::start(&env.dir, false).await?;
    let client = async_nats::connect(nats.url()).await.map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client.clone());
    // The stream as goim-history provisions it (tests/tests/resume.rs), and history.info.
    js.create_stream(stream::Config {
        name: "GOIM_ROOMS".into(),
        subjects: vec!["room.>".into()],
        max_messages_per_subject: 1_000_000,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        republish: Some(stream::Republish { source: ">".into(), destination: "live.>".into(), headers_only: false }),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create stream: {e}"))?;
    let info = json!({
        "streams": {"rooms": {"stream": "GOIM_ROOMS", "subjects": ["room.>"]}, "users": null, "broadcast": null},
        "max_resume": 100000,
    });
    let mut sub = client.subscribe("history.info").await.map_err(|e| format!("subscribe: {e}"))?;
    client.flush().await.map_err(|e| format!("flush: {e}"))?;
    let responder_client = client.clone();
    let responder = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder_client.publish(reply, info.to_string().into()).await;
            }
        }
    });
    let edges = env.edges(&nats, a.edges, &env.edge_conf()?).await?;
    let edge_pids: Vec<u32> = edges.iter().map(|e| e.pid).collect();
    let subject = "room.test.0";
    let seen = js
        .publish(subject, "seen".into())
        .await
        .map_err(|e| format!("publish: {e}"))?
        .await
        .map_err(|e| format!("ack: {e}"))?
        .sequence;
    // K messages while everyone is away, acks pipelined (bounded window).
    let t_push = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..a.messages {
        let ack = js
            .publish(subject, format!("{{\"test\":1,\"i\":{i}}}").into())
            .await
            .map_err(|e| format!("publish: {e}"))?;
        acks.push_back(ack);
        if acks.len() >= 512 {
            acks.pop_front().unwrap().await.map_err(|e| format!("ack: {e}"))?;
        }
    }
    for ack in acks {
        ack.await.map_err(|e| format!("ack: {e}"))?;
    }
    let push_s = t_push.elapsed().as_secs_f64();
    let targets: Vec<_> = edges.iter().map(|e| e.tcp).collect();
    let mut pool = Pool::start(specs(a.clients, workers_for(a.clients, 2), |_, f, c| {
        let mut s = base_spec(Kind::GoimTcp, targets.clone(), f, c);
        s.resume_room = Some(seen);
        s.concurrency = a.concurrency;
        s.timeout_ms = 60_000;
        s
    }))
    .await?;
    let workers = pool.pids();
    let s0 = snap(&edge_pids, nats.pid, &workers);
    let c = connected_summary(&pool.all("connect", "connected", Duration::from_secs(900)).await?);
    let s1 = snap(&edge_pids, nats.pid, &workers);
    let mut stats = Vec::new();
    for e in &edges {
        let s = edge_stats(&client, &e.id).await;
        stats.push(json!({"id": e.id, "history_fetches": s["history_fetches"], "replayed": s["replayed"], "closed": s["closed"], "recovery_failed": s["recovery_failed"]}));
    }
    pool.close().await;
    responder.abort();
    for e in edges {
        e.stop().await;
    }
    nats.stop().await;
    let replayed = c["replayed"].as_u64().unwrap_or(0);
    let wall = c["resume_wall_s"].as_f64().unwrap_or(0.0);
    let edge_cpu = s1.edges - s0.edges;
    let complete = c["resumed_ok"].as_u64() == Some(a.clients) && replayed == a.clients * a.messages;
    require_connected("R1", &c, a.clients)?;
    Ok(json!({
        "scenario": "R1",
        "params": {"messages_missed": a.messages, "clients": a.clients, "edges": a.edges, "concurrency_per_worker": a.concurrency, "ring_size": 256},
        "result": {
            "push_s": round(push_s, 3),
            "connect": c,
            "cpu": cpu_delta(s0, s1),
            "replayed": replayed,
            "expected": a.clients * a.messages,
            "complete": complete,
            "replayed_per_s": round(if wall > 0.0 { replayed as f64 / wall } else { 0.0 }, 0),
            "replayed_per_edge_cpu_s": round(if edge_cpu > 0.0 { replayed as f64 / edge_cpu } else { 0.0 }, 0),
            "edge_stats": stats,
        },
        "targets": {"every client resumed everything it missed": verdict(complete)},
    }))
}
