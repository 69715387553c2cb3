//! The append-only message log: segment files written by one writer thread with group commit.
//!
//! Publishers append records to an in-memory buffer under a short lock and get a log sequence
//! number (LSN). The writer thread takes everything appended so far, writes it with one
//! `write` per segment touched and one `fdatasync`, then publishes the highest LSN now durable;
//! confirms wait for that. Many publishers thus share one fsync: durability costs latency, not
//! throughput.
//!
//! Each segment counts the enqueue records in it that are still live. Segments are deleted from
//! the head of the log once nothing in them is live: deleting only from the head keeps every
//! settle record that a surviving enqueue record needs.

use super::keyed::index_key;
use super::record::{
    encode_delete, encode_enqueue, encode_put, encode_reference, encode_settle, scan, Entry,
    Record, Scan,
};
use super::FsyncPolicy;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's log sequence number: durable once [`MessageLog::synced`] reaches it.
    pub lsn: u64,
    pub at: RecordPos,
}

/// A record's place: enough to read it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordPos {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// Encoded records bound for one segment, starting at `base` in it.
#[derive(Debug)]
struct Chunk {
    segment: u64,
    base: u64,
    data: Vec<u8>,
}

impl Chunk {
    /// The bytes of `pos` if this chunk holds them.
    fn slice(&self, pos: RecordPos) -> Option<&[u8]> {
        if pos.segment != self.segment || pos.offset < self.base {
            return None;
        }
        let start = usize::try_from(pos.offset - self.base).ok()?;
        self.data.get(start..start + pos.len as usize)
    }
}

/// What is still live in a segment: enqueue records not yet settled, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentUse {
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Pending {
    /// Encoded records not yet written, in log order.
    chunks: Vec<Chunk>,
    /// Chunks the writer is writing now: readers find records here until they are in the file.
    in_flight: Arc<Vec<Chunk>>,
    /// The segment new records go to, and the bytes assigned to it so far.
    segment: u64,
    segment_len: u64,
    last_lsn: u64,
    /// Live enqueue records per segment (every segment on disk has an entry).
    live: BTreeMap<u64, SegmentUse>,
    /// Where each key of keyed state has its current (live) put record.
    keyed: HashMap<Box<[u8]>, RecordPos>,
    /// Message bodies: the live enqueue records and how many queue entries hold each (its own
    /// queue's, and one per reference record). The record stays live until the last goes.
    bodies: HashMap<RecordPos, u32>,
    /// The body each live reference record points at.
    references: HashMap<RecordPos, RecordPos>,
    stop: bool,
}

impl Pending {
    /// A queue entry (or keyed record) at `pos` left for good: a reference releases its body
    /// too, and a body stays live while other entries still hold it.
    fn forget(&mut self, pos: RecordPos) {
        if let Some(body) = self.references.remove(&pos) {
            self.dead(pos);
            self.release(body);
        } else if self.bodies.contains_key(&pos) {
            self.release(pos);
        } else {
            self.dead(pos);
        }
    }

    /// One holder of the body at `body` is gone.
    fn release(&mut self, body: RecordPos) {
        match self.bodies.get_mut(&body) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.bodies.remove(&body);
                self.dead(body);
            }
            None => {}
        }
    }

    /// The record at `pos` is no longer live.
    fn dead(&mut self, pos: RecordPos) {
        if let Some(u) = self.live.get_mut(&pos.segment) {
            u.records = u.records.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(u64::from(pos.len));
        }
    }
}

/// What is live in the log at start (from recovery): per segment, the message bodies and who
/// holds them, and the reference records.
#[derive(Debug, Default)]
pub struct LiveRecords {
    pub segments: BTreeMap<u64, SegmentUse>,
    pub bodies: HashMap<RecordPos, u32>,
    pub references: HashMap<RecordPos, RecordPos>,
}

