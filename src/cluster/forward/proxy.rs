//! The side of a node holding proxies for queues another node holds: one [`Link`] per home
//! node carries publishes (batched, in order), consumer registrations and settles to it, and
//! fetches deliveries for the local consumers (long polls, which are also this node's lease
//! there). A [`Proxy`] is one queue's [`RemoteHome`].

use super::wire::{Call, How, Publish, Refusal, Reply, Session, WireDelivery, WireMessage};
use crate::cluster::transport::{Auth, Peer, Request, Response};
use crate::core::queue::{
    ConsumeError, Consumer, ConsumerSink, Delivery, Enqueued, Queue, QueueStats, RemoteHome,
};
use crate::core::{Broker, Message};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Publishes waiting to be sent to one home node: what is in flight per peer is bounded by
/// this many messages (each holds its memory charge until the home node answered).
const PUBLISH_QUEUE: usize = 4096;
/// Most messages, and roughly bytes, in one publish frame.
const BATCH_MAX: usize = 512;
const BATCH_MAX_BYTES: usize = 4 << 20;
/// How long a fetch waits at the home node for a delivery before answering empty.
const FETCH_WAIT_MS: u64 = 200;

/// Runs `f` to completion from synchronous core code on a runtime worker, handing the
/// worker over meanwhile (as a clustered declaration does). None outside a multi-threaded
/// runtime, where it cannot wait.
fn block_on<F: Future>(f: F) -> Option<F::Output> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle = Handle::try_current().ok()?;
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return None;
    }
    Some(tokio::task::block_in_place(|| handle.block_on(f)))
}

/// A message waiting to go to its home node: the message itself, so that its memory charge
/// counts it until the home node answered.
struct Pending {
    vhost: String,
    queue: String,
    message: Arc<Message>,
    /// Told whether the home node took it (persistent messages wait for it).
    taken: Option<oneshot::Sender<bool>>,
}

/// A local consumer of a proxy, and what came for it from the home node that it could not
/// take yet (its own prefetch full).
struct Local {
    queue: Weak<Queue>,
    sink: Arc<dyn ConsumerSink>,
    tag: String,
    no_ack: bool,
    buffer: VecDeque<Delivery>,
}

#[derive(Default)]
struct LinkState {
    consumers: HashMap<u64, Local>,
    /// Deliveries handed to local consumers since the last fetch, per consumer: the home
    /// node's window opens by as many.
    credits: HashMap<u64, u32>,
    /// Consumers let go of after the home node stopped answering ([`Link::unanswered`]),
    /// which it may still hold: what comes for them goes back, with no cancel that could
    /// overtake their attaching again here (a consume replaces the home's registration).
    released: HashSet<u64>,
}

/// This node's link to one home node.
pub struct Link {
    home: String,
    session: Session,
    timeout: Duration,
    broker: Weak<Broker>,
    control: Peer,
    /// Settles and cancels, sent in order by one task.
    settles: mpsc::UnboundedSender<Call>,
    publishes: mpsc::Sender<Pending>,
    /// The last publish batch failed: transient messages are refused until one goes through.
    down: AtomicBool,
    state: Mutex<LinkState>,
    fetching: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("home", &self.home).finish()
    }
}

