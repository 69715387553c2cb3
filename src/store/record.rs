//! The message log's record format.
//!
//! ```text
//! record  = magic:u32 len:u32 crc:u32 payload[len]      (big-endian; crc = CRC-32 of payload)
//! payload = 1 queue:u64 seq:u64 exchange:str8 key:str8 props_len:u32 props body   (enqueue)
//!         | 2 queue:u64 count:u32 seq:u64*count                                    (settle)
//!         | 3 kind:u8 key_len:u32 key value                                        (put)
//!         | 4 kind:u8 key_len:u32 key                                              (delete)
//!         | 5 queue:u64 seq:u64 segment:u64 offset:u64 len:u32                     (reference)
//!         | 6 queue:u64 seq:u64 expires:u64 exchange:str8 key:str8 props_len:u32 props body
//!                                                                     (enqueue, expiring)
//!         | 7 queue:u64 seq:u64 expires:u64 segment:u64 offset:u64 len:u32
//!                                                                     (reference, expiring)
//! ```
//!
//! Types 6 and 7 are 1 and 5 for a message with a TTL in its queue: `expires` is when it
//! expires there (ms since the Unix epoch), so its TTL counts from when it was enqueued across
//! restarts. Messages without a TTL keep the older types, which logs of earlier releases hold
//! (their messages' TTLs count again from the restart, as they did then).
//!
//! A reference record enqueues, in another durable queue, the message of the enqueue record at
//! `segment`/`offset` (`len` bytes long): a message routed to N durable queues is written once
//! and referenced N-1 times (see log.rs for how the body is kept while referenced).
//!
//! Put and delete records hold keyed state other than messages (definitions, users, MQTT
//! sessions, retained messages; see keyed.rs): the latest put of a key is its value, a delete
//! removes it.
//!
//! The magic word lets recovery find the next record after a corrupt length; the checksum
//! catches torn and corrupted records. `props` is the AMQP content-header property block, the
//! canonical form of every protocol's metadata, so recovery rebuilds messages with the codec.

use super::log::RecordPos;
use bytes::{Buf, BufMut, Bytes};

/// Marks the start of every record ("SBLG").
pub const MAGIC: u32 = 0x5342_4c47;
/// magic + len + crc.
pub const HEADER_LEN: usize = 12;
/// Larger lengths are corruption (the broker refuses bodies over 128 MiB long before this).
pub const MAX_PAYLOAD: usize = 1 << 30;

const ENQUEUE: u8 = 1;
const SETTLE: u8 = 2;
const PUT: u8 = 3;
const DELETE: u8 = 4;
const REFERENCE: u8 = 5;
const ENQUEUE_EXPIRING: u8 = 6;
const REFERENCE_EXPIRING: u8 = 7;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A persistent message entered a durable queue.
    Enqueue {
        queue: u64,
        seq: u64,
        /// When it expires in `queue` (ms since the Unix epoch), if it has a TTL there.
        expires: Option<u64>,
        exchange: String,
        routing_key: String,
        properties: Bytes,
        body: Bytes,
    },
    /// Messages left a queue for good (ack, reject without requeue, purge, expiry).
    Settle { queue: u64, seqs: Vec<u64> },
    /// Keyed state: `key` of `kind` now holds `value`.
    Put { kind: u8, key: Bytes, value: Bytes },
    /// Keyed state: `key` of `kind` is gone.
    Delete { kind: u8, key: Bytes },
    /// The message of the enqueue record at `body` entered durable queue `queue` as `seq`.
    Reference {
        queue: u64,
        seq: u64,
        /// When it expires in `queue`, as for [`Record::Enqueue`].
        expires: Option<u64>,
        body: RecordPos,
    },
}

/// What a scan found at some offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A whole, valid record and the offset after it.
    Record(Record, usize),
    /// Not enough bytes for the record the header announces: the end of the log, or a torn tail.
    Incomplete,
    /// Bad magic, absurd length, bad checksum or unparsable payload.
    Corrupt,
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Exchange names and routing keys are AMQP short strings (<= 255 bytes); the adapters
    // enforce it, and a longer one is cut rather than corrupting the record.
    let b = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

