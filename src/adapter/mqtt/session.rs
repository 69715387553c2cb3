//! A session's state as plain data (no sockets, no tasks): subscriptions, QoS state in both
//! directions and the messages waiting to be sent. It outlives connections for persistent
//! sessions; `persist` writes what must survive a restart as the session's record, while its
//! messages stay in its queue (settled when their flow completes).

use super::convert::{filter_to_pattern, topic_to_key, MqttForm};
use crate::core::memory::{MemoryCharge, MemoryMonitor};
use crate::core::message::string_heap_size;
use crate::core::topic::TopicTrie;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;
use switchboard_mqtt::{Properties, QoS, SubscriptionOptions};

/// One subscription of a session, by topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEntry {
    pub options: SubscriptionOptions,
    /// v5 Subscription Identifier given with the SUBSCRIBE, if any.
    pub identifier: Option<u32>,
}

/// A session's subscriptions by topic filter, in filter order.
///
/// A sorted `Vec` while there are few: most sessions hold one or a few filters, and a B-tree
/// allocates a whole node (about 400 bytes here) for the first one, which dominated the memory
/// of an idle connection (issue 7). Past [`Subscriptions::FEW`] a B-tree: inserting into a sorted
/// `Vec` shifts half of it, which made 100,000 subscriptions on one session quadratic.
/// The B-tree comes with the core's topic trie over the filters (as AMQP patterns, each under
/// its subscription key), so a delivery looks only at the filters that may match its topic
/// instead of testing every one; the few kept in the `Vec` are still tested one by one, which
/// is cheaper than a trie walk for a handful.
///
/// The B-tree and the trie are charged to the memory monitor ([`Subscriptions::charge_to`]):
/// 100,000 filters on one session hold tens of megabytes, as messages do.
#[derive(Debug)]
pub enum Subscriptions {
    Few(Vec<(String, SubscriptionEntry)>),
    Many(Box<Indexed>),
}

/// Many subscriptions: by filter, and indexed in the topic trie.
#[derive(Debug)]
pub struct Indexed {
    map: BTreeMap<String, SubscriptionEntry>,
    trie: TopicTrie<String>,
    /// What [`indexed_bytes`] estimates the map and the trie hold.
    bytes: usize,
    /// `bytes`, charged once the session is given the broker's monitor.
    charge: MemoryCharge,
}

impl Indexed {
    fn new(map: BTreeMap<String, SubscriptionEntry>) -> Box<Self> {
        let mut trie = TopicTrie::new();
        let mut bytes = 0;
        for filter in map.keys() {
            trie.insert(&index_pattern(filter), filter.clone());
            bytes += indexed_bytes(filter);
        }
        Box::new(Indexed {
            map,
            trie,
            bytes,
            charge: MemoryCharge::default(),
        })
    }

    fn insert(&mut self, filter: String, entry: SubscriptionEntry) -> Option<SubscriptionEntry> {
        if let Some(old) = self.map.get_mut(&filter) {
            return Some(std::mem::replace(old, entry));
        }
        self.trie.insert(&index_pattern(&filter), filter.clone());
        self.bytes += indexed_bytes(&filter);
        self.charge.resize(self.bytes);
        self.map.insert(filter, entry)
    }

    fn remove(&mut self, filter: &str) -> Option<SubscriptionEntry> {
        let entry = self.map.remove(filter)?;
        self.trie.remove(&index_pattern(filter), &filter.to_owned());
        self.bytes = self.bytes.saturating_sub(indexed_bytes(filter));
        self.charge.resize(self.bytes);
        Some(entry)
    }
}

impl Clone for Subscriptions {
    fn clone(&self) -> Self {
        match self {
            Subscriptions::Few(few) => Subscriptions::Few(few.clone()),
            Subscriptions::Many(many) => {
                let mut copy = Indexed::new(many.map.clone());
                // A copy is charged again, to the same monitor.
                copy.charge = many.charge.clone();
                Subscriptions::Many(copy)
            }
        }
    }
}

