//! Durable definitions (exchanges, queues, bindings) as keyed records in the log: one record
//! per exchange, queue or binding, so a declare or delete appends one small record whatever
//! the number of definitions (see keyed.rs for keys and values).
//!
//! Keys are [`compose_key`] fields: `[vhost, name]` for exchanges and queues, and
//! `[vhost, source, destination type, destination, routing key, encoded arguments]` for
//! bindings (a binding is identified by all of them). Values are the definitions below as
//! JSON. Argument tables are kept as base64 of their AMQP encoding: exact for every field type.

use super::keyed::{compose_key, kind, split_key, RecoveredKeyed};
use base64::Engine;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use switchboard_amqp::{decode_table, encode_table, FieldTable};

/// One vhost's durable definitions, as recovered at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VHostDefinitions {
    pub vhost: String,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    /// The queue's id in the message log (unique per incarnation: a queue deleted and declared
    /// again gets a new one, so old records never reach the new queue).
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub source: String,
    /// "queue" or "exchange".
    pub destination_type: String,
    pub destination: String,
    pub routing_key: String,
    pub arguments: String,
}

/// Encodes an argument table for a definition record.
pub fn table_text(t: &FieldTable) -> String {
    let mut b = BytesMut::new();
    encode_table(&mut b, t);
    base64::engine::general_purpose::STANDARD.encode(&b)
}

/// Decodes an argument table from a definition record.
pub fn text_table(s: &str) -> Result<FieldTable, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| e.to_string())?;
    let mut b = &bytes[..];
    decode_table(&mut b).map_err(|e| e.to_string())
}

/// The key of exchange `name` of `vhost` (kind [`kind::EXCHANGE`]).
pub fn exchange_key(vhost: &str, name: &str) -> Vec<u8> {
    compose_key(&[vhost.as_bytes(), name.as_bytes()])
}

/// The key of queue `name` of `vhost` (kind [`kind::QUEUE`]).
pub fn queue_key(vhost: &str, name: &str) -> Vec<u8> {
    compose_key(&[vhost.as_bytes(), name.as_bytes()])
}

/// The key of binding `b` of `vhost` (kind [`kind::BINDING`]).
pub fn binding_key(vhost: &str, b: &BindingDef) -> Vec<u8> {
    compose_key(&[
        vhost.as_bytes(),
        b.source.as_bytes(),
        b.destination_type.as_bytes(),
        b.destination.as_bytes(),
        b.routing_key.as_bytes(),
        b.arguments.as_bytes(),
    ])
}

/// A definition as a record value.
pub fn encode<T: Serialize>(def: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no custom
    // serialisers); an empty value would be reported on recovery rather than panicking here.
    serde_json::to_vec(def).unwrap_or_default()
}

/// A record that is not a definition this version can read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable {what} record {key:?}: {reason}")]
pub struct BadRecord {
    pub what: &'static str,
    pub key: String,
    pub reason: String,
}

/// The vhost a definition record's key belongs to.
fn vhost_of<'a>(what: &'static str, key: &'a [u8]) -> Result<&'a str, BadRecord> {
    let bad = |reason: &str| BadRecord {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_owned(),
    };
    let fields = split_key(key).ok_or_else(|| bad("not a composed key"))?;
    let first = fields.first().ok_or_else(|| bad("empty key"))?;
    std::str::from_utf8(first).map_err(|_| bad("vhost is not UTF-8"))
}

