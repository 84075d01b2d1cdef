//! `goim-history --config <file>`: load the TOML config, set up logging, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use goim_history::config::Config;

fn main() -> ExitCode {
    let path = goim_common::service::config_path("goim-history", "goim-nats history service (JetStream)", true);
    let config = Config::load(&path.unwrap_or_default());
    goim_common::service::run("goim-history", config, |c| (&c.log, 0), |config| async move {
        let running = goim_history::start(config).await.map_err(|e| e.to_string())?;
        let http = running.http_addr.map_or("-".to_string(), |a| a.to_string());
        // One machine-readable line on stdout; the test harness and `make run` wait for it.
        println!("goim-history ready http={http}");
        tracing::info!(%http, "history ready");
        goim_common::shutdown_signal().await;
        Ok(())
    })
}
