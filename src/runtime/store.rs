//! `portcullis store migrate`, and opening the store a configuration file
//! names for the commands that work on it (`grants`, `vault`, `tools`).

use crate::config::Config;
use crate::store::{Location, Store};
use std::path::Path;

/// The store of the configuration file `config` (loaded as `cfg`), for a
/// command: a SQLite file must exist already (else the proxy has not run
/// yet, or the path is wrong); a PostgreSQL database is migrated if needed.
pub(crate) fn open_configured(config: &Path, cfg: &Config) -> Result<Box<dyn Store>, String> {
    let location = location(config, cfg)?;
    if let Location::File { path, .. } = &location {
        if !path.exists() {
            return Err(format!(
                "{}: no store yet (portcullis has not run)",
                path.display()
            ));
        }
    }
    crate::store::open(&location).map_err(|e| e.to_string())
}

fn location(config: &Path, cfg: &Config) -> Result<Location, String> {
    let Some(store) = &cfg.store else {
        return Err(format!(
            "{}: no `store` section: this configuration has no authorization server and no pinning",
            config.display()
        ));
    };
    let base = config.parent().unwrap_or(Path::new("."));
    Location::from_config(store, base).map_err(|e| format!("{}: {e}", config.display()))
}

/// Creates the store the configuration file names, or brings its schema to
/// this build's version (what every start does too); the text to print.
/// A store written by a newer portcullis is refused, untouched.
pub fn store_migrate(config: &Path) -> Result<String, String> {
    let (cfg, _) = crate::config::load(config).map_err(|e| e.to_string())?;
    let location = location(config, &cfg)?;
    let (_, migrated) = crate::store::migrate(&location).map_err(|e| e.to_string())?;
    Ok(match migrated.from {
        from if from == migrated.to => {
            format!("{location}: schema version {from}, up to date\n")
        }
        0 => format!("{location}: created, schema version {}\n", migrated.to),
        from => format!(
            "{location}: migrated from schema version {from} to {}\n",
            migrated.to
        ),
    })
}
