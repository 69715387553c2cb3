//! A queue whose messages are replicated elsewhere (a quorum queue's Raft group, see
//! `cluster::quorum`): the core knows only the [`Replica`] trait. A publish is handed to the
//! replica instead of being enqueued; the replica feeds the queue on the node that leads
//! it once the message is committed ([`Queue::enqueue_committed`]), and is told of every
//! settlement and return so that each replica drops or counts them.

use super::args::Overflow;
use super::ready::Queued;
use super::{footprint, Queue, QueueEffects};
use crate::core::dead_letter::Reason;
use crate::core::message::Message;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use switchboard_amqp::{FieldTable, FieldValue};

/// What happened to one replicated publish: a publisher confirm waits for it.
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

const PENDING: u8 = 0;
const COMMITTED: u8 = 1;
const FAILED: u8 = 2;
const REFUSED: u8 = 3;

/// Whether every one of `tickets` has its outcome: an acknowledgement waiting for them may
/// go (one that failed was for a quorum queue deleted meanwhile, as if deleted just after).
pub fn all_decided(tickets: &[Ticket]) -> bool {
    tickets.iter().all(|t| t.outcome().is_some())
}

impl Ticket {
    /// A ticket still waiting.
    pub fn pending() -> Self {
        Ticket::default()
    }

    /// A majority has the message.
    pub fn commit(&self) {
        self.0.store(COMMITTED, Ordering::Release);
    }

    /// The message will never be committed (the queue was deleted meanwhile).
    pub fn fail(&self) {
        let _ = self
            .0
            .compare_exchange(PENDING, FAILED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The group committed the message, but the queue's leader refused it: the queue was
    /// full (`x-overflow` `reject-publish` or `reject-publish-dlx`). It left every replica.
    pub fn refuse(&self) {
        self.0.store(REFUSED, Ordering::Release);
    }

    /// Whether the queue refused the message ([`Ticket::refuse`]): the publisher is told so
    /// (a nack, a v5 reason code, an ERROR), as for a full classic queue.
    pub fn refused(&self) -> bool {
        self.0.load(Ordering::Acquire) == REFUSED
    }

    /// None while waiting; Some(true) once committed and taken, Some(false) if it never will
    /// be (failed or refused).
    pub fn outcome(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            PENDING => None,
            s => Some(s == COMMITTED),
        }
    }
}

/// Where a replicated queue's messages and settlements go.
pub trait Replica: Send + Sync + std::fmt::Debug {
    /// Proposes `message` to the group; the ticket resolves once a majority has it.
    fn propose(&self, message: &Arc<Message>) -> Ticket;
    /// These deliveries left the queue for good (ack, reject, dead-lettered, expired, taken
    /// without acknowledgement).
    fn settled(&self, ids: &[u64]);
    /// These deliveries were returned to the queue; returns how often each has now been
    /// returned (its delivery count), in the order given.
    fn returned(&self, ids: &[u64]) -> Vec<u64>;
    /// Whether this node serves the queue now (leads its group).
    fn is_leader(&self) -> bool;
    /// The node that leads the group, when known.
    fn leader(&self) -> Option<String>;
    /// Where consumers, gets and settlements go while another node leads the group (a
    /// proxy to the leader); None while this node leads or no leader is known.
    fn leader_home(&self) -> Option<Arc<dyn super::RemoteHome>>;
    /// `node` said it leads the group (a refusal from a node that does not named it): the
    /// next [`Replica::leader_home`] goes there when this node has no view of its own.
    fn leader_named(&self, node: &str);
    /// The node that served this node's consumers of the queue let them go (it no longer
    /// leads, it lost this node's session, or it has not answered for longer than the
    /// operation timeout): whether the replica keeps them registered and attaches them to
    /// the next leader, as RabbitMQ moves a quorum queue's consumers (else they are
    /// cancelled).
    fn consumers_let_go(&self) -> bool;
    /// The group's members.
    fn members(&self) -> Vec<String>;
    /// How many committed messages the group holds, as this node has applied them (None on
    /// a node that holds no replica).
    fn messages(&self) -> Option<u64>;
    /// Resolves once this node can serve the queue's consumers (it leads the group, or
    /// reaches the node that does), or once the cluster's operation timeout has passed:
    /// whether it can. A declaration waits for it, so that a consume right after its answer
    /// is served rather than refused while the new group elects its first leader.
    fn until_serving(&self) -> ServingFuture<'_>;
}

/// What [`Replica::until_serving`] returns.
pub type ServingFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// What [`Queue::enqueue_committed`] did.
#[derive(Debug, Default)]
#[must_use]
pub struct Committed {
    /// For the vhost to apply.
    pub effects: QueueEffects,
    /// The queue was full and refused the message (`reject-publish`): it left at once.
    pub refused: bool,
}

impl Queue {
    /// Makes the queue hand its publishes to `replica` (set once, when the group starts).
    pub fn set_replica(&self, replica: Arc<dyn Replica>) {
        let _ = self.replica.set(replica);
    }

    /// The queue's replica, for a quorum queue.
    pub fn replica(&self) -> Option<&Arc<dyn Replica>> {
        self.replica.get()
    }

