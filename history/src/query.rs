//! History read requests (the same parameters over HTTP and NATS), their validation, the answer, and
//! every refusal with its status.
//!
//! Parameters: exactly one of `room` (a goim room id, `live://1000`), `user` (a mid) or
//! `broadcast=true`; `before` (a stream sequence, exclusive; absent = the newest) or `after` (a
//! stream sequence, exclusive: the oldest messages after it, for catching up); `limit` (default
//! `read.default_limit`, at most `read.max_limit`).
//!
//! - HTTP: `GET /history?room=live://1000&before=120&limit=50` with `Authorization: Bearer <token>`.
//! - NATS: a request to `history.get` with the JSON body
//!   `{"token": "...", "room": "live://1000", "before": 120, "limit": 50}` (`"user": 123` /
//!   `"broadcast": true` instead of `room`).

use serde::{Deserialize, Serialize};

/// Longest room id accepted (bytes, before escaping), as the edges' `limits.max_room_id_len`.
pub const MAX_ROOM_ID_LEN: usize = 256;

/// Whose history is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Room(String),
    User(i64),
    Broadcast,
}

impl Target {
    pub fn class(&self) -> crate::streams::Class {
        match self {
            Target::Room(_) => crate::streams::Class::Rooms,
            Target::User(_) => crate::streams::Class::Users,
            Target::Broadcast => crate::streams::Class::Broadcast,
        }
    }

    /// The push subject (subjects.md §1–2).
    pub fn subject(&self) -> String {
        match self {
            Target::Room(r) => goim_edge::subjects::room_subject(r),
            Target::User(mid) => goim_edge::subjects::user_subject(*mid),
            Target::Broadcast => goim_edge::subjects::BROADCAST.to_string(),
        }
    }
}

/// A validated read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub target: Target,
    /// Exclusive upper bound (stream sequence); None = from the newest message.
    pub before: Option<u64>,
    /// Exclusive lower bound: the oldest `limit` messages after it instead (never with `before`).
    pub after: Option<u64>,
    pub limit: usize,
}

/// Why a request is not answered with a page. HTTP: the status and goim's error shape
/// `{"code": -status, "message": ...}`; NATS: `{"error": message, "code": status}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotStored(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::NotStored(_) => 404,
            Refusal::TooLarge(_) => 413,
            Refusal::Unavailable(_) => 503,
        }
    }

    /// The NATS answer.
    pub fn nats_body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "error": self.to_string(), "code": self.status() })).unwrap_or_default()
    }
}

/// Limits that validation needs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_limit: usize,
    pub max_limit: usize,
}

/// The parameters as they arrive, before validation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RawParams {
    pub room: Option<String>,
    pub user: Option<i64>,
    pub broadcast: Option<bool>,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

impl RawParams {
    pub fn validate(self, limits: Limits) -> Result<ReadRequest, Refusal> {
        let bad = |m: String| Err(Refusal::BadRequest(m));
        let broadcast = self.broadcast.unwrap_or(false);
        let target = match (self.room, self.user, broadcast) {
            (Some(room), None, false) => {
                if room.is_empty() {
                    return bad("room is empty".into());
                }
                if room.len() > MAX_ROOM_ID_LEN {
                    return bad(format!("room is longer than {MAX_ROOM_ID_LEN} bytes"));
                }
                Target::Room(room)
            }
            (None, Some(mid), false) => Target::User(mid),
            (None, None, true) => Target::Broadcast,
            (None, None, false) => return bad("name one of room, user or broadcast=true".into()),
            _ => return bad("name only one of room, user or broadcast=true".into()),
        };
        if self.before == Some(0) {
            return bad("before must be a stream sequence >= 1".into());
        }
        if self.before.is_some() && self.after.is_some() {
            return bad("name before or after, not both".into());
        }
        let limit = self.limit.unwrap_or(limits.default_limit);
        if limit == 0 || limit > limits.max_limit {
            return bad(format!("limit must be 1..={}", limits.max_limit));
        }
        Ok(ReadRequest { target, before: self.before, after: self.after, limit })
    }

    /// From an HTTP query string's pairs. Every parameter at most once; unknown ones are refused.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<RawParams, Refusal> {
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, Refusal> {
            v.trim().parse().map_err(|_| Refusal::BadRequest(format!("{name} = {v:?} is not a valid number")))
        }
        let mut p = RawParams::default();
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in pairs {
            if seen.contains(&k.as_str()) {
                return Err(Refusal::BadRequest(format!("{k} is given twice")));
            }
            match k.as_str() {
                "room" => p.room = Some(v.clone()),
                "user" => p.user = Some(num("user", v)?),
                "broadcast" => {
                    p.broadcast = Some(match v.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(Refusal::BadRequest(format!("broadcast = {v:?} is not true or false"))),
                    })
                }
                "before" => p.before = Some(num("before", v)?),
                "after" => p.after = Some(num("after", v)?),
                "limit" => p.limit = Some(num("limit", v)?),
                other => return Err(Refusal::BadRequest(format!("unknown parameter {other:?}"))),
            }
            seen.push(k);
        }
        Ok(p)
    }
}

