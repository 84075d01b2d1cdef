//! What every goim-nats binary (goim-edge, goim-authsvc, goim-history) shares, so each does it the
//! same way: reading its TOML config file, the `[log]` config section and logging set-up, binding a listener (SO_REUSEPORT), the
//! NATS connection that retries until the servers answer, waiting for SIGINT/SIGTERM, and `main`
//! itself ([`service`]).

pub mod service;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Why a config file could not be turned into a config (validation errors are each binary's own).
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
}

/// Parse TOML config text; `origin` names it in errors (a path, or `<text>`).
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|source| ConfigFileError::Parse { path: origin.to_string(), source })
}

/// Read and parse a TOML config file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigFileError::Read { path: path.display().to_string(), source })?;
    parse_toml(&text, &path.display().to_string())
}

/// Make a file path named in a config relative to the config file's folder `base` (empty stays empty).
pub fn resolve_relative(base: &Path, path: &mut PathBuf) {
    if !path.as_os_str().is_empty() && path.is_relative() {
        *path = base.join(&*path);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `[log]` section of every binary's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter (`info`, `goim_edge=debug`, …); the `RUST_LOG` environment variable wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// Structured logs to stderr, level from `RUST_LOG` or the config.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Bind a listener; with `reuse_port` several processes on one host can share the port.
pub fn bind(addr: &str, reuse_port: bool, backlog: u32) -> std::io::Result<TcpListener> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}")))?;
    let socket = if sa.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(sa)?;
    socket.listen(backlog)
}

/// Connect to `urls` with the options `options()` builds (called again for every attempt), retrying
/// with a logged reason and capped backoff until a server answers; afterwards async-nats reconnects
/// by itself, forever. A service that cannot reach NATS is useless, so it waits rather than starts.
pub async fn connect_nats(urls: &[String], options: impl Fn() -> async_nats::ConnectOptions) -> async_nats::Client {
    let mut backoff = Duration::from_millis(100);
    loop {
        match options().connect(urls.to_vec()).await {
            Ok(client) => return client,
            Err(e) => {
                warn!(error = %e, ?urls, retry_in = ?backoff, "cannot connect to NATS");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Options with a connection name and, when `user` is not empty, user/password credentials.
pub fn credentials(name: &str, user: &str, password: &str) -> async_nats::ConnectOptions {
    let opts = if user.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_user_and_password(user.to_string(), password.to_string())
    };
    opts.name(name)
}

/// Compare secrets (API keys) in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Wait for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
}

/// The Prometheus text exposition of a JSON object of counters (a service's stats struct, serialized):
/// every numeric leaf becomes the sample `<prefix>_<key path joined by _>`; other values are skipped.
/// Served at `/metrics`; its size follows the counters, never the load.
pub fn prometheus_text(prefix: &str, counters: &serde_json::Value) -> String {
    fn walk(out: &mut String, name: &str, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let key: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
                    walk(out, &format!("{name}_{key}"), v);
                }
            }
            serde_json::Value::Number(n) => {
                out.push_str(&format!("# TYPE {name} untyped\n{name} {n}\n"));
            }
            _ => {}
        }
    }
    let mut out = String::new();
    walk(&mut out, prefix, counters);
    out
}

/// What `/healthz` and `/metrics` report of a service's NATS connections.
///
/// `/healthz` is ready only while every connection is up: a load balancer or orchestrator then takes
/// a service whose NATS is gone out of rotation (it reconnects by itself and comes back ready).
pub fn nats_ready(clients: &[&async_nats::Client]) -> Result<(), String> {
    let down = clients.iter().filter(|c| !nats_up(c)).count();
    if down == 0 {
        Ok(())
    } else {
        Err(format!("NATS: {down} of {} connections down (reconnecting)", clients.len()))
    }
}

/// Whether `client` is connected right now (otherwise it is reconnecting).
pub fn nats_up(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// How often `client` re-established its connection after a loss (async-nats counts the first
/// connect too).
pub fn nats_reconnects(client: &async_nats::Client) -> u64 {
    client.statistics().connects.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(1)
}

/// The Prometheus text of a service's NATS connections: up, reconnects (connections established after
/// the first) and messages/bytes in and out, summed over `clients`. Constant size.
pub fn nats_prometheus(prefix: &str, clients: &[&async_nats::Client]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut up, mut reconnects, mut in_msgs, mut out_msgs, mut in_bytes, mut out_bytes) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for c in clients {
        up += u64::from(nats_up(c));
        reconnects += nats_reconnects(c);
        let s = c.statistics();
        in_msgs += s.in_messages.load(Relaxed);
        out_msgs += s.out_messages.load(Relaxed);
        in_bytes += s.in_bytes.load(Relaxed);
        out_bytes += s.out_bytes.load(Relaxed);
    }
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} {kind}\n{prefix}_{name} {value}\n"));
    };
    metric("nats_connections", "gauge", "Shared NATS connections of the service.", clients.len() as u64);
    metric("nats_connected", "gauge", "NATS connections up right now.", up);
    metric("nats_reconnects_total", "counter", "NATS connections re-established after a loss.", reconnects);
    metric("nats_in_messages_total", "counter", "Messages received from NATS.", in_msgs);
    metric("nats_out_messages_total", "counter", "Messages sent to NATS.", out_msgs);
    metric("nats_in_bytes_total", "counter", "Payload bytes received from NATS.", in_bytes);
    metric("nats_out_bytes_total", "counter", "Payload bytes sent to NATS.", out_bytes);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_text_names_every_numeric_leaf() {
        let v = serde_json::json!({"reads": 3, "refused": {"bad-request": 1}, "name": "x", "ok": true});
        let text = super::prometheus_text("goim_x", &v);
        assert!(text.contains("goim_x_reads 3\n"), "{text}");
        assert!(text.contains("goim_x_refused_bad_request 1\n"), "{text}");
        assert!(!text.contains("name") && !text.contains("ok"), "{text}");
    }

    use super::*;

    #[tokio::test]
    async fn bind_reports_bad_addresses_and_shares_ports() {
        assert!(bind("nope", false, 16).is_err());
        let a = bind("127.0.0.1:0", true, 16).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = bind(&format!("127.0.0.1:{port}"), true, 16);
        assert!(b.is_ok(), "SO_REUSEPORT lets a second listener share the port");
        let c = bind(&format!("127.0.0.1:{port}"), false, 16);
        assert!(c.is_err(), "without it the port is taken");
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn config_files_name_their_errors_and_resolve_paths() {
        let e = parse_toml::<LogConfig>("level = 5", "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("invalid config x.toml:"), "{e}");
        let e = read_toml::<LogConfig>(Path::new("/nonexistent/x.toml")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read /nonexistent/x.toml:"), "{e}");
        let mut rel = PathBuf::from("keys/k1.pem");
        resolve_relative(Path::new("/etc/goim"), &mut rel);
        assert_eq!(rel, PathBuf::from("/etc/goim/keys/k1.pem"));
        let mut abs = PathBuf::from("/k.pem");
        resolve_relative(Path::new("/etc/goim"), &mut abs);
        assert_eq!(abs, PathBuf::from("/k.pem"));
        let mut empty = PathBuf::new();
        resolve_relative(Path::new("/etc/goim"), &mut empty);
        assert_eq!(empty, PathBuf::new());
    }

    #[test]
    fn log_config_defaults() {
        let c = LogConfig::default();
        assert_eq!((c.level.as_str(), c.format), ("info", LogFormat::Text));
    }
}
