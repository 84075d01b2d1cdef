//! Minimal NATS JWTs (nats-io/jwt v2 wire format), enough for the auth callout.
//!
//! A NATS JWT is `base64url(header).base64url(claims).base64url(signature)` without padding, where the
//! header is `{"typ":"JWT","alg":"ed25519-nkey"}` and the signature is the Ed25519 signature of the
//! nkey named by `iss` over the ASCII bytes `header.claims` (v2; v1 signed only the claims, and we
//! neither write nor accept v1). `iss` is an nkey public key whose first letter says its kind: `N`
//! server (authorization requests), `A` account (user JWTs and authorization responses).
//!
//! The claim sets the callout exchanges are typed here: [`AuthRequestClaims`] (what nats-server sends
//! on `$SYS.REQ.USER.AUTH`), [`UserClaims`] and [`AuthResponseClaims`] (what we answer). Field names
//! follow nats-io/jwt v2 (`authorization_claims.go`, `user_claims.go`, `types.go`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header of every v2 NATS JWT, byte for byte as nats-io/jwt writes it.
pub const HEADER_JSON: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;
/// The only algorithm of v2 NATS JWTs.
pub const ALG: &str = "ed25519-nkey";
/// `aud` of every authorization request nats-server sends.
pub const AUTH_REQUEST_AUDIENCE: &str = "nats-authorization-request";
/// `nats.type` of an authorization request.
pub const AUTH_REQUEST_TYPE: &str = "authorization_request";
/// `nats.type` of an authorization response.
pub const AUTH_RESPONSE_TYPE: &str = "authorization_response";
/// `nats.type` of a user JWT.
pub const USER_TYPE: &str = "user";
/// `nats.version` we write (and the highest nats-io/jwt accepts).
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("unsupported JWT header: {0}")]
    BadHeader(String),
    #[error("issuer {0:?} is not a valid public nkey")]
    BadIssuer(String),
    #[error("issuer {got:?} is not the expected {expected}")]
    UnexpectedIssuer { expected: String, got: String },
    #[error("JWT signature is invalid")]
    BadSignature,
    #[error("JWT expired")]
    Expired,
    #[error("JWT is not valid yet")]
    NotYetValid,
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A decoded JWT: the parsed header and claims (no typing beyond JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub header: Value,
    pub claims: Value,
}

impl Decoded {
    /// The claims as a typed struct.
    pub fn claims_as<T: for<'de> Deserialize<'de>>(&self) -> Result<T, JwtError> {
        serde_json::from_value(self.claims.clone()).map_err(|e| JwtError::Malformed(format!("claims: {e}")))
    }

    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Who must have signed a JWT for [`decode_verified`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedIssuer<'a> {
    /// Exactly this public nkey.
    Key(&'a str),
    /// Any public nkey of this kind (e.g. any server: nats-server signs authorization requests with a
    /// key it generates at start, which we cannot know in advance).
    AnyOfKind(KeyKind),
}

/// The kind of a public nkey, from its prefix letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `N…`
    Server,
    /// `A…`
    Account,
    /// `U…`
    User,
    /// `O…`
    Operator,
}

impl KeyKind {
    /// The kind of a valid public nkey (checksum verified); `None` for anything else.
    pub fn of(public_key: &str) -> Option<KeyKind> {
        KeyPair::from_public_key(public_key).ok()?;
        match public_key.as_bytes().first()? {
            b'N' => Some(KeyKind::Server),
            b'A' => Some(KeyKind::Account),
            b'U' => Some(KeyKind::User),
            b'O' => Some(KeyKind::Operator),
            _ => None,
        }
    }
}

/// Sign `claims` (a JSON object) with `kp`. As nats-io/jwt does, the signer is the issuer: `iss` is
/// set to `kp`'s public key; `iat` (now) and `jti` (a random id) are added when absent.
pub fn encode(claims: &Value, kp: &KeyPair) -> Result<String, JwtError> {
    let mut obj: Map<String, Value> = match claims {
        Value::Object(m) => m.clone(),
        _ => return Err(JwtError::Sign("claims must be a JSON object".into())),
    };
    obj.insert("iss".into(), Value::String(kp.public_key()));
    obj.entry("iat").or_insert_with(|| Value::from(goim_token::now_secs()));
    obj.entry("jti").or_insert_with(|| Value::String(uuid::Uuid::new_v4().simple().to_string().to_uppercase()));
    let payload = serde_json::to_vec(&Value::Object(obj)).map_err(|e| JwtError::Sign(e.to_string()))?;
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER_JSON), URL_SAFE_NO_PAD.encode(payload));
    let sig = kp.sign(signing_input.as_bytes()).map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// [`encode`] for any serializable claims struct.
