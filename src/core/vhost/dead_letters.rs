//! Applying what queue operations return: dead letters republished to the queue's dead-letter
//! exchange, and a queue whose `x-expires` ran out deleted.

use super::*;

impl VHost {
    /// Applies the effects a queue operation on `q` returned. Called with no queue lock held:
    /// a queue may dead-letter into itself.
    pub fn apply(&self, q: &Arc<Queue>, effects: QueueEffects) {
        if effects.is_empty() {
            return;
        }
        if !effects.dead.is_empty() {
            self.dead_letter(q, effects.dead);
        }
        if effects.expired {
            tracing::debug!(vhost = %self.name, queue = %q.name, "queue expired (x-expires)");
            self.remove_queue(q);
        }
    }

    /// Republishes messages that left `from` to its dead-letter exchange, with their `x-death`
    /// history. A missing dead-letter exchange drops them, and a queue the message would go
    /// round to again with no rejection on the way is skipped, as in RabbitMQ.
    fn dead_letter(&self, from: &Queue, dead: Vec<DeadLetter>) {
        let args = from.args();
        let Some(dlx) = args.dead_letter_exchange.as_deref() else {
            return;
        };
        let Some(exchange) = self.exchange(dlx) else {
            tracing::debug!(vhost = %self.name, queue = %from.name, exchange = dlx, "dead-letter exchange does not exist; dropping {} message(s)", dead.len());
            return;
        };
        let now = self.now_ms();
        let target = dead_letter::Target {
            queue: &from.name,
            exchange: dlx,
            routing_key: args.dead_letter_routing_key.as_deref(),
        };
        let mut queues = Vec::new();
        for d in dead {
            let charge = self.charge(d.message.body.len());
            let message = Arc::new(dead_letter::dead_lettered(&d, target, now, charge));
            let skip_cycles = |q: &Queue| {
                let cycle = dead_letter::is_cycle(&message, &q.name);
                if cycle {
                    tracing::warn!(vhost = %self.name, queue = %q.name, "dead-letter cycle detected; dropping the message for this queue");
                }
                cycle
            };
            self.publish_skipping(&exchange, &message, &mut queues, skip_cycles);
        }
    }
}
