//! Signing new tokens from a [`Grant`].

use jsonwebtoken::{encode, Header};

use crate::claims::{Claims, Grant};
use crate::keys::SigningKey;
use crate::now_secs;

/// Signs tokens with the current key.
#[derive(Debug, Clone)]
pub struct Minter {
    pub key: SigningKey,
    pub issuer: String,
    pub audience: String,
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("ttl_secs must be at least 1")]
    ZeroTtl,
    #[error("cannot sign: {0}")]
    Sign(String),
}

impl Minter {
    /// Sign a token for `grant`, valid from now for its ttl (capped at `max_ttl_secs`).
    pub fn mint(&self, grant: &Grant) -> Result<(String, Claims), MintError> {
        let ttl = grant.ttl_secs.unwrap_or(self.default_ttl_secs).min(self.max_ttl_secs);
        if ttl == 0 {
            return Err(MintError::ZeroTtl);
        }
        let now = now_secs();
        self.sign(Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: grant.mid.to_string(),
            mid: grant.mid,
            key: grant.key.clone(),
            rooms: grant.rooms.clone(),
            room_prefixes: grant.room_prefixes.clone(),
            accepts: grant.accepts.clone(),
            publish: grant.publish.clone(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Sign exactly these claims (tests use it for expired or not-yet-valid tokens).
    pub fn sign(&self, claims: Claims) -> Result<(String, Claims), MintError> {
        let mut header = Header::new(self.key.alg.jwt());
        header.kid = Some(self.key.kid.clone());
        let token = encode(&header, &claims, &self.key.key).map_err(|e| MintError::Sign(e.to_string()))?;
        Ok((token, claims))
    }
}