/// Bytes one indexed filter holds, estimated from what is allocated for it: the B-tree's entry
/// (the key, its heap bytes and the subscription, with a node's slack), the trie's copy of the
/// key under its pattern (an index-map slot and its hash) and, as a hostile client's filters
/// share no trie nodes, one node with its word for each level (a node is about 130 bytes: a
/// hash map, two boxes and an index map).
fn indexed_bytes(filter: &str) -> usize {
    const MAP_SLACK: usize = 16;
    const TRIE_SLOT: usize = 16;
    const NODE: usize = 160;
    let key = std::mem::size_of::<String>() + filter.len();
    let levels = filter.split('/').count();
    key + std::mem::size_of::<SubscriptionEntry>()
        + MAP_SLACK
        + key
        + TRIE_SLOT
        + levels * NODE
        + filter.len()
}

/// The trie pattern a subscription key is indexed under: its filter (a shared
/// subscription's inner filter) as an AMQP pattern.
fn index_pattern(key: &str) -> String {
    filter_to_pattern(inner_filter(key))
}

/// A subscription key's filter: a shared subscription's inner filter, else the key itself.
fn inner_filter(key: &str) -> &str {
    match switchboard_mqtt::topic::split_shared(key) {
        Ok(Some((_, inner))) => inner,
        _ => key,
    }
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::Few(Vec::new())
    }
}

impl PartialEq for Subscriptions {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Subscriptions {}

impl Subscriptions {
    /// The most subscriptions kept in the sorted `Vec`.
    const FEW: usize = 32;

    /// Adds or replaces the subscription for `filter`; the one replaced, if any.
    pub fn insert(
        &mut self,
        filter: String,
        entry: SubscriptionEntry,
    ) -> Option<SubscriptionEntry> {
        let few = match self {
            Subscriptions::Many(many) => return many.insert(filter, entry),
            Subscriptions::Few(few) => few,
        };
        match few.binary_search_by(|(f, _)| f.as_str().cmp(&filter)) {
            Ok(i) => Some(std::mem::replace(&mut few[i].1, entry)),
            Err(_) if few.len() >= Self::FEW => {
                let mut map: BTreeMap<String, SubscriptionEntry> =
                    std::mem::take(few).into_iter().collect();
                map.insert(filter, entry);
                *self = Subscriptions::Many(Indexed::new(map));
                None
            }
            Err(i) => {
                if few.is_empty() {
                    // Exactly one slot: most sessions never subscribe to a second filter.
                    few.reserve_exact(1);
                }
                few.insert(i, (filter, entry));
                None
            }
        }
    }

    pub fn get(&self, filter: &str) -> Option<&SubscriptionEntry> {
        match self {
            Subscriptions::Few(few) => few
                .binary_search_by(|(f, _)| f.as_str().cmp(filter))
                .ok()
                .map(|i| &few[i].1),
            Subscriptions::Many(many) => many.map.get(filter),
        }
    }

    pub fn remove(&mut self, filter: &str) -> Option<SubscriptionEntry> {
        match self {
            Subscriptions::Few(few) => {
                let i = few.binary_search_by(|(f, _)| f.as_str().cmp(filter)).ok()?;
                let (_, entry) = few.remove(i);
                if few.is_empty() {
                    // Give the allocation back: the session may stay around idle.
                    *few = Vec::new();
                }
                Some(entry)
            }
            Subscriptions::Many(many) => many.remove(filter),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Subscriptions::Few(few) => few.len(),
            Subscriptions::Many(many) => many.map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> SubscriptionsIter<'_> {
        match self {
            Subscriptions::Few(few) => SubscriptionsIter::Few(few.iter()),
            Subscriptions::Many(many) => SubscriptionsIter::Many(many.map.iter()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(f, _)| f)
    }

    /// Up to `n` filters in filter order after `after` (from the first without it): a
    /// session's filters read a slice at a time, each slice costing O(log n + slice).
    pub fn keys_after(&self, after: Option<&str>, n: usize) -> Vec<String> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, Excluded);
        match self {
            Subscriptions::Few(few) => few
                .iter()
                .map(|(f, _)| f)
                .filter(|f| after.is_none_or(|a| f.as_str() > a))
                .take(n)
                .cloned()
                .collect(),
            Subscriptions::Many(many) => many
                .map
                .range::<str, _>((start, Unbounded))
                .take(n)
                .map(|(f, _)| f.clone())
                .collect(),
        }
    }