fn decode<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, BadRecord> {
    serde_json::from_slice(value).map_err(|e| BadRecord {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Every vhost's definitions from the recovered keyed state, by vhost name, each list sorted
/// by name (so restoring is deterministic). A record that cannot be read is reported in the
/// second list and left out.
pub fn from_keyed(keyed: &RecoveredKeyed) -> (BTreeMap<String, VHostDefinitions>, Vec<BadRecord>) {
    let mut out: BTreeMap<String, VHostDefinitions> = BTreeMap::new();
    let mut bad = Vec::new();
    fn entry<'a>(
        out: &'a mut BTreeMap<String, VHostDefinitions>,
        vhost: &str,
    ) -> &'a mut VHostDefinitions {
        out.entry(vhost.to_owned())
            .or_insert_with(|| VHostDefinitions {
                vhost: vhost.to_owned(),
                ..Default::default()
            })
    }
    for (key, value) in keyed.of_kind(kind::EXCHANGE) {
        match vhost_of("exchange", key).and_then(|v| Ok((v, decode("exchange", key, value)?))) {
            Ok((v, def)) => entry(&mut out, v).exchanges.push(def),
            Err(e) => bad.push(e),
        }
    }
    for (key, value) in keyed.of_kind(kind::QUEUE) {
        match vhost_of("queue", key).and_then(|v| Ok((v, decode("queue", key, value)?))) {
            Ok((v, def)) => entry(&mut out, v).queues.push(def),
            Err(e) => bad.push(e),
        }
    }
    for (key, value) in keyed.of_kind(kind::BINDING) {
        match vhost_of("binding", key).and_then(|v| Ok((v, decode("binding", key, value)?))) {
            Ok((v, def)) => entry(&mut out, v).bindings.push(def),
            Err(e) => bad.push(e),
        }
    }
    for defs in out.values_mut() {
        defs.sort();
    }
    (out, bad)
}

impl VHostDefinitions {
    /// Sorts every list by name, so the order does not depend on the index's hashing.
    pub fn sort(&mut self) {
        self.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        self.queues.sort_by(|a, b| a.name.cmp(&b.name));
        self.bindings.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
    }

    /// Every definition as `(kind, key, value)` records.
    pub fn records(&self) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        let v = &self.vhost;
        let exchanges = self
            .exchanges
            .iter()
            .map(|e| (kind::EXCHANGE, exchange_key(v, &e.name), encode(e)));
        let queues = self
            .queues
            .iter()
            .map(|q| (kind::QUEUE, queue_key(v, &q.name), encode(q)));
        let bindings = self
            .bindings
            .iter()
            .map(|b| (kind::BINDING, binding_key(v, b), encode(b)));
        exchanges.chain(queues).chain(bindings).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keyed::RecoveredValue;
    use crate::store::log::RecordPos;
    use switchboard_amqp::FieldValue;

    #[test]
    fn records_read_back_as_the_same_definitions() {
        let mut args = FieldTable::new();
        args.insert("x-max-priority".into(), FieldValue::U8(10));
        let defs = VHostDefinitions {
            vhost: "a/b".into(),
            exchanges: vec![ExchangeDef {
                name: "x".into(),
                kind: "topic".into(),
                auto_delete: false,
                internal: true,
                arguments: table_text(&FieldTable::new()),
            }],
            queues: vec![QueueDef {
                name: "q".into(),
                id: 9,
                auto_delete: false,
                arguments: table_text(&args),
            }],
            bindings: vec![BindingDef {
                source: "x".into(),
                destination_type: "queue".into(),
                destination: "q".into(),
                routing_key: "a.#".into(),
                arguments: table_text(&FieldTable::new()),
            }],
        };
        let mut keyed = RecoveredKeyed::default();
        let at = RecordPos {
            segment: 1,
            offset: 0,
            len: 1,
        };
        for (k, key, value) in defs.records() {
            keyed.put(
                k,
                &key,
                RecoveredValue {
                    at,
                    value: value.into(),
                },
            );
        }
        // A record this version cannot read is reported, not fatal.
        keyed.put(
            kind::QUEUE,
            &queue_key("a/b", "broken"),
            RecoveredValue {
                at,
                value: bytes::Bytes::from_static(b"{"),
            },
        );
        let (back, bad) = from_keyed(&keyed);
        assert_eq!(back.len(), 1);
        assert_eq!(back["a/b"], defs);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(text_table(&back["a/b"].queues[0].arguments), Ok(args));
    }

    #[test]
    fn binding_keys_tell_every_field_apart() {
        let b = |key: &str, args: &str| BindingDef {
            source: "x".into(),
            destination_type: "queue".into(),
            destination: "q".into(),
            routing_key: key.into(),
            arguments: args.into(),
        };
        assert_ne!(binding_key("/", &b("k", "")), binding_key("/", &b("", "k")));
        assert_ne!(binding_key("/", &b("k", "")), binding_key("v", &b("k", "")));
        assert_eq!(
            binding_key("/", &b("k", "a")),
            binding_key("/", &b("k", "a"))
        );
    }
}