fn frame(out: &mut [u8], payload_start: usize) {
    let payload = &out[payload_start..];
    let crc = crc32fast::hash(payload);
    let len = payload.len() as u32;
    let header = payload_start - HEADER_LEN;
    out[header..header + 4].copy_from_slice(&MAGIC.to_be_bytes());
    out[header + 4..header + 8].copy_from_slice(&len.to_be_bytes());
    out[header + 8..header + 12].copy_from_slice(&crc.to_be_bytes());
}

/// Which queue entry an enqueue or reference record makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub queue: u64,
    pub seq: u64,
    /// When the message expires in `queue` (ms since the Unix epoch), if it has a TTL there.
    pub expires: Option<u64>,
}

impl Entry {
    /// An entry of a message without a TTL.
    pub fn new(queue: u64, seq: u64) -> Self {
        Entry {
            queue,
            seq,
            expires: None,
        }
    }

    /// The record type (the expiring one of `types` when `expires` is set) and the fields.
    fn put(self, out: &mut Vec<u8>, types: [u8; 2]) {
        out.put_u8(types[usize::from(self.expires.is_some())]);
        out.put_u64(self.queue);
        out.put_u64(self.seq);
        if let Some(t) = self.expires {
            out.put_u64(t);
        }
    }
}

/// Appends an enqueue record to `out`.
pub fn encode_enqueue(
    out: &mut Vec<u8>,
    entry: Entry,
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    out.reserve(
        1 + 24 + 2 + exchange.len() + routing_key.len() + 4 + properties.len() + body.len(),
    );
    entry.put(out, [ENQUEUE, ENQUEUE_EXPIRING]);
    put_str8(out, exchange);
    put_str8(out, routing_key);
    out.put_u32(properties.len() as u32);
    out.put_slice(properties);
    out.put_slice(body);
    frame(out, start + HEADER_LEN);
}

/// Appends a settle record to `out`.
pub fn encode_settle(out: &mut Vec<u8>, queue: u64, seqs: &[u64]) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    out.put_u8(SETTLE);
    out.put_u64(queue);
    out.put_u32(seqs.len() as u32);
    for s in seqs {
        out.put_u64(*s);
    }
    frame(out, start + HEADER_LEN);
}

/// Appends a reference record to `out`.
pub fn encode_reference(out: &mut Vec<u8>, entry: Entry, body: RecordPos) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    entry.put(out, [REFERENCE, REFERENCE_EXPIRING]);
    out.put_u64(body.segment);
    out.put_u64(body.offset);
    out.put_u32(body.len);
    frame(out, start + HEADER_LEN);
}

/// Appends a put record to `out`.
pub fn encode_put(out: &mut Vec<u8>, kind: u8, key: &[u8], value: &[u8]) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    out.reserve(1 + 1 + 4 + key.len() + value.len());
    out.put_u8(PUT);
    out.put_u8(kind);
    out.put_u32(key.len() as u32);
    out.put_slice(key);
    out.put_slice(value);
    frame(out, start + HEADER_LEN);
}

/// Appends a delete record to `out`.
pub fn encode_delete(out: &mut Vec<u8>, kind: u8, key: &[u8]) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    out.put_u8(DELETE);
    out.put_u8(kind);
    out.put_u32(key.len() as u32);
    out.put_slice(key);
    frame(out, start + HEADER_LEN);
}

/// Splits `kind key_len key` off the front of a put or delete payload.
fn get_kind_key(p: &mut Bytes) -> Option<(u8, Bytes)> {
    if p.len() < 5 {
        return None;
    }
    let kind = p.get_u8();
    let n = p.get_u32() as usize;
    if p.len() < n {
        return None;
    }
    Some((kind, p.split_to(n)))
}

