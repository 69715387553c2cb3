//! The Raft log, vote and committed index on disk (`<data_dir>/cluster/`), in the store's
//! checksummed record format (`store::record`: magic, length, CRC-32 per record).
//!
//! Entries are appended to `log` and fsync'd before openraft is told they are durable. The
//! vote, the committed log id and the purge point each live in a file of one record, replaced
//! atomically (written beside, fsync'd, renamed, the directory fsync'd), except the committed
//! log id, which is replaced without the fsyncs (see [`LogStore::save_committed`]). Truncation (a
//! conflicting suffix) and purging (after a snapshot) rewrite `log` the same way: the metadata
//! log is small and both are rare. A torn record at the end of `log` was never acknowledged
//! and is cut off at start.
//!
//! A quorum queue's entries ([`Command::Queue`]) are records of their own kind in binary
//! ([`QUEUE_ENTRY`]); every other entry, and every entry of a log written before that kind
//! existed, is JSON ([`ENTRY`]). Both are read back.

use super::quorum::codec::{get_u64, Ops};
use super::{Command, TypeConfig};
use crate::store::record::{encode_put, scan, Record, Scan};
use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftLogReader, StorageError, Vote,
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

/// The record kind of a log entry (keyed by its index) in JSON.
const ENTRY: u8 = 1;
/// The record kind of a value file's one record.
pub(super) const VALUE: u8 = 2;
/// The record kind of a quorum queue's entry (keyed by its index) in binary: its log id
/// (term, leader node id, index) then the entry's [`Ops`] ([`Ops::encode_to`]).
const QUEUE_ENTRY: u8 = 3;
/// The record kind of a snapshot file's one record: the meta in JSON as its key, the data
/// as it is as its value.
pub(super) const SNAPSHOT: u8 = 4;

/// Appends `entry` as one record.
fn encode_entry(out: &mut Vec<u8>, entry: &Entry<TypeConfig>) -> io::Result<()> {
    let key = entry.log_id.index.to_be_bytes();
    match &entry.payload {
        EntryPayload::Normal(Command::Queue(ops)) => {
            let mut value = Vec::with_capacity(24 + 32 + ops.encoded_len());
            let id = &entry.log_id;
            value.extend(id.leader_id.term.to_be_bytes());
            value.extend(id.leader_id.node_id.to_be_bytes());
            value.extend(id.index.to_be_bytes());
            ops.encode_to(&mut value);
            encode_put(out, QUEUE_ENTRY, &key, &value);
        }
        _ => out.extend(encode(ENTRY, &key, entry)?),
    }
    Ok(())
}

/// The entry in a record of kind `kind`; an error for a whole record that does not read
/// (damage a CRC missed, or a kind from a newer version): never cut off, it may have been
/// acknowledged.
fn decode_entry(kind: u8, mut value: Bytes) -> io::Result<Entry<TypeConfig>> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("cluster log: {e}"));
    match kind {
        ENTRY => serde_json::from_slice(&value).map_err(|e| bad(e.to_string())),
        QUEUE_ENTRY => {
            let id = |p: &mut Bytes| get_u64(p).map_err(|e| bad(e.to_string()));
            let (term, node, index) = (id(&mut value)?, id(&mut value)?, id(&mut value)?);
            let mut ops = Ops::decode_from(&mut value).map_err(|e| bad(e.to_string()))?;
            // Copied out of the file's buffer, which is not kept whole for them.
            ops.enqueue = ops.enqueue.into_iter().map(|m| m.detached()).collect();
            Ok(Entry {
                log_id: LogId::new(CommittedLeaderId::new(term, node), index),
                payload: EntryPayload::Normal(Command::Queue(ops)),
            })
        }
        other => Err(bad(format!("record of unknown kind {other}"))),
    }
}

/// Encodes `value` as one checksummed record.
pub(super) fn encode<T: Serialize>(kind: u8, key: &[u8], value: &T) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(json.len() + 32);
    encode_put(&mut out, kind, key, &json);
    Ok(out)
}

/// Every whole record of `data` as (kind, key, value), and how many bytes they take; the
/// scan stops at the first torn or corrupt record.
pub(super) fn records(data: &Bytes) -> (Vec<(u8, Bytes, Bytes)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Scan::Record(Record::Put { kind, key, value }, next) = scan(data, at) else {
            break;
        };
        out.push((kind, key, value));
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

/// Writes a one-record value file as [`write_value`] does, but leaves it to the kernel when it
/// reaches the disk: a process that dies leaves the old or the new record; a power loss may
/// leave a torn one, which [`read_value`] reports as damaged.
fn write_value_unsynced<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, encode(VALUE, b"", value)?)?;
    std::fs::rename(&tmp, path)
}

