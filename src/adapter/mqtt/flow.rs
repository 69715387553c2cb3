//! Publisher flow control, the MQTT side: a connection whose QoS 1/2 publish left a queue's
//! backlog over `mqtt.flow_backlog` stops being read (the driver gates its reads, as for the
//! memory alarm) until the queue is down to half of it. The publishes already routed are
//! acknowledged as usual, so PUBACK keeps meaning "routed, and on disk if durable"; the
//! client's own window then stops it, and the TCP window stops a client without one.
//!
//! It must never wait for ever. A queue reports a backlog only while it has a consumer, and
//! wakes its waiters when it loses the last one or is deleted. A connection is not held back
//! by a queue it consumes itself (its acknowledgements are what drain it), nor while a
//! publisher waits for one of its own queues (two connections publishing into each other's
//! queues would each wait for the other to read). A hold that two connections entered at the
//! same instant, or any other wait the checks miss, ends after [`MAX_HOLD`] anyway.

use crate::adapter::outbox::Outbox;
use crate::core::queue::FlowWaiter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a connection is held back in one go. A healthy consumer drains the backlog to
/// the low mark in milliseconds; this only bounds a wait nobody will end.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(1);

/// Wakes a held-back connection: the queue calls it once its backlog is low again.
struct Resume {
    resumed: AtomicBool,
    outbox: Arc<Outbox>,
}

impl FlowWaiter for Resume {
    fn resume(&self) {
        self.resumed.store(true, Ordering::Release);
        // The MQTT connection's task writes its own outbox: its wake-up is the session's.
        self.outbox.wake();
    }
}

/// A connection's flow-control state.
pub(super) struct Flow {
    /// Held back at most until then; None when not held.
    held_until: Option<Instant>,
    /// Reads still to handle before the next hold, after one ran out: what was left in the
    /// buffer, and one more read (the acknowledgements a waiting peer needs from us).
    grace: u8,
    /// One waker per connection, registered once per queue it waits for.
    resume: Arc<Resume>,
    /// Held back over this backlog (`mqtt.flow_backlog`), resumed at half of it.
    bound: usize,
}

impl Flow {
    pub(super) fn new(outbox: Arc<Outbox>, bound: usize) -> Self {
        Flow {
            held_until: None,
            grace: 0,
            resume: Arc::new(Resume {
                resumed: AtomicBool::new(false),
                outbox,
            }),
            bound,
        }
    }

    /// Whether the connection may be held back now (a hold did not just run out).
    pub(super) fn may_hold(&self) -> bool {
        self.grace == 0 && self.held_until.is_none()
    }

    /// The low mark and waker to register with a congested queue ([`Flow::held`] after a
    /// successful registration).
    pub(super) fn waiter(&self) -> (usize, Arc<dyn FlowWaiter>) {
        self.resume.resumed.store(false, Ordering::Release);
        (self.bound / 2, self.resume.clone())
    }

    /// The queue registered the waker: no reads until it resumes us or `now + MAX_HOLD`.
    pub(super) fn held(&mut self, now: Instant) {
        self.held_until = Some(now + MAX_HOLD);
    }

    pub(super) fn is_held(&self) -> bool {
        self.held_until.is_some()
    }

    /// When the hold runs out, if the connection is held.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.held_until
    }

    /// Whether the connection is still held back at `now`: false once the queue resumed it or
    /// the hold ran out.
    pub(super) fn still_held(&mut self, now: Instant) -> bool {
        let Some(until) = self.held_until else {
            return false;
        };
        if self.resume.resumed.load(Ordering::Acquire) {
            self.held_until = None;
            return false;
        }
        if now >= until {
            tracing::debug!("publisher flow-control hold ran out");
            self.held_until = None;
            self.grace = 2;
            return false;
        }
        true
    }

    /// A read was handled: after a hold ran out, one less before the next hold.
    pub(super) fn read_handled(&mut self) {
        self.grace = self.grace.saturating_sub(1);
    }
}
