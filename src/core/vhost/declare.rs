//! Declarations: exchanges and queues made, or checked equivalent to what exists.

use super::*;

/// Arguments that must match when a queue is redeclared (as RabbitMQ checks them).
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

impl VHost {
    pub fn declare_exchange(&self, spec: ExchangeSpec, passive: bool) -> CoreResult<Arc<Exchange>> {
        if passive {
            return self.exchange_or_404(&spec.name);
        }
        let delayed = spec.kind == delayed::DELAYED_TYPE;
        let kind = if delayed {
            // As the delayed-message plugin: the routing type is an argument.
            spec.arguments
                .get(delayed::DELAYED_TYPE_ARG)
                .and_then(FieldValue::as_str)
                .and_then(ExchangeKind::parse)
                .ok_or_else(|| {
                    CoreError::precondition(
                        "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                    )
                })?
        } else {
            // RabbitMQ 3.13+ answers a channel-level 406 here (older releases closed the
            // connection with 503), and clients' test suites expect the newer answer.
            ExchangeKind::parse(&spec.kind).ok_or_else(|| {
                CoreError::precondition(format!("invalid exchange type '{}'", spec.kind))
            })?
        };
        if let Some(existing) = self.exchange(&spec.name) {
            let mismatch = |field: &str, got: &str, have: &str| {
                CoreError::precondition(format!(
                    "inequivalent arg '{field}' for exchange '{}' in vhost '{}': received '{got}' \
                     but current is '{have}'",
                    spec.name, self.name
                ))
            };
            let type_name = if delayed {
                delayed::DELAYED_TYPE
            } else {
                kind.as_str()
            };
            if existing.type_name() != type_name {
                return Err(mismatch("type", type_name, existing.type_name()));
            }
            if existing.kind != kind {
                return Err(mismatch(
                    delayed::DELAYED_TYPE_ARG,
                    kind.as_str(),
                    existing.kind.as_str(),
                ));
            }
            for (field, got, have) in [
                ("durable", spec.durable, existing.durable),
                ("auto_delete", spec.auto_delete, existing.auto_delete),
                ("internal", spec.internal, existing.internal),
            ] {
                if got != have {
                    return Err(mismatch(field, &got.to_string(), &have.to_string()));
                }
            }
            return Ok(existing);
        }
        if spec.name.starts_with("amq.") {
            return Err(CoreError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        let mut ex = Exchange::new(
            spec.name.clone(),
            kind,
            spec.durable,
            spec.auto_delete,
            spec.internal,
            spec.arguments,
        );
        if delayed {
            let hold = self.new_hold(&spec.name);
            // While definitions are restored, the store id comes from them instead.
            if spec.durable && self.persisting.load(Ordering::Acquire) {
                self.give_hold_store(&hold, None);
            }
            ex = ex.with_delay(hold);
        }
        let ex = Arc::new(ex);
        // Two declarations may race: the first one in wins, the other gets it back.
        let winner = self
            .exchanges
            .entry(spec.name)
            .or_insert(ex.clone())
            .clone();
        if Arc::ptr_eq(&winner, &ex) && ex.durable {
            self.record_exchange(&ex);
        }
        Ok(winner)
    }

    pub fn declare_queue(
        &self,
        spec: QueueSpec,
        passive: bool,
        conn: ConnectionId,
    ) -> CoreResult<QueueDeclared> {
        self.declare_queue_as(spec, passive, conn, false)
    }

    /// Declares a queue whose name the server generated beforehand with
    /// [`generate_name`]`("amq.gen-")` (so that permissions could be checked on it): the
    /// reserved `amq.` prefix is allowed for it, as for a name generated here.
    pub fn declare_server_named_queue(
        &self,
        spec: QueueSpec,
        conn: ConnectionId,
    ) -> CoreResult<QueueDeclared> {
        self.declare_queue_as(spec, false, conn, true)
    }

    pub(super) fn declare_queue_as(
        &self,
        mut spec: QueueSpec,
        passive: bool,
        conn: ConnectionId,
        server_named: bool,
    ) -> CoreResult<QueueDeclared> {
        if passive {
            let queue = self.queue_for(&spec.name, conn)?;
            return Ok(QueueDeclared {
                queue,
                created: false,
            });
        }
        if spec.name.is_empty() {
            spec.name = generate_name("amq.gen-");
        } else if spec.name.starts_with("amq.") && !server_named {
            return Err(CoreError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        if let Some(existing) = self.queue(&spec.name) {
            self.check_queue_equivalent(&existing, &spec, conn)?;
            existing.touch();
            return Ok(QueueDeclared {
                queue: existing,
                created: false,
            });
        }
        QueueArgs::parse(&spec.arguments, None).map_err(|e| {
            CoreError::precondition(format!(
                "invalid arg '{}' for queue '{}' in vhost '{}': {}",
                e.key, spec.name, self.name, e.detail
            ))
        })?;
        let queue = Arc::new(self.new_queue(spec.clone(), conn, None));
        let entry = self
            .queues
            .entry(spec.name.clone())
            .or_insert(queue.clone());
        let winner = entry.clone();
        drop(entry);
        if Arc::ptr_eq(&winner, &queue) {
            queue.start();
            self.note_exclusive(&queue);
            self.record_queue(&queue);
            Ok(QueueDeclared {
                queue,
                created: true,
            })
        } else {
            self.check_queue_equivalent(&winner, &spec, conn)?;
            Ok(QueueDeclared {
                queue: winner,
                created: false,
            })
        }
    }

    pub(super) fn check_queue_equivalent(
        &self,
        q: &Queue,
        spec: &QueueSpec,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        self.check_exclusive(q, conn)?;
        if spec.exclusive != q.exclusive_owner.is_some() {
            return Err(self.locked(&q.name));
        }
        let mismatch = |field: &str, got: String, have: String| {
            CoreError::precondition(format!(
                "inequivalent arg '{field}' for queue '{}' in vhost '{}': received '{got}' but \
                 current is '{have}'",
                q.name, self.name
            ))
        };
        if spec.durable != q.durable {
            return Err(mismatch(
                "durable",
                spec.durable.to_string(),
                q.durable.to_string(),
            ));
        }
        if spec.auto_delete != q.auto_delete {
            return Err(mismatch(
                "auto_delete",
                spec.auto_delete.to_string(),
                q.auto_delete.to_string(),
            ));
        }
        for key in EQUIVALENT_QUEUE_ARGS {
            let (got, have) = (spec.arguments.get(*key), q.arguments.get(*key));
            if !args_equal(got, have) {
                return Err(mismatch(key, show_arg(got), show_arg(have)));
            }
        }
        Ok(())
    }

    /// Creates a server-internal queue (such as a direct reply-to queue) that is exclusive to
    /// `conn` and goes when it closes. Bypasses the `amq.` name check reserved for clients.
    pub fn create_private_queue(&self, name: String, conn: ConnectionId) -> Arc<Queue> {
        let queue = Arc::new(
            Queue::new(
                name.clone(),
                self.name.clone(),
                false,
                true,
                Some(conn),
                FieldTable::new(),
            )
            .with_env(self.queue_env()),
        );
        self.queues.insert(name, queue.clone());
        queue.start();
        self.note_exclusive(&queue);
        queue
    }

    /// A new queue object for `spec` (not yet in the vhost). Durable, non-exclusive queues of a
    /// vhost with a store write persistent messages to the log under `id` (a fresh random id
    /// when None).
    pub(super) fn new_queue(&self, spec: QueueSpec, conn: ConnectionId, id: Option<u64>) -> Queue {
        let exclusive = spec.exclusive;
        let policy = self.policies.for_queue(&self.name, &spec.name);
        let args = QueueArgs::parse(&spec.arguments, policy.as_ref().map(|p| &p.definition))
            .unwrap_or_default();
        let queue = Queue::new(
            spec.name,
            self.name.clone(),
            spec.durable,
            spec.auto_delete,
            exclusive.then_some(conn),
            spec.arguments,
        )
        .with_args(args)
        .with_env(self.queue_env());
        match (&self.store, &self.store_memory) {
            (Some(store), Some(memory)) if spec.durable && !exclusive => {
                queue.with_store(QueueStore {
                    log: store.log.clone(),
                    id: id.unwrap_or_else(|| rand::rng().random()),
                    memory_budget: store.queue_memory_budget,
                    memory: memory.clone(),
                })
            }
            _ => queue,
        }
    }

    /// Applies the policies in force now to every queue of the vhost, as RabbitMQ does when a
    /// policy is set or cleared: each queue's arguments become its declared ones over the
    /// matching policy (or just its declared ones when none matches any more).
    pub fn apply_policies(&self) {
        for q in self.queues() {
            let policy = self.policies.for_queue(&self.name, &q.name);
            let args = QueueArgs::parse(&q.arguments, policy.as_ref().map(|p| &p.definition))
                .unwrap_or_default();
            let effects = q.set_args(args);
            self.apply(&q, effects);
        }
    }
}

fn args_equal(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x == y,
        },
        _ => false,
    }
}

fn show_arg(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => s.to_owned(),
            (_, Some(i)) => i.to_string(),
            _ => format!("{v:?}"),
        },
    }
}
