//! The protocol-neutral message that moves through exchanges and queues.
//!
//! AMQP's basic properties are the canonical superset of every protocol's metadata (DESIGN.md), so
//! the core uses the codec's property and field-table types as its model. A message keeps the
//! encoded property block it arrived with (`raw_properties`) so AMQP consumers get it forwarded
//! byte for byte with no re-encoding; code that changes the properties must drop it.

use super::memory::MemoryCharge;
use bytes::Bytes;
use std::any::Any;
use std::sync::{Arc, OnceLock};
use switchboard_amqp::{BasicProperties, FieldTable, FieldValue, Properties};

/// What the allocator adds to every heap block: its header and the rounding to 16 bytes.
const ALLOCATION_OVERHEAD: usize = 16;

/// The queue slot a message takes (`queue::ready::Queued`, about 88 bytes), times 1.5: a
/// `VecDeque` doubles its capacity, so on average a third of it is unused.
const QUEUE_SLOT: usize = 136;

/// The frame around the body that stays in the read buffer the body is sliced from (method and
/// content-header frames, STOMP command and headers, MQTT fixed header and topic), less the
/// strings counted on their own.
const WIRE_FRAMING: usize = 64;

/// Fixed per-message overhead charged on top of the body: the struct in its `Arc`, a queue
/// slot and the framing the body keeps alive. The boxed properties (a message without any
/// holds none: [`PROPERTIES_BLOCK`]), strings and headers a message holds are charged on top
/// by [`Message::new`] ([`properties_heap_size`]). Measured with heaptrack on a release
/// build holding about 165,000 1 KiB messages in one queue: per AMQP message about 1,670 bytes
/// (read buffer 1,086, `Arc<Message>` 445, queue slot 140); per MQTT message about 2,400, of
/// which its two headers' `BTreeMap` node takes 730.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>()
    + 2 * std::mem::size_of::<usize>()
    + ALLOCATION_OVERHEAD
    + QUEUE_SLOT
    + WIRE_FRAMING;

/// The box of a message's properties, when it has any.
const PROPERTIES_BLOCK: usize = std::mem::size_of::<BasicProperties>() + ALLOCATION_OVERHEAD;

/// Entries in one `BTreeMap` node (std's B = 6, 2B - 1 keys).
const BTREE_NODE_ENTRIES: usize = 11;

/// The protocols whose adapters keep their own form of a message's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Amqp,
    Mqtt,
    Stomp,
}

impl Protocol {
    const COUNT: usize = 3;

    fn index(self) -> usize {
        self as usize
    }
}

/// A form of the metadata that only one adapter reads; the core stores it without looking.
pub type Form = Arc<dyn Any + Send + Sync>;

/// A message's metadata as its publisher's protocol gave it (MQTT properties in their order,
/// with repeated user properties), and as translated for consumers of other protocols: at
/// most once per protocol however many consumers take it.
#[derive(Default)]
pub struct Forms {
    arrival: Option<(Protocol, Form)>,
    translated: OnceLock<Box<[OnceLock<Form>; Protocol::COUNT]>>,
}

impl std::fmt::Debug for Forms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forms")
            .field("arrival", &self.arrival.as_ref().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// Behind a pointer, null when none is set: the properties are most of a message's size,
    /// and an AMQP publisher's arrive that way from the codec, so the message takes them
    /// without copying ~300 bytes, and the `Message` itself is small enough to build in its
    /// `Arc` cheaply. Without `headers` when `derived` makes them (read through
    /// [`Message::properties`]).
    properties: Properties,
    /// The content-header property bytes as received from an AMQP publisher, if unchanged.
    pub raw_properties: Option<Bytes>,
    pub body: Bytes,
    /// The enqueue record the message was first written to: further durable queues it is
    /// routed to write a small reference to it instead of the whole message again.
    pub stored: std::sync::OnceLock<crate::store::log::RecordPos>,
    /// The publisher's own form of the metadata, and translations of it (see [`Forms`]).
    /// `properties` stay the core's model (routing, TTL, dead-lettering, the store); a copy
    /// whose properties the core changes is a new message without these.
    forms: Forms,
    /// Headers left to be made from the arrival form on first use.
    derived: Option<DerivedHeaders>,
    _charge: MemoryCharge,
}

