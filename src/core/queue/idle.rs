//! `x-expires` across restarts. A durable queue with an idle timeout keeps in the log (one keyed
//! record, [`kind::QUEUE_IDLE`], keyed by its log id) the time it has been unused since, so that
//! after a restart its idle time counts from its last use before the restart, not from the start
//! (RabbitMQ starts counting again).
//!
//! The record is written when the queue becomes unused (declared, last consumer gone) and
//! removed while it has consumers (then the last use is unknown, and a restart counts from the
//! start). A `basic.get` or redeclaration of an unused queue moves the record on at most once per
//! [`step`]: the record then holds a time up to one step later than the use, so a restart can
//! only make the queue live that much longer, never expire earlier. None of these writes is
//! waited for: a record lost to a crash only makes the restart count from the start.

use super::{Queue, QueueState, QueueStore};
use crate::store::keyed::{kind, RecoveredKeyed};

/// How far ahead of a use the record written for it may be: a tenth of the idle timeout, at
/// most a second, so a queue polled with `basic.get` writes at most one record a second.
fn step(expires: u64) -> u64 {
    (expires / 10).min(1000)
}

fn key(store: &QueueStore) -> [u8; 8] {
    store.id.to_be_bytes()
}

impl Queue {
    /// The queue's place in the log, when it keeps its idle time there (`st` is the queue's
    /// locked state: its arguments say whether it has an idle timeout).
    fn idle_store(&self, st: &QueueState) -> Option<&QueueStore> {
        self.store.as_ref().filter(|_| st.args().expires.is_some())
    }

    /// Takes the time the queue has been unused since, as recorded before the restart
    /// (before [`Queue::attach`], which starts the idle timer from it).
    pub fn recover_idle_since(&self, keyed: &RecoveredKeyed) {
        let mut st = self.lock();
        let Some(store) = self.idle_store(&st) else {
            return;
        };
        let recorded = keyed
            .get(kind::QUEUE_IDLE, &key(store))
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes);
        st.idle_recorded = recorded;
    }

    /// At attach: the idle timer starts from the recovered time, else from `now` (recorded).
    pub(super) fn start_idle_clock(&self, st: &mut QueueState, now: u64) {
        match st.idle_recorded {
            Some(since) => st.last_used = since,
            None if st.consumers.is_empty() => self.record_idle_since(st, now),
            None => {}
        }
    }

    /// The queue's last consumer left at `now`.
    pub(super) fn became_unused(&self, st: &mut QueueState, now: u64) {
        self.record_idle_since(st, now);
    }

    /// The queue got its first consumer: while it has one it does not expire.
    pub(super) fn became_used(&self, st: &mut QueueState) {
        if let (Some(store), Some(_)) = (self.idle_store(st), st.idle_recorded.take()) {
            store.log.delete(kind::QUEUE_IDLE, &key(store));
        }
    }

    /// A `basic.get` or redeclaration at `now` (already in `last_used`).
    pub(super) fn used_while_idle(&self, st: &mut QueueState, now: u64) {
        let Some(expires) = st.args().expires else {
            return;
        };
        if st.consumers.is_empty() && st.idle_recorded.is_none_or(|r| r < now) {
            self.record_idle_since(st, now.saturating_add(step(expires)));
        }
    }

    fn record_idle_since(&self, st: &mut QueueState, since: u64) {
        if let Some(store) = self.idle_store(st) {
            store
                .log
                .put(kind::QUEUE_IDLE, &key(store), &since.to_be_bytes());
            st.idle_recorded = Some(since);
        }
    }

    /// The queue is deleted: so is its record (a delete of no record writes nothing).
    pub(super) fn forget_idle_since(&self, st: &QueueState) {
        if let Some(store) = self.idle_store(st) {
            store.log.delete(kind::QUEUE_IDLE, &key(store));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::step;

    #[test]
    fn the_step_is_a_tenth_of_the_timeout_and_at_most_a_second() {
        assert_eq!(step(100), 10);
        assert_eq!(step(5_000), 500);
        assert_eq!(step(3_600_000), 1000);
    }
}
