//! `goim-authsvc --config <file>`: load the TOML config, set up logging, run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use goim_authsvc::config::Config;

#[derive(Parser, Debug)]
#[command(name = "goim-authsvc", version, about = "goim-nats auth service and control plane")]
struct Args {
    /// TOML config file (see goim-authsvc.sample.toml).
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("goim-authsvc: {e}");
            return ExitCode::from(2);
        }
    };
    goim_common::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("goim-authsvc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match goim_authsvc::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("goim-authsvc: {e}");
                return ExitCode::FAILURE;
            }
        };
        let http = running.http_addr.map_or("-".to_string(), |a| a.to_string());
        // One machine-readable line on stdout; the test harness and `make run` wait for it.
        println!("goim-authsvc ready http={http} kid={}", running.state.keys.minter.key.kid);
        tracing::info!(%http, "authsvc ready");
        goim_common::shutdown_signal().await;
        ExitCode::SUCCESS
    })
}
