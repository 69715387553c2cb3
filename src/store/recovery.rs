//! Reading the message log back at start: which persistent messages each durable queue still
//! holds.
//!
//! Segments are read in order. A record that is cut short at the very end of the log is a write
//! torn by a crash: it was never reported durable, so it is cut off. A corrupt record anywhere
//! else is skipped (the scan resumes at the next record's magic word), counted and logged: one
//! bad sector costs the records it covers, never the broker or the rest of the log.

use super::keyed::{RecoveredKeyed, RecoveredValue};
use super::log::{segment_path, LiveRecords, RecordPos};
use super::record::{resync, scan, Record, Scan};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A message as the log holds it.
#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    /// The queue entry's record: an enqueue record, or a reference to one.
    pub at: RecordPos,
    /// For a reference, the enqueue record holding the message (the fields below are its).
    pub shares: Option<RecordPos>,
    /// When it expires in its queue (ms since the Unix epoch), if it has a TTL there and the
    /// record says so (records of earlier releases do not).
    pub expires: Option<u64>,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
}

/// One durable queue's surviving messages, by sequence number (the queue's order).
#[derive(Debug, Default)]
pub struct RecoveredQueue {
    pub messages: BTreeMap<u64, RecoveredMessage>,
    /// The highest sequence number any record used: new messages must go above it.
    pub max_seq: u64,
}

#[derive(Debug, Default)]
pub struct RecoveredLog {
    pub queues: HashMap<u64, RecoveredQueue>,
    /// Keyed state (definitions, users, sessions, ...): each key's current value.
    pub keyed: RecoveredKeyed,
    /// Every segment found, in order.
    pub segments: Vec<u64>,
    pub records: u64,
    pub corrupt_records: u64,
    pub truncated_bytes: u64,
}

impl RecoveredLog {
    /// What is live (messages, the bodies they hold, keyed state) once the messages of queues
    /// that no longer exist (`keep` false) are dropped.
    pub fn retain_queues(&mut self, keep: impl Fn(u64) -> bool) -> LiveRecords {
        self.queues.retain(|q, _| keep(*q));
        let mut live = LiveRecords {
            segments: self
                .segments
                .iter()
                .map(|s| (*s, Default::default()))
                .collect(),
            ..Default::default()
        };
        let mut count = |at: RecordPos| {
            let u = live.segments.entry(at.segment).or_default();
            u.records += 1;
            u.bytes += u64::from(at.len);
        };
        for q in self.queues.values() {
            for m in q.messages.values() {
                let body = match m.shares {
                    Some(body) => {
                        count(m.at);
                        live.references.insert(m.at, body);
                        body
                    }
                    None => m.at,
                };
                let holders = live.bodies.entry(body).or_insert(0);
                if *holders == 0 {
                    count(body);
                }
                *holders += 1;
            }
        }
        for at in self.keyed.positions() {
            count(at);
        }
        live
    }
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut segs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            segs.push(n);
        }
    }
    segs.sort_unstable();
    Ok(segs)
}

/// Reads every segment in `dir`, cutting a torn tail off the last one.
pub fn recover(dir: &Path) -> std::io::Result<RecoveredLog> {
    let mut out = RecoveredLog {
        segments: list_segments(dir)?,
        ..Default::default()
    };
    let last = out.segments.last().copied();
    for seg in out.segments.clone() {
        let path = segment_path(dir, seg);
        let data = Bytes::from(std::fs::read(&path)?);
        let end = read_segment(&mut out, seg, &data);
        if end < data.len() {
            let cut = (data.len() - end) as u64;
            if Some(seg) == last {
                tracing::warn!(
                    segment = seg,
                    bytes = cut,
                    "cutting off a torn record at the end of the message log"
                );
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(end as u64)?;
                out.truncated_bytes += cut;
            } else {
                tracing::warn!(
                    segment = seg,
                    bytes = cut,
                    "incomplete record at the end of a segment; skipped"
                );
                out.corrupt_records += 1;
            }
        }
    }
    resolve_references(dir, &mut out);
    Ok(out)
}

/// Fills in the messages of reference records from the enqueue records they point at: from
/// a message still recovered, else read from its segment (its own queue settled it).
fn resolve_references(dir: &Path, out: &mut RecoveredLog) {
    let mut bodies: HashMap<RecordPos, RecoveredMessage> = HashMap::new();
    let wanted: std::collections::HashSet<RecordPos> = out
        .queues
        .values()
        .flat_map(|q| q.messages.values().filter_map(|m| m.shares))
        .collect();
    if wanted.is_empty() {
        return;
    }
    for q in out.queues.values() {
        for m in q.messages.values() {
            if m.shares.is_none() && wanted.contains(&m.at) {
                bodies.insert(m.at, m.clone());
            }
        }
    }
    let mut unreadable = 0;
    for q in out.queues.values_mut() {
        q.messages.retain(|_, m| {
            let Some(body) = m.shares else {
                return true;
            };
            let b = match bodies.entry(body) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match read_enqueue(dir, body) {
                    Some(found) => e.insert(found),
                    None => {
                        unreadable += 1;
                        return false;
                    }
                },
            };
            m.exchange.clone_from(&b.exchange);
            m.routing_key.clone_from(&b.routing_key);
            m.properties = b.properties.clone();
            m.body = b.body.clone();
            true
        });
    }
    if unreadable > 0 {
        tracing::warn!(
            messages = unreadable,
            "messages whose body record cannot be read are dropped"
        );
        out.corrupt_records += unreadable;
    }
}

