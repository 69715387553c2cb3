//! A queue: ready messages by priority, deliveries awaiting acknowledgement, and consumers served
//! by priority and round-robin within their prefetch credit; TTL, queue expiry, length limits and
//! dead-lettering (RabbitMQ's queue arguments, see [`args`]).
//!
//! Every operation takes the queue's one short lock. Deliveries are handed to a consumer's
//! [`ConsumerSink`] under that lock, so the order in which a consumer sees messages is the queue's
//! order, and a consumer removed under the lock gets nothing afterwards. Dead letters are only
//! collected under the lock and returned, with the queue's own deletion when `x-expires` ran
//! out, as the operation's [`QueueEffects`] for the vhost to apply after the lock is released
//! (a queue may dead-letter into itself). A queue keeps no pointer to its vhost.

pub mod args;
mod consumers;
mod flow;
mod idle;
mod lifecycle;
mod ready;
mod remote;
mod replica;
mod storage;

pub use flow::FlowWaiter;
pub use remote::RemoteHome;
pub use replica::{all_decided, Committed, Replica, ServingFuture, Ticket};
pub use storage::read_back;

use super::clock::{Clock, SystemClock};
use super::dead_letter::{DeadLetter, Reason};
use super::memory::MemoryMonitor;
use super::message::Message;
use super::stats::QueueCounters;
use super::timer::{OwnerId, Timer};
use crate::core::hash::FastHashMap;
use crate::store::log::RecordPos;
use crate::store::record::Entry;
use crate::store::MessageLog;
use args::{Overflow, QueueArgs};
use consumers::Consumers;
use ready::{Queued, Ready};
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_amqp::FieldTable;

/// Identifies a client connection across the broker (exclusive ownership, listings).
pub type ConnectionId = u64;

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue's id for the message; acks and requeues name it.
    pub id: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

/// The protocol side of a consumer: an AMQP channel's consumer, an MQTT session, a STOMP
/// subscription.
pub trait ConsumerSink: Send + Sync {
    /// Takes one unit of credit for a delivery. False when the consumer cannot take a message
    /// now (prefetch exhausted, outbound buffer full); the queue then tries the next consumer and
    /// is woken by [`Queue::dispatch`] when credit returns.
    fn try_reserve(&self, needs_ack: bool) -> bool;
    /// Hands over a delivery for which credit was reserved.
    fn deliver(&self, queue: &Arc<Queue>, delivery: Delivery);
    /// The queue was deleted under the consumer.
    fn cancelled(&self, queue: &Queue, consumer_tag: &str);
    /// The consumer's own prefetch limit as listed (0: none), for the management API.
    fn prefetch_count(&self) -> u32 {
        0
    }
    /// The AMQP channel the consumer is on, for the management API; None for other protocols.
    fn channel_number(&self) -> Option<u16> {
        None
    }
    /// The quorum queue's lead moved away from the node serving this consumer. True (the
    /// default): the consumer stays registered on its queue, and its node attaches it to the
    /// new leader, as RabbitMQ moves a quorum queue's consumers. False: it is let go here (a
    /// consumer another node holds here through forwarding: that node follows the lead
    /// itself when it is one of the group's `members`, else its client is told it was
    /// cancelled).
    fn lead_moved(&self, members: &[String]) -> bool {
        let _ = members;
        true
    }
}

