//! `goim-edge --config <file>`: load the TOML config, set up logging, run until SIGINT/SIGTERM, then
//! drain (bounded by `edge.drain_ms`) and log the final counters.

use std::process::ExitCode;

use goim_edge::config::Config;

fn main() -> ExitCode {
    let about = "goim-compatible TCP/WebSocket edge served from NATS";
    let config = match goim_common::service::config_path("goim-edge", about, false) {
        Some(path) => Config::load(&path),
        None => Ok(Config::default()),
    };
    goim_common::service::run("goim-edge", config, |c| (&c.log, c.edge.worker_threads), |config| async move {
        let edge = goim_edge::server::start(config).await.map_err(|e| e.to_string())?;
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
        Ok(())
    })
}
