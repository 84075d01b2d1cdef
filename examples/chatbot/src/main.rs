//! `goim-chatbot --config <file>`: load the TOML config, set up logging, answer ingress messages until
//! SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use goim_chatbot::{Bot, Config};

#[derive(Parser, Debug)]
#[command(name = "goim-chatbot", version, about = "goim-nats example chatbot: answers op-4 messages into their room")]
struct Args {
    /// TOML config file (see goim-chatbot.sample.toml).
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("goim-chatbot: {e}");
            return ExitCode::from(2);
        }
    };
    goim_common::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("goim-chatbot: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let client = goim_chatbot::connect(&config.nats).await;
        let bot = match Bot::subscribe(client, config.bot.clone()).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("goim-chatbot: {e}");
                return ExitCode::FAILURE;
            }
        };
        // One machine-readable line on stdout; the test harness and `make run` wait for it.
        println!("goim-chatbot ready subject={} queue={}", config.bot.subject, config.bot.queue_group);
        tracing::info!(subject = %config.bot.subject, queue = %config.bot.queue_group, op = config.bot.op, "chatbot ready");
        bot.run(goim_common::shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}