/// The enqueue record at `pos`, read from its segment file.
fn read_enqueue(dir: &Path, pos: RecordPos) -> Option<RecoveredMessage> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(segment_path(dir, pos.segment)).ok()?;
    let mut buf = vec![0; pos.len as usize];
    f.read_exact_at(&mut buf, pos.offset).ok()?;
    match scan(&Bytes::from(buf), 0) {
        Scan::Record(
            Record::Enqueue {
                exchange,
                routing_key,
                properties,
                body,
                ..
            },
            _,
        ) => Some(RecoveredMessage {
            at: pos,
            shares: None,
            expires: None,
            exchange,
            routing_key,
            properties,
            body,
        }),
        _ => None,
    }
}

/// Applies the records of one segment; returns the offset where valid data ends.
fn read_segment(out: &mut RecoveredLog, seg: u64, data: &Bytes) -> usize {
    let mut at = 0;
    let mut valid_end = 0;
    while at < data.len() {
        match scan(data, at) {
            Scan::Record(record, next) => {
                let pos = RecordPos {
                    segment: seg,
                    offset: at as u64,
                    len: u32::try_from(next - at).unwrap_or(u32::MAX),
                };
                apply(out, pos, record);
                out.records += 1;
                at = next;
                valid_end = next;
            }
            Scan::Incomplete => break,
            Scan::Corrupt => {
                let next = resync(data, at);
                if next >= data.len() {
                    // Garbage to the end: a torn tail (or a corrupt one; either way nothing
                    // after it can be read).
                    break;
                }
                out.corrupt_records += 1;
                tracing::warn!(
                    segment = seg,
                    offset = at,
                    "corrupt record in the message log; skipped"
                );
                at = next;
                valid_end = next;
            }
        }
    }
    valid_end
}

