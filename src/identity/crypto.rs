//! A `jsonwebtoken` crypto provider backed by `ring` (already in the tree via rustls).
//!
//! Verification only needs public keys; signing is here so tests can mint tokens
//! with `jsonwebtoken::encode` under the same provider.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as rs;

/// The provider this module installs process-wide (see [`install`]).
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        compute_digest,
    },
};

/// Installs [`RING_PROVIDER`] as jsonwebtoken's process default. Idempotent; if another
/// provider was installed first, that one stays (tests and benches may do so on purpose).
pub fn install() {
    let _ = RING_PROVIDER.install_default();
}

fn compute_digest(data: &[u8], hash: jsonwebtoken::jwk::ThumbprintHash) -> Result<Vec<u8>, Error> {
    use jsonwebtoken::jwk::ThumbprintHash as H;
    let alg = match hash {
        H::SHA256 => &ring::digest::SHA256,
        H::SHA384 => &ring::digest::SHA384,
        H::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(ring::digest::digest(alg, data).as_ref().to_vec())
}

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if alg.family() != key.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

fn rsa_params(alg: Algorithm) -> Option<&'static rs::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let bad = |_| signature::Error::new();
        match self.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let h = match self.alg {
                    Algorithm::HS256 => ring::hmac::HMAC_SHA256,
                    Algorithm::HS384 => ring::hmac::HMAC_SHA384,
                    _ => ring::hmac::HMAC_SHA512,
                };
                let secret = self
                    .key
                    .try_get_as_bytes()
                    .map_err(|_| signature::Error::new())?;
                ring::hmac::verify(&ring::hmac::Key::new(h, secret), msg, sig).map_err(bad)
            }
            Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => {
                let a: &dyn rs::VerificationAlgorithm = match self.alg {
                    Algorithm::ES256 => &rs::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &rs::ECDSA_P384_SHA384_FIXED,
                    _ => &rs::ED25519,
                };
                let point = self
                    .key
                    .try_get_as_bytes()
                    .map_err(|_| signature::Error::new())?;
                a.verify(point.into(), msg.into(), sig.as_slice().into())
                    .map_err(bad)
            }
            alg => {
                let params = rsa_params(alg).ok_or_else(signature::Error::new)?;
                match self.key.kind() {
                    DecodingKeyKind::RsaModulusExponent { n, e } => {
                        rs::RsaPublicKeyComponents { n, e }
                            .verify(params, msg, sig)
                            .map_err(bad)
                    }
                    DecodingKeyKind::SecretOrDer(der) => rs::UnparsedPublicKey::new(params, der)
                        .verify(msg, sig)
                        .map_err(bad),
                }
            }
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

enum SignKey {
    Hmac(ring::hmac::Key),
    Ecdsa(rs::EcdsaKeyPair),
    Rsa(rs::RsaKeyPair, &'static dyn rs::RsaEncoding),
    Ed(rs::Ed25519KeyPair),
}

struct RingSigner {
    alg: Algorithm,
    key: SignKey,
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if alg.family() != key.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let der = key.as_bytes();
    let rng = ring::rand::SystemRandom::new();
    let k = match alg {
        Algorithm::HS256 => SignKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, der)),
        Algorithm::HS384 => SignKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA384, der)),
        Algorithm::HS512 => SignKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA512, der)),
        Algorithm::ES256 | Algorithm::ES384 => {
            let a = if *alg == Algorithm::ES256 {
                &rs::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &rs::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            SignKey::Ecdsa(
                rs::EcdsaKeyPair::from_pkcs8(a, der, &rng)
                    .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?,
            )
        }
        Algorithm::EdDSA => SignKey::Ed(
            rs::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?,
        ),
        alg => {
            let enc: &'static dyn rs::RsaEncoding = match alg {
                Algorithm::RS256 => &rs::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &rs::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &rs::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &rs::RSA_PSS_SHA256,
                Algorithm::PS384 => &rs::RSA_PSS_SHA384,
                Algorithm::PS512 => &rs::RSA_PSS_SHA512,
                _ => return Err(ErrorKind::InvalidAlgorithm.into()),
            };
            let pair = rs::RsaKeyPair::from_der(der)
                .or_else(|_| rs::RsaKeyPair::from_pkcs8(der))
                .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?;
            SignKey::Rsa(pair, enc)
        }
    };
    Ok(Box::new(RingSigner { alg: *alg, key: k }))
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        let bad = |_| signature::Error::new();
        match &self.key {
            SignKey::Hmac(k) => Ok(ring::hmac::sign(k, msg).as_ref().to_vec()),
            SignKey::Ecdsa(k) => Ok(k.sign(&rng, msg).map_err(bad)?.as_ref().to_vec()),
            SignKey::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
            SignKey::Rsa(k, enc) => {
                let mut out = vec![0u8; k.public().modulus_len()];
                k.sign(*enc, &rng, msg, &mut out).map_err(bad)?;
                Ok(out)
            }
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
