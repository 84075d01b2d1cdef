//! Who may read what. A caller presents either a goim token (verified locally against key files
//! and/or the keys authsvc announces on `auth.keys`, like the edges do) or a backend API key.
//!
//! | target | a token may read it when | an API key |
//! |---|---|---|
//! | room `R` | `claims.may_join(R)` (R in `rooms` or under one of `room_prefixes`) | always |
//! | user `M` | `claims.mid == M` and `M != 0` | always |
//! | broadcast | always (every connection receives broadcasts) | always |

use std::sync::Arc;

use goim_edge::access::FollowedKeys;
use goim_edge::subjects::AUTH_KEYS;
use goim_token::{Claims, KeySet, VerifyingKey};
use tracing::info;

use crate::config::TokensConfig;
use crate::query::{Refusal, Target};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Key(#[from] goim_token::KeyError),
    #[error("cannot read API key file {path}: {source}")]
    ApiKeyFile { path: String, source: std::io::Error },
    #[error("cannot subscribe to {AUTH_KEYS}: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A backend API key: reads anything stored.
    Backend,
    /// A goim token's holder.
    Token(Box<Claims>),
}

impl Caller {
    /// May this caller read `target`? (403 otherwise.)
    pub fn authorize(&self, target: &Target) -> Result<(), Refusal> {
        let claims = match self {
            Caller::Backend => return Ok(()),
            Caller::Token(c) => c,
        };
        match target {
            Target::Room(room) if claims.may_join(room) => Ok(()),
            Target::Room(room) => Err(Refusal::Forbidden(format!("the token does not grant room {room:?}"))),
            Target::User(mid) if *mid != 0 && claims.mid == *mid => Ok(()),
            Target::User(mid) => Err(Refusal::Forbidden(format!("the token is not for user {mid}"))),
            Target::Broadcast => Ok(()),
        }
    }
}

#[derive(Debug)]
pub struct Access {
    keys: Arc<FollowedKeys>,
    api_keys: Vec<String>,
}

impl Access {
    /// Load key files and API keys; with `keys_from_nats`, follow authsvc's announcements.
    pub async fn start(cfg: &TokensConfig, client: &async_nats::Client) -> Result<Arc<Access>, AccessError> {
        let mut file_keys = Vec::new();
        for k in &cfg.keys {
            file_keys.push(VerifyingKey::load(&k.id, k.alg, &k.file)?);
        }
        let mut api_keys: Vec<String> = cfg.api_keys.iter().filter(|k| !k.is_empty()).cloned().collect();
        for path in &cfg.api_key_files {
            let text = std::fs::read_to_string(path)
                .map_err(|source| AccessError::ApiKeyFile { path: path.display().to_string(), source })?;
            let key = text.trim_end_matches(['\n', '\r']).to_string();
            if !key.is_empty() {
                api_keys.push(key);
            }
        }
        let keys = FollowedKeys::new(KeySet::new(file_keys), &cfg.issuer, &cfg.audience, cfg.leeway_secs);
        if cfg.keys_from_nats {
            keys.follow(client).await?;
        }
        info!(keys = ?keys.verifier().kids(), api_keys = api_keys.len(), "read access configured");
        Ok(Arc::new(Access { keys, api_keys }))
    }

    /// Who presents `credential` (a token or an API key)? 401 when nobody.
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Caller, Refusal> {
        let credential = match credential.map(str::trim) {
            Some(c) if !c.is_empty() => c,
            _ => return Err(Refusal::Unauthorized("no token".into())),
        };
        let mut is_api_key = false;
        for k in &self.api_keys {
            is_api_key |= goim_common::constant_time_eq(k.as_bytes(), credential.as_bytes());
        }
        if is_api_key {
            return Ok(Caller::Backend);
        }
        self.keys
            .verifier()
            .verify(credential)
            .map(|c| Caller::Token(Box::new(c)))
            .map_err(|e| Refusal::Unauthorized(format!("invalid token: {e}")))
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn claims(mid: i64, rooms: &[&str], prefixes: &[&str]) -> Caller {
        Caller::Token(Box::new(Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: mid.to_string(),
            mid,
            key: None,
            rooms: rooms.iter().map(|s| s.to_string()).collect(),
            room_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            accepts: vec![],
            publish: Default::default(),
            iat: 0,
            nbf: 0,
            exp: u64::MAX,
            jti: "j".into(),
        }))
    }

    #[test]
    fn scoping() {
        let c = claims(7, &["live://1"], &["chat://"]);
        assert!(c.authorize(&Target::Room("live://1".into())).is_ok());
        assert!(c.authorize(&Target::Room("chat://x".into())).is_ok());
        assert!(matches!(c.authorize(&Target::Room("live://2".into())), Err(Refusal::Forbidden(_))));
        assert!(c.authorize(&Target::User(7)).is_ok());
        assert!(matches!(c.authorize(&Target::User(8)), Err(Refusal::Forbidden(_))));
        assert!(c.authorize(&Target::Broadcast).is_ok());
        let anon = claims(0, &[], &[]);
        assert!(matches!(anon.authorize(&Target::User(0)), Err(Refusal::Forbidden(_))));
        assert!(Caller::Backend.authorize(&Target::User(0)).is_ok());
        assert!(Caller::Backend.authorize(&Target::Room("x".into())).is_ok());
    }

    #[test]
    fn api_keys_and_missing_tokens() {
        let a = Access { keys: FollowedKeys::new(KeySet::new(vec![]), "i", "a", 0), api_keys: vec!["backend-key".into()] };
        assert!(matches!(a.authenticate(Some("backend-key")), Ok(Caller::Backend)));
        assert!(matches!(a.authenticate(Some("backend-kex")), Err(Refusal::Unauthorized(_))));
        assert!(matches!(a.authenticate(None), Err(Refusal::Unauthorized(_))));
        assert!(matches!(a.authenticate(Some("  ")), Err(Refusal::Unauthorized(_))));
    }
}
