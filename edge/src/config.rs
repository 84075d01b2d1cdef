//! The edge's TOML configuration: every key, its default and its meaning. `goim-edge.sample.toml` at
//! the crate root lists the same keys with the same defaults; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub edge: EdgeConfig,
    pub listen: ListenConfig,
    pub session: SessionConfig,
    pub auth: AuthConfig,
    pub nats: NatsConfig,
    pub push: PushConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub presence: PresenceConfig,
    pub advertise: AdvertiseConfig,
    pub history: HistoryConfig,
    pub tls: TlsConfig,
}

/// The certificate of the TLS listeners (`listen.wss`, `listen.tls`); both paths empty (the
/// default) = TLS off. PEM files, read once at start; relative paths are relative to the config
/// file's folder.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (goim: `certFile`).
    pub cert_path: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (goim: `privateFile`).
    pub key_path: PathBuf,
}

impl TlsConfig {
    /// Whether a certificate is configured (the TLS listeners are on).
    pub fn enabled(&self) -> bool {
        !self.cert_path.as_os_str().is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Ask goim-history (`history.info`) at start which subjects are stored, and follow those through
    /// their sequenced `live.` copies (sequences in pushes, resume, gap filling). Without a history
    /// service every subject stays on the core path.
    pub enabled: bool,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// This edge's id in kick notices and logs; empty = `<hostname>-<pid>-<random>`.
    pub id: String,
    /// On SIGTERM/SIGINT: the listeners close at once, and the connected clients are let go evenly
    /// over this many milliseconds (a WebSocket close 1001 "going away" or a TCP close), so they do
    /// not all reconnect elsewhere at the same moment; the process exits at most
    /// [`DRAIN_MARGIN`] later, whether or not the clients cooperate.
    pub drain_ms: u64,
    /// Runtime worker threads; 0 = tokio's default (one per CPU, or `TOKIO_WORKER_THREADS`). One
    /// thread per edge process (and several edges on one port with `listen.reuse_port`) costs less
    /// CPU with mostly idle connections: no wake-ups of a second parked thread (BENCHMARKS.md, S4).
    pub worker_threads: usize,
}

/// What the exit may take beyond `edge.drain_ms`: the last closes reaching their sockets.
pub const DRAIN_MARGIN: Duration = Duration::from_millis(500);

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig { id: String::new(), drain_ms: 5_000, worker_threads: 0 }
    }
}

impl EdgeConfig {
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// goim TCP listener; empty string disables it.
    pub tcp: String,
    /// goim WebSocket listener; empty string disables it.
    pub ws: String,
    /// goim WebSocket over TLS (WSS; goim: `tlsBind`, port 3103), with the `[tls]` certificate;
    /// used only when `tls.cert_path` is set (goim's `tlsOpen`), so that the default costs nothing
    /// without a certificate. Empty string disables it.
    pub wss: String,
    /// goim TCP over TLS (no goim equivalent), e.g. "0.0.0.0:3104"; empty string (the default)
    /// disables it. Needs `[tls]`.
    pub tls: String,
    /// The only path the WebSocket upgrade accepts (goim: exactly `/sub`).
    pub ws_path: String,
    /// Agree to permessage-deflate (RFC 7692) with WebSocket clients that offer it (browsers do).
    /// On by default: a push is compressed once per hub batch for all such clients, not per
    /// connection, and no connection holds compression state while idle (`crate::transport::ws`).
    pub ws_permessage_deflate: bool,
    /// Set SO_REUSEPORT so several edge processes can share one port.
    pub reuse_port: bool,
    /// Listen backlog.
    pub backlog: u32,
    /// HTTP transports (SSE downstream, POST upstream; `crate::transport::http`), e.g.
    /// "0.0.0.0:3104"; empty string (the default) disables them.
    pub http: String,
    /// Origins allowed to call the HTTP transports from a browser (CORS); `"*"` = any; empty = none.
    pub http_cors_origins: Vec<String>,
    /// How long an HTTP session lives with no event stream open and no poll in flight (then it is
    /// closed as `client_gone`); also how long a closed one answers 410 with its reason.
    pub http_session_grace_ms: u64,
    /// The longest a long-poll waits for events (and its default `timeout_ms`).
    pub http_poll_max_ms: u64,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            tcp: "0.0.0.0:3101".into(),
            ws: "0.0.0.0:3102".into(),
            wss: "0.0.0.0:3103".into(),
            tls: String::new(),
            ws_path: "/sub".into(),
            ws_permessage_deflate: true,
            reuse_port: true,
            backlog: 4096,
            http: String::new(),
            http_cors_origins: Vec::new(),
            http_session_grace_ms: 30_000,
            http_poll_max_ms: 25_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// From accept (including the TLS handshake and the WebSocket upgrade) to a successful op-7 auth.
    pub handshake_timeout_ms: u64,
    /// Closed when no op-2 heartbeat arrives for this long (goim: 4 min × 2).
    pub idle_timeout_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { handshake_timeout_ms: 8_000, idle_timeout_ms: 480_000 }
    }
}

