//! Verifying tokens: signature by a known key id, algorithm bound to the key, issuer, audience,
//! expiry and not-before. Every failure has its own reason, which enforcers log and count.

use std::sync::{Arc, RwLock};

use jsonwebtoken::{decode, decode_header, Validation};

use crate::claims::Claims;
use crate::keys::KeySet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a JWT: {0}")]
    Malformed(String),
    #[error("token has no key id (kid)")]
    NoKid,
    #[error("token is signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("token algorithm does not match key {0:?}")]
    WrongAlgorithm(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not ours")]
    WrongIssuer,
    #[error("token audience is not ours")]
    WrongAudience,
}

impl TokenError {
    /// A short stable name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::NoKid => "no_kid",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::WrongAlgorithm(_) => "wrong_algorithm",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
        }
    }
}

/// The largest clock skew a verifier tolerates on `exp`/`nbf` (an hour: more is a misconfiguration, and
/// an absurd value would overflow the JWT library's unchecked `now ± leeway`).
pub const MAX_LEEWAY_SECS: u64 = 3600;

/// Verifies tokens against a key set that can be replaced while running (key rotation).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Arc<RwLock<KeySet>>,
    issuer: String,
    audience: String,
    /// Clock skew tolerated on exp/nbf, in seconds.
    leeway_secs: u64,
}

impl Verifier {
    /// `leeway_secs` is capped at [`MAX_LEEWAY_SECS`] (the services' config validation refuses more):
    /// the JWT library adds it to the clock unchecked.
    pub fn new(keys: KeySet, issuer: &str, audience: &str, leeway_secs: u64) -> Verifier {
        Verifier {
            keys: Arc::new(RwLock::new(keys)),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: leeway_secs.min(MAX_LEEWAY_SECS),
        }
    }