    /// The keys of shared subscriptions (`$share/...`): they sort together, so past
    /// [`Subscriptions::FEW`] finding them costs O(log n) plus the shared ones, not a pass over
    /// every filter on each resume.
    pub fn shared_keys(&self) -> Vec<String> {
        use std::ops::Bound::{Included, Unbounded};
        match self {
            Subscriptions::Few(few) => few
                .iter()
                .map(|(f, _)| f)
                .filter(|f| is_shared(f))
                .cloned()
                .collect(),
            Subscriptions::Many(many) => many
                .map
                .range::<str, _>((Included(SHARED_KEY_PREFIX), Unbounded))
                .map(|(f, _)| f)
                .take_while(|f| is_shared(f))
                .cloned()
                .collect(),
        }
    }

    /// Charges the index (past [`Subscriptions::FEW`]) to `memory`, from now on as it grows
    /// and shrinks; the few kept in a `Vec` are the session's own small state. Cheap to call
    /// again: a charge already made is kept.
    pub fn charge_to(&mut self, memory: &Arc<MemoryMonitor>) {
        if let Subscriptions::Many(many) = self {
            if many.charge.bytes() != many.bytes {
                many.charge = memory.charge(many.bytes);
            }
        }
    }

    /// Bytes the index holds (see [`Subscriptions::charge_to`]); 0 for the few.
    pub fn index_bytes(&self) -> usize {
        match self {
            Subscriptions::Few(_) => 0,
            Subscriptions::Many(many) => many.bytes,
        }
    }

    /// Calls `f` with every subscription (key, entry) whose filter (a shared one's inner
    /// filter) matches `topic` under MQTT's rules. Past [`Subscriptions::FEW`] only the
    /// filters the trie finds for the topic are tested, so the cost is that of the matching
    /// filters (and the trie nodes on their paths), not of every filter.
    pub fn for_each_match<'a>(
        &'a self,
        topic: &str,
        mut f: impl FnMut(&'a String, &'a SubscriptionEntry),
    ) {
        let matches = |key: &str| filter_matches(inner_filter(key), topic);
        match self {
            Subscriptions::Few(few) => {
                for (key, entry) in few {
                    if matches(key) {
                        f(key, entry);
                    }
                }
            }
            Subscriptions::Many(many) => {
                let (map, trie) = (&many.map, &many.trie);
                // The trie's AMQP matching finds a superset (it knows no `$` rule, and reads a
                // literal `*` in a filter as a wildcard): MQTT's matcher has the last word.
                let mut found: Vec<&'a String> = Vec::new();
                trie.for_each_match(&topic_to_key(topic), |key| found.push(key));
                // In filter order, as the `Vec` and an unindexed scan give them.
                found.sort_unstable();
                for key in found {
                    if let Some(entry) = map.get(key) {
                        if matches(key) {
                            f(key, entry);
                        }
                    }
                }
            }
        }
    }
}

/// [`Subscriptions::iter`]: (filter, subscription) in filter order.
pub enum SubscriptionsIter<'a> {
    Few(std::slice::Iter<'a, (String, SubscriptionEntry)>),
    Many(std::collections::btree_map::Iter<'a, String, SubscriptionEntry>),
}

impl<'a> Iterator for SubscriptionsIter<'a> {
    type Item = (&'a String, &'a SubscriptionEntry);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SubscriptionsIter::Few(it) => it.next().map(|(f, e)| (f, e)),
            SubscriptionsIter::Many(it) => it.next(),
        }
    }
}

