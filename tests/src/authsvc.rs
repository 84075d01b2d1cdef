//! A goim-authsvc child process for the auth tests, its key files, and the small HTTP pieces those
//! tests need: a request helper (mint over HTTP) and a scripted webhook server (delegated connects).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use goim_token::{Claims, Grant, Minter, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

use crate::nats::NatsServer;
use crate::process::{Proc, Stream};

/// Token issuer and audience used by every auth test (authsvc's defaults).
pub const ISSUER: &str = "goim-authsvc";
pub const AUDIENCE: &str = "goim";
/// The backend API key of the test authsvc.
pub const API_KEY: &str = "test-api-key-0123456789";

/// The goim-authsvc binary next to goim-edge.
pub fn authsvc_bin() -> PathBuf {
    crate::edge::edge_bin().with_file_name("goim-authsvc")
}

/// A folder of Ed25519 key files (`<kid>.pem`, `<kid>.pub.pem`) shared by authsvc, edges and the test.
pub struct KeyDir {
    dir: tempfile::TempDir,
}

impl KeyDir {
    pub fn new(kids: &[&str]) -> KeyDir {
        let dir = tempfile::Builder::new().prefix("goim-keys-").tempdir().expect("tempdir");
        for kid in kids {
            SigningKey::generate_ed25519_files(kid, dir.path()).expect("generate key");
        }
        KeyDir { dir }
    }

    pub fn private(&self, kid: &str) -> PathBuf {
        self.dir.path().join(format!("{kid}.pem"))
    }

