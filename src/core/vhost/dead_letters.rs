//! Dead-lettering: messages that left a queue republished to its dead-letter exchange.

use super::*;

impl VHost {
    /// Republishes messages that left `from` to its dead-letter exchange, with their `x-death`
    /// history. Called with no queue lock held. A missing dead-letter exchange drops them, and
    /// a queue the message would go round to again with no rejection on the way is skipped, as
    /// in RabbitMQ.
    pub fn dead_letter(&self, from: &Queue, dead: Vec<DeadLetter>) {
        let args = from.args();
        let Some(dlx) = args.dead_letter_exchange.as_deref() else {
            return;
        };
        let Some(exchange) = self.exchange(dlx) else {
            tracing::debug!(vhost = %self.name, queue = %from.name, exchange = dlx, "dead-letter exchange does not exist; dropping {} message(s)", dead.len());
            return;
        };
        let env = self.env.get();
        let now = env.map_or_else(
            || crate::core::clock::Clock::now_ms(&crate::core::clock::SystemClock),
            |e| e.timer.now_ms(),
        );
        let target = dead_letter::Target {
            queue: &from.name,
            exchange: dlx,
            routing_key: args.dead_letter_routing_key.as_deref(),
        };
        for d in dead {
            let charge = self.charge(d.message.body.len());
            let message = Arc::new(dead_letter::dead_lettered(&d, target, now, charge));
            for q in self.route(&exchange, &message) {
                if dead_letter::is_cycle(&message, &q.name) {
                    tracing::warn!(vhost = %self.name, queue = %q.name, "dead-letter cycle detected; dropping the message for this queue");
                    continue;
                }
                q.publish(message.clone());
            }
        }
    }
}
