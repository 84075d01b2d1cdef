//! The NATS auth callout: nats-server asks authsvc whether a connecting native NATS (or nats.ws) client
//! may connect, and with which permissions. The client presents its goim token; we verify it exactly as
//! the edges do and translate the token's scope into NATS subject permissions.
//!
//! ## The exchange (nats-server ≥ 2.10, server-config mode)
//!
//! 1. A client that is not one of `auth_callout.auth_users` connects. The server generates a user nkey
//!    for the connection and publishes an *authorization request* JWT, signed by the server's own key
//!    (`iss` = server id, `N…`), on `$SYS.REQ.USER.AUTH` in the callout account (`AUTH`), with a reply
//!    subject. With `auth_callout.xkey` set, the payload is sealed to that curve key and the header
//!    `Nats-Server-Xkey` carries the server's curve key.
//! 2. [`serve`] (queue group: any number of replicas) verifies the request, takes the token from
//!    `connect_opts.auth_token` (or `connect_opts.pass` when `user` is [`TOKEN_USER`], for clients
//!    that only have user/password fields), verifies it with the same [`Verifier`] as the edges, and
//!    answers an *authorization response* JWT signed by the issuer key: `sub` = the request's user
//!    nkey, `aud` = the server id, and either `nats.jwt` = a user JWT (`aud` = the target account,
//!    permissions from [`nats_permissions`], `exp` = the token's `exp`) or `nats.error`. The answer is
//!    sealed back to the server's curve key when the request was sealed.
//! 3. The server disconnects the client at the user JWT's `exp` (`User Authentication Expired`).
//!
//! ## Permissions (see [`nats_permissions`])
//!
//! A token holder may subscribe to its own `user.<mid>` (not for mid 0), its bound key's `key.<key>`,
//! `broadcast`, its rooms, and its own request inbox ([`inbox_prefix`]); it may publish only where its
//! `publish` rights say. Deliberate differences from the goim edge, which enforces the same token:
//!
//! - Room prefixes: only prefixes of the form `<type>://` (ending in `://`, with no other `://`) are
//!   granted, as `room.<esc type>.*` (which is exactly the set of room subjects of ids starting with
//!   that prefix). Any other prefix (`live://10`, `lobby`) cannot be written as a NATS subject wildcard,
//!   because an escaped room id is a single token; it is **not granted** on NATS (the edge still honours
//!   it for goim clients). Mint exact rooms or `type://` prefixes for native clients.
//! - Inboxes: not `_INBOX.>`, which would let any token holder read every reply in the account
//!   (including tokens minted for other users over `auth.mint`), but `_INBOX.mid_<mid>.>` (mid ≠ 0) or
//!   `_INBOX.key_<esc key>.>` (mid 0 with a bound key); anonymous clients without a key get no inbox.
//!   A native client that makes requests must set its inbox prefix accordingly (async-nats
//!   `custom_inbox_prefix`, nats.js `inboxPrefix`).
//! - No `resp` permission: a client may not answer requests. With `resp`, any member of a room could be
//!   made to publish once to an arbitrary subject chosen by whoever published into the room with that
//!   subject as reply (`broadcast`, another user's subject…).
//! - `allowed_connection_types` is `STANDARD` and `WEBSOCKET`: a token cannot be used by a leaf node or
//!   an MQTT client.
//! - A token within the verifier's leeway after `exp` is refused here (the server would disconnect the
//!   client at once anyway).
//! - No per-connection limits: nats-server (2.15.1, server-config mode) ignores a callout user JWT's
//!   `subs`/`data`/`payload` limits (only permissions are applied; measured), so we write `-1`.
//!
//! ## What a refused client sees
//!
//! Only `Authorization Violation` (async-nats: `ConnectErrorKind::AuthorizationViolation`): the server
//! does not forward our `nats.error`. The reason is in nats-server's log (`Auth callout service returned
//! an error: goim token refused: <reason>: <detail>`, WRN) and in authsvc's (`auth callout: connect
//! refused`, with `reason`), and counted in [`CalloutStats`]. A token that expires while connected ends
//! the connection with `-ERR 'User Authentication Expired'`; the client's reconnects with the same token
//! are then refused.
//!
//! ## When no replica answers
//!
//! nats-server does not detect that nobody subscribes to `$SYS.REQ.USER.AUTH`: each connect waits the
//! full `authorization.timeout` (2 s by default), then fails with `Authorization Violation`. Clients
//! already connected are not affected. Run two or more replicas (same queue group).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use goim_edge::subjects::{escape_token, key_subject, room_subject, user_subject, BROADCAST};
use goim_token::{Claims, Verifier};
use nkeys::{KeyPair, KeyPairType, XKey};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::natsjwt::{
    self, AuthRequestClaims, AuthResponseClaims, ExpectedIssuer, KeyKind, Permission, User, UserClaims,
    AUTH_REQUEST_AUDIENCE, USER_TYPE, VERSION,
};

/// The subject nats-server publishes authorization requests on (in the callout account).
pub const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The header carrying the server's curve public key when the request is sealed.
pub const XKEY_HEADER: &str = "Nats-Server-Xkey";
/// Default queue group of the callout replicas.
pub const DEFAULT_QUEUE_GROUP: &str = "goim-authsvc";
/// A client that can only send user/password connects with this user name and the token as password.
pub const TOKEN_USER: &str = "token";
/// Clock difference tolerated between nats-server and authsvc on a request's `exp` (which the server
/// sets to its auth timeout, 2 s by default). Replays are harmless anyway: an answer is bound to the
/// user nkey the server generated for one connect.
pub const REQUEST_CLOCK_LEEWAY_SECS: u64 = 30;
/// Requests handled concurrently by one replica.
const MAX_IN_FLIGHT: usize = 256;

