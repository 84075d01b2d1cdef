//! A goim-chatbot child process (examples/chatbot) for the chatbot and demo tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use crate::edge::toml_str;
use crate::nats::NatsServer;
use crate::process::{Proc, Stream};

/// The goim-chatbot binary: `$GOIM_CHATBOT_BIN`, else next to goim-edge.
pub fn chatbot_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GOIM_CHATBOT_BIN") {
        return PathBuf::from(p);
    }
    let bin = crate::edge::edge_bin().with_file_name("goim-chatbot");
    assert!(bin.is_file(), "goim-chatbot not found at {}: run `cargo build --workspace --bins` first", bin.display());
    bin
}

/// A running goim-chatbot, killed on drop.
pub struct Chatbot {
    proc: Proc,
    /// Its NATS connection name (`/connz` tells replicas apart by it).
    pub name: String,
    _dir: tempfile::TempDir,
}

impl Chatbot {
    /// Start a bot named `name` (its NATS connection name) against `nats` with `[bot]` keys
    /// `bot_toml` (e.g. `queue_group = "x"`), and wait for its ready line: from then on its
    /// subscription is registered at the server.
    pub async fn start(nats: &NatsServer, name: &str, bot_toml: &str) -> Chatbot {
        let dir = tempfile::Builder::new().prefix("goim-chatbot-").tempdir().expect("tempdir");
        let toml = format!(
            "[nats]\nurls = [{}]\nname = {}\n[bot]\n{bot_toml}\n[log]\nlevel = \"debug\"\n",
            toml_str(&nats.url()),
            toml_str(name)
        );
        let path = dir.path().join("goim-chatbot.toml");
        std::fs::write(&path, &toml).expect("write chatbot config");
        let mut cmd = Command::new(chatbot_bin());
        cmd.arg("--config").arg(&path).env("NO_COLOR", "1");
        let mut proc = Proc::spawn(name, cmd).expect("spawn goim-chatbot");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, proc.lines.recv()).await {
                Ok(Some(l)) if l.stream == Stream::Stdout && l.text.starts_with("goim-chatbot ready") => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("goim-chatbot did not become ready\nconfig:\n{toml}\noutput:\n{}", proc.log_tail(50)),
            }
        }
        Chatbot { proc, name: name.to_string(), _dir: dir }
    }

    /// Send SIGTERM and wait (≤ 5 s) for a clean exit; true when it exited by itself with success.
    pub fn stop(&mut self) -> bool {
        matches!(self.proc.terminate(Duration::from_secs(5)), Some(s) if s.success())
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }
}
