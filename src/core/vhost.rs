//! A virtual host: its exchanges, queues and the bindings between them, and routing.

use super::dead_letter::{self, DeadLetter};
use super::delayed::{self, DelayedHold, HoldStore};
use super::error::{CoreError, CoreResult, ErrorKind};
use super::exchange::{Destination, Exchange, ExchangeKind};
use super::hash::FastDashMap;
use super::memory::{MemoryCharge, MemoryMonitor};
use super::message::Message;
use super::policy::Policies;
use super::queue::args::QueueArgs;
use super::queue::{ConnectionId, Queue, QueueEnv, QueueStore, RecoveredEntry};
use super::timer::Timer;
use super::topic;
use crate::store::definitions::{
    binding_key, encode, exchange_key, queue_key, table_text, BindingDef, ExchangeDef, QueueDef,
};
use crate::store::{kind, Store, VHostDefinitions};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use switchboard_amqp::{FieldTable, FieldValue};

/// Arguments that must match when a queue is redeclared (as RabbitMQ checks them).
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

/// Parameters of an exchange declaration.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// Parameters of a queue declaration.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    /// Empty: the server picks an `amq.gen-…` name.
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// What a queue declaration found or made.
#[derive(Debug, Clone)]
pub struct QueueDeclared {
    pub queue: Arc<Queue>,
    pub created: bool,
}

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    exchanges: FastDashMap<String, Arc<Exchange>>,
    queues: FastDashMap<String, Arc<Queue>>,
    /// Where durable definitions and persistent messages go; None for a memory-only vhost.
    store: Option<Arc<Store>>,
    /// Charged for messages durable queues read back from the store (set with `store`).
    store_memory: Option<Arc<MemoryMonitor>>,
    /// Off while definitions are being restored at start (nothing new to write).
    persisting: AtomicBool,
    /// Held while a definition change appends its record, after checking that the change still
    /// stands: two racing changes to one definition (a declare and a delete) then append their
    /// records in the order they took effect in memory.
    record_lock: Mutex<()>,
    /// The LSN of the last definition record appended: a reply promising a definition (a
    /// declare-ok, even for a definition another connection just made) waits until the log is
    /// durable up to it.
    definitions_lsn: AtomicU64,
    /// The timer and memory monitor queues use, once the vhost is attached to its broker.
    env: OnceLock<VHostEnv>,
    /// Configured policies: arguments for queues matching a pattern.
    policies: Arc<Policies>,
    /// Exclusive queues by owning connection, so that a closing connection finds its own
    /// without scanning every queue (which made closing N connections O(N²)).
    exclusive: Mutex<HashMap<ConnectionId, Vec<Arc<Queue>>>>,
    /// `server.topic_max_words`: the most words in a topic exchange's binding or routing key.
    topic_max_words: AtomicUsize,
}

/// What [`VHost::attach`] connects a vhost to.
#[derive(Debug, Clone)]
struct VHostEnv {
    me: Weak<VHost>,
    timer: Arc<Timer>,
    memory: Option<Arc<MemoryMonitor>>,
}

impl VHost {
    /// A vhost with the default exchange and the `amq.*` exchanges RabbitMQ pre-declares.
    pub fn new(name: &str) -> Self {
        let vh = VHost {
            name: name.to_owned(),
            exchanges: FastDashMap::default(),
            queues: FastDashMap::default(),
            store: None,
            store_memory: None,
            persisting: AtomicBool::new(false),
            record_lock: Mutex::new(()),
            definitions_lsn: AtomicU64::new(0),
            env: OnceLock::new(),
            policies: Arc::new(Policies::default()),
            exclusive: Mutex::new(HashMap::new()),
            topic_max_words: AtomicUsize::new(topic::DEFAULT_MAX_WORDS),
        };
        for (ename, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            vh.exchanges.insert(
                ename.to_owned(),
                Arc::new(Exchange::new(
                    ename.to_owned(),
                    kind,
                    true,
                    false,
                    false,
                    FieldTable::new(),
                )),
            );
        }
        vh
    }

    /// A memory-only vhost whose queues follow `policies`.
    pub fn with_policies(name: &str, policies: Arc<Policies>) -> Self {
        VHost {
            policies,
            ..VHost::new(name)
        }
    }

    /// A vhost whose durable definitions and persistent messages go to `store`, rebuilt from
    /// what the store recovered at `now` (the broker's clock); its queues follow `policies`.
    pub fn with_store(
        name: &str,
        store: Arc<Store>,
        policies: Arc<Policies>,
        defs: &VHostDefinitions,
        recovered: &mut crate::store::RecoveredLog,
        now: u64,
        memory: &Arc<super::memory::MemoryMonitor>,
    ) -> Self {
        let mut vh = VHost::with_policies(name, policies);
        vh.store = Some(store);
        vh.store_memory = Some(memory.clone());
        vh.restore(defs, recovered, now, memory);
        vh.persisting.store(true, Ordering::Release);
        vh
    }

    /// Connects the vhost and its queues to the broker's timer (TTL, `x-expires`) and memory
    /// monitor, and lets queues route their dead letters through it. Queues made later are
    /// connected as they are made.
    pub fn attach(self: &Arc<Self>, timer: Arc<Timer>, memory: Option<Arc<MemoryMonitor>>) {
        let env = VHostEnv {
            me: Arc::downgrade(self),
            timer,
            memory,
        };
        if self.env.set(env).is_ok() {
            for q in self.queues() {
                self.attach_queue(&q);
            }
            for ex in self.exchanges() {
                if let Some(hold) = &ex.delayed {
                    self.attach_hold(hold);
                }
            }
        }
    }

