//! A nats-server with accounts and the auth callout on (free ports, a callout issuer key and xkey
//! generated per server), async-nats clients for its static users and for token holders, and in-process
//! callout replicas (`goim_authsvc::callout`) that can be stopped one by one.
//!
//! Accounts of [`CalloutNats`]: `AUTH` (user `authsvc`, where the callout requests arrive), `APP`
//! (static users `backend` and `admin`; token holders are placed here), `SYS` (user `sys`). Static
//! users' passwords are `pw-<user>`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use goim_authsvc::callout::{Callout, CalloutConfig, CalloutKeys, CalloutStats, AUTH_SUBJECT, DEFAULT_QUEUE_GROUP};
use goim_token::{KeySet, Verifier};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::authsvc::{KeyDir, AUDIENCE, ISSUER};
use crate::nats::{nats_server_bin, wait_ready};
use crate::process::Proc;

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of [`CalloutNats::start`].
#[derive(Debug, Clone)]
pub struct CalloutNatsOpts {
    /// Encrypt callout requests (`auth_callout.xkey`).
    pub xkey: bool,
    /// Also open a NATS WebSocket listener (no TLS).
    pub websocket: bool,
    /// `authorization.timeout`: the callout's deadline (and the client's CONNECT deadline), seconds.
    pub auth_timeout_secs: f64,
}

impl Default for CalloutNatsOpts {
    fn default() -> Self {
        CalloutNatsOpts { xkey: true, websocket: false, auth_timeout_secs: 2.0 }
    }
}

/// A nats-server child process with accounts and auth callout, killed on drop.
pub struct CalloutNats {
    proc: Proc,
    _dir: tempfile::TempDir,
    port: u16,
    monitor_port: u16,
    ws_port: Option<u16>,
    /// The callout keys the server trusts (`issuer`, `xkey`).
    pub keys: CalloutKeys,
    pub opts: CalloutNatsOpts,
}

/// The server configuration for `keys` (ports `-1`: the server picks free ones).
pub fn callout_server_config(keys: &CalloutKeys, opts: &CalloutNatsOpts) -> String {
    let ws = if opts.websocket { "websocket { listen: \"127.0.0.1:-1\", no_tls: true }\n" } else { "" };
    let xkey = if opts.xkey { format!("    xkey: {}\n", keys.xkey_public) } else { String::new() };
    format!(
        r#"listen: "127.0.0.1:-1"
http: "127.0.0.1:-1"
{ws}
accounts {{
  AUTH {{ users: [ {{ user: authsvc, password: pw-authsvc }} ] }}
  APP {{
    users: [
      {{ user: backend, password: pw-backend, permissions: {{
          publish: ["room.>", "user.>", "key.>", "broadcast", "auth.mint", "_INBOX.>"]
          subscribe: ["ingress.>", "_INBOX.>"] }} }}
      {{ user: admin, password: pw-admin }}
    ]
  }}
  SYS {{ users: [ {{ user: sys, password: pw-sys }} ] }}
}}
system_account: SYS
authorization {{
  timeout: {timeout}
  auth_callout {{
    issuer: {issuer}
    account: AUTH
    auth_users: [ authsvc, backend, admin, sys ]
{xkey}  }}
}}
"#,
        timeout = opts.auth_timeout_secs,
        issuer = keys.issuer_public,
    )
}

impl CalloutNats {
    pub async fn start(opts: CalloutNatsOpts) -> CalloutNats {
        let keys = CalloutKeys::generate();
        let conf = callout_server_config(&keys, &opts);
        Self::start_conf(&conf, keys, opts).await
    }