/// A message on its way to the client, in MQTT terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Its topic and v5 properties as every subscriber gets them, shared with the core
    /// message it was delivered from and with that message's other subscribers: a delivery
    /// copies neither (building them per delivery, with an owned copy of the properties, was
    /// a good part of a QoS 1 delivery's instructions). Its topic is always known (see
    /// [`OutboundMessage::of_form`]).
    form: Arc<MqttForm>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The v5 Subscription Identifiers of this subscriber's subscriptions it matched, sent
    /// with it (they are per subscriber, so not part of the shared properties).
    pub identifiers: Vec<u32>,
    /// When the message expires (v5 Message Expiry Interval), if it does.
    pub expires_at: Option<SystemTime>,
    /// Charged to the memory monitor while a session keeps the message (waiting or in
    /// flight); the payload is shared with the core message but outlives it there.
    pub charge: MemoryCharge,
    /// The session queue's id for the message (None for retained messages and shared
    /// groups' deliveries): settled once its flow completes or it is dropped, so until then
    /// it stays in the queue, and in the message log.
    pub delivery: Option<u64>,
}

impl OutboundMessage {
    /// A message the adapter keeps itself (retained, a will, restored from a record), with
    /// its own topic and properties (v5 properties to send: the Message Expiry Interval is
    /// recomputed when sent).
    pub fn new(
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
        expires_at: Option<SystemTime>,
    ) -> Self {
        let form = MqttForm::kept(properties, topic, qos, retain);
        OutboundMessage::of_form(Arc::new(form), payload, qos, retain, expires_at)
    }

    /// A message sharing `form`.
    pub fn of_form(
        form: Arc<MqttForm>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        expires_at: Option<SystemTime>,
    ) -> Self {
        OutboundMessage {
            form,
            payload,
            qos,
            retain,
            identifiers: Vec::new(),
            expires_at,
            charge: MemoryCharge::default(),
            delivery: None,
        }
    }

    pub fn topic(&self) -> &str {
        &self.form.meta().topic
    }

    /// The v5 properties as kept, without this subscriber's identifiers or a topic alias.
    pub fn properties(&self) -> &Properties {
        &self.form.properties
    }

    /// Seconds left before expiry, `None` when it never expires, `Some(0)` when expired.
    pub fn remaining_expiry(&self, now: SystemTime) -> Option<u32> {
        let at = self.expires_at?;
        let left = at.duration_since(now).map(|d| d.as_secs()).unwrap_or(0);
        Some(u32::try_from(left).unwrap_or(u32::MAX))
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Bytes the message holds as a session keeps it: its slot in the in-flight map and its
    /// box, topic, payload and the v5 properties' strings (shared with the core message, but
    /// kept alive by the session once the queue lets go of that).
    pub fn footprint(&self) -> usize {
        let p = self.properties();
        let strings = [&p.content_type, &p.response_topic]
            .into_iter()
            .flatten()
            .map(|s| string_heap_size(s))
            .sum::<usize>()
            + p.user_properties
                .iter()
                .map(|(k, v)| {
                    string_heap_size(k)
                        + string_heap_size(v)
                        + std::mem::size_of::<(String, String)>()
                })
                .sum::<usize>();
        std::mem::size_of::<InFlight>()
            + std::mem::size_of::<OutboundMessage>()
            + std::mem::size_of::<u16>()
            + std::mem::size_of::<MqttForm>()
            + string_heap_size(&self.form.meta().topic)
            + self.payload.len()
            + p.correlation_data.as_ref().map_or(0, |c| c.len())
            + strings
    }
}

/// An outbound QoS 1/2 message the client has not yet completed.
///
/// Boxed: the in-flight map's B-tree nodes shift their entries on every insert and remove,
/// once per QoS 1 message, and a whole message (its properties above all) is some hundreds of
/// bytes to move where a pointer is eight; that shifting was about 2,500 instructions per
/// message under a saturating QoS 1 publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub message: Box<OutboundMessage>,
}

