//! Signing and verifying keys with ids: loading them from files, generating Ed25519 dev keys, and the
//! public key set (JWKS) that authsvc publishes on NATS so edges need no key files of their own.
//!
//! File formats: Ed25519 keys are PKCS#8 PEM (`openssl genpkey -algorithm ed25519` writes the private
//! one, `openssl pkey -pubout` the public one); an HS256 key is a file whose bytes (trailing newline
//! trimmed) are the shared secret, at least 32 bytes long.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

/// Token signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Algorithm {
    /// Ed25519 (the default): edges hold only public keys.
    #[default]
    EdDSA,
    /// HMAC-SHA256: every verifier holds the secret.
    HS256,
}

impl Algorithm {
    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key {kid}: cannot read {path}: {source}")]
    Read { kid: String, path: PathBuf, source: std::io::Error },
    #[error("key {kid}: {path} is not a {what}")]
    Format { kid: String, path: PathBuf, what: &'static str },
    #[error("key {kid}: an HS256 secret must be at least 32 bytes")]
    ShortSecret { kid: String },
    #[error("key id {0:?} is empty or not [A-Za-z0-9_.-]")]
    BadKid(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no randomness: {0}")]
    Random(String),
    #[error("published key set is invalid: {0}")]
    Jwks(String),
}

fn check_kid(kid: &str) -> Result<(), KeyError> {
    if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(KeyError::BadKid(kid.to_string()));
    }
    Ok(())
}

fn read(kid: &str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read { kid: kid.into(), path: path.into(), source })
}

fn secret(kid: &str, bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
    let s = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if s.len() < 32 {
        return Err(KeyError::ShortSecret { kid: kid.into() });
    }
    Ok(s.to_vec())
}

/// A key that signs tokens (authsvc only).
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub(crate) key: EncodingKey,
    /// The matching verifying key, so a signer always verifies its own tokens.
    pub verifying: VerifyingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Load a private key: PKCS#8 PEM for EdDSA, a secret file for HS256.
    pub fn load(kid: &str, alg: Algorithm, path: &Path) -> Result<SigningKey, KeyError> {
        check_kid(kid)?;
        let bytes = read(kid, path)?;
        match alg {
            Algorithm::EdDSA => {
                let pem = std::str::from_utf8(&bytes).map_err(|_| format_err(kid, path, "PKCS#8 PEM Ed25519 private key"))?;
                let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                    .map_err(|_| format_err(kid, path, "PKCS#8 PEM Ed25519 private key"))?;
                Ok(Self::from_ed25519(kid, &sk))
            }
            Algorithm::HS256 => {
                let s = secret(kid, &bytes)?;
                Ok(SigningKey {
                    kid: kid.into(),
                    alg,
                    key: EncodingKey::from_secret(&s).map_err(|_| KeyError::ShortSecret { kid: kid.into() })?,
                    verifying: VerifyingKey::hs256(kid, &s)?,
                })
            }
        }
    }

    fn from_ed25519(kid: &str, sk: &ed25519_dalek::SigningKey) -> SigningKey {
        // PKCS#8 encoding of a valid key into memory cannot fail.
        let der = sk.to_pkcs8_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&der),
            verifying: VerifyingKey::ed25519(kid, sk.verifying_key().to_bytes()),
        }
    }

    /// Generate an Ed25519 key pair and write `<dir>/<kid>.pem` (private, mode 0600) and
    /// `<dir>/<kid>.pub.pem` (public). Used for development keys only; production keys come from files.
    pub fn generate_ed25519_files(kid: &str, dir: &Path) -> Result<(SigningKey, PathBuf, PathBuf), KeyError> {
        check_kid(kid)?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        let private = dir.join(format!("{kid}.pem"));
        let public = dir.join(format!("{kid}.pub.pem"));
        fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
            move |source| KeyError::Write { path: path.to_path_buf(), source }
        }
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        let pem = sk
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        write_private(&private, pem.as_bytes()).map_err(write_err(&private))?;
        let pub_pem = sk
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        std::fs::write(&public, pub_pem).map_err(write_err(&public))?;
        Ok((Self::from_ed25519(kid, &sk), private, public))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