/// What the callout needs besides the token verifier.
#[derive(Clone)]
pub struct CalloutConfig {
    /// Account nkey seed (`SA…`); its public key is `auth_callout.issuer` in the server config.
    pub issuer_seed: String,
    /// Curve seed (`SX…`) when the server config sets `auth_callout.xkey` (its public key).
    pub xkey_seed: Option<String>,
    /// The account token holders are placed in (`APP`).
    pub account: String,
}

impl CalloutConfig {
    /// Read the seeds from files (the text of each: `#` comment lines and blank lines are skipped).
    pub fn from_files(
        issuer_seed_file: &std::path::Path,
        xkey_seed_file: Option<&std::path::Path>,
        account: &str,
    ) -> Result<CalloutConfig, CalloutError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| CalloutError::SeedFile(p.display().to_string(), e.to_string()))
        };
        Ok(CalloutConfig {
            issuer_seed: read(issuer_seed_file)?,
            xkey_seed: xkey_seed_file.map(read).transpose()?,
            account: account.to_string(),
        })
    }
}

impl std::fmt::Debug for CalloutConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalloutConfig")
            .field("issuer_seed", &"<secret>")
            .field("xkey_seed", &self.xkey_seed.as_ref().map(|_| "<secret>"))
            .field("account", &self.account)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    #[error("callout issuer seed is not an account nkey seed (SA…): {0}")]
    IssuerSeed(String),
    #[error("callout xkey seed is not a curve seed (SX…): {0}")]
    XkeySeed(String),
    #[error("callout account name is empty")]
    NoAccount,
    #[error("cannot read seed file {0}: {1}")]
    SeedFile(String, String),
    #[error("cannot subscribe to {AUTH_SUBJECT}: {0}")]
    Subscribe(String),
}

/// Why a request could not be answered at all (the server then times the connect out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is encrypted but no xkey seed is configured")]
    EncryptedWithoutXkey,
    #[error("bad {XKEY_HEADER} header: {0}")]
    BadServerXkey(String),
    #[error("cannot decrypt request: {0}")]
    Decrypt(String),
    #[error("request JWT: {0}")]
    Jwt(#[from] natsjwt::JwtError),
    #[error("request is not an authorization request: {0}")]
    NotARequest(String),
    #[error("cannot sign or seal the answer: {0}")]
    Answer(String),
}

/// Counters of one callout service (all replicas in this process share it if they share the Arc).
#[derive(Debug, Default)]
pub struct CalloutStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Answered with a user JWT.
    pub accepted: AtomicU64,
    /// Answered with an error (bad, expired or missing token…); by reason in `rejected_by_reason`.
    pub rejected: AtomicU64,
    /// Not answerable (undecryptable, forged or malformed request): the server times the connect out.
    pub bad_request: AtomicU64,
    /// The answer could not be handed to NATS.
    pub reply_failed: AtomicU64,
    rejected_by_reason: Mutex<BTreeMap<String, u64>>,
}

/// A point-in-time copy of [`CalloutStats`] (JSON for `ctl`/HTTP stats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CalloutStatsSnapshot {
    pub requests: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub bad_request: u64,
    pub reply_failed: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
}

impl CalloutStats {
    fn reject(&self, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let mut m = self.rejected_by_reason.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason.to_string()).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> CalloutStatsSnapshot {
        CalloutStatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            bad_request: self.bad_request.load(Ordering::Relaxed),
            reply_failed: self.reply_failed.load(Ordering::Relaxed),
            rejected_by_reason: self.rejected_by_reason.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// The decision taken for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accepted { mid: i64 },
    /// `reason` is a short stable name (a [`goim_token::TokenError::reason`], `no_token`, …).
    Rejected { reason: String, message: String },
}

/// An answer ready to publish on the request's reply subject.
#[derive(Debug, Clone)]
pub struct Answer {
    pub payload: Vec<u8>,
    pub decision: Decision,
}

/// Freshly generated callout keys (for tests and for provisioning a deployment).
#[derive(Debug, Clone)]
pub struct CalloutKeys {
    pub issuer_seed: String,
    /// `auth_callout.issuer`.
    pub issuer_public: String,
    pub xkey_seed: String,
    /// `auth_callout.xkey`.
    pub xkey_public: String,
}

impl CalloutKeys {
    pub fn generate() -> CalloutKeys {
        let a = KeyPair::new_account();
        let x = XKey::new();
        CalloutKeys {
            issuer_seed: a.seed().expect("generated key has a seed"),
            issuer_public: a.public_key(),
            xkey_seed: x.seed().expect("generated key has a seed"),
            xkey_public: x.public_key(),
        }
    }

    /// The keys of existing seeds (the text of seed files: `#` comment lines are skipped).
    pub fn from_seeds(issuer_seed: &str, xkey_seed: &str) -> Result<CalloutKeys, CalloutError> {
        let is = parse_seed_text(issuer_seed).unwrap_or_default();
        let a = KeyPair::from_seed(&is).map_err(|e| CalloutError::IssuerSeed(e.to_string()))?;
        if a.key_pair_type() != KeyPairType::Account {
            return Err(CalloutError::IssuerSeed(format!("a {:?} seed", a.key_pair_type())));
        }
        let xs = parse_seed_text(xkey_seed).unwrap_or_default();
        let x = XKey::from_seed(&xs).map_err(|e| CalloutError::XkeySeed(e.to_string()))?;
        Ok(CalloutKeys { issuer_seed: is, issuer_public: a.public_key(), xkey_seed: xs, xkey_public: x.public_key() })
    }
}

/// The seed in the text of a seed file: the first line that is neither empty nor a `#` comment, trimmed
/// (so a committed dev key can carry a warning comment).
pub fn parse_seed_text(text: &str) -> Option<String> {
    text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string)
}

