//! `goim-bench`: the benchmark scenarios of BENCHMARKS.md. Each scenario starts its own nats-server and
//! goim-edge processes (release build next to this binary), opens goim connections from worker
//! processes (this binary re-executed as `goim-bench worker`, ≤ 15k sockets each, 127.0.x.y source
//! addresses), publishes through NATS and reads CPU and RSS of the edges from /proc.
//!
//! ```text
//! goim-bench s1 --conns 15000        # room fan-out: edge over TCP and WS vs nats-server's WebSocket
//! goim-bench smoke                   # every scenario, small (make bench)
//! ```

mod hist;
mod procs;
mod proto;
mod rawws;
mod scenarios;
mod sys;
mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use scenarios::Env;

#[derive(Parser, Debug)]
#[command(name = "goim-bench", version, about = "Benchmarks for goim-edge (BENCHMARKS.md)")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Append every scenario's result as one JSON line to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Edge config override `section.key=value` (value a TOML literal), repeatable; e.g. a coalescing
    /// window once the edge has one.
    #[arg(long = "edge-set", global = true)]
    edge_set: Vec<String>,
    /// Environment variable `KEY=VALUE` for the edge processes, repeatable (e.g. TOKIO_WORKER_THREADS=1).
    #[arg(long = "edge-env", global = true)]
    edge_env: Vec<String>,
    /// Keep the scratch dir (configs, edge and nats-server logs) and print its path.
    #[arg(long, global = true)]
    keep: bool,
    /// Record the edge processes with `perf record -e cpu-clock` during fan-out measurements and
    /// report the split of samples by binary (kernel vs goim-edge) and the top symbols.
    #[arg(long, global = true)]
    perf: bool,
    /// Print each result as pretty JSON too.
    #[arg(long, global = true)]
    verbose: bool,
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// S1 room fan-out (goim's shape): one room, 40 pushes/s of {"test":1}; edge over TCP and WS,
    /// and the same subscribers on nats-server's WebSocket listener (the peer), one after the other.
    S1 {
        #[arg(long, default_value_t = 15_000)]
        conns: u64,
        #[arg(long, default_value_t = 1)]
        edges: usize,
        #[arg(long, default_value_t = 40.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Phases, in order: tcp (goim over TCP), ws (goim over WebSocket), peer (NATS over WebSocket);
        /// also ws-raw and ws-deflate: goim over WebSocket with a raw client that counts wire bytes,
        /// without and with permessage-deflate.
        #[arg(long, default_value = "tcp,ws,peer")]
        phases: String,
        /// Longest wait for the last deliveries after the last publish.
        #[arg(long, default_value_t = 15.0)]
        drain_secs: f64,
        /// Publish in bursts of N back-to-back messages at the same average rate (N/rate s apart):
        /// what a coalescing window of N/rate seconds would give each connection's writer.
        #[arg(long, default_value_t = 1)]
        burst: u64,
        /// Push body: 0 = `{"test":1}` plus the publish time; N = a chat-like JSON message of about
        /// N bytes (phases ws-raw / ws-deflate compare permessage-deflate off and on).
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
    },
    /// S2 publish→client latency: 10k connections in one room, 20 pushes/s = 200k deliveries/s.
    S2 {
        #[arg(long, default_value_t = 10_000)]
        conns: u64,
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        #[arg(long, default_value = "tcp")]
        transport: String,
        #[arg(long, default_value_t = 1)]
        edges: usize,
    },
    /// S3 idle memory per authenticated connection (own user subject, a room): edge RSS delta / conns.
    S3 {
        #[arg(long, default_value_t = 15_000)]
        conns: u64,
        /// Phases, in order: tcp, ws, and over TLS (a self-signed certificate generated per run):
        /// tls (goim over TLS-TCP), wss (goim over WebSocket over TLS).
        #[arg(long, default_value = "tcp,ws")]
        transports: String,
        #[arg(long, default_value_t = 100)]
        room_size: u64,
        /// Anonymous connections (mid 0: no user subject), to isolate the cost of one subscription.
        #[arg(long)]
        anonymous: bool,
    },
    /// S4 idle CPU with heartbeats: edge CPU per connection-second over a window.
    S4 {
        #[arg(long, default_value_t = 15_000)]
        conns: u64,
        #[arg(long, default_value_t = 30.0)]
        heartbeat_secs: f64,
        #[arg(long, default_value_t = 60.0)]
        window_secs: f64,
        #[arg(long, default_value_t = 10.0)]
        baseline_secs: f64,
        #[arg(long, default_value = "tcp")]
        transport: String,
    },
    /// S5 connect storm: authenticated connects per second per edge core (trust-body and token).
    S5 {
        #[arg(long, default_value_t = 10_000)]
        conns: u64,
        #[arg(long, default_value = "trust-body,token")]
        modes: String,
        /// Connects in flight per worker process.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value = "tcp")]
        transport: String,
    },
    /// S6 scale: many connections across edges sharing one port (SO_REUSEPORT).
    S6 {
        #[arg(long, default_value_t = 100_000)]
        conns: u64,
        #[arg(long, default_value_t = 7)]
        edges: usize,
        #[arg(long, default_value_t = 1000)]
        room_size: u64,
        /// Every n-th worker opens WebSocket connections (0 = TCP only).
        #[arg(long, default_value_t = 4)]
        ws_every: usize,
    },
    /// R1 resume throughput (issue 4): K messages pushed while C clients are away, then all resume.
    R1 {
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        clients: u64,
        #[arg(long, default_value_t = 1)]
        edges: usize,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Every scenario with small sizes (make bench): fails only if a scenario cannot run.
    Smoke,
    /// Internal: a load-generating worker process, driven over stdin/stdout by the coordinator.
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Worker) {
        return worker::run();
    }
    let nofile = sys::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(coordinate(cli, nofile))
}