fn format_err(kid: &str, path: &Path, what: &'static str) -> KeyError {
    KeyError::Format { kid: kid.into(), path: path.into(), what }
}

/// A key that verifies tokens.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: String,
    pub alg: Algorithm,
    pub(crate) key: DecodingKey,
    /// The raw Ed25519 public key, for publication; None for HS256 (a secret is never published).
    pub ed25519_public: Option<[u8; 32]>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl VerifyingKey {
    fn ed25519(kid: &str, public: [u8; 32]) -> VerifyingKey {
        VerifyingKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: DecodingKey::from_ed_der(&public),
            ed25519_public: Some(public),
        }
    }

    fn hs256(kid: &str, secret: &[u8]) -> Result<VerifyingKey, KeyError> {
        Ok(VerifyingKey {
            kid: kid.into(),
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret).map_err(|_| KeyError::ShortSecret { kid: kid.into() })?,
            ed25519_public: None,
        })
    }

    /// Load a verifying key: for EdDSA a PKCS#8 PEM public key (or a private key, whose public half is
    /// used); for HS256 the secret file.
    pub fn load(kid: &str, alg: Algorithm, path: &Path) -> Result<VerifyingKey, KeyError> {
        check_kid(kid)?;
        let bytes = read(kid, path)?;
        match alg {
            Algorithm::EdDSA => {
                let what = "PKCS#8 PEM Ed25519 public or private key";
                let pem = std::str::from_utf8(&bytes).map_err(|_| format_err(kid, path, what))?;
                if let Ok(vk) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
                    return Ok(Self::ed25519(kid, vk.to_bytes()));
                }
                let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|_| format_err(kid, path, what))?;
                Ok(Self::ed25519(kid, sk.verifying_key().to_bytes()))
            }
            Algorithm::HS256 => Self::hs256(kid, &secret(kid, &bytes)?),
        }
    }
}

/// One published public key (JWK, RFC 8037 OKP/Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kid: String,
    pub kty: String,
    pub crv: String,
    pub alg: String,
    pub x: String,
}

/// The published key set: `{"keys":[Jwk…]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// The keys a verifier accepts, by id: the current key and, during a rotation, the previous ones.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> KeySet {
        KeySet { keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect() }
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Add or replace keys from `other`.
    pub fn merge(&mut self, other: KeySet) {
        self.keys.extend(other.keys);
    }

    /// The public (EdDSA) keys as a JWKS document. HS256 secrets are never published.
    pub fn to_jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .keys
                .values()
                .filter_map(|k| {
                    k.ed25519_public.map(|x| Jwk {
                        kid: k.kid.clone(),
                        kty: "OKP".into(),
                        crv: "Ed25519".into(),
                        alg: "EdDSA".into(),
                        x: URL_SAFE_NO_PAD.encode(x),
                    })
                })
                .collect(),
        }
    }

    /// Keys from a published JWKS document.
    pub fn from_jwks(jwks: &Jwks) -> Result<KeySet, KeyError> {
        let mut keys = Vec::new();
        for k in &jwks.keys {
            check_kid(&k.kid)?;
            if k.kty != "OKP" || k.crv != "Ed25519" || k.alg != "EdDSA" {
                return Err(KeyError::Jwks(format!("key {}: only OKP/Ed25519/EdDSA keys are accepted", k.kid)));
            }
            let raw = URL_SAFE_NO_PAD
                .decode(&k.x)
                .map_err(|_| KeyError::Jwks(format!("key {}: x is not base64url", k.kid)))?;
            let public: [u8; 32] = raw
                .try_into()
                .map_err(|_| KeyError::Jwks(format!("key {}: x is not 32 bytes", k.kid)))?;
            ed25519_dalek::VerifyingKey::from_bytes(&public)
                .map_err(|_| KeyError::Jwks(format!("key {}: not an Ed25519 point", k.kid)))?;
            keys.push(VerifyingKey::ed25519(&k.kid, public));
        }
        Ok(KeySet::new(keys))
    }
}
