//! The token keys of this authsvc: the signing key and previous keys from the config, loaded from
//! files (or, in dev mode only, generated when missing and said so in the log).

use goim_token::{Algorithm, KeySet, Minter, SigningKey, VerifyingKey};
use tracing::warn;

use crate::config::{Config, RunMode};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Key(#[from] goim_token::KeyError),
    #[error("signing key {0}: {1}")]
    Signing(String, String),
}

/// What the keys give the rest of authsvc.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    pub minter: Minter,
    /// Every configured key, signing key included: what verifiers should accept.
    pub verifying: KeySet,
}

pub fn load(cfg: &Config) -> Result<TokenKeys, KeysError> {
    let t = &cfg.tokens;
    let mut verifying = Vec::new();
    let mut signing = None;
    for k in &t.keys {
        let is_signing = k.id == t.signing_key;
        if !k.file.exists() && cfg.mode == RunMode::Dev && k.alg == Algorithm::EdDSA && is_signing {
            let dir = k.file.parent().unwrap_or(std::path::Path::new("."));
            let expected = dir.join(format!("{}.pem", k.id));
            if expected != k.file {
                return Err(KeysError::Signing(
                    k.id.clone(),
                    format!("dev key generation writes {}; name that file in the config", expected.display()),
                ));
            }
            let (_, private, public) = SigningKey::generate_ed25519_files(&k.id, dir)?;
            warn!(kid = %k.id, private = %private.display(), public = %public.display(), "mode = dev: generated a new Ed25519 signing key");
        }
        if is_signing {
            let key = SigningKey::load(&k.id, k.alg, &k.file)?;
            verifying.push(key.verifying.clone());
            signing = Some(key);
        } else {
            verifying.push(VerifyingKey::load(&k.id, k.alg, &k.file)?);
        }
    }
    let key = signing.ok_or_else(|| KeysError::Signing(t.signing_key.clone(), "not configured".into()))?;
    Ok(TokenKeys {
        minter: Minter {
            key,
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            default_ttl_secs: t.default_ttl_secs,
            max_ttl_secs: t.max_ttl_secs,
        },
        verifying: KeySet::new(verifying),
    })
}
