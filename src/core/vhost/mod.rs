//! A virtual host: its exchanges, queues and the bindings between them, and routing. One file
//! per responsibility: lookups and deletion ([`registry`]), declarations and their equivalence
//! checks ([`declare`]), bindings ([`bindings`]), exclusive queues ([`exclusive`]), durable
//! definition records ([`persist`]) and recovery ([`recovery`]), dead-lettering
//! ([`dead_letters`]) and routing ([`routing`]).

mod bindings;
mod dead_letters;
mod declare;
mod exclusive;
mod persist;
mod recovery;
mod registry;
mod routing;

pub use registry::LastExchange;
pub use routing::{Publish, PublishOutcome, PublishTo};

use super::dead_letter::{self, DeadLetter};
use super::delayed::{self, DelayedHold, HoldStore};
use super::error::{CoreError, CoreResult, ErrorKind};
use super::exchange::{Destination, Exchange, ExchangeKind};
use super::hash::FastDashMap;
use super::memory::{MemoryCharge, MemoryMonitor};
use super::message::Message;
use super::policy::Policies;
use super::queue::args::QueueArgs;
use super::queue::{ConnectionId, Queue, QueueEffects, QueueEnv, QueueStore, RecoveredEntry};
use super::timer::{OwnerId, Timer};
use super::topic;
use crate::store::definitions::{
    binding_key, encode, exchange_key, queue_key, table_text, BindingDef, ExchangeDef, QueueDef,
};
use crate::store::{kind, Store, VHostDefinitions};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_amqp::{FieldTable, FieldValue};

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
    /// Wakes the vhost's queues (TTL, `x-expires`) and delayed holds, which arm it under
    /// `owner`; it hands the vhost the effects of what came due.
    timer: Arc<Timer>,
    owner: OwnerId,
    /// Charged for the message copies the vhost makes (dead letters, delayed messages).
    memory: Option<Arc<MemoryMonitor>>,
    /// Configured policies: arguments for queues matching a pattern.
    policies: Arc<Policies>,
    /// Exclusive queues by owning connection, so that a closing connection finds its own
    /// without scanning every queue (which made closing N connections O(N²)).
    exclusive: Mutex<HashMap<ConnectionId, Vec<Arc<Queue>>>>,
    /// `server.topic_max_words`: the most words in a topic exchange's binding or routing key.
    topic_max_words: AtomicUsize,
    /// `mqtt.flow_backlog`: a publish that leaves a queue's backlog over this names the queue
    /// in its outcome, for publisher flow control (0: never).
    flow_backlog: AtomicUsize,
    removals: Arc<QueueRemovals>,
}

/// What a vhost is made with from the broker around it.
#[derive(Debug, Clone)]
pub struct VHostEnv {
    /// The broker's timer (and clock).
    pub timer: Arc<Timer>,
    /// Charged for message copies the vhost makes; None in tests.
    pub memory: Option<Arc<MemoryMonitor>>,
    /// Told of the queues the vhost removes.
    pub removals: Arc<QueueRemovals>,
}

/// What is told of every queue a vhost removes, whatever removed it (a deletion, its
/// exclusive owner closing, auto-delete, `x-expires`, an MQTT session ending). Set once, by
/// the cluster: a queue whose record lives while its home holds it leaves the cluster with it.
#[derive(Default)]
pub struct QueueRemovals(std::sync::OnceLock<RemovalWatcher>);

/// What [`QueueRemovals`] calls with each removed queue.
pub type RemovalWatcher = Box<dyn Fn(&Arc<Queue>) + Send + Sync>;

impl std::fmt::Debug for QueueRemovals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QueueRemovals")
            .field(&self.0.get().is_some())
            .finish()
    }
}

impl QueueRemovals {
    /// Has `f` told of each removed queue from now on; false if something was already.
    pub fn watch(&self, f: RemovalWatcher) -> bool {
        self.0.set(f).is_ok()
    }

    fn removed(&self, q: &Arc<Queue>) {
        if let Some(f) = self.0.get() {
            f(q);
        }
    }
}