pub fn encode_claims<T: Serialize>(claims: &T, kp: &KeyPair) -> Result<String, JwtError> {
    let v = serde_json::to_value(claims).map_err(|e| JwtError::Sign(e.to_string()))?;
    encode(&v, kp)
}

fn split(jwt: &str) -> Result<(&str, &str, &str), JwtError> {
    let mut parts = jwt.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => Ok((h, c, s)),
        _ => Err(JwtError::Malformed("expected 3 dot-separated parts".into())),
    }
}

fn b64_json(part: &str, what: &str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| JwtError::Malformed(format!("{what}: {e}")))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| JwtError::Malformed(format!("{what}: {e}")))?;
    if !v.is_object() {
        return Err(JwtError::Malformed(format!("{what} is not a JSON object")));
    }
    Ok(v)
}

/// Decode header and claims without checking the signature (for logs and tests). The header must
/// still name `ed25519-nkey`.
pub fn decode_unverified(jwt: &str) -> Result<Decoded, JwtError> {
    let (h, c, _) = split(jwt.trim())?;
    let header = b64_json(h, "header")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !alg.eq_ignore_ascii_case(ALG) {
        return Err(JwtError::BadHeader(format!("alg {alg:?}")));
    }
    if let Some(typ) = header.get("typ").and_then(Value::as_str) {
        if !typ.eq_ignore_ascii_case("JWT") {
            return Err(JwtError::BadHeader(format!("typ {typ:?}")));
        }
    }
    let claims = b64_json(c, "claims")?;
    Ok(Decoded { header, claims })
}

/// Decode and verify: the `iss` nkey is the expected one (or of the expected kind), its signature over
/// `header.claims` verifies, and `exp`/`nbf` (when set, seconds) hold now (no leeway).
pub fn decode_verified(jwt: &str, expected: ExpectedIssuer<'_>) -> Result<Decoded, JwtError> {
    decode_verified_at(jwt, expected, goim_token::now_secs(), 0)
}

/// [`decode_verified`] at `now_secs`, tolerating `leeway_secs` of clock difference on `exp`/`nbf`.
pub fn decode_verified_at(
    jwt: &str,
    expected: ExpectedIssuer<'_>,
    now_secs: u64,
    leeway_secs: u64,
) -> Result<Decoded, JwtError> {
    let jwt = jwt.trim();
    let decoded = decode_unverified(jwt)?;
    let iss = decoded.issuer().ok_or_else(|| JwtError::Malformed("no iss".into()))?.to_string();
    let kp = KeyPair::from_public_key(&iss).map_err(|_| JwtError::BadIssuer(iss.clone()))?;
    match expected {
        ExpectedIssuer::Key(k) if k != iss => {
            return Err(JwtError::UnexpectedIssuer { expected: k.to_string(), got: iss })
        }
        ExpectedIssuer::AnyOfKind(kind) if KeyKind::of(&iss) != Some(kind) => {
            return Err(JwtError::UnexpectedIssuer { expected: format!("a {kind:?} key"), got: iss })
        }
        _ => {}
    }
    let (h, c, s) = split(jwt)?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|e| JwtError::Malformed(format!("signature: {e}")))?;
    let signing_input = &jwt[..h.len() + 1 + c.len()];
    kp.verify(signing_input.as_bytes(), &sig).map_err(|_| JwtError::BadSignature)?;
    let num = |k: &str| decoded.claims.get(k).and_then(Value::as_i64).unwrap_or(0);
    let (exp, nbf) = (num("exp"), num("nbf"));
    let (now, leeway) = (now_secs as i64, leeway_secs as i64);
    if exp > 0 && now > exp + leeway {
        return Err(JwtError::Expired);
    }
    if nbf > 0 && nbf > now + leeway {
        return Err(JwtError::NotYetValid);
    }
    Ok(decoded)
}

// ---------------------------------------------------------------------------------------------------
// Claim sets of the auth callout (nats-io/jwt v2 field names).

