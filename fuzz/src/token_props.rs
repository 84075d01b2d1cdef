//! Properties of token verification (`goim_token::Verifier::verify`) and of the published key set
//! (`KeySet::from_jwks`): no panic on any input, and only a token really signed by a configured key,
//! with the right algorithm, issuer, audience and validity window, verifies.
//!
//! This file is compiled twice: as `goim_fuzz::token_props` for the `token_verify` target, and as a
//! module of `token/tests/fuzz_smoke.rs` (proptest + corpus replay on stable). Keep it free of
//! `crate::` paths and of dependencies other than `goim_token`, `jsonwebtoken` and `serde_json`.
//!
//! Input format of `token_verify` (documented in fuzz/README.md, produced by [`seeds`]): the first
//! byte % 4 picks a mode, the rest is its argument:
//! - 0: an arbitrary string (lossy UTF-8) to verify;
//! - 1: `[base] [kind pos_hi pos_lo val]*`: a valid token (base % 2: EdDSA or HS256) edited by up to 64
//!   operations (kind % 6: xor, set, insert, remove, truncate at pos, splice in the other token's
//!   segment that contains pos); pos is taken modulo the current length + 1;
//! - 2: `[variant] [claims JSON]`: the JSON signed as a token's claims (variant % 6: EdDSA, HS256, an HS256
//!   MAC under the EdDSA key's kid, no kid, an unknown kid, an EdDSA signature under the HS256 key's kid);
//! - 3: a JSON document parsed as a JWKS (and a grant and claims).

#![allow(dead_code)]

use std::sync::OnceLock;

use goim_token::{Algorithm, Claims, Grant, Jwks, KeySet, Minter, SigningKey, TokenError, Verifier};
use jsonwebtoken::{EncodingKey, Header};

/// A fuzz-only Ed25519 private key (PKCS#8 PEM), generated for these tests and used nowhere else.
pub const ED_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGf3tRmCAuUa0UmRDi3HDcebgc4TgVRbl3wjFY3H4mkh\n-----END PRIVATE KEY-----\n";
/// A fuzz-only HS256 secret.
pub const HS_SECRET: &[u8] = b"goim-fuzz-only-hs256-secret-0123456789";
pub const ED_KID: &str = "ed1";
pub const HS_KID: &str = "hs1";
pub const ISS: &str = "goim-authsvc";
pub const AUD: &str = "goim";
pub const LEEWAY: u64 = 60;
/// Slack on the validity window for a clock that ticks between verification and the check.
const SLACK: u64 = 5;

pub struct Fixture {
    pub verifier: Verifier,
    pub ed: Minter,
    pub hs: Minter,
    pub ed_encoding: EncodingKey,
    pub hs_encoding: EncodingKey,
    /// The claims of both valid tokens.
    pub claims: Claims,
    /// `[EdDSA token, HS256 token]`, both valid until 2096.
    pub valid: [String; 2],
    /// The public key set (the EdDSA key) as authsvc publishes it.
    pub jwks: Jwks,
}

/// Load the fixed keys (through key files, the way authsvc and edges load them) and mint the tokens.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("goim-fuzz-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("ed.pem"), ED_PEM).expect("write key");
        std::fs::write(dir.join("hs.key"), HS_SECRET).expect("write key");
        let ed_key = SigningKey::load(ED_KID, Algorithm::EdDSA, &dir.join("ed.pem")).expect("ed key");
        let hs_key = SigningKey::load(HS_KID, Algorithm::HS256, &dir.join("hs.key")).expect("hs key");
        let _ = std::fs::remove_dir_all(&dir);
        let keys = KeySet::new([ed_key.verifying.clone(), hs_key.verifying.clone()]);
        let jwks = keys.to_jwks();
        let verifier = Verifier::new(keys, ISS, AUD, LEEWAY);
        let minter = |key| Minter { key, issuer: ISS.into(), audience: AUD.into(), default_ttl_secs: 60, max_ttl_secs: 60 };
        let (ed, hs) = (minter(ed_key), minter(hs_key));
        let claims = Claims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: "42".into(),
            mid: 42,
            key: Some("k-42".into()),
            rooms: vec!["live://1000".into()],
            room_prefixes: vec!["chat://".into()],
            accepts: vec![1000, 1001],
            publish: goim_token::PublishRights { ingress: true, ..Default::default() },
            iat: 1_700_000_000,
            nbf: 1_700_000_000,
            exp: 4_000_000_000,
            jti: "fuzz-seed".into(),
        };
        let valid = [ed.sign(claims.clone()).expect("sign").0, hs.sign(claims.clone()).expect("sign").0];
        Fixture {
            verifier,
            ed,
            hs,
            ed_encoding: EncodingKey::from_ed_pem(ED_PEM.as_bytes()).expect("ed pem"),
            hs_encoding: EncodingKey::from_secret(HS_SECRET).expect("hs secret"),
            claims,
            valid,
            jwks,
        }
    })
}