impl InFlight {
    pub fn new(message: OutboundMessage) -> Self {
        InFlight {
            message: Box::new(message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub client_id: String,
    pub vhost: String,
    /// The queue the session's subscriptions are bound to.
    pub queue: String,
    pub subscriptions: Subscriptions,
    /// Inbound QoS 2 packet ids PUBREC'd and not yet released: a re-sent PUBLISH with one of
    /// these ids is not routed again.
    pub inbound_qos2: BTreeSet<u16>,
    /// Outbound QoS 1/2 messages by packet id, resent (with DUP) when the client reconnects.
    pub in_flight: BTreeMap<u16, InFlight>,
    /// Outbound QoS 2 packet ids PUBREC'd (the message is settled) awaiting PUBCOMP: PUBREL is
    /// sent again on reconnect. They hold in-flight slots until completed.
    pub released: BTreeSet<u16>,
    /// After a restart: the packet id each QoS 2 message in flight before it had, by its id
    /// in the session queue, so its redelivery reuses the id (the client then recognises a
    /// duplicate).
    pub resumed_ids: BTreeMap<u64, u16>,
    /// Session queue deliveries dropped (expired, too large, unsubscribed, over the limit)
    /// and to be settled by the connection, outside the queue's lock.
    pub to_settle: Vec<u64>,
    /// The in-flight state changed in a way the session's record keeps (outbound QoS 2).
    pub record_stale: bool,
    /// Encoded PUBLISH packets of QoS 2 messages sent under packet ids the session's record
    /// does not hold yet: they go to the client once a record holding them is durable (and
    /// clustered, committed), so that after a crash, or on another node, the message comes
    /// again under the id the client may have taken it under, and the client knows it for
    /// a duplicate. Sent at once, a new id would make it a new message to the client.
    pub unrecorded_publishes: bytes::BytesMut,
    /// The session has a record in the log (it is, or was, persistent).
    pub recorded: bool,
    /// When the client went away (seconds since the epoch): expiry counts from it, also
    /// across restarts.
    pub disconnected_at: Option<u64>,
    /// Messages waiting for an in-flight slot, or for the client to come back (bounded).
    pub pending: VecDeque<OutboundMessage>,
    /// Messages dropped from `pending` because it was full (oldest first).
    pub dropped: u64,
    /// Session Expiry Interval in seconds (0: the session ends with its connection).
    pub expiry_interval: u32,
    next_packet_id: u16,
}

impl Session {
    pub fn new(client_id: String, vhost: String, queue: String) -> Self {
        Session {
            client_id,
            vhost,
            queue,
            subscriptions: Subscriptions::default(),
            inbound_qos2: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            released: BTreeSet::new(),
            resumed_ids: BTreeMap::new(),
            to_settle: Vec::new(),
            record_stale: false,
            unrecorded_publishes: bytes::BytesMut::new(),
            recorded: false,
            disconnected_at: None,
            pending: VecDeque::new(),
            dropped: 0,
            expiry_interval: 0,
            next_packet_id: 1,
        }
    }

    /// The next packet id not in flight. Callers keep `in_flight` below 65535 entries (the
    /// in-flight limit is a u16 receive maximum at most), so one is always free.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if id != 0
                && !self.in_flight.contains_key(&id)
                && !self.released.contains(&id)
                && !self.resumed_ids.values().any(|&r| r == id)
            {
                return id;
            }
        }
    }

    /// Outbound QoS 1/2 flows not yet complete (what the in-flight limit counts).
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len() + self.released.len()
    }

    /// A message the session will not send: its queue entry, if any, is to be settled.
    pub fn drop_message(&mut self, message: &OutboundMessage) {
        self.to_settle.extend(message.delivery);
    }

    /// Queues a message for later, dropping the oldest beyond `limit`.
    pub fn push_pending(&mut self, message: OutboundMessage, limit: usize) {
        self.pending.push_back(message);
        while self.pending.len() > limit {
            if let Some(m) = self.pending.pop_front() {
                self.drop_message(&m);
            }
            self.dropped += 1;
        }
    }

