//! The `main` every goim-nats binary shares: `--config <file>` on the command line, the config loaded
//! (exit 2 with the reason on stderr when it is unusable), logging set up from its `[log]` section, a
//! multi-thread runtime, and the service run on it (exit 1 with the reason when it cannot start).
//! Each binary keeps only what is its own: its name, how it starts, and its ready line.

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::LogConfig;

/// The `--config` path given on the command line (`None` when it was not given and `required` is
/// false); `--help` and `--version` are answered here. `name` and `about` are what `--help` shows.
pub fn config_path(name: &'static str, about: &'static str, required: bool) -> Option<PathBuf> {
    let help = if required {
        format!("TOML config file (see {name}.sample.toml)")
    } else {
        format!("TOML config file (see {name}.sample.toml); without it every default applies")
    };
    clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .short('c')
                .required(required)
                .value_parser(clap::value_parser!(PathBuf))
                .help(help),
        )
        .get_matches()
        .get_one::<PathBuf>("config")
        .cloned()
}

/// Run a service: with its loaded `config` (an `Err` exits 2), `settings(&config)` = its `[log]`
/// section and the runtime's worker threads (0 = one per CPU), then `serve(config)` until it returns.
/// `serve` prints the ready line, waits for its shutdown and returns `Err` only when it cannot start.
pub fn run<C, E, F, Fut>(name: &str, config: Result<C, E>, settings: impl FnOnce(&C) -> (&LogConfig, usize), serve: F) -> ExitCode
where
    E: Display,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let (log, worker_threads) = settings(&config);
    crate::init_logging(log);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    };
    // Tasks still running (a client that never finished its handshake, say) are dropped with the
    // runtime: their sockets close with the process. Nothing here waits on a client.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}