    fn attach_queue(&self, q: &Arc<Queue>) {
        if let Some(env) = self.env.get() {
            q.attach(QueueEnv {
                vhost: env.me.clone(),
                timer: env.timer.clone(),
                memory: env.memory.clone(),
            });
        }
    }

    /// Republishes messages that left `from` to its dead-letter exchange, with their `x-death`
    /// history. Called with no queue lock held. A missing dead-letter exchange drops them, and
    /// a queue the message would go round to again with no rejection on the way is skipped, as
    /// in RabbitMQ.
    pub fn dead_letter(&self, from: &Queue, dead: Vec<DeadLetter>) {
        let args = from.args();
        let Some(dlx) = args.dead_letter_exchange.as_deref() else {
            return;
        };
        let Some(exchange) = self.exchange(dlx) else {
            tracing::debug!(vhost = %self.name, queue = %from.name, exchange = dlx, "dead-letter exchange does not exist; dropping {} message(s)", dead.len());
            return;
        };
        let env = self.env.get();
        let now = env.map_or_else(
            || super::clock::Clock::now_ms(&super::clock::SystemClock),
            |e| e.timer.now_ms(),
        );
        let target = dead_letter::Target {
            queue: &from.name,
            exchange: dlx,
            routing_key: args.dead_letter_routing_key.as_deref(),
        };
        for d in dead {
            let charge = self.charge(d.message.body.len());
            let message = Arc::new(dead_letter::dead_lettered(&d, target, now, charge));
            for q in self.route(&exchange, &message) {
                if dead_letter::is_cycle(&message, &q.name) {
                    tracing::warn!(vhost = %self.name, queue = %q.name, "dead-letter cycle detected; dropping the message for this queue");
                    continue;
                }
                q.publish(message.clone());
            }
        }
    }

    fn restore(
        &self,
        defs: &VHostDefinitions,
        recovered: &mut crate::store::RecoveredLog,
        now: u64,
        memory: &Arc<super::memory::MemoryMonitor>,
    ) {
        let table = |s: &str, what: &str| {
            crate::store::definitions::text_table(s).unwrap_or_else(|e| {
                tracing::warn!(vhost = %self.name, "bad arguments for {what} in definitions: {e}");
                FieldTable::new()
            })
        };
        for e in &defs.exchanges {
            let spec = ExchangeSpec {
                name: e.name.clone(),
                kind: e.kind.clone(),
                durable: true,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: table(&e.arguments, &e.name),
            };
            if let Err(err) = self.declare_exchange(spec, false) {
                tracing::warn!(vhost = %self.name, exchange = %e.name, "cannot restore exchange: {err}");
            }
        }
        for qd in &defs.queues {
            if let Some(exchange) = qd.name.strip_prefix(delayed::HOLD_PREFIX) {
                self.restore_hold(exchange, qd.id, recovered);
                continue;
            }
            let queue = Arc::new(self.new_queue(
                QueueSpec {
                    name: qd.name.clone(),
                    durable: true,
                    exclusive: false,
                    auto_delete: qd.auto_delete,
                    arguments: table(&qd.arguments, &qd.name),
                },
                0,
                Some(qd.id),
            ));
            queue.recover_idle_since(&recovered.keyed);
            if let Some(rq) = recovered.queues.remove(&qd.id) {
                let budget = self
                    .store
                    .as_ref()
                    .map_or(u64::MAX, |s| s.queue_memory_budget);
                let mut in_memory = 0u64;
                let entries = rq
                    .messages
                    .into_iter()
                    .filter_map(|(seq, m)| {
                        let body_len = m.body.len() as u64;
                        let properties =
                            switchboard_amqp::BasicProperties::decode(&m.properties).ok()?;
                        // Paged-out messages still need their place: priority level and TTL.
                        let priority = properties.priority;
                        let expiration = properties.expiration.clone();
                        let message = if in_memory <= budget {
                            in_memory += Message::charge_size(m.body.len()) as u64;
                            let charge = memory.charge(Message::charge_size(m.body.len()));
                            // Copies, so that a few kept messages do not pin whole segment
                            // buffers in memory.
                            Some(Arc::new(Message::new(
                                m.exchange,
                                m.routing_key,
                                properties,
                                Some(bytes::Bytes::copy_from_slice(&m.properties)),
                                bytes::Bytes::copy_from_slice(&m.body),
                                charge,
                            )))
                        } else {
                            None
                        };
                        Some(RecoveredEntry {
                            seq,
                            at: m.at,
                            body_len,
                            message,
                            priority,
                            expiration,
                            expires_at: m.expires,
                        })
                    })
                    .collect();
                queue.recover(entries, rq.max_seq, now);
            }
            self.queues.insert(qd.name.clone(), queue);
        }
        for ex in self.exchanges() {
            if let (true, Some(hold)) = (ex.durable, &ex.delayed) {
                if hold.store_id().is_none() {
                    self.give_hold_store(hold, None);
                    if let (Some(store), Some(def)) = (&self.store, hold_def(&ex)) {
                        store.put(
                            kind::QUEUE,
                            &queue_key(&self.name, &def.name),
                            &encode(&def),
                        );
                    }
                }
            }
        }
        for b in &defs.bindings {
            let args = table(&b.arguments, &b.source);
            let r = if b.destination_type == "exchange" {
                self.bind_exchange(&b.destination, &b.source, &b.routing_key, &args)
            } else {
                self.bind_queue(&b.destination, &b.source, &b.routing_key, &args, 0)
            };
            if let Err(err) = r {
                tracing::warn!(vhost = %self.name, source = %b.source, destination = %b.destination, "cannot restore binding: {err}; its record is deleted");
                if let Some(store) = &self.store {
                    store.delete(kind::BINDING, &binding_key(&self.name, b));
                }
            }
        }
    }