/// The `headers` of a message whose publisher's protocol keeps that metadata in its own
/// form (see [`Message::with_derived_headers`]), and the complete properties once made.
struct DerivedHeaders {
    derive: fn(&Message) -> FieldTable,
    made: OnceLock<(Box<BasicProperties>, MemoryCharge)>,
}

impl std::fmt::Debug for DerivedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedHeaders")
            .field("made", &self.made.get().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

impl Message {
    /// Inlined so that a publisher's `Arc::new(Message::new(..))` can build the message in
    /// place instead of copying it once more.
    #[inline]
    pub fn new(
        exchange: String,
        routing_key: String,
        properties: BasicProperties,
        raw_properties: Option<Bytes>,
        body: Bytes,
        charge: MemoryCharge,
    ) -> Self {
        Self::with_properties(
            exchange,
            routing_key,
            Properties::from(properties),
            raw_properties,
            body,
            charge,
        )
    }

    /// [`Message::new`] taking the properties as the AMQP codec decodes them.
    #[inline]
    pub fn with_properties(
        exchange: String,
        routing_key: String,
        properties: Properties,
        raw_properties: Option<Bytes>,
        body: Bytes,
        mut charge: MemoryCharge,
    ) -> Self {
        charge.grow(
            string_heap_size(&exchange)
                + string_heap_size(&routing_key)
                + properties
                    .present()
                    .map_or(0, |p| PROPERTIES_BLOCK + properties_heap_size(p)),
        );
        Message {
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
            stored: std::sync::OnceLock::new(),
            forms: Forms::default(),
            derived: None,
            _charge: charge,
        }
    }

    /// The message's properties, complete: its headers are made here on first use when they
    /// are derived from the arrival form.
    pub fn properties(&self) -> &BasicProperties {
        let Some(d) = &self.derived else {
            return &self.properties;
        };
        &d.made
            .get_or_init(|| {
                let mut p = Box::new((*self.properties).clone());
                let headers = (d.derive)(self);
                let charge = self._charge.sibling(
                    std::mem::size_of::<BasicProperties>()
                        + ALLOCATION_OVERHEAD
                        + properties_heap_size(&p)
                        + table_heap_size(&headers),
                );
                p.headers = Some(headers);
                (p, charge)
            })
            .0
    }

    /// Every property but `headers`, which may not be made yet: what the core routes and
    /// queues by (delivery mode, priority, expiration, timestamp), read without making them.
    pub fn routing_properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// Leaves the headers to `derive` from the arrival form on first use of
    /// [`Message::properties`] (the properties given to `new` had none): a message that only
    /// its own protocol's consumers take never builds an AMQP header table. Only for what
    /// `derive` makes from the message alone, the same every time.
    /// Always inlined: a builder step taking the message by value copies it once more
    /// (about 270 bytes) on its way into the `Arc` when it is a call.
    #[inline(always)]
    pub fn with_derived_headers(mut self, derive: fn(&Message) -> FieldTable) -> Self {
        self.derived = Some(DerivedHeaders {
            derive,
            made: OnceLock::new(),
        });
        self
    }

    /// Records the form the message arrived in, as `protocol`'s adapter keeps it.
    /// Always inlined: a builder step taking the message by value copies it once more
    /// (about 270 bytes) on its way into the `Arc` when it is a call.
    #[inline(always)]
    pub fn with_arrival<T: Any + Send + Sync>(mut self, protocol: Protocol, form: T) -> Self {
        self.forms.arrival = Some((protocol, Arc::new(form)));
        self
    }

    /// The message's metadata in `protocol`'s form `T`: the arrival form when it came in
    /// that way, else `translate`'s result, made on first use and shared by every later
    /// consumer of that protocol.
    pub fn form<T: Any + Send + Sync>(
        &self,
        protocol: Protocol,
        translate: impl FnOnce(&Message) -> T,
    ) -> Arc<T> {
        if let Some((p, form)) = &self.forms.arrival {
            if *p == protocol {
                if let Ok(t) = form.clone().downcast::<T>() {
                    return t;
                }
            }
        }
        let slots = self.forms.translated.get_or_init(Default::default);
        let slot = &slots[protocol.index()];
        if let Some(t) = slot.get().and_then(|f| f.clone().downcast::<T>().ok()) {
            return t;
        }
        let made = Arc::new(translate(self));
        // A racing consumer may have set it first; either translation is the same.
        let _ = slot.set(made.clone());
        made
    }

    /// The arrival form when the message came in over `protocol` (as `T`).
    pub fn arrival<T: Any + Send + Sync>(&self, protocol: Protocol) -> Option<Arc<T>> {
        match &self.forms.arrival {
            Some((p, form)) if *p == protocol => form.clone().downcast::<T>().ok(),
            _ => None,
        }
    }

    /// Bytes to charge to the memory monitor for a message of this body size; [`Message::new`]
    /// adds what its strings and headers hold.
    pub fn charge_size(body_len: usize) -> usize {
        body_len + MESSAGE_OVERHEAD
    }

    /// A charge of `bytes` to the monitor this message is charged to, for a copy of it that a
    /// protocol adapter keeps (an MQTT session's waiting and in-flight messages).
    pub fn charge_copy(&self, bytes: usize) -> MemoryCharge {
        self._charge.sibling(bytes)
    }

    /// Delivery mode 2: the publisher asked for the message to survive a restart.
    pub fn is_persistent(&self) -> bool {
        self.routing_properties().delivery_mode == Some(2)
    }
}

/// Heap bytes a string holds (its block, or nothing when empty).
pub fn string_heap_size(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        s.len() + ALLOCATION_OVERHEAD
    }
}

