//! The three history streams (one per subject class, so retention can differ per class), their
//! idempotent provisioning, and which subject is stored where.
//!
//! Provisioning never deletes anything: a missing stream is created, one whose settings differ from
//! the config is updated (starting from its current config, so settings made by hand that this
//! service does not manage are kept), and a change nats-server cannot apply in place (storage type,
//! retention) stops the start with an error saying so. While JetStream is unavailable (no meta leader
//! yet, JetStream off, a timeout) the attempt is retried.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{self, DiscardPolicy, Republish, RetentionPolicy, StorageType};
use async_nats::jetstream::Context;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Config, Storage, StreamSettings};

/// Where the streams re-emit every stored message: `live.<original subject>`, with the headers
/// `Nats-Stream`, `Nats-Subject`, `Nats-Sequence`, `Nats-Time-Stamp` and `Nats-Last-Sequence`.
pub const LIVE_PREFIX: &str = goim_edge::subjects::LIVE_PREFIX;
pub const REPUBLISH_SRC: &str = ">";
pub const REPUBLISH_DEST: &str = "live.>";

/// A subject class, with its own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Rooms,
    Users,
    Broadcast,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Rooms, Class::Users, Class::Broadcast];

    /// The key in the config and in `history.info`.
    pub fn key(self) -> &'static str {
        match self {
            Class::Rooms => "rooms",
            Class::Users => "users",
            Class::Broadcast => "broadcast",
        }
    }

    /// Every subject of the class lies under this filter.
    pub fn namespace(self) -> &'static str {
        match self {
            Class::Rooms => "room.>",
            Class::Users => "user.>",
            Class::Broadcast => "broadcast",
        }
    }
}

/// Is `s` a valid subject or subject filter: non-empty tokens without whitespace, `>` only last?
pub fn valid_filter(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            && (*t != ">" || i == tokens.len() - 1)
            && (t.len() == 1 || !t.contains(['*', '>']))
    })
}

/// Does the subject filter `filter` (with `*` and `>`) match the literal subject `subject`?
pub fn filter_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is every subject `inner` can match also matched by `outer`? (Enough for the class namespaces.)
fn filter_within(inner: &str, outer: &str) -> bool {
    let i: Vec<&str> = inner.split('.').collect();
    let o: Vec<&str> = outer.split('.').collect();
    for (k, ot) in o.iter().enumerate() {
        if *ot == ">" {
            return i.len() > k;
        }
        match i.get(k) {
            Some(it) if *ot == "*" => {
                if *it == ">" {
                    return false;
                }
            }
            Some(it) if it == ot => {}
            _ => return false,
        }
    }
    i.len() == o.len()
}

fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

/// Check one class's settings (used by config validation).
pub fn validate_settings(class: Class, s: &StreamSettings) -> Result<(), String> {
    let k = class.key();
    if !valid_stream_name(&s.stream) {
        return Err(format!("{k}.stream = {:?} is not a valid stream name", s.stream));
    }
    if s.subjects.is_empty() {
        return Err(format!("{k}.subjects is empty (set {k}.enabled = false to store nothing)"));
    }
    for subj in &s.subjects {
        if !valid_filter(subj) {
            return Err(format!("{k}.subjects: {subj:?} is not a valid subject"));
        }
        if !filter_within(subj, class.namespace()) {
            return Err(format!("{k}.subjects: {subj:?} is outside {}", class.namespace()));
        }
    }
    if s.max_msgs_per_subject < 1 {
        return Err(format!("{k}.max_msgs_per_subject must be at least 1"));
    }
    if s.max_bytes == 0 || s.max_bytes < -1 {
        return Err(format!("{k}.max_bytes must be positive or -1 (no limit)"));
    }
    if ![1, 3, 5].contains(&s.replicas) {
        return Err(format!("{k}.replicas must be 1, 3 or 5"));
    }
    if s.duplicate_window_secs == 0 {
        return Err(format!("{k}.duplicate_window_secs must be positive"));
    }
    if s.max_age_secs > 0 && s.duplicate_window_secs > s.max_age_secs {
        return Err(format!("{k}.duplicate_window_secs must not exceed {k}.max_age_secs"));
    }
    Ok(())
}

/// What is stored: the enabled classes with their settings.
#[derive(Debug, Clone)]
pub struct Catalog {
    classes: Vec<(Class, StreamSettings)>,
}

impl Catalog {
    pub fn new(cfg: &Config) -> Catalog {
        Catalog { classes: Class::ALL.iter().map(|c| (*c, cfg.class(*c))).collect() }
    }

    pub fn settings(&self, class: Class) -> &StreamSettings {
        &self.classes.iter().find(|(c, _)| *c == class).expect("every class is in the catalog").1
    }