    /// Gives a durable delayed exchange its recovered store id and held messages.
    fn restore_hold(&self, exchange: &str, id: u64, recovered: &mut crate::store::RecoveredLog) {
        let Some(hold) = self.exchange(exchange).and_then(|e| e.delayed.clone()) else {
            tracing::warn!(vhost = %self.name, exchange, "delayed messages of a missing delayed exchange are dropped");
            if let Some(store) = &self.store {
                let name = format!("{}{exchange}", delayed::HOLD_PREFIX);
                store.delete(kind::QUEUE, &queue_key(&self.name, &name));
            }
            return;
        };
        self.give_hold_store(&hold, Some(id));
        if let Some(rq) = recovered.queues.remove(&id) {
            hold.recover(rq);
        }
    }

    /// Makes a durable delayed exchange's hold persist its persistent messages, under `id` (a
    /// fresh random id when None).
    fn give_hold_store(&self, hold: &DelayedHold, id: Option<u64>) {
        if let Some(store) = &self.store {
            hold.set_store(HoldStore {
                log: store.log.clone(),
                id: id.unwrap_or_else(|| rand::rng().random()),
            });
        }
    }

    fn attach_hold(&self, hold: &Arc<DelayedHold>) {
        if let Some(env) = self.env.get() {
            hold.attach(env.me.clone(), env.timer.clone());
        }
    }

    /// Rewrites the live records of log segment `segment` held by this vhost's queues and
    /// delayed exchanges at the end of the log (compaction). Returns how many moved.
    pub fn relocate(&self, segment: u64) -> usize {
        let queues: usize = self.queues().iter().map(|q| q.relocate(segment)).sum();
        let holds: usize = self
            .exchanges()
            .iter()
            .filter_map(|e| e.delayed.as_ref())
            .map(|h| h.relocate(segment))
            .sum();
        queues + holds
    }

    /// The LSN of the last definition record appended (0: none). A reply that promises a
    /// definition is durable waits until the log is durable up to it.
    pub fn definitions_lsn(&self) -> u64 {
        self.definitions_lsn.load(Ordering::Acquire)
    }

    /// Waits until every definition change made so far is durable.
    pub async fn definitions_synced(&self) {
        if let Some(store) = &self.store {
            store.log.wait_synced(self.definitions_lsn()).await;
        }
    }

    /// Appends the record of a definition change if the vhost keeps durable definitions and
    /// `still_stands` (checked under the record lock, see `record_lock`).
    fn record(&self, still_stands: impl FnOnce() -> bool, write: impl FnOnce(&Store) -> u64) {
        let Some(store) = &self.store else {
            return;
        };
        if !self.persisting.load(Ordering::Acquire) {
            return;
        }
        let _held = self.record_lock.lock().unwrap_or_else(|e| e.into_inner());
        if still_stands() {
            let lsn = write(store);
            self.definitions_lsn.fetch_max(lsn, Ordering::AcqRel);
        }
    }

    /// Records a durable exchange that was just declared (and its delayed hold's store id).
    fn record_exchange(&self, ex: &Arc<Exchange>) {
        let current = || self.exchange(&ex.name).is_some_and(|e| Arc::ptr_eq(&e, ex));
        self.record(current, |store| {
            let def = ExchangeDef {
                name: ex.name.clone(),
                kind: ex.type_name().to_owned(),
                auto_delete: ex.auto_delete,
                internal: ex.internal,
                arguments: table_text(&ex.arguments),
            };
            let mut lsn = store.put(
                kind::EXCHANGE,
                &exchange_key(&self.name, &ex.name),
                &encode(&def),
            );
            if let Some(hold) = hold_def(ex) {
                lsn = store.put(
                    kind::QUEUE,
                    &queue_key(&self.name, &hold.name),
                    &encode(&hold),
                );
            }
            lsn
        });
    }

    /// Deletes the records of a durable exchange that was just removed: its own, its delayed
    /// hold's and those of the bindings from it (bindings to it are handled as a destination's).
    fn record_exchange_gone(&self, ex: &Arc<Exchange>) {
        if !ex.durable {
            return;
        }
        self.record(
            || true,
            |store| {
                let mut lsn = store.delete(kind::EXCHANGE, &exchange_key(&self.name, &ex.name));
                let hold = format!("{}{}", delayed::HOLD_PREFIX, ex.name);
                lsn = lsn.max(store.delete(kind::QUEUE, &queue_key(&self.name, &hold)));
                for b in ex.bindings() {
                    if Self::destination_durable(&b.destination) {
                        let def = binding_def(&ex.name, &b);
                        lsn = lsn.max(store.delete(kind::BINDING, &binding_key(&self.name, &def)));
                    }
                }
                lsn
            },
        );
    }

