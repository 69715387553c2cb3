//! Publisher-confirm timing. A confirming publisher keeps the send time of every message not
//! yet confirmed, in publish order (delivery tags count from 1 on the channel); its reader
//! settles them as `basic.ack`/`basic.nack` arrive and records each confirm's latency (send →
//! ack received). When the run kills a broker node (`--kill-pid`), the reader also notes how
//! long after the kill the first message published after it was confirmed: confirms already
//! on their way at the kill do not count, so the figure is the time the cluster needed to
//! confirm again.

use super::record::MAX_LATENCY_US;
use super::report::Latency;
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::Mutex;

/// What every publisher of a run confirmed, merged.
#[derive(Debug)]
pub struct ConfirmTally {
    pub latency_us: Histogram<u64>,
    pub confirmed: u64,
    pub nacked: u64,
    /// Nanoseconds from the kill to the first confirm of a message published after it.
    pub first_after_kill_ns: Option<u64>,
    /// The longest time between two confirms, in nanoseconds (from the first confirm on).
    pub longest_gap_ns: u64,
    last_ack_ns: Option<u64>,
}

impl ConfirmTally {
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(ConfirmTally {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            confirmed: 0,
            nacked: 0,
            first_after_kill_ns: None,
            longest_gap_ns: 0,
            last_ack_ns: None,
        })
    }

    /// Adds another publisher's tally: the earliest recovery, the longest gap.
    pub fn merge(&mut self, other: &ConfirmTally) {
        // Same bounds on every tally, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.confirmed += other.confirmed;
        self.nacked += other.nacked;
        self.first_after_kill_ns = match (self.first_after_kill_ns, other.first_after_kill_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.longest_gap_ns = self.longest_gap_ns.max(other.longest_gap_ns);
    }

    pub fn latency(&self) -> Option<Latency> {
        Latency::of(&self.latency_us)
    }
}

/// One publisher's messages awaiting confirmation and what its confirms showed.
#[derive(Debug)]
pub struct Pending {
    /// The delivery tag of the oldest message in `sent_ns`.
    next_tag: u64,
    /// Send times (ns since the run started) of the unconfirmed messages, oldest first.
    sent_ns: VecDeque<u64>,
    pub tally: ConfirmTally,
}

impl Pending {
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Pending {
            next_tag: 1,
            sent_ns: VecDeque::new(),
            tally: ConfirmTally::new()?,
        })
    }

    /// A message was published at `now_ns`: it takes the next delivery tag.
    pub fn published(&mut self, now_ns: u64) {
        self.sent_ns.push_back(now_ns);
    }

    /// An ack (or, with `nack`, a nack) for every tag up to `tag` arrived at `now_ns`; `kill_ns`
    /// is when the run killed a node, if it has. An ack settles every tag up to it even without
    /// `multiple`, as the publisher's window counts: brokers confirm one queue's messages in
    /// order.
    pub fn settle(&mut self, tag: u64, nack: bool, now_ns: u64, kill_ns: Option<u64>) {
        let t = &mut self.tally;
        if let Some(last) = t.last_ack_ns {
            t.longest_gap_ns = t.longest_gap_ns.max(now_ns.saturating_sub(last));
        }
        t.last_ack_ns = Some(now_ns);
        while self.next_tag <= tag {
            let Some(sent) = self.sent_ns.pop_front() else {
                break;
            };
            self.next_tag += 1;
            if nack {
                t.nacked += 1;
                continue;
            }
            t.confirmed += 1;
            let _ = t
                .latency_us
                .record((now_ns.saturating_sub(sent) / 1_000).clamp(1, MAX_LATENCY_US));
            if let Some(kill) = kill_ns.filter(|k| sent > *k) {
                t.first_after_kill_ns.get_or_insert(now_ns - kill);
            }
        }
    }
}

/// The run's merged tally, which each publisher adds to when it ends.
pub type SharedTally = Mutex<Option<ConfirmTally>>;

/// Adds a publisher's tally to the run's.
pub fn add_to(shared: &SharedTally, tally: &ConfirmTally) {
    let Ok(mut run) = shared.lock() else {
        return;
    };
    match run.as_mut() {
        Some(r) => r.merge(tally),
        None => {
            if let Ok(mut copy) = ConfirmTally::new() {
                copy.merge(tally);
                *run = Some(copy);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn acks_settle_in_tag_order_and_time_each_message() {
        let mut p = Pending::new().unwrap();
        for t in [1_000, 2_000, 3_000, 4_000] {
            p.published(t);
        }
        p.settle(2, false, 11_000, None);
        assert_eq!(p.tally.confirmed, 2);
        assert_eq!(p.tally.latency_us.max(), 10);
        p.settle(3, true, 12_000, None);
        assert_eq!((p.tally.confirmed, p.tally.nacked), (2, 1));
        // A stale ack (below what is settled) changes nothing but the gap.
        p.settle(1, false, 15_000, None);
        assert_eq!(p.tally.confirmed, 2);
        p.settle(4, false, 25_000, None);
        assert_eq!(p.tally.confirmed, 3);
        assert_eq!(p.tally.longest_gap_ns, 10_000);
    }

    #[test]
    fn recovery_counts_only_messages_published_after_the_kill() {
        let mut p = Pending::new().unwrap();
        p.published(100);
        p.published(200);
        p.published(900);
        // The kill at 500: the ack of messages sent before it is no recovery.
        p.settle(2, false, 600, Some(500));
        assert_eq!(p.tally.first_after_kill_ns, None);
        p.settle(3, false, 2_500, Some(500));
        assert_eq!(p.tally.first_after_kill_ns, Some(2_000));
    }
}