    pub fn enabled(&self) -> impl Iterator<Item = (Class, &StreamSettings)> {
        self.classes.iter().filter(|(_, s)| s.enabled).map(|(c, s)| (*c, s))
    }

    /// The stream storing `subject` of `class`, if any.
    pub fn stream_for(&self, class: Class, subject: &str) -> Option<&str> {
        let s = self.settings(class);
        (s.enabled && s.subjects.iter().any(|f| filter_matches(f, subject))).then_some(s.stream.as_str())
    }

    /// The `history.info` answer.
    pub fn info(&self, max_resume: u64) -> InfoDoc {
        let streams = Class::ALL
            .iter()
            .map(|c| {
                let s = self.settings(*c);
                let doc = s.enabled.then(|| StreamDoc {
                    stream: s.stream.clone(),
                    subjects: s.subjects.clone(),
                    max_msgs_per_subject: s.max_msgs_per_subject,
                    max_age_secs: s.max_age_secs,
                });
                (c.key().to_string(), doc)
            })
            .collect();
        InfoDoc { streams, max_resume }
    }
}

/// `history.info`: which subjects are stored where, and how far edges may replay.
#[derive(Debug, Clone, Serialize)]
pub struct InfoDoc {
    /// `rooms`, `users`, `broadcast` → the stream, or null when the class is not stored.
    pub streams: BTreeMap<String, Option<StreamDoc>>,
    pub max_resume: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamDoc {
    pub stream: String,
    pub subjects: Vec<String>,
    pub max_msgs_per_subject: i64,
    /// 0 = no age limit.
    pub max_age_secs: u64,
}

/// The parts of a stream's config this service manages, applied onto `base` (a new stream's
/// defaults, or the existing stream's config).
pub fn apply_settings(class: Class, s: &StreamSettings, mut base: stream::Config) -> stream::Config {
    base.name = s.stream.clone();
    if base.description.is_none() {
        base.description = Some(format!("goim-nats history of {} (managed by goim-history)", class.namespace()));
    }
    base.subjects = s.subjects.clone();
    base.retention = RetentionPolicy::Limits;
    base.max_messages_per_subject = s.max_msgs_per_subject;
    base.max_age = Duration::from_secs(s.max_age_secs);
    base.max_bytes = s.max_bytes;
    base.storage = match s.storage {
        Storage::File => StorageType::File,
        Storage::Memory => StorageType::Memory,
    };
    base.num_replicas = s.replicas;
    base.duplicate_window = Duration::from_secs(s.duplicate_window_secs);
    base.discard = DiscardPolicy::Old;
    base.allow_direct = true;
    base.republish = Some(Republish {
        source: REPUBLISH_SRC.into(),
        destination: REPUBLISH_DEST.into(),
        headers_only: false,
    });
    base
}

/// The managed settings that differ between `have` and `want` (names, for the log).
pub fn differences(have: &stream::Config, want: &stream::Config) -> Vec<&'static str> {
    let mut d = Vec::new();
    let mut hs = have.subjects.clone();
    let mut ws = want.subjects.clone();
    hs.sort();
    ws.sort();
    if hs != ws {
        d.push("subjects");
    }
    if have.retention != want.retention {
        d.push("retention");
    }
    if have.max_messages_per_subject != want.max_messages_per_subject {
        d.push("max_msgs_per_subject");
    }
    if have.max_age != want.max_age {
        d.push("max_age");
    }
    // The server reports -1 for "no limit" whatever was sent.
    if have.max_bytes.max(-1) != want.max_bytes.max(-1) {
        d.push("max_bytes");
    }
    if have.storage != want.storage {
        d.push("storage");
    }
    if have.num_replicas.max(1) != want.num_replicas.max(1) {
        d.push("num_replicas");
    }
    if have.duplicate_window != want.duplicate_window {
        d.push("duplicate_window");
    }
    if have.discard != want.discard {
        d.push("discard");
    }
    if have.allow_direct != want.allow_direct {
        d.push("allow_direct");
    }
    if have.republish != want.republish {
        d.push("republish");
    }
    d
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Worth retrying: JetStream not (yet) available, timeouts.
    #[error("JetStream unavailable: {0}")]
    Unavailable(String),
    /// Retrying will not help: the config or the existing stream must change.
    #[error("{0}")]
    Fatal(String),
}

/// What provisioning did to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated(Vec<&'static str>),
    Unchanged,
}

fn request_error(what: &str, e: async_nats::jetstream::context::RequestError) -> ProvisionError {
    // No responders, timeouts, a lost connection: JetStream is not (yet) there.
    ProvisionError::Unavailable(format!("{what}: {e}"))
}