impl SessionConfig {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// How the op-7 auth body is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// The secure default: the auth body carries a `token` minted by authsvc, verified locally
    /// (signature, issuer, audience, expiry); its claims bound mid, key, rooms, accepts and op 4.
    #[default]
    Token,
    /// For unmodified goim clients: the raw auth body goes to authsvc (`auth.connect`), whose policy
    /// answers with a token for the connection (goim's comet → logic Connect).
    Delegated,
    /// goim's behaviour: the body is trusted as it comes; no verification at all. Development and
    /// migration only.
    TrustBody,
}

/// A token verification key the edge loads from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    pub id: String,
    #[serde(default)]
    pub alg: goim_token::Algorithm,
    /// EdDSA: PKCS#8 PEM public (or private) key; HS256: the shared secret file.
    pub file: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Required `iss` of tokens.
    pub issuer: String,
    /// Required `aud` of tokens.
    pub audience: String,
    /// Clock skew tolerated on exp/nbf (seconds).
    pub leeway_secs: u64,
    /// Verification keys from files (the current and, during rotation, previous ones).
    pub keys: Vec<TokenKeyConfig>,
    /// Also accept the keys authsvc publishes on NATS (`auth.keys`), replaced on every announcement.
    pub keys_from_nats: bool,
    /// Delegated mode: how long authsvc may take to decide a connect.
    pub delegate_timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Token,
            issuer: "goim-authsvc".into(),
            audience: "goim".into(),
            leeway_secs: 5,
            keys: Vec::new(),
            keys_from_nats: true,
            delegate_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS servers; the client reconnects among them forever.
    pub urls: Vec<String>,
    /// Shared NATS connections per edge; subjects are spread over them by hash.
    pub connections: usize,
    /// Connection name shown in the server's monitoring endpoint.
    pub name: String,
    /// Credentials of the edge role (nats-conf/dev.conf: user "edge"); empty = none.
    pub user: String,
    pub password: String,
    /// Messages one subscription may queue in the client before the server's messages are dropped
    /// (async-nats `subscription_capacity`).
    pub subscription_capacity: usize,
    /// How user and key subjects (one or two per connection) are followed: `Wildcard` (one `user.*`
    /// and one `key.*` subscription per edge, dispatched by the hub) or `Exact` (one subscription per
    /// distinct subject).
    pub per_connection_subjects: PerConnectionSubjects,
}

/// See [`NatsConfig::per_connection_subjects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PerConnectionSubjects {
    /// One wildcard subscription per class per edge: no NATS subscription per connection (an async-nats
    /// subscription costs ≈ 5 KB), at the price of every edge receiving every user and key push.
    Wildcard,
    /// One subscription per distinct user/key subject: an edge receives only its own clients' pushes.
    Exact,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            connections: 2,
            name: "goim-edge".into(),
            user: String::new(),
            password: String::new(),
            subscription_capacity: 65_536,
            per_connection_subjects: PerConnectionSubjects::Wildcard,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Business op of a push that carries no `Goim-Op` header.
    pub default_op: i32,
    /// Coalescing window (ms) of each subject's fan-out: messages arriving within it go to every member
    /// as one batch (one queue entry, one write). 0 = no window: a message goes out at once, batched
    /// only with messages already waiting (adaptive coalescing).
    pub coalesce_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig { default_op: 1000, coalesce_ms: 0 }
    }
}

