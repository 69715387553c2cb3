//! Bindings between exchanges and queues (and exchanges), with the topic key limit.

use super::*;

impl VHost {
    /// Sets `server.topic_max_words`.
    pub fn set_topic_max_words(&self, max: usize) {
        self.topic_max_words.store(max, Ordering::Relaxed);
    }

    /// Refuses a routing key to publish to `exchange` that has more words than a topic exchange
    /// accepts. Adapters ask before routing, to refuse in their protocol's terms; routing itself
    /// also passes over topic exchanges for such keys.
    pub fn check_routing_key(&self, exchange: &Exchange, routing_key: &str) -> CoreResult<()> {
        self.check_topic_words(exchange, routing_key, "routing key")
    }

    pub(super) fn check_topic_words(
        &self,
        exchange: &Exchange,
        key: &str,
        what: &str,
    ) -> CoreResult<()> {
        let max = self.topic_max_words.load(Ordering::Relaxed);
        // Counted for topic exchanges only, and only for keys long enough to be over.
        if exchange.kind == ExchangeKind::Topic && topic::more_words_than(key, max) {
            let n = topic::word_count(key);
            return Err(CoreError::precondition(format!(
                "{what} of {n} words is longer than the limit of {max} words \
                 (server.topic_max_words) for topic exchange '{}' in vhost '{}'",
                exchange.name, self.name
            )));
        }
        Ok(())
    }

    pub(super) fn check_bindable_source(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        if name.is_empty() {
            return Err(CoreError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.exchange_or_404(name)
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        let q = self.queue_for(queue, conn)?;
        let ex = self.check_bindable_source(exchange)?;
        self.check_topic_words(&ex, routing_key, "binding key")?;
        self.bind(&ex, Destination::Queue(q), routing_key, arguments)
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        let q = self.queue_for(queue, conn)?;
        let ex = self.check_bindable_source(exchange)?;
        self.unbind(&ex, Destination::Queue(q), routing_key, arguments);
        Ok(())
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> CoreResult<()> {
        let dst = self.check_bindable_source(destination)?;
        let src = self.check_bindable_source(source)?;
        self.check_topic_words(&src, routing_key, "binding key")?;
        self.bind(&src, Destination::Exchange(dst), routing_key, arguments)
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> CoreResult<()> {
        let dst = self.check_bindable_source(destination)?;
        let src = self.check_bindable_source(source)?;
        self.unbind(&src, Destination::Exchange(dst), routing_key, arguments);
        Ok(())
    }

    /// Binds `destination` to `source` and records a new durable binding.
    pub(super) fn bind(
        &self,
        source: &Arc<Exchange>,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> CoreResult<()> {
        let binding = crate::core::exchange::Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        let added = source
            .bind(binding.destination.clone(), routing_key, arguments)
            .map_err(|e| CoreError::precondition(e.to_string()))?;
        if added {
            self.record_binding(source, &binding);
        }
        Ok(())
    }

    /// Unbinds `destination` from `source` (unbinding what is not bound succeeds, as in
    /// RabbitMQ), deleting its record and an auto-delete source left unbound.
    pub(super) fn unbind(
        &self,
        source: &Arc<Exchange>,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) {
        if source.unbind(&destination, routing_key, arguments) {
            let binding = crate::core::exchange::Binding {
                destination,
                routing_key: routing_key.to_owned(),
                arguments: arguments.clone(),
            };
            self.record_bindings_gone(source, std::slice::from_ref(&binding));
            self.maybe_auto_delete_exchange(source);
        }
    }

    /// Every binding in the vhost as (source exchange name, binding).
    pub fn bindings(&self) -> Vec<(String, crate::core::exchange::Binding)> {
        let mut out = Vec::new();
        for ex in self.exchanges() {
            for b in ex.bindings() {
                out.push((ex.name.clone(), b));
            }
        }
        // The default exchange's implicit binding to every queue, as RabbitMQ lists it.
        for q in self.queues() {
            out.push((
                String::new(),
                crate::core::exchange::Binding {
                    destination: Destination::Queue(q.clone()),
                    routing_key: q.name.clone(),
                    arguments: FieldTable::new(),
                },
            ));
        }
        out
    }
}