fn api_error(what: &str, e: async_nats::jetstream::Error) -> ProvisionError {
    let transient = e.code() == 503
        || e.code() == 408
        || [ErrorCode::CLUSTER_NOT_AVAILABLE, ErrorCode::JETSTREAM_NOT_ENABLED, ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT]
            .contains(&e.error_code());
    if transient {
        ProvisionError::Unavailable(format!("{what}: {e}"))
    } else {
        ProvisionError::Fatal(format!("{what}: {e}"))
    }
}

/// Create or update one class's stream once.
pub async fn provision_one(js: &Context, class: Class, s: &StreamSettings) -> Result<Outcome, ProvisionError> {
    let name = &s.stream;
    let info: Response<stream::Info> = js
        .request(format!("STREAM.INFO.{name}"), &())
        .await
        .map_err(|e| request_error(&format!("stream info {name}"), e))?;
    match info {
        Response::Err { error } if error.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            let want = apply_settings(class, s, stream::Config::default());
            let created: Response<stream::Info> = js
                .request(format!("STREAM.CREATE.{name}"), &want)
                .await
                .map_err(|e| request_error(&format!("create stream {name}"), e))?;
            match created {
                Response::Ok(_) => Ok(Outcome::Created),
                // Another replica created it at the same moment: check it on the next pass.
                Response::Err { error } if error.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                    Err(ProvisionError::Unavailable(format!("stream {name} was created concurrently")))
                }
                Response::Err { error } => Err(api_error(&format!("create stream {name}"), error)),
            }
        }
        Response::Err { error } => Err(api_error(&format!("stream info {name}"), error)),
        Response::Ok(info) => {
            let have = info.config;
            let want = apply_settings(class, s, have.clone());
            let diff = differences(&have, &want);
            if diff.is_empty() {
                return Ok(Outcome::Unchanged);
            }
            if diff.contains(&"storage") {
                return Err(ProvisionError::Fatal(format!(
                    "stream {name} has storage {:?} but the config says {:?}: nats-server cannot change the \
                     storage of a stream in place and goim-history never deletes history; set {}.storage back \
                     or migrate the stream yourself",
                    have.storage,
                    want.storage,
                    class.key()
                )));
            }
            if diff.contains(&"retention") {
                return Err(ProvisionError::Fatal(format!(
                    "stream {name} has retention {:?}; goim-history needs limits retention and never deletes \
                     history: give {}.stream another name or migrate the stream yourself",
                    have.retention,
                    class.key()
                )));
            }
            let updated: Response<stream::Info> = js
                .request(format!("STREAM.UPDATE.{name}"), &want)
                .await
                .map_err(|e| request_error(&format!("update stream {name}"), e))?;
            match updated {
                Response::Ok(_) => Ok(Outcome::Updated(diff)),
                Response::Err { error } => Err(api_error(&format!("update stream {name} ({})", diff.join(", ")), error)),
            }
        }
    }
}

/// Provision every enabled class once.
pub async fn provision_all(js: &Context, catalog: &Catalog) -> Result<(), ProvisionError> {
    for (class, s) in catalog.enabled() {
        match provision_one(js, class, s).await? {
            Outcome::Created => info!(stream = %s.stream, subjects = ?s.subjects, "history stream created"),
            Outcome::Updated(diff) => info!(stream = %s.stream, changed = ?diff, "history stream updated to the config"),
            Outcome::Unchanged => info!(stream = %s.stream, "history stream up to date"),
        }
    }
    Ok(())
}

/// Provision at start: retry while JetStream is unavailable, fail on a permanent error.
pub async fn provision_until_ready(js: &Context, catalog: &Catalog, retry_max: Duration) -> Result<(), ProvisionError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match provision_all(js, catalog).await {
            Ok(()) => return Ok(()),
            Err(ProvisionError::Unavailable(e)) => {
                warn!(error = %e, retry_in = ?backoff, "cannot provision the history streams yet (JetStream not ready, or this NATS user may not use the JetStream API)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(retry_max);
            }
            Err(e) => return Err(e),
        }
    }
}