impl Link {
    /// A link to `home` at `addr`, its publisher running until `shutdown`.
    pub fn start(
        home: String,
        addr: String,
        session: Session,
        auth: Arc<Auth>,
        timeout: Duration,
        broker: Weak<Broker>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Link> {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let (settles, settle_rx) = mpsc::unbounded_channel();
        let peer =
            |addr: &str| Peer::new(addr.to_owned(), Some(home.clone()), auth.clone(), timeout);
        let link = Arc::new(Link {
            home: home.clone(),
            session,
            timeout,
            broker,
            control: peer(&addr),
            settles,
            publishes: tx,
            down: AtomicBool::new(false),
            state: Mutex::new(LinkState::default()),
            fetching: AtomicBool::new(false),
        });
        tokio::spawn(publisher(
            Arc::downgrade(&link),
            peer(&addr),
            rx,
            shutdown.clone(),
        ));
        tokio::spawn(settler(
            Arc::downgrade(&link),
            peer(&addr),
            settle_rx,
            shutdown.clone(),
        ));
        tokio::spawn(fetcher(Arc::downgrade(&link), peer(&addr), shutdown));
        link
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn call(&self, call: Call) -> Option<Reply> {
        ask(&self.control, call, self.timeout).await
    }

    /// Sends `call` in order behind earlier settles, not waiting for its answer. Unbounded,
    /// but only by what local consumers hold: each settle is of a delivery the home node's
    /// window let through.
    fn send(&self, call: Call) {
        let _ = self.settles.send(call);
    }

    /// Hands buffered deliveries to the local consumers of `queue` (all when None) that
    /// have credit.
    fn drain(&self, st: &mut LinkState, only: Option<&Arc<Queue>>) {
        let LinkState {
            consumers, credits, ..
        } = st;
        for (id, local) in consumers.iter_mut() {
            let Some(q) = local.queue.upgrade() else {
                continue;
            };
            if only.is_some_and(|o| !Arc::ptr_eq(o, &q)) {
                continue;
            }
            while !local.buffer.is_empty() && local.sink.try_reserve(!local.no_ack) {
                if let Some(d) = local.buffer.pop_front() {
                    *credits.entry(*id).or_default() += 1;
                    local.sink.deliver(&q, d);
                }
            }
        }
    }

    fn received(&self, deliveries: Vec<WireDelivery>) {
        let Some(b) = self.broker.upgrade() else {
            return;
        };
        let mut st = self.lock();
        for d in deliveries {
            let Some(local) = st.consumers.get_mut(&d.consumer) else {
                // Cancelled meanwhile (or its consume was answered after it timed out here):
                // back to the home node, and no more for it.
                self.send(Call::Settle {
                    session: self.session.id,
                    vhost: d.vhost,
                    queue: d.queue,
                    how: How::Requeue,
                    ids: vec![d.id],
                });
                if st.released.contains(&d.consumer) {
                    continue;
                }
                self.send(Call::Cancel {
                    session: self.session.id,
                    consumer: d.consumer,
                });
                continue;
            };
            match d.message.into_message(|size| b.memory.charge(size)) {
                Ok(m) => local.buffer.push_back(Delivery {
                    id: d.id,
                    message: Arc::new(m),
                    redelivered: d.redelivered,
                }),
                Err(e) => tracing::warn!(error = %e, "forward: undecodable delivery dropped"),
            }
        }
        self.drain(&mut st, None);
    }

    /// The home node cancelled these consumers: so are their clients' consumers here.
    fn cancelled(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let gone: Vec<(u64, Local)> = {
            let mut st = self.lock();
            ids.iter()
                .filter_map(|id| st.consumers.remove(id).map(|l| (*id, l)))
                .collect()
        };
        cancel_locals(gone);
    }

    /// The home node has not answered a fetch for longer than the operation timeout: the
    /// consumers of quorum queues let go of it, to follow the lead wherever it is now (a
    /// classic queue's consumers wait for their one home).
    fn unanswered(&self) {
        let gone: Vec<(u64, Local)> = {
            let mut st = self.lock();
            let ids: Vec<u64> = st
                .consumers
                .iter()
                .filter(|(_, l)| l.queue.upgrade().is_some_and(|q| q.replica().is_some()))
                .map(|(id, _)| *id)
                .collect();
            st.released.extend(&ids);
            ids.iter()
                .filter_map(|id| st.consumers.remove(id).map(|l| (*id, l)))
                .collect()
        };
        if !gone.is_empty() {
            tracing::info!(home = %self.home, consumers = gone.len(), "forward: a quorum queue's leader does not answer; its consumers here follow the lead");
            cancel_locals(gone);
        }
    }

    fn take_credits(&self) -> Vec<(u64, u32)> {
        self.lock().credits.drain().collect()
    }

    /// The home node lost this node's session (it restarted, or the lease ran out): the
    /// local consumers are cancelled, as RabbitMQ cancels consumers of a queue whose node
    /// went down.
    fn lost_session(&self) {
        let gone: Vec<(u64, Local)> = {
            let mut st = self.lock();
            st.released.clear();
            st.consumers.drain().collect()
        };
        cancel_locals(gone);
    }
}

/// Tells the clients of these local consumers that they were cancelled, and removes them
/// from their queues (their link no longer knows them, so nothing goes to the home node). A
/// quorum queue's consumers are kept instead, to follow its lead ([`Replica::consumers_let_go`]).
///
/// [`Replica::consumers_let_go`]: crate::core::queue::replica::Replica::consumers_let_go
fn cancel_locals(gone: Vec<(u64, Local)>) {
    for (id, local) in gone {
        if let Some(q) = local.queue.upgrade() {
            if q.replica().is_some_and(|r| r.consumers_let_go()) {
                continue;
            }
            local.sink.cancelled(&q, &local.tag);
            let _ = q.remove_consumer(id);
        }
    }
}

async fn ask(peer: &Peer, call: Call, timeout: Duration) -> Option<Reply> {
    match peer.call(&Request::Forward(call), timeout).await {
        Ok(Response::Forward(reply)) => Some(reply),
        Ok(other) => {
            tracing::warn!(peer = %peer.addr(), answer = ?other, "forward: call answered with the wrong kind");
            None
        }
        Err(e) => {
            tracing::debug!(peer = %peer.addr(), error = %e, "forward: call failed");
            None
        }
    }
}

/// Sends queued publishes to the home node in batches, in order, telling each publisher
/// whether the home node took its message.
async fn publisher(
    link: Weak<Link>,
    peer: Peer,
    mut rx: mpsc::Receiver<Pending>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = crate::cluster::stopped(&mut shutdown) => return,
        };
        let mut bytes = first.message.body.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX && bytes < BATCH_MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.message.body.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(l) = link.upgrade() else { return };
        let (publishes, waiters): (Vec<Publish>, Vec<Option<oneshot::Sender<bool>>>) = batch
            .into_iter()
            .map(|p| {
                let publish = Publish {
                    message: WireMessage::of(&p.message),
                    vhost: p.vhost,
                    queue: p.queue,
                };
                (publish, p.taken)
            })
            .unzip();
        let n = publishes.len();
        let taken = match publish_within(&peer, publishes, l.timeout, &mut shutdown).await {
            Some(t) if t.len() == n => {
                l.down.store(false, Ordering::Release);
                t
            }
            _ => {
                tracing::warn!(home = %l.home, messages = n, "forward: publish to the home node failed; refused");
                l.down.store(true, Ordering::Release);
                vec![false; n]
            }
        };
        for (w, ok) in waiters.into_iter().zip(taken) {
            if let Some(w) = w {
                let _ = w.send(ok);
            }
        }
    }
}

