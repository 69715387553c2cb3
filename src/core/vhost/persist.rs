//! Durable definition records: appended as exchanges, queues and bindings come and go.

use super::*;

impl VHost {
    /// The LSN of the last definition record appended (0: none). A reply that promises a
    /// definition is durable waits until the log is durable up to it.
    pub fn definitions_lsn(&self) -> u64 {
        self.definitions_lsn.load(Ordering::Acquire)
    }

    /// Waits until every definition change made so far is durable.
    pub async fn definitions_synced(&self) {
        if let Some(store) = &self.store {
            store.log.wait_synced(self.definitions_lsn()).await;
        }
    }

    /// Appends the record of a definition change if the vhost keeps durable definitions and
    /// `still_stands` (checked under the record lock, see `record_lock`).
    pub(super) fn record(
        &self,
        still_stands: impl FnOnce() -> bool,
        write: impl FnOnce(&Store) -> u64,
    ) {
        let Some(store) = &self.store else {
            return;
        };
        if !self.persisting.load(Ordering::Acquire) {
            return;
        }
        let _held = self.record_lock.lock().unwrap_or_else(|e| e.into_inner());
        if still_stands() {
            let lsn = write(store);
            self.definitions_lsn.fetch_max(lsn, Ordering::AcqRel);
        }
    }

    /// Records a durable exchange that was just declared (and its delayed hold's store id).
    pub(super) fn record_exchange(&self, ex: &Arc<Exchange>) {
        let current = || self.exchange(&ex.name).is_some_and(|e| Arc::ptr_eq(&e, ex));
        self.record(current, |store| {
            let def = ExchangeDef {
                name: ex.name.clone(),
                kind: ex.type_name().to_owned(),
                auto_delete: ex.auto_delete,
                internal: ex.internal,
                arguments: table_text(&ex.arguments),
            };
            let mut lsn = store.put(
                kind::EXCHANGE,
                &exchange_key(&self.name, &ex.name),
                &encode(&def),
            );
            if let Some(hold) = hold_def(ex) {
                lsn = store.put(
                    kind::QUEUE,
                    &queue_key(&self.name, &hold.name),
                    &encode(&hold),
                );
            }
            lsn
        });
    }

    /// Deletes the records of a durable exchange that was just removed: its own, its delayed
    /// hold's and those of the bindings from it (bindings to it are handled as a destination's).
    pub(super) fn record_exchange_gone(&self, ex: &Arc<Exchange>) {
        if !ex.durable {
            return;
        }
        self.record(
            || true,
            |store| {
                let mut lsn = store.delete(kind::EXCHANGE, &exchange_key(&self.name, &ex.name));
                let hold = format!("{}{}", delayed::HOLD_PREFIX, ex.name);
                lsn = lsn.max(store.delete(kind::QUEUE, &queue_key(&self.name, &hold)));
                for b in ex.bindings() {
                    if Self::destination_durable(&b.destination) {
                        let def = binding_def(&ex.name, &b);
                        lsn = lsn.max(store.delete(kind::BINDING, &binding_key(&self.name, &def)));
                    }
                }
                lsn
            },
        );
    }

    /// Records a durable queue that was just declared.
    pub(super) fn record_queue(&self, q: &Arc<Queue>) {
        let Some(id) = q.store_id() else {
            return;
        };
        let current = || self.queue(&q.name).is_some_and(|e| Arc::ptr_eq(&e, q));
        self.record(current, |store| {
            let def = QueueDef {
                name: q.name.clone(),
                id,
                auto_delete: q.auto_delete,
                arguments: table_text(&q.arguments),
            };
            store.put(kind::QUEUE, &queue_key(&self.name, &q.name), &encode(&def))
        });
    }

    /// Deletes the record of a durable queue that was just removed.
    pub(super) fn record_queue_gone(&self, q: &Arc<Queue>) {
        if q.store_id().is_none() {
            return;
        }
        self.record(
            || true,
            |store| store.delete(kind::QUEUE, &queue_key(&self.name, &q.name)),
        );
    }

    /// Records a new binding from `source` if both ends are durable and still in the vhost.
    pub(super) fn record_binding(
        &self,
        source: &Arc<Exchange>,
        binding: &crate::core::exchange::Binding,
    ) {
        if !(source.durable && Self::destination_durable(&binding.destination)) {
            return;
        }
        let current = || {
            let source_here = self
                .exchange(&source.name)
                .is_some_and(|e| Arc::ptr_eq(&e, source));
            let destination_here = match &binding.destination {
                Destination::Queue(q) => self.queue(&q.name).is_some_and(|e| Arc::ptr_eq(&e, q)),
                Destination::Exchange(x) => {
                    self.exchange(&x.name).is_some_and(|e| Arc::ptr_eq(&e, x))
                }
            };
            source_here && destination_here
        };
        self.record(current, |store| {
            let def = binding_def(&source.name, binding);
            store.put(kind::BINDING, &binding_key(&self.name, &def), &encode(&def))
        });
    }

    /// Deletes the records of bindings from `source` that were just removed.
    pub(super) fn record_bindings_gone(
        &self,
        source: &Exchange,
        removed: &[crate::core::exchange::Binding],
    ) {
        if !source.durable {
            return;
        }
        self.record(
            || true,
            |store| {
                let mut lsn = 0;
                for b in removed {
                    if Self::destination_durable(&b.destination) {
                        let def = binding_def(&source.name, b);
                        lsn = lsn.max(store.delete(kind::BINDING, &binding_key(&self.name, &def)));
                    }
                }
                lsn
            },
        );
    }

    pub(super) fn destination_durable(dest: &Destination) -> bool {
        match dest {
            Destination::Queue(q) => q.durable && q.exclusive_owner.is_none(),
            Destination::Exchange(e) => e.durable,
        }
    }
}

/// A binding from exchange `source` as a definition record.
fn binding_def(source: &str, b: &crate::core::exchange::Binding) -> BindingDef {
    BindingDef {
        source: source.to_owned(),
        destination_type: b.destination.kind_str().to_owned(),
        destination: b.destination.name().to_owned(),
        routing_key: b.routing_key.clone(),
        arguments: table_text(&b.arguments),
    }
}

/// A durable delayed exchange's held messages are kept under a store id of their own, recorded
/// as a (never declared) queue so that recovery keeps their records.
pub(super) fn hold_def(ex: &Exchange) -> Option<QueueDef> {
    let id = ex.delayed.as_ref()?.store_id()?;
    ex.durable.then(|| QueueDef {
        name: format!("{}{}", delayed::HOLD_PREFIX, ex.name),
        id,
        auto_delete: false,
        arguments: String::new(),
    })
}
