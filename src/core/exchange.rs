//! Exchanges and their bindings: direct, fanout, topic and headers.

use super::delayed::{DelayedHold, DELAYED_TYPE};
use super::hash::{FastHashMap, FastHasher};
use super::headers::{HeadersSpec, InvalidXMatch};
use super::message::Message;
use super::queue::Queue;
use super::stats::ExchangeCounters;
use super::topic::TopicTrie;
use indexmap::IndexMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use switchboard_amqp::FieldTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(q) => &q.name,
            Destination::Exchange(e) => &e.name,
        }
    }

    pub fn kind_str(&self) -> &'static str {
        match self {
            Destination::Queue(_) => "queue",
            Destination::Exchange(_) => "exchange",
        }
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Destination {}

impl std::hash::Hash for Destination {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// One binding from an exchange, as listed and as compared for unbind.
#[derive(Debug, Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

impl Binding {
    fn same(&self, dest: &Destination, key: &str, args: &FieldTable) -> bool {
        self.destination == *dest && self.routing_key == key && self.arguments == *args
    }
}

/// Destinations with how many bindings put them there: adding or removing one of N costs O(1),
/// where a list had to be scanned.
type DestinationCounts = IndexMap<Destination, u32, FastHasher>;

/// What the exchange's routing index holds, per kind.
#[derive(Debug)]
enum Index {
    Direct(FastHashMap<String, DestinationCounts>),
    /// Fanout routes to every binding in `all`.
    Fanout,
    /// Counts bindings itself: the same destination under the same pattern with other arguments
    /// (or a pattern that differs only in runs of `#`) stays until the last such binding goes.
    Topic(TopicTrie<Destination>),
    /// Parsed headers specs, parallel to `all`.
    Headers(Vec<HeadersSpec>),
}

#[derive(Debug)]
struct BindingSet {
    /// In no particular order (removal moves the last binding into the gap).
    all: Vec<Binding>,
    /// Where each destination's bindings are in `all`, by routing key: binding and unbinding
    /// look at that destination's bindings with that key only. Scanning every binding made
    /// connecting N MQTT clients O(N²); scanning one destination's made one MQTT session with N
    /// subscriptions O(N²).
    by_destination: FastHashMap<DestinationKey, Positions>,
    index: Index,
}

/// A destination's identity as a map key: its address, with the low bit set for an exchange
/// (`Arc`s are aligned, so the bit is free; the binding holds the `Arc`, so the address cannot
/// be reused while bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DestinationKey(usize);

impl Destination {
    fn key(&self) -> DestinationKey {
        match self {
            Destination::Queue(q) => DestinationKey(Arc::as_ptr(q) as usize),
            Destination::Exchange(e) => DestinationKey(Arc::as_ptr(e) as usize | 1),
        }
    }
}

/// One destination's positions in `all`: most destinations are bound once, and a map for each
/// would be an allocation per binding.
#[derive(Debug)]
enum Positions {
    One(usize),
    /// By routing key (several positions under one key only when their arguments differ).
    Many(FastHashMap<Box<str>, Vec<usize>>),
}

impl Positions {
    fn all(&self) -> Vec<usize> {
        match self {
            Positions::One(p) => vec![*p],
            Positions::Many(by_key) => by_key.values().flatten().copied().collect(),
        }
    }

    /// Adds `pos`, a binding with `key`; `all` gives the routing key at a position.
    fn add(&mut self, pos: usize, key: &str, all: &[Binding]) {
        match self {
            Positions::One(p) => {
                let mut by_key: FastHashMap<Box<str>, Vec<usize>> = FastHashMap::default();
                by_key.insert(all[*p].routing_key.as_str().into(), vec![*p]);
                by_key.entry(key.into()).or_default().push(pos);
                *self = Positions::Many(by_key);
            }
            Positions::Many(by_key) => by_key.entry(key.into()).or_default().push(pos),
        }
    }

