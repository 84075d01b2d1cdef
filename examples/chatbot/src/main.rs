//! `goim-chatbot --config <file>`: load the TOML config, set up logging, answer ingress messages until
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use goim_chatbot::{Bot, Config};

fn main() -> ExitCode {
    let about = "goim-nats example chatbot: answers op-4 messages into their room";
    let path = goim_common::service::config_path("goim-chatbot", about, true);
    let config = Config::load(&path.unwrap_or_default());
    goim_common::service::run("goim-chatbot", config, |c| (&c.log, 2), |config| async move {
        let client = goim_chatbot::connect(&config.nats).await;
        let bot = Bot::subscribe(client, config.bot.clone()).await.map_err(|e| e.to_string())?;
        // One machine-readable line on stdout; the test harness and `make run` wait for it.
        println!("goim-chatbot ready subject={} queue={}", config.bot.subject, config.bot.queue_group);
        tracing::info!(subject = %config.bot.subject, queue = %config.bot.queue_group, op = config.bot.op, "chatbot ready");
        bot.run(goim_common::shutdown_signal()).await;
        Ok(())
    })
}
