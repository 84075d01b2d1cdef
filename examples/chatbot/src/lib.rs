//! goim-chatbot: an example NATS service for goim-nats rooms, and the NATS-native replacement for
//! goim-fork's gRPC interceptors.
//!
//! goim clients' op-4 messages reach NATS on `ingress.<room subject>` (`ingress.none` outside a room)
//! with the headers `Goim-Mid`, `Goim-Key`, `Goim-Room`, `Goim-Edge` (subjects.md §3). The bot
//! consumes them in a queue group — run as many replicas as you like, each message is answered by
//! exactly one — and answers by publishing to the sender's room subject (`Goim-Room`) with a `Goim-Op`
//! header, which every edge delivers to every member of the room as an ordinary push. A sender in no
//! room is answered on its own `key.<Goim-Key>` subject.
//!
//! What it answers (see [`answer`]): `/time`, `/help`, and, with `bot.echo`, an echo of anything else.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Deserialize;
use tracing::{debug, info, warn};

/// Headers the edges put on ingress messages (subjects.md §3).
pub const HEADER_MID: &str = "Goim-Mid";
pub const HEADER_KEY: &str = "Goim-Key";
pub const HEADER_ROOM: &str = "Goim-Room";
/// The header that names the goim op of a push (subjects.md §1).
pub const HEADER_OP: &str = "Goim-Op";

/// The TOML config (`goim-chatbot.sample.toml` lists every key with its default).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub bot: BotConfig,
    pub log: goim_common::LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    /// Connection name in the server's monitoring endpoint.
    pub name: String,
    /// Credentials (the `backend` role of nats-conf/dev.conf may consume ingress and push to rooms);
    /// empty = none.
    pub user: String,
    pub password: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            name: "goim-chatbot".into(),
            user: String::new(),
            password: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotConfig {
    /// Ingress subjects consumed: `ingress.>` (every room and `ingress.none`), or a part such as
    /// `ingress.room.chat.>` (rooms `chat://…` only).
    pub subject: String,
    /// Queue group shared by the replicas: each message goes to one of them.
    pub queue_group: String,
    /// `Goim-Op` of the answers (goim clients' business ops are ≥ 1000).
    pub op: i32,
    /// Name that starts every answer: `<name>: …`.
    pub name: String,
    /// Echo messages that are not commands (`<name>: <mid> said: <text>`); false = commands only.
    pub echo: bool,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig { subject: "ingress.>".into(), queue_group: "goim-chatbot".into(), op: 1000, name: "bot".into(), echo: true }
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
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let cfg: Config = goim_common::read_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = goim_common::parse_toml(text, "<text>")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.nats.urls.is_empty() {
            return invalid("nats.urls is empty".into());
        }
        let s = &self.bot.subject;
        if !(s == "ingress.>" || s == "ingress.none" || s.starts_with("ingress.")) || s.contains(char::is_whitespace) {
            return invalid(format!("bot.subject = {s:?}: must be an ingress subject (ingress.> or a part of it)"));
        }
        if self.bot.queue_group.is_empty() || self.bot.queue_group.contains(char::is_whitespace) {
            return invalid("bot.queue_group must be a non-empty word".into());
        }
        Ok(())
    }
}

/// The bot's answer to one message body, or `None` (empty bodies; non-commands when `echo` is off).
pub fn answer(cfg: &BotConfig, mid: &str, body: &[u8], now: SystemTime) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let name = &cfg.name;
    let command = text.split_whitespace().next().unwrap_or("");
    match command {
        "/time" => Some(format!("{name}: the time is {}", rfc3339_utc(now))),
        "/help" => Some(format!("{name}: commands: /time (the server's clock), /help; anything else is echoed")),
        _ if command.starts_with('/') => Some(format!("{name}: unknown command {command}; try /help")),
        _ if cfg.echo => Some(format!("{name}: {mid} said: {text}")),
        _ => None,
    }
}

/// Where to answer a message with these headers: the sender's room subject, else its key subject.
/// `None` when neither is a valid push subject (ingress headers come only from edges, but the bot
/// never publishes to a wildcard or a subject outside `room.`/`key.`).
pub fn reply_subject(room: Option<&str>, key: Option<&str>) -> Option<String> {
    let token_ok = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=');
    if let Some(room) = room {
        let tokens: Vec<&str> = room.split('.').collect();
        if tokens.len() >= 2 && tokens.len() <= 3 && tokens[0] == "room" && tokens[1..].iter().all(|t| token_ok(t)) {
            return Some(room.to_string());
        }
        return None;
    }
    key.filter(|k| token_ok(k)).map(|k| format!("key.{k}"))
}

/// `2026-01-02T03:04:05Z` (UTC, whole seconds).
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Connect to NATS with the config's credentials, retrying until a server answers.
pub async fn connect(cfg: &NatsConfig) -> async_nats::Client {
    goim_common::connect_nats(&cfg.urls, || goim_common::credentials(&cfg.name, &cfg.user, &cfg.password)).await
}

/// A subscribed bot: [`Bot::run`] answers until `shutdown` completes.
pub struct Bot {
    client: async_nats::Client,
    subscriber: async_nats::Subscriber,
    cfg: BotConfig,
}

