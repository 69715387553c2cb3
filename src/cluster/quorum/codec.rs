//! What a quorum queue's Raft entries carry: its messages as the store's enqueue records
//! (`store::record`, binary with a CRC), written in the JSON of the transport and the Raft
//! log as base64 strings (a third larger than the bytes, never an array of numbers), and the
//! ids of settled and returned messages.

use crate::core::memory::MemoryCharge;
use crate::core::message::Message;
use crate::store::record::{self, Entry, Record, Scan};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchboard_amqp::BasicProperties;

/// One message: a store enqueue record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(pub Bytes);

impl Serialize for Encoded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(|b| Encoded(Bytes::from(b)))
            .map_err(serde::de::Error::custom)
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
}
