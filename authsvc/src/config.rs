//! authsvc's TOML configuration: every key, its default and its meaning. `goim-authsvc.sample.toml`
//! at the crate root lists the same keys with the same defaults; keep the two in step.

use std::path::{Path, PathBuf};

use goim_token::Algorithm;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// "production" (the default) or "dev".
    pub mode: RunMode,
    pub http: HttpConfig,
    pub nats: NatsConfig,
    pub tokens: TokensConfig,
    pub connect: ConnectConfig,
    pub callout: CalloutSection,
    pub log: LogConfig,
    /// goim logic's HTTP API (`crate::logic`).
    pub logic: crate::logic::LogicConfig,
    /// The edges' presence bucket (`crate::logic`).
    pub presence: crate::logic::PresenceSection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Key files must exist; nothing is generated.
    #[default]
    Production,
    /// Missing Ed25519 key files are generated (and said so in the log); for `make run` only.
    Dev,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// goim logic's port; empty disables HTTP.
    pub listen: String,
    /// Backend API keys accepted by `POST /auth/token` (as `Authorization: Bearer <key>`).
    pub api_keys: Vec<String>,
    /// Files holding one more API key each (trailing newline trimmed).
    pub api_key_files: Vec<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Share the port with other replicas on the host (SO_REUSEPORT).
    pub reuse_port: bool,
    /// URL path of the browser demo page (`web/demo/`, compiled in), e.g. `/demo/`; empty (the
    /// default) serves no page. Development aid: the page asks for a backend API key to mint tokens.
    pub demo_path: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:3111".into(),
            api_keys: Vec::new(),
            api_key_files: Vec::new(),
            max_body_bytes: 64 * 1024,
            reuse_port: true,
            demo_path: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    pub name: String,
    /// Credentials of the `authsvc` role (empty = none).
    pub user: String,
    pub password: String,
    /// Queue group shared by all replicas for every request subject.
    pub queue_group: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            name: "goim-authsvc".into(),
            user: String::new(),
            password: String::new(),
            queue_group: "goim-authsvc".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id, written into every token's header (`kid`).
    pub id: String,
    #[serde(default)]
    pub alg: Algorithm,
    /// EdDSA: PKCS#8 PEM private key (the signing key must be private; others may be public).
    /// HS256: the secret file.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// `iss` of minted tokens; verifiers require it.
    pub issuer: String,
    /// `aud` of minted tokens; verifiers require it.
    pub audience: String,
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// Clock skew tolerated when verifying exp/nbf.
    pub leeway_secs: u64,
    /// Id of the key that signs; must be in `keys`.
    pub signing_key: String,
    /// The signing key and, during a rotation, the previous keys (verification only).
    pub keys: Vec<KeyConfig>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            issuer: "goim-authsvc".into(),
            audience: "goim".into(),
            default_ttl_secs: 3600,
            max_ttl_secs: 86_400,
            leeway_secs: 5,
            signing_key: String::new(),
            keys: Vec::new(),
        }
    }
}

