//! What a token grants, and the scope checks every enforcer (edge, NATS callout) applies the same way.

use serde::{Deserialize, Serialize};

/// Where a client may publish. goim clients publish only through op 4, which goes to the ingress
/// subject (`ingress`); the room and user rights apply to native NATS clients publishing directly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishRights {
    /// Op 4 (and native publishes to `ingress.…` of its allowed rooms) is forwarded upstream.
    pub ingress: bool,
    /// Room ids it may publish into directly (`room.<type>.<id>`).
    pub rooms: Vec<String>,
    /// Room id prefixes it may publish into directly (e.g. `live://`).
    pub room_prefixes: Vec<String>,
    /// Mids it may publish to directly (`user.<mid>`).
    pub users: Vec<i64>,
}

impl PublishRights {
    pub fn may_publish_room(&self, room_id: &str) -> bool {
        room_allowed(room_id, &self.rooms, &self.room_prefixes)
    }
}

/// The scope a token is minted for: what a backend asks `POST /auth/token` or `auth.mint` for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grant {
    /// The user (goim mid); 0 = anonymous.
    pub mid: i64,
    /// Binds the connection key: the auth body's key must be this one (or empty). Without it the edge
    /// gives every connection a fresh random key, so no client can take over another's key.
    pub key: Option<String>,
    /// Room ids the client may be in, exactly (`live://1000`).
    pub rooms: Vec<String>,
    /// Room id prefixes the client may be in (`live://` = every live room).
    pub room_prefixes: Vec<String>,
    /// Ops the client may put in its accept set (for user, key and broadcast pushes).
    pub accepts: Vec<i32>,
    pub publish: PublishRights,
    /// Lifetime in seconds; the minter caps it at its configured maximum. None = the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The mid as a string (JWT convention); `mid` is authoritative.
    pub sub: String,
    pub mid: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default)]
    pub room_prefixes: Vec<String>,
    #[serde(default)]
    pub accepts: Vec<i32>,
    #[serde(default)]
    pub publish: PublishRights,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
}

fn room_allowed(room_id: &str, rooms: &[String], prefixes: &[String]) -> bool {
    rooms.iter().any(|r| r == room_id) || prefixes.iter().any(|p| !p.is_empty() && room_id.starts_with(p.as_str()))
}

impl Claims {
    /// May the client be in `room_id`? The empty room (no room) is always allowed.
    pub fn may_join(&self, room_id: &str) -> bool {
        room_id.is_empty() || room_allowed(room_id, &self.rooms, &self.room_prefixes)
    }

    /// May the client accept pushes of `op`?
    pub fn may_accept(&self, op: i32) -> bool {
        self.accepts.contains(&op)
    }

    /// May the client's op-4 messages go upstream?
    pub fn may_send_ingress(&self) -> bool {
        self.publish.ingress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "7".into(),
            mid: 7,
            key: None,
            rooms: vec!["chat://1".into()],
            room_prefixes: vec!["live://".into(), String::new()],
            accepts: vec![1000],
            publish: PublishRights::default(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: "j".into(),
        }
    }

    #[test]
    fn room_scope_is_exact_or_prefix() {
        let c = claims();
        assert!(c.may_join(""));
        assert!(c.may_join("chat://1"));
        assert!(!c.may_join("chat://10"));
        assert!(c.may_join("live://1000"));
        assert!(!c.may_join("live:/1000"));
        // An empty prefix grants nothing (it would otherwise match every room).
        assert!(!c.may_join("other://1"));
    }

    #[test]
    fn accepts_and_publish() {
        let mut c = claims();
        assert!(c.may_accept(1000));
        assert!(!c.may_accept(1001));
        assert!(!c.may_send_ingress());
        c.publish.ingress = true;
        c.publish.room_prefixes = vec!["live://".into()];
        assert!(c.may_send_ingress());
        assert!(c.publish.may_publish_room("live://5"));
        assert!(!c.publish.may_publish_room("chat://1"));
    }

    #[test]
    fn grant_rejects_unknown_fields() {
        assert!(serde_json::from_str::<Grant>(r#"{"mid":1,"roms":["x"]}"#).is_err());
        let g: Grant = serde_json::from_str(r#"{"mid":1,"rooms":["live://1"],"publish":{"ingress":true}}"#).unwrap();
        assert_eq!(g.rooms, vec!["live://1".to_string()]);
        assert!(g.publish.ingress);
    }
}