/// Heap bytes held by the properties' strings and headers table.
pub fn properties_heap_size(p: &BasicProperties) -> usize {
    let strings = [
        &p.content_type,
        &p.content_encoding,
        &p.correlation_id,
        &p.reply_to,
        &p.expiration,
        &p.message_id,
        &p.kind,
        &p.user_id,
        &p.app_id,
        &p.cluster_id,
    ];
    strings
        .iter()
        .filter_map(|s| s.as_deref())
        .map(string_heap_size)
        .sum::<usize>()
        + p.headers.as_ref().map_or(0, table_heap_size)
}

/// Heap bytes of a field table: its B-tree nodes, keys and values. Small tables take one node
/// of 11 entries whatever their length, which is most of what an MQTT message's two headers
/// cost.
pub fn table_heap_size(t: &FieldTable) -> usize {
    if t.is_empty() {
        return 0;
    }
    let entry = std::mem::size_of::<String>() + std::mem::size_of::<FieldValue>();
    let node = BTREE_NODE_ENTRIES * entry + ALLOCATION_OVERHEAD + 16;
    // Nodes past the first are at least half full; each adds an edge in its parent.
    let nodes = 1 + t.len().saturating_sub(1) / (BTREE_NODE_ENTRIES / 2 + 1);
    nodes * node
        + t.iter()
            .map(|(k, v)| string_heap_size(k) + value_heap_size(v))
            .sum::<usize>()
}

