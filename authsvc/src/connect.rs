//! Delegated goim connects: an edge in `auth.mode = "delegated"` forwards a client's raw auth body
//! (goim's comet → logic Connect) and gets back a token for it, or a refusal. The policy decides:
//! `deny`, `allow-all` (development only) or the application's `webhook`.
//!
//! Webhook contract: `POST <webhook_url>` with `{"auth": <auth body JSON>, "edge": "<edge id>",
//! "peer": "<ip:port>"}`; a 2xx answer `{"allow": true, "grant": <Grant>}` admits the client with that
//! grant (mid, key, rooms, room_prefixes, accepts, publish, ttl_secs), `{"allow": false, "reason": "…"}`
//! refuses it. Anything else — timeout, non-2xx, bad JSON — refuses it with a logged reason.

use std::time::Duration;

use goim_token::{Grant, Minter, PublishRights};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::config::{ConnectConfig, ConnectPolicy};

/// The answer on `auth.connect`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ConnectReply {
    Token { token: String, exp: u64 },
    Refused { error: String },
}

#[derive(Debug, Deserialize)]
struct WebhookAnswer {
    allow: bool,
    #[serde(default)]
    grant: Option<Grant>,
    #[serde(default)]
    reason: Option<String>,
}

/// Decides delegated connects.
#[derive(Debug, Clone)]
pub struct Connector {
    cfg: ConnectConfig,
    http: reqwest::Client,
}

impl Connector {
    pub fn new(cfg: ConnectConfig) -> Connector {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.webhook_timeout_ms))
            .build()
            .unwrap_or_default();
        if cfg.policy == ConnectPolicy::AllowAll {
            warn!("connect.policy = allow-all: EVERY delegated goim connect is admitted with what it asks for (development only)");
        }
        Connector { cfg, http }
    }

    /// Decide one connect and, if admitted, mint its token.
    pub async fn decide(&self, minter: &Minter, body: &[u8], edge: &str, peer: &str) -> ConnectReply {
        let refuse = |error: String| ConnectReply::Refused { error };
        let auth: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return refuse("auth body is not a JSON object".into()),
        };
        let grant = match self.cfg.policy {
            ConnectPolicy::Deny => return refuse("delegated connects are refused (connect.policy = deny)".into()),
            ConnectPolicy::AllowAll => match grant_from_body(&auth) {
                Ok(g) => {
                    warn!(mid = g.mid, edge, peer, "allow-all: admitting a delegated connect unchecked");
                    g
                }
                Err(e) => return refuse(e),
            },
            ConnectPolicy::Webhook => match self.ask_webhook(&auth, edge, peer).await {
                Ok(g) => g,
                Err(e) => {
                    info!(edge, peer, reason = %e, "delegated connect refused");
                    return refuse(e);
                }
            },
        };
        let grant = Grant { ttl_secs: Some(grant.ttl_secs.unwrap_or(self.cfg.ttl_secs)), ..grant };
        match minter.mint(&grant) {
            Ok((token, claims)) => ConnectReply::Token { token, exp: claims.exp },
            Err(e) => refuse(format!("cannot mint: {e}")),
        }
    }

    async fn ask_webhook(&self, auth: &Value, edge: &str, peer: &str) -> Result<Grant, String> {
        let req = serde_json::json!({ "auth": auth, "edge": edge, "peer": peer });
        let resp = self
            .http
            .post(&self.cfg.webhook_url)
            .json(&req)
            .send()
            .await
            .map_err(|e| if e.is_timeout() { "webhook timed out".to_string() } else { format!("webhook unreachable: {e}") })?;
        let status = resp.status();
        if !status.is_success() {
            warn!(%status, url = %self.cfg.webhook_url, "webhook answered with an error status");
            return Err(format!("webhook answered {status}"));
        }
        let answer: WebhookAnswer = resp.json().await.map_err(|e| format!("webhook answer is not valid: {e}"))?;
        match (answer.allow, answer.grant) {
            (true, Some(grant)) => Ok(grant),
            (true, None) => Err("webhook allowed the connect but sent no grant".into()),
            (false, _) => Err(answer.reason.unwrap_or_else(|| "refused by the webhook".into())),
        }
    }
}

/// allow-all: exactly what the goim auth body asks for, plus ingress (op 4) rights.
fn grant_from_body(auth: &Value) -> Result<Grant, String> {
    let mid = match auth.get("mid") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_i64().ok_or("mid is not an int64")?,
    };
    let key = auth.get("key").and_then(Value::as_str).filter(|k| !k.is_empty()).map(str::to_string);
    let room = auth.get("room_id").and_then(Value::as_str).unwrap_or("");
    let accepts = match auth.get("accepts") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<i32>>(v.clone()).map_err(|_| "accepts is not a list of int32")?,
    };
    Ok(Grant {
        mid,
        key,
        rooms: if room.is_empty() { Vec::new() } else { vec![room.to_string()] },
        room_prefixes: Vec::new(),
        accepts,
        publish: PublishRights { ingress: true, ..PublishRights::default() },
        ttl_secs: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_all_grants_what_the_body_asks() {
        let g = grant_from_body(&serde_json::json!({"mid": 5, "key": "k", "room_id": "live://1", "accepts": [1000]})).unwrap();
        assert_eq!(g.mid, 5);
        assert_eq!(g.key.as_deref(), Some("k"));
        assert_eq!(g.rooms, vec!["live://1".to_string()]);
        assert_eq!(g.accepts, vec![1000]);
        assert!(g.publish.ingress);
        assert!(grant_from_body(&serde_json::json!({"mid": "5"})).is_err());
        assert!(grant_from_body(&serde_json::json!({"accepts": ["x"]})).is_err());
        let empty = grant_from_body(&serde_json::json!({})).unwrap();
        assert!(empty.rooms.is_empty() && empty.key.is_none());
    }

    #[test]
    fn reply_shapes() {
        let t = serde_json::to_string(&ConnectReply::Token { token: "t".into(), exp: 9 }).unwrap();
        assert_eq!(t, r#"{"token":"t","exp":9}"#);
        let r: ConnectReply = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
        assert_eq!(r, ConnectReply::Refused { error: "no".into() });
    }
}