/// The inbox prefix a token holder may use for its requests (see the module doc), without the
/// trailing `.`: `_INBOX.mid_<mid>`, `_INBOX.key_<esc key>` for mid 0 with a bound key, else none.
pub fn inbox_prefix(claims: &Claims) -> Option<String> {
    if claims.mid != 0 {
        Some(format!("_INBOX.mid_{}", claims.mid))
    } else {
        claims.key.as_ref().map(|k| format!("_INBOX.key_{}", escape_token(k)))
    }
}

/// The room-subject wildcard of a room id prefix, if it has one: `live://` → `room.live.*`. Only a
/// prefix ending in its first `://` has one (every id it starts is then `type://<id>`, whose subject is
/// `room.<esc type>.<one token>`).
pub fn room_prefix_wildcard(prefix: &str) -> Option<String> {
    let kind = prefix.strip_suffix("://")?;
    if prefix.find("://") != Some(kind.len()) {
        return None;
    }
    Some(format!("room.{}.*", escape_token(kind)))
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The NATS permissions of a token holder: (publish allow, subscribe allow). See the module doc.
///
/// Subscribe: `user.<mid>` (mid ≠ 0), `key.<esc key>` (bound key), `broadcast`, each exact room's
/// subject, `room.<esc type>.*` for each `type://` prefix, and `<inbox prefix>.>`.
/// Publish: the subjects of `publish.rooms` and `publish.room_prefixes` (same mapping) and
/// `user.<mid>` for each of `publish.users`. Never `ingress.…` (only edges write ingress, whose
/// identity headers consumers trust); `publish.ingress` is for goim clients' op 4.
///
/// The publish list may be empty: [`user_permissions`] then denies everything (an empty allow list means
/// "anything" to nats-server).
pub fn nats_permissions(claims: &Claims) -> (Vec<String>, Vec<String>) {
    let mut sub = Vec::new();
    if claims.mid != 0 {
        push_unique(&mut sub, user_subject(claims.mid));
    }
    if let Some(k) = &claims.key {
        push_unique(&mut sub, key_subject(k));
    }
    push_unique(&mut sub, BROADCAST.to_string());
    for r in &claims.rooms {
        push_unique(&mut sub, room_subject(r));
    }
    for p in &claims.room_prefixes {
        if let Some(w) = room_prefix_wildcard(p) {
            push_unique(&mut sub, w);
        }
    }
    if let Some(inbox) = inbox_prefix(claims) {
        push_unique(&mut sub, format!("{inbox}.>"));
    }

    let mut publ = Vec::new();
    let rights = &claims.publish;
    // No `ingress.…` for native clients, whatever `publish.ingress` says: ingress messages carry the
    // sender's identity in headers (Goim-Mid, Goim-Key) that consumers trust because only edges
    // write them; a native client could set any headers it likes.
    for r in &rights.rooms {
        push_unique(&mut publ, room_subject(r));
    }
    for p in &rights.room_prefixes {
        if let Some(w) = room_prefix_wildcard(p) {
            push_unique(&mut publ, w);
        }
    }
    for m in &rights.users {
        push_unique(&mut publ, user_subject(*m));
    }
    (publ, sub)
}

/// The `nats` part of the user JWT for `claims`: [`nats_permissions`], an explicit deny-all when the
/// publish allow list is empty, no `resp`, standard and WebSocket connections only, no limits.
pub fn user_permissions(claims: &Claims) -> User {
    let (publ, sub) = nats_permissions(claims);
    let publish = if publ.is_empty() {
        Permission { allow: vec![], deny: vec![">".into()] }
    } else {
        Permission { allow: publ, deny: vec![] }
    };
    User {
        publish,
        // Never empty: `broadcast` is always there.
        subscribe: Permission { allow: sub, deny: vec![] },
        resp: None,
        allowed_connection_types: vec!["STANDARD".into(), "WEBSOCKET".into()],
        subs: -1,
        data: -1,
        payload: -1,
        kind: USER_TYPE.into(),
        version: VERSION,
    }
}

/// The token a client presented: `auth_token`, else `pass` when `user` is [`TOKEN_USER`].
fn presented_token(opts: &natsjwt::ConnectOpts) -> Option<&str> {
    if !opts.auth_token.is_empty() {
        Some(&opts.auth_token)
    } else if opts.user == TOKEN_USER && !opts.pass.is_empty() {
        Some(&opts.pass)
    } else {
        None
    }
}

/// One callout service: keys, verifier, counters. Cheap to share (`Arc`) between replicas.
pub struct Callout {
    issuer: KeyPair,
    issuer_public: String,
    xkey: Option<XKey>,
    account: String,
    verifier: Verifier,
    stats: Arc<CalloutStats>,
}

impl std::fmt::Debug for Callout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callout")
            .field("issuer", &self.issuer_public)
            .field("xkey", &self.xkey.as_ref().map(XKey::public_key))
            .field("account", &self.account)
            .finish()
    }
}

impl Callout {
    pub fn new(cfg: CalloutConfig, verifier: Verifier) -> Result<Callout, CalloutError> {
        let seed = parse_seed_text(&cfg.issuer_seed).unwrap_or_default();
        let issuer = KeyPair::from_seed(&seed).map_err(|e| CalloutError::IssuerSeed(e.to_string()))?;
        if issuer.key_pair_type() != KeyPairType::Account {
            return Err(CalloutError::IssuerSeed(format!("a {:?} seed", issuer.key_pair_type())));
        }
        let xkey = match &cfg.xkey_seed {
            None => None,
            Some(s) => {
                let seed = parse_seed_text(s).unwrap_or_default();
                Some(XKey::from_seed(&seed).map_err(|e| CalloutError::XkeySeed(e.to_string()))?)
            }
        };
        if cfg.account.trim().is_empty() {
            return Err(CalloutError::NoAccount);
        }
        Ok(Callout {
            issuer_public: issuer.public_key(),
            issuer,
            xkey,
            account: cfg.account,
            verifier,
            stats: Arc::new(CalloutStats::default()),
        })
    }

