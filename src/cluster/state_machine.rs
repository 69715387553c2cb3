//! The metadata state machine: records by key, applied in log order on every node. Its
//! snapshot (the whole map, it is small) is kept in `<data_dir>/cluster/snapshot`, so the log
//! before it can be purged and a node that restarts or lags far behind starts from it.

use super::log_store::{read_value, write_value};
use super::{Command, CommandResult, NodeInfo, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// What the state machine holds, and what a snapshot carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metadata {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, NodeInfo>,
    pub records: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, NodeInfo>,
    data: Vec<u8>,
}

/// The state machine; clones share one state.
#[derive(Clone)]
pub struct StateMachine {
    state: Arc<RwLock<Metadata>>,
    path: PathBuf,
    /// The index last applied, for those waiting to see a change.
    applied: Arc<watch::Sender<u64>>,
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, e)
}

impl StateMachine {
    /// Starts from the snapshot in `dir`, if there is one.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let state = match read_value::<StoredSnapshot>(&path)? {
            Some(s) => serde_json::from_slice(&s.data).map_err(io::Error::other)?,
            None => Metadata::default(),
        };
        let index = state.last_applied.map_or(0, |l: LogId<u64>| l.index);
        Ok(StateMachine {
            state: Arc::new(RwLock::new(state)),
            path,
            applied: Arc::new(watch::Sender::new(index)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Metadata> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Metadata> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.read().records.get(key).cloned()
    }

    /// Every record whose key starts with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        self.read()
            .records
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Follows the index last applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The current state as a snapshot.
    fn snapshot_of(&self) -> io::Result<StoredSnapshot> {
        let state = self.read();
        let data = serde_json::to_vec(&*state).map_err(io::Error::other)?;
        let id = match state.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: id,
        };
        Ok(StoredSnapshot { meta, data })
    }
}

fn apply_command(records: &mut BTreeMap<String, serde_json::Value>, c: Command) -> CommandResult {
    let existed = match c {
        Command::Put { key, value } => records.insert(key, value).is_some(),
        Command::Delete { key } => records.remove(&key).is_some(),
    };
    CommandResult { existed }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let stored = self
            .snapshot_of()
            .map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        write_value(&self.path, &stored)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>), StorageError<u64>> {
        let state = self.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let last = {
            let mut state = self.write();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                results.push(match entry.payload {
                    EntryPayload::Blank => CommandResult::default(),
                    EntryPayload::Normal(c) => apply_command(&mut state.records, c),
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::default()
                    }
                });
            }
            state.last_applied.map_or(0, |l| l.index)
        };
        self.applied.send_replace(last);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let mut installed: Metadata = serde_json::from_slice(&data).map_err(|e| {
            err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                io::Error::other(e),
            )
        })?;
        installed.last_applied = meta.last_log_id;
        installed.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_value(&self.path, &stored)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        *self.write() = installed;
        self.applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let stored = read_value::<StoredSnapshot>(&self.path)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