/// Counters for the management API, Prometheus and tests.
#[derive(Debug)]
pub struct LogStats {
    pub fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub write_errors: AtomicU64,
    /// How long each group commit's `fdatasync` took, in seconds.
    pub fsync_seconds: Histogram,
}

impl Default for LogStats {
    fn default() -> Self {
        LogStats {
            fsyncs: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            segments_deleted: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            // 50 µs to about 1.6 s, doubling: from an NVMe cache flush to a stalled disk.
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        }
    }
}

#[derive(Debug)]
pub struct MessageLog {
    dir: PathBuf,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: watch::Sender<u64>,
    /// Wakes threads blocked in [`MessageLog::wait_synced_blocking`] (start-up, outside any
    /// runtime task) when the durable LSN moves.
    synced_wake: (Mutex<()>, Condvar),
    pub stats: LogStats,
}

/// The file name of segment `n`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.log"))
}

impl MessageLog {
    /// Starts a log in `dir` whose existing segments (from recovery) hold `live` live records
    /// each, and whose keyed state has its current records at `keyed`; new records go to a
    /// fresh segment after them. Spawns the writer thread.
    pub fn start(
        dir: PathBuf,
        segment_bytes: u64,
        fsync: FsyncPolicy,
        live: LiveRecords,
        keyed: HashMap<Box<[u8]>, RecordPos>,
    ) -> std::io::Result<Arc<Self>> {
        let LiveRecords {
            segments: mut live,
            bodies,
            references,
        } = live;
        let segment = live.keys().next_back().map_or(1, |n| n + 1);
        live.insert(segment, SegmentUse::default());
        let (synced, _) = watch::channel(0);
        let log = Arc::new(MessageLog {
            dir,
            segment_bytes: segment_bytes.max(1024),
            fsync,
            pending: Mutex::new(Pending {
                segment,
                live,
                keyed,
                bodies,
                references,
                ..Default::default()
            }),
            wake: Condvar::new(),
            synced,
            synced_wake: (Mutex::new(()), Condvar::new()),
            stats: LogStats::default(),
        });
        let writer = log.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run_writer(segment))?;
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends records written by `encode` to the current segment (rolling over to a new one
    /// when it is full) and returns where they went.
    fn append(&self, live: bool, encode: impl FnOnce(&mut Vec<u8>)) -> Appended {
        let mut p = self.lock();
        let (appended, was_idle) = self.append_locked(&mut p, live, encode);
        self.unlock_and_wake(p, was_idle);
        appended
    }

    /// Releases the lock taken for an append, then wakes the writer if it was idle (after the
    /// release, so that it does not wake only to wait for the lock).
    fn unlock_and_wake(&self, p: MutexGuard<'_, Pending>, was_idle: bool) {
        drop(p);
        if was_idle {
            self.wake.notify_one();
        }
    }

    /// [`Self::append`] under the lock already held; also says whether the writer must be woken.
    fn append_locked(
        &self,
        p: &mut Pending,
        live: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> (Appended, bool) {
        if p.segment_len >= self.segment_bytes {
            p.segment += 1;
            p.segment_len = 0;
            let seg = p.segment;
            p.live.insert(seg, SegmentUse::default());
        }
        let seg = p.segment;
        let offset = p.segment_len;
        let was_idle = p.chunks.is_empty();
        if p.chunks.last().map(|c| c.segment) != Some(seg) {
            p.chunks.push(Chunk {
                segment: seg,
                base: offset,
                data: Vec::with_capacity(64 * 1024),
            });
        }
        let last = p.chunks.len() - 1;
        let buf = &mut p.chunks[last].data;
        let before = buf.len();
        encode(buf);
        let written = (buf.len() - before) as u64;
        p.segment_len += written;
        p.last_lsn += 1;
        if live {
            let u = p.live.entry(seg).or_default();
            u.records += 1;
            u.bytes += written;
        }
        let appended = Appended {
            lsn: p.last_lsn,
            at: RecordPos {
                segment: seg,
                offset,
                len: u32::try_from(written).unwrap_or(u32::MAX),
            },
        };
        (appended, was_idle)
    }

    /// Durably sets `key` of `kind` to `value` (replacing its earlier value) and returns the
    /// LSN to wait for. The index is updated under the same lock as the append, so the log's
    /// order of puts to one key is the order they take effect in.
    pub fn put(&self, kind: u8, key: &[u8], value: &[u8]) -> u64 {
        let mut p = self.lock();
        let (a, was_idle) =
            self.append_locked(&mut p, true, |out| encode_put(out, kind, key, value));
        if let Some(old) = p.keyed.insert(index_key(kind, key), a.at) {
            p.forget(old);
        }
        self.unlock_and_wake(p, was_idle);
        a.lsn
    }

    /// Durably removes `key` of `kind` and returns the LSN to wait for. A key that holds
    /// nothing writes nothing (the LSN is then that of the last record appended).
    pub fn delete(&self, kind: u8, key: &[u8]) -> u64 {
        let mut p = self.lock();
        let Some(old) = p.keyed.remove(&index_key(kind, key)[..]) else {
            return p.last_lsn;
        };
        p.forget(old);
        let (a, was_idle) = self.append_locked(&mut p, false, |out| encode_delete(out, kind, key));
        self.unlock_and_wake(p, was_idle);
        a.lsn
    }

    /// Rewrites the current records of keys that live in `segment` at the end of the log (for
    /// compaction); returns how many moved. A key put or deleted meanwhile is left alone.
    pub fn relocate_keyed(&self, segment: u64) -> usize {
        let found: Vec<(Box<[u8]>, RecordPos)> = self
            .lock()
            .keyed
            .iter()
            .filter(|(_, pos)| pos.segment == segment)
            .map(|(k, pos)| (k.clone(), *pos))
            .collect();
        let mut moved = 0;
        for (key, pos) in found {
            let record = match self.read(pos) {
                Ok(bytes) => scan(&bytes, 0),
                Err(e) => {
                    tracing::warn!(error = %e, segment, "cannot read a keyed record to compact");
                    continue;
                }
            };
            let Scan::Record(
                Record::Put {
                    kind,
                    key: k,
                    value,
                },
                _,
            ) = record
            else {
                tracing::warn!(segment, "keyed record unreadable during compaction");
                continue;
            };
            let mut p = self.lock();
            if p.keyed.get(&key) != Some(&pos) {
                continue;
            }
            let (a, was_idle) =
                self.append_locked(&mut p, true, |out| encode_put(out, kind, &k, &value));
            p.keyed.insert(key, a.at);
            p.forget(pos);
            self.unlock_and_wake(p, was_idle);
            moved += 1;
        }
        moved
    }

    /// Reads a record back (for a queue that keeps only positions in memory): from the buffers
    /// when it is not written yet, else from its segment file.
    pub fn read(&self, pos: RecordPos) -> std::io::Result<bytes::Bytes> {
        {
            // Holding the lock across both looks: the writer moves chunks from `chunks` to
            // `in_flight` under it, and clears `in_flight` only once they are in the file.
            let p = self.lock();
            let found = p
                .chunks
                .iter()
                .chain(p.in_flight.iter())
                .find_map(|c| c.slice(pos));
            if let Some(b) = found {
                return Ok(bytes::Bytes::copy_from_slice(b));
            }
        }
        use std::os::unix::fs::FileExt;
        let f = File::open(segment_path(&self.dir, pos.segment))?;
        let mut buf = vec![0; pos.len as usize];
        f.read_exact_at(&mut buf, pos.offset)?;
        Ok(bytes::Bytes::from(buf))
    }

    /// Appends an enqueue record for a message making `entry` in a durable queue: where it
    /// was published, its AMQP content-header property block and its body.
    pub fn append_enqueue(
        &self,
        entry: Entry,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
    ) -> Appended {
        let mut p = self.lock();
        let (a, was_idle) = self.append_locked(&mut p, true, |out| {
            encode_enqueue(out, entry, exchange, routing_key, properties, body)
        });
        p.bodies.insert(a.at, 1);
        self.unlock_and_wake(p, was_idle);
        a
    }

    /// Appends a reference record: the message of the enqueue record at `body` makes `entry`
    /// in a durable queue (a fan-out writes the body once). None when that record is no
    /// longer live (every entry holding it was settled): then the caller writes the message in
    /// full.
    pub fn append_reference(&self, entry: Entry, body: RecordPos) -> Option<Appended> {
        let mut p = self.lock();
        *p.bodies.get_mut(&body)? += 1;
        let (a, was_idle) =
            self.append_locked(&mut p, true, |out| encode_reference(out, entry, body));
        p.references.insert(a.at, body);
        self.unlock_and_wake(p, was_idle);
        Some(a)
    }

    /// The live reference records whose message is held in `segment` (compaction moves
    /// them with the segment's own records).
    pub fn references_into(&self, segment: u64) -> std::collections::HashSet<RecordPos> {
        let p = self.lock();
        p.references
            .iter()
            .filter(|(_, body)| body.segment == segment)
            .map(|(at, _)| *at)
            .collect()
    }

    /// Records that messages `(seq, position)` of `queue` left it for good.
    pub fn append_settle(&self, queue: u64, settled: &[(u64, RecordPos)]) -> u64 {
        let seqs: Vec<u64> = settled.iter().map(|s| s.0).collect();
        let a = self.append(false, |out| encode_settle(out, queue, &seqs));
        self.forget(settled.iter().map(|s| s.1));
        a.lsn
    }

    /// Drops live records without writing anything: their queue is gone from the definitions
    /// (so recovery ignores them), or they were rewritten further on.
    pub fn forget(&self, records: impl IntoIterator<Item = RecordPos>) {
        let mut p = self.lock();
        for pos in records {
            p.forget(pos);
        }
    }

    /// The head segment, when rewriting what is live in it (to delete it and the dead segments
    /// behind it) is worth it: more than `min_segments` segments exist, and its live bytes are
    /// at most half a segment.
    pub fn compaction_candidate(&self, min_segments: usize) -> Option<u64> {
        let p = self.lock();
        if p.live.len() <= min_segments {
            return None;
        }
        let (&head, u) = p.live.iter().next()?;
        (u.records > 0 && head < p.segment && u.bytes <= self.segment_bytes / 2).then_some(head)
    }

    /// The highest LSN known durable (per the fsync policy).
    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// Watches the durable LSN.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Wakes those following [`Self::subscribe`] without moving the durable LSN: what else
    /// their acknowledgements wait for (a quorum queue's commit) has moved.
    pub fn nudge(&self) {
        self.synced.send_modify(|_| {});
    }

    /// The LSN of the last record appended.
    pub fn last_lsn(&self) -> u64 {
        self.lock().last_lsn
    }

    /// Waits until every record up to `lsn` is durable.
    pub async fn wait_synced(&self, lsn: u64) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|s| *s >= lsn).await;
    }

