//! What a quorum queue's Raft entries carry: its messages as the store's enqueue records
//! (`store::record`, binary with a CRC), and the ids of settled and returned messages.
//!
//! The Raft log and snapshots hold them in a binary form ([`Ops::encode_to`]): no base64 to
//! make and parse for every replica's write, and the log is as large as the messages. Between
//! nodes a message travels as its bytes ([`crate::cluster::wire_bytes`]); logs written before
//! the binary form hold entries in JSON with each message in base64, and are read as they
//! are.

use crate::core::memory::MemoryCharge;
use crate::core::message::Message;
use crate::store::record::{self, Entry, Record, Scan};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchboard_amqp::BasicProperties;

/// One message: a store enqueue record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(pub Bytes);

impl Serialize for Encoded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::cluster::wire_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::cluster::wire_bytes::deserialize(d).map(|b| Encoded(Bytes::from(b)))
    }
}

/// One Raft entry's worth of a queue's operations: the proposals that were waiting together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ops {
    /// Messages published, given ids in this order as the entry is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enqueue: Vec<Encoded>,
    /// Messages that left the queue for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settle: Vec<u64>,
    /// Messages returned to the queue (their delivery count goes up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returned: Vec<u64>,
    /// When the leader proposed the entry, by its queue's clock (ms): the time a message's
    /// TTL counts from on every replica, so a new leader expires it when the old one would
    /// have. 0 in entries written before it was kept (the TTL counts from going live).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Ops {
    pub fn is_empty(&self) -> bool {
        self.enqueue.is_empty() && self.settle.is_empty() && self.returned.is_empty()
    }
}

/// Why binary quorum-queue data could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("quorum queue data ends inside a field")]
    Truncated,
    #[error("quorum queue data of unknown version {0}")]
    Version(u8),
    #[error("quorum queue data: {0}")]
    Header(String),
}

/// The version byte that starts [`Ops`] in binary.
const OPS_V1: u8 = 1;

/// Reads what [`put_list`] wrote: a count, then `read` for each item.
fn get_list<T>(
    p: &mut Bytes,
    mut read: impl FnMut(&mut Bytes) -> Result<T, CodecError>,
) -> Result<Vec<T>, CodecError> {
    let n = get_u32(p)? as usize;
    // Every item takes at least 4 bytes: a count beyond what is left is damage, not a
    // reason to allocate.
    let mut out = Vec::with_capacity(n.min(p.remaining() / 4));
    for _ in 0..n {
        out.push(read(p)?);
    }
    Ok(out)
}

fn put_list<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.put_u32(items.len() as u32);
    for item in items {
        write(out, item);
    }
}

pub(crate) fn get_u32(p: &mut Bytes) -> Result<u32, CodecError> {
    p.try_get_u32().map_err(|_| CodecError::Truncated)
}

pub(crate) fn get_u64(p: &mut Bytes) -> Result<u64, CodecError> {
    p.try_get_u64().map_err(|_| CodecError::Truncated)
}

/// A length-prefixed byte string, as a slice of `p` (shares its allocation).
pub(crate) fn get_bytes(p: &mut Bytes) -> Result<Bytes, CodecError> {
    let n = get_u32(p)? as usize;
    if p.len() < n {
        return Err(CodecError::Truncated);
    }
    Ok(p.split_to(n))
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

impl Encoded {
    /// The bytes in memory of its own, not a slice pinning a larger buffer (a whole log file
    /// read at start) for as long as the message lives.
    pub fn detached(self) -> Encoded {
        Encoded(Bytes::copy_from_slice(&self.0))
    }
}

impl Ops {
    /// Appends the binary form: a version byte, `at`, then each list with its count; a
    /// message as its length and record.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        out.reserve(1 + 8 + 12 + self.encoded_len());
        out.put_u8(OPS_V1);
        out.put_u64(self.at);
        put_list(out, &self.enqueue, |o, m| put_bytes(o, &m.0));
        put_list(out, &self.settle, |o, id| o.put_u64(*id));
        put_list(out, &self.returned, |o, id| o.put_u64(*id));
    }

    /// Reads [`Ops::encode_to`]'s form; messages are slices of `p`.
    pub fn decode_from(p: &mut Bytes) -> Result<Ops, CodecError> {
        let version = p.try_get_u8().map_err(|_| CodecError::Truncated)?;
        if version != OPS_V1 {
            return Err(CodecError::Version(version));
        }
        let at = get_u64(p)?;
        let enqueue = get_list(p, |p| get_bytes(p).map(Encoded))?;
        let settle = get_list(p, get_u64)?;
        let returned = get_list(p, get_u64)?;
        Ok(Ops {
            enqueue,
            settle,
            returned,
            at,
        })
    }

    /// The bytes its messages and ids take.
    pub fn encoded_len(&self) -> usize {
        self.enqueue.iter().map(|m| 4 + m.0.len()).sum::<usize>()
            + 8 * (self.settle.len() + self.returned.len())
    }
}