impl PushConfig {
    pub fn coalesce_window(&self) -> Option<Duration> {
        (self.coalesce_ms > 0).then(|| Duration::from_millis(self.coalesce_ms))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Bytes queued for one connection before it is disconnected as too slow.
    pub max_outbound_bytes: usize,
    /// Longest room id accepted in auth or change room (bytes, before escaping).
    pub max_room_id_len: usize,
    /// Longest connection key accepted in auth (bytes, before escaping).
    pub max_key_len: usize,
    /// Most ops one connection's accept set may hold.
    pub max_accepts: usize,
    /// Largest WebSocket message a client may send (goim parses only its first packet).
    pub max_ws_message_bytes: usize,
    /// Open connections (authenticated or not) this edge holds; a connect beyond it is closed at
    /// once (`closed.max_connections`). 0 = unlimited (the open-file limit still applies).
    pub max_connections: usize,
    /// New connections one client IP (an IPv6 /64) may open per second, with a burst of as many:
    /// a token bucket per address, in a bounded table. Beyond it the connect is closed at once
    /// (`closed.connect_rate`). 0 = unlimited (the default: clients behind one NAT or proxy share an
    /// address).
    pub connects_per_ip_per_sec: u32,
    /// Packets (WebSocket messages, pings included) one connection may send per second (a fixed
    /// one-second window); beyond it the connection is closed (`closed.packet_rate`). 0 = unlimited.
    pub max_packets_per_sec: u32,
    /// Connections that are not yet authenticated, TLS handshakes and WebSocket upgrades included, at
    /// the same time; a connect beyond it is closed at once (`closed.max_handshakes`). 0 = unlimited.
    pub max_handshakes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_outbound_bytes: 256 * 1024,
            max_room_id_len: 256,
            max_key_len: 256,
            max_accepts: 1024,
            max_ws_message_bytes: 16 * 1024,
            max_connections: 0,
            connects_per_ip_per_sec: 0,
            max_packets_per_sec: 200,
            max_handshakes: 10_000,
        }
    }
}

/// Presence and discovery (`crate::presence`): what the edge reports in the KV bucket, how often, and
/// the bucket settings used if this edge is the first to create it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Report presence, watch the other edges' reports and register the `$SRV` service.
    pub enabled: bool,
    /// JetStream KV bucket of the reports (one key `edge.<edge id>` per edge).
    pub bucket: String,
    /// How often the edge re-puts its report (the keep-alive and the freshness of counts).
    pub report_interval_ms: u64,
    /// Bucket `max_age` when this edge creates it: a report not renewed for this long is removed by
    /// the server with a purge marker. nats-server needs >= 1 s (delete marker TTL minimum).
    pub max_age_ms: u64,
    /// Bucket replicas when this edge creates it.
    pub replicas: usize,
    /// Most rooms one report lists (the most populated first); keeps a report below `max_payload`.
    pub max_rooms: usize,
    /// Register as the NATS service `goim-edge` (`$SRV.PING|INFO|STATS`, `nats micro ls`).
    pub service: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            enabled: true,
            bucket: "goim_presence".into(),
            report_interval_ms: 5_000,
            max_age_ms: 20_000,
            replicas: 1,
            max_rooms: 10_000,
            service: true,
        }
    }
}

