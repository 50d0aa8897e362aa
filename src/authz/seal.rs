//! The authorization server's secrets: keys derived (HKDF-SHA256) from one
//! master secret, one per purpose, and AES-256-GCM sealing with the purpose
//! as associated data, so a sealed value of one purpose (a login transaction
//! cookie) never opens as another (a session). Random tokens and their
//! SHA-256 hashes (what the store keeps).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// What a sealed value is for (its associated data and its key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// An authorization request in flight (`tx`): client, redirect, PKCE.
    Transaction,
    /// The browser's login session cookie.
    Session,
    /// The login-at-the-IdP transaction cookie (state, nonce, verifier).
    Login,
    /// The consent form's cookie (CSRF token bound to the client).
    Consent,
    /// The access-token signing keys kept in the store.
    SigningKey,
    /// The company IdP's refresh token kept with a grant.
    IdpToken,
    /// A connection to an upstream account in progress (state, verifier).
    Upstream,
    /// The identity assertion key (ES256, PKCS#8) kept in the store.
    AssertionKey,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Transaction => b"portcullis/tx/v1",
            Purpose::Session => b"portcullis/session/v1",
            Purpose::Login => b"portcullis/login/v1",
            Purpose::Consent => b"portcullis/consent/v1",
            Purpose::SigningKey => b"portcullis/signing-key/v1",
            Purpose::IdpToken => b"portcullis/idp-token/v1",
            Purpose::AssertionKey => b"portcullis/assertion-key/v1",
            Purpose::Upstream => b"portcullis/upstream-connect/v1",
        }
    }

    const ALL: [Purpose; 8] = [
        Purpose::Transaction,
        Purpose::Session,
        Purpose::Login,
        Purpose::Consent,
        Purpose::SigningKey,
        Purpose::IdpToken,
        Purpose::Upstream,
        Purpose::AssertionKey,
    ];
}

/// The keys of every purpose.
pub(crate) struct Sealer {
    keys: Vec<(Purpose, LessSafeKey)>,
    rng: SystemRandom,
}

struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    /// Keys derived from `master` (at least 32 bytes).
    pub(crate) fn new(master: &[u8]) -> Result<Sealer, String> {
        if master.len() < 32 {
            return Err("the authorization server's secret must be at least 32 bytes".into());
        }
        let prk =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"portcullis-authz").extract(master);
        let mut keys = Vec::new();
        for p in Purpose::ALL {
            let mut k = [0u8; 32];
            let info = [p.label()];
            prk.expand(&info, Len32)
                .and_then(|okm| okm.fill(&mut k))
                .map_err(|_| "key derivation failed".to_string())?;
            let key = UnboundKey::new(&AES_256_GCM, &k).map_err(|_| "bad key".to_string())?;
            keys.push((p, LessSafeKey::new(key)));
        }
        Ok(Sealer {
            keys,
            rng: SystemRandom::new(),
        })
    }

    fn key(&self, p: Purpose) -> &LessSafeKey {
        &self
            .keys
            .iter()
            .find(|(q, _)| *q == p)
            .expect("every purpose has a key")
            .1
    }

    /// `plain` sealed for `purpose`: nonce ‖ ciphertext ‖ tag, base64url.
    pub(crate) fn seal(&self, purpose: Purpose, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut buf = plain.to_vec();
        self.key(purpose)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.label()),
                &mut buf,
            )
            .expect("sealing cannot fail for small inputs");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The plaintext of a value sealed for `purpose`; `None` when it was
    /// not (tampered, another purpose, another secret, not base64).
    pub(crate) fn open(&self, purpose: Purpose, sealed: &str) -> Option<Vec<u8>> {
        if sealed.len() > 8192 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let mut buf = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self
            .key(purpose)
            .open_in_place(nonce, Aad::from(purpose.label()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }

    /// `n` random bytes.
    pub(crate) fn random<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        self.rng.fill(&mut b).expect("system randomness");
        b
    }

    /// A random token: 32 bytes, base64url (43 characters).
    pub(crate) fn token(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.random::<32>())
    }
}

/// SHA-256 of a token, as the store keeps it.
pub(crate) fn hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Equal in constant time (for secrets).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The master secret from its configured text: base64 (standard or url) or
/// hex, at least 32 bytes.
pub(crate) fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let decoded = if t.len() >= 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..t.len() / 2)
            .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(t)
            .ok()
            .or_else(|| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')).ok())
    };
    match decoded {
        Some(b) if b.len() >= 32 => Ok(b),
        _ => Err(
            "the authorization server's secret must be at least 32 bytes, written in base64 or hex"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_purpose() {
        let s = Sealer::new(&[7u8; 32]).unwrap();
        let sealed = s.seal(Purpose::Session, b"alice");
        assert_eq!(
            s.open(Purpose::Session, &sealed).as_deref(),
            Some(&b"alice"[..])
        );
        assert_eq!(s.open(Purpose::Consent, &sealed), None);
        let other = Sealer::new(&[8u8; 32]).unwrap();
        assert_eq!(other.open(Purpose::Session, &sealed), None);
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        bytes[14] ^= 1;
        assert_eq!(
            s.open(Purpose::Session, &URL_SAFE_NO_PAD.encode(bytes)),
            None
        );
        assert_eq!(s.open(Purpose::Session, "!!"), None);
        assert_ne!(
            s.seal(Purpose::Session, b"a"),
            s.seal(Purpose::Session, b"a")
        );
        assert!(Sealer::new(&[1u8; 31]).is_err());
    }

    #[test]
    fn pkce_and_secrets() {
        // RFC 7636 appendix B.
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
        assert_eq!(parse_secret(&"ab".repeat(32)).unwrap().len(), 32);
        assert_eq!(
            parse_secret(&base64::engine::general_purpose::STANDARD.encode([1u8; 40]))
                .unwrap()
                .len(),
            40
        );
        assert!(parse_secret("short").is_err());
    }
}