/// How delegated goim connects (`auth.connect`) are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectPolicy {
    /// Refuse every delegated connect.
    #[default]
    Deny,
    /// Grant what the auth body asks for. Development only: logged loudly at start and per connect.
    AllowAll,
    /// Ask the application's webhook.
    Webhook,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectConfig {
    pub policy: ConnectPolicy,
    /// `webhook`: URL that receives `POST {"auth": <auth body>, "edge": ..., "peer": ...}`.
    pub webhook_url: String,
    pub webhook_timeout_ms: u64,
    /// Lifetime of tokens issued for delegated connects.
    pub ttl_secs: u64,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig { policy: ConnectPolicy::Deny, webhook_url: String::new(), webhook_timeout_ms: 2000, ttl_secs: 3600 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalloutSection {
    /// Serve nats-server's auth callout (`$SYS.REQ.USER.AUTH`).
    pub enabled: bool,
    /// Account nkey seed (`SA…`) whose public key is `auth_callout.issuer` in the server config.
    pub issuer_seed_file: PathBuf,
    /// Optional curve key seed (`SX…`) when the server config sets `auth_callout.xkey`.
    pub xkey_seed_file: Option<PathBuf>,
    /// The account native clients are placed in.
    pub account: String,
    /// Credentials of a separate connection for the callout, in the callout account (the server's
    /// `auth_callout.account`); empty = serve it on the main connection.
    pub nats_user: String,
    pub nats_password: String,
}

impl Default for CalloutSection {
    fn default() -> Self {
        CalloutSection {
            enabled: false,
            issuer_seed_file: PathBuf::new(),
            xkey_seed_file: None,
            account: "APP".into(),
            nats_user: String::new(),
            nats_password: String::new(),
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
    /// Load `path`; relative key and seed file paths are resolved against the config file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = goim_common::read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = goim_common::parse_toml(text, "<text>")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| goim_common::resolve_relative(base, p);
        for k in &mut self.tokens.keys {
            fix(&mut k.file);
        }
        for f in &mut self.http.api_key_files {
            fix(f);
        }
        fix(&mut self.callout.issuer_seed_file);
        for f in &mut self.logic.push_api_key_files {
            fix(f);
        }
        if let Some(x) = &mut self.callout.xkey_seed_file {
            fix(x);
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.tokens.keys.is_empty() {
            return invalid("tokens.keys is empty: configure at least the signing key".into());
        }
        if !self.tokens.keys.iter().any(|k| k.id == self.tokens.signing_key) {
            return invalid(format!("tokens.signing_key {:?} is not one of tokens.keys", self.tokens.signing_key));
        }
        if self.tokens.leeway_secs > goim_token::MAX_LEEWAY_SECS {
            return invalid(format!("tokens.leeway_secs must be at most {}", goim_token::MAX_LEEWAY_SECS));
        }
        if self.tokens.max_ttl_secs == 0 || self.tokens.default_ttl_secs == 0 {
            return invalid("tokens ttl values must be positive".into());
        }
        if self.nats.urls.is_empty() {
            return invalid("nats.urls is empty".into());
        }
        if self.connect.policy == ConnectPolicy::Webhook && self.connect.webhook_url.is_empty() {
            return invalid("connect.policy = \"webhook\" needs connect.webhook_url".into());
        }
        if self.connect.policy == ConnectPolicy::AllowAll && self.mode != RunMode::Dev {
            return invalid("connect.policy = \"allow-all\" is for development only: it needs mode = \"dev\"".into());
        }
        if self.callout.enabled && self.callout.issuer_seed_file.as_os_str().is_empty() {
            return invalid("callout.enabled needs callout.issuer_seed_file".into());
        }
        self.logic.validate(&self.presence).map_err(ConfigError::Invalid)?;
        let demo = &self.http.demo_path;
        if !demo.is_empty() {
            let reserved = ["/auth/", "/goim/", "/healthz/"].iter().any(|r| demo.starts_with(r) || *r == demo);
            let clean = demo.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
                && !demo.contains("//")
                && !demo.contains("/.");
            if demo == "/" || !demo.starts_with('/') || !demo.ends_with('/') || reserved || !clean {
                return invalid(format!(
                    "http.demo_path = {demo:?}: must be a path like \"/demo/\" (starts and ends with '/', \
                     letters, digits, '-', '_', '.'; not under /auth/ or /goim/)"
                ));
            }
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(format!("http.listen = {:?} is not an ip:port", self.http.listen));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[tokens]\nsigning_key = \"k1\"\n[[tokens.keys]]\nid = \"k1\"\nfile = \"k1.pem\"\n";

    #[test]
    fn minimal_config_and_defaults() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.mode, RunMode::Production);
        assert_eq!(c.http.listen, "0.0.0.0:3111");
        assert_eq!(c.tokens.issuer, "goim-authsvc");
        assert_eq!(c.tokens.keys[0].alg, Algorithm::EdDSA);
        assert_eq!(c.connect.policy, ConnectPolicy::Deny);
    }

    #[test]
    fn sample_config_parses() {
        let c = Config::parse(include_str!("../goim-authsvc.sample.toml")).unwrap();
        let d = Config::default();
        assert_eq!(c.http.listen, d.http.listen);
        assert_eq!(c.http.max_body_bytes, d.http.max_body_bytes);
        assert_eq!(c.http.demo_path, d.http.demo_path);
        assert_eq!(c.tokens.default_ttl_secs, d.tokens.default_ttl_secs);
        assert_eq!(c.tokens.max_ttl_secs, d.tokens.max_ttl_secs);
        assert_eq!(c.tokens.leeway_secs, d.tokens.leeway_secs);
        assert_eq!(c.connect.webhook_timeout_ms, d.connect.webhook_timeout_ms);
        assert_eq!(c.nats.queue_group, d.nats.queue_group);
        assert_eq!(c.callout.account, d.callout.account);
        let (l, dl) = (&c.logic, &d.logic);
        assert_eq!(
            (l.enabled, &l.push_api_keys, l.max_push_body_bytes, l.body_timeout_ms, l.max_targets, l.max_id_len, l.push_ack, l.push_timeout_ms),
            (dl.enabled, &dl.push_api_keys, dl.max_push_body_bytes, dl.body_timeout_ms, dl.max_targets, dl.max_id_len, dl.push_ack, dl.push_timeout_ms)
        );
        assert_eq!((&l.nats_user, &l.nats_password, l.push_api_key_files.len()), (&dl.nats_user, &dl.nats_password, 0));
        let (n, dn) = (&l.nodes, &dl.nodes);
        assert_eq!(
            (&n.domain, n.tcp_port, n.ws_port, n.wss_port, n.heartbeat_secs, n.heartbeat_max, n.max_nodes),
            (&dn.domain, dn.tcp_port, dn.ws_port, dn.wss_port, dn.heartbeat_secs, dn.heartbeat_max, dn.max_nodes)
        );
        let (b, db) = (&l.backoff, &dl.backoff);
        assert_eq!((b.max_delay, b.base_delay, b.factor, b.jitter), (db.max_delay, db.base_delay, db.factor, db.jitter));
        let (p, dp) = (&c.presence, &d.presence);
        assert_eq!((&p.bucket, p.max_age_ms, p.replicas), (&dp.bucket, dp.max_age_ms, dp.replicas));
    }

    #[test]
    fn dev_config_parses() {
        let c = Config::parse(include_str!("../goim-authsvc.dev.toml")).unwrap();
        assert_eq!(c.mode, RunMode::Dev);
        assert!(c.callout.enabled);
        assert_eq!(c.callout.nats_user, "callout");
        assert_eq!(c.http.demo_path, "/demo/");
    }

    #[test]
    fn demo_path_must_be_a_plain_folder_path() {
        for ok in ["/demo/", "/dev/demo/", "/a-b_c.1/"] {
            let c = Config::parse(&format!("[http]\ndemo_path = {ok:?}\n{MIN}")).unwrap();
            assert_eq!(c.http.demo_path, ok);
        }
        for bad in ["/", "demo/", "/demo", "/auth/", "/goim/demo/", "/a//b/", "/../x/", "/a b/", "/healthz/"] {
            let e = Config::parse(&format!("[http]\ndemo_path = {bad:?}\n{MIN}")).unwrap_err().to_string();
            assert!(e.contains("demo_path"), "{bad}: {e}");
        }
    }

    #[test]
    fn dangerous_settings_are_refused() {
        let e = Config::parse(&format!("{MIN}[connect]\npolicy = \"allow-all\"\n")).unwrap_err().to_string();
        assert!(e.contains("development only"), "{e}");
        assert!(Config::parse(&format!("mode = \"dev\"\n{MIN}[connect]\npolicy = \"allow-all\"\n")).is_ok());
        let e = Config::parse("[tokens]\nsigning_key = \"k9\"\n[[tokens.keys]]\nid = \"k1\"\nfile = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("k9"), "{e}");
        assert!(Config::parse(&format!("{MIN}[connect]\npolicy = \"webhook\"\n")).is_err());
    }
}
