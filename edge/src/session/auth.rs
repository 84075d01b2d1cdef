//! Parsing and bounds of goim's op-7 auth body and of the op-14/16 accept lists: pure functions.
//!
//! goim decodes the body with Go's `encoding/json`: missing or `null` fields take their zero value,
//! unknown fields are ignored, and a wrong type (`"mid":"123"`) is an error. We do the same, plus an
//! optional `token` field (verified once authsvc lands) and bounds on the key, room and accept set.

use serde::Deserialize;

use crate::config::LimitsConfig;

/// The auth body as sent by goim clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthBody {
    pub mid: i64,
    pub key: String,
    pub room_id: String,
    pub platform: String,
    pub accepts: Vec<i32>,
    pub token: Option<String>,
    /// History resume: the last sequence seen per class (`room`, `user`, `broadcast`).
    pub resume: Option<Resume>,
}

/// `"resume": {"room": seq, "user": seq, "broadcast": seq}` in the auth body; each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    pub room: Option<u64>,
    pub user: Option<u64>,
    pub broadcast: Option<u64>,
}

#[derive(Deserialize)]
struct Wire {
    mid: Option<i64>,
    key: Option<String>,
    room_id: Option<String>,
    platform: Option<String>,
    accepts: Option<Vec<i32>>,
    token: Option<String>,
    resume: Option<Resume>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth body is not goim auth JSON: {0}")]
    Json(String),
    #[error("key is {0} bytes, more than limits.max_key_len")]
    KeyTooLong(usize),
    #[error("room_id is {0} bytes, more than limits.max_room_id_len")]
    RoomTooLong(usize),
    #[error("accepts holds {0} ops, more than limits.max_accepts")]
    TooManyAccepts(usize),
}

/// Parse and bound-check an auth body.
pub fn parse_auth_body(body: &[u8], limits: &LimitsConfig) -> Result<AuthBody, AuthError> {
    let w: Wire = serde_json::from_slice(body).map_err(|e| AuthError::Json(e.to_string()))?;
    let auth = AuthBody {
        mid: w.mid.unwrap_or(0),
        key: w.key.unwrap_or_default(),
        room_id: w.room_id.unwrap_or_default(),
        platform: w.platform.unwrap_or_default(),
        accepts: w.accepts.unwrap_or_default(),
        token: w.token,
        resume: w.resume,
    };
    if auth.key.len() > limits.max_key_len {
        return Err(AuthError::KeyTooLong(auth.key.len()));
    }
    check_room(&auth.room_id, limits)?;
    if auth.accepts.len() > limits.max_accepts {
        return Err(AuthError::TooManyAccepts(auth.accepts.len()));
    }
    Ok(auth)
}

/// Check a room id from auth or op 12 against the configured bound.
pub fn check_room(room_id: &str, limits: &LimitsConfig) -> Result<(), AuthError> {
    if room_id.len() > limits.max_room_id_len {
        return Err(AuthError::RoomTooLong(room_id.len()));
    }
    Ok(())
}

/// Parse an op-14/16 body: comma-separated int32 ops. `None` if any element is not an int32, in which
/// case goim ignores the whole request (but still echoes it).
pub fn parse_ops(body: &[u8]) -> Option<Vec<i32>> {
    let text = std::str::from_utf8(body).ok()?;
    text.split(',').map(|s| s.parse::<i32>().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    #[test]
    fn goim_js_demo_body() {
        let a = parse_auth_body(
            br#"{"mid":123, "room_id":"live://1000", "platform":"web", "accepts":[1000,1001,1002]}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(a.mid, 123);
        assert_eq!(a.key, "");
        assert_eq!(a.room_id, "live://1000");
        assert_eq!(a.platform, "web");
        assert_eq!(a.accepts, vec![1000, 1001, 1002]);
        assert_eq!(a.token, None);
    }

    #[test]
    fn go_zero_values_and_unknown_fields() {
        let a = parse_auth_body(br#"{"mid":null,"extra":{"x":1},"token":"t"}"#, &limits()).unwrap();
        assert_eq!(a.mid, 0);
        assert!(a.accepts.is_empty());
        assert_eq!(a.token.as_deref(), Some("t"));
        assert_eq!(parse_auth_body(b"{}", &limits()).unwrap(), AuthBody::default());
        let r = parse_auth_body(br#"{"resume":{"room":5,"user":1073741830}}"#, &limits()).unwrap();
        assert_eq!(r.resume, Some(Resume { room: Some(5), user: Some(1073741830), broadcast: None }));
        assert!(parse_auth_body(br#"{"resume":{"rooms":5}}"#, &limits()).is_err());
    }

    #[test]
    fn wrong_types_and_bad_json_are_errors() {
        for bad in [
            &br#"{"mid":"123"}"#[..],
            br#"{"mid":1.5}"#,
            br#"{"accepts":["1000"]}"#,
            br#"{"accepts":[4294967296]}"#,
            br#"{"room_id":5}"#,
            b"not json",
            b"",
            br#"{"mid":1} trailing"#,
            b"[1,2]",
        ] {
            assert!(
                matches!(parse_auth_body(bad, &limits()), Err(AuthError::Json(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bounds() {
        let long_key = format!(r#"{{"key":"{}"}}"#, "k".repeat(257));
        assert_eq!(parse_auth_body(long_key.as_bytes(), &limits()), Err(AuthError::KeyTooLong(257)));
        let long_room = format!(r#"{{"room_id":"{}"}}"#, "r".repeat(300));
        assert_eq!(parse_auth_body(long_room.as_bytes(), &limits()), Err(AuthError::RoomTooLong(300)));
        let many: Vec<String> = (0..1025).map(|i| i.to_string()).collect();
        let body = format!(r#"{{"accepts":[{}]}}"#, many.join(","));
        assert_eq!(parse_auth_body(body.as_bytes(), &limits()), Err(AuthError::TooManyAccepts(1025)));
    }

    #[test]
    fn ops_lists_follow_strconv() {
        assert_eq!(parse_ops(b"1000,1001"), Some(vec![1000, 1001]));
        assert_eq!(parse_ops(b"-5,+7"), Some(vec![-5, 7]));
        assert_eq!(parse_ops(b"1000, 1001"), None);
        assert_eq!(parse_ops(b"1000,x"), None);
        assert_eq!(parse_ops(b""), None);
        assert_eq!(parse_ops(b"1000,"), None);
        assert_eq!(parse_ops(b"2147483648"), None);
        assert_eq!(parse_ops(&[0xff]), None);
    }
}
