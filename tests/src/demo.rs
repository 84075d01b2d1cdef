//! goim-authsvc configured for the browser demo page (`http.demo_path`), for tests/tests/demo.rs. The
//! generic [`crate::AuthSvc`] writes its own `[http]` section; this one adds `demo_path` to it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use crate::authsvc::{authsvc_bin, KeyDir, API_KEY};
use crate::edge::toml_str;
use crate::nats::NatsServer;
use crate::process::{Proc, Stream};

/// A running goim-authsvc with the demo page at `demo_path` ("" = none), killed on drop.
pub struct DemoAuthSvc {
    proc: Proc,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl DemoAuthSvc {
    /// Start with signing key `k1` of `keys`, the test API key [`API_KEY`] and the logic HTTP API.
    pub async fn start(nats: &NatsServer, keys: &KeyDir, demo_path: &str) -> DemoAuthSvc {
        let dir = tempfile::Builder::new().prefix("goim-authsvc-demo-").tempdir().expect("tempdir");
        let toml = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nreuse_port = false\napi_keys = [{}]\ndemo_path = {}\n\
             [nats]\nurls = [{}]\n[tokens]\nsigning_key = \"k1\"\n[[tokens.keys]]\nid = \"k1\"\nfile = {}\n",
            toml_str(API_KEY),
            toml_str(demo_path),
            toml_str(&nats.url()),
            toml_str(&keys.private("k1").display().to_string()),
        );
        let path = dir.path().join("goim-authsvc.toml");
        std::fs::write(&path, &toml).expect("write authsvc config");
        let mut cmd = Command::new(authsvc_bin());
        cmd.arg("--config").arg(&path).env("NO_COLOR", "1");
        let mut proc = Proc::spawn("goim-authsvc", cmd).expect("spawn goim-authsvc");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = loop {
            match tokio::time::timeout_at(deadline, proc.lines.recv()).await {
                Ok(Some(l)) if l.stream == Stream::Stdout && l.text.contains("goim-authsvc ready") => break l.text,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("goim-authsvc did not become ready\nconfig:\n{toml}\noutput:\n{}", proc.log_tail(100)),
            }
        };
        let http = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no http address in {ready:?}"));
        DemoAuthSvc { proc, http, _dir: dir }
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }
}
