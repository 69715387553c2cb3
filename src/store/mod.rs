//! Durable storage: one append-only log holding persistent messages of durable queues and
//! every other kind of durable state as keyed records (definitions, users, MQTT sessions, ...).
//! Recovery at start rebuilds all of it.
//!
//! Layout under `server.data_dir`:
//!
//! ```text
//! messages/<16-digit segment>.log     the log (see log.rs, record.rs, keyed.rs)
//! definitions.migrated/               definitions of an older release, once moved into the log
//! ```

pub mod compaction;
pub mod definitions;
pub mod disk;
pub mod keyed;
pub mod legacy;
pub mod log;
pub mod record;
pub mod recovery;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use definitions::VHostDefinitions;
pub use keyed::{compose_key, kind, split_key, RecoveredKeyed};
pub use log::MessageLog;
pub use recovery::{RecoveredLog, RecoveredQueue};

/// When a persistent message counts as safely stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After `fdatasync` (survives power loss).
    #[default]
    Always,
    /// After `write` (survives a broker crash, not an OS crash or power loss).
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot recover the message log in {path}: {source}")]
    Recover {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Legacy(#[from] legacy::LegacyError),
    #[error("cannot retire the migrated definitions directory {path}: {source}")]
    Retire {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The broker's store: where definitions go, and the message log.
#[derive(Debug)]
pub struct Store {
    pub log: Arc<MessageLog>,
    /// Per-queue bytes of ready bodies kept in memory (store.queue_memory_bytes).
    pub queue_memory_budget: u64,
}

/// What the store held at start, for the broker to rebuild its vhosts from.
#[derive(Debug)]
pub struct Recovered {
    pub definitions: Vec<VHostDefinitions>,
    pub log: RecoveredLog,
}

fn ensure_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(path).map_err(|source| StoreError::Dir {
        path: path.to_owned(),
        source,
    })
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir` and recovers the log: the
    /// definitions of the vhosts `vhosts` names from the recovered keyed state (empty for a
    /// vhost with none) and the messages of the queues they name. Definitions of an older
    /// release (`definitions/*.json`) are moved into the log first (see
    /// [`Self::migrate_legacy`]).
    pub fn open(
        data_dir: &Path,
        vhosts: impl FnOnce(&RecoveredKeyed) -> Vec<String>,
        config: &crate::config::StoreConfig,
    ) -> Result<(Arc<Store>, Recovered), StoreError> {
        let messages_dir = data_dir.join("messages");
        ensure_dir(&messages_dir)?;
        let legacy_dir = data_dir.join(legacy::DIR);
        let legacy = legacy::load_all(&legacy_dir)?;
        let started = std::time::Instant::now();
        let mut log = recovery::recover(&messages_dir).map_err(|source| StoreError::Recover {
            path: messages_dir.clone(),
            source,
        })?;
        let vhosts = vhosts(&log.keyed);
        let (mut by_vhost, bad) = definitions::from_keyed(&log.keyed);
        for e in &bad {
            tracing::error!("{e}; left out");
        }
        // The old files are the truth for their vhosts: the log can only hold an earlier,
        // interrupted migration of the same content.
        for defs in &legacy {
            by_vhost.insert(defs.vhost.clone(), defs.clone());
        }
        let known: std::collections::HashSet<u64> = by_vhost
            .values()
            .flat_map(|d| d.queues.iter().map(|q| q.id))
            .collect();
        let live = log.retain_queues(|q| known.contains(&q));
        let messages: usize = log.queues.values().map(|q| q.messages.len()).sum();
        let definitions_count: usize = by_vhost
            .values()
            .map(|d| d.exchanges.len() + d.queues.len() + d.bindings.len())
            .sum();
        tracing::info!(
            records = log.records,
            messages,
            queues = log.queues.len(),
            definitions = definitions_count,
            segments = log.segments.len(),
            corrupt_records = log.corrupt_records,
            truncated_bytes = log.truncated_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "message store recovered"
        );
        let message_log = MessageLog::start(
            messages_dir.clone(),
            config.segment_bytes,
            config.fsync,
            live,
            log.keyed.index(),
        )
        .map_err(|source| StoreError::Dir {
            path: messages_dir,
            source,
        })?;
        // Idle times of queues no longer defined: a crash came between deleting a queue and
        // deleting its idle time.
        for (key, _) in log.keyed.of_kind(kind::QUEUE_IDLE) {
            let id = <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes);
            if !id.is_some_and(|id| known.contains(&id)) {
                message_log.delete(kind::QUEUE_IDLE, key);
            }
        }
        let store = Arc::new(Store {
            log: message_log,
            queue_memory_budget: config.queue_memory_bytes,
        });
        if !legacy.is_empty() {
            store.migrate_legacy(data_dir, &legacy)?;
        }
        let definitions = vhosts
            .iter()
            .map(|v| {
                by_vhost.remove(v).unwrap_or_else(|| VHostDefinitions {
                    vhost: v.clone(),
                    ..Default::default()
                })
            })
            .collect();
        Ok((store, Recovered { definitions, log }))
    }

    /// Writes the definitions read from an older release's files as records, waits until they
    /// are durable, and only then renames the old directory: a crash at any point leaves the
    /// old files in place, and the next start migrates them again (the same records again).
    fn migrate_legacy(
        &self,
        data_dir: &Path,
        legacy: &[VHostDefinitions],
    ) -> Result<(), StoreError> {
        let mut lsn = 0;
        let mut count = 0;
        for defs in legacy {
            for (k, key, value) in defs.records() {
                lsn = self.log.put(k, &key, &value);
                count += 1;
            }
        }
        self.log.wait_synced_blocking(lsn);
        let from = data_dir.join(legacy::DIR);
        let to = data_dir.join(legacy::MIGRATED_DIR);
        let retire = |source| StoreError::Retire {
            path: from.clone(),
            source,
        };
        if to.exists() {
            std::fs::remove_dir_all(&to).map_err(retire)?;
        }
        std::fs::rename(&from, &to).map_err(retire)?;
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(retire)?;
        tracing::info!(
            vhosts = legacy.len(),
            records = count,
            moved_to = %to.display(),
            "moved definitions of an older release into the log"
        );
        Ok(())
    }

    /// Durably sets keyed state `key` of `kind` (see [`keyed`]) to `value`; returns the LSN
    /// to wait for ([`MessageLog::wait_synced`]) before acknowledging the change.
    pub fn put(&self, kind: u8, key: &[u8], value: &[u8]) -> u64 {
        self.log.put(kind, key, value)
    }

    /// Durably removes keyed state `key` of `kind`; returns the LSN to wait for.
    pub fn delete(&self, kind: u8, key: &[u8]) -> u64 {
        self.log.delete(kind, key)
    }
}
