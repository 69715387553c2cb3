//! A queue's consumers: registration order (a single active consumer is the first registered),
//! priorities (`x-priority`), and one round-robin cursor, so that adding or removing one of n
//! consumers costs O(log n) and picking the next costs O(log n) plus the consumers tried.
//!
//! Most queues have one consumer (every MQTT session's queue has), so up to [`FEW`] consumers
//! are a plain vector in registration order (scanning a few is cheaper than any index, and one
//! consumer takes one slot); past that they move into ordered maps, and back below [`FEW`] / 4.
//! Both forms use the same cursor, a registration number, so moving between them changes
//! nothing in who is served next.

use super::Consumer;
use crate::core::hash::FastHashMap;
use std::collections::{BTreeMap, BTreeSet};

/// Most consumers kept in the vector form.
const FEW: usize = 32;

/// A registered consumer with its priority and its registration number.
#[derive(Debug, Clone)]
struct Registered {
    consumer: Consumer,
    priority: i32,
    seq: u64,
}

#[derive(Debug)]
enum Form {
    /// In registration order.
    Few(Vec<Registered>),
    Many(Box<Indexed>),
}

#[derive(Debug, Default)]
struct Indexed {
    by_seq: BTreeMap<u64, Registered>,
    seq_of: FastHashMap<u64, u64>,
    /// Registration numbers of each priority's consumers.
    levels: BTreeMap<i32, BTreeSet<u64>>,
}

#[derive(Debug)]
pub(super) struct Consumers {
    form: Form,
    next_seq: u64,
    /// The registration number to try first in the next pick (round-robin).
    cursor: u64,
    exclusive: usize,
}

impl Default for Consumers {
    fn default() -> Self {
        Consumers {
            form: Form::Few(Vec::new()),
            next_seq: 0,
            cursor: 0,
            exclusive: 0,
        }
    }
}