/// What the edge advertises to clients through `/goim/nodes/weighted` and `/goim/nodes/instances`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvertiseConfig {
    /// Public host or IP for native clients; empty = the TCP (else WebSocket) listener's IP, or the
    /// machine's hostname when that IP is unspecified (0.0.0.0 / ::).
    pub host: String,
    /// Public DNS name for web clients (`platform=web`); empty = `host`.
    pub domain: String,
    /// Public ports; 0 = the listener's own port (`wss_port`: the `listen.wss` listener's when TLS
    /// is on, else none).
    pub tcp_port: u16,
    pub ws_port: u16,
    pub wss_port: u16,
    /// goim's comet `-weight`: `nodes/weighted` orders edges by connections / weight.
    pub weight: u32,
    /// goim's comet `-offline`: still serves, but is left out of `nodes/weighted`.
    pub offline: bool,
    /// goim discovery's instance fields, shown by `nodes/instances`.
    pub region: String,
    pub zone: String,
}

impl Default for AdvertiseConfig {
    fn default() -> Self {
        AdvertiseConfig {
            host: String::new(),
            domain: String::new(),
            tcp_port: 0,
            ws_port: 0,
            wss_port: 0,
            weight: 10,
            offline: false,
            region: String::new(),
            zone: String::new(),
        }
    }
}

