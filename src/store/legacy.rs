//! Reading the definitions of releases before keyed records: one JSON file per vhost in
//! `definitions/` (`vhost-<hex name>.json`, a [`VHostDefinitions`]). Read-only: the store reads
//! them once at start, writes their content as records, and retires the directory once the
//! records are durable (see `Store::open`).

use super::definitions::VHostDefinitions;
use std::path::{Path, PathBuf};

/// The directory the old release kept definitions in, under the data directory.
pub const DIR: &str = "definitions";
/// What that directory is renamed to once its content is in the log: kept, not deleted, so
/// an operator can still look at what was migrated.
pub const MIGRATED_DIR: &str = "definitions.migrated";

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("cannot read old definitions {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("old definitions file {path} is not valid: {reason}; fix or move it away to start")]
    Invalid { path: PathBuf, reason: String },
}

/// The file the old release kept `vhost`'s definitions in (the name hex-encoded: vhost names
/// may hold `/`).
pub fn path_for(dir: &Path, vhost: &str) -> PathBuf {
    let hex: String = vhost.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("vhost-{hex}.json"))
}

/// Every vhost's definitions in the old directory `dir`, sorted by vhost; none when there is
/// no such directory. A file that cannot be read or parsed is an error: starting without it
/// would lose its definitions silently.
pub fn load_all(dir: &Path) -> Result<Vec<VHostDefinitions>, LegacyError> {
    let read_err = |source| LegacyError::Read {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_err)?.path();
        let is_defs = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vhost-") && n.ends_with(".json"));
        if !is_defs {
            continue;
        }
        let text = std::fs::read(&path).map_err(|source| LegacyError::Read {
            path: path.clone(),
            source,
        })?;
        let defs: VHostDefinitions =
            serde_json::from_slice(&text).map_err(|e| LegacyError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        out.push(defs);
    }
    out.sort_by(|a, b| a.vhost.cmp(&b.vhost));
    Ok(out)
}
