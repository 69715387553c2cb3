//! Settling deliveries a client acknowledged or refused, shared by the adapters whose clients
//! ack (AMQP basic.ack/nack/reject, STOMP ACK/NACK).

use crate::core::{Queue, VHost};
use std::sync::Arc;

/// What settling deliveries does with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    Requeue,
    /// Rejected without requeue: dead-lettered when the queue has a DLX.
    Discard,
}

impl Settle {
    /// What a reject or nack does.
    pub fn rejected(requeue: bool) -> Self {
        if requeue {
            Settle::Requeue
        } else {
            Settle::Discard
        }
    }
}

/// Settles `(queue, message id)` deliveries of queues in `vhost` grouped by queue, one queue
/// call per group, and has the vhost apply what the queues return (dead letters).
pub fn apply(vhost: &VHost, taken: impl IntoIterator<Item = (Arc<Queue>, u64)>, how: Settle) {
    let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for (queue, id) in taken {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((queue, vec![id])),
        }
    }
    for (q, ids) in groups {
        let effects = match how {
            Settle::Ack => {
                q.settle(&ids);
                continue;
            }
            Settle::Discard => q.reject(&ids),
            Settle::Requeue => q.requeue(&ids),
        };
        vhost.apply(&q, effects);
    }
}
