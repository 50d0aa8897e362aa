//! The vault of users' upstream OAuth tokens (issue 12): AES-256-GCM under
//! configured keys, so the store file never holds a token in the clear.
//!
//! Each record is sealed with a random 96-bit nonce and, as associated data,
//! the (user, route, upstream client, key id) it belongs to, each prefixed
//! with its length: a sealed value copied to another user's row, another
//! route, another client registration or another key's name does not open.
//! The stored bytes are nonce ‖ ciphertext ‖ tag.
//!
//! Keys rotate: the first configured key seals, every configured key opens,
//! and [`Vault::rekey`] re-seals the records of older keys under the first
//! (`portcullis vault rekey`), after which the old keys can be removed.
//!
//! Plaintext lives only in [`Zeroizing`] buffers and in [`Secret`], which
//! wipes its strings when dropped and never prints them. Errors name key ids,
//! never key material.
//!
//! Control-plane code: the data plane never calls it (it receives tokens
//! already opened, through the control plane).

use crate::store::{Store, StoreError, UpstreamToken};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// The AES-GCM tag's length.
const TAG_LEN: usize = 16;

/// Separates the vault's associated data from any other use of its keys.
const AAD_LABEL: &[u8] = b"portcullis/vault/v1";

/// Separates a registration's client secret from the users' tokens.
const CLIENT_AAD_LABEL: &[u8] = b"portcullis/vault/upstream-client/v1";

/// The largest sealed record [`Vault::open`] reads.
const MAX_SEALED: usize = 1 << 20;

/// One key of the vault: its id (stored with every record it seals) and its
/// AES-256 key.
pub struct VaultKey {
    pub id: String,
    key: LessSafeKey,
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The vault's keys: the first seals, all open.
pub struct Vault {
    keys: Vec<VaultKey>,
    rng: SystemRandom,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// The vault of these `(id, key)` pairs, in order (the first seals). A
    /// key is 32 bytes written as 64 hex digits or in base64 (standard or
    /// URL-safe, padded or not). Errors: no key, an empty or repeated id, a
    /// key that is not 32 bytes; they name the key's id, never its text.
    pub fn new(keys: &[(String, String)]) -> Result<Vault, String> {
        if keys.is_empty() {
            return Err("the vault needs at least one key".into());
        }
        let mut out: Vec<VaultKey> = Vec::with_capacity(keys.len());
        for (id, text) in keys {
            if id.is_empty() {
                return Err("a vault key has an empty id".into());
            }
            if out.iter().any(|k| k.id == *id) {
                return Err(format!("vault key id {id:?} is used twice"));
            }
            let bytes = parse_key(text).ok_or_else(|| {
                format!("vault key {id:?} must be 32 bytes, written as 64 hex digits or in base64")
            })?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes[..])
                .map_err(|_| format!("vault key {id:?} is not an AES-256 key"))?;
            out.push(VaultKey {
                id: id.clone(),
                key: LessSafeKey::new(key),
            });
        }
        Ok(Vault {
            keys: out,
            rng: SystemRandom::new(),
        })
    }

    /// The keys, the one that seals first.
    pub fn keys(&self) -> &[VaultKey] {
        &self.keys
    }

    /// The key that seals.
    fn current(&self) -> &VaultKey {
        &self.keys[0]
    }

    /// `plaintext` sealed for `user`'s record at `route`, issued to the
    /// upstream client `client_id`: the id of the key that sealed it, and
    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(
        &self,
        user: &str,
        route: &str,
        client_id: &str,
        plaintext: &[u8],
    ) -> (String, Vec<u8>) {
        let key = self.current();
        let sealed = self.seal_with(
            key,
            aad(AAD_LABEL, [user, route, client_id, &key.id]),
            plaintext,
        );
        (key.id.clone(), sealed)
    }

