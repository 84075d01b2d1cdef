//! Who may do what: the edge's side of authsvc's tokens.
//!
//! In `token` mode the client's token is verified here, without a round trip, against keys from the
//! config and/or the set authsvc announces on `auth.keys` (replaced at every announcement, which is how
//! a removed key stops working). In `delegated` mode the raw auth body goes to authsvc on
//! `auth.connect` and the token it answers with is verified the same way. Either way the session gets
//! [`Claims`] and enforces them; `trust-body` mode has no claims at all.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use goim_token::{Claims, Jwks, KeySet, TokenError, Verifier, VerifyingKey};
use serde::Deserialize;
use tracing::{info, warn};

use crate::bridge::Bridge;
use crate::config::{AuthConfig, AuthMode};
use crate::subjects::{AUTH_CONNECT, AUTH_KEYS, AUTH_KEYS_GET};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Key(#[from] goim_token::KeyError),
    #[error("cannot subscribe to {AUTH_KEYS}: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Why a connect could not be admitted.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("auth body has no token")]
    NoToken,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("authsvc refused: {0}")]
    Refused(String),
    #[error("authsvc unavailable: {0}")]
    Unavailable(String),
}

impl Denied {
    /// Counter name of the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::NoToken => "no_token",
            Denied::Token(e) => e.reason(),
            Denied::Refused(_) => "refused",
            Denied::Unavailable(_) => "unavailable",
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ConnectReply {
    Token { token: String },
    Refused { error: String },
}

/// A token verifier whose keys are the configured files plus the set authsvc announces on
/// `auth.keys` (replaced at every announcement, so a key removed from authsvc stops working). Shared
/// by every verifier of goim tokens on the bus (edges, goim-history).
#[derive(Debug)]
pub struct FollowedKeys {
    verifier: Verifier,
    file_keys: KeySet,
}

impl FollowedKeys {
    pub fn new(file_keys: KeySet, issuer: &str, audience: &str, leeway_secs: u64) -> Arc<FollowedKeys> {
        Arc::new(FollowedKeys { verifier: Verifier::new(file_keys.clone(), issuer, audience, leeway_secs), file_keys })
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Follow authsvc's announcements on `client`, and ask once now; if no authsvc answers, the
    /// announcement it makes when it starts will do.
    pub async fn follow(self: &Arc<Self>, client: &async_nats::Client) -> Result<(), async_nats::SubscribeError> {
        let mut announcements = client.subscribe(AUTH_KEYS).await?;
        let keys = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = announcements.next().await {
                keys.apply_announcement(&msg.payload);
            }
        });
        let ask = client.request(AUTH_KEYS_GET, Bytes::new());
        match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(Ok(reply)) => self.apply_announcement(&reply.payload),
            Ok(Err(e)) => warn!(error = %e, "no token keys from authsvc yet; waiting for its announcement on {AUTH_KEYS}"),
            Err(_) => warn!("no token keys from authsvc within 2 s; waiting for its announcement on {AUTH_KEYS}"),
        }
        Ok(())
    }

    fn apply_announcement(&self, payload: &[u8]) {
        let announced = serde_json::from_slice::<Jwks>(payload)
            .map_err(|e| e.to_string())
            .and_then(|jwks| KeySet::from_jwks(&jwks).map_err(|e| e.to_string()));
        match announced {
            Ok(announced) => {
                let mut keys = self.file_keys.clone();
                keys.merge(announced);
                info!(keys = ?keys.kids(), "token keys updated from authsvc");
                self.verifier.set_keys(keys);
            }
            Err(e) => warn!(error = %e, "ignoring an invalid key announcement on {AUTH_KEYS}"),
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Access {
    pub mode: AuthMode,
    keys: Arc<FollowedKeys>,
    bridge: Bridge,
    edge_id: String,
    delegate_timeout: Duration,
}

impl Access {
    /// Load the key files and, with `keys_from_nats`, follow authsvc's announcements.
    pub async fn start(cfg: &AuthConfig, bridge: &Bridge, edge_id: &str) -> Result<Arc<Access>, AccessError> {
        let mut file_keys = Vec::new();
        for k in &cfg.keys {
            file_keys.push(VerifyingKey::load(&k.id, k.alg, &k.file)?);
        }
        let keys = FollowedKeys::new(KeySet::new(file_keys), &cfg.issuer, &cfg.audience, cfg.leeway_secs);
        if cfg.mode != AuthMode::TrustBody && cfg.keys_from_nats {
            keys.follow(bridge.publisher()).await?;
        }
        Ok(Arc::new(Access {
            mode: cfg.mode,
            keys,
            bridge: bridge.clone(),
            edge_id: edge_id.to_string(),
            delegate_timeout: Duration::from_millis(cfg.delegate_timeout_ms),
        }))
    }

    /// Verify a client's token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.keys.verifier().verify(token)
    }

    /// Delegated mode: ask authsvc to decide on this raw auth body; verify the token it answers with.
    pub async fn delegate(&self, body: &Bytes, peer: &str) -> Result<(Claims, String), Denied> {
        let mut headers = HeaderMap::new();
        headers.insert("Goim-Edge", self.edge_id.as_str());
        headers.insert("Goim-Peer", peer);
        let reply = self
            .bridge
            .request(AUTH_CONNECT.to_string(), headers, body.clone(), self.delegate_timeout)
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        match serde_json::from_slice::<ConnectReply>(&reply.payload) {
            Ok(ConnectReply::Token { token }) => Ok((self.keys.verifier().verify(&token)?, token)),
            Ok(ConnectReply::Refused { error }) => Err(Denied::Refused(error)),
            Err(e) => Err(Denied::Unavailable(format!("invalid answer from authsvc: {e}"))),
        }
    }
}