    /// Records a durable queue that was just declared.
    fn record_queue(&self, q: &Arc<Queue>) {
        let Some(id) = q.store_id() else {
            return;
        };
        let current = || self.queue(&q.name).is_some_and(|e| Arc::ptr_eq(&e, q));
        self.record(current, |store| {
            let def = QueueDef {
                name: q.name.clone(),
                id,
                auto_delete: q.auto_delete,
                arguments: table_text(&q.arguments),
            };
            store.put(kind::QUEUE, &queue_key(&self.name, &q.name), &encode(&def))
        });
    }

    /// Deletes the record of a durable queue that was just removed.
    fn record_queue_gone(&self, q: &Arc<Queue>) {
        if q.store_id().is_none() {
            return;
        }
        self.record(
            || true,
            |store| store.delete(kind::QUEUE, &queue_key(&self.name, &q.name)),
        );
    }

    /// Records a new binding from `source` if both ends are durable and still in the vhost.
    fn record_binding(&self, source: &Arc<Exchange>, binding: &super::exchange::Binding) {
        if !(source.durable && Self::destination_durable(&binding.destination)) {
            return;
        }
        let current = || {
            let source_here = self
                .exchange(&source.name)
                .is_some_and(|e| Arc::ptr_eq(&e, source));
            let destination_here = match &binding.destination {
                Destination::Queue(q) => self.queue(&q.name).is_some_and(|e| Arc::ptr_eq(&e, q)),
                Destination::Exchange(x) => {
                    self.exchange(&x.name).is_some_and(|e| Arc::ptr_eq(&e, x))
                }
            };
            source_here && destination_here
        };
        self.record(current, |store| {
            let def = binding_def(&source.name, binding);
            store.put(kind::BINDING, &binding_key(&self.name, &def), &encode(&def))
        });
    }

    /// Deletes the records of bindings from `source` that were just removed.
    fn record_bindings_gone(&self, source: &Exchange, removed: &[super::exchange::Binding]) {
        if !source.durable {
            return;
        }
        self.record(
            || true,
            |store| {
                let mut lsn = 0;
                for b in removed {
                    if Self::destination_durable(&b.destination) {
                        let def = binding_def(&source.name, b);
                        lsn = lsn.max(store.delete(kind::BINDING, &binding_key(&self.name, &def)));
                    }
                }
                lsn
            },
        );
    }

    /// Applies the policies in force now to every queue of the vhost, as RabbitMQ does when a
    /// policy is set or cleared: each queue's arguments become its declared ones over the
    /// matching policy (or just its declared ones when none matches any more).
    pub fn apply_policies(&self) {
        for q in self.queues() {
            let policy = self.policies.for_queue(&self.name, &q.name);
            let args = QueueArgs::parse(&q.arguments, policy.as_ref().map(|p| &p.definition))
                .unwrap_or_default();
            q.set_args(args);
        }
    }

    /// A new queue object for `spec` (not yet in the vhost). Durable, non-exclusive queues of a
    /// vhost with a store write persistent messages to the log under `id` (a fresh random id
    /// when None).
    fn new_queue(&self, spec: QueueSpec, conn: ConnectionId, id: Option<u64>) -> Queue {
        let exclusive = spec.exclusive;
        let policy = self.policies.for_queue(&self.name, &spec.name);
        let args = QueueArgs::parse(&spec.arguments, policy.as_ref().map(|p| &p.definition))
            .unwrap_or_default();
        let queue = Queue::new(
            spec.name,
            self.name.clone(),
            spec.durable,
            spec.auto_delete,
            exclusive.then_some(conn),
            spec.arguments,
        )
        .with_args(args);
        match (&self.store, &self.store_memory) {
            (Some(store), Some(memory)) if spec.durable && !exclusive => {
                queue.with_store(QueueStore {
                    log: store.log.clone(),
                    id: id.unwrap_or_else(|| rand::rng().random()),
                    memory_budget: store.queue_memory_budget,
                    memory: memory.clone(),
                })
            }
            _ => queue,
        }
    }

    fn destination_durable(dest: &Destination) -> bool {
        match dest {
            Destination::Queue(q) => q.durable && q.exclusive_owner.is_none(),
            Destination::Exchange(e) => e.durable,
        }
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|e| e.clone())
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        let mut v: Vec<_> = self.exchanges.iter().map(|e| e.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<_> = self.queues.iter().map(|q| q.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn exchange_or_404(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        self.exchange(name)
            .ok_or_else(|| CoreError::not_found("exchange", name, &self.name))
    }

    /// Looks a queue up for use by `conn`: 404 if missing, 405 if another connection owns it.
    pub fn queue_for(&self, name: &str, conn: ConnectionId) -> CoreResult<Arc<Queue>> {
        let q = self
            .queue(name)
            .ok_or_else(|| CoreError::not_found("queue", name, &self.name))?;
        self.check_exclusive(&q, conn)?;
        Ok(q)
    }

    fn check_exclusive(&self, q: &Queue, conn: ConnectionId) -> CoreResult<()> {
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked(&q.name)),
            _ => Ok(()),
        }
    }

