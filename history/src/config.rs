//! goim-history's TOML configuration: every key, its default and its meaning.
//! `goim-history.sample.toml` at the crate root lists the same keys with the same defaults; keep the
//! two in step (a unit test checks that the sample parses to the defaults).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::streams::Class;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub nats: NatsConfig,
    pub tokens: TokensConfig,
    pub read: ReadConfig,
    pub provision: ProvisionConfig,
    /// Stream `GOIM_ROOMS`: pushes to `room.…` subjects.
    pub rooms: StreamConfig,
    /// Stream `GOIM_USERS`: pushes to `user.<mid>`.
    pub users: StreamConfig,
    /// Stream `GOIM_BROADCAST`: pushes to `broadcast`.
    pub broadcast: StreamConfig,
    pub log: goim_common::LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `GET /history` and `GET /history/info`; empty disables HTTP.
    pub listen: String,
    /// Share the port with other replicas on the host (SO_REUSEPORT).
    pub reuse_port: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "0.0.0.0:3112".into(), reuse_port: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    /// Connection name shown in the server's monitoring endpoint.
    pub name: String,
    /// Credentials of the `history` role (empty = none).
    pub user: String,
    pub password: String,
    /// Queue group of `history.get` and `history.info`, shared by all replicas.
    pub queue_group: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            name: "goim-history".into(),
            user: String::new(),
            password: String::new(),
            queue_group: "goim-history".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    pub id: String,
    #[serde(default)]
    pub alg: goim_token::Algorithm,
    /// EdDSA: PKCS#8 PEM public (or private) key; HS256: the shared secret file.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// Required `iss` of tokens.
    pub issuer: String,
    /// Required `aud` of tokens.
    pub audience: String,
    /// Clock skew tolerated on exp/nbf (seconds).
    pub leeway_secs: u64,
    /// Verification keys from files.
    pub keys: Vec<TokenKeyConfig>,
    /// Also accept the keys authsvc announces on NATS (`auth.keys`, asked once with `auth.keys.get`).
    pub keys_from_nats: bool,
    /// Backend API keys presented instead of a token; they may read every stored subject.
    pub api_keys: Vec<String>,
    /// Files holding one more API key each (trailing newline trimmed).
    pub api_key_files: Vec<PathBuf>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            issuer: "goim-authsvc".into(),
            audience: "goim".into(),
            leeway_secs: 5,
            keys: Vec::new(),
            keys_from_nats: true,
            api_keys: Vec::new(),
            api_key_files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadConfig {
    /// Messages per page when a read names no `limit`.
    pub default_limit: usize,
    /// Largest `limit` accepted (a larger one is refused with 400).
    pub max_limit: usize,
    /// Most messages an edge replays to one resuming client (published in `history.info`).
    pub max_resume: u64,
    /// Op of a stored push without a `Goim-Op` header (the edges' `push.default_op`).
    pub default_op: i32,
    /// How long one JetStream read may take before the request fails (503).
    pub timeout_ms: u64,
    /// Largest page body (bytes) over HTTP; older messages beyond it are left for the next page
    /// (`more` = true). NATS answers are also capped by the server's `max_payload`.
    pub max_page_bytes: usize,
    /// Reads served at once by this replica; further ones wait (JetStream is not flooded).
    pub max_concurrent: usize,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            default_limit: 50,
            max_limit: 500,
            max_resume: 10_000,
            default_op: 1000,
            timeout_ms: 5000,
            max_page_bytes: 4 * 1024 * 1024,
            max_concurrent: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionConfig {
    /// Longest pause between attempts while JetStream is unavailable at start (milliseconds).
    pub retry_max_ms: u64,
    /// After start, check the streams this often and re-create one that has disappeared (a memory
    /// stream after a server restart) or drifted from this config (seconds; 0 = only at start).
    pub recheck_interval_secs: u64,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig { retry_max_ms: 5000, recheck_interval_secs: 30 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// One subject class's stream (`[rooms]`, `[users]`, `[broadcast]`). Defaults depend on the class:
/// see [`StreamConfig::defaults_for`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Store this class at all; when false its pushes stay on the core path (no history, no
    /// sequences) and reads of it are answered with 404. The stream is never deleted.
    pub enabled: Option<bool>,
    /// Stream name.
    pub stream: Option<String>,
    /// Subjects stored (inside the class: `room.…`, `user.…`, `broadcast`).
    pub subjects: Option<Vec<String>>,
    /// Messages kept per subject (a per-room / per-user ring; older ones are dropped).
    pub max_msgs_per_subject: Option<i64>,
    /// Messages older than this are dropped (seconds; 0 = no age limit).
    pub max_age_secs: Option<u64>,
    /// Size limit of the whole stream (bytes; -1 = none); the oldest messages go first.
    pub max_bytes: Option<i64>,
    /// "file" or "memory" (memory streams are lost when nats-server restarts).
    pub storage: Option<Storage>,
    /// Copies in a JetStream cluster (1, 3 or 5).
    pub replicas: Option<usize>,
    /// Pushes carrying the same `Nats-Msg-Id` within this window are stored once (seconds).
    pub duplicate_window_secs: Option<u64>,
}

/// A class's stream settings with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub enabled: bool,
    pub stream: String,
    pub subjects: Vec<String>,
    pub max_msgs_per_subject: i64,
    pub max_age_secs: u64,
    pub max_bytes: i64,
    pub storage: Storage,
    pub replicas: usize,
    pub duplicate_window_secs: u64,
}

impl StreamSettings {
    /// The defaults of `class`.
    pub fn defaults_for(class: Class) -> StreamSettings {
        let (stream, subjects, max_age_secs) = match class {
            Class::Rooms => ("GOIM_ROOMS", "room.>", 86_400),
            Class::Users => ("GOIM_USERS", "user.>", 7 * 86_400),
            Class::Broadcast => ("GOIM_BROADCAST", "broadcast", 86_400),
        };
        StreamSettings {
            enabled: true,
            stream: stream.into(),
            subjects: vec![subjects.into()],
            max_msgs_per_subject: 10_000,
            max_age_secs,
            max_bytes: -1,
            storage: Storage::File,
            replicas: 1,
            duplicate_window_secs: 120,
        }
    }
}

impl StreamConfig {
    /// Fill the unset keys with `class`'s defaults.
    pub fn resolve(&self, class: Class) -> StreamSettings {
        let d = StreamSettings::defaults_for(class);
        StreamSettings {
            enabled: self.enabled.unwrap_or(d.enabled),
            stream: self.stream.clone().unwrap_or(d.stream),
            subjects: self.subjects.clone().unwrap_or(d.subjects),
            max_msgs_per_subject: self.max_msgs_per_subject.unwrap_or(d.max_msgs_per_subject),
            max_age_secs: self.max_age_secs.unwrap_or(d.max_age_secs),
            max_bytes: self.max_bytes.unwrap_or(d.max_bytes),
            storage: self.storage.unwrap_or(d.storage),
            replicas: self.replicas.unwrap_or(d.replicas),
            duplicate_window_secs: self.duplicate_window_secs.unwrap_or(d.duplicate_window_secs),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] goim_common::ConfigFileError),
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Load `path`; relative key file paths are resolved against the config file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = goim_common::read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| goim_common::resolve_relative(base, p);
        for k in &mut cfg.tokens.keys {
            fix(&mut k.file);
        }
        for f in &mut cfg.tokens.api_key_files {
            fix(f);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = goim_common::parse_toml(text, "<text>")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The settings of `class`, defaults filled in.
    pub fn class(&self, class: Class) -> StreamSettings {
        match class {
            Class::Rooms => self.rooms.resolve(class),
            Class::Users => self.users.resolve(class),
            Class::Broadcast => self.broadcast.resolve(class),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.nats.urls.is_empty() {
            return invalid("nats.urls is empty".into());
        }
        if self.nats.queue_group.is_empty() {
            return invalid("nats.queue_group is empty".into());
        }
        let t = &self.tokens;
        if t.leeway_secs > goim_token::MAX_LEEWAY_SECS {
            return invalid(format!("tokens.leeway_secs must be at most {}", goim_token::MAX_LEEWAY_SECS));
        }
        if t.keys.is_empty() && !t.keys_from_nats && t.api_keys.iter().all(String::is_empty) && t.api_key_files.is_empty() {
            return invalid(
                "nobody could read: set tokens.keys, tokens.keys_from_nats = true or tokens.api_keys".into(),
            );
        }
        let r = &self.read;
        if r.max_limit == 0 || r.default_limit == 0 || r.default_limit > r.max_limit {
            return invalid(format!(
                "read.default_limit ({}) and read.max_limit ({}) must be positive, default <= max",
                r.default_limit, r.max_limit
            ));
        }
        if r.max_limit > 10_000 {
            return invalid(format!("read.max_limit = {} is above 10000", r.max_limit));
        }
        if r.timeout_ms == 0 {
            return invalid("read.timeout_ms must be positive".into());
        }
        if r.max_concurrent == 0 {
            return invalid("read.max_concurrent must be positive".into());
        }
        if r.max_page_bytes < 1024 {
            return invalid("read.max_page_bytes must be at least 1024".into());
        }
        if self.provision.retry_max_ms == 0 {
            return invalid("provision.retry_max_ms must be positive".into());
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(format!("http.listen = {:?} is not an ip:port", self.http.listen));
        }
        let mut names = Vec::new();
        for class in Class::ALL {
            let s = self.class(class);
            crate::streams::validate_settings(class, &s).map_err(ConfigError::Invalid)?;
            if names.contains(&s.stream) {
                return invalid(format!("stream name {:?} is used by two classes", s.stream));
            }
            names.push(s.stream);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_the_documented_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.http.listen, "0.0.0.0:3112");
        assert_eq!(c.nats.queue_group, "goim-history");
        assert_eq!(c.read.default_limit, 50);
        assert_eq!(c.read.max_limit, 500);
        assert_eq!(c.read.max_resume, 10_000);
        assert!(c.tokens.keys_from_nats);
        let r = c.class(Class::Rooms);
        assert_eq!((r.stream.as_str(), r.subjects.clone()), ("GOIM_ROOMS", vec!["room.>".to_string()]));
        assert!(r.enabled);
        assert_eq!(c.class(Class::Users).stream, "GOIM_USERS");
        assert_eq!(c.class(Class::Users).subjects, vec!["user.>".to_string()]);
        assert_eq!(c.class(Class::Broadcast).subjects, vec!["broadcast".to_string()]);
        assert_eq!(c.class(Class::Broadcast).storage, Storage::File);
    }

    #[test]
    fn sample_config_parses_to_the_defaults() {
        let c = Config::parse(include_str!("../goim-history.sample.toml")).unwrap();
        let d = Config::default();
        assert_eq!((&c.http.listen, c.http.reuse_port), (&d.http.listen, d.http.reuse_port));
        assert_eq!((&c.nats.urls, &c.nats.name, &c.nats.user, &c.nats.password, &c.nats.queue_group),
                   (&d.nats.urls, &d.nats.name, &d.nats.user, &d.nats.password, &d.nats.queue_group));
        let (t, dt) = (&c.tokens, &d.tokens);
        assert_eq!((&t.issuer, &t.audience, t.leeway_secs, t.keys_from_nats, &t.api_keys, t.api_key_files.len()),
                   (&dt.issuer, &dt.audience, dt.leeway_secs, dt.keys_from_nats, &dt.api_keys, 0));
        let (r, dr) = (&c.read, &d.read);
        assert_eq!((r.default_limit, r.max_limit, r.max_resume, r.default_op, r.timeout_ms, r.max_page_bytes, r.max_concurrent),
                   (dr.default_limit, dr.max_limit, dr.max_resume, dr.default_op, dr.timeout_ms, dr.max_page_bytes, dr.max_concurrent));
        assert_eq!((c.provision.retry_max_ms, c.provision.recheck_interval_secs),
                   (d.provision.retry_max_ms, d.provision.recheck_interval_secs));
        for class in Class::ALL {
            assert_eq!(c.class(class), StreamSettings::defaults_for(class), "{class:?}");
        }
        // Every stream key is spelled out in the sample, not left to the defaults.
        for s in [&c.rooms, &c.users, &c.broadcast] {
            assert!(s.enabled.is_some() && s.stream.is_some() && s.subjects.is_some() && s.max_msgs_per_subject.is_some());
            assert!(s.max_age_secs.is_some() && s.max_bytes.is_some() && s.storage.is_some());
            assert!(s.replicas.is_some() && s.duplicate_window_secs.is_some());
        }
        assert_eq!((&c.log.level, c.log.format), (&d.log.level, d.log.format));
    }

    #[test]
    fn dev_config_parses() {
        let c = Config::parse(include_str!("../goim-history.dev.toml")).unwrap();
        assert_eq!(c.nats.user, "history");
        assert!(c.tokens.keys_from_nats);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = Config::parse("[rooms]\nmax_msgs = 5").unwrap_err().to_string();
        assert!(e.contains("max_msgs"), "{e}");
        let e = Config::parse("[rooms]\nstorage = \"disk\"").unwrap_err().to_string();
        assert!(e.contains("storage"), "{e}");
        let e = Config::parse("[rooms]\nsubjects = [\"user.>\"]").unwrap_err().to_string();
        assert!(e.contains("room"), "{e}");
        let e = Config::parse("[users]\nsubjects = [\"user..x\"]").unwrap_err().to_string();
        assert!(e.contains("user..x"), "{e}");
        let e = Config::parse("[broadcast]\nsubjects = [\"broadcast.x\"]").unwrap_err().to_string();
        assert!(e.contains("broadcast"), "{e}");
        let e = Config::parse("[rooms]\nmax_msgs_per_subject = 0").unwrap_err().to_string();
        assert!(e.contains("max_msgs_per_subject"), "{e}");
        let e = Config::parse("[rooms]\nmax_age_secs = 60\nduplicate_window_secs = 120").unwrap_err().to_string();
        assert!(e.contains("duplicate_window_secs"), "{e}");
        let e = Config::parse("[users]\nstream = \"GOIM_ROOMS\"").unwrap_err().to_string();
        assert!(e.contains("two classes"), "{e}");
        let e = Config::parse("[users]\nstream = \"a.b\"").unwrap_err().to_string();
        assert!(e.contains("a.b"), "{e}");
        let e = Config::parse("[read]\ndefault_limit = 600").unwrap_err().to_string();
        assert!(e.contains("default_limit"), "{e}");
        let e = Config::parse("[tokens]\nkeys_from_nats = false").unwrap_err().to_string();
        assert!(e.contains("nobody"), "{e}");
        assert!(Config::parse("[tokens]\nkeys_from_nats = false\napi_keys = [\"k\"]").is_ok());
        let e = Config::parse("[http]\nlisten = \"3112\"").unwrap_err().to_string();
        assert!(e.contains("http.listen"), "{e}");
        let e = Config::parse("[rooms]\nreplicas = 2").unwrap_err().to_string();
        assert!(e.contains("replicas"), "{e}");
    }

    #[test]
    fn operators_may_store_only_some_rooms() {
        let c = Config::parse("[rooms]\nsubjects = [\"room.chat.>\", \"room.lobby\"]\nmax_age_secs = 0\n").unwrap();
        let r = c.class(Class::Rooms);
        assert_eq!(r.subjects, vec!["room.chat.>".to_string(), "room.lobby".to_string()]);
        assert_eq!(r.max_age_secs, 0);
    }
}
