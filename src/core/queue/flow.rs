//! Publisher flow control, the queue's side: publishers held back while the queue's backlog
//! (ready messages) is over a bound, woken once it falls to a low mark, as RabbitMQ's credit
//! flow slows a publisher down to what its queues get rid of.
//!
//! A queue reports its backlog from each enqueue (only while it has consumers: a queue nobody
//! drains would hold its publishers for ever); the publisher's side decides whether to wait
//! and registers a [`FlowWaiter`] here. Every operation that lets the lock go through
//! [`Queue::finish`](super::Queue) (and purge and delete) checks the waiters, so they are woken
//! by whatever shrinks the backlog: deliveries, expiry, a purge, the last consumer leaving, the
//! queue's deletion.

use super::{Queue, QueueState};
use std::sync::Arc;

/// A publisher held back by a queue's backlog: told once the backlog fell to the low mark it
/// asked for, the queue lost its last consumer, or the queue was deleted.
pub trait FlowWaiter: Send + Sync {
    fn resume(&self);
}

/// The publishers a queue holds back. Boxed in the queue's state: most queues never hold one.
pub(super) struct FlowWaiters {
    /// Wake them at or below this many ready messages.
    low: usize,
    waiters: Vec<Arc<dyn FlowWaiter>>,
}

impl std::fmt::Debug for FlowWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowWaiters")
            .field("low", &self.low)
            .field("waiters", &self.waiters.len())
            .finish()
    }
}

/// Publishers to wake once the queue's lock is released.
#[must_use = "the waiters are woken after the queue's lock is released"]
pub(super) struct Resumed(Option<Box<FlowWaiters>>);

impl Resumed {
    pub(super) fn wake(self) {
        if let Some(w) = self.0 {
            for waiter in w.waiters {
                waiter.resume();
            }
        }
    }
}

impl QueueState {
    /// The backlog a publisher is held back by: the ready messages, while a consumer may take
    /// them.
    pub(super) fn flow_backlog(&self) -> usize {
        if self.consumers.is_empty() || self.deleted {
            0
        } else {
            self.ready.len()
        }
    }

    /// The waiters that may go on now (all of them, or none).
    pub(super) fn resumable(&mut self) -> Resumed {
        match &self.flow {
            Some(f) if self.flow_backlog() <= f.low => Resumed(self.flow.take()),
            _ => Resumed(None),
        }
    }
}

impl Queue {
    /// Holds a publisher back until the backlog is at most `low`: false (and nothing
    /// registered) when it is already, or no consumer drains the queue.
    pub fn hold_publisher(&self, low: usize, waiter: Arc<dyn FlowWaiter>) -> bool {
        let mut st = self.lock();
        if st.flow_backlog() <= low {
            return false;
        }
        let flow = st.flow.get_or_insert_with(|| {
            Box::new(FlowWaiters {
                low,
                waiters: Vec::new(),
            })
        });
        // Publishers share one low mark (the configured one): the lowest asked for.
        flow.low = flow.low.min(low);
        // A connection registers its one waker again after a hold ran out.
        let known = flow
            .waiters
            .iter()
            .any(|w| std::ptr::addr_eq(Arc::as_ptr(w), Arc::as_ptr(&waiter)));
        if !known {
            flow.waiters.push(waiter);
        }
        true
    }

    /// Whether publishers wait for this queue to drain: its consumers must not be held back
    /// themselves, or two connections publishing to each other's queues would wait for ever.
    pub fn holds_publishers(&self) -> bool {
        self.lock().flow.is_some()
    }
}