    fn locked(&self, name: &str) -> CoreError {
        CoreError::new(
            ErrorKind::ResourceLocked,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could \
                 be originally declared on another connection or the exclusive property value \
                 does not match that of the original declaration.",
                self.name
            ),
        )
    }

    // ---- exchanges ----

    pub fn declare_exchange(&self, spec: ExchangeSpec, passive: bool) -> CoreResult<Arc<Exchange>> {
        if passive {
            return self.exchange_or_404(&spec.name);
        }
        let delayed = spec.kind == delayed::DELAYED_TYPE;
        let kind = if delayed {
            // As the delayed-message plugin: the routing type is an argument.
            spec.arguments
                .get(delayed::DELAYED_TYPE_ARG)
                .and_then(FieldValue::as_str)
                .and_then(ExchangeKind::parse)
                .ok_or_else(|| {
                    CoreError::precondition(
                        "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                    )
                })?
        } else {
            // RabbitMQ 3.13+ answers a channel-level 406 here (older releases closed the
            // connection with 503), and clients' test suites expect the newer answer.
            ExchangeKind::parse(&spec.kind).ok_or_else(|| {
                CoreError::precondition(format!("invalid exchange type '{}'", spec.kind))
            })?
        };
        if let Some(existing) = self.exchange(&spec.name) {
            let mismatch = |field: &str, got: &str, have: &str| {
                CoreError::precondition(format!(
                    "inequivalent arg '{field}' for exchange '{}' in vhost '{}': received '{got}' \
                     but current is '{have}'",
                    spec.name, self.name
                ))
            };
            let type_name = if delayed {
                delayed::DELAYED_TYPE
            } else {
                kind.as_str()
            };
            if existing.type_name() != type_name {
                return Err(mismatch("type", type_name, existing.type_name()));
            }
            if existing.kind != kind {
                return Err(mismatch(
                    delayed::DELAYED_TYPE_ARG,
                    kind.as_str(),
                    existing.kind.as_str(),
                ));
            }
            for (field, got, have) in [
                ("durable", spec.durable, existing.durable),
                ("auto_delete", spec.auto_delete, existing.auto_delete),
                ("internal", spec.internal, existing.internal),
            ] {
                if got != have {
                    return Err(mismatch(field, &got.to_string(), &have.to_string()));
                }
            }
            return Ok(existing);
        }
        if spec.name.starts_with("amq.") {
            return Err(CoreError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        let mut ex = Exchange::new(
            spec.name.clone(),
            kind,
            spec.durable,
            spec.auto_delete,
            spec.internal,
            spec.arguments,
        );
        if delayed {
            let hold = DelayedHold::new(spec.name.clone());
            // While definitions are restored, the store id comes from them instead.
            if spec.durable && self.persisting.load(Ordering::Acquire) {
                self.give_hold_store(&hold, None);
            }
            self.attach_hold(&hold);
            ex = ex.with_delay(hold);
        }
        let ex = Arc::new(ex);
        // Two declarations may race: the first one in wins, the other gets it back.
        let winner = self
            .exchanges
            .entry(spec.name)
            .or_insert(ex.clone())
            .clone();
        if Arc::ptr_eq(&winner, &ex) && ex.durable {
            self.record_exchange(&ex);
        }
        Ok(winner)
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        // RabbitMQ's words for both refusals.
        if name.is_empty() {
            return Err(CoreError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with("amq.") {
            return Err(CoreError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let Some(ex) = self.exchange(name) else {
            // Deleting what is not there succeeds, as in RabbitMQ.
            return Ok(());
        };
        if if_unused && ex.has_bindings() {
            return Err(CoreError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.exchanges.remove(name);
        if let Some(hold) = &ex.delayed {
            hold.delete();
        }
        self.remove_bindings_to(&Destination::Exchange(ex.clone()));
        self.record_exchange_gone(&ex);
        Ok(())
    }

    /// Unbinds `dest` from every exchange, then deletes auto-delete exchanges left unbound.
    fn remove_bindings_to(&self, dest: &Destination) {
        let sources: Vec<Arc<Exchange>> = self.exchanges.iter().map(|e| e.clone()).collect();
        for src in sources {
            let removed = src.unbind_destination(dest);
            if !removed.is_empty() {
                self.record_bindings_gone(&src, &removed);
                self.maybe_auto_delete_exchange(&src);
            }
        }
    }

    fn maybe_auto_delete_exchange(&self, ex: &Arc<Exchange>) {
        if ex.auto_delete && !ex.has_bindings() {
            let removed = self
                .exchanges
                .remove_if(&ex.name, |_, e| Arc::ptr_eq(e, ex))
                .is_some();
            if removed {
                if let Some(hold) = &ex.delayed {
                    hold.delete();
                }
                self.remove_bindings_to(&Destination::Exchange(ex.clone()));
                self.record_exchange_gone(ex);
            }
        }
    }

    // ---- queues ----

    pub fn declare_queue(
        &self,
        spec: QueueSpec,
        passive: bool,
        conn: ConnectionId,
    ) -> CoreResult<QueueDeclared> {
        self.declare_queue_as(spec, passive, conn, false)
    }

    /// Declares a queue whose name the server generated beforehand with
    /// [`generate_name`]`("amq.gen-")` (so that permissions could be checked on it): the
    /// reserved `amq.` prefix is allowed for it, as for a name generated here.
    pub fn declare_server_named_queue(
        &self,
        spec: QueueSpec,
        conn: ConnectionId,
    ) -> CoreResult<QueueDeclared> {
        self.declare_queue_as(spec, false, conn, true)
    }

    fn declare_queue_as(
        &self,
        mut spec: QueueSpec,
        passive: bool,
        conn: ConnectionId,
        server_named: bool,
    ) -> CoreResult<QueueDeclared> {
        if passive {
            let queue = self.queue_for(&spec.name, conn)?;
            return Ok(QueueDeclared {
                queue,
                created: false,
            });
        }
        if spec.name.is_empty() {
            spec.name = generate_name("amq.gen-");
        } else if spec.name.starts_with("amq.") && !server_named {
            return Err(CoreError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        if let Some(existing) = self.queue(&spec.name) {
            self.check_queue_equivalent(&existing, &spec, conn)?;
            existing.touch();
            return Ok(QueueDeclared {
                queue: existing,
                created: false,
            });
        }
        QueueArgs::parse(&spec.arguments, None).map_err(|e| {
            CoreError::precondition(format!(
                "invalid arg '{}' for queue '{}' in vhost '{}': {}",
                e.key, spec.name, self.name, e.detail
            ))
        })?;
        let queue = Arc::new(self.new_queue(spec.clone(), conn, None));
        let entry = self
            .queues
            .entry(spec.name.clone())
            .or_insert(queue.clone());
        let winner = entry.clone();
        drop(entry);
        if Arc::ptr_eq(&winner, &queue) {
            self.attach_queue(&queue);
            self.note_exclusive(&queue);
            self.record_queue(&queue);
            Ok(QueueDeclared {
                queue,
                created: true,
            })
        } else {
            self.check_queue_equivalent(&winner, &spec, conn)?;
            Ok(QueueDeclared {
                queue: winner,
                created: false,
            })
        }
    }

    fn check_queue_equivalent(
        &self,
        q: &Queue,
        spec: &QueueSpec,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        self.check_exclusive(q, conn)?;
        if spec.exclusive != q.exclusive_owner.is_some() {
            return Err(self.locked(&q.name));
        }
        let mismatch = |field: &str, got: String, have: String| {
            CoreError::precondition(format!(
                "inequivalent arg '{field}' for queue '{}' in vhost '{}': received '{got}' but \
                 current is '{have}'",
                q.name, self.name
            ))
        };
        if spec.durable != q.durable {
            return Err(mismatch(
                "durable",
                spec.durable.to_string(),
                q.durable.to_string(),
            ));
        }
        if spec.auto_delete != q.auto_delete {
            return Err(mismatch(
                "auto_delete",
                spec.auto_delete.to_string(),
                q.auto_delete.to_string(),
            ));
        }
        for key in EQUIVALENT_QUEUE_ARGS {
            let (got, have) = (spec.arguments.get(*key), q.arguments.get(*key));
            if !args_equal(got, have) {
                return Err(mismatch(key, show_arg(got), show_arg(have)));
            }
        }
        Ok(())
    }

    /// Creates a server-internal queue (such as a direct reply-to queue) that is exclusive to
    /// `conn` and goes when it closes. Bypasses the `amq.` name check reserved for clients.
    pub fn create_private_queue(&self, name: String, conn: ConnectionId) -> Arc<Queue> {
        let queue = Arc::new(Queue::new(
            name.clone(),
            self.name.clone(),
            false,
            true,
            Some(conn),
            FieldTable::new(),
        ));
        self.queues.insert(name, queue.clone());
        self.attach_queue(&queue);
        self.note_exclusive(&queue);
        queue
    }

    fn exclusive_index(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Vec<Arc<Queue>>>> {
        self.exclusive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an exclusive queue under its owner, for [`connection_closed`](Self::connection_closed).
    fn note_exclusive(&self, q: &Arc<Queue>) {
        if let Some(owner) = q.exclusive_owner {
            self.exclusive_index()
                .entry(owner)
                .or_default()
                .push(q.clone());
        }
    }

    fn forget_exclusive(&self, q: &Arc<Queue>) {
        let Some(owner) = q.exclusive_owner else {
            return;
        };
        let mut index = self.exclusive_index();
        if let Some(owned) = index.get_mut(&owner) {
            owned.retain(|o| !Arc::ptr_eq(o, q));
            if owned.is_empty() {
                index.remove(&owner);
            }
        }
    }

    /// Deletes a queue; returns the number of ready messages it held.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> CoreResult<u32> {
        let Some(q) = self.queue(name) else {
            return Ok(0);
        };
        self.check_exclusive(&q, conn)?;
        let stats = q.stats();
        if if_unused && stats.consumers > 0 {
            return Err(CoreError::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && stats.ready > 0 {
            return Err(CoreError::precondition(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&q))
    }

    /// Removes a queue from the vhost, drops its bindings and tells its consumers.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u32 {
        if self
            .queues
            .remove_if(&q.name, |_, v| Arc::ptr_eq(v, q))
            .is_none()
        {
            return 0;
        }
        self.forget_exclusive(q);
        let deleted = q.delete();
        self.remove_bindings_to(&Destination::Queue(q.clone()));
        self.record_queue_gone(q);
        for c in &deleted.consumers {
            c.sink.cancelled(q, &c.tag);
        }
        deleted.messages
    }

    /// After a consumer went away: deletes the queue if it is auto-delete and now unused.
    pub fn consumer_gone(&self, q: &Arc<Queue>) {
        if q.auto_delete_due() {
            self.remove_queue(q);
        }
    }

    /// Deletes the exclusive queues of a connection that closed.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let owned = self.exclusive_index().remove(&conn).unwrap_or_default();
        for q in owned {
            self.remove_queue(&q);
        }
    }

    // ---- bindings ----

    /// Sets `server.topic_max_words`.
    pub fn set_topic_max_words(&self, max: usize) {
        self.topic_max_words.store(max, Ordering::Relaxed);
    }

    /// Refuses a routing key to publish to `exchange` that has more words than a topic exchange
    /// accepts. Adapters ask before routing, to refuse in their protocol's terms; routing itself
    /// also passes over topic exchanges for such keys.
    pub fn check_routing_key(&self, exchange: &Exchange, routing_key: &str) -> CoreResult<()> {
        self.check_topic_words(exchange, routing_key, "routing key")
    }

    fn check_topic_words(&self, exchange: &Exchange, key: &str, what: &str) -> CoreResult<()> {
        let max = self.topic_max_words.load(Ordering::Relaxed);
        let n = topic::word_count(key);
        if exchange.kind == ExchangeKind::Topic && n > max {
            return Err(CoreError::precondition(format!(
                "{what} of {n} words is longer than the limit of {max} words \
                 (server.topic_max_words) for topic exchange '{}' in vhost '{}'",
                exchange.name, self.name
            )));
        }
        Ok(())
    }

    fn check_bindable_source(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        if name.is_empty() {
            return Err(CoreError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.exchange_or_404(name)
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        let q = self.queue_for(queue, conn)?;
        let ex = self.check_bindable_source(exchange)?;
        self.check_topic_words(&ex, routing_key, "binding key")?;
        self.bind(&ex, Destination::Queue(q), routing_key, arguments)
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        let q = self.queue_for(queue, conn)?;
        let ex = self.check_bindable_source(exchange)?;
        self.unbind(&ex, Destination::Queue(q), routing_key, arguments);
        Ok(())
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> CoreResult<()> {
        let dst = self.check_bindable_source(destination)?;
        let src = self.check_bindable_source(source)?;
        self.check_topic_words(&src, routing_key, "binding key")?;
        self.bind(&src, Destination::Exchange(dst), routing_key, arguments)
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> CoreResult<()> {
        let dst = self.check_bindable_source(destination)?;
        let src = self.check_bindable_source(source)?;
        self.unbind(&src, Destination::Exchange(dst), routing_key, arguments);
        Ok(())
    }

    /// Binds `destination` to `source` and records a new durable binding.
    fn bind(
        &self,
        source: &Arc<Exchange>,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> CoreResult<()> {
        let binding = super::exchange::Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        let added = source
            .bind(binding.destination.clone(), routing_key, arguments)
            .map_err(|e| CoreError::precondition(e.to_string()))?;
        if added {
            self.record_binding(source, &binding);
        }
        Ok(())
    }

    /// Unbinds `destination` from `source` (unbinding what is not bound succeeds, as in
    /// RabbitMQ), deleting its record and an auto-delete source left unbound.
    fn unbind(
        &self,
        source: &Arc<Exchange>,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) {
        if source.unbind(&destination, routing_key, arguments) {
            let binding = super::exchange::Binding {
                destination,
                routing_key: routing_key.to_owned(),
                arguments: arguments.clone(),
            };
            self.record_bindings_gone(source, std::slice::from_ref(&binding));
            self.maybe_auto_delete_exchange(source);
        }
    }

    // ---- routing ----

    /// The queues `msg` reaches from `exchange`, each once, following exchange-to-exchange
    /// bindings (each exchange visited once, so binding cycles terminate).
    ///
    /// A message with an `x-delay` published to an `x-delayed-message` exchange is held instead
    /// (it reaches no queue now; see [`VHost::hold_if_delayed`]).
    pub fn route(&self, exchange: &Arc<Exchange>, msg: &Message) -> Vec<Arc<Queue>> {
        if self.hold_if_delayed(exchange, msg).is_some() {
            return Vec::new();
        }
        self.route_now(exchange, msg)
    }

    /// Holds `msg` if `exchange` is a delayed exchange and the message asks for a delay;
    /// returns the log sequence number a publisher confirm must wait for (0: nothing was
    /// written). None: route it now.
    pub fn hold_if_delayed(&self, exchange: &Exchange, msg: &Message) -> Option<u64> {
        let hold = exchange.delayed.as_ref()?;
        let delay = delayed::delay_of(msg)?;
        Some(hold.hold(msg, delay, self.charge(msg.body.len())))
    }

    /// Routes a held message that is due through exchange `name` (gone: dropped).
    pub fn route_delayed(&self, name: &str, held: &Message) {
        let Some(exchange) = self.exchange(name) else {
            return;
        };
        let msg = Arc::new(delayed::without_due_header(
            held,
            self.charge(held.body.len()),
        ));
        for q in self.route_now(&exchange, &msg) {
            q.publish(msg.clone());
        }
    }

    /// A memory charge for a message copy the vhost makes (dead letters, delayed messages).
    fn charge(&self, body_len: usize) -> MemoryCharge {
        self.env
            .get()
            .and_then(|e| e.memory.as_ref())
            .map(|m| m.charge(Message::charge_size(body_len)))
            .unwrap_or_default()
    }

    /// The queues `msg` reaches from `exchange` now, delayed exchange or not: for publishers
    /// that asked [`VHost::hold_if_delayed`] first (so the delay is not looked up twice).
    pub fn route_now(&self, exchange: &Arc<Exchange>, msg: &Message) -> Vec<Arc<Queue>> {
        let mut queues = Vec::new();
        self.route_now_into(exchange, msg, &mut queues);
        queues
    }

    /// [`VHost::route_now`] into a buffer the caller keeps (and clears) across publishes, so
    /// routing allocates nothing unless exchanges are bound to exchanges. Each queue is added
    /// once, in the order first reached.
    pub fn route_now_into(
        &self,
        exchange: &Arc<Exchange>,
        msg: &Message,
        queues: &mut Vec<Arc<Queue>>,
    ) {
        let before = queues.len();
        self.route_through(exchange, msg, queues);
        exchange.stats.routed(queues.len() - before);
    }

    /// Routing proper for [`VHost::route_now_into`], which counts what it did.
    fn route_through(&self, exchange: &Arc<Exchange>, msg: &Message, queues: &mut Vec<Arc<Queue>>) {
        if exchange.name.is_empty() {
            if let Some(q) = self.queue(&msg.routing_key) {
                queues.push(q);
            }
            return;
        }
        // Exchanges reached through exchange-to-exchange bindings, still to route through, and
        // those already routed through (bindings may form cycles).
        let mut pending: Vec<Arc<Exchange>> = Vec::new();
        let mut visited: Vec<*const Exchange> = Vec::new();
        let mut through: Option<Arc<Exchange>> = None;
        let mut reached = ReachedQueues::default();
        let max_words = self.topic_max_words.load(Ordering::Relaxed);
        let too_long_for_topic = topic::word_count(&msg.routing_key) > max_words;
        loop {
            let source = through.as_ref().unwrap_or(exchange);
            if too_long_for_topic && source.kind == ExchangeKind::Topic {
                match pending.pop() {
                    Some(next) => through = Some(next),
                    None => return,
                }
                continue;
            }
            source.for_each_destination(msg, |d| match d {
                Destination::Queue(q) => reached.push_new(queues, q),
                Destination::Exchange(e) => {
                    let at = Arc::as_ptr(e);
                    if at != Arc::as_ptr(exchange) && !visited.contains(&at) {
                        visited.push(at);
                        pending.push(e.clone());
                    }
                }
            });
            match pending.pop() {
                Some(next) => through = Some(next),
                None => return,
            }
        }
    }

    /// Every binding in the vhost as (source exchange name, binding).
    pub fn bindings(&self) -> Vec<(String, super::exchange::Binding)> {
        let mut out = Vec::new();
        for ex in self.exchanges() {
            for b in ex.bindings() {
                out.push((ex.name.clone(), b));
            }
        }
        // The default exchange's implicit binding to every queue, as RabbitMQ lists it.
        for q in self.queues() {
            out.push((
                String::new(),
                super::exchange::Binding {
                    destination: Destination::Queue(q.clone()),
                    routing_key: q.name.clone(),
                    arguments: FieldTable::new(),
                },
            ));
        }
        out
    }
}

/// A binding from exchange `source` as a definition record.
fn binding_def(source: &str, b: &super::exchange::Binding) -> BindingDef {
    BindingDef {
        source: source.to_owned(),
        destination_type: b.destination.kind_str().to_owned(),
        destination: b.destination.name().to_owned(),
        routing_key: b.routing_key.clone(),
        arguments: table_text(&b.arguments),
    }
}

/// A durable delayed exchange's held messages are kept under a store id of their own, recorded
/// as a (never declared) queue so that recovery keeps their records.
fn hold_def(ex: &Exchange) -> Option<QueueDef> {
    let id = ex.delayed.as_ref()?.store_id()?;
    ex.durable.then(|| QueueDef {
        name: format!("{}{}", delayed::HOLD_PREFIX, ex.name),
        id,
        auto_delete: false,
        arguments: String::new(),
    })
}

/// Which queues one publish has reached, so that each is added once. A scan of the list is
/// cheapest for the usual handful; past that a set keeps fan-out to N queues linear in N (the
/// scan made a publish to 100,000 queues take 2.6 s).
#[derive(Default)]
struct ReachedQueues {
    set: Option<std::collections::HashSet<*const Queue, super::hash::FastHasher>>,
}

impl ReachedQueues {
    const SCAN_UP_TO: usize = 16;

    /// Appends `q` to `queues` unless it is there already.
    fn push_new(&mut self, queues: &mut Vec<Arc<Queue>>, q: &Arc<Queue>) {
        let new = match &mut self.set {
            Some(set) => set.insert(Arc::as_ptr(q)),
            None if queues.len() < Self::SCAN_UP_TO => !queues.iter().any(|x| Arc::ptr_eq(x, q)),
            None => {
                let set = self.set.insert(queues.iter().map(Arc::as_ptr).collect());
                set.insert(Arc::as_ptr(q))
            }
        };
        if new {
            queues.push(q.clone());
        }
    }
}

/// A random name with RabbitMQ's shape: prefix + 22 URL-safe base64 characters.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for _ in 0..22 {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

fn args_equal(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x == y,
        },
        _ => false,
    }
}

fn show_arg(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => s.to_owned(),
            (_, Some(i)) => i.to_string(),
            _ => format!("{v:?}"),
        },
    }
}