    /// Replace the accepted keys (a key removed here is refused from now on).
    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).kids()
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let kid = header.kid.ok_or(TokenError::NoKid)?;
        let key = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            keys.get(&kid).cloned().ok_or_else(|| TokenError::UnknownKey(kid.clone()))?
        };
        // The key decides the algorithm; the header's claim must agree (no alg confusion).
        if header.alg != key.alg.jwt() {
            return Err(TokenError::WrongAlgorithm(kid));
        }
        let mut v = Validation::new(key.alg.jwt());
        v.leeway = self.leeway_secs;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        use jsonwebtoken::errors::ErrorKind;
        decode::<Claims>(token, &key.key, &v).map(|d| d.claims).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm(kid.clone()),
            _ => TokenError::Malformed(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Grant;
    use crate::keys::{Algorithm, KeyError, SigningKey, VerifyingKey};
    use crate::mint::Minter;
    use crate::now_secs;

    fn minter(dir: &std::path::Path, kid: &str) -> Minter {
        let (key, _, _) = SigningKey::generate_ed25519_files(kid, dir).unwrap();
        Minter { key, issuer: "goim-authsvc".into(), audience: "goim".into(), default_ttl_secs: 60, max_ttl_secs: 3600 }
    }

    fn verifier(keys: Vec<VerifyingKey>) -> Verifier {
        Verifier::new(KeySet::new(keys), "goim-authsvc", "goim", 0)
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("goim-token-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mint_then_verify_round_trip() {
        let dir = tmp();
        let m = minter(&dir, "k1");
        let grant = Grant { mid: 42, rooms: vec!["live://1".into()], accepts: vec![1000], ..Grant::default() };
        let (token, claims) = m.mint(&grant).unwrap();
        let v = verifier(vec![m.key.verifying.clone()]);
        let got = v.verify(&token).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.mid, 42);
        assert!(got.exp > got.iat);
        // Keys loaded back from the written files verify too.
        let from_pub = VerifyingKey::load("k1", Algorithm::EdDSA, &dir.join("k1.pub.pem")).unwrap();
        let from_priv = VerifyingKey::load("k1", Algorithm::EdDSA, &dir.join("k1.pem")).unwrap();
        assert!(verifier(vec![from_pub]).verify(&token).is_ok());
        assert!(verifier(vec![from_priv]).verify(&token).is_ok());
        let reloaded = SigningKey::load("k1", Algorithm::EdDSA, &dir.join("k1.pem")).unwrap();
        assert_eq!(reloaded.verifying.ed25519_public, m.key.verifying.ed25519_public);
    }

    #[test]
    fn every_failure_has_its_reason() {
        let dir = tmp();
        let m = minter(&dir, "k1");
        let other = minter(&dir, "k2");
        let v = verifier(vec![m.key.verifying.clone()]);
        let now = now_secs();
        let base = m.mint(&Grant { mid: 1, ..Grant::default() }).unwrap().1;

        let expired = m.sign(Claims { exp: now - 10, nbf: now - 100, iat: now - 100, ..base.clone() }).unwrap().0;
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        let future = m.sign(Claims { nbf: now + 100, exp: now + 200, ..base.clone() }).unwrap().0;
        assert_eq!(v.verify(&future), Err(TokenError::NotYetValid));
        let wrong_iss = m.sign(Claims { iss: "evil".into(), ..base.clone() }).unwrap().0;
        assert_eq!(v.verify(&wrong_iss), Err(TokenError::WrongIssuer));
        let wrong_aud = m.sign(Claims { aud: "other".into(), ..base.clone() }).unwrap().0;
        assert_eq!(v.verify(&wrong_aud), Err(TokenError::WrongAudience));
        let unknown = other.sign(base.clone()).unwrap().0;
        assert_eq!(v.verify(&unknown), Err(TokenError::UnknownKey("k2".into())));

        // A token signed by k2 but claiming kid k1: the signature does not verify.
        let mut forged_minter = other.clone();
        forged_minter.key.kid = "k1".into();
        let forged = forged_minter.sign(base.clone()).unwrap().0;
        assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));

        // Tampered claims.
        let good = m.sign(base.clone()).unwrap().0;
        let parts: Vec<&str> = good.split('.').collect();
        use base64::Engine;
        let mut c: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap(),
        )
        .unwrap();
        c["mid"] = 2.into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string()),
            parts[2]
        );
        assert_eq!(v.verify(&tampered), Err(TokenError::BadSignature));

        assert!(matches!(v.verify("not a token"), Err(TokenError::Malformed(_))));
        assert!(matches!(v.verify(""), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn hs256_and_no_algorithm_confusion() {
        let dir = tmp();
        let secret_path = dir.join("hs.key");
        std::fs::write(&secret_path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let key = SigningKey::load("hs1", Algorithm::HS256, &secret_path).unwrap();
        let m = Minter { key, issuer: "goim-authsvc".into(), audience: "goim".into(), default_ttl_secs: 60, max_ttl_secs: 60 };
        let (token, _) = m.mint(&Grant { mid: 5, ..Grant::default() }).unwrap();
        let vk = VerifyingKey::load("hs1", Algorithm::HS256, &secret_path).unwrap();
        assert_eq!(verifier(vec![vk]).verify(&token).unwrap().mid, 5);

        // An HS256 token whose kid names an EdDSA key is refused, whatever its MAC.
        let ed = minter(&dir, "hs1");
        assert_eq!(verifier(vec![ed.key.verifying.clone()]).verify(&token), Err(TokenError::WrongAlgorithm("hs1".into())));

        std::fs::write(&secret_path, "short").unwrap();
        assert!(matches!(SigningKey::load("hs1", Algorithm::HS256, &secret_path), Err(KeyError::ShortSecret { .. })));
    }

    #[test]
    fn rotation_by_replacing_the_key_set() {
        let dir = tmp();
        let k1 = minter(&dir, "k1");
        let k2 = minter(&dir, "k2");
        let t1 = k1.mint(&Grant::default()).unwrap().0;
        let t2 = k2.mint(&Grant::default()).unwrap().0;
        let v = verifier(vec![k1.key.verifying.clone(), k2.key.verifying.clone()]);
        assert!(v.verify(&t1).is_ok() && v.verify(&t2).is_ok());
        v.set_keys(KeySet::new(vec![k2.key.verifying.clone()]));
        assert_eq!(v.verify(&t1), Err(TokenError::UnknownKey("k1".into())));
        assert!(v.verify(&t2).is_ok());
    }

    #[test]
    fn jwks_round_trip_keeps_only_public_keys() {
        let dir = tmp();
        let k1 = minter(&dir, "k1");
        let secret_path = dir.join("hs.key");
        std::fs::write(&secret_path, "0123456789abcdef0123456789abcdef").unwrap();
        let hs = VerifyingKey::load("hs", Algorithm::HS256, &secret_path).unwrap();
        let set = KeySet::new(vec![k1.key.verifying.clone(), hs]);
        let jwks = set.to_jwks();
        assert_eq!(jwks.keys.len(), 1);
        let back = KeySet::from_jwks(&jwks).unwrap();
        let t = k1.mint(&Grant::default()).unwrap().0;
        assert!(Verifier::new(back, "goim-authsvc", "goim", 0).verify(&t).is_ok());
        let mut bad = jwks.clone();
        bad.keys[0].x = "AAAA".into();
        assert!(KeySet::from_jwks(&bad).is_err());
    }
}
