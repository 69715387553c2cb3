//! The broker-wide timer: queues register the time their next message expires or they
//! themselves expire, delayed exchanges the time their next message is due, and one task sleeps
//! until the earliest of those and wakes its owner.
//!
//! A queue arms the timer only for a deadline earlier than the one it already armed, so the heap
//! holds a few entries per queue at most; an entry that turns out early (the message was
//! consumed meanwhile) only makes the queue look and arm again.
//!
//! What comes due is applied by the vhost the target belongs to: the timer owns each served
//! vhost (see [`Timer::serve`]) and hands it to the target, which returns its effects to it
//! (dead letters, the queue's own deletion, held messages now due). Queues and holds keep no
//! pointer up to their vhost; the timer lets go of a vhost when it is deleted
//! ([`Timer::stop_serving`]) or the broker shuts down, so nothing keeps a deleted vhost alive.

use super::clock::Clock;
use super::vhost::VHost;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Something the timer wakes: a queue (TTL, `x-expires`) or a delayed exchange's hold.
pub trait Timed: Send + Sync + std::fmt::Debug {
    /// Its deadline came: do what is due, hand the effects to `vhost` (the target's own) to
    /// apply, and arm the timer again for what is next.
    fn on_timer(self: Arc<Self>, vhost: &VHost);
}

/// Names a served vhost in the timer's entries (see [`Timer::owner_id`]).
pub type OwnerId = u64;

#[derive(Debug)]
struct Entry {
    at: u64,
    /// Tie-breaker so entries order totally without comparing targets.
    seq: u64,
    target: Target,
}

/// What an entry wakes.
#[derive(Debug)]
enum Target {
    /// A queue or delayed hold of the vhost with this owner id.
    Owned(OwnerId, Weak<dyn Timed>),
    /// A task waiting on the broker's clock (a connection's deadline, a session's expiry),
    /// which belongs to no vhost.
    Wake(Weak<Notify>),
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
}

#[derive(Debug)]
pub struct Timer {
    clock: Arc<dyn Clock>,
    heap: Mutex<Heap>,
    /// The vhosts whose targets' effects the timer applies, by owner id.
    owners: Mutex<HashMap<OwnerId, Arc<VHost>>>,
    next_owner: AtomicU64,
    /// Woken when a deadline earlier than every other one arrives.
    earlier: Notify,
}

impl Timer {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Timer {
            clock,
            heap: Mutex::new(Heap::default()),
            owners: Mutex::new(HashMap::new()),
            next_owner: AtomicU64::new(1),
            earlier: Notify::new(),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Now on the broker's clock as a wall-clock time (MQTT's expiry intervals count on it,
    /// so tests move them with the clock instead of sleeping).
    pub fn now_system(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.clock.now_ms())
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, Heap> {
        self.heap.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<OwnerId, Arc<VHost>>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh id for a vhost to give its queues and delayed holds, which arm the timer under
    /// it.
    pub fn owner_id(&self) -> OwnerId {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes the timer apply what comes due in `vhost`'s queues and holds (armed under
    /// `vhost`'s owner id). Until then, or after [`Timer::stop_serving`], their deadlines pass
    /// without effect.
    pub fn serve(&self, owner: OwnerId, vhost: Arc<VHost>) {
        self.owners().insert(owner, vhost);
    }

    /// Lets go of a vhost (deleted): its pending deadlines are dropped with it.
    pub fn stop_serving(&self, owner: OwnerId) {
        let gone = self.owners().remove(&owner);
        self.heap()
            .entries
            .retain(|Reverse(e)| !matches!(e.target, Target::Owned(o, _) if o == owner));
        drop(gone);
    }

    /// Asks for `target`, of the vhost with id `owner`, to be woken at `at` (ms since the
    /// epoch).
    pub fn arm(&self, at: u64, owner: OwnerId, target: Weak<dyn Timed>) {
        self.push(at, Target::Owned(owner, target));
    }

    /// Asks for `wake` to be notified at `at` (ms since the epoch), for a task waiting on the
    /// broker's clock.
    pub fn wake_at(&self, at: u64, wake: Weak<Notify>) {
        self.push(at, Target::Wake(wake));
    }

    fn push(&self, at: u64, target: Target) {
        let mut heap = self.heap();
        let earliest = heap.entries.peek().is_none_or(|Reverse(e)| at < e.at);
        let seq = heap.next_seq;
        heap.next_seq += 1;
        heap.entries.push(Reverse(Entry { at, seq, target }));
        drop(heap);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Wakes every target whose deadline has come; returns the next deadline, if any.
    pub fn fire_due(&self) -> Option<u64> {
        loop {
            let now = self.clock.now_ms();
            let due = {
                let mut heap = self.heap();
                match heap.entries.peek() {
                    Some(Reverse(e)) if e.at <= now => heap.entries.pop().map(|Reverse(e)| e),
                    Some(Reverse(e)) => return Some(e.at),
                    None => return None,
                }
            };
            // Outside the heap lock: the target re-arms while it runs.
            let Some(due) = due else { continue };
            match due.target {
                Target::Owned(owner, target) => {
                    let vhost = self.owners().get(&owner).cloned();
                    if let (Some(vhost), Some(t)) = (vhost, target.upgrade()) {
                        t.on_timer(&vhost);
                    }
                }
                Target::Wake(wake) => {
                    if let Some(n) = wake.upgrade() {
                        // A permit is kept when nobody waits, so a ring between two waits
                        // is not lost.
                        n.notify_one();
                    }
                }
            }
        }
    }

    /// Number of pending entries (for tests and listings).
    pub fn pending(&self) -> usize {
        self.heap().entries.len()
    }

    /// Serves deadlines until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self.fire_due();
            let wait = next.map(|at| Duration::from_millis(at.saturating_sub(self.now_ms())));
            tokio::select! {
                _ = self.earlier.notified() => {}
                _ = async {
                    match wait {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        // The served vhosts hold the timer: let go of them.
                        self.owners().clear();
                        return;
                    }
                }
            }
        }
    }
}
