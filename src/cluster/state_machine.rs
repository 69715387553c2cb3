//! The metadata state machine: records by key, applied in log order on every node. Its
//! snapshot (the whole map, it is small) is kept in `<data_dir>/cluster/snapshot`, so the log
//! before it can be purged and a node that restarts or lags far behind starts from it.

use super::definitions::apply_order;
use super::log_store::{records, replace_file, SNAPSHOT, VALUE};
use super::{Apply, Command, CommandResult, NodeInfo, TypeConfig};
use crate::store::record::encode_put;
use bytes::Bytes;
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

/// A snapshot as its file holds it.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredSnapshot {
    pub(super) meta: SnapshotMeta<u64, NodeInfo>,
    pub(super) data: Vec<u8>,
}

impl StoredSnapshot {
    /// Replaces the file at `path` with this snapshot: one record, the meta in JSON as its
    /// key and the data as it is (a JSON file would hold it as an array of numbers, four
    /// times its size).
    pub(super) fn write(&self, path: &Path) -> io::Result<()> {
        let meta = serde_json::to_vec(&self.meta).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(self.data.len() + meta.len() + 32);
        encode_put(&mut out, SNAPSHOT, &meta, &self.data);
        replace_file(path, &out)
    }

    /// The snapshot in the file at `path` (`None`: no file), as [`StoredSnapshot::write`]
    /// or, before it, the whole of it in JSON wrote it. A damaged file is an error: it was
    /// replaced atomically, so damage is not a torn write.
    pub(super) fn read(path: &Path) -> io::Result<Option<StoredSnapshot>> {
        let data = match std::fs::read(path) {
            Ok(d) => Bytes::from(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let damaged = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: damaged snapshot", path.display()),
            )
        };
        match records(&data).0.pop().ok_or_else(damaged)? {
            (SNAPSHOT, meta, data) => Ok(Some(StoredSnapshot {
                meta: serde_json::from_slice(&meta).map_err(|_| damaged())?,
                data: data.to_vec(),
            })),
            (VALUE, _, json) => serde_json::from_slice(&json).map_err(|_| damaged()),
            _ => Err(damaged()),
        }
    }
}

/// The state machine; clones share one state.
#[derive(Clone)]
pub struct StateMachine {
    state: Arc<RwLock<Metadata>>,
    path: PathBuf,
    /// The index last applied, for those waiting to see a change.
    applied: Arc<watch::Sender<u64>>,
    /// Makes each applied record live in the broker (None: records are only kept here).
    broker: Option<Arc<dyn Apply>>,
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, e)
}

impl StateMachine {
    /// Starts from the snapshot in `dir`, if there is one. The broker already holds what the
    /// snapshot holds (it applied it before the snapshot was written), so nothing is re-applied
    /// to `broker` here; entries after it are, as openraft replays them.
    pub fn open(dir: &Path, broker: Option<Arc<dyn Apply>>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let state = match StoredSnapshot::read(&path)? {
            Some(s) => serde_json::from_slice(&s.data).map_err(io::Error::other)?,
            None => Metadata::default(),
        };
        let index = state.last_applied.map_or(0, |l: LogId<u64>| l.index);
        Ok(StateMachine {
            state: Arc::new(RwLock::new(state)),
            path,
            applied: Arc::new(watch::Sender::new(index)),
            broker,
        })
    }

    /// Makes `changes` (key, new value or None) live in the broker and waits until the
    /// broker's store has them, so a record is durable there before the snapshot or the
    /// applied index that covers it.
    async fn apply_to_broker(&self, changes: &[(String, Option<serde_json::Value>)]) {
        let Some(broker) = &self.broker else {
            return;
        };
        let lsn = changes
            .iter()
            .map(|(k, v)| broker.apply(k, v.as_ref()))
            .max()
            .unwrap_or(0);
        broker.durable(lsn).await;
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

/// Applies `c` to the records, noting each key it sets or removes in `changed`; `existed`
/// tells whether the (first) key held a record before.
fn apply_command(
    records: &mut BTreeMap<String, serde_json::Value>,
    c: Command,
    changed: &mut Vec<(String, Option<serde_json::Value>)>,
) -> CommandResult {
    let mut guard_held = false;
    let existed = match c {
        Command::Put { key, value } => {
            changed.push((key.clone(), Some(value.clone())));
            records.insert(key, value).is_some()
        }
        Command::Guarded {
            key,
            expected,
            then,
        } => {
            let current = records.get(&key);
            let existed = current.is_some();
            if current == expected.as_ref() {
                guard_held = true;
                for c in then {
                    apply_command(records, c, changed);
                }
            }
            existed
        }
        Command::Delete { key } => {
            let existed = records.remove(&key).is_some();
            changed.push((key, None));
            existed
        }
        Command::Batch(commands) => {
            let mut first = None;
            for c in commands {
                let r = apply_command(records, c, changed);
                first.get_or_insert(r.existed);
            }
            first.unwrap_or(false)
        }
        // A quorum queue's operations belong to its own group, never to the metadata.
        Command::Queue(_) => false,
    };
    CommandResult {
        existed,
        guard_held,
        ..Default::default()
    }
}

/// What turns `old` into `new`, in an order the broker can apply: puts by [`apply_order`]
/// (a vhost before what lives in it), then removals in the reverse order.
fn difference(
    old: &BTreeMap<String, serde_json::Value>,
    new: &BTreeMap<String, serde_json::Value>,
) -> Vec<(String, Option<serde_json::Value>)> {
    let mut puts: Vec<(String, Option<serde_json::Value>)> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    puts.sort_by_key(|(k, _)| apply_order(k));
    let mut removals: Vec<(String, Option<serde_json::Value>)> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| (k.clone(), None))
        .collect();
    removals.sort_by_key(|(k, _)| std::cmp::Reverse(apply_order(k)));
    puts.extend(removals);
    puts
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let stored = self
            .snapshot_of()
            .map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        stored
            .write(&self.path)
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
        let mut changed = Vec::new();
        let last = {
            let mut state = self.write();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                results.push(match entry.payload {
                    EntryPayload::Blank => CommandResult::default(),
                    EntryPayload::Normal(c) => apply_command(&mut state.records, c, &mut changed),
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::default()
                    }
                });
            }
            state.last_applied.map_or(0, |l| l.index)
        };
        // Outside the lock: the broker's side may take its own locks and close connections.
        self.apply_to_broker(&changed).await;
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
        // Into the broker first: once the snapshot is on disk it counts as applied.
        let changes = difference(&self.read().records, &installed.records);
        self.apply_to_broker(&changes).await;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        stored
            .write(&self.path)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        *self.write() = installed;
        self.applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let stored = StoredSnapshot::read(&self.path)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
