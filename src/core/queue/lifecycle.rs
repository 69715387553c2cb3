//! How messages leave a queue other than by delivery: TTL expiry, length limits and
//! rejection, with dead letters collected under the lock and returned as effects after it; the
//! timer that wakes the queue for expiries and `x-expires`.

use super::args;
use super::ready::Queued;
use super::{footprint, Queue, QueueEffects, QueueState};
use crate::core::dead_letter::{DeadLetter, Reason};
use crate::core::timer::Timed;
use crate::core::vhost::VHost;
use std::sync::{Arc, MutexGuard, Weak};

impl Queue {
    /// When a message enqueued at `now` expires: the lower of the queue's `x-message-ttl` and
    /// the message's `expiration` property (an invalid one, which AMQP publishers cannot send,
    /// is ignored).
    pub(super) fn expiry_of(st: &QueueState, expiration: Option<&str>, now: u64) -> Option<u64> {
        let per_message = expiration.and_then(|e| args::parse_expiration(e).ok());
        let ttl = match (st.args().message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| now.saturating_add(t))
    }

    /// Takes a removed ready entry out of the byte counts.
    pub(super) fn unaccount(st: &mut QueueState, q: &Queued) {
        st.ready_bytes -= q.body_len;
        if q.message.is_some() {
            st.memory_bytes -= footprint(q.body_len);
        }
    }

    /// A message leaves the queue for good without being acknowledged (expired, rejected,
    /// dropped by a length limit): its settle record is written, exactly as for an ack, so a
    /// restart never brings it back, and it is kept for the dead-letter exchange if the queue
    /// has one.
    pub(super) fn leave(&self, st: &mut QueueState, q: Queued, reason: Reason) {
        if st.args().dead_letter_exchange.is_some() {
            // An unreadable entry was settled and dropped by `load`.
            let Some(message) = self.load(&q) else {
                return;
            };
            st.dead.push(DeadLetter { message, reason });
        }
        if let Some(pos) = q.stored {
            self.log_settled(&[(q.id, pos)]);
        } else {
            self.replica_settled(&[q.id]);
        }
    }

    /// Removes the head messages whose TTL has run out.
    pub(super) fn expire_heads(&self, st: &mut QueueState, now: u64) {
        while let Some(q) = st.ready.pop_expired_head(now) {
            Self::unaccount(st, &q);
            st.expired += 1;
            self.leave(st, q, Reason::Expired);
        }
    }

    /// Whether one more message of `body_len` bytes would take the queue past a length limit.
    pub(super) fn would_overflow(&self, st: &QueueState, body_len: u64) -> bool {
        st.args()
            .max_length
            .is_some_and(|m| st.ready.len() as u64 >= m)
            || st
                .args()
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes.saturating_add(body_len) > m)
    }

    /// With `drop-head`, drops (or dead-letters) from the head until the queue is within its
    /// limits again.
    pub(super) fn drop_over_limit(&self, st: &mut QueueState) {
        let over = |st: &QueueState| {
            st.args()
                .max_length
                .is_some_and(|m| st.ready.len() as u64 > m)
                || st
                    .args()
                    .max_length_bytes
                    .is_some_and(|m| st.ready_bytes > m)
        };
        while over(st) {
            let Some(q) = st.ready.pop_front() else {
                return;
            };
            Self::unaccount(st, &q);
            self.leave(st, q, Reason::Maxlen);
        }
    }

    /// Asks the timer to wake the queue when its next message expires, or when it expires
    /// itself, if that is earlier than what it already asked for.
    pub(super) fn rearm(self: &Arc<Self>, st: &mut QueueState) {
        let Some(env) = &self.env else {
            return;
        };
        if st.deleted {
            return;
        }
        let idle = st
            .args()
            .expires
            .filter(|_| st.consumers.is_empty())
            .map(|e| st.last_used.saturating_add(e));
        let next = match (st.ready.next_expiry(), idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            if st.armed.is_none_or(|armed| at < armed) {
                st.armed = Some(at);
                let me: Weak<dyn Timed> = Arc::downgrade(self) as Weak<Queue>;
                env.timer.arm(at, env.owner, me);
            }
        }
    }

    /// Re-arms the timer and releases the lock, returning what had to wait for that:
    /// dead letters to republish and the queue's deletion when `x-expires` ran out.
    /// Publishers held back by the backlog are woken here when it has shrunk enough.
    pub(super) fn finish(self: &Arc<Self>, mut st: MutexGuard<'_, QueueState>) -> QueueEffects {
        self.rearm(&mut st);
        let effects = QueueEffects {
            dead: std::mem::take(&mut st.dead),
            expired: std::mem::take(&mut st.expire_queue),
        };
        let resumed = st.resumable();
        drop(st);
        resumed.wake();
        effects
    }

    /// The timer's call: removes expired head messages and finds whether the queue has been
    /// unused for its `x-expires` (then it is to be deleted).
    pub(super) fn expire_due(self: &Arc<Self>) -> QueueEffects {
        let now = self.now();
        let mut st = self.lock();
        if st.armed.is_some_and(|a| a <= now) {
            st.armed = None;
        }
        if st.deleted {
            return QueueEffects::default();
        }
        self.expire_heads(&mut st, now);
        if let Some(e) = st.args().expires {
            if st.consumers.is_empty() && now >= st.last_used.saturating_add(e) {
                st.expire_queue = true;
            }
        }
        self.finish(st)
    }

    /// Records a use of the queue (a redeclaration) for `x-expires`.
    pub fn touch(&self) {
        let now = self.now();
        let mut st = self.lock();
        st.last_used = now;
        self.used_while_idle(&mut st, now);
    }

    /// Messages removed because their TTL ran out, since the queue was created.
    pub fn expired_count(&self) -> u64 {
        self.lock().expired
    }
}

impl Timed for Queue {
    fn on_timer(self: Arc<Self>, vhost: &VHost) {
        let effects = self.expire_due();
        vhost.apply(&self, effects);
    }
}
