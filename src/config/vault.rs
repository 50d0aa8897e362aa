//! Configuration of the vault of users' upstream OAuth tokens (`vault`).

use super::Dur;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// The vault that keeps users' upstream OAuth tokens (routes with
/// `upstream_auth.oauth2`), sealed with AES-256-GCM in the store: the store
/// file never holds a token in the clear.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The keys, newest first: the first seals every token written, every
    /// one opens those it sealed. To rotate: put a new key first (portcullis
    /// running with it), run `portcullis vault rekey -c FILE` (it re-seals
    /// the tokens of the other keys under the first), then remove the old
    /// key.
    pub keys: Vec<VaultKeyConfig>,
    /// How long before an upstream access token expires it is refreshed, in
    /// the background (never on a request's path).
    #[serde(default = "default_refresh_ahead")]
    pub refresh_ahead: Dur,
}

fn default_refresh_ahead() -> Dur {
    Dur(Duration::from_secs(5 * 60))
}

/// One vault key.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultKeyConfig {
    /// Its name, stored with every token it seals (unique; never reuse one
    /// for another key).
    pub id: String,
    /// 32 random bytes as 64 hex digits or in base64 (e.g. `openssl rand
    /// -hex 32`); keep it out of the file: `${VAULT_KEY_1}` is substituted.
    #[serde(deserialize_with = "super::env_string")]
    pub key: String,
}

/// Shows the id only: the key stays out of logs and dumps.
impl fmt::Debug for VaultKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKeyConfig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::path::Path;
    use std::time::Duration;

    const MIN: &str =
        "listen: [{address: 127.0.0.1:1}]\nroutes: [{name: a, from: http://a/, to: http://b/}]\n";

    #[test]
    fn keys_in_order_env_substituted_refresh_ahead_defaulted() {
        let key = "ab".repeat(32);
        std::env::set_var("PORTCULLIS_TEST_VAULT_KEY_2", &key);
        let text = format!(
            "{MIN}vault:\n  keys:\n    - {{ id: k2, key: \"${{PORTCULLIS_TEST_VAULT_KEY_2}}\" }}\n    - {{ id: k1, key: literal }}\n"
        );
        let c = parse(&text, Path::new("t.yaml")).unwrap();
        let v = c.vault.unwrap();
        let keys: Vec<(&str, &str)> = v
            .keys
            .iter()
            .map(|k| (k.id.as_str(), k.key.as_str()))
            .collect();
        assert_eq!(keys, [("k2", key.as_str()), ("k1", "literal")]);
        assert_eq!(v.refresh_ahead.0, Duration::from_secs(300));
        let shown = format!("{v:?}");
        assert!(
            shown.contains("k2") && !shown.contains(&key) && !shown.contains("literal"),
            "{shown}"
        );

        let c = parse(
            &format!("{MIN}vault: {{ keys: [], refresh_ahead: 90s }}\n"),
            Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!(c.vault.unwrap().refresh_ahead.0, Duration::from_secs(90));
        assert!(parse(MIN, Path::new("t.yaml")).unwrap().vault.is_none());
    }

    #[test]
    fn unknown_keys_and_unset_variables_are_errors() {
        for bad in [
            "vault: { keys: [{ id: k1, key: x, kid: y }] }",
            "vault: { keys: [], refresh: 5m }",
            "vault: { keys: [{ id: k1 }] }",
            "vault: { refresh_ahead: 5m }",
            "vault: { keys: [{ id: k1, key: \"${PORTCULLIS_TEST_VAULT_UNSET}\" }] }",
        ] {
            let err = parse(&format!("{MIN}{bad}\n"), Path::new("t.yaml")).unwrap_err();
            assert_eq!(err.0.len(), 1, "{bad}: {err}");
        }
    }
}
