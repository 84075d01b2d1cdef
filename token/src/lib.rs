//! goim-nats access tokens, shared by authsvc (which mints them) and the edges and the NATS auth
//! callout (which verify them).
//!
//! A token is a JWT (EdDSA/Ed25519 by default, HS256 as an option) whose header names the signing
//! key (`kid`) and whose claims ([`Claims`]) say which mid it is, which rooms it may be in, which ops
//! it may accept and where it may publish. `keys` loads, generates and publishes keys; `verify`
//! checks tokens against a rotating key set; `mint` signs new ones.

pub mod claims;
pub mod keys;
pub mod mint;
pub mod verify;

pub use claims::{Claims, Grant, PublishRights};
pub use keys::{Algorithm, Jwk, Jwks, KeyError, KeySet, SigningKey, VerifyingKey};
pub use mint::Minter;
pub use verify::{TokenError, Verifier, MAX_LEEWAY_SECS};

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