fn now() -> u64 {
    goim_token::now_secs()
}

/// Verify `token`; whatever it is, only the two valid tokens may verify, and they verify to their claims.
pub fn check_verify_str(token: &str) -> Result<Claims, TokenError> {
    let f = fixture();
    let r = f.verifier.verify(token);
    assert!(!r.as_ref().err().map_or("ok", |e| e.reason()).is_empty());
    if f.valid.iter().any(|v| v == token) {
        assert_eq!(r.as_ref(), Ok(&f.claims), "a valid token does not verify");
    } else if let Ok(c) = &r {
        panic!("a token that was never signed verifies: {token:?} -> {c:?}");
    }
    r
}

/// Apply mode-1 edit operations to `base`.
pub fn mutate(base: &[u8], other: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut t = base.to_vec();
    for op in ops.chunks_exact(4).take(64) {
        let pos = u16::from_be_bytes([op[1], op[2]]) as usize % (t.len() + 1);
        let val = op[3];
        match op[0] % 6 {
            0 => {
                if pos < t.len() {
                    t[pos] ^= val
                }
            }
            1 => {
                if pos < t.len() {
                    t[pos] = val
                }
            }
            2 => t.insert(pos, val),
            3 => {
                if pos < t.len() {
                    t.remove(pos);
                }
            }
            4 => t.truncate(pos),
            _ => {
                let seg = t[..pos].iter().filter(|&&b| b == b'.').count();
                let mut parts: Vec<Vec<u8>> = t.split(|&b| b == b'.').map(<[u8]>::to_vec).collect();
                if let Some(src) = other.split(|&b| b == b'.').nth(seg) {
                    parts[seg] = src.to_vec();
                }
                t = parts.join(&b'.');
            }
        }
    }
    t
}

/// Mode 1: an edited valid token verifies only if the edits changed nothing.
pub fn check_mutated(base: u8, ops: &[u8]) {
    let f = fixture();
    let b = (base % 2) as usize;
    let t = mutate(f.valid[b].as_bytes(), f.valid[1 - b].as_bytes(), ops);
    let _ = check_verify_str(&String::from_utf8_lossy(&t));
}