/// The body of a `history.get` request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsRequest {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub user: Option<i64>,
    #[serde(default)]
    pub broadcast: Option<bool>,
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl NatsRequest {
    pub fn parse(body: &[u8]) -> Result<(Option<String>, RawParams), Refusal> {
        let r: NatsRequest =
            serde_json::from_slice(body).map_err(|e| Refusal::BadRequest(format!("invalid request body: {e}")))?;
        Ok((r.token, RawParams { room: r.room, user: r.user, broadcast: r.broadcast, before: r.before, after: r.after, limit: r.limit }))
    }
}

/// One stored push.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessageDoc {
    /// Stream sequence (per stream, so per class).
    pub seq: u64,
    /// When the stream stored it (RFC 3339, UTC, nanoseconds).
    pub time: String,
    /// The push's `Goim-Op` (the default op when absent).
    pub op: i32,
    /// The payload, base64 (standard alphabet, padded).
    pub body: String,
}

/// The answer to a read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PageDoc {
    /// The subject read, e.g. `room.live.1000`.
    pub subject: String,
    /// Oldest → newest; at most `limit`.
    pub messages: Vec<MessageDoc>,
    /// The oldest sequence still stored for the subject (0 = nothing stored).
    pub first_seq: u64,
    /// The newest sequence stored for the subject (0 = nothing stored).
    pub last_seq: u64,
    /// More messages exist in the direction read: older ones for a `before` read (ask again with
    /// `before = messages[0].seq`), newer ones for an `after` read (`after = messages[last].seq`).
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { default_limit: 50, max_limit: 500 };

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn http(q: &[(&str, &str)]) -> Result<ReadRequest, Refusal> {
        RawParams::from_pairs(&pairs(q))?.validate(L)
    }

    #[test]
    fn http_parameters() {
        let r = http(&[("room", "live://1000")]).unwrap();
        assert_eq!(r, ReadRequest { target: Target::Room("live://1000".into()), before: None, after: None, limit: 50 });
        assert_eq!(r.target.subject(), "room.live.1000");
        let r = http(&[("user", "123"), ("before", "77"), ("limit", "10")]).unwrap();
        assert_eq!(r, ReadRequest { target: Target::User(123), before: Some(77), after: None, limit: 10 });
        assert_eq!(r.target.subject(), "user.123");
        let r = http(&[("broadcast", "true"), ("limit", "500")]).unwrap();
        assert_eq!((r.target.clone(), r.target.subject()), (Target::Broadcast, "broadcast".to_string()));
        for bad in [
            &[][..],
            &[("room", "a"), ("user", "1")],
            &[("room", "a"), ("broadcast", "true")],
            &[("broadcast", "false")],
            &[("broadcast", "yes")],
            &[("room", "")],
            &[("user", "x")],
            &[("user", "99999999999999999999")],
            &[("room", "a"), ("limit", "0")],
            &[("room", "a"), ("limit", "501")],
            &[("room", "a"), ("limit", "-1")],
            &[("room", "a"), ("before", "0")],
            &[("room", "a"), ("before", "-3")],
            &[("room", "a"), ("room", "b")],
            &[("room", "a"), ("token", "t")],
            &[("room", "a"), ("before", "5"), ("after", "3")],
            &[("room", "a"), ("after", "x")],
        ] {
            assert!(matches!(http(bad), Err(Refusal::BadRequest(_))), "{bad:?} accepted");
        }
        let long = "x".repeat(MAX_ROOM_ID_LEN + 1);
        assert!(matches!(http(&[("room", long.as_str())]), Err(Refusal::BadRequest(_))));
        // Hostile room ids are fine: they are escaped into one subject token.
        assert_eq!(http(&[("room", "live://a.b>")]).unwrap().target.subject(), "room.live.a=2Eb=3E");
    }

    #[test]
    fn nats_body() {
        let (t, p) = NatsRequest::parse(br#"{"token":"abc","room":"live://1","before":5,"limit":2}"#).unwrap();
        assert_eq!(t.as_deref(), Some("abc"));
        assert_eq!(p.validate(L).unwrap(), ReadRequest { target: Target::Room("live://1".into()), before: Some(5), after: None, limit: 2 });
        let (t, p) = NatsRequest::parse(br#"{"user":-5}"#).unwrap();
        assert_eq!(t, None);
        assert_eq!(p.validate(L).unwrap().target, Target::User(-5));
        let (_, p) = NatsRequest::parse(br#"{"room":"a","after":0}"#).unwrap();
        assert_eq!(p.validate(L).unwrap().after, Some(0));
        let (_, p) = NatsRequest::parse(br#"{"broadcast":true}"#).unwrap();
        assert_eq!(p.validate(L).unwrap().target, Target::Broadcast);
        for bad in [&b"not json"[..], br#"{"room":1}"#, br#"{"rooms":"x"}"#, br#"{"user":"12"}"#, br#"{"before":-1}"#, b""] {
            assert!(matches!(NatsRequest::parse(bad), Err(Refusal::BadRequest(_))), "{:?} accepted", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn refusal_shapes() {
        let r = Refusal::Forbidden("no".into());
        assert_eq!(r.status(), 403);
        let v: serde_json::Value = serde_json::from_slice(&r.nats_body()).unwrap();
        assert_eq!(v, serde_json::json!({"error": "no", "code": 403}));
    }
}