/// A consumer as the queue keeps it.
#[derive(Clone)]
pub struct Consumer {
    /// Broker-unique id, for removal.
    pub id: u64,
    pub tag: String,
    pub no_ack: bool,
    pub exclusive: bool,
    pub owner: ConnectionId,
    pub sink: Arc<dyn ConsumerSink>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .field("no_ack", &self.no_ack)
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    #[error("queue '{0}' has an exclusive consumer")]
    ExclusiveConsumerPresent(String),
    #[error("cannot obtain exclusive access to queue '{0}', it has consumers")]
    QueueInUse(String),
    #[error("queue '{0}' was deleted")]
    Deleted(String),
    /// A quorum queue has no leader serving it now (an election, or a leader still catching
    /// up); `leader` is the one last known.
    #[error("quorum queue '{queue}' has no leader serving it now (last known: {}); try again", leader.as_deref().unwrap_or("none"))]
    NotLeader {
        queue: String,
        leader: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub ready_bytes: u64,
    /// Messages through the queue so far (its `message_stats`).
    pub counters: QueueCounters,
}

fn boxed_unless_default(args: QueueArgs) -> Option<Box<QueueArgs>> {
    (args != QueueArgs::default()).then(|| Box::new(args))
}

/// A durable queue's place in the message log.
#[derive(Debug, Clone)]
pub struct QueueStore {
    pub log: Arc<MessageLog>,
    /// The queue's id in log records (see `store::definitions::QueueDef::id`).
    pub id: u64,
    /// Past this many bytes of ready message bodies in memory, persistent messages are kept
    /// only as log positions and read back when delivered.
    pub memory_budget: u64,
    /// Charged for messages read back from the log.
    pub memory: Arc<MemoryMonitor>,
}

/// What a queue needs from the broker around it: the timer that wakes it for expiries, armed
/// under its vhost's owner id (the timer hands the vhost the effects of what came due). Queues
/// without one (unit tests) read the system clock and are never woken.
#[derive(Debug, Clone)]
pub struct QueueEnv {
    pub timer: Arc<Timer>,
    pub owner: OwnerId,
}

/// What a queue operation leaves for the vhost to do once the queue's lock is released: the
/// queue never calls up into its vhost. The caller hands them to
/// [`VHost::apply`](crate::core::VHost::apply).
#[must_use = "a queue's effects are applied by its vhost (VHost::apply)"]
#[derive(Debug, Default)]
pub struct QueueEffects {
    /// Messages that left the queue for its dead-letter exchange, to be republished.
    pub dead: Vec<DeadLetter>,
    /// `x-expires` ran out: the queue is to be deleted.
    pub expired: bool,
}

impl QueueEffects {
    pub fn is_empty(&self) -> bool {
        self.dead.is_empty() && !self.expired
    }
}

/// A message recovered from the log for [`Queue::recover`].
#[derive(Debug)]
pub struct RecoveredEntry {
    pub seq: u64,
    pub at: RecordPos,
    pub body_len: u64,
    /// None: leave it paged out.
    pub message: Option<Arc<Message>>,
    /// The message's `priority` and `expiration` properties, which place it in the queue.
    pub priority: Option<u8>,
    pub expiration: Option<String>,
    /// When it expires, as its record says (None for a record without one: see
    /// [`Queue::recover`]).
    pub expires_at: Option<u64>,
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Default)]
#[must_use = "an enqueue's effects are applied by the vhost (VHost::apply)"]
pub struct Enqueued {
    /// False when the queue was deleted meanwhile or refused the message.
    pub accepted: bool,
    /// The log sequence number to wait for before confirming, 0 when nothing was written.
    pub lsn: u64,
    /// The queue refused the message because it is full (`x-overflow` `reject-publish` or
    /// `reject-publish-dlx`): an AMQP publisher in confirm mode gets a nack, an MQTT 5 PUBACK
    /// a failure reason, a STOMP receipt an ERROR.
    pub refused: bool,
    /// What the vhost is to do now (dead letters).
    pub effects: QueueEffects,
    /// Ready messages after this one, while the queue has consumers (0 without): what
    /// publisher flow control holds a publisher back by (see [`flow`]).
    pub backlog: usize,
    /// A replicated (quorum) queue's publish: a confirm waits for it instead of `lsn`.
    pub ticket: Option<Ticket>,
}