    /// Start nats-server with the configuration text `conf` (which must name `keys`).
    pub async fn start_conf(conf: &str, keys: CalloutKeys, opts: CalloutNatsOpts) -> CalloutNats {
        let dir = tempfile::Builder::new().prefix("goim-callout-nats-").tempdir().expect("tempdir");
        let path = dir.path().join("nats-server.conf");
        std::fs::write(&path, conf).expect("write nats-server.conf");
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(&path);
        let mut proc = Proc::spawn("nats-server(callout)", cmd).expect("spawn nats-server");
        let ports = match wait_ready(&mut proc, READY_TIMEOUT, false).await {
            Ok(ports) => ports,
            Err(e) => panic!("nats-server(callout) {e}"),
        };
        CalloutNats {
            proc,
            _dir: dir,
            port: ports.client.expect("client port"),
            monitor_port: ports.monitor.expect("monitor port"),
            ws_port: if opts.websocket { Some(ports.websocket.expect("websocket port")) } else { None },
            keys,
            opts,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    pub fn ws_port(&self) -> Option<u16> {
        self.ws_port
    }

    /// The callout configuration matching this server (target account `APP`).
    pub fn callout_config(&self) -> CalloutConfig {
        CalloutConfig {
            issuer_seed: self.keys.issuer_seed.clone(),
            xkey_seed: self.opts.xkey.then(|| self.keys.xkey_seed.clone()),
            account: "APP".into(),
        }
    }

    /// Connect as static user `user` (password `pw-<user>`); panics on failure.
    pub async fn connect_static(&self, user: &str) -> async_nats::Client {
        let n = CONN_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connect_static_named(user, &format!("static-{user}-{n}")).await
    }

    /// [`CalloutNats::connect_static`] with a connection name.
    pub async fn connect_static_named(&self, user: &str, name: &str) -> async_nats::Client {
        self.connect_static_named_pw(user, &format!("pw-{user}"), name).await
    }

    /// Connect as `user` with `password`, named `name`; panics on failure.
    pub async fn connect_static_named_pw(&self, user: &str, password: &str, name: &str) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .user_and_password(user.into(), password.into())
            .name(name)
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    /// The server's output so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.proc.log_lines()
    }

    /// Wait (bounded) until a server log line contains every one of `parts`; returns it.
    pub async fn wait_log(&self, parts: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.proc.log_lines().into_iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l;
            }
            if Instant::now() >= deadline {
                panic!("no nats-server log line with {parts:?} within {within:?}:\n{}", self.proc.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Token keys (kid `k1`) for the callout tests: a verifier as authsvc/edges have it, and minting.
pub struct TokenKeys {
    pub dir: KeyDir,
}

impl TokenKeys {
    pub fn new() -> TokenKeys {
        TokenKeys { dir: KeyDir::new(&["k1"]) }
    }

    pub fn verifier(&self) -> Verifier {
        let key = goim_token::VerifyingKey::load("k1", goim_token::Algorithm::EdDSA, &self.dir.public("k1"))
            .expect("load public key");
        Verifier::new(KeySet::new(vec![key]), ISSUER, AUDIENCE, 0)
    }

    pub fn mint(&self, grant: &goim_token::Grant) -> String {
        self.dir.mint("k1", grant).0
    }

    pub fn sign(&self, claims: goim_token::Claims) -> String {
        self.dir.sign("k1", claims)
    }
}

impl Default for TokenKeys {
    fn default() -> Self {
        Self::new()
    }
}

/// One in-process callout replica on its own connection (user `authsvc`), in the default queue group.
pub struct CalloutReplica {
    task: Option<JoinHandle<()>>,
    client: Option<async_nats::Client>,
    pub stats: Arc<CalloutStats>,
    /// Its connection name and the server's monitoring port: `stop` waits until the server has let
    /// the connection go, so no auth request is routed to a replica that no longer answers.
    name: String,
    monitor_port: u16,
}

impl CalloutReplica {
    /// Start serving and wait (bounded) until the server lists the replica's subscription.
    pub async fn start(nats: &CalloutNats, verifier: Verifier, stats: Arc<CalloutStats>) -> CalloutReplica {
        let name = format!("callout-replica-{}", REPLICA_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let client = nats.connect_static_named("authsvc", &name).await;
        let callout = Arc::new(Callout::new(nats.callout_config(), verifier).expect("callout config").with_stats(stats.clone()));
        let task = callout.spawn(client.clone(), DEFAULT_QUEUE_GROUP).await.expect("callout subscribe");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !subscribed(nats, &name, AUTH_SUBJECT).await {
            assert!(Instant::now() < deadline, "callout replica {name} did not subscribe to {AUTH_SUBJECT}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        CalloutReplica { task: Some(task), client: Some(client), stats, name, monitor_port: nats.monitor_port() }
    }

    /// Stop this replica: its task ends and its connection closes.
    ///
    /// The connection goes first (drained: its subscription is removed at the server) and the task,
    /// which still answers what reaches it meanwhile, only once the server no longer lists the
    /// connection: stopping the task first left a window in which the server could pick this replica
    /// for a connect nobody would answer.
    pub async fn stop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.drain().await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.connected().await {
                assert!(Instant::now() < deadline, "callout replica {} still connected 5 s after drain", self.name);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Whether the server still lists this replica's connection (`/connz`).
    async fn connected(&self) -> bool {
        let (status, body) = crate::nats::http_get(self.monitor_port, "/connz?limit=10000").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status != 200 || v["connections"].as_array().into_iter().flatten().any(|c| c["name"] == self.name.as_str())
    }
}

impl Drop for CalloutReplica {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

static REPLICA_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CONN_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Wait (bounded) until the server lists `subject` among the subscriptions of the connection named
/// `conn_name`: async-nats' `flush` only empties the client's buffer, it is no round trip, so a push
/// published right after `subscribe` + `flush` on another connection could be processed first.
pub async fn wait_subscribed(nats: &CalloutNats, conn_name: &str, subject: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !subscribed(nats, conn_name, subject).await {
        assert!(Instant::now() < deadline, "{conn_name} has no subscription on {subject:?} after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the connection named `conn_name` has a subscription on `subject` (`/connz?subs=1`).
pub async fn subscribed(nats: &CalloutNats, conn_name: &str, subject: &str) -> bool {
    let (status, body) = crate::nats::http_get(nats.monitor_port(), "/connz?subs=1&limit=10000").await;
    if status != 200 {
        return false;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["connections"].as_array().into_iter().flatten().any(|c| {
        c["name"] == conn_name
            && c["subscriptions_list"].as_array().into_iter().flatten().any(|s| s == subject)
    })
}

/// A token holder's connection and the events its client reported (server errors such as permission
/// violations, disconnects).
pub struct TokenClient {
    pub client: async_nats::Client,
    /// Its unique connection name (for [`wait_subscribed`]).
    pub name: String,
    pub events: mpsc::UnboundedReceiver<async_nats::Event>,
}

/// Options for [`connect_token`].
#[derive(Debug, Clone, Default)]
pub struct TokenConnect {
    /// Inbox prefix for requests (the callout grants `_INBOX.mid_<mid>.>`).
    pub inbox_prefix: Option<String>,
    /// Send the token as the password of user `token` instead of as auth token.
    pub as_password: bool,
}

/// Connect with `token`; Err is the connect error's text.
pub async fn connect_token(nats: &CalloutNats, token: &str, how: TokenConnect) -> Result<TokenClient, String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut opts = if how.as_password {
        async_nats::ConnectOptions::with_user_and_password("token".into(), token.into())
    } else {
        async_nats::ConnectOptions::with_token(token.into())
    };
    let name = format!("token-holder-{}", CONN_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    opts = opts
        .name(name.clone())
        .max_reconnects(Some(3))
        .reconnect_delay_callback(|attempts| if attempts <= 1 { Duration::ZERO } else { Duration::from_millis(100) })
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        });
    if let Some(p) = how.inbox_prefix {
        opts = opts.custom_inbox_prefix(p);
    }
    match opts.connect(nats.url()).await {
        Ok(client) => Ok(TokenClient { client, name, events: rx }),
        Err(e) => Err(format!("{e} ({:?})", e.kind())),
    }
}

impl TokenClient {
    /// Wait (bounded) for a server error event whose text contains `part` (case-insensitive).
    pub async fn expect_server_error(&mut self, part: &str, within: Duration) -> String {
        let part = part.to_lowercase();
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(async_nats::Event::ServerError(e))) => {
                    let text = e.to_string();
                    if text.to_lowercase().contains(&part) {
                        return text;
                    }
                    seen.push(text);
                }
                Ok(Some(other)) => seen.push(other.to_string()),
                Ok(None) | Err(_) => panic!("no server error containing {part:?} within {within:?}; events: {seen:?}"),
            }
        }
    }

    /// Wait (bounded) for an event matching `pred`; returns every event seen until then.
    pub async fn wait_event(&mut self, what: &str, within: Duration, pred: impl Fn(&async_nats::Event) -> bool) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    seen.push(e.to_string());
                    if pred(&e) {
                        return seen;
                    }
                }
                Ok(None) | Err(_) => panic!("no {what} event within {within:?}; events: {seen:?}"),
            }
        }
    }

    /// Server errors reported so far (without waiting).
    pub fn server_errors_now(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            if let async_nats::Event::ServerError(e) = e {
                out.push(e.to_string());
            }
        }
        out
    }
}

/// The committed dev configuration that uses the auth callout (`nats-conf/dev.conf`).
pub fn dev_auth_conf_paths() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["nats-conf/dev.conf"]
        .into_iter()
        .map(|name| root.join(name))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("auth_callout")))
        .collect()
}

/// The first `{ user: U, password: P }` of account `account` in a server config text.
pub fn account_user(conf: &str, account: &str) -> Option<(String, String)> {
    let start = conf.find(&format!("\n  {account} {{"))?;
    let block = &conf[start..];
    let field = |name: &str| -> Option<String> {
        let at = block.find(&format!("{name}:"))? + name.len() + 1;
        let v: String = block[at..].trim_start().chars().take_while(|c| !matches!(c, ',' | ' ' | '}' | '\n')).collect();
        Some(v.trim_matches('"').to_string())
    };
    Some((field("user")?, field("password")?))
}
