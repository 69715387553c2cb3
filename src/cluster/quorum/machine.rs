//! A quorum queue's state machine: the committed messages not yet settled, with how often
//! each was returned, applied in log order on every member. On the member that leads the
//! group it also feeds the live queue ([`Feed`]). Its snapshot (every message held) is kept
//! in the group's directory as the metadata snapshot is, so the log before it can be purged.

use super::codec::{Encoded, Ops};
use crate::cluster::log_store::{read_value, write_value};
use crate::cluster::state_machine::StoredSnapshot;
use crate::cluster::{Command, CommandResult, NodeInfo, TypeConfig};
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
}

/// The state machine; clones share one state.
#[derive(Clone)]
pub struct QueueMachine {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, e)
}

impl QueueMachine {
    /// Starts from the snapshot in `dir`, if there is one.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let state = match read_value::<StoredSnapshot>(&path)? {
            Some(s) => serde_json::from_slice(&s.data).map_err(io::Error::other)?,
            None => QueueState::default(),
        };
        Ok(QueueMachine {
            inner: Arc::new(Mutex::new(Inner { state, live: None })),
            path,
        })
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
        let inner = self.lock();
        let state = &inner.state;
        let data = serde_json::to_vec(state).map_err(io::Error::other)?;
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
        write_value(&self.path, &stored)
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
        let mut installed: QueueState = serde_json::from_slice(&data).map_err(|e| {
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
        // A node installing a snapshot follows; it has no live queue to feed.
        self.lock().state = installed;
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
