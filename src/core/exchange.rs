//! Exchanges and their bindings: direct, fanout, topic and headers.

use super::delayed::{DelayedHold, DELAYED_TYPE};
use super::hash::FastHashMap;
use super::headers::{HeadersSpec, InvalidXMatch};
use super::message::Message;
use super::queue::Queue;
use super::topic::TopicTrie;
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
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
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

/// What the exchange's routing index holds, per kind.
#[derive(Debug)]
enum Index {
    Direct(FastHashMap<String, Vec<Destination>>),
    /// Fanout routes to every binding in `all`.
    Fanout,
    Topic(TopicTrie<Destination>),
    /// Parsed headers specs, parallel to `all`.
    Headers(Vec<HeadersSpec>),
}

#[derive(Debug)]
struct BindingSet {
    all: Vec<Binding>,
    index: Index,
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
    bindings: RwLock<BindingSet>,
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
            bindings: RwLock::new(BindingSet {
                all: Vec::new(),
                index,
            }),
        }
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
        if set
            .all
            .iter()
            .any(|b| b.same(&destination, routing_key, arguments))
        {
            return Ok(false);
        }
        match &mut set.index {
            Index::Direct(map) => map
                .entry(routing_key.to_owned())
                .or_default()
                .push(destination.clone()),
            Index::Fanout => {}
            Index::Topic(trie) => {
                // Same destination under the same pattern with other arguments: the trie holds it
                // once, and `unbind` only removes it from the trie with its last binding.
                trie.insert(routing_key, destination.clone());
            }
            Index::Headers(specs) => specs.push(HeadersSpec::parse(arguments)?),
        }
        set.all.push(Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        });
        Ok(true)
    }

    /// Removes a binding; false if no such binding existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, args: &FieldTable) -> bool {
        let mut set = self.write();
        let Some(pos) = set
            .all
            .iter()
            .position(|b| b.same(destination, routing_key, args))
        else {
            return false;
        };
        set.all.remove(pos);
        let still_bound_same_key = set
            .all
            .iter()
            .any(|b| b.destination == *destination && b.routing_key == routing_key);
        match &mut set.index {
            Index::Direct(map) => {
                if let Some(v) = map.get_mut(routing_key) {
                    if let Some(i) = v.iter().position(|d| d == destination) {
                        v.remove(i);
                    }
                    if v.is_empty() {
                        map.remove(routing_key);
                    }
                }
            }
            Index::Fanout => {}
            Index::Topic(trie) => {
                if !still_bound_same_key {
                    trie.remove(routing_key, destination);
                }
            }
            Index::Headers(specs) => {
                specs.remove(pos);
            }
        }
        true
    }

    /// Removes every binding to `destination` (when a queue or exchange is deleted). Returns how
    /// many were removed.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let doomed: Vec<Binding> = self
            .read()
            .all
            .iter()
            .filter(|b| b.destination == *destination)
            .cloned()
            .collect();
        for b in &doomed {
            self.unbind(&b.destination, &b.routing_key, &b.arguments);
        }
        doomed.len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.read().all.clone()
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
                if let Some(v) = map.get(msg.routing_key.as_str()) {
                    v.iter().for_each(f);
                }
            }
            Index::Fanout => set.all.iter().for_each(|b| f(&b.destination)),
            Index::Topic(trie) => trie.for_each_match(&msg.routing_key, f),
            Index::Headers(specs) => {
                let headers = msg.properties.headers.as_ref();
                for (spec, b) in specs.iter().zip(&set.all) {
                    if spec.matches(headers) {
                        f(&b.destination);
                    }
                }
            }
        }
    }
}
