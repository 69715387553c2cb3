//! The side of the node holding a queue: it enqueues what other nodes send it, and serves
//! their consumers. Each other node is a [`Session`] (one per incarnation): its consumers
//! here are ordinary consumers of the queue whose sink puts deliveries in the session's
//! outbox, which the other node fetches. A session that stops fetching for its lease (the
//! other node stopped, or the link between them broke) is closed: its consumers go and every
//! delivery it had not settled is requeued, marked redelivered, as a closed channel's are.

use super::wire::{
    Call, How, Publish, Refusal, Reply, Session, WireDelivery, WireMessage, WireStats,
};
use crate::core::queue::{ConsumeError, Consumer, ConsumerSink, Delivery, Queue};
use crate::core::{Broker, Publish as CorePublish, PublishTo, VHost};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most deliveries in one fetch answer, and roughly the most bytes (the transport's frame
/// limit is 16 MiB).
const FETCH_MAX: usize = 1024;
const FETCH_MAX_BYTES: usize = 8 << 20;
/// Deliveries a remote consumer without a prefetch limit may have on their way at once.
const DEFAULT_WINDOW: u32 = 256;

type QueueKey = (String, String);

/// The sessions of the other nodes served here.
pub struct Home {
    broker: Weak<Broker>,
    sessions: Mutex<HashMap<u64, Arc<RemoteSession>>>,
    lease: Duration,
}

struct RemoteSession {
    node: String,
    last_seen: Mutex<Instant>,
    state: Mutex<SessionState>,
    /// Woken when the outbox gets a delivery.
    ready: Notify,
}

#[derive(Default)]
struct SessionState {
    outbox: Vec<Outgoing>,
    /// Deliveries sent (or to send) and not settled yet, by queue.
    unacked: HashMap<QueueKey, HashSet<u64>>,
    consumers: HashMap<u64, Served>,
    /// Consumers the queue cancelled here, for the next fetch to tell the other node.
    cancelled: Vec<u64>,
    /// The last fetch answer, until the next fetch says it arrived.
    unconfirmed: Option<Batch>,
    /// The number of the last fetch answer.
    batches: u64,
}

/// One fetch answer, kept until the other node confirms it got it.
struct Batch {
    number: u64,
    deliveries: Vec<Outgoing>,
    cancelled: Vec<u64>,
}

impl Batch {
    fn reply(&self) -> Reply {
        Reply::Fetched {
            batch: self.number,
            deliveries: self.deliveries.iter().map(Outgoing::wire).collect(),
            cancelled: self.cancelled.clone(),
        }
    }
}

struct Outgoing {
    consumer: u64,
    queue: QueueKey,
    delivery: Delivery,
    needs_ack: bool,
}

impl Outgoing {
    fn wire(&self) -> WireDelivery {
        WireDelivery {
            consumer: self.consumer,
            vhost: self.queue.0.clone(),
            queue: self.queue.1.clone(),
            id: self.delivery.id,
            redelivered: self.delivery.redelivered,
            message: WireMessage::of(&self.delivery.message),
        }
    }
}

/// One of the session's consumers, as registered on the queue here.
struct Served {
    queue: Arc<Queue>,
    id: u64,
    sink: Arc<RemoteSink>,
}

/// A remote consumer's sink: takes a delivery while the window allows, and puts it in the
/// session's outbox.
struct RemoteSink {
    session: Weak<RemoteSession>,
    consumer: u64,
    key: QueueKey,
    credit: AtomicU32,
    prefetch: u32,
    no_ack: bool,
}

impl ConsumerSink for RemoteSink {
    fn try_reserve(&self, _needs_ack: bool) -> bool {
        self.credit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok()
    }

    fn deliver(&self, _queue: &Arc<Queue>, delivery: Delivery) {
        let Some(session) = self.session.upgrade() else {
            return;
        };
        let mut st = session.lock();
        if !self.no_ack {
            // The queue keeps it unacked until the other node settles it.
            st.unacked
                .entry(self.key.clone())
                .or_default()
                .insert(delivery.id);
        }
        st.outbox.push(Outgoing {
            consumer: self.consumer,
            queue: self.key.clone(),
            delivery,
            needs_ack: !self.no_ack,
        });
        drop(st);
        session.ready.notify_one();
    }

    fn cancelled(&self, _queue: &Queue, _consumer_tag: &str) {
        self.tell_cancelled();
    }

    fn prefetch_count(&self) -> u32 {
        self.prefetch
    }

    fn lead_moved(&self, members: &[String]) -> bool {
        let Some(session) = self.session.upgrade() else {
            return false;
        };
        if members.contains(&session.node) {
            // That node's own view of the group moves its consumer to the new leader: it is
            // dropped here without a word, so that its client is not told it was cancelled.
            session.lock().consumers.remove(&self.consumer);
        } else {
            self.tell_cancelled();
        }
        false
    }
}

impl RemoteSink {
    /// The queue was deleted here, or this node stopped leading its quorum queue: the other
    /// node learns it with its next fetch and cancels the client's consumer.
    fn tell_cancelled(&self) {
        if let Some(session) = self.session.upgrade() {
            let mut st = session.lock();
            st.consumers.remove(&self.consumer);
            st.cancelled.push(self.consumer);
            drop(st);
            session.ready.notify_one();
        }
    }
}

impl RemoteSession {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    fn note_unacked(&self, key: &QueueKey, id: u64) {
        self.lock()
            .unacked
            .entry(key.clone())
            .or_default()
            .insert(id);
    }
}

/// Whether `q` is served here: not a quorum queue another node leads (whose operations
/// would go on to that node from here, a second hop the asking node makes itself).
fn serves(q: &Queue) -> bool {
    q.replica().is_none_or(|r| r.is_leader())
}

impl Home {
    pub fn new(broker: &Arc<Broker>, lease: Duration) -> Self {
        Home {
            broker: Arc::downgrade(broker),
            sessions: Mutex::new(HashMap::new()),
            lease,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<RemoteSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session(&self, id: u64) -> Option<Arc<RemoteSession>> {
        let s = self.sessions().get(&id).cloned();
        if let Some(s) = &s {
            s.touch();
        }
        s
    }

    fn open(&self, session: &Session) -> Arc<RemoteSession> {
        let s = self
            .sessions()
            .entry(session.id)
            .or_insert_with(|| {
                tracing::debug!(node = %session.node, session = session.id, "forward: session opened");
                Arc::new(RemoteSession {
                    node: session.node.clone(),
                    last_seen: Mutex::new(Instant::now()),
                    state: Mutex::new(SessionState::default()),
                    ready: Notify::new(),
                })
            })
            .clone();
        s.touch();
        s
    }

    /// The queue `vhost`/`queue` when this node holds it.
    fn local_queue(
        &self,
        vhost: &str,
        queue: &str,
    ) -> Option<(Arc<Broker>, Arc<VHost>, Arc<Queue>)> {
        let b = self.broker.upgrade()?;
        let vh = b.vhost(vhost)?;
        let q = vh.queue(queue)?;
        if q.remote().is_some() {
            return None;
        }
        Some((b, vh, q))
    }

    /// Answers one request of another node.
    pub async fn handle(&self, call: Call) -> Reply {
        match call {
            Call::Publish(batch) => Reply::Published(self.publish(batch).await),
            Call::Consume {
                session,
                vhost,
                queue,
                consumer,
                tag,
                no_ack,
                exclusive,
                priority,
                window,
            } => Reply::Consumed(self.consume(
                &session,
                (vhost, queue),
                (consumer, tag, no_ack, exclusive, priority),
                window,
            )),
            Call::Cancel { session, consumer } => {
                if let Some(s) = self.session(session) {
                    self.cancel(&s, consumer);
                }
                Reply::Done
            }
            Call::Get {
                session,
                vhost,
                queue,
                no_ack,
            } => Reply::Got(self.get(&session, (vhost, queue), no_ack)),
            Call::Settle {
                session,
                vhost,
                queue,
                how,
                ids,
            } => {
                self.settle(session, (vhost, queue), how, &ids);
                Reply::Done
            }
            Call::Fetch {
                session,
                credits,
                wait_ms,
                received,
            } => match self.session(session) {
                None => Reply::UnknownSession,
                Some(s) => self.fetch(&s, &credits, wait_ms, received).await,
            },
            Call::Purge { vhost, queue } => Reply::Purged(
                self.local_queue(&vhost, &queue)
                    .filter(|(_, _, q)| serves(q))
                    .map_or(0, |(_, _, q)| q.purge()),
            ),
            Call::Stats { vhost, queue } => {
                Reply::Stats(self.local_queue(&vhost, &queue).map(|(_, _, q)| {
                    let s = q.stats();
                    WireStats {
                        ready: s.ready,
                        unacked: s.unacked,
                        consumers: s.consumers,
                        ready_bytes: s.ready_bytes,
                    }
                }))
            }
        }
    }

    /// Enqueues each message on its queue here, in order, and waits until the persistent
    /// ones are durable; says per message whether it was taken.
    async fn publish(&self, batch: Vec<Publish>) -> Vec<bool> {
        let Some(b) = self.broker.upgrade() else {
            return vec![false; batch.len()];
        };
        let mut taken = Vec::with_capacity(batch.len());
        let mut lsn = 0;
        let mut scratch = Vec::new();
        for p in batch {
            let Some((_, vh, q)) = self.local_queue(&p.vhost, &p.queue) else {
                taken.push(false);
                continue;
            };
            let message = match p.message.into_message(|size| b.memory.charge(size)) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    tracing::warn!(error = %e, "forward: undecodable message refused");
                    taken.push(false);
                    continue;
                }
            };
            let outcome = vh.publish(
                CorePublish {
                    to: PublishTo::Queue(&q),
                    message: &message,
                    holdable: false,
                },
                &mut scratch,
            );
            lsn = lsn.max(outcome.lsn);
            taken.push(!outcome.refused() && !q.is_deleted());
        }
        b.access.durable(lsn).await;
        taken
    }

    fn consume(
        &self,
        session: &Session,
        (vhost, queue): QueueKey,
        (consumer, tag, no_ack, exclusive, priority): (u64, String, bool, bool, i32),
        window: u32,
    ) -> Result<(), Refusal> {
        let Some((b, vh, q)) = self.local_queue(&vhost, &queue) else {
            return Err(Refusal::Deleted);
        };
        if let Some(r) = q.replica().filter(|r| !r.is_leader()) {
            return Err(Refusal::NotLeader(r.leader()));
        }
        let s = self.open(session);
        // The same consumer again: its node let go of it (this node did not answer for a
        // while) and attaches it anew; the earlier registration goes first.
        self.cancel(&s, consumer);
        let sink = Arc::new(RemoteSink {
            session: Arc::downgrade(&s),
            consumer,
            key: (vhost, queue),
            credit: AtomicU32::new(if window == 0 { DEFAULT_WINDOW } else { window }),
            prefetch: window,
            no_ack,
        });
        let id = b.next_id();
        s.lock().consumers.insert(
            consumer,
            Served {
                queue: q.clone(),
                id,
                sink: sink.clone(),
            },
        );
        let registered = q.add_consumer_with_priority(
            Consumer {
                id,
                tag,
                no_ack,
                exclusive,
                owner: 0,
                sink,
            },
            priority,
        );
        match registered {
            Ok(effects) => {
                vh.apply(&q, effects);
                Ok(())
            }
            Err(e) => {
                s.lock().consumers.remove(&consumer);
                Err(match e {
                    ConsumeError::ExclusiveConsumerPresent(_) => Refusal::ExclusiveConsumerPresent,
                    ConsumeError::QueueInUse(_) => Refusal::QueueInUse,
                    ConsumeError::Deleted(_) => Refusal::Deleted,
                    ConsumeError::NotLeader { leader, .. } => Refusal::NotLeader(leader),
                })
            }
        }
    }

    /// Removes the session's consumer `consumer`; what it had in the outbox goes back.
    fn cancel(&self, s: &RemoteSession, consumer: u64) {
        let Some(served) = s.lock().consumers.remove(&consumer) else {
            return;
        };
        if let Some(removed) = served.queue.remove_consumer(served.id) {
            self.apply(&served.queue, removed.effects);
            self.consumer_gone(&served.queue);
        }
        let back: Vec<Outgoing> = {
            let mut st = s.lock();
            let (back, keep) = std::mem::take(&mut st.outbox)
                .into_iter()
                .partition(|o| o.consumer == consumer);
            st.outbox = keep;
            back
        };
        self.requeue_outgoing(s, back);
    }

    fn requeue_outgoing(&self, s: &RemoteSession, back: Vec<Outgoing>) {
        let mut by_queue: HashMap<QueueKey, Vec<u64>> = HashMap::new();
        {
            let mut st = s.lock();
            for o in back.into_iter().filter(|o| o.needs_ack) {
                if let Some(ids) = st.unacked.get_mut(&o.queue) {
                    ids.remove(&o.delivery.id);
                }
                by_queue.entry(o.queue).or_default().push(o.delivery.id);
            }
        }
        for (key, ids) in by_queue {
            self.settle_here(&key, How::Requeue, &ids);
        }
    }

    fn get(&self, session: &Session, key: QueueKey, no_ack: bool) -> Option<(WireDelivery, u32)> {
        let (_, vh, q) = self
            .local_queue(&key.0, &key.1)
            .filter(|(_, _, q)| serves(q))?;
        let (got, effects) = q.get(no_ack);
        vh.apply(&q, effects);
        let (d, left) = got?;
        if !no_ack {
            self.open(session).note_unacked(&key, d.id);
        }
        Some((
            WireDelivery {
                consumer: 0,
                vhost: key.0.clone(),
                queue: key.1.clone(),
                id: d.id,
                redelivered: d.redelivered,
                message: WireMessage::of(&d.message),
            },
            left,
        ))
    }

    /// Settles what the session holds of `ids`. Only those: a delivery the session no longer
    /// holds (its lease ran out and it was requeued) may be another consumer's by now.
    fn settle(&self, session: u64, key: QueueKey, how: How, ids: &[u64]) {
        let Some(s) = self.session(session) else {
            tracing::debug!(session, "forward: settle from an unknown session ignored");
            return;
        };
        let held: Vec<u64> = {
            let mut st = s.lock();
            let Some(set) = st.unacked.get_mut(&key) else {
                return;
            };
            ids.iter().copied().filter(|id| set.remove(id)).collect()
        };
        self.settle_here(&key, how, &held);
    }

    fn settle_here(&self, key: &QueueKey, how: How, ids: &[u64]) {
        let Some((_, _, q)) = self
            .local_queue(&key.0, &key.1)
            .filter(|(_, _, q)| serves(q))
        else {
            return;
        };
        let effects = match how {
            How::Ack => {
                q.settle(ids);
                return;
            }
            How::Reject => q.reject(ids),
            How::Requeue => q.requeue(ids),
        };
        self.apply(&q, effects);
    }

    fn apply(&self, q: &Arc<Queue>, effects: crate::core::QueueEffects) {
        if let Some(vh) = self.broker.upgrade().and_then(|b| b.vhost(&q.vhost)) {
            vh.apply(q, effects);
        }
    }

    /// A consumer of another node left `q`: an auto-delete queue nobody consumes any more
    /// goes, as for a consumer of this node.
    fn consumer_gone(&self, q: &Arc<Queue>) {
        if let Some(vh) = self.broker.upgrade().and_then(|b| b.vhost(&q.vhost)) {
            vh.consumer_gone(q);
        }
    }

    async fn fetch(
        &self,
        s: &Arc<RemoteSession>,
        credits: &[(u64, u32)],
        wait_ms: u64,
        received: u64,
    ) -> Reply {
        let mut refill = Vec::new();
        {
            let st = s.lock();
            for (consumer, n) in credits {
                if let Some(served) = st.consumers.get(consumer) {
                    served.sink.credit.fetch_add(*n, Ordering::AcqRel);
                    refill.push(served.queue.clone());
                }
            }
        }
        for q in refill {
            let effects = q.dispatch();
            self.apply(&q, effects);
        }
        {
            let mut st = s.lock();
            if st
                .unconfirmed
                .as_ref()
                .is_some_and(|b| b.number == received)
            {
                st.unconfirmed = None;
            }
            if let Some(lost) = &st.unconfirmed {
                // The last answer never arrived: the same again.
                return lost.reply();
            }
        }
        if s.lock().outbox.is_empty() && s.lock().cancelled.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(wait_ms), s.ready.notified()).await;
        }
        let taken: Vec<Outgoing> = {
            let mut st = s.lock();
            let mut bytes = 0;
            let mut n = 0;
            for o in &st.outbox {
                bytes += o.delivery.message.body.len() * 4 / 3 + 256;
                n += 1;
                if n >= FETCH_MAX || bytes >= FETCH_MAX_BYTES {
                    break;
                }
            }
            st.outbox.drain(..n).collect()
        };
        if !s.lock().outbox.is_empty() {
            s.ready.notify_one();
        }
        let mut st = s.lock();
        st.batches += 1;
        let batch = Batch {
            number: st.batches,
            deliveries: taken,
            cancelled: std::mem::take(&mut st.cancelled),
        };
        let reply = batch.reply();
        st.unconfirmed = Some(batch);
        reply
    }

    /// Closes the sessions whose lease ran out: their consumers go, and what they had not
    /// settled is requeued.
    pub fn expire(&self) {
        let lease = self.lease;
        let gone: Vec<(u64, Arc<RemoteSession>)> = {
            let mut sessions = self.sessions();
            let ids: Vec<u64> = sessions
                .iter()
                .filter(|(_, s)| s.idle_for() > lease)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| sessions.remove(&id).map(|s| (id, s)))
                .collect()
        };
        for (id, s) in gone {
            self.close(id, &s);
        }
    }

    fn close(&self, id: u64, s: &Arc<RemoteSession>) {
        let consumers: Vec<Served> = s.lock().consumers.drain().map(|(_, c)| c).collect();
        for served in consumers {
            if let Some(removed) = served.queue.remove_consumer(served.id) {
                self.apply(&served.queue, removed.effects);
                self.consumer_gone(&served.queue);
            }
        }
        // Consumers are gone from their queues, so nothing is added any more.
        let unacked = std::mem::take(&mut s.lock().unacked);
        let mut requeued = 0;
        for (key, ids) in unacked {
            let ids: Vec<u64> = ids.into_iter().collect();
            requeued += ids.len();
            self.settle_here(&key, How::Requeue, &ids);
        }
        {
            let mut st = s.lock();
            st.outbox.clear();
            st.unconfirmed = None;
        }
        tracing::info!(node = %s.node, session = id, requeued, "forward: session closed (lease ran out), its unacked deliveries requeued");
    }

    /// Closes every session (this node stops).
    pub fn close_all(&self) {
        let all: Vec<(u64, Arc<RemoteSession>)> = self.sessions().drain().collect();
        for (id, s) in all {
            self.close(id, &s);
        }
    }
}