impl Bot {
    /// Subscribe to `cfg.subject` in `cfg.queue_group` and make sure the server has the subscription
    /// (a flush round trip) before returning: messages published afterwards reach the group.
    pub async fn subscribe(client: async_nats::Client, cfg: BotConfig) -> Result<Bot, String> {
        let subscriber = client
            .queue_subscribe(cfg.subject.clone(), cfg.queue_group.clone())
            .await
            .map_err(|e| format!("cannot subscribe to {}: {e}", cfg.subject))?;
        client.flush().await.map_err(|e| format!("cannot flush the subscription: {e}"))?;
        Ok(Bot { client, subscriber, cfg })
    }

    /// Answer messages until `shutdown` completes; then unsubscribe (the other replicas take over)
    /// and flush what was answered.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let op = self.cfg.op.to_string();
        let mut answered: u64 = 0;
        loop {
            let msg = tokio::select! {
                m = self.subscriber.next() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = &mut shutdown => break,
            };
            let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
            let (room, key) = (header(HEADER_ROOM), header(HEADER_KEY));
            let mid = header(HEADER_MID).unwrap_or_else(|| "0".into());
            let Some(target) = reply_subject(room.as_deref(), key.as_deref()) else {
                warn!(subject = %msg.subject, ?room, ?key, "ingress message without a usable room or key header: not answered");
                continue;
            };
            let Some(text) = answer(&self.cfg, &mid, &msg.payload, SystemTime::now()) else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(HEADER_OP, op.as_str());
            match self.client.publish_with_headers(target.clone(), headers, text.into()).await {
                Ok(()) => {
                    answered += 1;
                    debug!(%target, mid, "answered");
                }
                Err(e) => warn!(%target, error = %e, "cannot publish the answer"),
            }
        }
        let _ = self.subscriber.unsubscribe().await;
        let _ = self.client.flush().await;
        info!(answered, "chatbot stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn answers_commands_and_echoes() {
        let cfg = BotConfig::default();
        assert_eq!(answer(&cfg, "42", b"/time", at(0)).unwrap(), "bot: the time is 1970-01-01T00:00:00Z");
        assert!(answer(&cfg, "42", b"/help", at(0)).unwrap().starts_with("bot: commands:"));
        assert_eq!(answer(&cfg, "42", b"/nope x", at(0)).unwrap(), "bot: unknown command /nope; try /help");
        assert_eq!(answer(&cfg, "42", b"  hi there ", at(0)).unwrap(), "bot: 42 said: hi there");
        assert_eq!(answer(&cfg, "42", b"   ", at(0)), None);
        assert_eq!(answer(&cfg, "42", b"a\xffb", at(0)).unwrap(), "bot: 42 said: a\u{fffd}b");
        let quiet = BotConfig { echo: false, name: "clock".into(), ..BotConfig::default() };
        assert_eq!(answer(&quiet, "42", b"hi", at(0)), None);
        assert!(answer(&quiet, "42", b"/time", at(0)).unwrap().starts_with("clock: the time is"));
    }

    #[test]
    fn answers_go_to_the_room_or_the_key_never_elsewhere() {
        assert_eq!(reply_subject(Some("room.live.1000"), Some("k")).as_deref(), Some("room.live.1000"));
        assert_eq!(reply_subject(Some("room.lobby"), None).as_deref(), Some("room.lobby"));
        assert_eq!(reply_subject(Some("room.chat.1=202"), None).as_deref(), Some("room.chat.1=202"));
        assert_eq!(reply_subject(None, Some("abc-1=2E")).as_deref(), Some("key.abc-1=2E"));
        for bad in ["room.>", "room.*.1", "user.1", "room", "room.a.b.c", "room..x", "room.a b"] {
            assert_eq!(reply_subject(Some(bad), Some("k")), None, "{bad}");
        }
        assert_eq!(reply_subject(None, Some("a.b")), None);
        assert_eq!(reply_subject(None, None), None);
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339_utc(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(at(1_767_225_599)), "2025-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(at(4_107_542_400)), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn sample_and_dev_configs_parse_with_the_defaults() {
        let s = Config::parse(include_str!("../goim-chatbot.sample.toml")).unwrap();
        let d = Config::default();
        assert_eq!(s.nats.urls, d.nats.urls);
        assert_eq!((&s.nats.name, &s.nats.user, &s.nats.password), (&d.nats.name, &d.nats.user, &d.nats.password));
        let (b, db) = (&s.bot, &d.bot);
        assert_eq!((&b.subject, &b.queue_group, b.op, &b.name, b.echo), (&db.subject, &db.queue_group, db.op, &db.name, db.echo));
        assert_eq!((&s.log.level, s.log.format), (&d.log.level, d.log.format));
        let dev = Config::parse(include_str!("../goim-chatbot.dev.toml")).unwrap();
        assert_eq!(dev.nats.user, "backend");
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(Config::parse("[bot]\nsubject = \"room.>\"\n").is_err());
        assert!(Config::parse("[bot]\nqueue_group = \"\"\n").is_err());
        assert!(Config::parse("[nats]\nurls = []\n").is_err());
        assert!(Config::parse("[bot]\nnope = 1\n").is_err());
    }
}