/// Reads the record at `offset` in `data` (a whole segment, shared so bodies are not copied).
pub fn scan(data: &Bytes, offset: usize) -> Scan {
    let rest = &data[offset..];
    if rest.len() < HEADER_LEN {
        return Scan::Incomplete;
    }
    let mut h = &rest[..HEADER_LEN];
    let (magic, len, crc) = (h.get_u32(), h.get_u32() as usize, h.get_u32());
    if magic != MAGIC || len > MAX_PAYLOAD {
        return Scan::Corrupt;
    }
    if rest.len() < HEADER_LEN + len {
        return Scan::Incomplete;
    }
    let start = offset + HEADER_LEN;
    if crc32fast::hash(&data[start..start + len]) != crc {
        return Scan::Corrupt;
    }
    match decode_payload(data.slice(start..start + len)) {
        Some(r) => Scan::Record(r, start + len),
        None => Scan::Corrupt,
    }
}

fn get_str8(p: &mut Bytes) -> Option<String> {
    let n = usize::from(*p.first()?);
    p.advance(1);
    if p.len() < n {
        return None;
    }
    let s = String::from_utf8(p.split_to(n).to_vec()).ok()?;
    Some(s)
}

fn decode_payload(mut p: Bytes) -> Option<Record> {
    if p.is_empty() {
        return None;
    }
    let tag = p.get_u8();
    let entry = |p: &mut Bytes, expiring: bool| {
        let n = if expiring { 24 } else { 16 };
        if p.len() < n {
            return None;
        }
        let (queue, seq) = (p.get_u64(), p.get_u64());
        Some((queue, seq, expiring.then(|| p.get_u64())))
    };
    match tag {
        ENQUEUE | ENQUEUE_EXPIRING => {
            let (queue, seq, expires) = entry(&mut p, tag == ENQUEUE_EXPIRING)?;
            let exchange = get_str8(&mut p)?;
            let routing_key = get_str8(&mut p)?;
            if p.len() < 4 {
                return None;
            }
            let plen = p.get_u32() as usize;
            if p.len() < plen {
                return None;
            }
            let properties = p.split_to(plen);
            Some(Record::Enqueue {
                queue,
                seq,
                expires,
                exchange,
                routing_key,
                properties,
                body: p,
            })
        }
        SETTLE => {
            if p.len() < 12 {
                return None;
            }
            let queue = p.get_u64();
            let n = p.get_u32() as usize;
            if p.len() != n.checked_mul(8)? {
                return None;
            }
            let seqs = (0..n).map(|_| p.get_u64()).collect();
            Some(Record::Settle { queue, seqs })
        }
        PUT => {
            let (kind, key) = get_kind_key(&mut p)?;
            Some(Record::Put {
                kind,
                key,
                value: p,
            })
        }
        DELETE => {
            let (kind, key) = get_kind_key(&mut p)?;
            p.is_empty().then_some(Record::Delete { kind, key })
        }
        REFERENCE | REFERENCE_EXPIRING => {
            let (queue, seq, expires) = entry(&mut p, tag == REFERENCE_EXPIRING)?;
            if p.len() != 20 {
                return None;
            }
            let body = RecordPos {
                segment: p.get_u64(),
                offset: p.get_u64(),
                len: p.get_u32(),
            };
            Some(Record::Reference {
                queue,
                seq,
                expires,
                body,
            })
        }
        _ => None,
    }
}