    /// Removes `pos`, a binding with `key`; whether none are left.
    fn remove(&mut self, pos: usize, key: &str) -> bool {
        match self {
            Positions::One(p) => *p == pos,
            Positions::Many(by_key) => {
                if let Some(ps) = by_key.get_mut(key) {
                    ps.retain(|&i| i != pos);
                    if ps.is_empty() {
                        by_key.remove(key);
                    }
                }
                by_key.is_empty()
            }
        }
    }

    /// The binding with `key` at `from` moved to `to`.
    fn replace(&mut self, from: usize, to: usize, key: &str) {
        match self {
            Positions::One(p) if *p == from => *p = to,
            Positions::One(_) => {}
            Positions::Many(by_key) => {
                if let Some(i) = by_key
                    .get_mut(key)
                    .and_then(|ps| ps.iter_mut().find(|i| **i == from))
                {
                    *i = to;
                }
            }
        }
    }
}

impl BindingSet {
    /// The positions of `destination`'s bindings with `routing_key`.
    fn positions_with_key(&self, destination: &Destination, routing_key: &str) -> &[usize] {
        match self.by_destination.get(&destination.key()) {
            None => &[],
            Some(Positions::One(p)) if self.all[*p].routing_key == routing_key => {
                std::slice::from_ref(p)
            }
            Some(Positions::One(_)) => &[],
            Some(Positions::Many(by_key)) => by_key.get(routing_key).map_or(&[], Vec::as_slice),
        }
    }

    /// The position of an identical binding.
    fn find(
        &self,
        destination: &Destination,
        routing_key: &str,
        args: &FieldTable,
    ) -> Option<usize> {
        self.positions_with_key(destination, routing_key)
            .iter()
            .copied()
            .find(|&i| self.all[i].same(destination, routing_key, args))
    }

    fn push(&mut self, binding: Binding) {
        let pos = self.all.len();
        match self.by_destination.get_mut(&binding.destination.key()) {
            Some(ps) => ps.add(pos, &binding.routing_key, &self.all),
            None => {
                self.by_destination
                    .insert(binding.destination.key(), Positions::One(pos));
            }
        }
        self.all.push(binding);
    }

    /// Removes the binding at `pos`, moving the last one into its place (and the headers spec
    /// parallel to it).
    fn remove_at(&mut self, pos: usize) {
        let last = self.all.len() - 1;
        let doomed = &self.all[pos];
        let key = doomed.destination.key();
        if self
            .by_destination
            .get_mut(&key)
            .is_some_and(|ps| ps.remove(pos, &doomed.routing_key))
        {
            self.by_destination.remove(&key);
        }
        if pos != last {
            let moved = &self.all[last];
            if let Some(ps) = self.by_destination.get_mut(&moved.destination.key()) {
                ps.replace(last, pos, &moved.routing_key);
            }
        }
        self.all.swap_remove(pos);
        if let Index::Headers(specs) = &mut self.index {
            specs.swap_remove(pos);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    XMatch(#[from] InvalidXMatch),
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// For an `x-delayed-message` exchange (which routes as `kind`, its `x-delayed-type`): the
    /// messages held until their `x-delay` is over.
    pub delayed: Option<Arc<DelayedHold>>,
    /// Messages in and out, for `message_stats`.
    pub stats: ExchangeCounters,
    bindings: RwLock<BindingSet>,
    /// Set once it is taken out of its vhost: a publisher that kept it to skip the look-up by
    /// name looks it up again (and finds a successor, or nothing).
    gone: AtomicBool,
}

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(FastHashMap::default()),
            ExchangeKind::Fanout => Index::Fanout,
            ExchangeKind::Topic => Index::Topic(TopicTrie::new()),
            ExchangeKind::Headers => Index::Headers(Vec::new()),
        };
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            delayed: None,
            stats: ExchangeCounters::default(),
            bindings: RwLock::new(BindingSet {
                all: Vec::new(),
                by_destination: FastHashMap::default(),
                index,
            }),
            gone: AtomicBool::new(false),
        }
    }