    /// Blocks the calling thread until every record up to `lsn` is durable. Only for start-up
    /// work outside the runtime's tasks (a task awaits [`Self::wait_synced`] instead).
    pub fn wait_synced_blocking(&self, lsn: u64) {
        let (lock, cv) = &self.synced_wake;
        let mut held = lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.synced() < lsn {
            held = cv.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Segment numbers and what is live in them.
    pub fn segments(&self) -> Vec<(u64, SegmentUse)> {
        self.lock().live.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Stops the writer after it has written everything appended so far.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }

    fn run_writer(&self, first_segment: u64) {
        let mut open: Option<(u64, File)> = None;
        let mut created_first = false;
        loop {
            let (chunks, lsn, stop) = {
                let mut p = self.lock();
                while p.chunks.is_empty() && !p.stop {
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                let chunks = Arc::new(std::mem::take(&mut p.chunks));
                p.in_flight = chunks.clone();
                (chunks, p.last_lsn, p.stop)
            };
            if !created_first {
                // The first segment exists from the start, so an empty log still has a head.
                if let Ok(f) = self.open_segment(first_segment) {
                    open = Some((first_segment, f));
                }
                created_first = true;
            }
            for c in chunks.iter() {
                self.write_chunk(&mut open, c.segment, &c.data);
            }
            self.lock().in_flight = Arc::default();
            if !chunks.is_empty() {
                if self.fsync == FsyncPolicy::Always {
                    if let Some((_, f)) = &open {
                        let started = std::time::Instant::now();
                        let synced = f.sync_data();
                        self.stats
                            .fsync_seconds
                            .observe(started.elapsed().as_secs_f64());
                        if let Err(e) = synced {
                            tracing::error!(error = %e, "message log fsync failed");
                            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                self.synced.send_replace(lsn);
                let _held = self.synced_wake.0.lock().unwrap_or_else(|e| e.into_inner());
                self.synced_wake.1.notify_all();
            }
            self.delete_dead_segments(open.as_ref().map(|o| o.0));
            if stop {
                return;
            }
        }
    }

    fn open_segment(&self, seg: u64) -> std::io::Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, seg))?;
        // The new file's directory entry must be durable too, or a crash could lose the file.
        if self.fsync == FsyncPolicy::Always {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(f)
    }

    /// Writes one chunk to its segment, retrying until the disk takes it: a record is never
    /// reported durable before it is written, and a failed write is cut off before retrying so
    /// the file never holds a half record followed by more data.
    fn write_chunk(&self, open: &mut Option<(u64, File)>, seg: u64, data: &[u8]) {
        loop {
            if open.as_ref().map(|o| o.0) != Some(seg) {
                if let Some((_, old)) = open.take() {
                    if self.fsync == FsyncPolicy::Always {
                        let _ = old.sync_data();
                    }
                }
                match self.open_segment(seg) {
                    Ok(f) => *open = Some((seg, f)),
                    Err(e) => {
                        self.write_failed(&e);
                        continue;
                    }
                }
            }
            let Some((_, f)) = open.as_mut() else {
                continue;
            };
            let before = f.metadata().map(|m| m.len()).ok();
            match f.write_all(data) {
                Ok(()) => {
                    self.stats
                        .bytes_written
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    if let Some(len) = before {
                        let _ = f.set_len(len);
                    }
                    self.write_failed(&e);
                }
            }
        }
    }

    fn write_failed(&self, e: &std::io::Error) {
        tracing::error!(error = %e, dir = %self.dir.display(), "message log write failed; retrying");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Deletes segments at the head of the log that hold nothing live.
    fn delete_dead_segments(&self, open: Option<u64>) {
        let dead: Vec<u64> = {
            let mut p = self.lock();
            let current = p.segment;
            let mut dead = Vec::new();
            for (&seg, u) in p.live.iter() {
                if u.records > 0 || seg >= current || Some(seg) == open {
                    break;
                }
                dead.push(seg);
            }
            for seg in &dead {
                p.live.remove(seg);
            }
            dead
        };
        for seg in dead {
            match std::fs::remove_file(segment_path(&self.dir, seg)) {
                Ok(()) => {
                    self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, segment = seg, "cannot delete settled segment")
                }
            }
        }
    }
}

/// Resolves when the durable LSN watched by `rx` moves; never, without a store (None). For
/// connection loops that wait for the log before confirming.
pub async fn synced_changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            rx.borrow_and_update();
        }
        None => std::future::pending().await,
    }
}

impl MessageLog {
    /// Bytes of segment files on disk.
    pub fn size_on_disk(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}
