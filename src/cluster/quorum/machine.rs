//! A quorum queue's state machine: the committed messages not yet settled, with how often
//! each was returned, applied in log order on every member. On the member that leads the
//! group it also feeds the live queue ([`Feed`]). Its snapshot (every message held) is kept
//! in the group's directory as the metadata snapshot is, so the log before it can be purged.
//!
//! Entries carry many messages each, so a snapshot is asked for by the bytes applied since
//! the last one ([`QueueMachine::snapshot_wanted`]), not only by their count: the log (kept
//! in memory and on disk until purged) stays within [`SNAPSHOT_AFTER_BYTES`] or the last
//! snapshot's size, whichever is larger, so a deep queue's snapshots cost no more than the
//! bytes applied between them.

use super::codec::{get_bytes, get_u64, put_bytes, Encoded, Ops};
use crate::cluster::state_machine::StoredSnapshot;
use crate::cluster::{Command, CommandResult, NodeInfo, TypeConfig};
use bytes::{BufMut, Bytes};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The bytes of messages and ids applied after which a snapshot is asked for (or after the
/// last snapshot's size, when larger).
pub const SNAPSHOT_AFTER_BYTES: usize = 16 << 20;

/// The first byte of a snapshot in binary ([`QueueState::encode`]); one in JSON, as written
/// before, starts with `{`.
const STATE_V1: u8 = 0;

/// One committed message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub message: Encoded,
    /// How often it was returned to the queue (its `x-delivery-count`).
    #[serde(default)]
    pub returns: u64,
    /// When its entry was proposed ([`Ops::at`]).
    #[serde(default)]
    pub at: u64,
}

/// What the machine holds, and what a snapshot carries.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct QueueState {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, NodeInfo>,
    /// The id the next committed message gets.
    pub next_id: u64,
    pub messages: BTreeMap<u64, Held>,
}

/// The part of a snapshot in JSON, before its messages.
#[derive(Serialize)]
struct HeaderOut<'a> {
    last_applied: &'a Option<LogId<u64>>,
    membership: &'a StoredMembership<u64, NodeInfo>,
    next_id: u64,
}

#[derive(Deserialize)]
struct HeaderIn {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
    next_id: u64,
}

impl QueueState {
    /// The snapshot's data: [`STATE_V1`], the header's length and JSON, the message count,
    /// then each message as its id, returns, `at`, length and record.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let header = serde_json::to_vec(&HeaderOut {
            last_applied: &self.last_applied,
            membership: &self.membership,
            next_id: self.next_id,
        })
        .map_err(io::Error::other)?;
        let bytes: usize = self.messages.values().map(|h| 28 + h.message.0.len()).sum();
        let mut out = Vec::with_capacity(1 + 4 + header.len() + 8 + bytes);
        out.put_u8(STATE_V1);
        put_bytes(&mut out, &header);
        out.put_u64(self.messages.len() as u64);
        for (id, h) in &self.messages {
            out.put_u64(*id);
            out.put_u64(h.returns);
            out.put_u64(h.at);
            put_bytes(&mut out, &h.message.0);
        }
        Ok(out)
    }

    /// Reads a snapshot's data, in binary or (written before) in JSON.
    pub fn decode(data: &[u8]) -> io::Result<QueueState> {
        if data.first() != Some(&STATE_V1) {
            return serde_json::from_slice(data).map_err(io::Error::other);
        }
        let bad = |e: super::codec::CodecError| io::Error::new(io::ErrorKind::InvalidData, e);
        let mut p = Bytes::copy_from_slice(&data[1..]);
        let header: HeaderIn =
            serde_json::from_slice(&get_bytes(&mut p).map_err(bad)?).map_err(io::Error::other)?;
        let n = get_u64(&mut p).map_err(bad)?;
        let mut messages = BTreeMap::new();
        for _ in 0..n {
            let (id, returns, at) = (
                get_u64(&mut p).map_err(bad)?,
                get_u64(&mut p).map_err(bad)?,
                get_u64(&mut p).map_err(bad)?,
            );
            // Each its own: a consumed message frees its bytes, not the snapshot's buffer
            // once the last one goes.
            let message = Encoded(get_bytes(&mut p).map_err(bad)?).detached();
            messages.insert(
                id,
                Held {
                    message,
                    returns,
                    at,
                },
            );
        }
        Ok(QueueState {
            last_applied: header.last_applied,
            membership: header.membership,
            next_id: header.next_id,
            messages,
        })
    }
}

/// Where committed messages go on the leader: its live queue.
pub trait Feed: Send + Sync {
    /// `id` was committed (or, with `redelivered`, is loaded by a new leader); false when
    /// the live queue refused it (full, `reject-publish`).
    fn committed(&self, id: u64, held: &Held, redelivered: bool) -> bool;
}

