//! What the HTTP and NATS front doors of authsvc share: keys, the minter, the connect policy, counters.

use std::sync::atomic::AtomicU64;

use goim_token::Jwks;
use serde::Serialize;

use crate::connect::Connector;
use crate::keys::TokenKeys;

#[derive(Debug)]
pub struct AuthState {
    pub keys: TokenKeys,
    pub api_keys: Vec<String>,
    pub connector: Connector,
    pub stats: Stats,
    /// The NATS auth callout's counters (all zero while `callout.enabled` is off).
    pub callout: std::sync::Arc<crate::callout::CalloutStats>,
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub minted_http: AtomicU64,
    pub minted_nats: AtomicU64,
    pub mint_refused: AtomicU64,
    pub connect_admitted: AtomicU64,
    pub connect_refused: AtomicU64,
}

impl AuthState {
    pub fn jwks(&self) -> Jwks {
        self.keys.verifying.to_jwks()
    }

    /// Constant-time comparison against every configured API key.
    pub fn api_key_ok(&self, presented: &str) -> bool {
        let mut ok = false;
        for k in &self.api_keys {
            ok |= goim_common::constant_time_eq(k.as_bytes(), presented.as_bytes());
        }
        ok
    }
}


/// The answer to a mint request, over HTTP and NATS alike.
#[derive(Debug, Serialize)]
pub struct Minted {
    pub token: String,
    pub exp: u64,
    pub jti: String,
    pub kid: String,
}
