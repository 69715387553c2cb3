//! The Raft log, vote and committed index on disk (`<data_dir>/cluster/`), in the store's
//! checksummed record format (`store::record`: magic, length, CRC-32 per record).
//!
//! Entries are appended to `log` and fsync'd before openraft is told they are durable. The
//! vote, the committed log id and the purge point each live in a file of one record, replaced
//! atomically (written beside, fsync'd, renamed, the directory fsync'd). Truncation (a
//! conflicting suffix) and purging (after a snapshot) rewrite `log` the same way: the metadata
//! log is small and both are rare. A torn record at the end of `log` was never acknowledged
//! and is cut off at start.

use super::TypeConfig;
use crate::store::record::{encode_put, scan, Record, Scan};
use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The record kind of a log entry (keyed by its index) in the cluster's files.
const ENTRY: u8 = 1;
/// The record kind of a value file's one record.
const VALUE: u8 = 2;

/// Encodes `value` as one checksummed record.
pub(super) fn encode<T: Serialize>(kind: u8, key: &[u8], value: &T) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(json.len() + 32);
    encode_put(&mut out, kind, key, &json);
    Ok(out)
}

/// Every whole record of `data` as (key, decoded value), and how many bytes they take; the
/// scan stops at the first torn or corrupt record.
fn decode_all<T: DeserializeOwned>(data: Bytes) -> (Vec<(Bytes, T)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Scan::Record(Record::Put { key, value, .. }, next) = scan(&data, at) else {
            break;
        };
        let Ok(v) = serde_json::from_slice(&value) else {
            break;
        };
        out.push((key, v));
        at = next;
    }
    (out, at)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes`, durably: a crash leaves the old or the new contents.
pub(super) fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes a one-record value file.
pub(super) fn write_value<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    replace_file(path, &encode(VALUE, b"", value)?)
}

/// Reads a one-record value file; `None` when absent. A damaged file is an error: it was
/// replaced atomically, so damage is not a torn write.
pub(super) fn read_value<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let data = match std::fs::read(path) {
        Ok(d) => Bytes::from(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (mut records, _) = decode_all::<T>(data);
    match records.pop() {
        Some((_, v)) => Ok(Some(v)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: damaged record", path.display()),
        )),
    }
}

struct Inner {
    dir: PathBuf,
    log: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
}

/// The log store; its clones share one state, and serve as openraft's log readers.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, e)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, recovering what was made durable.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let vote = read_value(&dir.join("vote"))?;
        let committed = read_value(&dir.join("committed"))?;
        let purged: Option<LogId<u64>> = read_value(&dir.join("purged"))?;
        let path = dir.join("log");
        let data = match std::fs::read(&path) {
            Ok(d) => Bytes::from(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Bytes::new(),
            Err(e) => return Err(e),
        };
        let total = data.len();
        let (records, good) = decode_all::<Entry<TypeConfig>>(data);
        let log = OpenOptions::new().create(true).append(true).open(&path)?;
        if good < total {
            tracing::warn!(
                path = %path.display(),
                cut = total - good,
                "cluster log: a torn or damaged record at the end (never acknowledged) is cut off"
            );
            log.set_len(good as u64)?;
            log.sync_all()?;
        }
        let floor = purged.map(|p| p.index);
        let mut entries = BTreeMap::new();
        for (_, e) in records {
            if floor.is_some_and(|f| e.log_id.index <= f) {
                continue;
            }
            // A later record for an index replaces the earlier one (and what followed it).
            entries.split_off(&e.log_id.index);
            entries.insert(e.log_id.index, e);
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                log,
                entries,
                vote,
                committed,
                purged,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves whole entries behind: go on with them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Writes the kept entries as the whole log.
    fn rewrite(&mut self) -> io::Result<()> {
        let mut bytes = Vec::new();
        for e in self.entries.values() {
            bytes.extend(encode(ENTRY, &e.log_id.index.to_be_bytes(), e)?);
        }
        let path = self.dir.join("log");
        replace_file(&path, &bytes)?;
        self.log = OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        write_value(&inner.dir.join("vote"), vote)
            .map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        write_value(&inner.dir.join("committed"), &committed)
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let entries: Vec<_> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        for e in &entries {
            bytes.extend(
                encode(ENTRY, &e.log_id.index.to_be_bytes(), e)
                    .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Write, e))?,
            );
        }
        let written = inner
            .log
            .write_all(&bytes)
            .and_then(|()| inner.log.sync_data());
        if let Err(e) = written {
            callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(err(ErrorSubject::Logs, ErrorVerb::Write, e));
        }
        for e in entries {
            inner.entries.insert(e.log_id.index, e);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner.entries.split_off(&log_id.index);
        inner
            .rewrite()
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        write_value(&inner.dir.join("purged"), &log_id)
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner
            .rewrite()
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::cluster::state_machine::StateMachine;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn temp_dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("sb-raft-{}-{n}", std::process::id()))
    }

    /// Removes its directory when the suite is done with a store.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct OnDisk;
    impl StoreBuilder<TypeConfig, LogStore, StateMachine, Dir> for OnDisk {
        async fn build(&self) -> Result<(Dir, LogStore, StateMachine), StorageError<u64>> {
            let dir = temp_dir();
            let log = LogStore::open(&dir).unwrap();
            let sm = StateMachine::open(&dir, None).unwrap();
            Ok((Dir(dir), log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(OnDisk).unwrap();
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn reopening_recovers_entries_and_vote_and_cuts_a_torn_tail() {
        let dir = temp_dir();
        let _cleanup = Dir(dir.clone());
        {
            let mut store = LogStore::open(&dir).unwrap();
            store.save_vote(&Vote::new(3, 7)).await.unwrap();
        }
        let mut bytes = Vec::new();
        for i in 1..=3 {
            bytes.extend(encode(ENTRY, &u64::to_be_bytes(i), &entry(1, i)).unwrap());
        }
        let whole = bytes.len() as u64;
        // Half of a fourth record: written, never acknowledged.
        let torn = encode(ENTRY, &4u64.to_be_bytes(), &entry(1, 4)).unwrap();
        bytes.extend(&torn[..torn.len() / 2]);
        std::fs::write(dir.join("log"), &bytes).unwrap();

        let mut store = LogStore::open(&dir).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
        let got = store.try_get_log_entries(0..).await.unwrap();
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, [1, 2, 3]);
        assert_eq!(std::fs::metadata(dir.join("log")).unwrap().len(), whole);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));

        store.truncate(entry(1, 2).log_id).await.unwrap();
        store.purge(entry(1, 1).log_id).await.unwrap();
        drop(store);
        let mut store = LogStore::open(&dir).unwrap();
        let got = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            Vec::<u64>::new()
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(1));
    }
}