async fn coordinate(cli: Cli, nofile: u64) -> ExitCode {
    let dir = match tempfile::Builder::new().prefix("goim-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("goim-bench: tempdir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = Env { dir: dir.path().to_path_buf(), edge_set: cli.common.edge_set.clone(), edge_env: cli.common.edge_env.clone(), perf: cli.common.perf };
    let machine = sys::machine_description();
    eprintln!("goim-bench: machine {machine}, open files {nofile}, scratch {}", env.dir.display());
    let runs: Vec<(&str, Scenario)> = match cli.cmd {
        Cmd::Smoke => smoke(),
        Cmd::S1 { conns, edges, rate, secs, phases, drain_secs, burst, body_bytes } => {
            vec![("S1", Scenario::S1(scenarios::S1 { conns, body_bytes, burst, edges, rate, secs, phases: list(&phases), drain_secs }))]
        }
        Cmd::S2 { conns, rate, secs, transport, edges } => vec![("S2", Scenario::S2(scenarios::S2 { conns, rate, secs, transport, edges }))],
        Cmd::S3 { conns, transports, room_size, anonymous } => {
            vec![("S3", Scenario::S3(scenarios::S3 { conns, mids: !anonymous, transports: list(&transports), room_size }))]
        }
        Cmd::S4 { conns, heartbeat_secs, window_secs, baseline_secs, transport } => {
            vec![("S4", Scenario::S4(scenarios::S4 { conns, heartbeat_secs, window_secs, baseline_secs, transport }))]
        }
        Cmd::S5 { conns, modes, concurrency, transport } => {
            vec![("S5", Scenario::S5(scenarios::S5 { conns, modes: list(&modes), concurrency, transport }))]
        }
        Cmd::S6 { conns, edges, room_size, ws_every } => vec![("S6", Scenario::S6(scenarios::S6 { conns, edges, room_size, ws_every }))],
        Cmd::R1 { messages, clients, edges, concurrency } => vec![("R1", Scenario::R1(scenarios::R1 { messages, clients, edges, concurrency }))],
        Cmd::Worker => unreachable!(),
    };
    let mut failed = Vec::new();
    for (name, scenario) in runs {
        let started = std::time::Instant::now();
        eprintln!("goim-bench: {name} ...");
        let result = match &scenario {
            Scenario::S1(a) => scenarios::s1(&env, a).await,
            Scenario::S2(a) => scenarios::s2(&env, a).await,
            Scenario::S3(a) => scenarios::s3(&env, a).await,
            Scenario::S4(a) => scenarios::s4(&env, a).await,
            Scenario::S5(a) => scenarios::s5(&env, a).await,
            Scenario::S6(a) => scenarios::s6(&env, a).await,
            Scenario::R1(a) => scenarios::r1(&env, a).await,
        };
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(mut v) => {
                v["machine"] = machine.clone();
                v["edge_set"] = json!(cli.common.edge_set);
                v["edge_env"] = json!(cli.common.edge_env);
                v["run_s"] = json!((secs * 10.0).round() / 10.0);
                v["args"] = json!(std::env::args().collect::<Vec<_>>());
                print_summary(name, &v);
                if cli.common.verbose {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                if let Some(path) = &cli.common.json {
                    if let Err(e) = append_json(path, &v) {
                        eprintln!("goim-bench: cannot write {}: {e}", path.display());
                    }
                }
            }
            Err(e) => {
                println!("{name}: FAILED TO RUN ({secs:.1} s): {e}");
                failed.push(name);
            }
        }
    }
    if cli.common.keep {
        let kept = dir.keep();
        eprintln!("goim-bench: scratch dir kept at {}", kept.display());
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("goim-bench: scenarios that failed to run: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

enum Scenario {
    S1(scenarios::S1),
    S2(scenarios::S2),
    S3(scenarios::S3),
    S4(scenarios::S4),
    S5(scenarios::S5),
    S6(scenarios::S6),
    R1(scenarios::R1),
}

/// `make bench`: every scenario small enough to finish in a couple of minutes on the 2-core VM.
fn smoke() -> Vec<(&'static str, Scenario)> {
    vec![
        ("S1", Scenario::S1(scenarios::S1 { conns: 1000, body_bytes: 0, burst: 1, edges: 1, rate: 40.0, secs: 3.0, phases: list("tcp,ws,peer"), drain_secs: 5.0 })),
        ("S2", Scenario::S2(scenarios::S2 { conns: 1000, rate: 20.0, secs: 3.0, transport: "tcp".into(), edges: 1 })),
        ("S3", Scenario::S3(scenarios::S3 { conns: 2000, mids: true, transports: list("tcp,ws,tls,wss"), room_size: 100 })),
        ("S4", Scenario::S4(scenarios::S4 { conns: 1000, heartbeat_secs: 2.0, window_secs: 5.0, baseline_secs: 2.0, transport: "tcp".into() })),
        ("S5", Scenario::S5(scenarios::S5 { conns: 2000, modes: list("trust-body,token"), concurrency: 128, transport: "tcp".into() })),
        ("S6", Scenario::S6(scenarios::S6 { conns: 3000, edges: 5, room_size: 500, ws_every: 2 })),
        ("R1", Scenario::R1(scenarios::R1 { messages: 500, clients: 50, edges: 1, concurrency: 64 })),
    ]
}

fn append_json(path: &PathBuf, v: &Value) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{v}")
}

fn f(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.abs() >= 1e6 {
                format!("{:.2}M", x / 1e6)
            } else if x.abs() >= 1e4 {
                format!("{:.0}k", x / 1e3)
            } else if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.3}")
            }
        }
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn fanout_line(label: &str, p: &Value) -> String {
    format!(
        "  {label:6} conns {} ({}/s) | delivered {}/{} at {}/s | edge cpu {} s = {} per edge cpu-s ({} ns) | nats cpu {} s ({} ns/msg) | loadgen cpu {} s | others {} s | latency p50 {} p99 {} p99.9 {} ms | bytes/delivery packet {} wire {} | dropped {}",
        f(&p["connect"]["ok"]),
        f(&p["connect"]["connects_per_s"]),
        f(&p["delivered"]),
        f(&p["expected"]),
        f(&p["deliveries_per_s"]),
        f(&p["cpu"]["edge_cpu_s"]),
        f(&p["deliveries_per_edge_cpu_s"]),
        f(&p["edge_ns_per_delivery"]),
        f(&p["cpu"]["nats_cpu_s"]),
        f(&p["nats_ns_per_delivery"]),
        f(&p["cpu"]["loadgen_cpu_s"]),
        f(&p["cpu"]["others_cpu_s"]),
        f(&p["latency"]["p50_ms"]),
        f(&p["latency"]["p99_ms"]),
        f(&p["latency"]["p999_ms"]),
        f(&p["packet_bytes_per_delivery"]),
        f(&p["wire_bytes_per_delivery"]),
        f(&p["dropped_connections"]),
    )
}

fn print_summary(name: &str, v: &Value) {
    println!("{name} ({} s) params {} edge-set {} edge-env {}", f(&v["run_s"]), v["params"], v["edge_set"], v["edge_env"]);
    match name {
        "S1" => {
            if let Some(phases) = v["phases"].as_object() {
                for (k, p) in phases {
                    println!("{}", fanout_line(k, p));
                }
            }
            println!("  ratios {}", v["ratios"]);
            if v["deflate"].as_object().is_some_and(|d| !d.is_empty()) {
                println!("  permessage-deflate {}", v["deflate"]);
            }
            if let Some(phases) = v["phases"].as_object() {
                for (k, p) in phases {
                    if let Some(b) = p["profile"]["by_binary"].as_array() {
                        println!("  {k} perf by binary: {}", b.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "));
                        println!(
                            "  {k} edge syscalls {} | deliveries per sendto {} per context switch {}",
                            p["profile"]["counts"],
                            f(&p["profile"]["deliveries_per_sendto"]),
                            f(&p["profile"]["deliveries_per_context_switch"])
                        );
                    }
                }
            }
        }
        "S2" => println!("{}", fanout_line("tcp", &v["result"])),
        "S3" => {
            if let Some(phases) = v["phases"].as_object() {
                for (k, p) in phases {
                    println!(
                        "  {k:6} conns {} | edge rss {} -> {} MB = {} B/conn | nats-server {} B/conn",
                        f(&p["connect"]["ok"]),
                        f(&p["edge_rss_before_mb"]),
                        f(&p["edge_rss_after_mb"]),
                        f(&p["edge_bytes_per_conn"]),
                        f(&p["nats_bytes_per_conn"])
                    );
                }
            }
        }
        "S4" => {
            let r = &v["result"];
            println!(
                "  conns {} | window {} s: edge cpu {} s = {} us per conn-s ({} net of the {} cpu-s/s idle baseline) | heartbeat replies {}/{} | dropped {}",
                f(&r["connect"]["ok"]),
                f(&r["cpu"]["wall_s"]),
                f(&r["cpu"]["edge_cpu_s"]),
                f(&r["edge_cpu_us_per_conn_s"]),
                f(&r["edge_cpu_us_per_conn_s_net_of_baseline"]),
                f(&r["edge_idle_cpu_s_per_s_without_conns"]),
                f(&r["heartbeat_replies"]),
                f(&r["expected_heartbeats"]),
                f(&r["dropped_connections"])
            );
        }
        "S5" => {
            if let Some(phases) = v["phases"].as_object() {
                for (k, p) in phases {
                    println!(
                        "  {k:10} {} ok {} failed in {} s = {}/s wall | edge cpu {} s = {} connects per edge cpu-s | nats cpu {} s | loadgen {} s | errors {}",
                        f(&p["connect"]["ok"]),
                        f(&p["connect"]["failed"]),
                        f(&p["connect"]["wall_s"]),
                        f(&p["connect"]["connects_per_s"]),
                        f(&p["cpu"]["edge_cpu_s"]),
                        f(&p["connects_per_edge_cpu_s"]),
                        f(&p["cpu"]["nats_cpu_s"]),
                        f(&p["cpu"]["loadgen_cpu_s"]),
                        p["connect"]["errors"]
                    );
                }
            }
        }
        "S6" => {
            let r = &v["result"];
            println!(
                "  conns {} in {} s ({}/s) | edges rss {} MB = {} B/conn | push check {}/{} | all alive {}",
                f(&r["connect"]["ok"]),
                f(&r["connect"]["wall_s"]),
                f(&r["connect"]["connects_per_s"]),
                f(&r["edges_rss_mb"]),
                f(&r["edge_bytes_per_conn"]),
                f(&r["push_check"]["delivered"]),
                f(&r["push_check"]["expected"]),
                r["all_edges_alive"]
            );
            if let Some(edges) = r["per_edge"].as_array() {
                let per: Vec<String> = edges.iter().map(|e| format!("{}@{}MB", f(&e["authenticated"]), f(&e["rss_mb"]))).collect();
                println!("  per edge (conns@rss): {}", per.join(" "));
            }
        }
        "R1" => {
            let r = &v["result"];
            println!(
                "  {} clients resumed {} msgs each: replayed {}/{} in {} s = {}/s | edge cpu {} s = {} replayed per edge cpu-s | fetches {} | resume failures {} {}",
                f(&r["connect"]["resumed_ok"]),
                f(&v["params"]["messages_missed"]),
                f(&r["replayed"]),
                f(&r["expected"]),
                f(&r["connect"]["resume_wall_s"]),
                f(&r["replayed_per_s"]),
                f(&r["cpu"]["edge_cpu_s"]),
                f(&r["replayed_per_edge_cpu_s"]),
                r["edge_stats"].as_array().map(|a| a.iter().map(|e| f(&e["history_fetches"])).collect::<Vec<_>>().join(",")).unwrap_or_default(),
                f(&r["connect"]["resumed_fail"]),
                r["connect"]["resume_reasons"]
            );
        }
        _ => {}
    }
    if let Some(t) = v["targets"].as_object() {
        for (k, verdict) in t {
            println!("  target {k}: {}", verdict.as_str().unwrap_or(""));
        }
    }
}