    /// The subscriptions matching `topic`, for one delivery: the highest QoS among them, their
    /// identifiers, and whether any asks to keep the retain flag. `None` when nothing matches
    /// (the message reached the queue through a binding that MQTT's rules do not match, such
    /// as `#` for a `$` topic, or a filter unsubscribed since it was queued).
    pub fn match_topic(&self, topic: &str, from_self: bool) -> Option<Matched> {
        let mut m: Option<Matched> = None;
        if let Subscriptions::Few(few) = &self.subscriptions {
            // The common case (one or a few filters) as cheap as a plain scan.
            for (filter, sub) in few {
                // Shared subscriptions deliver from their group's queue, not the session's.
                if is_shared(filter)
                    || (sub.options.no_local && from_self)
                    || !filter_matches(filter, topic)
                {
                    continue;
                }
                add_match(&mut m, sub);
            }
            return m;
        }
        self.subscriptions.for_each_match(topic, |filter, sub| {
            if !(is_shared(filter) || (sub.options.no_local && from_self)) {
                add_match(&mut m, sub);
            }
        });
        m
    }

    /// What the shared subscription `$share/<group>/<filter>` (`key`) asks for a message on
    /// `topic` delivered from its group's queue.
    pub fn match_shared(&self, key: &str, topic: &str) -> Option<Matched> {
        let sub = self.subscriptions.get(key)?;
        let (_, filter) = switchboard_mqtt::topic::split_shared(key).ok()??;
        if !switchboard_mqtt::topic::matches(filter, topic) {
            return None;
        }
        Some(Matched {
            qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            identifiers: sub.identifier.into_iter().collect(),
        })
    }

    /// Drops waiting messages that no subscription matches any more (after UNSUBSCRIBE), so
    /// that unsubscribing stops delivery at once.
    pub fn drop_unmatched_pending(&mut self) {
        // Nothing waits most of the time: listing every filter for each UNSUBSCRIBE made
        // unsubscribing n filters, a packet at a time, cost O(n²).
        if self.pending.is_empty() {
            return;
        }
        let subscriptions = &self.subscriptions;
        let mut dropped = Vec::new();
        self.pending.retain(|m| {
            let mut keep = false;
            subscriptions.for_each_match(m.topic(), |_, _| keep = true);
            if !keep {
                dropped.extend(m.delivery);
            }
            keep
        });
        self.to_settle.extend(dropped);
    }

    /// The shared subscriptions of the session, by key.
    pub fn shared_keys(&self) -> Vec<String> {
        self.subscriptions.shared_keys()
    }
}

const SHARED_KEY_PREFIX: &str = "$share/";
/// Queues of shared subscription groups are named `mqtt-shared-<group>/<filter>`: a group name
/// has no `/`, so the name is unambiguous.
pub const SHARED_QUEUE_PREFIX: &str = "mqtt-shared-";

pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARED_KEY_PREFIX)
}

/// The queue a shared subscription's group consumes from.
pub fn shared_queue_name(key: &str) -> Option<String> {
    key.strip_prefix(SHARED_KEY_PREFIX)
        .map(|rest| format!("{SHARED_QUEUE_PREFIX}{rest}"))
}

/// The subscription key (`$share/<group>/<filter>`) a shared group queue serves.
pub fn shared_key(queue_name: &str) -> Option<String> {
    queue_name
        .strip_prefix(SHARED_QUEUE_PREFIX)
        .map(|rest| format!("{SHARED_KEY_PREFIX}{rest}"))
}

/// Whether `topic` matches `filter` under MQTT's rules, a filter equal to the topic (the
/// commonest subscription) found by one comparison: a topic name holds no wildcard, so the
/// two are equal only for a filter that names exactly that topic. Splitting both into levels
/// for every delivery was most of a delivery's matching cost.
fn filter_matches(filter: &str, topic: &str) -> bool {
    filter == topic || switchboard_mqtt::topic::matches(filter, topic)
}

/// Adds one matching subscription to what a delivery asks for.
fn add_match(m: &mut Option<Matched>, sub: &SubscriptionEntry) {
    let e = m.get_or_insert(Matched::default());
    e.qos = e.qos.max(sub.options.qos);
    e.retain_as_published |= sub.options.retain_as_published;
    e.identifiers.extend(sub.identifier);
}