/// `nats.server_id` of a request: the server that holds the connecting client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerId {
    pub name: String,
    pub host: String,
    /// The server's public nkey (`N…`); the response's `aud` must be this.
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The server's curve public key (`X…`) when the request is encrypted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

/// `nats.client_info` of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    pub host: String,
    pub id: u64,
    pub user: String,
    pub name: String,
    pub kind: String,
    /// `nats`, `websocket`, `mqtt`, `leafnode`…
    #[serde(rename = "type")]
    pub kind_type: String,
    pub name_tag: String,
}

/// `nats.connect_opts` of a request: what the client put in its CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectOpts {
    pub jwt: String,
    pub nkey: String,
    pub sig: String,
    pub auth_token: String,
    pub user: String,
    pub pass: String,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub protocol: i64,
}

/// The `nats` object of an authorization request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthRequest {
    pub server_id: ServerId,
    /// The public user nkey the server generated for this connection; the user JWT's `sub` and the
    /// response's `sub` must be this (it binds the answer to this one connect).
    pub user_nkey: String,
    pub client_info: ClientInfo,
    pub connect_opts: ConnectOpts,
    pub client_tls: Option<Value>,
    pub request_nonce: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
}

/// A whole authorization request JWT's claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthRequestClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub nats: AuthRequest,
}

/// An allow list (`pub`/`sub` of a user JWT).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// `resp`: may publish to the reply subject of a received request, `max` times within `ttl`
/// (nanoseconds, 0 = no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePermission {
    pub max: i64,
    pub ttl: i64,
}

/// The `nats` object of a user JWT (permissions and limits flattened, as nats-io/jwt writes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "pub")]
    pub publish: Permission,
    #[serde(rename = "sub")]
    pub subscribe: Permission,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponsePermission>,
    /// Connection types the user may use (`STANDARD`, `WEBSOCKET`, `MQTT`, `LEAFNODE`…); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_connection_types: Vec<String>,
    /// -1 = no limit (nats-io/jwt's defaults).
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
}

