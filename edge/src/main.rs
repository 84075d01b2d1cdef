//! `goim-edge --config <file>`: load the TOML config, set up logging, run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use goim_edge::config::Config;

#[derive(Parser, Debug)]
#[command(name = "goim-edge", version, about = "goim-compatible TCP/WebSocket edge served from NATS")]
struct Args {
    /// TOML config file (see goim-edge.sample.toml); without it every default applies.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("goim-edge: {e}");
            return ExitCode::from(2);
        }
    };
    goim_common::init_logging(&config.log);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.edge.worker_threads > 0 {
        builder.worker_threads(config.edge.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("goim-edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let edge = match goim_edge::server::start(config).await {
            Ok(edge) => edge,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let show = |a: Option<std::net::SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
        // One machine-readable line on stdout; the test harness and `make run` wait for it.
        println!(
            "goim-edge ready id={} tcp={} ws={} http={} wss={} tls={}",
            edge.ctx.hub.edge_id(),
            show(edge.tcp_addr),
            show(edge.ws_addr),
            show(edge.http_addr),
            show(edge.wss_addr),
            show(edge.tls_addr)
        );
        tracing::info!(id = edge.ctx.hub.edge_id(), tcp = %show(edge.tcp_addr), ws = %show(edge.ws_addr), wss = %show(edge.wss_addr), tls = %show(edge.tls_addr), path = %edge.ctx.config.listen.ws_path, "edge ready");
        goim_common::shutdown_signal().await;
        let ctx = edge.ctx.clone();
        // The drain is bounded by edge.drain_ms; a second signal cuts it short.
        tokio::select! {
            () = edge.shutdown() => {}
            () = goim_common::shutdown_signal() => tracing::warn!("second signal: exiting without finishing the drain"),
        }
        let snapshot = ctx.stats.snapshot(ctx.hub.edge_id());
        tracing::info!(stats = %serde_json::to_string(&snapshot).unwrap_or_default(), "final counters");
        ExitCode::SUCCESS
    });
    // Connection tasks still running (unauthenticated ones) are dropped with the runtime: their
    // sockets close with the process. Nothing here waits on a client.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}