/// What the subscriptions matching one message ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matched {
    pub qos: QoS,
    pub retain_as_published: bool,
    pub identifiers: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(qos: QoS, identifier: Option<u32>) -> SubscriptionEntry {
        SubscriptionEntry {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            identifier,
        }
    }

    #[test]
    fn overlapping_subscriptions_give_max_qos_and_every_identifier() {
        let mut s = Session::new("c".into(), "/".into(), "q".into());
        s.subscriptions
            .insert("a/#".into(), sub(QoS::AtMostOnce, Some(1)));
        s.subscriptions
            .insert("a/+".into(), sub(QoS::ExactlyOnce, Some(2)));
        s.subscriptions
            .insert("b".into(), sub(QoS::AtLeastOnce, Some(3)));
        let m = s.match_topic("a/x", false).unwrap();
        assert_eq!(m.qos, QoS::ExactlyOnce);
        assert_eq!(m.identifiers, vec![1, 2]);
        assert!(s.match_topic("$SYS/x", false).is_none());
        assert!(s.match_topic("c", false).is_none());
    }

    #[test]
    fn indexed_filters_match_as_a_scan_does() {
        let mut s = Session::new("c".into(), "/".into(), "q".into());
        let filters = [
            "#",
            "+",
            "a",
            "a/#",
            "a/+",
            "a/b",
            "a/b/#",
            "+/b",
            "+/+",
            "a//b",
            "a/+/b",
            "$SYS/#",
            "$SYS/x",
            "+/x",
            "a.b/c",
            "a*/c",
            "a/*",
            "$share/g/a/b",
        ];
        for (i, f) in filters.iter().enumerate() {
            s.subscriptions
                .insert((*f).into(), sub(QoS::AtMostOnce, Some(i as u32)));
        }
        for i in 0..40 {
            s.subscriptions
                .insert(format!("pad/{i}/+"), sub(QoS::AtLeastOnce, None));
        }
        assert!(matches!(s.subscriptions, Subscriptions::Many(..)));
        let topics = [
            "a", "a/b", "a/b/c", "a//b", "a/x/b", "$SYS/x", "x", "/", "a.b/c", "a*/c", "a/*",
            "pad/3/z", "pad/3", "b",
        ];
        for topic in topics {
            let mut scanned: Option<Matched> = None;
            for (filter, e) in s.subscriptions.iter() {
                if !is_shared(filter) && switchboard_mqtt::topic::matches(filter, topic) {
                    add_match(&mut scanned, e);
                }
            }
            assert_eq!(s.match_topic(topic, false), scanned, "topic {topic}");
        }
        s.subscriptions.remove("a/#");
        s.subscriptions.remove("#");
        let m = s.match_topic("a/b/c", false).expect("a/b/# still matches");
        assert_eq!(m.identifiers, vec![6]);
        let copy = s.clone();
        assert_eq!(copy.match_topic("a/b/c", false), Some(m));
    }

    #[test]
    fn slices_and_shared_keys_come_in_filter_order_few_or_many() {
        for n in [5, 100] {
            let mut subs = Subscriptions::default();
            for i in 0..n {
                subs.insert(format!("t/{i:03}"), sub(QoS::AtMostOnce, None));
            }
            subs.insert("$share/g/a".into(), sub(QoS::AtMostOnce, None));
            subs.insert("$share/h/b/#".into(), sub(QoS::AtMostOnce, None));
            subs.insert("$sharp".into(), sub(QoS::AtMostOnce, None));
            subs.insert("#".into(), sub(QoS::AtMostOnce, None));
            assert_eq!(subs.shared_keys(), vec!["$share/g/a", "$share/h/b/#"]);
            let mut read = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let slice = subs.keys_after(after.as_deref(), 7);
                let Some(last) = slice.last().cloned() else {
                    break;
                };
                assert!(slice.len() <= 7);
                read.extend(slice);
                after = Some(last);
            }
            let all: Vec<String> = subs.keys().cloned().collect();
            assert_eq!(read, all, "{n} filters read a slice at a time");
        }
    }

    #[test]
    fn the_index_is_charged_to_the_memory_monitor() {
        let memory = MemoryMonitor::new(0);
        let mut subs = Subscriptions::default();
        subs.charge_to(&memory);
        for i in 0..Subscriptions::FEW {
            subs.insert(format!("few/{i}"), sub(QoS::AtMostOnce, None));
        }
        assert_eq!(memory.used(), 0, "a few are the session's own state");
        for i in 0..100 {
            subs.insert(format!("many/{i}/+/x"), sub(QoS::AtMostOnce, None));
        }
        // Indexed before the monitor is known (a session restored, say): charged once it is.
        assert_eq!(memory.used(), 0);
        subs.charge_to(&memory);
        let charged = memory.used();
        assert_eq!(charged, subs.index_bytes());
        assert!(charged > 132 * 200, "{charged} bytes for 132 filters");
        subs.insert("one/more".into(), sub(QoS::AtMostOnce, None));
        assert!(memory.used() > charged, "grows as filters come");
        subs.charge_to(&memory);
        assert_eq!(memory.used(), subs.index_bytes(), "charged once");
        let copy = subs.clone();
        assert_eq!(
            memory.used(),
            2 * subs.index_bytes(),
            "a copy is charged too"
        );
        drop(copy);
        let keys: Vec<String> = subs.keys().cloned().collect();
        for k in &keys {
            subs.remove(k);
        }
        assert_eq!(memory.used(), 0, "released as filters go");
        subs.insert("again".into(), sub(QoS::AtMostOnce, None));
        assert!(memory.used() > 0);
        drop(subs);
        assert_eq!(memory.used(), 0, "released with the session");
    }

    #[test]
    fn no_local_skips_own_messages() {
        let mut s = Session::new("c".into(), "/".into(), "q".into());
        let mut e = sub(QoS::AtLeastOnce, None);
        e.options.no_local = true;
        s.subscriptions.insert("t".into(), e);
        assert!(s.match_topic("t", true).is_none());
        assert!(s.match_topic("t", false).is_some());
    }

    #[test]
    fn pending_drops_oldest_beyond_limit() {
        let mut s = Session::new("c".into(), "/".into(), "q".into());
        for i in 0..5u8 {
            s.push_pending(
                OutboundMessage {
                    delivery: Some(u64::from(i)),
                    ..OutboundMessage::new(
                        "t".into(),
                        Bytes::from(vec![i]),
                        QoS::AtLeastOnce,
                        false,
                        Properties::default(),
                        None,
                    )
                },
                3,
            );
        }
        assert_eq!(s.dropped, 2);
        assert_eq!(s.to_settle, vec![0, 1], "dropped queue entries are settled");
        let first: Vec<u8> = s.pending.iter().map(|m| m.payload[0]).collect();
        assert_eq!(first, vec![2, 3, 4]);
    }

    #[test]
    fn unsubscribing_drops_waiting_messages_for_the_filter() {
        let mut s = Session::new("c".into(), "/".into(), "q".into());
        s.subscriptions
            .insert("a/#".into(), sub(QoS::AtLeastOnce, None));
        s.subscriptions
            .insert("$share/g/b".into(), sub(QoS::AtLeastOnce, None));
        for topic in ["a/1", "b", "c"] {
            s.push_pending(
                OutboundMessage::new(
                    topic.into(),
                    Bytes::new(),
                    QoS::AtLeastOnce,
                    false,
                    Properties::default(),
                    None,
                ),
                10,
            );
        }
        s.drop_unmatched_pending();
        let left: Vec<&str> = s.pending.iter().map(|m| m.topic()).collect();
        assert_eq!(left, vec!["a/1", "b"]);
        s.subscriptions.remove("a/#");
        s.drop_unmatched_pending();
        assert_eq!(s.pending.len(), 1);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_zero() {
        let mut s = Session::new("c".into(), "/".into(), "q".into());
        s.next_packet_id = u16::MAX;
        assert_eq!(s.next_packet_id(), u16::MAX);
        let msg = OutboundMessage::new(
            "t".into(),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            Properties::default(),
            None,
        );
        s.in_flight.insert(1, InFlight::new(msg));
        assert_eq!(s.next_packet_id(), 2);
        s.released.insert(3);
        s.resumed_ids.insert(40, 4);
        assert_eq!(s.next_packet_id(), 5, "released and resumed ids are taken");
    }
}