/// A user JWT's claims. In server-config (non-operator) mode the callout's user JWT is signed by the
/// callout issuer and `aud` names the account the user is placed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    /// The user nkey from the request.
    pub sub: String,
    /// Target account name (server-config mode).
    pub aud: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Unix seconds; the server disconnects the client with `User Authentication Expired` then.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exp: u64,
    pub nats: User,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The `nats` object of an authorization response: exactly one of `jwt` and `error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponse {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
}

/// An authorization response JWT's claims: `sub` = the request's user nkey, `aud` = the server id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponseClaims {
    pub sub: String,
    pub aud: String,
    pub nats: AuthResponse,
}

impl AuthResponseClaims {
    pub fn allow(user_nkey: &str, server_id: &str, user_jwt: String) -> AuthResponseClaims {
        AuthResponseClaims {
            sub: user_nkey.into(),
            aud: server_id.into(),
            nats: AuthResponse { jwt: user_jwt, error: String::new(), kind: AUTH_RESPONSE_TYPE.into(), version: VERSION },
        }
    }

    pub fn deny(user_nkey: &str, server_id: &str, error: String) -> AuthResponseClaims {
        AuthResponseClaims {
            sub: user_nkey.into(),
            aud: server_id.into(),
            nats: AuthResponse { jwt: String::new(), error, kind: AUTH_RESPONSE_TYPE.into(), version: VERSION },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A real authorization request captured from nats-server 2.15.1 (token `secret-token`, user nkey
    /// generated by the server; `exp` lies in the past, so it only verifies at its own time).
    const CAPTURED_REQUEST: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJhdWQiOiJuYXRzLWF1dGhvcml6YXRpb24tcmVxdWVzdCIsImV4cCI6MTc5NTk1OTc1NiwianRpIjoiNTVYUUxLNVlFNEVBSTJHN1JKVVpaVldKRzJIUzNBVVNGNUkyWllTWDVVSVdZM1RCVDNNQSIsImlhdCI6MTc5NTk1OTc1NCwiaXNzIjoiTkFSSDRRQzY1MjVMTzNDNjJHQkpPQllOQVZLWlpHUUMyTjJHTUtPUFlFNks1M0lWQkhTRlpQNlQiLCJzdWIiOiJBRDZIVzdON1BWSFFXSTI0NU5JT1I3MkZNWVRGM0U0T0Q1RDNUTjY3TEk1NklZWEhCR0FTU1RYRiIsIm5hdHMiOnsic2VydmVyX2lkIjp7Im5hbWUiOiJnb2ltLWRldiIsImhvc3QiOiIxMjcuMC4wLjEiLCJpZCI6Ik5BUkg0UUM2NTI1TE8zQzYyR0JKT0JZTkFWS1paR1FDMk4yR01LT1BZRTZLNTNJVkJIU0ZaUDZUIiwidmVyc2lvbiI6IjIuMTUuMSJ9LCJ1c2VyX25rZXkiOiJVQzYyQzZEREZQSVNJT05ER0lEMkxZNUhFQzRZSFJTVkZLVE03UTM3STdDREhKUUlOUUxKQjM0NyIsImNsaWVudF9pbmZvIjp7Imhvc3QiOiIxMjcuMC4wLjEiLCJpZCI6MTAsInVzZXIiOiJbUkVEQUNURURdIiwibmFtZSI6ImNhcCIsImtpbmQiOiJDbGllbnQiLCJ0eXBlIjoibmF0cyJ9LCJjb25uZWN0X29wdHMiOnsiYXV0aF90b2tlbiI6InNlY3JldC10b2tlbiIsIm5hbWUiOiJjYXAiLCJwcm90b2NvbCI6MX0sInR5cGUiOiJhdXRob3JpemF0aW9uX3JlcXVlc3QiLCJ2ZXJzaW9uIjoyfX0.HTciRZR6uFeWrUma0e8s0KeEeZuTKSM-spbWLoEA6unUlmZ087AMb0ZT5ZDsM8ExJMOhMw9511FzDWxgavvwCw";
    /// `iat` of the captured request.
    const CAPTURED_AT: u64 = 1_795_959_754;

    #[test]
    fn round_trip_and_header() {
        let kp = KeyPair::new_account();
        let jwt = encode(&json!({"sub": "x", "aud": "y", "nats": {"type": "user", "version": 2}}), &kp).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), HEADER_JSON.as_bytes());
        assert!(!jwt.contains('='), "no padding");
        let d = decode_verified(&jwt, ExpectedIssuer::Key(&kp.public_key())).unwrap();
        assert_eq!(d.claims["sub"], "x");
        assert_eq!(d.claims["iss"], kp.public_key());
        assert!(d.claims["iat"].as_u64().unwrap() > 1_700_000_000);
        assert!(!d.claims["jti"].as_str().unwrap().is_empty());
        assert!(decode_verified(&jwt, ExpectedIssuer::AnyOfKind(KeyKind::Account)).is_ok());
        assert!(matches!(
            decode_verified(&jwt, ExpectedIssuer::AnyOfKind(KeyKind::Server)),
            Err(JwtError::UnexpectedIssuer { .. })
        ));
        let other = KeyPair::new_account();
        assert!(matches!(
            decode_verified(&jwt, ExpectedIssuer::Key(&other.public_key())),
            Err(JwtError::UnexpectedIssuer { .. })
        ));
    }

    #[test]
    fn iss_is_always_the_signer() {
        let kp = KeyPair::new_account();
        let jwt = encode(&json!({"iss": "ABOGUS", "sub": "x"}), &kp).unwrap();
        assert_eq!(decode_unverified(&jwt).unwrap().claims["iss"], kp.public_key());
        assert!(encode(&json!([1, 2]), &kp).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let kp = KeyPair::new_server();
        let jwt = encode(&json!({"sub": "x", "nats": {"user_nkey": "U1"}}), &kp).unwrap();
        let (h, c, s) = split(&jwt).unwrap();
        let any_server = ExpectedIssuer::AnyOfKind(KeyKind::Server);

        // Changed claims, original signature.
        let mut claims = decode_unverified(&jwt).unwrap().claims;
        claims["nats"]["user_nkey"] = json!("U2");
        let forged = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        assert_eq!(decode_verified(&forged, any_server), Err(JwtError::BadSignature));

        // Re-signed by another server key but claiming the first one as issuer.
        let evil = KeyPair::new_server();
        let sig = evil.sign(format!("{h}.{}", URL_SAFE_NO_PAD.encode(claims.to_string())).as_bytes()).unwrap();
        let forged2 = format!("{h}.{}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()), URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(decode_verified(&forged2, any_server), Err(JwtError::BadSignature));

        // Another algorithm in the header.
        let none_hdr = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"none"}"#);
        assert!(matches!(decode_verified(&format!("{none_hdr}.{c}.{s}"), any_server), Err(JwtError::BadHeader(_))));
        // Truncated, garbage, empty signature.
        assert!(matches!(decode_verified(&format!("{h}.{c}"), any_server), Err(JwtError::Malformed(_))));
        assert!(matches!(decode_verified("a.b.c", any_server), Err(JwtError::Malformed(_))));
        assert_eq!(decode_verified(&format!("{h}.{c}."), any_server), Err(JwtError::BadSignature));
        // An issuer that is not an nkey.
        let bad_iss = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(json!({"iss": "nope"}).to_string()));
        assert!(matches!(decode_verified(&bad_iss, any_server), Err(JwtError::BadIssuer(_))));
        // The genuine one still verifies.
        assert!(decode_verified(&jwt, any_server).is_ok());
    }

    #[test]
    fn expiry_and_not_before() {
        let kp = KeyPair::new_server();
        let now = goim_token::now_secs();
        let any = ExpectedIssuer::AnyOfKind(KeyKind::Server);
        let old = encode(&json!({"sub": "x", "exp": now - 5}), &kp).unwrap();
        assert_eq!(decode_verified(&old, any), Err(JwtError::Expired));
        assert!(decode_verified_at(&old, any, now - 10, 0).is_ok());
        assert!(decode_verified_at(&old, any, now, 5).is_ok(), "within the leeway");
        assert_eq!(decode_verified_at(&old, any, now + 1, 5), Err(JwtError::Expired));
        let future = encode(&json!({"sub": "x", "nbf": now + 50}), &kp).unwrap();
        assert_eq!(decode_verified(&future, any), Err(JwtError::NotYetValid));
    }

    #[test]
    fn typed_claims_serialize_like_nats_io_jwt() {
        let user = UserClaims {
            sub: "UABC".into(),
            aud: "APP".into(),
            name: "mid:7".into(),
            exp: 99,
            nats: User {
                publish: Permission { allow: vec!["ingress.none".into()], deny: vec![] },
                subscribe: Permission { allow: vec!["user.7".into()], deny: vec![] },
                resp: None,
                allowed_connection_types: vec!["STANDARD".into()],
                subs: -1,
                data: -1,
                payload: -1,
                kind: USER_TYPE.into(),
                version: VERSION,
            },
        };
        let v = serde_json::to_value(&user).unwrap();
        assert_eq!(
            v,
            json!({"sub": "UABC", "aud": "APP", "name": "mid:7", "exp": 99, "nats": {
                "pub": {"allow": ["ingress.none"]}, "sub": {"allow": ["user.7"]},
                "allowed_connection_types": ["STANDARD"],
                "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}})
        );
        let deny = serde_json::to_value(AuthResponseClaims::deny("U1", "N1", "no".into())).unwrap();
        assert_eq!(deny, json!({"sub": "U1", "aud": "N1", "nats": {"error": "no", "type": "authorization_response", "version": 2}}));
    }

    #[test]
    fn captured_server_request_verifies() {
        let any_server = ExpectedIssuer::AnyOfKind(KeyKind::Server);
        // Its exp (iat + auth timeout) has passed by now.
        assert_eq!(decode_verified(CAPTURED_REQUEST, any_server), Err(JwtError::Expired));
        let d = decode_verified_at(CAPTURED_REQUEST, any_server, CAPTURED_AT, 0).unwrap();
        assert_eq!(d.header, serde_json::from_str::<Value>(HEADER_JSON).unwrap());
        let c: AuthRequestClaims = d.claims_as().unwrap();
        assert_eq!(c.aud, AUTH_REQUEST_AUDIENCE);
        assert_eq!(c.nats.kind, AUTH_REQUEST_TYPE);
        assert_eq!(c.nats.version, 2);
        assert_eq!(c.nats.server_id.id, c.iss, "server id is the signing key");
        assert!(c.nats.user_nkey.starts_with('U'));
        assert_eq!(c.nats.connect_opts.auth_token, "secret-token");
        assert!(KeyPair::from_public_key(&c.sub).is_ok(), "sub is the callout issuer");
        // One flipped byte in the claims breaks it.
        let mut bytes = CAPTURED_REQUEST.trim().as_bytes().to_vec();
        let i = bytes.iter().position(|&b| b == b'.').unwrap() + 10;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(decode_verified_at(&tampered, any_server, CAPTURED_AT, 0).is_err());
    }
}