/// `message` as one enqueue record (its property block as it arrived, when it has one).
pub fn encode(message: &Message) -> Encoded {
    let encoded;
    let props: &[u8] = match &message.raw_properties {
        Some(raw) => raw,
        None => {
            let mut b = BytesMut::with_capacity(message.properties().encoded_len());
            message.properties().encode(&mut b);
            encoded = b;
            &encoded
        }
    };
    let mut out = Vec::with_capacity(64 + message.body.len() + props.len());
    record::encode_enqueue(
        &mut out,
        Entry::new(0, 0),
        &message.exchange,
        &message.routing_key,
        props,
        &message.body,
    );
    Encoded(Bytes::from(out))
}

/// The message in `encoded`, its memory charged with `charge`.
pub fn decode(
    encoded: &Encoded,
    charge: impl FnOnce(usize) -> MemoryCharge,
) -> Result<Message, String> {
    match record::scan(&encoded.0, 0) {
        Scan::Record(
            Record::Enqueue {
                exchange,
                routing_key,
                properties,
                body,
                ..
            },
            _,
        ) => {
            let props = BasicProperties::decode(&properties).map_err(|e| e.to_string())?;
            let charge = charge(Message::charge_size(body.len()));
            Ok(Message::new(
                exchange,
                routing_key,
                props,
                Some(properties),
                body,
                charge,
            ))
        }
        other => Err(format!("not an enqueue record: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_message_round_trips_through_json_as_base64() {
        let body = Bytes::from((0u8..=255).collect::<Vec<u8>>());
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let m = Message::new(
            "ex".into(),
            "rk".into(),
            props,
            None,
            body.clone(),
            MemoryCharge::default(),
        );
        let ops = Ops {
            enqueue: vec![encode(&m)],
            settle: vec![3],
            returned: vec![],
            at: 1_700_000_000_123,
        };
        let json = serde_json::to_string(&ops).unwrap();
        assert!(
            !json.contains("[0,1,2"),
            "bodies are not arrays of numbers: {json}"
        );
        let back: Ops = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ops);
        let d = decode(&back.enqueue[0], |_| MemoryCharge::default()).unwrap();
        assert_eq!(d.body, body);
        assert_eq!(d.exchange, "ex");
        assert_eq!(d.routing_key, "rk");
        assert!(d.is_persistent());
    }

    fn sample() -> Ops {
        let m = Message::new(
            "ex".into(),
            "rk".into(),
            BasicProperties::default(),
            None,
            Bytes::from_static(b"hello"),
            MemoryCharge::default(),
        );
        Ops {
            enqueue: vec![encode(&m), Encoded(Bytes::new())],
            settle: vec![1, u64::MAX],
            returned: vec![7],
            at: 42,
        }
    }

    #[test]
    fn ops_round_trip_in_binary_and_damage_is_an_error() {
        let ops = sample();
        let mut out = Vec::new();
        ops.encode_to(&mut out);
        let mut p = Bytes::from(out.clone());
        assert_eq!(Ops::decode_from(&mut p).unwrap(), ops);
        assert!(p.is_empty());
        for cut in 0..out.len() {
            let mut p = Bytes::copy_from_slice(&out[..cut]);
            assert_eq!(
                Ops::decode_from(&mut p),
                Err(CodecError::Truncated),
                "cut at {cut}"
            );
        }
        out[0] = 9;
        assert_eq!(
            Ops::decode_from(&mut Bytes::from(out)),
            Err(CodecError::Version(9))
        );
        // A count far beyond the data allocates nothing and fails.
        let mut huge = vec![OPS_V1];
        huge.extend(0u64.to_be_bytes());
        huge.extend(u32::MAX.to_be_bytes());
        assert_eq!(
            Ops::decode_from(&mut Bytes::from(huge)),
            Err(CodecError::Truncated)
        );
    }
}