    /// Share counters with other `Callout`s (e.g. replicas in one process).
    pub fn with_stats(mut self, stats: Arc<CalloutStats>) -> Callout {
        self.stats = stats;
        self
    }

    /// `auth_callout.issuer` for the server config.
    pub fn issuer_public_key(&self) -> &str {
        &self.issuer_public
    }

    /// `auth_callout.xkey` for the server config, if encryption is configured.
    pub fn xkey_public_key(&self) -> Option<String> {
        self.xkey.as_ref().map(XKey::public_key)
    }

    pub fn stats(&self) -> Arc<CalloutStats> {
        self.stats.clone()
    }

    /// Decide one request (`payload` as received, `server_xkey` = the `Nats-Server-Xkey` header) and
    /// build the answer. Counts the outcome; `Err` means no answer is possible.
    pub fn answer(&self, payload: &[u8], server_xkey: Option<&str>) -> Result<Answer, RequestError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let r = self.answer_inner(payload, server_xkey);
        match &r {
            Ok(a) => match &a.decision {
                Decision::Accepted { .. } => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Decision::Rejected { reason, .. } => self.stats.reject(reason),
            },
            Err(_) => {
                self.stats.bad_request.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    fn answer_inner(&self, payload: &[u8], server_xkey: Option<&str>) -> Result<Answer, RequestError> {
        // 1. Open the sealed request.
        let (jwt_bytes, seal_to) = match server_xkey {
            Some(sx) => {
                let ours = self.xkey.as_ref().ok_or(RequestError::EncryptedWithoutXkey)?;
                let theirs = XKey::from_public_key(sx.trim()).map_err(|e| RequestError::BadServerXkey(e.to_string()))?;
                let plain = ours.open(payload, &theirs).map_err(|e| RequestError::Decrypt(e.to_string()))?;
                (plain, Some(theirs))
            }
            None => (payload.to_vec(), None),
        };
        let jwt = std::str::from_utf8(&jwt_bytes).map_err(|_| RequestError::NotARequest("not UTF-8".into()))?;

        // 2. A genuine authorization request, signed by the server that asks.
        let decoded = natsjwt::decode_verified_at(
            jwt,
            ExpectedIssuer::AnyOfKind(KeyKind::Server),
            goim_token::now_secs(),
            REQUEST_CLOCK_LEEWAY_SECS,
        )?;
        let req: AuthRequestClaims = decoded.claims_as()?;
        if req.aud != AUTH_REQUEST_AUDIENCE {
            return Err(RequestError::NotARequest(format!("aud {:?}", req.aud)));
        }
        if req.nats.server_id.id != req.iss {
            return Err(RequestError::NotARequest("server_id.id is not the signing server".into()));
        }
        if let Some(sx) = server_xkey {
            if !req.nats.server_id.xkey.is_empty() && req.nats.server_id.xkey != sx.trim() {
                return Err(RequestError::NotARequest("xkey header differs from server_id.xkey".into()));
            }
        }
        if KeyKind::of(&req.nats.user_nkey) != Some(KeyKind::User) {
            return Err(RequestError::NotARequest(format!("user_nkey {:?}", req.nats.user_nkey)));
        }
        let user_nkey = req.nats.user_nkey.as_str();
        let server_id = req.nats.server_id.id.as_str();
        let ci = &req.nats.client_info;

        // 3. The decision.
        let rejected = |reason: &str, message: String| -> Result<Answer, RequestError> {
            info!(reason, %message, client_host = %ci.host, client_type = %ci.kind_type, client_name = %ci.name,
                  server = %req.nats.server_id.name, "auth callout: connect refused");
            let resp = AuthResponseClaims::deny(user_nkey, server_id, format!("goim token refused: {reason}: {message}"));
            let payload = self.seal(natsjwt::encode_claims(&resp, &self.issuer), seal_to.as_ref())?;
            Ok(Answer { payload, decision: Decision::Rejected { reason: reason.into(), message } })
        };
        if req.sub != self.issuer_public {
            warn!(server_expects = %req.sub, ours = %self.issuer_public,
                  "auth callout: the server's auth_callout.issuer is not our issuer key; fix the server config or the seed");
            return rejected("issuer_mismatch", "the callout issuer key is not the one the server trusts".into());
        }
        let Some(token) = presented_token(&req.nats.connect_opts) else {
            return rejected("no_token", "no token presented (connect with the goim token as auth token)".into());
        };
        let claims = match self.verifier.verify(token) {
            Ok(c) => c,
            Err(e) => return rejected(e.reason(), e.to_string()),
        };
        let now = goim_token::now_secs();
        if claims.exp <= now {
            return rejected("expired", "token expired".into());
        }
        let user = UserClaims {
            sub: user_nkey.into(),
            aud: self.account.clone(),
            name: format!("mid:{}", claims.mid),
            exp: claims.exp,
            nats: user_permissions(&claims),
        };
        let user_jwt = natsjwt::encode_claims(&user, &self.issuer).map_err(|e| RequestError::Answer(e.to_string()))?;
        let resp = AuthResponseClaims::allow(user_nkey, server_id, user_jwt);
        let payload = self.seal(natsjwt::encode_claims(&resp, &self.issuer), seal_to.as_ref())?;
        info!(mid = claims.mid, jti = %claims.jti, expires_in = claims.exp - now, client_host = %ci.host,
              client_type = %ci.kind_type, client_name = %ci.name, server = %req.nats.server_id.name,
              "auth callout: connect accepted");
        debug!(publish = ?user.nats.publish, subscribe = ?user.nats.subscribe, "auth callout: permissions");
        Ok(Answer { payload, decision: Decision::Accepted { mid: claims.mid } })
    }

    fn seal(&self, jwt: Result<String, natsjwt::JwtError>, to: Option<&XKey>) -> Result<Vec<u8>, RequestError> {
        let jwt = jwt.map_err(|e| RequestError::Answer(e.to_string()))?;
        match (to, &self.xkey) {
            (Some(theirs), Some(ours)) => ours.seal(jwt.as_bytes(), theirs).map_err(|e| RequestError::Answer(e.to_string())),
            _ => Ok(jwt.into_bytes()),
        }
    }

    /// Queue-subscribe to [`AUTH_SUBJECT`] in `queue_group` and answer every request until the
    /// subscription ends (the client is closed or drained). `client` must be a user of the callout
    /// account (one of `auth_callout.auth_users`).
    pub async fn serve(self: Arc<Self>, client: async_nats::Client, queue_group: &str) -> Result<(), CalloutError> {
        let sub = client
            .queue_subscribe(AUTH_SUBJECT, queue_group.to_string())
            .await
            .map_err(|e| CalloutError::Subscribe(e.to_string()))?;
        self.serve_subscription(client, sub, queue_group).await;
        Ok(())
    }

    /// Subscribe now (a subscribe error is returned here), then answer requests in a spawned task,
    /// which ends when the subscription does.
    pub async fn spawn(
        self: Arc<Self>,
        client: async_nats::Client,
        queue_group: &str,
    ) -> Result<tokio::task::JoinHandle<()>, CalloutError> {
        let sub = client
            .queue_subscribe(AUTH_SUBJECT, queue_group.to_string())
            .await
            .map_err(|e| CalloutError::Subscribe(e.to_string()))?;
        let group = queue_group.to_string();
        Ok(tokio::spawn(async move { self.serve_subscription(client, sub, &group).await }))
    }

    async fn serve_subscription(self: Arc<Self>, client: async_nats::Client, mut sub: async_nats::Subscriber, queue_group: &str) {
        info!(issuer = %self.issuer_public, xkey = ?self.xkey_public_key(), account = %self.account,
              queue_group, "auth callout: serving {AUTH_SUBJECT}");
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(msg) = sub.next().await {
            let Ok(permit) = limit.clone().acquire_owned().await else { break };
            let this = self.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let Some(reply) = msg.reply.clone() else {
                    this.stats.bad_request.fetch_add(1, Ordering::Relaxed);
                    warn!("auth callout: request without reply subject ignored");
                    return;
                };
                let xkey = msg.headers.as_ref().and_then(|h| h.get(XKEY_HEADER)).map(|v| v.as_str().to_string());
                match this.answer(&msg.payload, xkey.as_deref()) {
                    Ok(a) => {
                        if let Err(e) = client.publish(reply, a.payload.into()).await {
                            this.stats.reply_failed.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, "auth callout: cannot publish the answer");
                        }
                    }
                    Err(e) => warn!(error = %e, "auth callout: request not answered"),
                }
            });
        }
        info!("auth callout: subscription ended");
    }
}

