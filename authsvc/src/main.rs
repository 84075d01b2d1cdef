//! `goim-authsvc --config <file>`: load the TOML config, set up logging, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use goim_authsvc::config::Config;

fn main() -> ExitCode {
    let path = goim_common::service::config_path("goim-authsvc", "goim-nats auth service and control plane", true);
    let config = Config::load(&path.unwrap_or_default());
    goim_common::service::run("goim-authsvc", config, |c| (&c.log, 0), |config| async move {
        let running = goim_authsvc::start(config).await.map_err(|e| e.to_string())?;
        let http = running.http_addr.map_or("-".to_string(), |a| a.to_string());
        // One machine-readable line on stdout; the test harness and `make run` wait for it.
        println!("goim-authsvc ready http={http} kid={}", running.state.keys.minter.key.kid);
        tracing::info!(%http, "authsvc ready");
        goim_common::shutdown_signal().await;
        Ok(())
    })
}