struct Inner {
    state: QueueState,
    /// Set while this node serves the queue.
    live: Option<Arc<dyn Feed>>,
    /// Bytes of messages and ids applied since the last snapshot.
    since_snapshot: usize,
    /// The size of the last snapshot's data.
    snapshot_size: usize,
}

impl Inner {
    fn wants_snapshot(&self) -> bool {
        self.since_snapshot >= SNAPSHOT_AFTER_BYTES.max(self.snapshot_size)
    }
}

/// The state machine; clones share one state.
#[derive(Clone)]
pub struct QueueMachine {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
    /// Told when enough was applied since the last snapshot for another.
    wanted: Arc<Notify>,
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, e)
}

impl QueueMachine {
    /// Starts from the snapshot in `dir`, if there is one.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let (state, snapshot_size) = match StoredSnapshot::read(&path)? {
            Some(s) => (QueueState::decode(&s.data)?, s.data.len()),
            None => (QueueState::default(), 0),
        };
        Ok(QueueMachine {
            inner: Arc::new(Mutex::new(Inner {
                state,
                live: None,
                since_snapshot: 0,
                snapshot_size,
            })),
            path,
            wanted: Arc::new(Notify::new()),
        })
    }

    /// Told (once per wait at most) when a snapshot should be built: the group's member asks
    /// its Raft for one (`Trigger::snapshot`).
    pub fn snapshot_wanted(&self) -> Arc<Notify> {
        self.wanted.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts feeding `feed` (this node now leads): every message held goes to it first,
    /// redelivered (it may have been delivered by the leader before), then each one committed
    /// from now on. Returns the delivery counts, for the live queue's returns to go on from.
    pub fn go_live(&self, feed: Arc<dyn Feed>) -> BTreeMap<u64, u64> {
        let mut inner = self.lock();
        for (id, held) in &inner.state.messages {
            // Loaded again, not published: what it refuses leaves, and no publisher waits.
            let _ = feed.committed(*id, held, true);
        }
        inner.live = Some(feed);
        inner
            .state
            .messages
            .iter()
            .filter(|(_, h)| h.returns > 0)
            .map(|(id, h)| (*id, h.returns))
            .collect()
    }

    /// Stops feeding the live queue (this node no longer leads).
    pub fn stop_live(&self) {
        self.lock().live = None;
    }

    /// How many committed messages are not settled, as this node has applied them.
    pub fn held(&self) -> usize {
        self.lock().state.messages.len()
    }

    /// Applies one entry; the positions of the messages the live queue refused.
    fn apply_ops(inner: &mut Inner, ops: Ops) -> Vec<u32> {
        inner.since_snapshot += ops.encoded_len();
        let mut refused = Vec::new();
        for (position, message) in (0u32..).zip(ops.enqueue) {
            let id = inner.state.next_id;
            inner.state.next_id += 1;
            let held = Held {
                message,
                returns: 0,
                at: ops.at,
            };
            if let Some(feed) = &inner.live {
                if !feed.committed(id, &held, false) {
                    refused.push(position);
                }
            }
            inner.state.messages.insert(id, held);
        }
        for id in ops.settle {
            inner.state.messages.remove(&id);
        }
        for id in ops.returned {
            if let Some(h) = inner.state.messages.get_mut(&id) {
                h.returns += 1;
            }
        }
        refused
    }

    fn snapshot_of(&self) -> io::Result<StoredSnapshot> {
        let mut inner = self.lock();
        let data = inner.state.encode()?;
        inner.since_snapshot = 0;
        inner.snapshot_size = data.len();
        let state = &inner.state;
        let id = match state.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        Ok(StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id: id,
            },
            data,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for QueueMachine {
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

impl RaftStateMachine<TypeConfig> for QueueMachine {
    type SnapshotBuilder = QueueMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>), StorageError<u64>> {
        let inner = self.lock();
        Ok((inner.state.last_applied, inner.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut inner = self.lock();
        for entry in entries {
            inner.state.last_applied = Some(entry.log_id);
            let mut result = CommandResult::default();
            match entry.payload {
                EntryPayload::Normal(Command::Queue(ops)) => {
                    result.refused = Self::apply_ops(&mut inner, ops);
                    if inner.wants_snapshot() {
                        self.wanted.notify_one();
                    }
                }
                EntryPayload::Membership(m) => {
                    inner.state.membership = StoredMembership::new(Some(entry.log_id), m);
                }
                // Blank entries, and metadata commands that never belong here.
                _ => {}
            }
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> QueueMachine {
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
        let mut installed = QueueState::decode(&data).map_err(|e| {
            err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        installed.last_applied = meta.last_log_id;
        installed.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        stored
            .write(&self.path)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        // A node installing a snapshot follows; it has no live queue to feed.
        let mut inner = self.lock();
        inner.state = installed;
        inner.since_snapshot = 0;
        inner.snapshot_size = stored.data.len();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::cluster::log_store::tests::{temp_dir, Dir};
    use bytes::Bytes;
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::BTreeSet;

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn state() -> QueueState {
        let mut messages = BTreeMap::new();
        for id in [3u64, 7] {
            messages.insert(
                id,
                Held {
                    message: Encoded(Bytes::from(vec![id as u8; 300])),
                    returns: id - 3,
                    at: 10 * id,
                },
            );
        }
        let members: BTreeSet<u64> = [1].into();
        QueueState {
            last_applied: Some(log_id(12)),
            membership: StoredMembership::new(
                Some(log_id(1)),
                Membership::new(vec![members], None),
            ),
            next_id: 8,
            messages,
        }
    }

    fn same(a: &QueueState, b: &QueueState) {
        assert_eq!(a.last_applied, b.last_applied);
        assert_eq!(a.membership, b.membership);
        assert_eq!(a.next_id, b.next_id);
        let ms = |s: &QueueState| {
            s.messages
                .iter()
                .map(|(id, h)| (*id, h.message.clone(), h.returns, h.at))
                .collect::<Vec<_>>()
        };
        assert_eq!(ms(a), ms(b));
    }

    /// Snapshots are binary now; one written in JSON (as before) still reads, from its file
    /// in either form, and damage is an error.
    #[test]
    fn snapshots_read_in_binary_and_in_the_old_json() {
        let s = state();
        let binary = s.encode().unwrap();
        assert_eq!(binary[0], STATE_V1);
        // Bodies as they are: no base64, no arrays of numbers.
        let json = serde_json::to_vec(&s).unwrap();
        assert!(
            binary.len() + 150 < json.len(),
            "{} {}",
            binary.len(),
            json.len()
        );
        same(&QueueState::decode(&binary).unwrap(), &s);
        same(&QueueState::decode(&json).unwrap(), &s);
        assert!(QueueState::decode(&binary[..binary.len() - 1]).is_err());

        let dir = temp_dir();
        let _cleanup = Dir(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snapshot");
        let meta = SnapshotMeta {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
            snapshot_id: "x".into(),
        };
        // The old file: the whole StoredSnapshot in JSON, its data JSON too.
        crate::cluster::log_store::write_value(
            &path,
            &StoredSnapshot {
                meta: meta.clone(),
                data: json,
            },
        )
        .unwrap();
        let machine = QueueMachine::open(&dir).unwrap();
        assert_eq!(machine.held(), 2);
        StoredSnapshot {
            meta,
            data: binary.clone(),
        }
        .write(&path)
        .unwrap();
        // The data as it is, beside the meta: not an array of numbers.
        let file = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(file < binary.len() + 600, "{file}");
        let back = StoredSnapshot::read(&path).unwrap().unwrap();
        assert_eq!(back.data, binary);
        let machine = QueueMachine::open(&dir).unwrap();
        same(&machine.lock().state, &s);
    }

    /// A snapshot is wanted once the bytes applied since the last reach the floor, or the
    /// last snapshot's size when larger; building one starts the count again.
    #[tokio::test]
    async fn a_snapshot_is_wanted_by_bytes_applied() {
        let dir = temp_dir();
        let _cleanup = Dir(dir.clone());
        let mut machine = QueueMachine::open(&dir).unwrap();
        let big = Encoded(Bytes::from(vec![0u8; SNAPSHOT_AFTER_BYTES / 4]));
        let entry = |index: u64, enqueue: Vec<Encoded>, settle: Vec<u64>| Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Command::Queue(Ops {
                enqueue,
                settle,
                returned: vec![],
                at: 0,
            })),
        };
        machine
            .apply(vec![entry(1, vec![big.clone(); 3], vec![])])
            .await
            .unwrap();
        assert!(!machine.lock().wants_snapshot());
        machine
            .apply(vec![entry(2, vec![big.clone()], vec![0, 1, 2])])
            .await
            .unwrap();
        assert!(machine.lock().wants_snapshot());
        machine.build_snapshot().await.unwrap();
        assert!(!machine.lock().wants_snapshot());
        // One message held: the next snapshot comes after the floor (it is larger).
        assert_eq!(machine.held(), 1);
        machine
            .apply(vec![entry(3, vec![big.clone(); 4], vec![])])
            .await
            .unwrap();
        assert!(machine.lock().wants_snapshot());
    }
}