#[derive(Debug)]
struct QueueState {
    ready: Ready,
    ready_bytes: u64,
    /// Memory held by ready messages in memory (body plus per-message overhead, as charged to
    /// the memory monitor); paged-out messages do not count.
    memory_bytes: u64,
    unacked: FastHashMap<u64, Queued>,
    /// By priority and registration order, with the round-robin cursor.
    consumers: Consumers,
    next_id: u64,
    /// Set once the queue had a consumer: auto-delete applies only after that.
    had_consumer: bool,
    deleted: bool,
    /// Messages that left the queue for its dead-letter exchange, returned in the operation's
    /// effects once the lock is released.
    dead: Vec<DeadLetter>,
    /// The earliest deadline the timer was asked to wake the queue at.
    armed: Option<u64>,
    /// When the queue was last used (consumer, get, redeclare), for `x-expires`.
    last_used: u64,
    /// What the log holds as the time a durable queue with `x-expires` is unused since (see
    /// [`idle`]); None when it holds nothing.
    idle_recorded: Option<u64>,
    /// Messages removed because their TTL ran out.
    expired: u64,
    /// `x-expires` ran out: the queue is to be deleted (an effect for the vhost).
    expire_queue: bool,
    /// Message statistics, counted under the lock the queue holds anyway.
    counters: QueueCounters,
    /// The effective arguments: declared ones over a matching policy, replaced when policies
    /// change. None when they are all defaults, as for most queues (every MQTT session has
    /// one): the arguments are 120 bytes.
    args: Option<Box<QueueArgs>>,
    /// Publishers held back until the backlog shrinks (see [`flow`]); None for most queues.
    flow: Option<Box<flow::FlowWaiters>>,
}

impl QueueState {
    fn args(&self) -> &QueueArgs {
        static DEFAULT: std::sync::LazyLock<QueueArgs> =
            std::sync::LazyLock::new(QueueArgs::default);
        self.args.as_deref().unwrap_or(&DEFAULT)
    }
}

/// What [`Queue::remove_consumer`] leaves behind.
#[derive(Debug)]
#[must_use = "the removal's effects are applied by the vhost (VHost::apply)"]
pub struct ConsumerRemoved {
    pub remaining: usize,
    pub effects: QueueEffects,
}

/// What [`Queue::delete`] removed.
#[derive(Debug)]
pub struct QueueDeleted {
    pub messages: u32,
    pub consumers: Vec<Consumer>,
}

#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<ConnectionId>,
    /// The arguments as declared (what redeclarations are compared with and definitions keep).
    pub arguments: FieldTable,
    /// Where persistent messages are written; None for transient queues (and tests).
    store: Option<QueueStore>,
    env: Option<QueueEnv>,
    /// Set when another node holds the queue's messages (see [`remote`]).
    remote: std::sync::OnceLock<Arc<dyn RemoteHome>>,
    /// A quorum queue's Raft group, set once it starts (see [`replica`]).
    replica: std::sync::OnceLock<Arc<dyn Replica>>,
    state: Mutex<QueueState>,
}

impl Queue {
    pub fn new(
        name: String,
        vhost: String,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<ConnectionId>,
        arguments: FieldTable,
    ) -> Self {
        // Validated by the vhost before a client's queue is made; a bad value that slipped in
        // (an old definitions record) is ignored rather than refusing to start.
        let args = QueueArgs::parse(&arguments, None).unwrap_or_default();
        Queue {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            store: None,
            env: None,
            remote: std::sync::OnceLock::new(),
            replica: std::sync::OnceLock::new(),
            state: Mutex::new(QueueState {
                ready: Ready::new(args.levels()),
                ready_bytes: 0,
                memory_bytes: 0,
                unacked: FastHashMap::default(),
                consumers: Consumers::default(),
                next_id: 0,
                had_consumer: false,
                deleted: false,
                dead: Vec::new(),
                armed: None,
                last_used: SystemClock.now_ms(),
                idle_recorded: None,
                expired: 0,
                expire_queue: false,
                counters: QueueCounters::default(),
                args: boxed_unless_default(args),
                flow: None,
            }),
        }
    }