pub use goim_common::{LogConfig, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] goim_common::ConfigFileError),
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = goim_common::read_toml(path)?;
        // Key files are relative to the config file's folder.
        let base = path.parent().unwrap_or(Path::new("."));
        for k in &mut cfg.auth.keys {
            goim_common::resolve_relative(base, &mut k.file);
        }
        goim_common::resolve_relative(base, &mut cfg.tls.cert_path);
        goim_common::resolve_relative(base, &mut cfg.tls.key_path);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = goim_common::parse_toml(text, "<text>")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let l = &self.listen;
        for (name, addr) in [("listen.tcp", &l.tcp), ("listen.ws", &l.ws), ("listen.wss", &l.wss), ("listen.tls", &l.tls), ("listen.http", &l.http)] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!("{name} = {addr:?} is not an ip:port")));
            }
        }
        if !self.edge.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return invalid("edge.id may hold only A-Z, a-z, 0-9, '_' and '-'");
        }
        if self.tls.enabled() == self.tls.key_path.as_os_str().is_empty() {
            return invalid("tls.cert_path and tls.key_path are set together (both empty = TLS off)");
        }
        if !self.tls.enabled() && !l.tls.is_empty() {
            return invalid("listen.tls needs a certificate: set tls.cert_path and tls.key_path");
        }
        if self.tls.enabled() && l.wss.is_empty() && l.tls.is_empty() {
            return invalid("tls.cert_path is set but listen.wss and listen.tls are both disabled");
        }
        if l.tcp.is_empty() && l.ws.is_empty() && l.http.is_empty() && !self.tls.enabled() {
            return invalid("listen.tcp, listen.ws and listen.http are all disabled (and TLS is off)");
        }
        if l.http_session_grace_ms == 0 || l.http_session_grace_ms > 3_600_000 {
            return invalid("listen.http_session_grace_ms must be between 1 and 3600000 (1 h)");
        }
        if l.http_poll_max_ms == 0 || l.http_poll_max_ms > 600_000 {
            return invalid("listen.http_poll_max_ms must be between 1 and 600000 (10 min)");
        }
        if !self.listen.ws_path.starts_with('/') {
            return invalid("listen.ws_path must start with '/'");
        }
        if self.nats.urls.is_empty() {
            return invalid("nats.urls is empty");
        }
        if self.nats.connections == 0 {
            return invalid("nats.connections must be at least 1");
        }
        if self.nats.subscription_capacity == 0 {
            return invalid("nats.subscription_capacity must be at least 1");
        }
        if self.push.coalesce_ms > 10_000 {
            return invalid("push.coalesce_ms must be at most 10000 (10 s)");
        }
        if self.session.handshake_timeout_ms == 0 || self.session.idle_timeout_ms == 0 {
            return invalid("session timeouts must be positive");
        }
        if self.auth.leeway_secs > goim_token::MAX_LEEWAY_SECS {
            return Err(ConfigError::Invalid(format!("auth.leeway_secs must be at most {}", goim_token::MAX_LEEWAY_SECS)));
        }
        if self.limits.max_outbound_bytes < 4096 {
            return invalid("limits.max_outbound_bytes must be at least 4096");
        }
        if self.auth.mode != AuthMode::TrustBody && self.auth.keys.is_empty() && !self.auth.keys_from_nats {
            return invalid("auth.mode needs token keys: set auth.keys or auth.keys_from_nats = true");
        }
        if self.edge.drain_ms > 600_000 {
            return invalid("edge.drain_ms must be at most 600000 (10 min)");
        }
        if self.limits.max_ws_message_bytes < 16 {
            return invalid("limits.max_ws_message_bytes must be at least 16");
        }
        crate::presence::validate_config(&self.presence, &self.advertise).map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_goim_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen.tcp, "0.0.0.0:3101");
        assert_eq!(c.listen.ws, "0.0.0.0:3102");
        assert_eq!(c.listen.ws_path, "/sub");
        assert_eq!(c.session.handshake_timeout(), Duration::from_secs(8));
        assert_eq!(c.session.idle_timeout(), Duration::from_secs(480));
        assert_eq!(c.push.default_op, 1000);
        assert_eq!(c.limits.max_outbound_bytes, 256 * 1024);
        assert_eq!(c.auth.mode, AuthMode::Token);
        assert!(c.auth.keys_from_nats);
    }

    #[test]
    fn sample_config_parses_and_matches_defaults() {
        let sample = include_str!("../goim-edge.sample.toml");
        let c = Config::parse(sample).unwrap();
        let d = Config::default();
        assert_eq!(c.listen.tcp, d.listen.tcp);
        assert_eq!(c.listen.ws, d.listen.ws);
        assert_eq!((&c.listen.wss, &c.listen.tls), (&d.listen.wss, &d.listen.tls));
        assert_eq!((&c.tls.cert_path, &c.tls.key_path), (&d.tls.cert_path, &d.tls.key_path));
        assert!(!c.tls.enabled(), "the sample has TLS off");
        assert_eq!((&c.listen.http, &c.listen.http_cors_origins), (&d.listen.http, &d.listen.http_cors_origins));
        assert_eq!((c.listen.http_session_grace_ms, c.listen.http_poll_max_ms), (d.listen.http_session_grace_ms, d.listen.http_poll_max_ms));
        assert_eq!(c.session.idle_timeout_ms, d.session.idle_timeout_ms);
        assert_eq!(c.session.handshake_timeout_ms, d.session.handshake_timeout_ms);
        assert_eq!(c.nats.urls, d.nats.urls);
        assert_eq!(c.nats.connections, d.nats.connections);
        assert_eq!(c.nats.subscription_capacity, d.nats.subscription_capacity);
        assert_eq!(c.push.default_op, d.push.default_op);
        assert_eq!(c.limits.max_outbound_bytes, d.limits.max_outbound_bytes);
        assert_eq!(c.limits.max_room_id_len, d.limits.max_room_id_len);
        assert_eq!(c.limits.max_key_len, d.limits.max_key_len);
        assert_eq!(c.limits.max_accepts, d.limits.max_accepts);
        assert_eq!(c.limits.max_ws_message_bytes, d.limits.max_ws_message_bytes);
        let (l, dl) = (&c.limits, &d.limits);
        assert_eq!(
            (l.max_connections, l.connects_per_ip_per_sec, l.max_packets_per_sec, l.max_handshakes),
            (dl.max_connections, dl.connects_per_ip_per_sec, dl.max_packets_per_sec, dl.max_handshakes)
        );
        assert_eq!(c.edge.drain_ms, d.edge.drain_ms);
        assert_eq!(c.log.level, d.log.level);
        assert_eq!(c.auth.mode, d.auth.mode);
        assert_eq!(c.history.enabled, d.history.enabled);
        assert_eq!(c.auth.issuer, d.auth.issuer);
        assert_eq!(c.auth.audience, d.auth.audience);
        assert_eq!(c.auth.leeway_secs, d.auth.leeway_secs);
        assert_eq!(c.auth.keys_from_nats, d.auth.keys_from_nats);
        assert_eq!(c.auth.delegate_timeout_ms, d.auth.delegate_timeout_ms);
        let (p, dp) = (&c.presence, &d.presence);
        assert_eq!(
            (p.enabled, &p.bucket, p.report_interval_ms, p.max_age_ms, p.replicas, p.max_rooms, p.service),
            (dp.enabled, &dp.bucket, dp.report_interval_ms, dp.max_age_ms, dp.replicas, dp.max_rooms, dp.service)
        );
        let (a, da) = (&c.advertise, &d.advertise);
        assert_eq!(
            (&a.host, &a.domain, a.tcp_port, a.ws_port, a.wss_port, a.weight, a.offline, &a.region, &a.zone),
            (&da.host, &da.domain, da.tcp_port, da.ws_port, da.wss_port, da.weight, da.offline, &da.region, &da.zone)
        );
    }

    #[test]
    fn dev_config_parses() {
        let c = Config::parse(include_str!("../goim-edge.dev.toml")).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Token);
        assert_eq!(c.nats.user, "edge");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("[listen]\ntcp = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("listen.tcp"), "{e}");
        let e = Config::parse("[auth]\nmode = \"tokens\"").unwrap_err().to_string();
        assert!(e.contains("mode"), "{e}");
        let e = Config::parse("[nats]\nurl = \"x\"").unwrap_err().to_string();
        assert!(e.contains("url"), "{e}");
        assert!(Config::parse("[nats]\nconnections = 0").is_err());
        let e = Config::parse("[auth]\nleeway_secs = 18446744073709551615").unwrap_err().to_string();
        assert!(e.contains("auth.leeway_secs"), "{e}");
        assert!(Config::parse("[auth]\nleeway_secs = 3600").is_ok());
    }

    #[test]
    fn tls_settings_are_checked() {
        let c = Config::parse("").unwrap();
        assert_eq!((c.listen.wss.as_str(), c.listen.tls.as_str()), ("0.0.0.0:3103", ""));
        assert!(!c.tls.enabled(), "TLS is off without a certificate");
        let on = "[tls]\ncert_path = \"c.pem\"\nkey_path = \"k.pem\"\n";
        assert!(Config::parse(on).unwrap().tls.enabled());
        let e = Config::parse("[tls]\ncert_path = \"c.pem\"").unwrap_err().to_string();
        assert!(e.contains("tls.key_path"), "{e}");
        let e = Config::parse("[listen]\ntls = \"127.0.0.1:0\"").unwrap_err().to_string();
        assert!(e.contains("listen.tls needs a certificate"), "{e}");
        let e = Config::parse(&format!("[listen]\nwss = \"\"\n{on}")).unwrap_err().to_string();
        assert!(e.contains("both disabled"), "{e}");
        let e = Config::parse(&format!("[listen]\nwss = \"nope\"\n{on}")).unwrap_err().to_string();
        assert!(e.contains("listen.wss"), "{e}");
        // TLS alone is enough of a listener.
        assert!(Config::parse(&format!("[listen]\ntcp = \"\"\nws = \"\"\n{on}")).is_ok());
        let e = Config::parse("[listen]\ntcp = \"\"\nws = \"\"").unwrap_err().to_string();
        assert!(e.contains("all disabled"), "{e}");
    }

    #[test]
    fn tls_paths_are_relative_to_the_config_file() {
        let dir = std::env::temp_dir().join(format!("goim-edge-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.toml");
        std::fs::write(&path, "[tls]\ncert_path = \"certs/c.pem\"\nkey_path = \"/abs/k.pem\"\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.tls.cert_path, dir.join("certs/c.pem"));
        assert_eq!(c.tls.key_path, PathBuf::from("/abs/k.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_http_only_edge_is_valid() {
        assert!(Config::parse("[listen]\nhttp_poll_max_ms = 0").is_err());
        let c = Config::parse("[listen]\ntcp = \"\"\nws = \"\"\nhttp = \"127.0.0.1:3104\"").unwrap();
        assert_eq!((c.listen.tcp.as_str(), c.listen.ws.as_str(), c.listen.http.as_str()), ("", "", "127.0.0.1:3104"));
    }
}
