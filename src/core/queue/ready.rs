//! A queue's ready messages: one FIFO per priority level, served highest level first.

use super::super::message::Message;
use crate::store::log::RecordPos;
use std::collections::VecDeque;
use std::sync::Arc;

/// A message as a queue holds it.
#[derive(Debug)]
pub(super) struct Queued {
    pub id: u64,
    /// None while paged out: only the record's position stays in memory.
    pub message: Option<Arc<Message>>,
    pub body_len: u64,
    pub redelivered: bool,
    /// Where the message's enqueue record is, when it is persisted.
    pub stored: Option<RecordPos>,
    /// The priority level it is kept at.
    pub level: usize,
    /// When it expires (ms since the epoch), if it has a TTL.
    pub expires_at: Option<u64>,
}

impl Queued {
    pub(super) fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Ready messages by priority level. Within a level they are ordered by id, so a requeued
/// message goes back to its place.
#[derive(Debug)]
pub(super) struct Ready {
    levels: Vec<VecDeque<Queued>>,
    len: usize,
    /// How many entries have an expiry: none (the usual case) makes expiry checks free.
    timed: usize,
}

impl Ready {
    pub(super) fn new(levels: usize) -> Self {
        Ready {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
            timed: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any entry has an expiry.
    pub(super) fn has_timed(&self) -> bool {
        self.timed > 0
    }

    fn level_mut(&mut self, level: usize) -> &mut VecDeque<Queued> {
        let last = self.levels.len() - 1;
        &mut self.levels[level.min(last)]
    }

    /// Counts an entry coming in.
    fn added(&mut self, q: &Queued) {
        self.len += 1;
        self.timed += usize::from(q.expires_at.is_some());
    }

    /// Counts an entry going out.
    fn removed(&mut self, q: &Queued) {
        self.len -= 1;
        self.timed -= usize::from(q.expires_at.is_some());
    }

    pub(super) fn push_back(&mut self, q: Queued) {
        self.added(&q);
        self.level_mut(q.level).push_back(q);
    }

    /// Puts a requeued message back in its place within its level.
    pub(super) fn insert_in_place(&mut self, q: Queued) {
        self.added(&q);
        let id = q.id;
        let level = self.level_mut(q.level);
        // Requeued messages are usually older than every ready one: found at the front.
        let pos = level.partition_point(|r| r.id < id);
        level.insert(pos, q);
    }

    /// The next message to deliver: the oldest of the highest non-empty level.
    pub(super) fn pop_front(&mut self) -> Option<Queued> {
        let q = self.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        self.removed(&q);
        Some(q)
    }

    /// Removes a head message (of any level) that has expired by `now`.
    pub(super) fn pop_expired_head(&mut self, now: u64) -> Option<Queued> {
        if self.timed == 0 {
            return None;
        }
        let level = self
            .levels
            .iter_mut()
            .find(|l| l.front().is_some_and(|q| q.expired(now)))?;
        let q = level.pop_front()?;
        self.removed(&q);
        Some(q)
    }

    /// The earliest expiry among the level heads: when the next one is due for removal.
    pub(super) fn next_expiry(&self) -> Option<u64> {
        if self.timed == 0 {
            return None;
        }
        self.levels
            .iter()
            .filter_map(|l| l.front().and_then(|q| q.expires_at))
            .min()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.levels.iter().flatten()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Queued> {
        self.levels.iter_mut().flatten()
    }

    pub(super) fn clear(&mut self) {
        self.levels.iter_mut().for_each(VecDeque::clear);
        self.len = 0;
        self.timed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, level: usize) -> Queued {
        Queued {
            id,
            message: None,
            body_len: 0,
            redelivered: false,
            stored: None,
            level,
            expires_at: None,
        }
    }

    fn drain(r: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| r.pop_front().map(|q| q.id)).collect()
    }

    #[test]
    fn highest_level_first_fifo_within_and_requeue_in_place() {
        let mut r = Ready::new(3);
        for (id, level) in [(1, 0), (2, 2), (3, 1), (4, 2), (5, 0), (6, 9)] {
            r.push_back(entry(id, level));
        }
        assert_eq!(r.len(), 6);
        let first = r.pop_front().unwrap();
        assert_eq!(first.id, 2);
        r.insert_in_place(first);
        assert_eq!(drain(&mut r), vec![2, 4, 6, 3, 1, 5]);
        assert!(r.is_empty());
    }

    #[test]
    fn expired_heads_and_next_expiry() {
        let mut r = Ready::new(2);
        let mut a = entry(1, 0);
        a.expires_at = Some(10);
        let mut b = entry(2, 1);
        b.expires_at = Some(20);
        r.push_back(a);
        r.push_back(b);
        assert_eq!(r.next_expiry(), Some(10));
        assert!(r.pop_expired_head(9).is_none());
        assert_eq!(r.pop_expired_head(10).map(|q| q.id), Some(1));
        assert_eq!(r.next_expiry(), Some(20));
        assert_eq!(r.pop_expired_head(25).map(|q| q.id), Some(2));
        assert!(r.is_empty());
    }
}
