//! The NATS subject map (the contract in `subjects.md`) and the reversible escaping that keeps
//! client-supplied strings from ever injecting `.`, `*`, `>`, whitespace or control bytes into a subject.
//!
//! Escaping keeps `[A-Za-z0-9_-]` and writes every other byte as `=` + two upper-case hex digits; the
//! empty string is the single token `=` (which no non-empty input produces). The result is always one
//! valid NATS token and a valid JetStream KV key.

use std::fmt::Write;

/// Subject prefix of room pushes: `room.<type>.<id>` or `room.<name>` for ids without `://`.
pub const ROOM_PREFIX: &str = "room";
/// Subject prefix of user (mid) pushes: `user.<mid>`.
pub const USER_PREFIX: &str = "user";
/// Subject prefix of key (connection) pushes: `key.<escaped key>`.
pub const KEY_PREFIX: &str = "key";
/// Every connection on every edge.
pub const BROADCAST: &str = "broadcast";
/// Where op-4 messages from clients go: `ingress.<room subject>` or `ingress.none`.
pub const INGRESS_PREFIX: &str = "ingress";
/// Edge-to-edge notice that a key has (re)connected somewhere: older holders are kicked.
pub const KICK: &str = "ctl.kick";
/// authsvc: mint a token (request/reply, JSON grant → token).
pub const AUTH_MINT: &str = "auth.mint";
/// authsvc: decide a delegated goim connect (request/reply, raw auth body → token).
pub const AUTH_CONNECT: &str = "auth.connect";
/// authsvc: the public token keys (JWKS), published at start and on request via [`AUTH_KEYS_GET`].
pub const AUTH_KEYS: &str = "auth.keys";
/// authsvc: ask for the public token keys (request/reply).
pub const AUTH_KEYS_GET: &str = "auth.keys.get";
/// goim-history: which subjects are stored (request/reply).
pub const HISTORY_INFO: &str = "history.info";
/// goim-history: read a subject's history, scoped by the caller's token (request/reply).
pub const HISTORY_GET: &str = "history.get";
/// Prefix of the republished (sequenced) copy of a stored subject: `live.<subject>`.
pub const LIVE_PREFIX: &str = "live";
/// Header carrying the business op of a push.
pub const OP_HEADER: &str = "Goim-Op";
/// Header of a `broadcast` push: deliver to at most this many connections per second, cluster-wide
/// (goim's `/goim/push/all?speed=`); each edge takes its share (speed / live edges, at least 1).
pub const SPEED_HEADER: &str = "Goim-Speed";

/// Escape one client-supplied string into a single NATS subject token.
pub fn escape_token(raw: &str) -> String {
    if raw.is_empty() {
        return "=".to_string();
    }
    let mut out = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "={b:02X}");
        }
    }
    out
}

/// Why a token is not the output of [`escape_token`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnescapeError {
    #[error("byte {0:#04x} is not allowed in an escaped token")]
    BadByte(u8),
    #[error("'=' must be followed by two hex digits")]
    BadEscape,
    #[error("escaped bytes are not UTF-8")]
    NotUtf8,
}

/// Inverse of [`escape_token`].
pub fn unescape_token(token: &str) -> Result<String, UnescapeError> {
    if token == "=" {
        return Ok(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'=' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UnescapeError::BadEscape)?;
            let s = std::str::from_utf8(hex).map_err(|_| UnescapeError::BadEscape)?;
            let v = u8::from_str_radix(s, 16).map_err(|_| UnescapeError::BadEscape)?;
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return Err(UnescapeError::BadByte(b));
        }
    }
    String::from_utf8(out).map_err(|_| UnescapeError::NotUtf8)
}

/// The subject of a goim room id: `live://1000` → `room.live.1000`; an id without `://` (`lobby`)
/// → `room.lobby`. The number of tokens tells the two forms apart, so the map is reversible.
pub fn room_subject(room_id: &str) -> String {
    match room_id.split_once("://") {
        Some((kind, id)) => format!("{ROOM_PREFIX}.{}.{}", escape_token(kind), escape_token(id)),
        None => format!("{ROOM_PREFIX}.{}", escape_token(room_id)),
    }
}