impl VHost {
    /// A vhost with the default exchange and the `amq.*` exchanges RabbitMQ pre-declares, its
    /// queues following `policies` and woken by `env`'s timer once [`VHost::serve_timer`] hands
    /// the vhost to it.
    pub fn with_policies(name: &str, policies: Arc<Policies>, env: VHostEnv) -> Self {
        let vh = VHost {
            name: name.to_owned(),
            exchanges: FastDashMap::default(),
            queues: FastDashMap::default(),
            store: None,
            store_memory: None,
            persisting: AtomicBool::new(false),
            record_lock: Mutex::new(()),
            definitions_lsn: AtomicU64::new(0),
            owner: env.timer.owner_id(),
            timer: env.timer,
            memory: env.memory,
            policies,
            exclusive: Mutex::new(HashMap::new()),
            topic_max_words: AtomicUsize::new(topic::DEFAULT_MAX_WORDS),
            flow_backlog: AtomicUsize::new(0),
            removals: env.removals,
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

    /// A memory-only vhost on a timer of its own reading the system clock, which nothing
    /// serves: its deadlines never fire (benchmarks, tests of routing).
    pub fn new(name: &str) -> Self {
        let env = VHostEnv {
            timer: Timer::new(Arc::new(super::clock::SystemClock)),
            memory: None,
            removals: Arc::default(),
        };
        VHost::with_policies(name, Arc::new(Policies::default()), env)
    }

    /// A memory-only vhost served by `timer` (TTL, `x-expires` and delays take effect when the
    /// timer fires).
    pub fn with_timer(name: &str, timer: Arc<Timer>) -> Arc<Self> {
        let env = VHostEnv {
            timer,
            memory: None,
            removals: Arc::default(),
        };
        let vh = Arc::new(VHost::with_policies(
            name,
            Arc::new(Policies::default()),
            env,
        ));
        vh.serve_timer();
        vh
    }

    /// A vhost whose durable definitions and persistent messages go to `store`, rebuilt from
    /// what the store recovered (at the time `env`'s timer reads); its queues follow `policies`.
    pub fn with_store(
        name: &str,
        store: Arc<Store>,
        policies: Arc<Policies>,
        defs: &VHostDefinitions,
        recovered: &mut crate::store::RecoveredLog,
        env: VHostEnv,
        memory: &Arc<MemoryMonitor>,
    ) -> Self {
        let now = env.timer.now_ms();
        let mut vh = VHost::with_policies(name, policies, env);
        vh.store = Some(store);
        vh.store_memory = Some(memory.clone());
        vh.restore(defs, recovered, now, memory);
        vh.persisting.store(true, Ordering::Release);
        vh
    }

    /// Hands the vhost to its timer, which from now on applies what comes due in its queues
    /// and delayed exchanges (the timer holds the vhost until [`VHost::stop_timer`]).
    pub fn serve_timer(self: &Arc<Self>) {
        self.timer.serve(self.owner, self.clone());
    }

    /// The vhost is deleted: its timer lets go of it and drops its pending deadlines.
    pub fn stop_timer(&self) {
        self.timer.stop_serving(self.owner);
    }

    /// The id the vhost's queues and delayed holds arm its timer under.
    pub fn owner_id(&self) -> OwnerId {
        self.owner
    }

    /// What the vhost's queues arm their timer with.
    pub(super) fn queue_env(&self) -> QueueEnv {
        QueueEnv {
            timer: self.timer.clone(),
            owner: self.owner,
        }
    }

    /// A new delayed hold for exchange `name`, on the vhost's timer.
    pub(super) fn new_hold(&self, name: &str) -> Arc<DelayedHold> {
        DelayedHold::new(name.to_owned(), self.timer.clone(), self.owner)
    }

    /// Now on the broker's clock.
    pub(super) fn now_ms(&self) -> u64 {
        self.timer.now_ms()
    }

    /// A memory charge for a message copy the vhost makes (dead letters, delayed messages).
    pub(super) fn charge(&self, body_len: usize) -> MemoryCharge {
        self.memory
            .as_ref()
            .map(|m| m.charge(Message::charge_size(body_len)))
            .unwrap_or_default()
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