fn apply(out: &mut RecoveredLog, at: RecordPos, record: Record) {
    match record {
        Record::Enqueue {
            queue,
            seq,
            expires,
            exchange,
            routing_key,
            properties,
            body,
        } => {
            let q = out.queues.entry(queue).or_default();
            q.max_seq = q.max_seq.max(seq);
            q.messages.insert(
                seq,
                RecoveredMessage {
                    at,
                    shares: None,
                    expires,
                    exchange,
                    routing_key,
                    properties,
                    body,
                },
            );
        }
        Record::Settle { queue, seqs } => {
            if let Some(q) = out.queues.get_mut(&queue) {
                for s in seqs {
                    q.max_seq = q.max_seq.max(s);
                    q.messages.remove(&s);
                }
            }
        }
        Record::Put { kind, key, value } => {
            // Copied: a slice would pin the whole segment read at start in memory.
            let value = Bytes::copy_from_slice(&value);
            out.keyed.put(kind, &key, RecoveredValue { at, value });
        }
        Record::Delete { kind, key } => out.keyed.delete(kind, &key),
        Record::Reference {
            queue,
            seq,
            expires,
            body,
        } => {
            let q = out.queues.entry(queue).or_default();
            q.max_seq = q.max_seq.max(seq);
            // The message's fields are filled in once every segment is read.
            q.messages.insert(
                seq,
                RecoveredMessage {
                    at,
                    shares: Some(body),
                    expires,
                    exchange: String::new(),
                    routing_key: String::new(),
                    properties: Bytes::new(),
                    body: Bytes::new(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{encode_enqueue, encode_settle, Entry};

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "switchboard-recovery-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn enq(out: &mut Vec<u8>, q: u64, seq: u64, body: &str) {
        encode_enqueue(out, Entry::new(q, seq), "", "k", &[0, 0], body.as_bytes());
    }

    #[test]
    fn expiring_entries_keep_their_expiry_and_older_ones_have_none() {
        let dir = tempdir("expiring");
        let mut s1 = Vec::new();
        enq(&mut s1, 1, 0, "written by an earlier release");
        let expiring = Entry {
            expires: Some(1_700_000_060_000),
            ..Entry::new(1, 1)
        };
        encode_enqueue(&mut s1, expiring, "", "k", &[0, 0], b"with a TTL");
        std::fs::write(segment_path(&dir, 1), &s1).expect("write");
        let log = recover(&dir).expect("recover");
        let expiries: Vec<Option<u64>> = log.queues[&1]
            .messages
            .values()
            .map(|m| m.expires)
            .collect();
        assert_eq!(expiries, [None, Some(1_700_000_060_000)]);
        assert_eq!(log.corrupt_records, 0);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn settled_messages_stay_gone_and_torn_tail_is_cut() {
        let dir = tempdir("torn");
        let mut s1 = Vec::new();
        enq(&mut s1, 1, 0, "a");
        enq(&mut s1, 1, 1, "b");
        enq(&mut s1, 2, 0, "other queue");
        std::fs::write(segment_path(&dir, 1), &s1).expect("write");
        let mut s2 = Vec::new();
        encode_settle(&mut s2, 1, &[0]);
        enq(&mut s2, 1, 2, "c");
        let whole = s2.len();
        enq(&mut s2, 1, 3, "torn");
        s2.truncate(whole + 7);
        std::fs::write(segment_path(&dir, 2), &s2).expect("write");

        let mut log = recover(&dir).expect("recover");
        assert_eq!(log.truncated_bytes, 7);
        assert_eq!(
            std::fs::metadata(segment_path(&dir, 2))
                .expect("meta")
                .len(),
            whole as u64
        );
        let live = log.retain_queues(|q| q == 1);
        let q = &log.queues[&1];
        let bodies: Vec<&[u8]> = q.messages.values().map(|m| &m.body[..]).collect();
        assert_eq!(bodies, [&b"b"[..], b"c"]);
        assert_eq!(q.max_seq, 2);
        let counts: Vec<(u64, u64)> = live.segments.iter().map(|(s, u)| (*s, u.records)).collect();
        assert_eq!(counts, [(1, 1), (2, 1)]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keyed_state_keeps_the_latest_put_and_forgets_deleted_keys() {
        use crate::store::record::{encode_delete, encode_put};
        let dir = tempdir("keyed");
        let mut s1 = Vec::new();
        encode_put(&mut s1, 3, b"q1", b"v1");
        encode_put(&mut s1, 3, b"q2", b"old");
        encode_put(&mut s1, 6, b"q1", b"other kind");
        std::fs::write(segment_path(&dir, 1), &s1).expect("write");
        let mut s2 = Vec::new();
        encode_put(&mut s2, 3, b"q2", b"new");
        encode_delete(&mut s2, 3, b"q1");
        std::fs::write(segment_path(&dir, 2), &s2).expect("write");
        let mut log = recover(&dir).expect("recover");
        let mut queues: Vec<(&[u8], &[u8])> =
            log.keyed.of_kind(3).map(|(k, v)| (k, &v[..])).collect();
        queues.sort();
        assert_eq!(queues, [(&b"q2"[..], &b"new"[..])]);
        assert_eq!(
            log.keyed.get(6, b"q1").map(|v| &v[..]),
            Some(&b"other kind"[..])
        );
        // Live: the other kind's put in segment 1, the new q2 in segment 2.
        let live = log.retain_queues(|_| true);
        let counts: Vec<(u64, u64)> = live.segments.iter().map(|(s, u)| (*s, u.records)).collect();
        assert_eq!(counts, [(1, 1), (2, 1)]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn references_read_the_body_of_a_settled_holder_and_keep_it_live() {
        use crate::store::record::encode_reference;
        let dir = tempdir("refs");
        let mut s1 = Vec::new();
        enq(&mut s1, 1, 0, "shared body");
        let body = RecordPos {
            segment: 1,
            offset: 0,
            len: s1.len() as u32,
        };
        let first_ref = s1.len() as u64;
        encode_reference(&mut s1, Entry::new(2, 0), body);
        let expiring = Entry {
            expires: Some(42),
            ..Entry::new(3, 0)
        };
        encode_reference(&mut s1, expiring, body);
        std::fs::write(segment_path(&dir, 1), &s1).expect("write");
        // The holder's own queue settled it; queue 2 settled its reference too.
        let mut s2 = Vec::new();
        encode_settle(&mut s2, 1, &[0]);
        encode_settle(&mut s2, 2, &[0]);
        std::fs::write(segment_path(&dir, 2), &s2).expect("write");

        let mut log = recover(&dir).expect("recover");
        assert!(log.queues[&1].messages.is_empty());
        assert!(log.queues[&2].messages.is_empty());
        let m = &log.queues[&3].messages[&0];
        assert_eq!(&m.body[..], b"shared body");
        assert_eq!(m.shares, Some(body));
        assert_eq!(
            m.expires,
            Some(42),
            "a reference's own expiry, not its body's"
        );
        let live = log.retain_queues(|_| true);
        // Live in segment 1: the body (held by queue 3 only) and queue 3's reference.
        assert_eq!(live.segments[&1].records, 2);
        assert_eq!(live.bodies.get(&body), Some(&1));
        assert_eq!(live.references.len(), 1);
        assert!(live.references.keys().all(|r| r.offset > first_ref));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped() {
        let dir = tempdir("corrupt");
        let mut s1 = Vec::new();
        enq(&mut s1, 1, 0, "a");
        let second = s1.len();
        enq(&mut s1, 1, 1, "b");
        enq(&mut s1, 1, 2, "c");
        s1[second + 20] ^= 0xff; // inside the second record's payload
        std::fs::write(segment_path(&dir, 1), &s1).expect("write");
        let log = recover(&dir).expect("recover");
        assert_eq!(log.corrupt_records, 1);
        let seqs: Vec<u64> = log.queues[&1].messages.keys().copied().collect();
        assert_eq!(seqs, [0, 2]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