/// Inverse of [`room_subject`]; `None` for a subject outside the room map.
pub fn room_id_of(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(ROOM_PREFIX)?.strip_prefix('.')?;
    let mut parts = rest.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(id), None) => {
            Some(format!("{}://{}", unescape_token(kind).ok()?, unescape_token(id).ok()?))
        }
        (Some(name), None, None) => unescape_token(name).ok(),
        _ => None,
    }
}

/// `user.<mid>`; mids are int64, so no escaping is needed.
pub fn user_subject(mid: i64) -> String {
    format!("{USER_PREFIX}.{mid}")
}

/// `key.<escaped key>`.
pub fn key_subject(key: &str) -> String {
    format!("{KEY_PREFIX}.{}", escape_token(key))
}

/// Where a client's op-4 message is published: `ingress.room.live.1000`, or `ingress.none` for a
/// connection in no room.
pub fn ingress_subject(room_subject: Option<&str>) -> String {
    match room_subject {
        Some(room) => format!("{INGRESS_PREFIX}.{room}"),
        None => format!("{INGRESS_PREFIX}.none"),
    }
}

/// Parse a `Goim-Op` header value.
pub fn parse_op(value: &str) -> Option<i32> {
    value.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_safe_token(t: &str) -> bool {
        !t.is_empty()
            && t != "*"
            && t != ">"
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=')
    }

    #[test]
    fn goim_rooms_map_to_readable_subjects() {
        assert_eq!(room_subject("live://1000"), "room.live.1000");
        assert_eq!(room_subject("test://1"), "room.test.1");
        assert_eq!(room_subject("lobby"), "room.lobby");
        assert_eq!(room_subject("://x"), "room.=.x");
        assert_eq!(room_subject("a.b://c d"), "room.a=2Eb.c=20d");
        assert_eq!(room_subject("live://>"), "room.live.=3E");
        assert_eq!(room_subject("live://*"), "room.live.=2A");
        assert_eq!(room_subject("live://1\r\nPUB x"), "room.live.1=0D=0APUB=20x");
        assert_eq!(room_subject("x://a://b"), "room.x.a=3A=2F=2Fb");
    }

    #[test]
    fn other_subjects() {
        assert_eq!(user_subject(123), "user.123");
        assert_eq!(user_subject(-5), "user.-5");
        assert_eq!(key_subject("ab-12"), "key.ab-12");
        assert_eq!(key_subject("a=b"), "key.a=3Db");
        assert_eq!(ingress_subject(Some("room.live.1000")), "ingress.room.live.1000");
        assert_eq!(ingress_subject(None), "ingress.none");
        assert_eq!(parse_op(" 1001 "), Some(1001));
        assert_eq!(parse_op("x"), None);
    }

    #[test]
    fn unescape_rejects_non_tokens() {
        assert_eq!(unescape_token("a.b"), Err(UnescapeError::BadByte(b'.')));
        assert_eq!(unescape_token("a=4"), Err(UnescapeError::BadEscape));
        assert_eq!(unescape_token("=ZZ"), Err(UnescapeError::BadEscape));
        assert_eq!(unescape_token("=FF"), Err(UnescapeError::NotUtf8));
        assert_eq!(room_id_of("user.1"), None);
        assert_eq!(room_id_of("room.a.b.c"), None);
    }

    proptest! {
        #[test]
        fn escape_is_a_safe_reversible_token(s in any::<String>()) {
            let t = escape_token(&s);
            prop_assert!(is_safe_token(&t), "unsafe token {:?}", t);
            prop_assert_eq!(unescape_token(&t).unwrap(), s);
        }

        #[test]
        fn room_map_is_reversible(s in any::<String>()) {
            let subject = room_subject(&s);
            let tokens: Vec<&str> = subject.split('.').collect();
            prop_assert!(tokens.len() == 2 || tokens.len() == 3);
            prop_assert_eq!(tokens[0], "room");
            for t in &tokens[1..] {
                prop_assert!(is_safe_token(t));
            }
            prop_assert_eq!(room_id_of(&subject).unwrap(), s);
        }

        #[test]
        fn distinct_rooms_never_share_a_subject(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(room_subject(&a), room_subject(&b));
        }
    }
}