/// After start: re-check every `every`, re-creating a stream that has disappeared (memory storage after
/// a server restart) and logging what cannot be fixed.
pub fn spawn_recheck(js: Context, catalog: Catalog, every: Duration) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            for (class, s) in catalog.enabled() {
                match provision_one(&js, class, s).await {
                    Ok(Outcome::Unchanged) => {}
                    Ok(Outcome::Created) => warn!(stream = %s.stream, "history stream was missing: re-created (messages pushed meanwhile were not stored)"),
                    Ok(Outcome::Updated(diff)) => warn!(stream = %s.stream, changed = ?diff, "history stream had drifted from the config: updated"),
                    Err(e) => warn!(stream = %s.stream, error = %e, "cannot check the history stream"),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(filter_matches("room.>", "room.live.1000"));
        assert!(filter_matches("room.>", "room.lobby"));
        assert!(!filter_matches("room.>", "room"));
        assert!(filter_matches("room.chat.>", "room.chat.1"));
        assert!(!filter_matches("room.chat.>", "room.live.1"));
        assert!(filter_matches("room.*.1", "room.live.1"));
        assert!(!filter_matches("room.*", "room.live.1"));
        assert!(filter_matches("broadcast", "broadcast"));
        assert!(!filter_matches("broadcast", "broadcast.x"));
        assert!(valid_filter("room.>") && valid_filter("room.*.x") && valid_filter("broadcast"));
        assert!(!valid_filter("room.>.x") && !valid_filter("room..x") && !valid_filter("room.a b") && !valid_filter(""));
        assert!(!valid_filter("room.a>"));
        assert!(filter_within("room.chat.>", "room.>"));
        assert!(filter_within("room.*", "room.>"));
        assert!(filter_within("room.>", "room.>"));
        assert!(!filter_within(">", "room.>"));
        assert!(!filter_within("room", "room.>"));
        assert!(!filter_within("user.1", "room.>"));
        assert!(filter_within("broadcast", "broadcast"));
        assert!(!filter_within("broadcast.x", "broadcast"));
        assert!(!filter_within("*", "broadcast"));
    }

    #[test]
    fn stream_config_carries_every_managed_setting() {
        let s = StreamSettings::defaults_for(Class::Rooms);
        let c = apply_settings(Class::Rooms, &s, stream::Config::default());
        assert_eq!(c.name, "GOIM_ROOMS");
        assert_eq!(c.subjects, vec!["room.>".to_string()]);
        assert_eq!(c.max_messages_per_subject, 10_000);
        assert_eq!(c.discard, DiscardPolicy::Old);
        assert!(c.allow_direct);
        let rp = c.republish.clone().unwrap();
        assert_eq!((rp.source.as_str(), rp.destination.as_str(), rp.headers_only), (">", "live.>", false));
        assert_eq!(REPUBLISH_DEST, format!("{LIVE_PREFIX}.>"), "the edges' live prefix");
        assert!(differences(&c, &c).is_empty());
        let mut s2 = s.clone();
        s2.max_msgs_per_subject = 5;
        s2.max_age_secs = 10;
        let c2 = apply_settings(Class::Rooms, &s2, c.clone());
        assert_eq!(differences(&c, &c2), vec!["max_msgs_per_subject", "max_age"]);
        // Settings this service does not manage survive an update.
        let mut hand = c.clone();
        hand.description = Some("by hand".into());
        hand.metadata.insert("owner".into(), "ops".into());
        let c3 = apply_settings(Class::Rooms, &s2, hand);
        assert_eq!(c3.description.as_deref(), Some("by hand"));
        assert_eq!(c3.metadata.get("owner").map(String::as_str), Some("ops"));
    }

    #[test]
    fn jetstream_errors_are_classified() {
        let err = |code: u16, err_code: u64| -> async_nats::jetstream::Error {
            serde_json::from_value(serde_json::json!({"code": code, "err_code": err_code, "description": "x"})).unwrap()
        };
        // No meta leader yet / JetStream off: retry.
        assert!(matches!(api_error("s", err(503, 10008)), ProvisionError::Unavailable(_)));
        assert!(matches!(api_error("s", err(503, 10039)), ProvisionError::Unavailable(_)));
        assert!(matches!(api_error("s", err(500, 10076)), ProvisionError::Unavailable(_)));
        // A bad config or a refused update: stop.
        assert!(matches!(api_error("s", err(400, 10052)), ProvisionError::Fatal(_)));
        assert!(matches!(api_error("s", err(500, 10065)), ProvisionError::Fatal(_)));
    }

    #[test]
    fn catalog_routes_subjects_to_streams() {
        let cfg = Config::parse("[rooms]\nsubjects = [\"room.chat.>\"]\n[broadcast]\nenabled = false\n").unwrap();
        let c = Catalog::new(&cfg);
        assert_eq!(c.stream_for(Class::Rooms, "room.chat.1"), Some("GOIM_ROOMS"));
        assert_eq!(c.stream_for(Class::Rooms, "room.live.1"), None);
        assert_eq!(c.stream_for(Class::Users, "user.5"), Some("GOIM_USERS"));
        assert_eq!(c.stream_for(Class::Broadcast, "broadcast"), None);
        let info = serde_json::to_value(c.info(7)).unwrap();
        assert_eq!(info["max_resume"], 7);
        assert_eq!(info["streams"]["rooms"]["subjects"], serde_json::json!(["room.chat.>"]));
        assert_eq!(info["streams"]["rooms"]["stream"], "GOIM_ROOMS");
        assert_eq!(info["streams"]["users"]["max_age_secs"], 604_800);
        assert!(info["streams"]["broadcast"].is_null());
    }
}