/// The offset of the next plausible record start after a corrupt one (the next magic word), or
/// the end of `data`.
pub fn resync(data: &[u8], from: usize) -> usize {
    let magic = MAGIC.to_be_bytes();
    data.get(from + 1..)
        .and_then(|rest| rest.windows(4).position(|w| w == magic))
        .map_or(data.len(), |p| from + 1 + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enqueue(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_enqueue(&mut out, Entry::new(7, 42), "ex", "a.b", &[0x80, 0], body);
        out
    }

    #[test]
    fn a_reference_round_trips() {
        let body = RecordPos {
            segment: 3,
            offset: 1 << 33,
            len: 77,
        };
        for expires in [None, Some(1_700_000_000_123)] {
            let mut out = Vec::new();
            let entry = Entry {
                expires,
                ..Entry::new(9, 5)
            };
            encode_reference(&mut out, entry, body);
            let data = Bytes::from(out);
            assert_eq!(
                scan(&data, 0),
                Scan::Record(
                    Record::Reference {
                        queue: 9,
                        seq: 5,
                        expires,
                        body
                    },
                    data.len()
                )
            );
        }
    }

    #[test]
    fn an_expiring_enqueue_round_trips_and_costs_eight_bytes_more() {
        let plain = enqueue(b"hello");
        let mut out = Vec::new();
        let entry = Entry {
            expires: Some(99),
            ..Entry::new(7, 42)
        };
        encode_enqueue(&mut out, entry, "ex", "a.b", &[0x80, 0], b"hello");
        assert_eq!(out.len(), plain.len() + 8);
        let data = Bytes::from(out);
        let Scan::Record(Record::Enqueue { expires, body, .. }, end) = scan(&data, 0) else {
            panic!("an enqueue record")
        };
        assert_eq!(
            (expires, &body[..], end),
            (Some(99), &b"hello"[..], data.len())
        );
    }

    #[test]
    fn enqueue_and_settle_round_trip() {
        let mut out = enqueue(b"hello");
        encode_settle(&mut out, 7, &[42, 43]);
        let data = Bytes::from(out);
        let Scan::Record(r, next) = scan(&data, 0) else {
            panic!("first record")
        };
        assert_eq!(
            r,
            Record::Enqueue {
                queue: 7,
                seq: 42,
                expires: None,
                exchange: "ex".into(),
                routing_key: "a.b".into(),
                properties: Bytes::from_static(&[0x80, 0]),
                body: Bytes::from_static(b"hello"),
            }
        );
        let Scan::Record(r, end) = scan(&data, next) else {
            panic!("second record")
        };
        assert_eq!(
            r,
            Record::Settle {
                queue: 7,
                seqs: vec![42, 43]
            }
        );
        assert_eq!(end, data.len());
        assert_eq!(scan(&data, end), Scan::Incomplete);
    }

    #[test]
    fn put_and_delete_round_trip() {
        let mut out = Vec::new();
        encode_put(&mut out, 3, b"vhost\0queue", b"{\"durable\":true}");
        encode_put(&mut out, 4, b"", b"");
        encode_delete(&mut out, 3, b"vhost\0queue");
        let data = Bytes::from(out);
        let mut at = 0;
        let mut records = Vec::new();
        while let Scan::Record(r, next) = scan(&data, at) {
            records.push(r);
            at = next;
        }
        assert_eq!(at, data.len());
        assert_eq!(
            records,
            [
                Record::Put {
                    kind: 3,
                    key: Bytes::from_static(b"vhost\0queue"),
                    value: Bytes::from_static(b"{\"durable\":true}"),
                },
                Record::Put {
                    kind: 4,
                    key: Bytes::new(),
                    value: Bytes::new(),
                },
                Record::Delete {
                    kind: 3,
                    key: Bytes::from_static(b"vhost\0queue"),
                },
            ]
        );
    }

    #[test]
    fn torn_and_corrupt_records_are_told_apart() {
        let full = enqueue(b"payload");
        for cut in 1..full.len() {
            let data = Bytes::copy_from_slice(&full[..cut]);
            assert_eq!(scan(&data, 0), Scan::Incomplete, "cut at {cut}");
        }
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(scan(&Bytes::from(flipped), 0), Scan::Corrupt);
    }

    #[test]
    fn resync_finds_the_next_record() {
        let mut data = enqueue(b"one");
        data[0] ^= 0xff; // first record's magic is gone
        let second = data.len();
        data.extend(enqueue(b"two"));
        let data = Bytes::from(data);
        assert_eq!(scan(&data, 0), Scan::Corrupt);
        assert_eq!(resync(&data, 0), second);
        assert!(matches!(scan(&data, second), Scan::Record(..)));
    }

    proptest! {
        #[test]
        fn scanning_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let data = Bytes::from(bytes);
            let mut at = 0;
            while at < data.len() {
                match scan(&data, at) {
                    Scan::Record(_, next) => at = next,
                    Scan::Incomplete => break,
                    Scan::Corrupt => at = resync(&data, at),
                }
            }
        }
    }
}