/// Sends `publishes` to the home node, again after a failed call (a connection reset, the
/// peer's reconnect delay) until one is answered or `within` has passed: a link that drops
/// one connection must not refuse what the next one carries. A call whose answer was lost
/// may have been taken, so a message sent again may be enqueued twice (at-least-once).
async fn publish_within(
    peer: &Peer,
    publishes: Vec<Publish>,
    within: Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Vec<bool>> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Some(Reply::Published(t)) = ask(peer, Call::Publish(publishes.clone()), left).await {
            return Some(t);
        }
        let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::cluster::stopped(shutdown) => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Sends settles and cancels in order, consecutive settles of one kind on one queue as one
/// call.
async fn settler(
    link: Weak<Link>,
    peer: Peer,
    mut rx: mpsc::UnboundedReceiver<Call>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut next: Option<Call> = None;
    loop {
        let mut call = match next.take() {
            Some(c) => c,
            None => tokio::select! {
                c = rx.recv() => match c { Some(c) => c, None => return },
                _ = crate::cluster::stopped(&mut shutdown) => return,
            },
        };
        while let Ok(more) = rx.try_recv() {
            match (&mut call, more) {
                (
                    Call::Settle {
                        vhost,
                        queue,
                        how,
                        ids,
                        ..
                    },
                    Call::Settle {
                        vhost: v2,
                        queue: q2,
                        how: h2,
                        ids: more_ids,
                        ..
                    },
                ) if *vhost == v2 && *queue == q2 && *how == h2 => ids.extend(more_ids),
                (_, other) => {
                    next = Some(other);
                    break;
                }
            }
        }
        // Settles are idempotent on the home node (it settles only what the session still
        // holds), so one whose answer was lost is sent again until one arrives: a lost ack
        // would leave the message unacked there for as long as this node keeps its lease.
        let mut delay = Duration::from_millis(50);
        loop {
            let Some(l) = link.upgrade() else { return };
            let timeout = l.timeout;
            drop(l);
            if ask(&peer, call.clone(), timeout).await.is_some() {
                break;
            }
            tracing::debug!(peer = %peer.addr(), "forward: a settle did not reach the home node; sent again");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::cluster::stopped(&mut shutdown) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

/// Fetches deliveries for the local consumers while there are any, returning credit as
/// they take them.
async fn fetcher(link: Weak<Link>, peer: Peer, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    // The number of the last answer that arrived: the home node sends an answer again
    // until a fetch names it, so a reply lost with its connection strands nothing there.
    let mut received = 0;
    // Since when fetches have gone unanswered (None: the last one was answered).
    let mut unanswered_since: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(l) = link.upgrade() else { return };
        if !l.fetching.load(Ordering::Acquire) {
            drop(l);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                _ = crate::cluster::stopped(&mut shutdown) => return,
            }
        }
        let credits = l.take_credits();
        let call = Call::Fetch {
            session: l.session.id,
            credits: credits.clone(),
            wait_ms: FETCH_WAIT_MS,
            received,
        };
        let limit = l.timeout + Duration::from_millis(FETCH_WAIT_MS);
        drop(l);
        let reply = tokio::select! {
            r = ask(&peer, call, limit) => r,
            _ = crate::cluster::stopped(&mut shutdown) => return,
        };
        let Some(l) = link.upgrade() else { return };
        match reply {
            Some(Reply::Fetched {
                batch,
                deliveries,
                cancelled,
            }) => {
                unanswered_since = None;
                if batch != received {
                    received = batch;
                    l.received(deliveries);
                    l.cancelled(&cancelled);
                }
            }
            Some(Reply::UnknownSession) => {
                unanswered_since = None;
                tracing::warn!(home = %l.home, "forward: the home node lost this node's session; its consumers are cancelled");
                l.fetching.store(false, Ordering::Release);
                l.lost_session();
            }
            _ => {
                // Not answered: give the credit back to the next try.
                let since = *unanswered_since.get_or_insert_with(Instant::now);
                if since.elapsed() > l.timeout {
                    l.unanswered();
                    // Consumers attached here again meanwhile get a whole timeout of their own.
                    unanswered_since = None;
                }
                {
                    let mut st = l.lock();
                    for (c, n) in credits {
                        *st.credits.entry(c).or_default() += n;
                    }
                }
                drop(l);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn lock_stats(m: &Mutex<Option<(QueueStats, Instant)>>) -> Option<(QueueStats, Instant)> {
    *m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the home node for a queue's figures (at most `limit`), keeping them in `into`.
async fn ask_stats(
    link: &Link,
    call: Call,
    limit: Duration,
    into: &Mutex<Option<(QueueStats, Instant)>>,
) -> Option<QueueStats> {
    let Ok(Some(Reply::Stats(Some(w)))) = tokio::time::timeout(limit, link.call(call)).await else {
        return None;
    };
    let s = QueueStats {
        ready: w.ready,
        unacked: w.unacked,
        consumers: w.consumers,
        ready_bytes: w.ready_bytes,
        counters: Default::default(),
    };
    *into.lock().unwrap_or_else(|e| e.into_inner()) = Some((s, Instant::now()));
    Some(s)
}

/// One queue held on another node, as its proxy here reaches it.
pub struct Proxy {
    link: Arc<Link>,
    vhost: String,
    queue: String,
    /// The figures last had from the home node, and when.
    stats: Arc<Mutex<Option<(QueueStats, Instant)>>>,
    /// A background refresh of `stats` is on its way.
    refreshing: Arc<AtomicBool>,
}

/// How old figures a listing takes before asking the home node again (in the background).
const STATS_FRESH: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("home", &self.link.home)
            .field("queue", &self.queue)
            .finish()
    }
}

impl Proxy {
    pub fn new(link: Arc<Link>, vhost: String, queue: String) -> Self {
        Proxy {
            link,
            vhost,
            queue,
            stats: Arc::new(Mutex::new(None)),
            refreshing: Arc::new(AtomicBool::new(false)),
        }
    }

    fn stats_call(&self) -> Call {
        Call::Stats {
            vhost: self.vhost.clone(),
            queue: self.queue.clone(),
        }
    }

    fn settle_as(&self, how: How, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        self.link.send(Call::Settle {
            session: self.link.session.id,
            vhost: self.vhost.clone(),
            queue: self.queue.clone(),
            how,
            ids: ids.to_vec(),
        });
    }
}

fn refused() -> Enqueued {
    Enqueued {
        refused: true,
        ..Enqueued::default()
    }
}

impl RemoteHome for Proxy {
    fn home(&self) -> &str {
        &self.link.home
    }

    fn enqueue(&self, _queue: &Arc<Queue>, message: &Arc<Message>) -> Enqueued {
        let persistent = message.is_persistent();
        if !persistent && self.link.down.load(Ordering::Acquire) {
            return refused();
        }
        let (tx, rx) = if persistent {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let pending = Pending {
            vhost: self.vhost.clone(),
            queue: self.queue.clone(),
            message: message.clone(),
            taken: tx,
        };
        // Full: wait for room (backpressure on the publisher), never buffer without bound.
        match self.link.publishes.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(p)) => {
                let sent = block_on(self.link.publishes.send(p));
                if !matches!(sent, Some(Ok(()))) {
                    return refused();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return refused(),
        }
        let taken = match rx {
            None => true,
            Some(rx) => {
                let limit = self.link.timeout * 2;
                match block_on(tokio::time::timeout(limit, rx)) {
                    Some(Ok(Ok(taken))) => taken,
                    Some(_) => false,
                    // Off the runtime (nothing to acknowledge there): sent, not waited for.
                    None => true,
                }
            }
        };
        if taken {
            Enqueued {
                accepted: true,
                ..Enqueued::default()
            }
        } else {
            refused()
        }
    }

    fn consumer_added(
        &self,
        queue: &Arc<Queue>,
        consumer: &Consumer,
        priority: i32,
    ) -> Result<(), ConsumeError> {
        let mut st = self.link.lock();
        st.released.remove(&consumer.id);
        st.consumers.insert(
            consumer.id,
            Local {
                queue: Arc::downgrade(queue),
                sink: consumer.sink.clone(),
                tag: consumer.tag.clone(),
                no_ack: consumer.no_ack,
                buffer: VecDeque::new(),
            },
        );
        drop(st);
        let call = Call::Consume {
            session: self.link.session.clone(),
            vhost: self.vhost.clone(),
            queue: self.queue.clone(),
            consumer: consumer.id,
            tag: consumer.tag.clone(),
            no_ack: consumer.no_ack,
            exclusive: consumer.exclusive,
            priority,
            window: consumer.sink.prefetch_count(),
        };
        let reply = block_on(self.link.call(call)).flatten();
        let refusal = match reply {
            Some(Reply::Consumed(Ok(()))) => {
                self.link.fetching.store(true, Ordering::Release);
                return Ok(());
            }
            Some(Reply::Consumed(Err(r))) => r,
            // Unreachable: as a queue whose node is down, it cannot be consumed from.
            _ => Refusal::Deleted,
        };
        self.link.lock().consumers.remove(&consumer.id);
        let name = self.queue.clone();
        Err(match refusal {
            Refusal::ExclusiveConsumerPresent => ConsumeError::ExclusiveConsumerPresent(name),
            Refusal::QueueInUse => ConsumeError::QueueInUse(name),
            Refusal::Deleted => ConsumeError::Deleted(name),
            Refusal::NotLeader(leader) => ConsumeError::NotLeader {
                queue: name,
                leader,
            },
        })
    }

    fn consumer_removed(&self, _queue: &Arc<Queue>, consumer_id: u64) {
        let (local, released) = {
            let mut st = self.link.lock();
            let released = st.released.remove(&consumer_id);
            (st.consumers.remove(&consumer_id), released)
        };
        let Some(local) = local else {
            if released {
                // The home node may still hold it.
                self.link.send(Call::Cancel {
                    session: self.link.session.id,
                    consumer: consumer_id,
                });
            }
            return;
        };
        // What came for it but never reached the client goes back first.
        if !local.no_ack {
            let back: Vec<u64> = local.buffer.iter().map(|d| d.id).collect();
            self.settle_as(How::Requeue, &back);
        }
        self.link.send(Call::Cancel {
            session: self.link.session.id,
            consumer: consumer_id,
        });
    }

    fn get(&self, _queue: &Arc<Queue>, no_ack: bool) -> Option<(Delivery, u32)> {
        let call = Call::Get {
            session: self.link.session.clone(),
            vhost: self.vhost.clone(),
            queue: self.queue.clone(),
            no_ack,
        };
        let Some(Some(Reply::Got(Some((d, left))))) = block_on(self.link.call(call)) else {
            return None;
        };
        // Keeps the session's lease while the delivery is unacked.
        self.link.fetching.store(true, Ordering::Release);
        let b = self.link.broker.upgrade()?;
        let message = d.message.into_message(|size| b.memory.charge(size)).ok()?;
        Some((
            Delivery {
                id: d.id,
                message: Arc::new(message),
                redelivered: d.redelivered,
            },
            left,
        ))
    }

    fn settle(&self, ids: &[u64]) {
        self.settle_as(How::Ack, ids);
    }

    fn reject(&self, ids: &[u64]) {
        self.settle_as(How::Reject, ids);
    }

    fn requeue(&self, ids: &[u64]) {
        self.settle_as(How::Requeue, ids);
    }

    fn dispatch(&self, queue: &Arc<Queue>) {
        let mut st = self.link.lock();
        self.link.drain(&mut st, Some(queue));
    }

    fn purge(&self) -> u32 {
        let call = Call::Purge {
            vhost: self.vhost.clone(),
            queue: self.queue.clone(),
        };
        match block_on(self.link.call(call)) {
            Some(Some(Reply::Purged(n))) => n,
            _ => 0,
        }
    }

    fn stats(&self) -> Option<QueueStats> {
        // Asked each time (a declare-ok must count what other nodes published a moment
        // ago); the last known figures stand in while the home node cannot answer.
        let cached = lock_stats(&self.stats).map(|(s, _)| s);
        let call = self.stats_call();
        let limit = self.link.timeout.min(Duration::from_secs(1));
        let asked = block_on(ask_stats(&self.link, call, limit, &self.stats)).flatten();
        asked.or(cached)
    }

    fn stats_recent(&self) -> Option<QueueStats> {
        let held = lock_stats(&self.stats);
        let stale = held.is_none_or(|(_, at)| at.elapsed() > STATS_FRESH);
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let (link, call) = (self.link.clone(), self.stats_call());
                    let (stats, refreshing) = (self.stats.clone(), self.refreshing.clone());
                    let limit = link.timeout.min(Duration::from_secs(1));
                    rt.spawn(async move {
                        ask_stats(&link, call, limit, &stats).await;
                        refreshing.store(false, Ordering::Release);
                    });
                }
                Err(_) => self.refreshing.store(false, Ordering::Release),
            }
        }
        held.map(|(s, _)| s)
    }

    fn deleted(&self) {
        let mut st = self.link.lock();
        let ids: Vec<u64> = st
            .consumers
            .iter()
            .filter(|(_, l)| {
                l.queue
                    .upgrade()
                    .is_some_and(|q| q.vhost == self.vhost && q.name == self.queue)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            st.consumers.remove(&id);
        }
    }
}
