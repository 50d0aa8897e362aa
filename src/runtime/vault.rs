//! `portcullis vault rekey`: re-seals, in the store named by the
//! configuration file, every upstream token sealed by a vault key other than
//! the first under the first one, so the older keys can then be removed.
//! Safe beside a running portcullis: each record is replaced by a
//! compare-and-swap, and one written meanwhile (a refresh, sealed anew) is
//! left to that write.

use crate::vault::Vault;
use std::path::Path;

/// Run it against the configuration file's store and vault keys; the text to print.
pub fn vault_rekey(config: &Path) -> Result<String, String> {
    let (cfg, _) = crate::config::load(config).map_err(|e| e.to_string())?;
    let Some(vault) = &cfg.vault else {
        return Err(format!(
            "{}: no `vault` section: there are no vault keys to re-seal with",
            config.display()
        ));
    };
    let keys: Vec<(String, String)> = vault
        .keys
        .iter()
        .map(|k| (k.id.clone(), k.key.clone()))
        .collect();
    let vault = Vault::new(&keys).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut store = super::store::open_configured(config, &cfg)?;
    let (resealed, unreadable) = vault.rekey(store.as_mut()).map_err(|e| e.to_string())?;
    let first = &vault.keys()[0].id;
    let mut out = format!("re-sealed {resealed} upstream token(s) under vault key {first}\n");
    if unreadable > 0 {
        out.push_str(&format!(
            "{unreadable} upstream token(s) cannot be opened with the configured keys (sealed by a \
             key no longer configured, or altered) and were left as they are: their users must \
             connect again\n"
        ));
    }
    Ok(out)
}