    pub fn public(&self, kid: &str) -> PathBuf {
        self.dir.path().join(format!("{kid}.pub.pem"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A minter with key `kid`, as authsvc would sign; tests use it for tokens authsvc would never mint
    /// (expired, other issuer, …).
    pub fn minter(&self, kid: &str) -> Minter {
        let key = SigningKey::load(kid, goim_token::Algorithm::EdDSA, &self.private(kid)).expect("load key");
        Minter { key, issuer: ISSUER.into(), audience: AUDIENCE.into(), default_ttl_secs: 600, max_ttl_secs: 86_400 }
    }

    /// Sign exactly `claims` with `kid`.
    pub fn sign(&self, kid: &str, claims: Claims) -> String {
        self.minter(kid).sign(claims).expect("sign").0
    }

    /// A token signed with the key `signed_with` but naming `claims_kid` in its header: a forged
    /// signature for a key id the verifier knows.
    pub fn forge(&self, claims_kid: &str, signed_with: &str, claims: Claims) -> String {
        let mut forger = self.minter(signed_with);
        forger.key.kid = claims_kid.into();
        forger.sign(claims).expect("sign").0
    }

    /// Mint a token for `grant` with `kid`.
    pub fn mint(&self, kid: &str, grant: &Grant) -> (String, Claims) {
        self.minter(kid).mint(grant).expect("mint")
    }
}

/// Valid claims for `mid` (issuer and audience of the test keys, room `live://1`, accepts 1000),
/// expiring `exp_in` seconds from now (negative: already expired), issued 100 s ago.
pub fn claims_for(mid: i64, exp_in: i64) -> Claims {
    let now = goim_token::now_secs() as i64;
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: mid.to_string(),
        mid,
        key: None,
        rooms: vec!["live://1".into()],
        room_prefixes: vec![],
        accepts: vec![1000],
        publish: Default::default(),
        iat: (now - 100) as u64,
        nbf: (now - 100) as u64,
        exp: (now + exp_in) as u64,
        jti: "test".into(),
    }
}

/// How to run one authsvc.
#[derive(Debug, Clone)]
pub struct AuthSvcOpts {
    pub signing_key: String,
    /// Key ids to list in `[[tokens.keys]]` (the signing key first).
    pub keys: Vec<String>,
    /// `[connect]` section body, e.g. `policy = "webhook"\nwebhook_url = "…"`.
    pub connect: String,
    /// `mode = "dev"` (needed for allow-all).
    pub dev: bool,
    /// `http.demo_path` (the browser demo page, tests/tests/demo.rs); "" = none.
    pub demo_path: String,
    pub extra_toml: String,
}

impl AuthSvcOpts {
    pub fn new(signing_key: &str) -> AuthSvcOpts {
        AuthSvcOpts {
            signing_key: signing_key.into(),
            keys: vec![signing_key.into()],
            connect: String::new(),
            dev: false,
            demo_path: String::new(),
            extra_toml: String::new(),
        }
    }

    pub fn also_accept(mut self, kid: &str) -> Self {
        self.keys.push(kid.into());
        self
    }

    pub fn connect(mut self, section: &str) -> Self {
        self.connect = section.into();
        self
    }

    pub fn dev(mut self) -> Self {
        self.dev = true;
        self
    }

    /// Serve the browser demo page at `path` (`http.demo_path`).
    pub fn demo_path(mut self, path: &str) -> Self {
        self.demo_path = path.into();
        self
    }
}

/// A running goim-authsvc, killed on drop.
pub struct AuthSvc {
    proc: Proc,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl AuthSvc {
    pub async fn start(nats: &NatsServer, keys: &KeyDir, opts: AuthSvcOpts) -> AuthSvc {
        let dir = tempfile::Builder::new().prefix("goim-authsvc-").tempdir().expect("tempdir");
        let mut toml = String::new();
        if opts.dev {
            toml.push_str("mode = \"dev\"\n");
        }
        toml.push_str(&format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nreuse_port = false\napi_keys = [\"{API_KEY}\"]\ndemo_path = {}\n\
             [nats]\nurls = [\"{}\"]\n[tokens]\nsigning_key = \"{}\"\n",
            crate::edge::toml_str(&opts.demo_path),
            nats.url(),
            opts.signing_key
        ));
        for kid in &opts.keys {
            let file = if *kid == opts.signing_key { keys.private(kid) } else { keys.public(kid) };
            toml.push_str(&format!("[[tokens.keys]]\nid = \"{kid}\"\nfile = {:?}\n", file.display().to_string()));
        }
        if !opts.connect.is_empty() {
            toml.push_str(&format!("[connect]\n{}\n", opts.connect));
        }
        toml.push_str(&opts.extra_toml);
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
                Ok(None) | Err(_) => {
                    panic!("goim-authsvc did not become ready\nconfig:\n{toml}\noutput:\n{}", proc.log_tail(100))
                }
            }
        };
        let http = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no http address in {ready:?}"));
        AuthSvc { proc, http, _dir: dir }
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }

    /// `POST /auth/token` with the test API key.
    pub async fn mint_http(&self, grant: &serde_json::Value) -> (u16, serde_json::Value) {
        let (status, body) = http_request(
            self.http,
            "POST",
            "/auth/token",
            &[("Authorization", &format!("Bearer {API_KEY}")), ("Content-Type", "application/json")],
            grant.to_string().as_bytes(),
        )
        .await;
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)))
    }

    /// Mint over HTTP and return the token, asserting success.
    pub async fn token(&self, grant: serde_json::Value) -> String {
        let (status, body) = self.mint_http(&grant).await;
        assert_eq!(status, 200, "mint failed: {body}");
        body["token"].as_str().expect("token in mint answer").to_string()
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns (status, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect HTTP");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("send request");
        s.write_all(body).await.expect("send body");
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp).await;
        resp
    };
    let resp = timeout(Duration::from_secs(10), fut).await.expect("HTTP request timed out");
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// A scripted webhook: every POST is answered by `answer(request body)` → (status, body, delay).
pub struct Webhook {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type WebhookAnswer = Arc<dyn Fn(&serde_json::Value) -> (u16, String, Duration) + Send + Sync>;

impl Webhook {
    pub async fn start(answer: WebhookAnswer) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind webhook");
        let url = format!("http://{}/connect", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read the head, then Content-Length bytes of body.
                    let body = loop {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            if body.len() >= len {
                                break body[..len].to_string();
                            }
                        }
                    };
                    let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let (status, resp, delay) = answer(&req);
                    tokio::time::sleep(delay).await;
                    let out = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resp}",
                        resp.len()
                    );
                    let _ = s.write_all(out.as_bytes()).await;
                });
            }
        });
        Webhook { url, task }
    }
}
