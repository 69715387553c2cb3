//! SUBSCRIBE and UNSUBSCRIBE: which queue a destination means (declaring or binding it as
//! RabbitMQ does), the consumer behind each subscription, and `/temp-queue` reply queues.

use super::destination::{
    durable_subscription_queue, queue_arguments, Destination, TOPIC_EXCHANGE,
};
use super::error::{StompError, StompResult};
use super::session::{required, Session, Subscription};
use super::subscription::{AckMode, StompSubscription};
use crate::cluster::definitions::{self, Change, ChangeError};
use crate::core::access::permissions::{Perm, ResourceKind};
use crate::core::queue::ConsumeError;
use crate::core::vhost::{generate_name, QueueSpec};
use crate::core::{Consumer, CoreError, Queue};
use std::sync::Arc;
use switchboard_amqp::FieldTable;
use switchboard_stomp::Frame;

impl Session {
    /// The private queue behind `/temp-queue/<name>`, made (and subscribed to, with the
    /// subscription id `/temp-queue/<name>`) on first use, as RabbitMQ does.
    pub(super) fn temp_queue(&mut self, name: &str) -> StompResult<Arc<Queue>> {
        let id = format!("/temp-queue/{name}");
        if let Some(q) = self.temp_queues.get(name) {
            if !q.is_deleted() {
                return Ok(q.clone());
            }
            // Deleted under us (by an admin): its subscription goes, a new queue comes.
            self.subscriptions.remove(&id);
        }
        let queue_name = generate_name("amq.gen-");
        self.permit(Perm::Configure, ResourceKind::Queue, &queue_name)?;
        self.permit(Perm::Read, ResourceKind::Queue, &queue_name)?;
        let q = self
            .ctx
            .vhost
            .create_private_queue(queue_name, self.ctx.conn_id);
        self.start_subscription(id, q.clone(), AckMode::Auto, 0, false)?;
        self.temp_queues.insert(name.to_owned(), q.clone());
        Ok(q)
    }

    // ---- SUBSCRIBE / UNSUBSCRIBE ----

    pub(super) fn subscribe(&mut self, frame: &Frame) -> StompResult<()> {
        let dest_text = required(frame, "destination")?;
        // STOMP 1.0 has no id; RabbitMQ then uses the destination.
        let id = frame.header("id").unwrap_or(dest_text).to_owned();
        if self.subscriptions.contains_key(&id) {
            return Err(StompError::new(
                "Duplicated subscription identifier",
                format!("A subscription with id '{id}' already exists on this connection."),
            ));
        }
        let ack_text = frame.header("ack").unwrap_or("auto");
        let ack = AckMode::parse(ack_text).ok_or_else(|| {
            StompError::invalid_header(
                "ack",
                ack_text,
                "expected auto, client or client-individual",
            )
        })?;
        let prefetch = match frame.header("prefetch-count") {
            None => 0,
            Some(p) => p
                .trim()
                .parse::<u32>()
                .map_err(|_| StompError::invalid_header("prefetch-count", p, "expected a count"))?,
        };
        let args = queue_arguments(frame)?;
        let (queue, durable) = match Destination::parse(dest_text)? {
            Destination::Queue(q) => {
                let queue = self.ensure_queue(&q, args)?;
                self.permit(Perm::Read, ResourceKind::Queue, &q)?;
                (queue, false)
            }
            Destination::AmqQueue(q) | Destination::ReplyQueue(q) => {
                self.permit(Perm::Read, ResourceKind::Queue, &q)?;
                (self.ctx.vhost.queue_for(&q, self.ctx.conn_id)?, false)
            }
            Destination::Topic(key) => {
                self.subscription_queue(frame, dest_text, TOPIC_EXCHANGE, &key, args)?
            }
            Destination::Exchange { exchange, key } => {
                self.subscription_queue(frame, dest_text, &exchange, &key, args)?
            }
            Destination::TempQueue(_) => {
                return Err(StompError::new(
                    "Invalid destination",
                    format!("'{dest_text}' can only be used in a reply-to header."),
                ))
            }
        };
        self.start_subscription(id, queue, ack, prefetch, durable)
    }

