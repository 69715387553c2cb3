//! Looking exchanges and queues up, and deleting them with what goes with them (bindings,
//! auto-delete exchanges left unbound, consumers told).

use super::*;

/// The exchange a publisher last published to, kept while it exists: most publishers publish
/// to one exchange, and this spares each publish the look-up by name. An exchange deleted from
/// its vhost is marked gone ([`Exchange::is_gone`]), and the next publish looks its name up
/// again.
#[derive(Debug, Default, Clone)]
pub struct LastExchange(Option<Arc<Exchange>>);

impl LastExchange {
    /// The exchange `name` of `vhost` (the publisher's, always the same one).
    pub fn get(&mut self, vhost: &VHost, name: &str) -> Option<Arc<Exchange>> {
        if let Some(e) = &self.0 {
            if e.name == name && !e.is_gone() {
                return Some(e.clone());
            }
        }
        let exchange = vhost.exchange(name)?;
        self.0 = Some(exchange.clone());
        Some(exchange)
    }
}

impl VHost {
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|e| e.clone())
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        let mut v: Vec<_> = self.exchanges.iter().map(|e| e.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<_> = self.queues.iter().map(|q| q.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub(super) fn exchange_or_404(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        self.exchange(name)
            .ok_or_else(|| CoreError::not_found("exchange", name, &self.name))
    }

    /// What [`VHost::delete_exchange`] would refuse, checked without deleting (a clustered
    /// node checks before it proposes the deletion); the exchange, if there is one.
    pub fn check_delete_exchange(
        &self,
        name: &str,
        if_unused: bool,
    ) -> CoreResult<Option<Arc<Exchange>>> {
        // RabbitMQ's words for both refusals.
        if name.is_empty() {
            return Err(CoreError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with("amq.") {
            return Err(CoreError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let Some(ex) = self.exchange(name) else {
            return Ok(None);
        };
        if if_unused && ex.has_bindings() {
            return Err(CoreError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        Ok(Some(ex))
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        let Some(ex) = self.check_delete_exchange(name, if_unused)? else {
            // Deleting what is not there succeeds, as in RabbitMQ.
            return Ok(());
        };
        self.exchanges.remove(name);
        self.exchange_removed(&ex);
        Ok(())
    }

    /// What goes with an exchange taken out of the map: publishers that kept it told, its
    /// delayed messages, the bindings to it, its record.
    fn exchange_removed(&self, ex: &Arc<Exchange>) {
        ex.mark_gone();
        if let Some(hold) = &ex.delayed {
            hold.delete();
        }
        self.remove_bindings_to(&Destination::Exchange(ex.clone()));
        self.record_exchange_gone(ex);
    }

    /// Unbinds `dest` from every exchange, then deletes auto-delete exchanges left unbound.
    pub(super) fn remove_bindings_to(&self, dest: &Destination) {
        let sources: Vec<Arc<Exchange>> = self.exchanges.iter().map(|e| e.clone()).collect();
        for src in sources {
            let removed = src.unbind_destination(dest);
            if !removed.is_empty() {
                self.record_bindings_gone(&src, &removed);
                self.maybe_auto_delete_exchange(&src);
            }
        }
    }

    pub(super) fn maybe_auto_delete_exchange(&self, ex: &Arc<Exchange>) {
        if ex.auto_delete && !ex.has_bindings() {
            let removed = self
                .exchanges
                .remove_if(&ex.name, |_, e| Arc::ptr_eq(e, ex))
                .is_some();
            if removed {
                self.exchange_removed(ex);
            }
        }
    }

    /// Deletes a queue; returns the number of ready messages it held.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> CoreResult<u32> {
        match self.check_delete_queue(name, if_unused, if_empty, conn)? {
            Some(q) => Ok(self.remove_queue(&q)),
            None => Ok(0),
        }
    }

    /// What [`VHost::delete_queue`] would refuse, checked without deleting; the queue, if
    /// there is one.
    pub fn check_delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> CoreResult<Option<Arc<Queue>>> {
        let Some(q) = self.queue(name) else {
            return Ok(None);
        };
        self.check_exclusive(&q, conn)?;
        if !(if_unused || if_empty) {
            // A queue whose home is another node would ask it for figures nobody reads (and
            // a deletion applied from the cluster's log must not wait on the network).
            return Ok(Some(q));
        }
        let stats = q.stats();
        if if_unused && stats.consumers > 0 {
            return Err(CoreError::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && stats.ready > 0 {
            return Err(CoreError::precondition(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(Some(q))
    }

    /// Removes a queue from the vhost, drops its bindings and tells its consumers.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u32 {
        if self
            .queues
            .remove_if(&q.name, |_, v| Arc::ptr_eq(v, q))
            .is_none()
        {
            return 0;
        }
        self.forget_exclusive(q);
        let deleted = q.delete();
        self.remove_bindings_to(&Destination::Queue(q.clone()));
        self.record_queue_gone(q);
        self.removals.removed(q);
        for c in &deleted.consumers {
            c.sink.cancelled(q, &c.tag);
        }
        deleted.messages
    }

    /// Lets `q` deliver what its consumers can take now (credit came back), applying what it
    /// returns.
    pub fn dispatch(&self, q: &Arc<Queue>) {
        let effects = q.dispatch();
        self.apply(q, effects);
    }

    /// Removes consumer `consumer_id` from `q`, applying what the queue returns; the number of
    /// consumers left, None if it was not registered.
    pub fn remove_consumer(&self, q: &Arc<Queue>, consumer_id: u64) -> Option<usize> {
        let removed = q.remove_consumer(consumer_id)?;
        self.apply(q, removed.effects);
        Some(removed.remaining)
    }

    /// After a consumer went away: deletes the queue if it is auto-delete and now unused.
    pub fn consumer_gone(&self, q: &Arc<Queue>) {
        if q.auto_delete_due() {
            self.remove_queue(q);
        }
    }
}