    fn seal_with(&self, key: &VaultKey, aad: Vec<u8>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM seals anything below 64 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn open_with(&self, kid: &str, aad: Vec<u8>, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let key = self.keys.iter().find(|k| k.id == kid)?;
        if sealed.len() < NONCE_LEN + TAG_LEN || sealed.len() > MAX_SEALED {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = Zeroizing::new(rest.to_vec());
        let len = key
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .ok()?
            .len();
        buf.truncate(len); // the tag; the whole buffer is wiped on drop
        Some(buf)
    }

    /// portcullis's client secret at a route's upstream authorization
    /// server `issuer` (a dynamic registration's), sealed: key id, bytes.
    pub fn seal_client_secret(
        &self,
        route: &str,
        issuer: &str,
        client_id: &str,
        secret: &str,
    ) -> (String, Vec<u8>) {
        let key = self.current();
        let aad = aad(CLIENT_AAD_LABEL, [route, issuer, client_id, &key.id]);
        (key.id.clone(), self.seal_with(key, aad, secret.as_bytes()))
    }

    /// The secret [`Vault::seal_client_secret`] sealed, or `None` (a key no
    /// longer configured, altered, or another registration's).
    pub fn open_client_secret(
        &self,
        route: &str,
        issuer: &str,
        client_id: &str,
        (kid, sealed): (&str, &[u8]),
    ) -> Option<Zeroizing<String>> {
        let aad = aad(CLIENT_AAD_LABEL, [route, issuer, client_id, kid]);
        let plain = self.open_with(kid, aad, sealed)?;
        std::str::from_utf8(&plain)
            .ok()
            .map(|s| Zeroizing::new(s.to_string()))
    }

    /// The plaintext of a record; `None` when its key is not in the vault,
    /// or it was altered, or it belongs to another (user, route, client,
    /// key id) than the record says.
    pub fn open(&self, t: &UpstreamToken) -> Option<Zeroizing<Vec<u8>>> {
        let aad = aad(AAD_LABEL, [&t.user, &t.route, &t.client_id, &t.kid]);
        self.open_with(&t.kid, aad, &t.sealed)
    }

    /// Re-seals under the first key every record sealed by another key of
    /// the vault, each with a compare-and-swap on its generation (a record
    /// written meanwhile, by a refresh, is skipped: that write sealed it
    /// anew). Returns how many were re-sealed, and how many could not be
    /// opened (a key no longer configured, or altered): those are left as
    /// they are.
    pub fn rekey(&self, store: &mut dyn Store) -> Result<(usize, usize), StoreError> {
        let current = &self.current().id;
        let (mut resealed, mut unreadable) = (0, 0);
        for t in store.all_upstream()? {
            if t.kid == *current {
                continue;
            }
            let Some(plain) = self.open(&t) else {
                unreadable += 1;
                continue;
            };
            let (kid, sealed) = self.seal(&t.user, &t.route, &t.client_id, &plain);
            let next = UpstreamToken { kid, sealed, ..t };
            if store.replace_upstream_if(&next, next.generation)? {
                resealed += 1;
            }
        }
        Ok((resealed, unreadable))
    }

    /// [`Secret`] sealed as JSON (see [`Vault::seal`]).
    pub fn seal_secret(
        &self,
        user: &str,
        route: &str,
        client_id: &str,
        secret: &Secret,
    ) -> (String, Vec<u8>) {
        // Room for the worst case (every byte escaped as `\u00XX`), so the
        // buffer never grows and leaves a copy of the plaintext behind.
        let text = secret.access_token.len()
            + [&secret.refresh_token, &secret.token_type, &secret.scope]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum::<usize>();
        let mut json = Zeroizing::new(Vec::with_capacity(128 + 6 * text));
        serde_json::to_writer(&mut *json, secret).expect("a Secret always serialises");
        self.seal(user, route, client_id, &json)
    }

    /// The [`Secret`] of a record; `None` as [`Vault::open`], or when the
    /// plaintext is not a sealed `Secret`.
    pub fn open_secret(&self, t: &UpstreamToken) -> Option<Secret> {
        let plain = self.open(t)?;
        serde_json::from_slice(&plain).ok()
    }
}

/// What is sealed in a record: the upstream's token response, as far as it
/// is kept. Its strings are wiped when it is dropped; its `Debug` shows none
/// of them.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secret {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.access_token.zeroize();
        self.refresh_token.zeroize();
        self.token_type.zeroize();
        self.scope.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret { .. }")
    }
}

/// The associated data: a label, then (for a token) user, route, client id
/// and key id, or (for a client secret) route, issuer, client id and key
/// id, each prefixed with its length (4 bytes, big-endian), so no two
/// different tuples give the same bytes.
fn aad(label: &[u8], parts: [&str; 4]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(label.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    out.extend_from_slice(label);
    for p in parts {
        let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// A key's 32 bytes from its text: 64 hex digits, or base64 (standard or
/// URL-safe alphabet, padded or not). `None` for anything else.
fn parse_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let t = text.trim();
    let mut key = Zeroizing::new([0u8; 32]);
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(key);
    }
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let unpadded = t.strip_suffix("==").or(t.strip_suffix('=')).unwrap_or(t);
    let mut decoded = Zeroizing::new(Vec::with_capacity(48));
    STANDARD_NO_PAD
        .decode_vec(unpadded, &mut decoded)
        .or_else(|_| {
            decoded.clear();
            URL_SAFE_NO_PAD.decode_vec(unpadded, &mut decoded)
        })
        .ok()?;
    if decoded.len() != 32 {
        return None;
    }
    key.copy_from_slice(&decoded);
    Some(key)
}

#[cfg(test)]
mod tests;