    /// `/queue/<name>`: the queue, declared durable if it does not exist. With queue arguments
    /// the declaration also checks them against an existing queue, as RabbitMQ does.
    pub(super) fn ensure_queue(
        &self,
        name: &str,
        arguments: FieldTable,
    ) -> StompResult<Arc<Queue>> {
        // As RabbitMQ, a /queue/ destination is declared: that needs configure.
        self.permit(Perm::Configure, ResourceKind::Queue, name)?;
        let vhost = &self.ctx.vhost;
        if arguments.is_empty() && vhost.queue(name).is_some() {
            return Ok(vhost.queue_for(name, self.ctx.conn_id)?);
        }
        let spec = QueueSpec {
            name: name.to_owned(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments,
        };
        // Clustered, a queue not declared yet is declared on every node first.
        self.replicate(definitions::queue_declared(&self.ctx.broker, vhost, &spec).into_iter())?;
        let declared = vhost.declare_queue(spec, false, self.ctx.conn_id)?;
        Ok(declared.queue)
    }

    /// The queue of a `/topic` or `/exchange` subscription, bound to `exchange` with `key`:
    /// an exclusive auto-delete queue, or with `durable:true` (or `persistent:true`) and
    /// `auto-delete:false`, a durable queue named after the subscription that outlives it.
    /// Returns the queue and whether it is such a durable subscription's.
    pub(super) fn subscription_queue(
        &self,
        frame: &Frame,
        dest_text: &str,
        exchange: &str,
        key: &str,
        arguments: FieldTable,
    ) -> StompResult<(Arc<Queue>, bool)> {
        let vhost = &self.ctx.vhost;
        if vhost.exchange(exchange).is_none() {
            return Err(CoreError::not_found("exchange", exchange, &vhost.name).into());
        }
        let is_true = |h: &str| frame.header(h).map(str::trim) == Some("true");
        let durable = (is_true("durable") || is_true("persistent"))
            && frame.header("auto-delete") == Some("false");
        let spec = if durable {
            let id = required(frame, "id")?;
            QueueSpec {
                name: frame
                    .header("x-queue-name")
                    .map(str::to_owned)
                    .unwrap_or_else(|| durable_subscription_queue(dest_text, id)),
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments,
            }
        } else {
            QueueSpec {
                name: frame
                    .header("x-queue-name")
                    .map(str::to_owned)
                    .unwrap_or_else(|| generate_name("stomp-subscription-")),
                durable: false,
                exclusive: true,
                auto_delete: true,
                arguments,
            }
        };
        self.permit_subscription(&spec.name, exchange, key)?;
        // Clustered, the subscription's queue and then its binding (made for a queue the
        // cluster has) are on every node, which routes to it (a transient one's record
        // goes with it: `cluster::transient`).
        let broker = &self.ctx.broker;
        definitions::declare_queue_everywhere(broker, vhost, &spec).map_err(refusal)?;
        let bind = definitions::binding_changed(
            broker,
            vhost,
            true,
            (exchange, "queue", &spec.name),
            key,
            &FieldTable::new(),
        );
        self.replicate(bind.into_iter())?;
        let declared = vhost.declare_queue(spec, false, self.ctx.conn_id)?;
        vhost.bind_queue(
            &declared.queue.name,
            exchange,
            key,
            &FieldTable::new(),
            self.ctx.conn_id,
        )?;
        Ok((declared.queue, durable))
    }

    /// Clustered, commits `changes` on every node (waiting for the majority); a node that
    /// cannot (a minority) refuses the frame with an ERROR rather than diverge.
    fn replicate(&self, changes: impl Iterator<Item = Change>) -> StompResult<()> {
        let changes: Vec<Change> = changes.collect();
        if changes.is_empty() {
            return Ok(());
        }
        definitions::commit_all_blocking(&self.ctx.broker, changes)
            .map(|_| ())
            .map_err(refusal)
    }

    pub(super) fn start_subscription(
        &mut self,
        id: String,
        queue: Arc<Queue>,
        ack: AckMode,
        prefetch: u32,
        durable: bool,
    ) -> StompResult<()> {
        if self.subscriptions.contains_key(&id) {
            return Err(StompError::new(
                "Duplicated subscription identifier",
                format!("A subscription with id '{id}' already exists on this connection."),
            ));
        }
        let consumer_id = self.ctx.broker.next_id();
        let sink = StompSubscription::new(
            consumer_id,
            id.clone(),
            ack,
            self.deliveries.clone(),
            prefetch,
        );
        let effects = queue
            .add_consumer(Consumer {
                id: consumer_id,
                tag: id.clone(),
                no_ack: ack == AckMode::Auto,
                exclusive: false,
                owner: self.ctx.conn_id,
                sink: sink.clone(),
            })
            .map_err(|e| match e {
                ConsumeError::Deleted(q) => CoreError::not_found("queue", &q, &self.ctx.vhost.name),
                other => CoreError::access_refused(other.to_string()),
            })?;
        self.ctx.vhost.apply(&queue, effects);
        self.subscriptions.insert(
            id,
            Subscription {
                sink,
                queue,
                durable,
            },
        );
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, frame: &Frame) -> StompResult<()> {
        let id = match frame.header("id").or_else(|| frame.header("destination")) {
            Some(id) => id,
            None => return Err(StompError::missing_header("id", "UNSUBSCRIBE")),
        };
        let Some(sub) = self.subscriptions.remove(id) else {
            return Err(StompError::new(
                "Subscription not found",
                format!("There is no subscription with id '{id}' on this connection."),
            ));
        };
        self.ctx
            .vhost
            .remove_consumer(&sub.queue, sub.sink.consumer_id);
        let is_true = |h: &str| frame.header(h).map(str::trim) == Some("true");
        // A durable subscription ends for good when UNSUBSCRIBE says so (as in RabbitMQ).
        if sub.durable && (is_true("durable") || is_true("persistent")) {
            let change =
                definitions::queue_deleted(&self.ctx.broker, &self.ctx.vhost, &sub.queue.name);
            self.replicate(change.into_iter())?;
            self.ctx.vhost.remove_queue(&sub.queue);
        } else {
            self.ctx.vhost.consumer_gone(&sub.queue);
        }
        Ok(())
    }
}

/// A change the cluster did not make, as an ERROR frame: the broker's own error, else
/// "Server unavailable" with the reason (no quorum, say).
fn refusal(e: ChangeError) -> StompError {
    match e {
        ChangeError::Core(e) => e.into(),
        e => StompError::new("Server unavailable", e.to_string()),
    }
}