/// Serve the callout with a fresh [`Callout`] (see [`Callout::serve`]). Use [`Callout::new`] +
/// [`Callout::stats`] + [`Callout::serve`] to keep the counters.
pub async fn serve(
    client: async_nats::Client,
    cfg: CalloutConfig,
    verifier: Verifier,
    queue_group: &str,
) -> Result<(), CalloutError> {
    Arc::new(Callout::new(cfg, verifier)?).serve(client, queue_group).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use goim_token::{Grant, KeySet, Minter, PublishRights, SigningKey};
    use serde_json::json;

    fn claims(mid: i64) -> Claims {
        Claims {
            iss: "goim-authsvc".into(),
            aud: "goim".into(),
            sub: mid.to_string(),
            mid,
            key: None,
            rooms: vec![],
            room_prefixes: vec![],
            accepts: vec![],
            publish: PublishRights::default(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: "j".into(),
        }
    }

    #[test]
    fn basic_subscriptions() {
        let mut c = claims(42);
        c.rooms = vec!["live://1000".into(), "lobby".into()];
        let (publ, sub) = nats_permissions(&c);
        assert!(publ.is_empty());
        assert_eq!(sub, vec!["user.42", "broadcast", "room.live.1000", "room.lobby", "_INBOX.mid_42.>"]);
        let u = user_permissions(&c);
        assert_eq!(u.publish, Permission { allow: vec![], deny: vec![">".into()] }, "empty publish = deny all");
        assert!(u.resp.is_none());
    }

    #[test]
    fn anonymous_and_key() {
        let c = claims(0);
        assert_eq!(nats_permissions(&c).1, vec!["broadcast"]);
        let mut k = claims(0);
        k.key = Some("dev.1 *>".into());
        assert_eq!(nats_permissions(&k).1, vec!["key.dev=2E1=20=2A=3E", "broadcast", "_INBOX.key_dev=2E1=20=2A=3E.>"]);
        let mut neg = claims(-5);
        neg.key = Some("k".into());
        assert_eq!(nats_permissions(&neg).1, vec!["user.-5", "key.k", "broadcast", "_INBOX.mid_-5.>"]);
    }

    #[test]
    fn prefixes_only_when_expressible() {
        assert_eq!(room_prefix_wildcard("live://").as_deref(), Some("room.live.*"));
        assert_eq!(room_prefix_wildcard("://").as_deref(), Some("room.=.*"));
        assert_eq!(room_prefix_wildcard("a.b://").as_deref(), Some("room.a=2Eb.*"));
        assert_eq!(room_prefix_wildcard("x:://").as_deref(), Some("room.x=3A.*"));
        assert_eq!(room_prefix_wildcard("*://").as_deref(), Some("room.=2A.*"));
        for p in ["", "live", "live:/", "live://1", "lobby", "a://b://", "live:///"] {
            assert_eq!(room_prefix_wildcard(p), None, "{p:?}");
        }
        // Every id under an expressible prefix maps into its wildcard, and the wildcard's subjects are
        // exactly those rooms.
        for id in ["live://1", "live://", "live://a.b", "live://x://y", "live://>"] {
            let s = room_subject(id);
            assert!(s.starts_with("room.live.") && s.split('.').count() == 3, "{id} -> {s}");
        }
        let mut c = claims(1);
        c.room_prefixes = vec!["live://".into(), "chat://1".into(), "".into(), "lobby".into()];
        let sub = nats_permissions(&c).1;
        assert!(sub.contains(&"room.live.*".to_string()));
        assert!(!sub.iter().any(|s| s.contains("chat") || s.contains("lobby") || s == "room.>" || s == ">"));
    }

    #[test]
    fn hostile_room_ids_are_escaped() {
        let mut c = claims(1);
        c.rooms = vec!["live://>".into(), "*".into(), ">".into(), "live://a.b c".into(), "x\r\nPUB y".into()];
        c.room_prefixes = vec![">://".into()];
        c.publish = PublishRights {
            ingress: true,
            rooms: vec!["live://*".into()],
            room_prefixes: vec!["*://".into()],
            users: vec![7],
        };
        let (publ, sub) = nats_permissions(&c);
        for s in publ.iter().chain(&sub) {
            let tokens: Vec<&str> = s.split('.').collect();
            // The only wildcards are our own trailing `*` of a prefix grant and the inbox's `>`.
            for (i, t) in tokens.iter().enumerate() {
                let last = i == tokens.len() - 1;
                if *t == "*" || *t == ">" {
                    assert!(last, "wildcard inside {s:?}");
                    assert!(*t == "*" || s.starts_with("_INBOX.mid_"), "unexpected {s:?}");
                } else {
                    assert!(
                        t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='),
                        "unescaped byte in {s:?}"
                    );
                }
            }
        }
        assert_eq!(
            sub,
            vec![
                "user.1",
                "broadcast",
                "room.live.=3E",
                "room.=2A",
                "room.=3E",
                "room.live.a=2Eb=20c",
                "room.x=0D=0APUB=20y",
                "room.=3E.*",
                "_INBOX.mid_1.>"
            ]
        );
        assert_eq!(
            publ,
            vec![
                "room.live.=2A",
                "room.=2A.*",
                "user.7"
            ]
        );
    }

    #[test]
    fn publish_rights_and_dedup() {
        let mut c = claims(3);
        c.rooms = vec!["live://1".into(), "live://1".into()];
        c.publish = PublishRights { ingress: false, rooms: vec!["live://1".into()], room_prefixes: vec![], users: vec![3, 3] };
        let (publ, sub) = nats_permissions(&c);
        assert_eq!(publ, vec!["room.live.1", "user.3"]);
        assert_eq!(sub.iter().filter(|s| *s == "room.live.1").count(), 1);
        let u = user_permissions(&c);
        assert_eq!(u.publish.allow, publ);
        assert!(u.publish.deny.is_empty());
    }

    #[test]
    fn seed_text() {
        assert_eq!(parse_seed_text("# dev only\n\n  SAXYZ \n# x\n").as_deref(), Some("SAXYZ"));
        assert_eq!(parse_seed_text("# only comments\n"), None);
    }

    // ---- answer(): a fake server signs requests like nats-server does.

    struct Fixture {
        _dir: tempfile::TempDir,
        minter: Minter,
        callout: Callout,
        keys: CalloutKeys,
        server: KeyPair,
        server_x: XKey,
    }

    fn fixture(with_xkey: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (key, _, _) = SigningKey::generate_ed25519_files("k1", dir.path()).unwrap();
        let verifier = Verifier::new(KeySet::new(vec![key.verifying.clone()]), "goim-authsvc", "goim", 0);
        let minter = Minter { key, issuer: "goim-authsvc".into(), audience: "goim".into(), default_ttl_secs: 60, max_ttl_secs: 3600 };
        let keys = CalloutKeys::generate();
        let cfg = CalloutConfig {
            issuer_seed: keys.issuer_seed.clone(),
            xkey_seed: with_xkey.then(|| keys.xkey_seed.clone()),
            account: "APP".into(),
        };
        let callout = Callout::new(cfg, verifier).unwrap();
        Fixture { _dir: dir, minter, callout, keys, server: KeyPair::new_server(), server_x: XKey::new() }
    }

    impl Fixture {
        fn request(&self, connect_opts: serde_json::Value) -> (String, String) {
            let user = KeyPair::new_user().public_key();
            let now = goim_token::now_secs();
            let claims = json!({
                "aud": AUTH_REQUEST_AUDIENCE, "exp": now + 2, "sub": self.keys.issuer_public,
                "nats": {"server_id": {"name": "s", "host": "127.0.0.1", "id": self.server.public_key(),
                                        "xkey": self.server_x.public_key()},
                         "user_nkey": user, "client_info": {"host": "127.0.0.1", "id": 5, "type": "nats"},
                         "connect_opts": connect_opts, "type": "authorization_request", "version": 2}
            });
            (natsjwt::encode(&claims, &self.server).unwrap(), user)
        }

        fn token(&self, grant: Grant) -> String {
            self.minter.mint(&grant).unwrap().0
        }

        /// The response claims and (if any) the user claims, verified like nats-server does.
        fn open(&self, a: &Answer, sealed: bool) -> (serde_json::Value, Option<serde_json::Value>) {
            let jwt = if sealed {
                let ours = XKey::from_public_key(&self.keys.xkey_public).unwrap();
                String::from_utf8(self.server_x.open(&a.payload, &ours).unwrap()).unwrap()
            } else {
                String::from_utf8(a.payload.clone()).unwrap()
            };
            let resp = natsjwt::decode_verified(&jwt, ExpectedIssuer::Key(&self.keys.issuer_public)).unwrap().claims;
            let user = resp["nats"]["jwt"].as_str().map(|u| {
                natsjwt::decode_verified(u, ExpectedIssuer::Key(&self.keys.issuer_public)).unwrap().claims
            });
            (resp, user)
        }
    }

    #[test]
    fn accepts_a_valid_token() {
        let f = fixture(false);
        let token = f.token(Grant { mid: 9, rooms: vec!["live://1".into()], ..Grant::default() });
        let (req, user_nkey) = f.request(json!({"auth_token": token, "protocol": 1}));
        let a = f.callout.answer(req.as_bytes(), None).unwrap();
        assert_eq!(a.decision, Decision::Accepted { mid: 9 });
        let (resp, user) = f.open(&a, false);
        assert_eq!(resp["sub"], user_nkey.as_str());
        assert_eq!(resp["aud"], f.server.public_key());
        assert_eq!(resp["nats"]["type"], "authorization_response");
        assert!(resp["nats"].get("error").is_none());
        let user = user.unwrap();
        assert_eq!(user["sub"], user_nkey.as_str());
        assert_eq!(user["aud"], "APP");
        assert_eq!(user["name"], "mid:9");
        assert!(user["exp"].as_u64().unwrap() > goim_token::now_secs());
        assert_eq!(user["nats"]["type"], "user");
        assert_eq!(user["nats"]["version"], 2);
        assert_eq!(user["nats"]["sub"]["allow"], json!(["user.9", "broadcast", "room.live.1", "_INBOX.mid_9.>"]));
        assert_eq!(user["nats"]["pub"]["deny"], json!([">"]));
        let s = f.callout.stats().snapshot();
        assert_eq!((s.requests, s.accepted, s.rejected), (1, 1, 0));
    }

    #[test]
    fn token_as_password_of_user_token() {
        let f = fixture(false);
        let token = f.token(Grant { mid: 4, ..Grant::default() });
        let (req, _) = f.request(json!({"user": "token", "pass": token}));
        assert_eq!(f.callout.answer(req.as_bytes(), None).unwrap().decision, Decision::Accepted { mid: 4 });
        let (req, _) = f.request(json!({"user": "someone", "pass": token}));
        assert!(matches!(f.callout.answer(req.as_bytes(), None).unwrap().decision, Decision::Rejected { reason, .. } if reason == "no_token"));
    }

    #[test]
    fn rejects_with_reasons() {
        let f = fixture(false);
        let good = f.token(Grant { mid: 1, ..Grant::default() });
        // Signed by another key that claims our key id.
        let other_dir = tempfile::tempdir().unwrap();
        let (other_key, _, _) = SigningKey::generate_ed25519_files("k1", other_dir.path()).unwrap();
        let forger = Minter { key: other_key, ..f.minter.clone() };
        let forged = forger.mint(&Grant { mid: 1, ..Grant::default() }).unwrap().0;
        assert_ne!(forged, good);
        let now = goim_token::now_secs();
        let base = f.minter.mint(&Grant { mid: 1, ..Grant::default() }).unwrap().1;
        let expired = f.minter.sign(Claims { exp: now - 1, iat: now - 10, nbf: now - 10, ..base }).unwrap().0;
        for (opts, reason) in [
            (json!({}), "no_token"),
            (json!({"auth_token": "garbage"}), "malformed"),
            (json!({"auth_token": forged}), "bad_signature"),
            (json!({"auth_token": expired}), "expired"),
        ] {
            let (req, user_nkey) = f.request(opts);
            let a = f.callout.answer(req.as_bytes(), None).unwrap();
            match &a.decision {
                Decision::Rejected { reason: r, .. } => assert_eq!(r, reason),
                d => panic!("expected a rejection ({reason}), got {d:?}"),
            }
            let (resp, user) = f.open(&a, false);
            assert!(user.is_none());
            assert_eq!(resp["sub"], user_nkey.as_str());
            let err = resp["nats"]["error"].as_str().unwrap();
            assert!(err.contains(reason), "{err}");
        }
        let s = f.callout.stats().snapshot();
        assert_eq!(s.rejected, 4);
        assert_eq!(s.rejected_by_reason.get("expired"), Some(&1));
    }

    #[test]
    fn bad_requests_get_no_answer() {
        let f = fixture(false);
        let token = f.token(Grant { mid: 1, ..Grant::default() });
        // Signed by a user key, not a server.
        let (req, _) = f.request(json!({"auth_token": token}));
        let mut claims = natsjwt::decode_unverified(&req).unwrap().claims;
        let not_server = natsjwt::encode(&claims, &KeyPair::new_user()).unwrap();
        assert!(f.callout.answer(not_server.as_bytes(), None).is_err());
        // Another server's key than the one named in server_id.
        let other = natsjwt::encode(&claims, &KeyPair::new_server()).unwrap();
        assert!(matches!(f.callout.answer(other.as_bytes(), None), Err(RequestError::NotARequest(_))));
        // Expired beyond the clock leeway (a little past exp is tolerated).
        let now = goim_token::now_secs();
        let mut old = claims.clone();
        old["exp"] = json!(now - REQUEST_CLOCK_LEEWAY_SECS - 5);
        let stale = natsjwt::encode(&old, &f.server).unwrap();
        assert_eq!(f.callout.answer(stale.as_bytes(), None).unwrap_err(), RequestError::Jwt(natsjwt::JwtError::Expired));
        old["exp"] = json!(now - 3);
        let late = natsjwt::encode(&old, &f.server).unwrap();
        assert!(f.callout.answer(late.as_bytes(), None).is_ok());
        // Wrong audience.
        claims["aud"] = json!("something-else");
        let wrong_aud = natsjwt::encode(&claims, &f.server).unwrap();
        assert!(matches!(f.callout.answer(wrong_aud.as_bytes(), None), Err(RequestError::NotARequest(_))));
        // Encrypted without an xkey configured; garbage.
        assert_eq!(
            f.callout.answer(b"xkv1garbage", Some(&f.server_x.public_key())).unwrap_err(),
            RequestError::EncryptedWithoutXkey
        );
        assert!(f.callout.answer(b"\xff\xfe", None).is_err());
        assert_eq!(f.callout.stats().snapshot().bad_request, 6);
    }

    #[test]
    fn issuer_mismatch_is_refused_fast() {
        let f = fixture(false);
        let token = f.token(Grant { mid: 1, ..Grant::default() });
        let (req, _) = f.request(json!({"auth_token": token}));
        let mut claims = natsjwt::decode_unverified(&req).unwrap().claims;
        claims["sub"] = json!(KeyPair::new_account().public_key());
        let req = natsjwt::encode(&claims, &f.server).unwrap();
        let a = f.callout.answer(req.as_bytes(), None).unwrap();
        assert!(matches!(a.decision, Decision::Rejected { reason, .. } if reason == "issuer_mismatch"));
    }

    #[test]
    fn sealed_requests_get_sealed_answers() {
        let f = fixture(true);
        let token = f.token(Grant { mid: 2, ..Grant::default() });
        let (req, _) = f.request(json!({"auth_token": token}));
        let ours = XKey::from_public_key(&f.keys.xkey_public).unwrap();
        let sealed = f.server_x.seal(req.as_bytes(), &ours).unwrap();
        let a = f.callout.answer(&sealed, Some(&f.server_x.public_key())).unwrap();
        assert_eq!(a.decision, Decision::Accepted { mid: 2 });
        assert!(a.payload.starts_with(b"xkv1"));
        let (resp, user) = f.open(&a, true);
        assert!(user.is_some(), "{resp}");
        // Sealed by someone else: not opened.
        let stranger = XKey::new();
        let bad = stranger.seal(req.as_bytes(), &ours).unwrap();
        assert!(matches!(f.callout.answer(&bad, Some(&f.server_x.public_key())), Err(RequestError::Decrypt(_))));
        // A plaintext request is still answered in plaintext.
        let a = f.callout.answer(req.as_bytes(), None).unwrap();
        assert!(a.payload.starts_with(b"eyJ"));
    }

    #[test]
    fn config_errors() {
        let (_, v) = {
            let dir = tempfile::tempdir().unwrap();
            let (key, _, _) = SigningKey::generate_ed25519_files("k", dir.path()).unwrap();
            (dir, Verifier::new(KeySet::new(vec![key.verifying]), "i", "a", 0))
        };
        let keys = CalloutKeys::generate();
        let ok = CalloutConfig { issuer_seed: keys.issuer_seed.clone(), xkey_seed: None, account: "APP".into() };
        assert!(Callout::new(ok.clone(), v.clone()).is_ok());
        let user_seed = KeyPair::new_user().seed().unwrap();
        assert!(matches!(Callout::new(CalloutConfig { issuer_seed: user_seed, ..ok.clone() }, v.clone()), Err(CalloutError::IssuerSeed(_))));
        assert!(matches!(Callout::new(CalloutConfig { issuer_seed: "nope".into(), ..ok.clone() }, v.clone()), Err(CalloutError::IssuerSeed(_))));
        assert!(matches!(Callout::new(CalloutConfig { xkey_seed: Some(keys.issuer_seed.clone()), ..ok.clone() }, v.clone()), Err(CalloutError::XkeySeed(_))));
        assert!(matches!(Callout::new(CalloutConfig { account: " ".into(), ..ok.clone() }, v.clone()), Err(CalloutError::NoAccount)));
        // The committed dev keys (comment lines in the files) match dev.conf.
        let conf_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats-conf");
        let dev = CalloutConfig::from_files(
            &conf_dir.join("dev-callout-issuer.nk"),
            Some(&conf_dir.join("dev-callout-xkey.nk")),
            "APP",
        )
        .unwrap();
        let c = Callout::new(dev, v).unwrap();
        assert_eq!(c.issuer_public_key(), "AD6HW7N7PVHQWI245NIOR72FMYTF3E4OD5D3TN67LI56IYXHBGASSTXF");
        assert_eq!(c.xkey_public_key().as_deref(), Some("XAFRLNBMVM2A6JYKM5VD4TLWPWCYLCF2JQDQAVYLRFCDTV3GXOLXO3WA"));
        assert!(matches!(
            CalloutConfig::from_files(&conf_dir.join("missing.nk"), None, "APP"),
            Err(CalloutError::SeedFile(..))
        ));
    }
}

// ---------------------------------------------------------------------------------------------------
// WIRING NOTE for `lib.rs::start_callout` (owned by the lead; this is the suggested body):
//
//     let cc = callout::CalloutConfig::from_files(
//         &cfg.callout.issuer_seed_file,
//         cfg.callout.xkey_seed_file.as_deref(),
//         &cfg.callout.account,
//     )
//     .map_err(|e| StartError::Callout(e.to_string()))?;
//     let verifier = goim_token::Verifier::new(
//         state.keys.verifying.clone(), &cfg.tokens.issuer, &cfg.tokens.audience, /* leeway */ 0);
//     let c = std::sync::Arc::new(
//         callout::Callout::new(cc, verifier).map_err(|e| StartError::Callout(e.to_string()))?);
//     info!(issuer = %c.issuer_public_key(), xkey = ?c.xkey_public_key(), "auth callout keys");
//     // keep c.stats() (Arc<CalloutStats>) in AuthState to report `snapshot()` with the other counters
//     c.spawn(client.clone(), &cfg.nats.queue_group)
//         .await
//         .map_err(|e| StartError::Callout(e.to_string()))?;
//
// `client` must be a user of the callout account (`callout` in AUTH in nats-conf/dev.conf). The
// verifier must follow key rotation like the edges' (Verifier::set_keys on the same instance).