    /// Whether it was deleted from its vhost (see [`Exchange::mark_gone`]).
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Records that the vhost no longer has it.
    pub(crate) fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
    }

    /// Makes this an `x-delayed-message` exchange holding delayed messages in `hold`.
    pub fn with_delay(mut self, hold: Arc<DelayedHold>) -> Self {
        self.delayed = Some(hold);
        self
    }

    /// The type as declared: `x-delayed-message` for a delayed exchange, else its kind.
    pub fn type_name(&self) -> &'static str {
        if self.delayed.is_some() {
            DELAYED_TYPE
        } else {
            self.kind.as_str()
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BindingSet> {
        self.bindings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BindingSet> {
        self.bindings.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a binding; Ok(false) if the identical binding already exists.
    pub fn bind(
        &self,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<bool, BindError> {
        let mut set = self.write();
        if set.find(&destination, routing_key, arguments).is_some() {
            return Ok(false);
        }
        match &mut set.index {
            Index::Direct(map) => {
                *map.entry(routing_key.to_owned())
                    .or_default()
                    .entry(destination.clone())
                    .or_insert(0) += 1;
            }
            Index::Fanout => {}
            Index::Topic(trie) => {
                trie.insert(routing_key, destination.clone());
            }
            Index::Headers(specs) => specs.push(HeadersSpec::parse(arguments)?),
        }
        set.push(Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        });
        Ok(true)
    }

    /// Removes a binding; false if no such binding existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, args: &FieldTable) -> bool {
        let mut set = self.write();
        let Some(pos) = set.find(destination, routing_key, args) else {
            return false;
        };
        set.remove_at(pos);
        match &mut set.index {
            Index::Direct(map) => {
                if let Some(counts) = map.get_mut(routing_key) {
                    if let Some(n) = counts.get_mut(destination) {
                        *n -= 1;
                        if *n == 0 {
                            counts.swap_remove(destination);
                        }
                    }
                    if counts.is_empty() {
                        map.remove(routing_key);
                    }
                }
            }
            Index::Fanout => {}
            Index::Topic(trie) => {
                trie.remove(routing_key, destination);
            }
            // `remove_at` removed its spec.
            Index::Headers(_) => {}
        }
        true
    }

    /// Removes every binding to `destination` (when a queue or exchange is deleted). Returns
    /// the bindings removed.
    pub fn unbind_destination(&self, destination: &Destination) -> Vec<Binding> {
        let doomed: Vec<Binding> = {
            let set = self.read();
            set.by_destination
                .get(&destination.key())
                .map(Positions::all)
                .unwrap_or_default()
                .into_iter()
                .map(|i| set.all[i].clone())
                .collect()
        };
        for b in &doomed {
            self.unbind(&b.destination, &b.routing_key, &b.arguments);
        }
        doomed
    }

    /// The bindings, by destination name and routing key (their order inside is arbitrary).
    pub fn bindings(&self) -> Vec<Binding> {
        let mut all = self.read().all.clone();
        all.sort_by(|a, b| {
            (a.destination.name(), &a.routing_key).cmp(&(b.destination.name(), &b.routing_key))
        });
        all
    }

    /// How many bindings lead from the exchange.
    pub fn binding_count(&self) -> usize {
        self.read().all.len()
    }

    pub fn has_bindings(&self) -> bool {
        !self.read().all.is_empty()
    }

    /// Calls `f` with each destination `msg` routes to (possibly with repeats), under the
    /// bindings' read lock: `f` must not bind or unbind.
    pub fn for_each_destination(&self, msg: &Message, mut f: impl FnMut(&Destination)) {
        let set = self.read();
        match &set.index {
            Index::Direct(map) => {
                if let Some(counts) = map.get(msg.routing_key.as_str()) {
                    counts.keys().for_each(f);
                }
            }
            Index::Fanout => set.all.iter().for_each(|b| f(&b.destination)),
            Index::Topic(trie) => trie.for_each_match(&msg.routing_key, f),
            Index::Headers(specs) => {
                let headers = msg.properties().headers.as_ref();
                for (spec, b) in specs.iter().zip(&set.all) {
                    if spec.matches(headers) {
                        f(&b.destination);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::memory::MemoryCharge;
    use bytes::Bytes;
    use switchboard_amqp::{BasicProperties, FieldValue};

    fn queue(name: &str) -> Arc<Queue> {
        Arc::new(Queue::new(
            name.into(),
            "/".into(),
            false,
            false,
            None,
            FieldTable::new(),
        ))
    }

    fn exchange(kind: ExchangeKind) -> Exchange {
        Exchange::new("x".into(), kind, false, false, false, FieldTable::new())
    }

    fn routed(ex: &Exchange, key: &str, headers: Option<FieldTable>) -> Vec<String> {
        let properties = BasicProperties {
            headers,
            ..Default::default()
        };
        let msg = Message::new(
            "x".into(),
            key.into(),
            properties,
            None,
            Bytes::new(),
            MemoryCharge::default(),
        );
        let mut names = Vec::new();
        ex.for_each_destination(&msg, |d| names.push(d.name().to_owned()));
        names.sort();
        names.dedup();
        names
    }

    fn header(key: &str, value: &str) -> FieldTable {
        FieldTable::from([(key.to_owned(), FieldValue::string(value))])
    }

    #[test]
    fn unbinding_moves_the_last_binding_and_keeps_each_headers_spec_with_its_binding() {
        let ex = exchange(ExchangeKind::Headers);
        let qs: Vec<Arc<Queue>> = (0..4).map(|i| queue(&format!("q{i}"))).collect();
        for (i, q) in qs.iter().enumerate() {
            let args = header("n", &i.to_string());
            assert!(ex.bind(Destination::Queue(q.clone()), "", &args).unwrap());
        }
        // Removing the first moves the last (q3) into its place: its spec must move with it.
        assert!(ex.unbind(&Destination::Queue(qs[0].clone()), "", &header("n", "0")));
        assert_eq!(routed(&ex, "", Some(header("n", "3"))), ["q3"]);
        assert_eq!(routed(&ex, "", Some(header("n", "1"))), ["q1"]);
        assert!(routed(&ex, "", Some(header("n", "0"))).is_empty());
        // A removed binding is gone; binding it again works once.
        assert!(!ex.unbind(&Destination::Queue(qs[0].clone()), "", &header("n", "0")));
        assert!(ex
            .bind(Destination::Queue(qs[0].clone()), "", &header("n", "0"))
            .unwrap());
        assert!(!ex
            .bind(Destination::Queue(qs[0].clone()), "", &header("n", "0"))
            .unwrap());
        assert_eq!(routed(&ex, "", Some(header("n", "0"))), ["q0"]);
        assert_eq!(ex.bindings().len(), 4);
    }

    #[test]
    fn removing_a_destination_removes_only_its_bindings_and_the_trie_keeps_shared_patterns() {
        let ex = exchange(ExchangeKind::Topic);
        let (a, b, c) = (queue("a"), queue("b"), queue("c"));
        let none = FieldTable::new();
        for (q, key) in [
            (&a, "s.*"),
            (&a, "t.#"),
            (&b, "s.*"),
            (&c, "t.#"),
            (&a, "u"),
        ] {
            assert!(ex.bind(Destination::Queue(q.clone()), key, &none).unwrap());
        }
        // The same pattern with other arguments: one trie entry, kept until the last goes.
        let args = header("k", "v");
        assert!(ex
            .bind(Destination::Queue(b.clone()), "s.*", &args)
            .unwrap());
        assert!(ex.unbind(&Destination::Queue(b.clone()), "s.*", &none));
        assert_eq!(routed(&ex, "s.x", None), ["a", "b"]);
        assert_eq!(
            ex.unbind_destination(&Destination::Queue(a.clone())).len(),
            3
        );
        assert_eq!(routed(&ex, "s.x", None), ["b"]);
        assert_eq!(routed(&ex, "t.x.y", None), ["c"]);
        assert!(routed(&ex, "u", None).is_empty());
        let listed: Vec<(String, String)> = ex
            .bindings()
            .iter()
            .map(|b| (b.destination.name().to_owned(), b.routing_key.clone()))
            .collect();
        assert_eq!(
            listed,
            [("b".into(), "s.*".into()), ("c".into(), "t.#".into())]
        );
    }
}
