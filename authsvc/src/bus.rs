//! authsvc on NATS: `auth.mint` for backends on the bus, `auth.connect` for delegated goim connects,
//! `auth.keys.get` for the public keys, and the announcement of those keys on `auth.keys` at start.
//! Every request subject is a queue subscription, so replicas share the load. Who may publish to
//! `auth.mint` is decided by NATS permissions (nats-conf: the backend role).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::{Client, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use goim_edge::subjects::{AUTH_CONNECT, AUTH_KEYS, AUTH_KEYS_GET, AUTH_MINT};
use goim_token::Grant;
use tracing::{debug, warn};

use crate::state::{AuthState, Minted};

/// Subscribe the request subjects and announce the keys.
pub async fn serve(state: Arc<AuthState>, client: Client, queue_group: &str) -> Result<(), async_nats::SubscribeError> {
    let mint = client.queue_subscribe(AUTH_MINT, queue_group.to_string()).await?;
    let connect = client.queue_subscribe(AUTH_CONNECT, queue_group.to_string()).await?;
    let keys = client.queue_subscribe(AUTH_KEYS_GET, queue_group.to_string()).await?;
    spawn_responder(state.clone(), client.clone(), mint, handle_mint);
    spawn_responder(state.clone(), client.clone(), connect, handle_connect);
    spawn_responder(state.clone(), client.clone(), keys, handle_keys);
    announce_keys(&state, &client).await;
    Ok(())
}

/// Publish the public key set on `auth.keys` (edges replace the keys they learned from NATS).
pub async fn announce_keys(state: &AuthState, client: &Client) {
    let body = serde_json::to_vec(&state.jwks()).unwrap_or_default();
    if let Err(e) = client.publish(AUTH_KEYS, body.into()).await {
        warn!(error = %e, "cannot announce token keys");
    }
    let _ = client.flush().await;
}

type Handler = fn(Arc<AuthState>, Message) -> futures_util::future::BoxFuture<'static, Bytes>;

fn spawn_responder(state: Arc<AuthState>, client: Client, mut sub: async_nats::Subscriber, handler: Handler) {
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply.clone() else {
                debug!(subject = %msg.subject, "request without reply subject ignored");
                continue;
            };
            let state = state.clone();
            let client = client.clone();
            // One task per request: a slow webhook must not hold up other connects.
            tokio::spawn(async move {
                let answer = handler(state, msg).await;
                if let Err(e) = client.publish(reply, answer).await {
                    warn!(error = %e, "cannot answer request");
                }
            });
        }
    });
}

fn error_body(message: impl Into<String>) -> Bytes {
    serde_json::to_vec(&serde_json::json!({ "error": message.into() })).unwrap_or_default().into()
}

fn handle_mint(state: Arc<AuthState>, msg: Message) -> futures_util::future::BoxFuture<'static, Bytes> {
    Box::pin(async move {
        let grant: Grant = match serde_json::from_slice(&msg.payload) {
            Ok(g) => g,
            Err(e) => {
                state.stats.mint_refused.fetch_add(1, Ordering::Relaxed);
                return error_body(format!("invalid grant: {e}"));
            }
        };
        match state.keys.minter.mint(&grant) {
            Ok((token, claims)) => {
                state.stats.minted_nats.fetch_add(1, Ordering::Relaxed);
                let minted = Minted { token, exp: claims.exp, jti: claims.jti, kid: state.keys.minter.key.kid.clone() };
                serde_json::to_vec(&minted).unwrap_or_default().into()
            }
            Err(e) => {
                state.stats.mint_refused.fetch_add(1, Ordering::Relaxed);
                error_body(e.to_string())
            }
        }
    })
}

fn handle_connect(state: Arc<AuthState>, msg: Message) -> futures_util::future::BoxFuture<'static, Bytes> {
    Box::pin(async move {
        let header = |name: &str| {
            msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string()).unwrap_or_default()
        };
        let (edge, peer) = (header("Goim-Edge"), header("Goim-Peer"));
        let reply = state.connector.decide(&state.keys.minter, &msg.payload, &edge, &peer).await;
        let counter = match &reply {
            crate::connect::ConnectReply::Token { .. } => &state.stats.connect_admitted,
            crate::connect::ConnectReply::Refused { .. } => &state.stats.connect_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        serde_json::to_vec(&reply).unwrap_or_default().into()
    })
}

fn handle_keys(state: Arc<AuthState>, _msg: Message) -> futures_util::future::BoxFuture<'static, Bytes> {
    Box::pin(async move { serde_json::to_vec(&state.jwks()).unwrap_or_default().into() })
}
