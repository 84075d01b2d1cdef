//! Bounded fuzz smoke of token verification, on stable, in `make test`: the properties of the
//! cargo-fuzz target `token_verify` in `fuzz/`, checked over a few thousand proptest cases, plus a replay
//! of every committed corpus file.
//!
//! The properties live in `fuzz/src/token_props.rs`, included here, so the smoke and the long fuzz
//! check the same thing. `GOIM_WRITE_CORPUS=1 cargo test -p goim-token --test fuzz_smoke` (re)writes the
//! seed corpus in `fuzz/corpus/token_verify/`; see fuzz/README.md.

#[path = "../../fuzz/src/token_props.rs"]
mod token_props;

use std::path::PathBuf;

use proptest::prelude::*;
use token_props::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/token_verify")
}

#[test]
fn seed_corpus_is_committed() {
    let write = std::env::var_os("GOIM_WRITE_CORPUS").is_some();
    for (name, bytes) in seeds() {
        let path = corpus_dir().join(name);
        if write {
            std::fs::create_dir_all(corpus_dir()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (GOIM_WRITE_CORPUS=1 regenerates the seeds)", path.display()));
        assert_eq!(on_disk, bytes, "{} is stale (GOIM_WRITE_CORPUS=1 regenerates it)", path.display());
    }
}

#[test]
fn corpus_replays() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| token_verify(&bytes));
        assert!(r.is_ok(), "corpus file {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus");
}

#[test]
fn valid_tokens_verify() {
    let f = fixture();
    for t in &f.valid {
        assert_eq!(check_verify_str(t), Ok(f.claims.clone()));
    }
}

/// Edit operations in the `token_verify` mode-1 format.
fn edit_ops() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0u8..6, any::<u16>(), any::<u8>()), 1..6).prop_map(|ops| {
        ops.into_iter().flat_map(|(k, pos, v)| [k, (pos >> 8) as u8, pos as u8, v]).collect()
    })
}

fn time_claim() -> impl Strategy<Value = String> {
    let now = goim_token::now_secs() as i64;
    prop_oneof![
        (-200i64..200).prop_map(move |d| (now + d).to_string()),
        Just("0".to_string()),
        Just("4000000000".to_string()),
        Just(u64::MAX.to_string()),
        Just("-1".to_string()),
        Just("1.5".to_string()),
        Just("\"1\"".to_string()),
    ]
}

/// Claims JSON close to ours: each field right, wrong, mistyped or missing.
fn claims_json() -> impl Strategy<Value = Vec<u8>> {
    let s = |good: &'static str| {
        prop_oneof![
            4 => Just(format!("{good:?}")),
            1 => Just("\"evil\"".to_string()),
            1 => Just(format!("[{good:?}]")),
            1 => Just("null".to_string()),
            1 => Just("7".to_string()),
        ]
    };
    (
        s(ISS),
        s(AUD),
        time_claim(),
        time_claim(),
        any::<i64>(),
        prop::collection::vec(prop::bool::weighted(0.9), 9),
        prop_oneof![Just(String::new()), Just(",\"rooms\":[\"live://1\"],\"accepts\":[1000]".to_string()), Just(",\"extra\":{\"a\":[1]}".to_string()), Just(",\"publish\":{\"nope\":1}".to_string())],
    )
        .prop_map(|(iss, aud, exp, nbf, mid, keep, extra)| {
            let fields = [
                format!("\"iss\":{iss}"),
                format!("\"aud\":{aud}"),
                format!("\"exp\":{exp}"),
                format!("\"nbf\":{nbf}"),
                format!("\"iat\":{nbf}"),
                format!("\"sub\":\"{mid}\""),
                format!("\"mid\":{mid}"),
                "\"jti\":\"j\"".to_string(),
                "\"key\":\"k\"".to_string(),
            ];
            // Mostly complete; sometimes a field is missing.
            let chosen: Vec<&str> = fields.iter().zip(&keep).filter(|(_, k)| **k).map(|(f, _)| f.as_str()).collect();
            format!("{{{}{}}}", chosen.join(","), extra).into_bytes()
        })
}

fn jwks_json() -> impl Strategy<Value = Vec<u8>> {
    let x_good = {
        use base64::Engine;
        let pk = fixture().ed.key.verifying.ed25519_public.unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pk)
    };
    let key = (
        prop::sample::select(vec!["ed1", "hs1", "other", "", "bad kid"]),
        prop::sample::select(vec!["OKP", "RSA"]),
        prop::sample::select(vec!["Ed25519", "X25519"]),
        prop::sample::select(vec!["EdDSA", "HS256"]),
        prop_oneof![
            4 => Just(x_good),
            1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            }),
            1 => ".{0,44}",
        ],
    )
        .prop_map(|(kid, kty, crv, alg, x)| {
            format!("{{\"kid\":{kid:?},\"kty\":{kty:?},\"crv\":{crv:?},\"alg\":{alg:?},\"x\":{x:?}}}")
        });
    prop::collection::vec(key, 0..4).prop_map(|keys| format!("{{\"keys\":[{}]}}", keys.join(",")).into_bytes())
}

// Cheap properties: most inputs fail before any signature check.
proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings(s in prop_oneof![".{0,200}", "[A-Za-z0-9_=.\\-]{0,300}", "eyJ[A-Za-z0-9_\\-]{0,80}\\.[A-Za-z0-9_\\-]{0,80}\\.[A-Za-z0-9_\\-]{0,90}"]) {
        let _ = check_verify_str(&s);
    }

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        token_verify(&data);
    }

    #[test]
    fn key_sets(doc in jwks_json()) {
        check_json_docs(&doc);
    }
}

// Properties that check a signature on most cases (Ed25519 takes milliseconds in a debug build).
proptest! {
    #![proptest_config(ProptestConfig { cases: 800, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_byte_changed_never_verifies(base in 0u8..2, pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let f = fixture();
        let mut t = f.valid[base as usize].clone().into_bytes();
        let i = pos.index(t.len());
        t[i] ^= x;
        let s = String::from_utf8_lossy(&t).into_owned();
        prop_assert!(s != f.valid[base as usize]);
        prop_assert!(check_verify_str(&s).is_err());
    }

    #[test]
    fn edited_tokens(base in 0u8..2, ops in edit_ops()) {
        check_mutated(base, &ops);
    }

    #[test]
    fn signed_claims(variant in 0u8..6, json in claims_json()) {
        check_signed_claims(variant, &json);
    }
}