/// Mode 2: sign `claims_json` with a chosen key and header; a token verifies exactly when it names
/// the key that signed it with that key's algorithm and its claims are ours and current.
pub fn check_signed_claims(variant: u8, claims_json: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(claims_json) else { return };
    let f = fixture();
    let variant = variant % 6;
    let (alg, kid, key) = match variant {
        0 => (jsonwebtoken::Algorithm::EdDSA, Some(ED_KID), &f.ed_encoding),
        1 => (jsonwebtoken::Algorithm::HS256, Some(HS_KID), &f.hs_encoding),
        2 => (jsonwebtoken::Algorithm::HS256, Some(ED_KID), &f.hs_encoding),
        3 => (jsonwebtoken::Algorithm::EdDSA, None, &f.ed_encoding),
        4 => (jsonwebtoken::Algorithm::EdDSA, Some("nope"), &f.ed_encoding),
        _ => (jsonwebtoken::Algorithm::EdDSA, Some(HS_KID), &f.ed_encoding),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let token = jsonwebtoken::encode(&header, &value, key).expect("encode");
    let before = now();
    let r = f.verifier.verify(&token);
    let after = now();
    match variant {
        2 | 5 => assert_eq!(r, Err(TokenError::WrongAlgorithm(kid.unwrap_or_default().into()))),
        3 => assert_eq!(r, Err(TokenError::NoKid)),
        4 => assert_eq!(r, Err(TokenError::UnknownKey("nope".into()))),
        _ => {
            let typed = serde_json::from_value::<Claims>(value.clone());
            match &r {
                Ok(c) => {
                    assert_eq!(typed.as_ref().ok(), Some(c), "verified claims differ from those signed");
                    assert_eq!((c.iss.as_str(), c.aud.as_str()), (ISS, AUD));
                    assert!(c.exp.saturating_add(LEEWAY + SLACK) >= after, "expired token verified: {c:?}");
                    assert!(c.nbf <= before + LEEWAY + SLACK, "not-yet-valid token verified: {c:?}");
                }
                Err(e) => {
                    if let Ok(c) = &typed {
                        let current = c.exp >= after + SLACK && c.nbf.saturating_add(SLACK) <= before;
                        let ours = c.iss == ISS && c.aud == AUD;
                        assert!(!(current && ours), "valid claims refused ({e:?}): {c:?}");
                        match e {
                            TokenError::Expired => assert!(c.exp.saturating_add(LEEWAY) <= after + SLACK),
                            TokenError::NotYetValid => assert!(c.nbf.saturating_add(SLACK) > before + LEEWAY),
                            TokenError::WrongIssuer => assert_ne!(c.iss, ISS),
                            TokenError::WrongAudience => assert_ne!(c.aud, AUD),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// Mode 3: JWKS parsing never panics; an accepted key set re-publishes only keys it was given and
/// verifies the EdDSA token exactly when it holds the fixture's public key under its kid.
pub fn check_json_docs(doc: &[u8]) {
    let _ = serde_json::from_slice::<Grant>(doc);
    let _ = serde_json::from_slice::<Claims>(doc);
    let Ok(jwks) = serde_json::from_slice::<Jwks>(doc) else { return };
    let Ok(set) = KeySet::from_jwks(&jwks) else { return };
    let out = set.to_jwks();
    for k in &out.keys {
        assert!(jwks.keys.contains(k), "published a key it was not given: {k:?}");
    }
    let back = KeySet::from_jwks(&out).expect("own JWKS re-parses");
    assert_eq!(back.kids(), set.kids());
    let f = fixture();
    let ed_public = f.ed.key.verifying.ed25519_public;
    let holds = ed_public.is_some() && set.get(ED_KID).and_then(|k| k.ed25519_public) == ed_public;
    let v = Verifier::new(set, ISS, AUD, LEEWAY);
    assert_eq!(v.verify(&f.valid[0]).is_ok(), holds, "JWKS verification disagrees with its keys");
}

/// Target `token_verify`.
pub fn token_verify(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            let _ = check_verify_str(&String::from_utf8_lossy(rest));
        }
        1 => {
            let Some((&base, ops)) = rest.split_first() else { return };
            check_mutated(base, ops);
        }
        2 => {
            let Some((&variant, json)) = rest.split_first() else { return };
            check_signed_claims(variant, json);
        }
        _ => check_json_docs(rest),
    }
}

/// The committed seed corpus of `token_verify`: `(file name, bytes)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let f = fixture();
    let with = |mode: u8, arg: &[u8]| [&[mode][..], arg].concat();
    let claims = serde_json::to_vec(&f.claims).expect("claims json");
    let jwks = serde_json::to_vec(&f.jwks).expect("jwks json");
    vec![
        ("valid-eddsa", with(0, f.valid[0].as_bytes())),
        ("valid-hs256", with(0, f.valid[1].as_bytes())),
        ("not-a-token", with(0, b"not a token")),
        ("three-dots", with(0, b"a.b.c.d")),
        ("flip-eddsa-payload", with(1, &[0, 0, 0, 60, 1])),
        ("flip-hs256-signature", with(1, &[1, 0, 0, 200, 0x20])),
        ("splice-header", with(1, &[0, 5, 0, 0, 0])),
        ("truncate-signature", with(1, &[0, 4, 0, 150, 0])),
        ("claims-eddsa", with(2, &[&[0u8][..], &claims].concat())),
        ("claims-hs256", with(2, &[&[1u8][..], &claims].concat())),
        ("claims-alg-confusion", with(2, &[&[2u8][..], &claims].concat())),
        ("claims-expired", with(2, &[&[0u8][..], br#"{"iss":"goim-authsvc","aud":"goim","sub":"1","mid":1,"iat":0,"nbf":0,"exp":1,"jti":"x"}"#].concat())),
        ("claims-aud-array", with(2, &[&[1u8][..], br#"{"iss":"goim-authsvc","aud":["goim"],"sub":"1","mid":1,"iat":0,"nbf":0,"exp":4000000000,"jti":"x"}"#].concat())),
        ("jwks", with(3, &jwks)),
        ("jwks-bad-x", with(3, br#"{"keys":[{"kid":"ed1","kty":"OKP","crv":"Ed25519","alg":"EdDSA","x":"AAAA"}]}"#)),
        ("grant", with(3, br#"{"mid":1,"rooms":["live://1"],"publish":{"ingress":true}}"#)),
    ]
}