    /// Replaces the effective arguments (declared ones merged with a policy). Only before the
    /// queue holds messages: the priority levels are set up here.
    pub fn with_args(mut self, args: QueueArgs) -> Self {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        st.ready = Ready::new(args.levels());
        st.args = boxed_unless_default(args);
        self
    }

    /// Replaces the effective arguments of a queue in use, as a policy set or cleared at run
    /// time does: a lower length limit drops (or dead-letters) the excess at once, a new
    /// `x-expires` or TTL re-arms the timer, and messages already queued keep the expiry they
    /// got when enqueued (as in RabbitMQ). The priority levels stay as declared: ready
    /// messages are already placed in them.
    pub fn set_args(self: &Arc<Self>, mut args: QueueArgs) -> QueueEffects {
        let mut st = self.lock();
        if st.deleted {
            return QueueEffects::default();
        }
        args.max_priority = st.args().max_priority;
        if *st.args() == args {
            return QueueEffects::default();
        }
        st.args = boxed_unless_default(args);
        self.drop_over_limit(&mut st);
        self.dispatch_locked(&mut st);
        self.finish(st)
    }

    /// Makes the queue write its persistent messages to the log.
    pub fn with_store(mut self, store: QueueStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Makes the timer wake the queue for its expiries.
    pub fn with_env(mut self, env: QueueEnv) -> Self {
        self.env = Some(env);
        self
    }

    /// Starts the queue's clocks once it is in its vhost (after recovery): `x-expires` counts
    /// from now (or from the recovered idle time), and the timer is armed for whatever is
    /// already due.
    pub fn start(self: &Arc<Self>) {
        let now = self.now();
        let mut st = self.lock();
        st.last_used = now;
        self.start_idle_clock(&mut st, now);
        self.rearm(&mut st);
    }

    /// The effective arguments (a copy: a policy may replace them at any time).
    pub fn args(&self) -> QueueArgs {
        self.lock().args().clone()
    }

    /// The queue's id in the message log, when it has one.
    pub fn store_id(&self) -> Option<u64> {
        self.store.as_ref().map(|s| s.id)
    }

    /// The queue's clock (ms), which its TTLs are counted by.
    pub fn clock_ms(&self) -> u64 {
        self.now()
    }

    fn now(&self) -> u64 {
        match &self.env {
            Some(env) => env.timer.now_ms(),
            None => SystemClock.now_ms(),
        }
    }

    /// "Now" for expiring ready messages: read from the clock only when a ready message has an
    /// expiry, or `incoming_expires` (a message about to be enqueued may get one). Otherwise
    /// nothing can expire and 0 serves: most queues have no TTL, and reading the clock cost
    /// more than the rest of a publish's queue bookkeeping (~4% of broker CPU in `bench amqp`).
    fn now_for_expiry(&self, st: &QueueState, incoming_expires: bool) -> u64 {
        if incoming_expires || st.ready.has_timed() {
            self.now()
        } else {
            0
        }
    }

    /// Takes the head ready entry with its message loaded, dropping unreadable ones.
    fn pop_ready(&self, st: &mut QueueState) -> Option<(Queued, Arc<Message>)> {
        while let Some(mut q) = st.ready.pop_front() {
            Self::unaccount(st, &q);
            if let Some(m) = self.load(&q) {
                q.message = Some(m.clone());
                return Some((q, m));
            }
        }
        None
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic elsewhere must not take the queue down with it; the state stays consistent
        // because every mutation completes before any call that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues a message and delivers what consumers can take, saying which log record a
    /// confirm must wait for and whether the queue refused the message for its length limit. A
    /// persistent message is appended to the log under the queue's lock, so its enqueue record
    /// always precedes any settle record for it. Publishers go through the vhost's ingress
    /// ([`VHost::publish`](crate::core::VHost::publish)), which applies the effects.
    pub fn enqueue(self: &Arc<Self>, message: Arc<Message>) -> Enqueued {
        let mut st = self.lock();
        if st.deleted {
            return Enqueued::default();
        }
        if let Some(r) = self.replica.get() {
            // Enqueued on the leader once its group has committed it.
            drop(st);
            return Enqueued {
                accepted: true,
                ticket: Some(r.propose(&message)),
                ..Enqueued::default()
            };
        }
        let may_expire =
            st.args().message_ttl.is_some() || message.routing_properties().expiration.is_some();
        let now = self.now_for_expiry(&st, may_expire);
        let body_len = message.body.len() as u64;
        self.expire_heads(&mut st, now);
        if st.args().overflow != Overflow::DropHead && self.would_overflow(&st, body_len) {
            if st.args().overflow == Overflow::RejectPublishDlx
                && st.args().dead_letter_exchange.is_some()
            {
                st.dead.push(DeadLetter {
                    message,
                    reason: Reason::Maxlen,
                });
            }
            return Enqueued {
                accepted: false,
                lsn: 0,
                refused: true,
                backlog: st.flow_backlog(),
                ticket: None,
                effects: self.finish(st),
            };
        }
        let id = st.next_id;
        st.next_id += 1;
        st.counters.publish += 1;
        let expires_at =
            Self::expiry_of(&st, message.routing_properties().expiration.as_deref(), now);
        let (stored, lsn, page_out) = match &self.store {
            Some(store) if message.is_persistent() => {
                // With its expiry, so that its TTL counts from now across restarts.
                let entry = Entry {
                    expires: expires_at,
                    ..Entry::new(store.id, id)
                };
                let a = crate::core::stored::append_message(&store.log, entry, &message);
                // Paging out only behind other ready messages: a message a consumer can take
                // now is delivered from memory.
                let page_out = st.memory_bytes > store.memory_budget && !st.ready.is_empty();
                (Some(a.at), a.lsn, page_out)
            }
            _ => (None, 0, false),
        };
        st.ready_bytes += body_len;
        if !page_out {
            st.memory_bytes += footprint(body_len);
        }
        let level = st.args().level_of(message.routing_properties().priority);
        st.ready.push_back(Queued {
            id,
            message: (!page_out).then_some(message),
            body_len,
            redelivered: false,
            stored,
            level,
            expires_at,
        });
        // A TTL of 0 means deliver now or never: the message is still alive in the instant it
        // is published, and what no consumer took then has expired.
        self.dispatch_at(&mut st, now.saturating_sub(1));
        self.expire_heads(&mut st, now);
        self.drop_over_limit(&mut st);
        Enqueued {
            accepted: true,
            lsn,
            refused: false,
            backlog: st.flow_backlog(),
            ticket: None,
            effects: self.finish(st),
        }
    }

    /// Delivers ready messages to consumers with credit. Called whenever credit may have
    /// returned (ack, outbound buffer drained) or consumers changed.
    pub fn dispatch(self: &Arc<Self>) -> QueueEffects {
        if let Some(remote) = self.served_elsewhere() {
            remote.dispatch(self);
            return QueueEffects::default();
        }
        let mut st = self.lock();
        self.dispatch_locked(&mut st);
        self.finish(st)
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        let now = self.now_for_expiry(st, false);
        self.dispatch_at(st, now);
    }

    /// Delivers what consumers can take, expiring first what expired by `now`.
    fn dispatch_at(self: &Arc<Self>, st: &mut QueueState, now: u64) {
        loop {
            // Expired messages are never delivered.
            self.expire_heads(st, now);
            if st.ready.is_empty() || st.consumers.is_empty() {
                return;
            }
            let Some((sink, no_ack)) = self.pick_consumer(st) else {
                return;
            };
            let Some((q, message)) = self.pop_ready(st) else {
                // Only unreadable entries were left; the reserved credit goes unused.
                return;
            };
            let delivery = Delivery {
                id: q.id,
                message,
                redelivered: q.redelivered,
            };
            st.counters.delivered(no_ack, delivery.redelivered);
            if !no_ack {
                st.unacked.insert(q.id, q);
            } else if let Some(pos) = q.stored {
                self.log_settled(&[(q.id, pos)]);
            } else {
                self.replica_settled(&[q.id]);
            }
            sink.deliver(self, delivery);
        }
    }

    /// The consumer to deliver the next message to (its sink and whether it takes messages
    /// without acknowledgement), with its credit reserved: with a single active consumer only
    /// the first registered; otherwise the highest priority with credit, round-robin among
    /// equals.
    fn pick_consumer(&self, st: &mut QueueState) -> Option<(Arc<dyn ConsumerSink>, bool)> {
        let reserve = |c: &Consumer| c.sink.try_reserve(!c.no_ack);
        let c = if st.args().single_active_consumer {
            st.consumers.first().filter(|c| reserve(c))?
        } else {
            st.consumers.pick(reserve)?
        };
        Some((c.sink.clone(), c.no_ack))
    }

    /// Registers a consumer (priority 0) and starts delivering to it.
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Consumer,
    ) -> Result<QueueEffects, ConsumeError> {
        self.add_consumer_with_priority(consumer, 0)
    }

    /// Registers a consumer with a priority (`x-priority`): higher ones get messages first.
    pub fn add_consumer_with_priority(
        self: &Arc<Self>,
        consumer: Consumer,
        priority: i32,
    ) -> Result<QueueEffects, ConsumeError> {
        let elsewhere = self.served_elsewhere();
        let mut st = self.lock();
        if st.deleted {
            return Err(ConsumeError::Deleted(self.name.clone()));
        }
        if let (None, Some(r)) = (&elsewhere, self.replica.get().filter(|r| !r.is_leader())) {
            return Err(ConsumeError::NotLeader {
                queue: self.name.clone(),
                leader: r.leader(),
            });
        }
        if st.consumers.has_exclusive() {
            return Err(ConsumeError::ExclusiveConsumerPresent(self.name.clone()));
        }
        if consumer.exclusive && !st.consumers.is_empty() {
            return Err(ConsumeError::QueueInUse(self.name.clone()));
        }
        if st.consumers.is_empty() {
            self.became_used(&mut st);
        }
        if let Some(remote) = elsewhere {
            st.consumers.add(consumer.clone(), priority);
            st.had_consumer = true;
            drop(st);
            return self.add_served_elsewhere(remote, consumer, priority);
        }
        st.consumers.add(consumer, priority);
        st.had_consumer = true;
        self.dispatch_locked(&mut st);
        Ok(self.finish(st))
    }

    /// Registers `consumer` (already in the local list) where the queue is served; a quorum
    /// queue's guess of its leader refused naming another gets one more try there.
    fn add_served_elsewhere(
        self: &Arc<Self>,
        mut remote: Arc<dyn RemoteHome>,
        consumer: Consumer,
        priority: i32,
    ) -> Result<QueueEffects, ConsumeError> {
        let mut retried = false;
        loop {
            let refused = match remote.consumer_added(self, &consumer, priority) {
                Ok(()) => return Ok(QueueEffects::default()),
                Err(e) => e,
            };
            let named = match (&refused, self.replica.get()) {
                (
                    ConsumeError::NotLeader {
                        leader: Some(l), ..
                    },
                    Some(r),
                ) if !retried => {
                    r.leader_named(l);
                    r.leader_home().filter(|next| next.home() != remote.home())
                }
                _ => None,
            };
            match named {
                Some(next) => {
                    remote = next;
                    retried = true;
                }
                None => {
                    self.lock().consumers.remove(consumer.id);
                    return Err(refused);
                }
            }
        }
    }

    /// Removes a consumer by id; None if it was not registered. Ready messages go to the
    /// consumers left (with a single active consumer, the next one takes over).
    pub fn remove_consumer(self: &Arc<Self>, consumer_id: u64) -> Option<ConsumerRemoved> {
        let now = self.now();
        let mut st = self.lock();
        st.consumers.remove(consumer_id)?;
        if let Some(remote) = self.served_elsewhere() {
            let remaining = st.consumers.len();
            drop(st);
            remote.consumer_removed(self, consumer_id);
            let effects = QueueEffects::default();
            return Some(ConsumerRemoved { remaining, effects });
        }
        let remaining = st.consumers.len();
        if remaining == 0 {
            st.last_used = now;
            self.became_unused(&mut st, now);
        } else {
            self.dispatch_locked(&mut st);
        }
        let effects = self.finish(st);
        Some(ConsumerRemoved { remaining, effects })
    }

    /// Whether an auto-delete queue should go now: it had a consumer and has none left.
    pub fn auto_delete_due(&self) -> bool {
        // A proxy's consumers are some of the queue's: its home node decides.
        if self.remote().is_some() {
            return false;
        }
        let st = self.lock();
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Takes the head message for `basic.get`, with the number of messages left ready (None:
    /// empty), and the effects for the vhost (head messages that expired meanwhile).
    pub fn get(self: &Arc<Self>, no_ack: bool) -> (Option<(Delivery, u32)>, QueueEffects) {
        if let Some(remote) = self.served_elsewhere() {
            return (remote.get(self, no_ack), QueueEffects::default());
        }
        let now = self.now();
        let mut st = self.lock();
        st.last_used = now;
        self.used_while_idle(&mut st, now);
        self.expire_heads(&mut st, now);
        let Some((q, message)) = self.pop_ready(&mut st) else {
            st.counters.get_empty += 1;
            return (None, self.finish(st));
        };
        let delivery = Delivery {
            id: q.id,
            message,
            redelivered: q.redelivered,
        };
        st.counters.got(no_ack, delivery.redelivered);
        if !no_ack {
            st.unacked.insert(q.id, q);
        } else if let Some(pos) = q.stored {
            self.log_settled(&[(q.id, pos)]);
        } else {
            self.replica_settled(&[q.id]);
        }
        let left = saturating_u32(st.ready.len());
        (Some((delivery, left)), self.finish(st))
    }

    /// Settles deliveries for good (ack). Unknown ids are ignored.
    pub fn settle(&self, ids: &[u64]) {
        if let Some(remote) = self.served_elsewhere() {
            return remote.settle(ids);
        }
        let mut st = self.lock();
        let mut persisted = Vec::new();
        let mut replicated = Vec::new();
        for id in ids {
            let Some(q) = st.unacked.remove(id) else {
                continue;
            };
            st.counters.ack += 1;
            if let Some(pos) = q.stored {
                persisted.push((*id, pos));
            } else if self.replica.get().is_some() {
                replicated.push(*id);
            }
        }
        // Under the lock, so a settle record never overtakes the requeue or delete it races.
        self.log_settled(&persisted);
        self.replica_settled(&replicated);
    }

    /// Rejects deliveries without requeueing (AMQP reject/nack with requeue=false, STOMP NACK):
    /// settled like an ack, and dead-lettered with reason `rejected` if the queue has a
    /// dead-letter exchange. Unknown ids are ignored.
    pub fn reject(self: &Arc<Self>, ids: &[u64]) -> QueueEffects {
        if let Some(remote) = self.served_elsewhere() {
            remote.reject(ids);
            return QueueEffects::default();
        }
        let mut st = self.lock();
        for id in ids {
            if let Some(q) = st.unacked.remove(id) {
                self.leave(&mut st, q, Reason::Rejected);
            }
        }
        self.finish(st)
    }

    /// Puts unacked deliveries back in their original places, marked redelivered, and delivers
    /// again.
    pub fn requeue(self: &Arc<Self>, ids: &[u64]) -> QueueEffects {
        if let Some(remote) = self.served_elsewhere() {
            remote.requeue(ids);
            return QueueEffects::default();
        }
        if let Some(r) = self.replica.get() {
            return self.requeue_replicated(r, ids);
        }
        let mut st = self.lock();
        for id in ids {
            let Some(mut q) = st.unacked.remove(id) else {
                continue;
            };
            q.redelivered = true;
            // Unacked entries always hold their message (it was loaded to be delivered).
            st.ready_bytes += q.body_len;
            st.memory_bytes += footprint(q.body_len);
            st.ready.insert_in_place(q);
        }
        if !st.deleted {
            self.dispatch_locked(&mut st);
        }
        self.finish(st)
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        if let Some(remote) = self.served_elsewhere() {
            return remote.purge();
        }
        let mut st = self.lock();
        let n = st.ready.len();
        let persisted: Vec<(u64, RecordPos)> = st
            .ready
            .iter()
            .filter_map(|q| q.stored.map(|s| (q.id, s)))
            .collect();
        if self.replica.get().is_some() {
            let ids: Vec<u64> = st.ready.iter().map(|q| q.id).collect();
            self.replica_settled(&ids);
        }
        st.ready.clear();
        st.ready_bytes = 0;
        st.memory_bytes = 0;
        self.log_settled(&persisted);
        let resumed = st.resumable();
        drop(st);
        resumed.wake();
        saturating_u32(n)
    }

    /// Marks the queue deleted and empties it; the caller notifies the returned consumers.
    pub fn delete(&self) -> QueueDeleted {
        if let Some(remote) = self.served_elsewhere() {
            remote.deleted();
        }
        let mut st = self.lock();
        st.deleted = true;
        let messages = saturating_u32(st.ready.len());
        if let Some(store) = &self.store {
            // The queue leaves the definitions, so recovery ignores its records: no settle
            // records needed, only the segments' live counts.
            let segments = st.ready.iter().chain(st.unacked.values());
            store.log.forget(segments.filter_map(|q| q.stored));
        }
        self.forget_idle_since(&st);
        st.ready.clear();
        st.ready_bytes = 0;
        st.memory_bytes = 0;
        st.unacked.clear();
        st.dead.clear();
        let deleted = QueueDeleted {
            messages,
            consumers: st.consumers.take_all(),
        };
        let resumed = st.resumable();
        drop(st);
        resumed.wake();
        deleted
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    pub fn stats(&self) -> QueueStats {
        if let Some(home) = self.remote.get().and_then(|r| r.stats()) {
            return home;
        }
        self.local_stats()
    }

    fn local_stats(&self) -> QueueStats {
        let st = self.lock();
        QueueStats {
            ready: st.ready.len() as u64,
            unacked: st.unacked.len() as u64,
            consumers: st.consumers.len() as u64,
            ready_bytes: st.ready_bytes,
            counters: st.counters,
        }
    }

    /// [`stats`](Self::stats) for listings: a queue held on another node answers the figures
    /// it last had from there instead of asking now.
    pub fn stats_recent(&self) -> QueueStats {
        if let Some(home) = self.remote.get().and_then(|r| r.stats_recent()) {
            return home;
        }
        self.local_stats()
    }

    pub fn message_count(&self) -> u32 {
        if let Some(home) = self.remote.get().and_then(|r| r.stats()) {
            return u32::try_from(home.ready).unwrap_or(u32::MAX);
        }
        saturating_u32(self.lock().ready.len())
    }

    pub fn consumer_count(&self) -> u32 {
        saturating_u32(self.lock().consumers.len())
    }

    /// The consumers with their priorities, for the management API's listings.
    pub fn consumers(&self) -> Vec<(Consumer, i32)> {
        self.lock().consumers.listed()
    }

    /// The bytes of ready messages held in memory (the figure the memory budget counts).
    pub fn memory_bytes(&self) -> u64 {
        self.lock().memory_bytes
    }
}

/// Memory a message with a body of `body_len` bytes holds, for the queue's memory budget.
fn footprint(body_len: u64) -> u64 {
    Message::charge_size(usize::try_from(body_len).unwrap_or(usize::MAX)) as u64
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
