//! A queue: ready messages in order, deliveries awaiting acknowledgement, and consumers served
//! round-robin within their prefetch credit.
//!
//! Every operation takes the queue's one short lock. Deliveries are handed to a consumer's
//! [`ConsumerSink`] under that lock, so the order in which a consumer sees messages is the queue's
//! order, and a consumer removed under the lock gets nothing afterwards.

use super::memory::MemoryMonitor;
use super::message::Message;
use crate::store::log::RecordPos;
use crate::store::MessageLog;
use std::collections::{HashMap, VecDeque};
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub ready_bytes: u64,
}

#[derive(Debug)]
struct Queued {
    id: u64,
    /// None while paged out: only the record's position stays in memory.
    message: Option<Arc<Message>>,
    body_len: u64,
    redelivered: bool,
    /// Where the message's enqueue record is, when it is persisted.
    stored: Option<RecordPos>,
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

/// A message recovered from the log for [`Queue::recover`].
#[derive(Debug)]
pub struct RecoveredEntry {
    pub seq: u64,
    pub at: RecordPos,
    pub body_len: u64,
    /// None: leave it paged out.
    pub message: Option<Arc<Message>>,
}

/// What [`Queue::publish_tracked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Enqueued {
    /// False when the queue was deleted meanwhile.
    pub accepted: bool,
    /// The log sequence number to wait for before confirming, 0 when nothing was written.
    pub lsn: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Ready messages, ordered by id (requeued messages go back to their place).
    ready: VecDeque<Queued>,
    ready_bytes: u64,
    /// Memory held by ready messages in memory (body plus per-message overhead, as charged to
    /// the memory monitor); paged-out messages do not count.
    memory_bytes: u64,
    unacked: HashMap<u64, Queued>,
    consumers: Vec<Consumer>,
    /// Round-robin cursor into `consumers`.
    next_consumer: usize,
    next_id: u64,
    /// Set once the queue had a consumer: auto-delete applies only after that.
    had_consumer: bool,
    deleted: bool,
}

