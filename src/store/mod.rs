//! Durable storage: the definitions of durable exchanges, queues and bindings, and the message
//! log holding persistent messages of durable queues. Recovery at start rebuilds both.
//!
//! Layout under `server.data_dir`:
//!
//! ```text
//! definitions/vhost-<hex name>.json   one per vhost, replaced atomically
//! messages/<16-digit segment>.log     the message log (see log.rs, record.rs)
//! ```

pub mod compaction;
pub mod definitions;
pub mod disk;
pub mod keyed;
pub mod log;
pub mod record;
pub mod recovery;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use definitions::{DefinitionsError, VHostDefinitions};
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
    Definitions(#[from] DefinitionsError),
}

/// The broker's store: where definitions go, and the message log.
#[derive(Debug)]
pub struct Store {
    definitions_dir: PathBuf,
    pub log: Arc<MessageLog>,
    /// Per-queue bytes of ready bodies kept in memory (store.queue_memory_bytes).
    pub queue_memory_budget: u64,
    /// Charged for messages read back from the log.
    pub memory: Arc<crate::core::memory::MemoryMonitor>,
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
    /// Opens (creating if needed) the store under `data_dir`, recovers the message log, reads
    /// the definitions of the vhosts `vhosts` names from the recovered keyed state, and keeps
    /// only messages of queues those definitions name.
    pub fn open(
        data_dir: &Path,
        vhosts: impl FnOnce(&RecoveredKeyed) -> Vec<String>,
        config: &crate::config::StoreConfig,
        memory: Arc<crate::core::memory::MemoryMonitor>,
    ) -> Result<(Arc<Store>, Recovered), StoreError> {
        let definitions_dir = data_dir.join("definitions");
        let messages_dir = data_dir.join("messages");
        ensure_dir(&definitions_dir)?;
        ensure_dir(&messages_dir)?;
        let started = std::time::Instant::now();
        let mut log = recovery::recover(&messages_dir).map_err(|source| StoreError::Recover {
            path: messages_dir.clone(),
            source,
        })?;
        let definitions = vhosts(&log.keyed)
            .iter()
            .map(|v| definitions::load(&definitions_dir, v))
            .collect::<Result<Vec<_>, _>>()?;
        let known: std::collections::HashSet<u64> = definitions
            .iter()
            .flat_map(|d| d.queues.iter().map(|q| q.id))
            .collect();
        let live = log.retain_queues(|q| known.contains(&q));
        let messages: usize = log.queues.values().map(|q| q.messages.len()).sum();
        tracing::info!(
            records = log.records,
            messages,
            queues = log.queues.len(),
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
        Ok((
            Arc::new(Store {
                definitions_dir,
                log: message_log,
                queue_memory_budget: config.queue_memory_bytes,
                memory,
            }),
            Recovered { definitions, log },
        ))
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

    /// Replaces a vhost's durable definitions on disk.
    pub fn save_definitions(&self, defs: &VHostDefinitions) -> Result<(), DefinitionsError> {
        definitions::save(&self.definitions_dir, defs)
    }
}