fn value_heap_size(v: &FieldValue) -> usize {
    match v {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) if !b.is_empty() => {
            b.len() + ALLOCATION_OVERHEAD
        }
        FieldValue::Array(items) => {
            items.len() * std::mem::size_of::<FieldValue>()
                + ALLOCATION_OVERHEAD
                + items.iter().map(value_heap_size).sum::<usize>()
        }
        FieldValue::Table(t) => table_heap_size(t),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::memory::MemoryMonitor;

    #[test]
    fn a_form_is_the_arrival_one_or_translated_once_per_protocol() {
        let memory = MemoryMonitor::new(0);
        let m = message(BasicProperties::default(), memory.charge(0))
            .with_arrival(Protocol::Mqtt, String::from("as published"));
        let same = m.form(Protocol::Mqtt, |_| -> String {
            unreachable!("arrival form")
        });
        assert_eq!(*same, "as published");
        assert_eq!(
            m.arrival::<String>(Protocol::Mqtt)
                .as_deref()
                .map(String::as_str),
            Some("as published")
        );
        assert!(m.arrival::<String>(Protocol::Stomp).is_none());
        let mut made = 0;
        for _ in 0..3 {
            let t = m.form(Protocol::Stomp, |_| {
                made += 1;
                String::from("translated")
            });
            assert_eq!(*t, "translated");
        }
        assert_eq!(made, 1, "translated once for every consumer");
    }

    fn made_headers(m: &Message) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert("from".into(), FieldValue::string(m.routing_key.clone()));
        t
    }

    #[test]
    fn derived_headers_are_made_once_on_first_read_and_charged() {
        let memory = MemoryMonitor::new(0);
        let m = message(
            BasicProperties {
                delivery_mode: Some(1),
                ..Default::default()
            },
            memory.charge(Message::charge_size(100)),
        )
        .with_derived_headers(made_headers);
        let before = memory.used();
        assert!(m.routing_properties().headers.is_none(), "not made yet");
        assert_eq!(m.routing_properties().delivery_mode, Some(1));
        assert_eq!(memory.used(), before);
        let p = m.properties();
        assert_eq!(p.delivery_mode, Some(1), "the rest is kept");
        assert_eq!(
            p.headers.as_ref().and_then(|h| h.get("from")),
            Some(&FieldValue::string("a.b"))
        );
        assert!(std::ptr::eq(p, m.properties()), "made once");
        assert!(memory.used() > before, "the made properties are charged");
        drop(m);
        assert_eq!(memory.used(), 0);
    }

    fn message(properties: BasicProperties, charge: MemoryCharge) -> Message {
        Message::new(
            "amq.topic".into(),
            "a.b".into(),
            properties,
            None,
            Bytes::from_static(&[0; 100]),
            charge,
        )
    }

    #[test]
    fn a_message_charges_its_strings_and_headers_on_top_of_the_body() {
        let memory = MemoryMonitor::new(0);
        let plain = message(
            BasicProperties::default(),
            memory.charge(Message::charge_size(100)),
        );
        let strings = string_heap_size("amq.topic") + string_heap_size("a.b");
        assert_eq!(memory.used(), Message::charge_size(100) + strings);
        drop(plain);
        assert_eq!(memory.used(), 0);

        let mut headers = FieldTable::new();
        headers.insert("x-mqtt-publish-qos".into(), FieldValue::U8(0));
        headers.insert("x-mqtt-client-id".into(), FieldValue::string("client-7"));
        let with_headers = message(
            BasicProperties {
                headers: Some(headers),
                correlation_id: Some("c-1".into()),
                ..Default::default()
            },
            memory.charge(Message::charge_size(100)),
        );
        let extra = memory.used() - Message::charge_size(100) - strings - PROPERTIES_BLOCK;
        // One B-tree node of 11 entries, the two keys, the client id and the correlation id.
        assert!((700..=1000).contains(&extra), "{extra}");
        drop(with_headers);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn tables_grow_by_nodes_and_nest() {
        let mut t = FieldTable::new();
        t.insert("k".into(), FieldValue::Bool(true));
        let one = table_heap_size(&t);
        for i in 0..30 {
            t.insert(format!("k{i}"), FieldValue::Bool(true));
        }
        assert!(
            table_heap_size(&t) >= 3 * one,
            "31 entries take several nodes"
        );
        let mut outer = FieldTable::new();
        outer.insert("inner".into(), FieldValue::Table(t.clone()));
        assert!(table_heap_size(&outer) > table_heap_size(&t));
        assert_eq!(table_heap_size(&FieldTable::new()), 0);
    }
}