    /// Puts a message the group committed into the live queue (on the leader), under the
    /// group's id for it, and delivers what consumers can take. `redelivered`: it may have
    /// been delivered before (a leader taking over). `proposed_at`: when its entry was
    /// proposed, by this queue's clock, which its TTL counts from (0: from now). The queue's
    /// length limits apply as to a classic queue's enqueue, except that a message already
    /// committed cannot stay out of the log: with `reject-publish` the newest over the limit
    /// leaves (dead-lettered with reason `maxlen` for `reject-publish-dlx`) and the answer
    /// says it was refused (its publisher is nacked), with `drop-head` the oldest leaves.
    pub fn enqueue_committed(
        self: &Arc<Self>,
        id: u64,
        message: Arc<Message>,
        redelivered: bool,
        proposed_at: u64,
    ) -> Committed {
        let mut st = self.lock();
        if st.deleted {
            return Committed::default();
        }
        let may_expire =
            st.args().message_ttl.is_some() || message.routing_properties().expiration.is_some();
        let now = self.now_for_expiry(&st, may_expire);
        self.expire_heads(&mut st, now);
        let body_len = message.body.len() as u64;
        st.next_id = st.next_id.max(id + 1);
        st.counters.publish += 1;
        let level = st.args().level_of(message.routing_properties().priority);
        let since = if proposed_at == 0 { now } else { proposed_at };
        let expires_at = Self::expiry_of(
            &st,
            message.routing_properties().expiration.as_deref(),
            since,
        );
        let entry = Queued {
            id,
            message: Some(message),
            body_len,
            redelivered,
            stored: None,
            level,
            expires_at,
        };
        if st.args().overflow != Overflow::DropHead && self.would_overflow(&st, body_len) {
            if st.args().overflow == Overflow::RejectPublishDlx {
                self.leave(&mut st, entry, Reason::Maxlen);
            } else {
                self.replica_settled(&[entry.id]);
            }
            return Committed {
                effects: self.finish(st),
                refused: true,
            };
        }
        st.ready_bytes += body_len;
        st.memory_bytes += footprint(body_len);
        st.ready.push_back(entry);
        // As a classic enqueue: a TTL of 0 means deliver now or never.
        self.dispatch_at(&mut st, now.saturating_sub(1));
        self.expire_heads(&mut st, now);
        self.drop_over_limit(&mut st);
        Committed {
            effects: self.finish(st),
            refused: false,
        }
    }

    /// Empties the live queue (this node no longer leads the group); the replicated
    /// messages stay with the group. Consumers whose [`ConsumerSink::lead_moved`] says so
    /// stay registered, for this node to attach to the new leader; the others are let go.
    ///
    /// [`ConsumerSink::lead_moved`]: super::ConsumerSink::lead_moved
    pub fn leave_live(&self, members: &[String]) {
        let consumers = {
            let mut st = self.lock();
            Self::empty_live(&mut st);
            let listed = st.consumers.listed();
            st.consumers.take_all();
            listed
        };
        // Decided outside the queue's lock: a forwarded consumer's sink takes its session's.
        let kept: Vec<_> = consumers
            .into_iter()
            .filter(|(c, _)| c.sink.lead_moved(members))
            .collect();
        let mut st = self.lock();
        for (c, priority) in kept {
            st.consumers.add(c, priority);
        }
    }

    /// Takes every consumer of a queue this node serves through another (its clients are
    /// then told they were cancelled) and empties the live queue.
    pub fn clear_live(&self) -> Vec<super::Consumer> {
        let mut st = self.lock();
        Self::empty_live(&mut st);
        st.consumers.take_all()
    }

    /// Drops the live queue's messages, ready and unacked (the group keeps them).
    fn empty_live(st: &mut super::QueueState) {
        st.ready.clear();
        st.ready_bytes = 0;
        st.memory_bytes = 0;
        st.unacked.clear();
    }

    /// Tells the replica that `ids` left the queue for good.
    pub(super) fn replica_settled(&self, ids: &[u64]) {
        if let (Some(r), false) = (self.replica.get(), ids.is_empty()) {
            r.settled(ids);
        }
    }

    /// Returns `ids` to a replicated queue: each goes back in place (redelivered) unless it
    /// has now been returned more than `x-delivery-limit` times, when it leaves with reason
    /// `delivery_limit` (dead-lettered, or dropped without a dead-letter exchange).
    pub(super) fn requeue_replicated(
        self: &Arc<Self>,
        replica: &Arc<dyn Replica>,
        ids: &[u64],
    ) -> QueueEffects {
        let mut st = self.lock();
        let present: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| st.unacked.contains_key(id))
            .collect();
        let counts = replica.returned(&present);
        let limit = st.args().delivery_limit;
        for (id, count) in present.iter().zip(counts) {
            let Some(mut q) = st.unacked.remove(id) else {
                continue;
            };
            if limit.is_some_and(|l| count > l) {
                self.leave(&mut st, q, Reason::DeliveryLimit);
                continue;
            }
            q.redelivered = true;
            if let Some(m) = &q.message {
                q.message = Some(Arc::new(with_delivery_count(m, count)));
            }
            st.ready_bytes += q.body_len;
            st.memory_bytes += footprint(q.body_len);
            st.ready.insert_in_place(q);
        }
        if !st.deleted {
            self.dispatch_locked(&mut st);
        }
        self.finish(st)
    }
}

/// `m` with its `x-delivery-count` header set to `count`, as RabbitMQ's quorum queues
/// deliver a returned message.
fn with_delivery_count(m: &Message, count: u64) -> Message {
    let mut properties = m.properties().clone();
    properties
        .headers
        .get_or_insert_with(FieldTable::new)
        .insert(
            "x-delivery-count".into(),
            FieldValue::I64(i64::try_from(count).unwrap_or(i64::MAX)),
        );
    Message::new(
        m.exchange.clone(),
        m.routing_key.clone(),
        properties,
        None,
        m.body.clone(),
        m.charge_copy(0),
    )
}
