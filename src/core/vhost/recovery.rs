//! Rebuilding a vhost from the definitions and messages the store recovered, and compaction.

use super::*;

impl VHost {
    pub(super) fn restore(
        &self,
        defs: &VHostDefinitions,
        recovered: &mut crate::store::RecoveredLog,
        now: u64,
        memory: &Arc<crate::core::memory::MemoryMonitor>,
    ) {
        let table = |s: &str, what: &str| {
            crate::store::definitions::text_table(s).unwrap_or_else(|e| {
                tracing::warn!(vhost = %self.name, "bad arguments for {what} in definitions: {e}");
                FieldTable::new()
            })
        };
        for e in &defs.exchanges {
            let spec = ExchangeSpec {
                name: e.name.clone(),
                kind: e.kind.clone(),
                durable: true,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: table(&e.arguments, &e.name),
            };
            if let Err(err) = self.declare_exchange(spec, false) {
                tracing::warn!(vhost = %self.name, exchange = %e.name, "cannot restore exchange: {err}");
            }
        }
        for qd in &defs.queues {
            if let Some(exchange) = qd.name.strip_prefix(delayed::HOLD_PREFIX) {
                self.restore_hold(exchange, qd.id, recovered);
                continue;
            }
            let queue = Arc::new(self.new_queue(
                QueueSpec {
                    name: qd.name.clone(),
                    durable: true,
                    exclusive: false,
                    auto_delete: qd.auto_delete,
                    arguments: table(&qd.arguments, &qd.name),
                },
                0,
                Some(qd.id),
            ));
            queue.recover_idle_since(&recovered.keyed);
            if let Some(rq) = recovered.queues.remove(&qd.id) {
                let budget = self
                    .store
                    .as_ref()
                    .map_or(u64::MAX, |s| s.queue_memory_budget);
                let mut in_memory = 0u64;
                let entries = rq
                    .messages
                    .into_iter()
                    .filter_map(|(seq, m)| {
                        let body_len = m.body.len() as u64;
                        let properties =
                            switchboard_amqp::BasicProperties::decode(&m.properties).ok()?;
                        // Paged-out messages still need their place: priority level and TTL.
                        let priority = properties.priority;
                        let expiration = properties.expiration.clone();
                        let message = if in_memory <= budget {
                            in_memory += Message::charge_size(m.body.len()) as u64;
                            let charge = memory.charge(Message::charge_size(m.body.len()));
                            // Copies, so that a few kept messages do not pin whole segment
                            // buffers in memory.
                            Some(Arc::new(Message::new(
                                m.exchange,
                                m.routing_key,
                                properties,
                                Some(bytes::Bytes::copy_from_slice(&m.properties)),
                                bytes::Bytes::copy_from_slice(&m.body),
                                charge,
                            )))
                        } else {
                            None
                        };
                        Some(RecoveredEntry {
                            seq,
                            at: m.at,
                            body_len,
                            message,
                            priority,
                            expiration,
                            expires_at: m.expires,
                        })
                    })
                    .collect();
                queue.recover(entries, rq.max_seq, now);
            }
            self.queues.insert(qd.name.clone(), queue.clone());
            queue.start();
        }
        for ex in self.exchanges() {
            if let (true, Some(hold)) = (ex.durable, &ex.delayed) {
                if hold.store_id().is_none() {
                    self.give_hold_store(hold, None);
                    if let (Some(store), Some(def)) = (&self.store, persist::hold_def(&ex)) {
                        store.put(
                            kind::QUEUE,
                            &queue_key(&self.name, &def.name),
                            &encode(&def),
                        );
                    }
                }
            }
        }
        for b in &defs.bindings {
            let args = table(&b.arguments, &b.source);
            let r = if b.destination_type == "exchange" {
                self.bind_exchange(&b.destination, &b.source, &b.routing_key, &args)
            } else {
                self.bind_queue(&b.destination, &b.source, &b.routing_key, &args, 0)
            };
            if let Err(err) = r {
                tracing::warn!(vhost = %self.name, source = %b.source, destination = %b.destination, "cannot restore binding: {err}; its record is deleted");
                if let Some(store) = &self.store {
                    store.delete(kind::BINDING, &binding_key(&self.name, b));
                }
            }
        }
    }

    /// Gives a durable delayed exchange its recovered store id and held messages.
    pub(super) fn restore_hold(
        &self,
        exchange: &str,
        id: u64,
        recovered: &mut crate::store::RecoveredLog,
    ) {
        let Some(hold) = self.exchange(exchange).and_then(|e| e.delayed.clone()) else {
            tracing::warn!(vhost = %self.name, exchange, "delayed messages of a missing delayed exchange are dropped");
            if let Some(store) = &self.store {
                let name = format!("{}{exchange}", delayed::HOLD_PREFIX);
                store.delete(kind::QUEUE, &queue_key(&self.name, &name));
            }
            return;
        };
        self.give_hold_store(&hold, Some(id));
        if let Some(rq) = recovered.queues.remove(&id) {
            hold.recover(rq);
        }
    }

    /// Makes a durable delayed exchange's hold persist its persistent messages, under `id` (a
    /// fresh random id when None).
    pub(super) fn give_hold_store(&self, hold: &DelayedHold, id: Option<u64>) {
        if let Some(store) = &self.store {
            hold.set_store(HoldStore {
                log: store.log.clone(),
                id: id.unwrap_or_else(|| rand::rng().random()),
            });
        }
    }

    /// Rewrites the live records of log segment `segment` held by this vhost's queues and
    /// delayed exchanges at the end of the log (compaction). Returns how many moved.
    pub fn relocate(&self, segment: u64) -> usize {
        let queues: usize = self.queues().iter().map(|q| q.relocate(segment)).sum();
        let holds: usize = self
            .exchanges()
            .iter()
            .filter_map(|e| e.delayed.as_ref())
            .map(|h| h.relocate(segment))
            .sum();
        queues + holds
    }
}