/// Reads a one-record value file; `None` when absent. A damaged file is an error: it was
/// replaced atomically, so damage is not a torn write.
pub(super) fn read_value<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let data = match std::fs::read(path) {
        Ok(d) => Bytes::from(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match records(&data).0.pop() {
        Some((_, _, v)) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(io::Error::other),
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
        // Written without fsync: after a power loss it may be torn, and then it is as if
        // absent (see `save_committed`).
        let committed = read_value(&dir.join("committed")).unwrap_or_else(|e| {
            tracing::warn!(dir = %dir.display(), error = %e, "cluster log: the committed log id does not read; applying from the state machine's own point");
            None
        });
        let purged: Option<LogId<u64>> = read_value(&dir.join("purged"))?;
        let path = dir.join("log");
        let data = match std::fs::read(&path) {
            Ok(d) => Bytes::from(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Bytes::new(),
            Err(e) => return Err(e),
        };
        let total = data.len();
        let (found, good) = records(&data);
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
        for (kind, _, value) in found {
            let e = decode_entry(kind, value)?;
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
            encode_entry(&mut bytes, e)?;
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

    /// Only lets a restart apply what was committed before it at once (openraft calls this
    /// every time the commit index moves, on every member of every group). Losing it costs
    /// nothing but that: a member that restarts with an older one, or none, applies the rest
    /// once a leader tells it what is committed, and the entries themselves are durable in
    /// `log` before they can be committed. So it is replaced without fsync: two fsyncs per
    /// commit, on every node, were most of the disk's work.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        write_value_unsynced(&inner.dir.join("committed"), &committed)
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
            encode_entry(&mut bytes, e)
                .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
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
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::cluster::state_machine::StateMachine;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};

    /// A directory of its own for one test's files.
    pub(in crate::cluster) fn temp_dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("sb-raft-{}-{n}", std::process::id()))
    }

    /// Removes its directory when the suite (or test) is done with it.
    pub(in crate::cluster) struct Dir(pub(in crate::cluster) PathBuf);
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

    #[tokio::test]
    async fn the_committed_log_id_reads_back_and_a_torn_one_is_as_if_absent() {
        let dir = temp_dir();
        let _cleanup = Dir(dir.clone());
        let committed = Some(entry(1, 2).log_id);
        {
            let mut store = LogStore::open(&dir).unwrap();
            store.save_vote(&Vote::new(3, 7)).await.unwrap();
            store.save_committed(committed).await.unwrap();
        }
        let mut store = LogStore::open(&dir).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), committed);
        drop(store);
        // What a power loss may leave of a file written without fsync.
        let whole = std::fs::read(dir.join("committed")).unwrap();
        std::fs::write(dir.join("committed"), &whole[..whole.len() / 2]).unwrap();
        let mut store = LogStore::open(&dir).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), None);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    }

    fn queue_entry(index: u64, body: &'static [u8]) -> Entry<TypeConfig> {
        use crate::cluster::quorum::codec::Encoded;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 9), index),
            payload: EntryPayload::Normal(Command::Queue(Ops {
                enqueue: vec![Encoded(Bytes::from_static(body))],
                settle: vec![index],
                returned: vec![],
                at: 1_000 + index,
            })),
        }
    }

    fn payloads(entries: &[Entry<TypeConfig>]) -> Vec<(LogId<u64>, Option<Command>)> {
        entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(c) => (e.log_id, Some(c.clone())),
                _ => (e.log_id, None),
            })
            .collect()
    }

    /// A log written before quorum entries were binary (each one JSON with its messages in
    /// base64) reads back beside binary entries appended after it, and a purge rewrites the
    /// kept ones, which read back the same after a restart.
    #[tokio::test]
    async fn binary_queue_entries_read_back_beside_old_json_ones_across_purge_and_restart() {
        let dir = temp_dir();
        let _cleanup = Dir(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        let old = queue_entry(1, b"old message");
        let mut bytes = encode(ENTRY, &1u64.to_be_bytes(), &old).unwrap();
        let mut written: Vec<Entry<TypeConfig>> = vec![old];
        for i in 2..=4 {
            let e = queue_entry(i, b"\x00binary\xffmessage");
            encode_entry(&mut bytes, &e).unwrap();
            written.push(e);
        }
        let blank = entry(2, 5);
        encode_entry(&mut bytes, &blank).unwrap();
        written.push(blank);
        std::fs::write(dir.join("log"), &bytes).unwrap();
        // The binary records hold the message as it is, not in base64.
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("binary").count(), 3);

        let mut store = LogStore::open(&dir).unwrap();
        let got = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(payloads(&got), payloads(&written));

        store.purge(written[1].log_id).await.unwrap();
        drop(store);
        let mut store = LogStore::open(&dir).unwrap();
        let got = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(payloads(&got), payloads(&written[2..]));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(written[1].log_id));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
    }

    /// A whole record that does not read is refused at start, never cut off as torn: it may
    /// have been acknowledged.
    #[test]
    fn a_whole_record_that_does_not_decode_is_an_error_not_a_torn_tail() {
        let dir = temp_dir();
        let _cleanup = Dir(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        encode_entry(&mut bytes, &entry(1, 1)).unwrap();
        encode_put(&mut bytes, QUEUE_ENTRY, &2u64.to_be_bytes(), b"short");
        std::fs::write(dir.join("log"), &bytes).unwrap();
        let e = LogStore::open(&dir).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(std::fs::read(dir.join("log")).unwrap(), bytes);
    }
}