/// What [`Queue::remove_consumer`] leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerRemoved {
    pub remaining: usize,
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
    pub arguments: FieldTable,
    /// Where persistent messages are written; None for transient queues (and tests).
    store: Option<QueueStore>,
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
        Queue {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            store: None,
            state: Mutex::new(QueueState::default()),
        }
    }

    /// Makes the queue write its persistent messages to the log.
    pub fn with_store(mut self, store: QueueStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The queue's id in the message log, when it has one.
    pub fn store_id(&self) -> Option<u64> {
        self.store.as_ref().map(|s| s.id)
    }

    /// The message of a ready entry, read back from the log if it was paged out. None if the
    /// record cannot be read (then the entry is settled and dropped: it could not be recovered
    /// either).
    fn load(&self, q: &Queued) -> Option<Arc<Message>> {
        if let Some(m) = &q.message {
            return Some(m.clone());
        }
        let (store, pos) = (self.store.as_ref()?, q.stored?);
        let read = store
            .log
            .read(pos)
            .map_err(|e| e.to_string())
            .and_then(|data| match crate::store::record::scan(&data, 0) {
                crate::store::record::Scan::Record(
                    crate::store::record::Record::Enqueue {
                        exchange,
                        routing_key,
                        properties,
                        body,
                        ..
                    },
                    _,
                ) => {
                    let props = switchboard_amqp::BasicProperties::decode(&properties)
                        .map_err(|e| e.to_string())?;
                    let charge = store.memory.charge(Message::charge_size(body.len()));
                    Ok(Arc::new(Message::new(
                        exchange,
                        routing_key,
                        props,
                        Some(properties),
                        body,
                        charge,
                    )))
                }
                other => Err(format!("not an enqueue record: {other:?}")),
            });
        match read {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(queue = %self.name, segment = pos.segment, offset = pos.offset, "cannot read a paged-out message back; dropping it: {e}");
                self.log_settled(&[(q.id, pos)]);
                None
            }
        }
    }

    /// Records in the log that these persisted entries left the queue for good.
    fn log_settled(&self, settled: &[(u64, RecordPos)]) {
        if let (Some(store), false) = (&self.store, settled.is_empty()) {
            store.log.append_settle(store.id, settled);
        }
    }

    /// Loads messages recovered from the log (in sequence order), marked redelivered: they may
    /// have been delivered before the restart.
    pub fn recover(self: &Arc<Self>, entries: Vec<RecoveredEntry>, max_seq: u64) {
        let mut st = self.lock();
        for e in entries {
            st.ready_bytes += e.body_len;
            if e.message.is_some() {
                st.memory_bytes += footprint(e.body_len);
            }
            st.ready.push_back(Queued {
                id: e.seq,
                message: e.message,
                body_len: e.body_len,
                redelivered: true,
                stored: Some(e.at),
            });
        }
        st.next_id = st.next_id.max(max_seq + 1);
    }

    /// Rewrites the enqueue records this queue still holds in log segment `segment` at the end
    /// of the log, so the segment (and the settled ones behind it) can be deleted. Returns how
    /// many were moved.
    pub fn relocate(&self, segment: u64) -> usize {
        let Some(store) = &self.store else {
            return 0;
        };
        let mut st = self.lock();
        let st = &mut *st;
        let mut moved = Vec::new();
        for q in st.ready.iter_mut().chain(st.unacked.values_mut()) {
            let Some(old) = q.stored.filter(|p| p.segment == segment) else {
                continue;
            };
            let Some(message) = self.load(q) else {
                continue;
            };
            let a = store.log.append_enqueue(store.id, q.id, &message);
            q.stored = Some(a.at);
            moved.push(old);
        }
        let n = moved.len();
        store.log.forget(moved);
        n
    }

    /// Takes the head ready entry with its message loaded, dropping unreadable ones.
    fn pop_ready(&self, st: &mut QueueState) -> Option<(Queued, Arc<Message>)> {
        while let Some(mut q) = st.ready.pop_front() {
            st.ready_bytes -= q.body_len;
            if q.message.is_some() {
                st.memory_bytes -= footprint(q.body_len);
            }
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

    /// Enqueues a message and delivers what consumers can take. False if the queue is deleted.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> bool {
        self.publish_tracked(message).accepted
    }

    /// [`Queue::publish`], also saying which log record a confirm must wait for. A persistent
    /// message is appended to the log under the queue's lock, so its enqueue record always
    /// precedes any settle record for it.
    pub fn publish_tracked(self: &Arc<Self>, message: Arc<Message>) -> Enqueued {
        let mut st = self.lock();
        if st.deleted {
            return Enqueued::default();
        }
        let id = st.next_id;
        st.next_id += 1;
        let body_len = message.body.len() as u64;
        let (stored, lsn, page_out) = match &self.store {
            Some(store) if message.is_persistent() => {
                let a = store.log.append_enqueue(store.id, id, &message);
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
        st.ready.push_back(Queued {
            id,
            message: (!page_out).then_some(message),
            body_len,
            redelivered: false,
            stored,
        });
        self.dispatch_locked(&mut st);
        Enqueued {
            accepted: true,
            lsn,
        }
    }

    /// Delivers ready messages to consumers with credit. Called whenever credit may have
    /// returned (ack, outbound buffer drained) or consumers changed.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let start = st.next_consumer % n;
            let Some(idx) = (0..n).map(|i| (start + i) % n).find(|&i| {
                let c = &st.consumers[i];
                c.sink.try_reserve(!c.no_ack)
            }) else {
                return;
            };
            st.next_consumer = idx + 1;
            let Some((q, message)) = self.pop_ready(st) else {
                // Only unreadable entries were left; the reserved credit goes unused.
                return;
            };
            let delivery = Delivery {
                id: q.id,
                message,
                redelivered: q.redelivered,
            };
            let consumer = &st.consumers[idx];
            let (sink, no_ack) = (consumer.sink.clone(), consumer.no_ack);
            if !no_ack {
                st.unacked.insert(q.id, q);
            } else if let Some(pos) = q.stored {
                self.log_settled(&[(q.id, pos)]);
            }
            sink.deliver(self, delivery);
        }
    }

    /// Registers a consumer and starts delivering to it.
    pub fn add_consumer(self: &Arc<Self>, consumer: Consumer) -> Result<(), ConsumeError> {
        let mut st = self.lock();
        if st.deleted {
            return Err(ConsumeError::Deleted(self.name.clone()));
        }
        if st.consumers.iter().any(|c| c.exclusive) {
            return Err(ConsumeError::ExclusiveConsumerPresent(self.name.clone()));
        }
        if consumer.exclusive && !st.consumers.is_empty() {
            return Err(ConsumeError::QueueInUse(self.name.clone()));
        }
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Removes a consumer by id; None if it was not registered.
    pub fn remove_consumer(&self, consumer_id: u64) -> Option<ConsumerRemoved> {
        let mut st = self.lock();
        let pos = st.consumers.iter().position(|c| c.id == consumer_id)?;
        st.consumers.remove(pos);
        if st.next_consumer > pos {
            st.next_consumer -= 1;
        }
        Some(ConsumerRemoved {
            remaining: st.consumers.len(),
        })
    }

    /// Whether an auto-delete queue should go now: it had a consumer and has none left.
    pub fn auto_delete_due(&self) -> bool {
        let st = self.lock();
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Takes the head message for `basic.get`, with the number of messages left ready.
    pub fn get(&self, no_ack: bool) -> Option<(Delivery, u32)> {
        let mut st = self.lock();
        let (q, message) = self.pop_ready(&mut st)?;
        let delivery = Delivery {
            id: q.id,
            message,
            redelivered: q.redelivered,
        };
        if !no_ack {
            st.unacked.insert(q.id, q);
        } else if let Some(pos) = q.stored {
            self.log_settled(&[(q.id, pos)]);
        }
        Some((delivery, saturating_u32(st.ready.len())))
    }

    /// Settles deliveries for good (ack, or reject without requeue). Unknown ids are ignored.
    pub fn settle(&self, ids: &[u64]) {
        let mut st = self.lock();
        let mut persisted = Vec::new();
        for id in ids {
            if let Some(Queued {
                stored: Some(pos), ..
            }) = st.unacked.remove(id)
            {
                persisted.push((*id, pos));
            }
        }
        // Under the lock, so a settle record never overtakes the requeue or delete it races.
        self.log_settled(&persisted);
    }

    /// Puts unacked deliveries back in their original places, marked redelivered, and delivers
    /// again.
    pub fn requeue(self: &Arc<Self>, ids: &[u64]) {
        let mut st = self.lock();
        for id in ids {
            let Some(mut q) = st.unacked.remove(id) else {
                continue;
            };
            q.redelivered = true;
            // Unacked entries always hold their message (it was loaded to be delivered).
            st.ready_bytes += q.body_len;
            st.memory_bytes += footprint(q.body_len);
            // Ready is ordered by id; requeued messages are usually older than all ready ones.
            let pos = st.ready.partition_point(|r| r.id < q.id);
            st.ready.insert(pos, q);
        }
        if !st.deleted {
            self.dispatch_locked(&mut st);
        }
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.lock();
        let n = st.ready.len();
        let persisted: Vec<(u64, RecordPos)> = st
            .ready
            .iter()
            .filter_map(|q| q.stored.map(|s| (q.id, s)))
            .collect();
        st.ready.clear();
        st.ready_bytes = 0;
        st.memory_bytes = 0;
        self.log_settled(&persisted);
        saturating_u32(n)
    }

    /// Marks the queue deleted and empties it; the caller notifies the returned consumers.
    pub fn delete(&self) -> QueueDeleted {
        let mut st = self.lock();
        st.deleted = true;
        let messages = saturating_u32(st.ready.len());
        if let Some(store) = &self.store {
            // The queue leaves the definitions, so recovery ignores its records: no settle
            // records needed, only the segments' live counts.
            let segments = st.ready.iter().chain(st.unacked.values());
            store.log.forget(segments.filter_map(|q| q.stored));
        }
        st.ready.clear();
        st.ready_bytes = 0;
        st.memory_bytes = 0;
        st.unacked.clear();
        QueueDeleted {
            messages,
            consumers: std::mem::take(&mut st.consumers),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        QueueStats {
            ready: st.ready.len() as u64,
            unacked: st.unacked.len() as u64,
            consumers: st.consumers.len() as u64,
            ready_bytes: st.ready_bytes,
        }
    }

    pub fn message_count(&self) -> u32 {
        saturating_u32(self.lock().ready.len())
    }

    pub fn consumer_count(&self) -> u32 {
        saturating_u32(self.lock().consumers.len())
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
mod tests {
    use super::*;
    use crate::core::memory::MemoryCharge;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A consumer that records deliveries and has a fixed prefetch.
    struct TestSink {
        prefetch: u32,
        in_flight: AtomicU32,
        got: Mutex<Vec<Delivery>>,
    }

    impl TestSink {
        fn new(prefetch: u32) -> Arc<Self> {
            Arc::new(TestSink {
                prefetch,
                in_flight: AtomicU32::new(0),
                got: Mutex::new(vec![]),
            })
        }
        fn bodies(&self) -> Vec<String> {
            self.got
                .lock()
                .unwrap()
                .iter()
                .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
                .collect()
        }
    }

    impl ConsumerSink for TestSink {
        fn try_reserve(&self, needs_ack: bool) -> bool {
            if !needs_ack || self.prefetch == 0 {
                return true;
            }
            self.in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.prefetch).then_some(n + 1)
                })
                .is_ok()
        }
        fn deliver(&self, _q: &Arc<Queue>, d: Delivery) {
            self.got.lock().unwrap().push(d);
        }
        fn cancelled(&self, _q: &Queue, _tag: &str) {}
    }

    fn msg(body: &str) -> Arc<Message> {
        Arc::new(Message::new(
            String::new(),
            "q".into(),
            Default::default(),
            None,
            Bytes::from(body.to_owned()),
            MemoryCharge::default(),
        ))
    }

    fn queue() -> Arc<Queue> {
        Arc::new(Queue::new(
            "q".into(),
            "/".into(),
            false,
            false,
            None,
            FieldTable::new(),
        ))
    }

    fn consumer(id: u64, sink: &Arc<TestSink>, no_ack: bool) -> Consumer {
        Consumer {
            id,
            tag: format!("c{id}"),
            no_ack,
            exclusive: false,
            owner: 1,
            sink: sink.clone(),
        }
    }

    #[test]
    fn round_robin_between_consumers() {
        let q = queue();
        let (a, b) = (TestSink::new(0), TestSink::new(0));
        q.add_consumer(consumer(1, &a, true)).unwrap();
        q.add_consumer(consumer(2, &b, true)).unwrap();
        for i in 0..4 {
            q.publish(msg(&i.to_string()));
        }
        assert_eq!(a.bodies(), vec!["0", "2"]);
        assert_eq!(b.bodies(), vec!["1", "3"]);
    }

    #[test]
    fn prefetch_limits_and_requeue_keeps_order() {
        let q = queue();
        let a = TestSink::new(2);
        for i in 0..5 {
            q.publish(msg(&i.to_string()));
        }
        q.add_consumer(consumer(1, &a, false)).unwrap();
        assert_eq!(a.bodies(), vec!["0", "1"]);
        assert_eq!(
            q.stats(),
            QueueStats {
                ready: 3,
                unacked: 2,
                consumers: 1,
                ready_bytes: 3
            }
        );
        // The consumer goes away without acking: both come back first, redelivered.
        q.remove_consumer(1);
        let ids: Vec<u64> = a.got.lock().unwrap().iter().map(|d| d.id).collect();
        q.requeue(&ids);
        let (d, left) = q.get(true).unwrap();
        assert_eq!(
            (&d.message.body[..], d.redelivered, left),
            (&b"0"[..], true, 4)
        );
        let (d, _) = q.get(true).unwrap();
        assert_eq!((&d.message.body[..], d.redelivered), (&b"1"[..], true));
        let (d, _) = q.get(true).unwrap();
        assert_eq!((&d.message.body[..], d.redelivered), (&b"2"[..], false));
    }

    #[test]
    fn exclusive_consumer_rules() {
        let q = queue();
        let a = TestSink::new(0);
        let mut ex = consumer(1, &a, true);
        ex.exclusive = true;
        q.add_consumer(ex).unwrap();
        assert!(matches!(
            q.add_consumer(consumer(2, &a, true)),
            Err(ConsumeError::ExclusiveConsumerPresent(_))
        ));
        q.remove_consumer(1);
        q.add_consumer(consumer(2, &a, true)).unwrap();
        let mut ex = consumer(3, &a, true);
        ex.exclusive = true;
        assert!(matches!(
            q.add_consumer(ex),
            Err(ConsumeError::QueueInUse(_))
        ));
    }

    #[test]
    fn settle_purge_delete_counts() {
        let q = queue();
        for i in 0..3 {
            q.publish(msg(&i.to_string()));
        }
        let (d, _) = q.get(false).unwrap();
        assert_eq!(q.stats().unacked, 1);
        q.settle(&[d.id]);
        assert_eq!(q.stats().unacked, 0);
        assert_eq!(q.purge(), 2);
        q.publish(msg("x"));
        let del = q.delete();
        assert_eq!(del.messages, 1);
        assert!(!q.publish(msg("y")), "deleted queue refuses");
    }
}