impl Consumers {
    pub(super) fn len(&self) -> usize {
        match &self.form {
            Form::Few(v) => v.len(),
            Form::Many(m) => m.by_seq.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an exclusive consumer is registered.
    pub(super) fn has_exclusive(&self) -> bool {
        self.exclusive > 0
    }

    /// Registers `consumer` last.
    pub(super) fn add(&mut self, consumer: Consumer, priority: i32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.exclusive += usize::from(consumer.exclusive);
        let r = Registered {
            consumer,
            priority,
            seq,
        };
        match &mut self.form {
            Form::Few(v) if v.len() < FEW => {
                if v.is_empty() {
                    // One consumer is the common case: no room for four.
                    v.reserve_exact(1);
                }
                v.push(r);
            }
            Form::Few(v) => {
                let mut m = Indexed::default();
                for r in v.drain(..).chain(std::iter::once(r)) {
                    m.insert(r);
                }
                self.form = Form::Many(Box::new(m));
            }
            Form::Many(m) => m.insert(r),
        }
    }

    /// Removes the consumer with `id`, returning it.
    pub(super) fn remove(&mut self, id: u64) -> Option<Consumer> {
        let removed = match &mut self.form {
            Form::Few(v) => {
                let pos = v.iter().position(|r| r.consumer.id == id)?;
                v.remove(pos)
            }
            Form::Many(m) => {
                let r = m.remove(id)?;
                if m.by_seq.len() <= FEW / 4 {
                    let few = std::mem::take(&mut m.by_seq).into_values().collect();
                    self.form = Form::Few(few);
                }
                r
            }
        };
        self.exclusive -= usize::from(removed.consumer.exclusive);
        Some(removed.consumer)
    }

    /// The first registered consumer (the single active consumer).
    pub(super) fn first(&self) -> Option<&Consumer> {
        match &self.form {
            Form::Few(v) => v.first(),
            Form::Many(m) => m.by_seq.values().next(),
        }
        .map(|r| &r.consumer)
    }

    /// The next consumer that `take` accepts (it reserves the consumer's credit): the highest
    /// priority first, and among equals the first from the cursor on, wrapping round; lower
    /// priorities only when every higher one is refused.
    pub(super) fn pick(&mut self, mut take: impl FnMut(&Consumer) -> bool) -> Option<&Consumer> {
        let cursor = self.cursor;
        let found = match &self.form {
            Form::Few(v) => {
                let start = v.partition_point(|r| r.seq < cursor);
                let mut priority = v.iter().map(|r| r.priority).max()?;
                loop {
                    let served = v[start..]
                        .iter()
                        .chain(&v[..start])
                        .find(|r| r.priority == priority && take(&r.consumer));
                    if let Some(r) = served {
                        break Some(r.seq);
                    }
                    priority = v
                        .iter()
                        .map(|r| r.priority)
                        .filter(|&p| p < priority)
                        .max()?;
                }
            }
            Form::Many(m) => m.levels.values().rev().find_map(|seqs| {
                seqs.range(cursor..)
                    .chain(seqs.range(..cursor))
                    .copied()
                    .find(|seq| m.by_seq.get(seq).is_some_and(|r| take(&r.consumer)))
            }),
        }?;
        self.cursor = found + 1;
        match &self.form {
            Form::Few(v) => v.iter().find(|r| r.seq == found),
            Form::Many(m) => m.by_seq.get(&found),
        }
        .map(|r| &r.consumer)
    }

    /// Every consumer with its priority, in registration order (for listings).
    pub(super) fn listed(&self) -> Vec<(Consumer, i32)> {
        let entries: Box<dyn Iterator<Item = &Registered>> = match &self.form {
            Form::Few(v) => Box::new(v.iter()),
            Form::Many(m) => Box::new(m.by_seq.values()),
        };
        entries.map(|r| (r.consumer.clone(), r.priority)).collect()
    }

    /// Removes every consumer, in registration order.
    pub(super) fn take_all(&mut self) -> Vec<Consumer> {
        self.exclusive = 0;
        match std::mem::replace(&mut self.form, Form::Few(Vec::new())) {
            Form::Few(v) => v.into_iter().map(|r| r.consumer).collect(),
            Form::Many(m) => m.by_seq.into_values().map(|r| r.consumer).collect(),
        }
    }
}

impl Indexed {
    fn insert(&mut self, r: Registered) {
        self.seq_of.insert(r.consumer.id, r.seq);
        self.levels.entry(r.priority).or_default().insert(r.seq);
        self.by_seq.insert(r.seq, r);
    }

    fn remove(&mut self, id: u64) -> Option<Registered> {
        let seq = self.seq_of.remove(&id)?;
        let r = self.by_seq.remove(&seq)?;
        if let Some(level) = self.levels.get_mut(&r.priority) {
            level.remove(&seq);
            if level.is_empty() {
                self.levels.remove(&r.priority);
            }
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::queue::{ConsumerSink, Delivery, Queue};
    use std::sync::Arc;

    struct Nobody;
    impl ConsumerSink for Nobody {
        fn try_reserve(&self, _: bool) -> bool {
            true
        }
        fn deliver(&self, _: &Arc<Queue>, _: Delivery) {}
        fn cancelled(&self, _: &Queue, _: &str) {}
    }

    fn consumer(id: u64) -> Consumer {
        Consumer {
            id,
            tag: format!("c{id}"),
            no_ack: true,
            exclusive: false,
            owner: 1,
            sink: Arc::new(Nobody),
        }
    }

    /// The ids `n` picks serve, with `refused` never taking a message.
    fn picks(c: &mut Consumers, n: usize, refused: &[u64]) -> Vec<u64> {
        (0..n)
            .filter_map(|_| c.pick(|x| !refused.contains(&x.id)).map(|x| x.id))
            .collect()
    }

    /// The same operations give the same picks in both forms.
    fn round_robin_survives_removals_and_additions(count: u64) {
        let mut c = Consumers::default();
        for id in 0..count {
            c.add(consumer(id), 0);
        }
        assert_eq!(picks(&mut c, 3, &[]), [0, 1, 2]);
        // Removing the next one skips it; removing one already served changes nothing.
        c.remove(3).expect("registered");
        c.remove(0).expect("registered");
        assert_eq!(picks(&mut c, 2, &[]), [4, 5]);
        // A consumer out of credit is passed over.
        assert_eq!(picks(&mut c, 1, &[6]), [7]);
        let newest = 1_000_000;
        c.add(consumer(newest), 0);
        // The round goes on to the end (the newest last), then wraps round.
        let rest = picks(&mut c, count as usize - 4, &[]);
        assert_eq!(rest[..2], [8, 9]);
        assert_eq!(rest[rest.len() - 4..], [newest, 1, 2, 4]);
        assert_eq!(c.first().map(|x| x.id), Some(1));
        assert_eq!(c.len(), count as usize - 1);
    }

    #[test]
    fn round_robin_in_the_vector_form() {
        round_robin_survives_removals_and_additions(10);
    }

    #[test]
    fn round_robin_in_the_indexed_form() {
        round_robin_survives_removals_and_additions(1000);
    }

    #[test]
    fn higher_priorities_first_and_lower_ones_when_they_are_out_of_credit() {
        for count in [6u64, 200] {
            let mut c = Consumers::default();
            for id in 0..count {
                c.add(consumer(id), if id % 3 == 0 { 5 } else { 0 });
            }
            assert_eq!(picks(&mut c, 2, &[]), [0, 3], "{count}");
            let high: Vec<u64> = (0..count).filter(|id| id % 3 == 0).collect();
            assert_eq!(
                picks(&mut c, 2, &high),
                [4, 5],
                "{count}: from the cursor on"
            );
            assert_eq!(picks(&mut c, 1, &[]), [high[2 % high.len()]], "{count}");
        }
    }

    #[test]
    fn forms_switch_and_keep_registration_order_and_exclusive_count() {
        let mut c = Consumers::default();
        let mut ex = consumer(0);
        ex.exclusive = true;
        c.add(ex, 0);
        for id in 1..=FEW as u64 * 2 {
            c.add(consumer(id), 0);
        }
        assert!(matches!(c.form, Form::Many(_)));
        assert!(c.has_exclusive());
        c.remove(0).expect("registered");
        assert!(!c.has_exclusive());
        for id in 1..=FEW as u64 * 2 - 4 {
            c.remove(id).expect("registered");
        }
        assert!(matches!(c.form, Form::Few(_)));
        assert_eq!(c.first().map(|x| x.id), Some(FEW as u64 * 2 - 3));
        assert_eq!(c.remove(1).map(|x| x.id), None);
        assert_eq!(c.take_all().len(), 4);
        assert!(c.is_empty());
    }
}
