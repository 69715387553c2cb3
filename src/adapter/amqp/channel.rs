//! One AMQP channel: its methods, content assembly for publishes, consumers, confirms and
//! transactions. Owned by the connection task; the delivery side it shares with queues lives in
//! [`super::delivery`].

use super::delivery::{AmqpConsumer, ChannelDeliveries, Unacked};
use super::error::*;
use crate::adapter::outbox::Outbox;
use crate::adapter::settle::{self, Settle};
use crate::cluster::definitions::{self, Change, ChangeError};
use crate::core::access::permissions::{Perm, ResourceKind, TopicVars};
use crate::core::access::PublishVerdicts;
use crate::core::channel_info::ChannelInfo;
use crate::core::queue::args::parse_expiration;
use crate::core::queue::{ConnectionId, ConsumeError, Ticket};
use crate::core::stats::ConnectionCounters;
use crate::core::vhost::{generate_name, ExchangeSpec, LastExchange, QueueSpec};
use crate::core::{
    Broker, Consumer, Exchange, ExchangeKind, Message, Publish, PublishTo, Queue, VHost,
};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use switchboard_amqp::*;

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What a channel needs from its connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub broker: Arc<Broker>,
    pub vhost: Arc<VHost>,
    pub conn_id: ConnectionId,
    pub user: String,
    /// May publish with another user's `user_id` (the `impersonator` tag).
    pub impersonator: bool,
    pub outbox: Arc<Outbox>,
    pub frame_max: u32,
    pub max_message_size: u64,
    pub consumer_cancel_notify: bool,
    /// The connection's message counters (`message_stats`).
    pub counters: Arc<ConnectionCounters>,
}

impl ConnCtx {
    pub fn send(&self, channel: u16, method: impl Into<Method>) {
        let method = method.into();
        self.outbox.push(|out| encode_method(out, channel, &method));
    }

    /// Checks a permission as RabbitMQ's channel does; a refusal closes the channel with 403.
    fn permit(&self, perm: Perm, kind: ResourceKind, name: &str) -> AmqpResult<()> {
        self.broker
            .access
            .check(&self.vhost.name, &self.user, perm, kind, name)
            .map_err(|r| AmqpError::channel(ACCESS_REFUSED, r.0))
    }

    /// Checks a topic permission on a routing key, for topic exchanges only.
    fn permit_topic(&self, perm: Perm, exchange: &str, routing_key: &str) -> AmqpResult<()> {
        if !self
            .vhost
            .exchange(exchange)
            .is_some_and(|e| e.kind == ExchangeKind::Topic)
        {
            return Ok(());
        }
        self.broker
            .access
            .check_topic(perm, exchange, routing_key, self.topic_vars())
            .map_err(|r| AmqpError::channel(ACCESS_REFUSED, r.0))
    }

    fn topic_vars(&self) -> TopicVars<'_> {
        TopicVars {
            username: &self.user,
            vhost: &self.vhost.name,
            client_id: "",
        }
    }
}

/// A publish whose content header and body are still arriving.
#[derive(Debug)]
struct ContentInProgress {
    publish: BasicPublish,
    header: Option<(Properties, Bytes, u64)>,
    body: Body,
}

/// Body frames collected so far. One frame is kept as the zero-copy slice it arrived as.
#[derive(Debug, Default)]
enum Body {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(b) => b.len(),
            Body::Many(b) => b.len(),
        }
    }

    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => {
                let mut m = BytesMut::with_capacity(first.len() + chunk.len());
                m.extend_from_slice(&first);
                m.extend_from_slice(&chunk);
                Body::Many(m)
            }
            Body::Many(mut m) => {
                m.extend_from_slice(&chunk);
                Body::Many(m)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(m) => m.freeze(),
        }
    }
}

#[derive(Debug)]
struct ChannelConsumer {
    id: u64,
    queue: Arc<Queue>,
    sink: Arc<AmqpConsumer>,
}

/// An operation held back until `tx.commit`.
#[derive(Debug)]
enum TxOp {
    Publish {
        exchange: Arc<Exchange>,
        message: Arc<Message>,
        mandatory: bool,
    },
    Settle {
        tag: u64,
        multiple: bool,
        how: Settle,
    },
}

/// What the connection must do after a frame.
#[derive(Debug, Default, Clone, Copy)]
pub struct Effects {
    /// A message was published: confirms may need flushing; the memory alarm applies.
    pub published: bool,
    /// A reply waits for the message log (see [`Channel::flush_confirms`]).
    pub reply_held: bool,
}

/// Publisher confirms in flight on a channel.
///
/// Publishes handled in one read batch form a batch, acknowledged with one `multiple` ack. A
/// batch that wrote persistent messages to the log waits until the log is durable up to its
/// last record (its LSN); batches are acknowledged in order. A publish a queue refused
/// (`x-overflow` `reject-publish`) closes the batch before it and is nacked on its own, in
/// sequence order with the acks.
#[derive(Debug, Default)]
struct Confirms {
    /// The last sequence number used.
    seq: u64,
    /// The batch being gathered: its highest sequence number, the LSN it needs and the
    /// quorum-queue commits it waits for.
    batch: Option<(u64, u64, Vec<Ticket>)>,
    /// Closed batches awaiting durability, and nacks, oldest first.
    waiting: VecDeque<Confirm>,
    /// The last sequence number answered (acked or nacked), for the confirm count.
    answered: u64,
}

/// One answer a confirm-mode publisher is owed.
#[derive(Debug, Clone)]
enum Confirm {
    /// Ack everything up to `seq` once the log is durable up to `lsn` and every ticket is
    /// committed (nacked if one never will be).
    Ack {
        seq: u64,
        lsn: u64,
        tickets: Vec<Ticket>,
    },
    /// Nack exactly `seq`.
    Nack { seq: u64 },
}

impl Confirms {
    /// Accounts for one publish: acked with its batch, or nacked on its own when refused.
    fn published(&mut self, lsn: u64, refused: bool, tickets: Vec<Ticket>) {
        self.seq += 1;
        if refused {
            if let Some((seq, lsn, tickets)) = self.batch.take() {
                self.waiting.push_back(Confirm::Ack { seq, lsn, tickets });
            }
            self.waiting.push_back(Confirm::Nack { seq: self.seq });
        } else {
            let (needed, mut waits) = match self.batch.take() {
                Some((_, l, t)) => (l.max(lsn), t),
                None => (lsn, Vec::new()),
            };
            waits.extend(tickets);
            self.batch = Some((self.seq, needed, waits));
        }
    }
}

#[derive(Debug)]
pub struct Channel {
    pub id: u16,
    pub deliveries: Arc<ChannelDeliveries>,
    content: Option<ContentInProgress>,
    consumers: HashMap<String, ChannelConsumer>,
    /// Per-consumer prefetch for consumers created from now on.
    prefetch_count: u32,
    /// Publisher confirm state, once `confirm.select` was sent.
    confirm: Option<Confirms>,
    /// Replies held until the message log is durable up to their LSN (tx.commit-ok, and
    /// declare/delete/bind replies of durable definitions).
    held_replies: VecDeque<(u64, Method)>,
    tx: Option<Vec<TxOp>>,
    /// The last queue declared on this channel, for methods that name queue "".
    last_queue: Option<String>,
    /// The private queue behind direct reply-to, once the channel consumes from it.
    reply_queue: Option<Arc<Queue>>,
    /// The server closed this channel and awaits `channel.close-ok`.
    pub closing: bool,
    /// The queues of the publish being routed: kept empty between publishes so its capacity is
    /// reused instead of allocating a list per message.
    routed_to: Vec<Arc<Queue>>,
    last_exchange: LastExchange,
    publish_verdicts: PublishVerdicts,
}

impl Channel {
    pub fn new(id: u16, outbox: Arc<Outbox>, frame_max: u32) -> Self {
        Channel {
            id,
            deliveries: ChannelDeliveries::new(id, outbox, frame_max),
            content: None,
            consumers: HashMap::new(),
            prefetch_count: 0,
            confirm: None,
            held_replies: VecDeque::new(),
            tx: None,
            last_queue: None,
            reply_queue: None,
            closing: false,
            routed_to: Vec::new(),
            last_exchange: LastExchange::default(),
            publish_verdicts: PublishVerdicts::default(),
        }
    }

    /// Publishes the channel's figures for the management API (see `core::channel_info`).
    fn store_gauges(&self) {
        let (messages_uncommitted, acks_uncommitted) = self.tx.as_ref().map_or((0, 0), |ops| {
            let publishes = ops
                .iter()
                .filter(|op| matches!(op, TxOp::Publish { .. }))
                .count() as u64;
            (publishes, ops.len() as u64 - publishes)
        });
        self.deliveries.gauges.store(&ChannelInfo {
            prefetch_count: self.prefetch_count,
            global_prefetch_count: self.deliveries.global_limit(),
            consumer_count: u32::try_from(self.consumers.len()).unwrap_or(u32::MAX),
            messages_unacknowledged: 0,
            messages_unconfirmed: self
                .confirm
                .as_ref()
                .map_or(0, |c| c.seq.saturating_sub(c.answered)),
            messages_uncommitted,
            acks_uncommitted,
            transactional: self.tx.is_some(),
            confirm: self.confirm.is_some(),
        });
    }

    /// Bytes of a message body still arriving (charged to the memory monitor by the driver).
    pub fn content_bytes(&self) -> usize {
        self.content.as_ref().map_or(0, |c| c.body.len())
    }

    /// Handles a frame for this channel (not channel.open/close, which the connection handles).
    pub fn handle_frame(&mut self, ctx: &ConnCtx, frame: Frame) -> AmqpResult<Effects> {
        match frame {
            Frame::Method { method, .. } => {
                if self.content.is_some() {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        format!(
                            "expected content header for class 60, got method {} instead",
                            method.name()
                        ),
                    ));
                }
                let (class_id, method_id) = (method.class_id(), method.method_id());
                // The per-message methods change the figures only in a transaction (a publish's
                // are stored when its content completes) or in confirm mode (stored per confirm
                // batch); an ack outside a transaction changes none of them.
                let per_message = match method {
                    Method::BasicPublish(_) => true,
                    Method::BasicAck(_) | Method::BasicNack(_) | Method::BasicReject(_) => {
                        self.tx.is_none()
                    }
                    _ => false,
                };
                let result = self
                    .handle_method(ctx, method)
                    .map_err(|e| e.during(class_id, method_id));
                if !per_message {
                    self.store_gauges();
                }
                result
            }
            Frame::Header {
                properties,
                raw_properties,
                body_size,
                ..
            } => {
                let Some(content) = self.content.as_mut().filter(|c| c.header.is_none()) else {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        "content header without a preceding basic.publish",
                    ));
                };
                if body_size > ctx.max_message_size {
                    self.content = None;
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        format!(
                            "message size {body_size} is larger than configured max size {}",
                            ctx.max_message_size
                        ),
                    )
                    .during(60, 40));
                }
                content.header = Some((properties, raw_properties, body_size));
                self.maybe_complete(ctx)
            }
            Frame::Body { payload, .. } => {
                let Some(content) = self.content.as_mut() else {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        "content body without a preceding basic.publish",
                    ));
                };
                let Some((_, _, size)) = &content.header else {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        "content body before the content header",
                    ));
                };
                if (content.body.len() + payload.len()) as u64 > *size {
                    return Err(AmqpError::connection(
                        FRAME_ERROR,
                        format!("content body exceeds the declared size of {size} bytes"),
                    ));
                }
                content.body.push(payload);
                self.maybe_complete(ctx)
            }
            Frame::Heartbeat { .. } => Err(AmqpError::connection(
                FRAME_ERROR,
                "heartbeat frame on a non-zero channel",
            )),
        }
    }

    fn maybe_complete(&mut self, ctx: &ConnCtx) -> AmqpResult<Effects> {
        let complete = matches!(&self.content, Some(ContentInProgress { header: Some((_, _, size)), body, .. }) if body.len() as u64 == *size);
        if !complete {
            return Ok(Effects::default());
        }
        let Some(ContentInProgress {
            publish,
            header: Some((properties, raw, _)),
            body,
        }) = self.content.take()
        else {
            return Ok(Effects::default());
        };
        self.publish(ctx, publish, properties, raw, body.into_bytes())
            .map_err(|e| e.during(60, 40))?;
        if self.tx.is_some() {
            self.store_gauges();
        }
        Ok(Effects {
            published: true,
            reply_held: false,
        })
    }

    fn handle_method(&mut self, ctx: &ConnCtx, method: Method) -> AmqpResult<Effects> {
        let ch = self.id;
        match method {
            Method::BasicPublish(m) => {
                if m.immediate {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "immediate=true"));
                }
                self.content = Some(ContentInProgress {
                    publish: m,
                    header: None,
                    body: Body::Empty,
                });
            }
            Method::ExchangeDeclare(m) => {
                if m.exchange.is_empty() && !m.passive {
                    return Err(AmqpError::channel(
                        ACCESS_REFUSED,
                        "operation not permitted on the default exchange",
                    ));
                }
                let spec = ExchangeSpec {
                    name: m.exchange,
                    kind: m.kind,
                    durable: m.durable,
                    auto_delete: m.auto_delete,
                    internal: m.internal,
                    arguments: m.arguments,
                };
                if !m.passive {
                    ctx.permit(Perm::Configure, ResourceKind::Exchange, &spec.name)?;
                    replicate(
                        ctx,
                        definitions::exchange_declared(&ctx.broker, &ctx.vhost, &spec),
                    )?;
                }
                ctx.vhost.declare_exchange(spec, m.passive)?;
                if !m.no_wait {
                    return Ok(self.reply_when_defined(ctx, ExchangeDeclareOk {}));
                }
            }
            Method::ExchangeDelete(m) => {
                ctx.permit(Perm::Configure, ResourceKind::Exchange, &m.exchange)?;
                if let Some(change) =
                    definitions::exchange_deleted(&ctx.broker, &ctx.vhost, &m.exchange)
                {
                    ctx.vhost.check_delete_exchange(&m.exchange, m.if_unused)?;
                    replicate(ctx, Some(change))?;
                }
                ctx.vhost.delete_exchange(&m.exchange, m.if_unused)?;
                if !m.no_wait {
                    return Ok(self.reply_when_defined(ctx, ExchangeDeleteOk {}));
                }
            }
            Method::ExchangeBind(m) => {
                ctx.permit(Perm::Write, ResourceKind::Exchange, &m.destination)?;
                ctx.permit(Perm::Read, ResourceKind::Exchange, &m.source)?;
                ctx.permit_topic(Perm::Read, &m.source, &m.routing_key)?;
                let ends = (m.source.as_str(), "exchange", m.destination.as_str());
                replicate_binding(ctx, true, ends, &m.routing_key, &m.arguments)?;
                ctx.vhost
                    .bind_exchange(&m.destination, &m.source, &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    return Ok(self.reply_when_defined(ctx, ExchangeBindOk {}));
                }
            }
            Method::ExchangeUnbind(m) => {
                ctx.permit(Perm::Write, ResourceKind::Exchange, &m.destination)?;
                ctx.permit(Perm::Read, ResourceKind::Exchange, &m.source)?;
                ctx.permit_topic(Perm::Read, &m.source, &m.routing_key)?;
                let ends = (m.source.as_str(), "exchange", m.destination.as_str());
                replicate_binding(ctx, false, ends, &m.routing_key, &m.arguments)?;
                ctx.vhost.unbind_exchange(
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                    &m.arguments,
                )?;
                if !m.no_wait {
                    return Ok(self.reply_when_defined(ctx, ExchangeUnbindOk {}));
                }
            }
            Method::QueueDeclare(mut m) => {
                let server_named = !m.passive && m.queue.is_empty();
                if !m.passive {
                    if server_named {
                        // Server-named: the permission applies to the name it gets.
                        m.queue = generate_name("amq.gen-");
                    }
                    ctx.permit(Perm::Configure, ResourceKind::Queue, &m.queue)?;
                    let dlx = m.arguments.get("x-dead-letter-exchange");
                    if let Some(dlx) = dlx.and_then(|v| v.as_str()) {
                        ctx.permit(Perm::Read, ResourceKind::Queue, &m.queue)?;
                        ctx.permit(Perm::Write, ResourceKind::Exchange, dlx)?;
                    }
                }
                let spec = QueueSpec {
                    name: m.queue,
                    durable: m.durable,
                    exclusive: m.exclusive,
                    auto_delete: m.auto_delete,
                    arguments: m.arguments,
                };
                if !m.passive {
                    definitions::check_queue_type(&ctx.broker, &ctx.vhost, &spec)?;
                }
                if !m.passive {
                    // Clustered, every queue is known to every node, which routes to it.
                    definitions::declare_queue_everywhere(&ctx.broker, &ctx.vhost, &spec)
                        .map_err(refusal)?;
                }
                let declared = if server_named {
                    ctx.vhost.declare_server_named_queue(spec, ctx.conn_id)?
                } else {
                    ctx.vhost.declare_queue(spec, m.passive, ctx.conn_id)?
                };
                let stats = declared.queue.stats();
                self.last_queue = Some(declared.queue.name.clone());
                if !m.no_wait {
                    let ok = QueueDeclareOk {
                        queue: declared.queue.name.clone(),
                        message_count: clamp_u32(stats.ready),
                        consumer_count: clamp_u32(stats.consumers),
                    };
                    return Ok(self.reply_when_defined(ctx, ok));
                }
            }
            Method::QueueBind(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                ctx.permit(Perm::Write, ResourceKind::Queue, &queue)?;
                ctx.permit(Perm::Read, ResourceKind::Exchange, &m.exchange)?;
                ctx.permit_topic(Perm::Read, &m.exchange, &m.routing_key)?;
                let ends = (m.exchange.as_str(), "queue", queue.as_str());
                replicate_binding(ctx, true, ends, &m.routing_key, &m.arguments)?;
                ctx.vhost.bind_queue(
                    &queue,
                    &m.exchange,
                    &m.routing_key,
                    &m.arguments,
                    ctx.conn_id,
                )?;
                if !m.no_wait {
                    return Ok(self.reply_when_defined(ctx, QueueBindOk {}));
                }
            }
            Method::QueueUnbind(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                ctx.permit(Perm::Write, ResourceKind::Queue, &queue)?;
                ctx.permit(Perm::Read, ResourceKind::Exchange, &m.exchange)?;
                ctx.permit_topic(Perm::Read, &m.exchange, &m.routing_key)?;
                let ends = (m.exchange.as_str(), "queue", queue.as_str());
                replicate_binding(ctx, false, ends, &m.routing_key, &m.arguments)?;
                ctx.vhost.unbind_queue(
                    &queue,
                    &m.exchange,
                    &m.routing_key,
                    &m.arguments,
                    ctx.conn_id,
                )?;
                return Ok(self.reply_when_defined(ctx, QueueUnbindOk {}));
            }
            Method::QueuePurge(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                ctx.permit(Perm::Read, ResourceKind::Queue, &queue)?;
                let q = ctx.vhost.queue_for(&queue, ctx.conn_id)?;
                let message_count = q.purge();
                if !m.no_wait {
                    ctx.send(ch, QueuePurgeOk { message_count });
                }
            }
            Method::QueueDelete(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                ctx.permit(Perm::Configure, ResourceKind::Queue, &queue)?;
                // Clustered, the deletion commits first (and empties this node's instance).
                let mut replicated_count = None;
                if let Some(change) = definitions::queue_deleted(&ctx.broker, &ctx.vhost, &queue) {
                    let q = ctx.vhost.check_delete_queue(
                        &queue,
                        m.if_unused,
                        m.if_empty,
                        ctx.conn_id,
                    )?;
                    replicated_count = q.map(|q| clamp_u32(q.stats().ready));
                    replicate(ctx, Some(change))?;
                }
                let deleted =
                    ctx.vhost
                        .delete_queue(&queue, m.if_unused, m.if_empty, ctx.conn_id)?;
                let message_count = replicated_count.unwrap_or(deleted);
                if !m.no_wait {
                    return Ok(self.reply_when_defined(ctx, QueueDeleteOk { message_count }));
                }
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpError::connection(
                        NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", m.prefetch_size),
                    ));
                }
                if m.global {
                    self.deliveries
                        .set_global_limit(u32::from(m.prefetch_count));
                } else {
                    self.prefetch_count = u32::from(m.prefetch_count);
                }
                ctx.send(ch, BasicQosOk {});
                self.wake_consumers(ctx);
            }
            Method::BasicConsume(m) => self.consume(ctx, m)?,
            Method::BasicCancel(m) => {
                if let Some(c) = self.consumers.remove(&m.consumer_tag) {
                    ctx.vhost.remove_consumer(&c.queue, c.id);
                    if self
                        .reply_queue
                        .as_ref()
                        .is_some_and(|r| Arc::ptr_eq(r, &c.queue))
                    {
                        self.reply_queue = None;
                        ctx.vhost.remove_queue(&c.queue);
                    } else {
                        ctx.vhost.consumer_gone(&c.queue);
                    }
                }
                if !m.no_wait {
                    ctx.send(
                        ch,
                        BasicCancelOk {
                            consumer_tag: m.consumer_tag,
                        },
                    );
                }
            }
            Method::BasicGet(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                ctx.permit(Perm::Read, ResourceKind::Queue, &queue)?;
                let q = ctx.vhost.queue_for(&queue, ctx.conn_id)?;
                // Another node's lead is reached through its proxy; refused only while no
                // leader is known.
                if let Some(r) = q
                    .replica()
                    .filter(|r| !r.is_leader() && r.leader_home().is_none())
                {
                    let refused = ConsumeError::NotLeader {
                        queue: q.name.clone(),
                        leader: r.leader(),
                    };
                    return Err(AmqpError::channel(PRECONDITION_FAILED, refused.to_string()));
                }
                let (got, effects) = q.get(m.no_ack);
                ctx.vhost.apply(&q, effects);
                match got {
                    None => ctx.send(ch, BasicGetEmpty::default()),
                    Some((d, message_count)) => {
                        let unacked = (!m.no_ack).then(|| Unacked {
                            queue: q.clone(),
                            message_id: d.id,
                            consumer_credit: None,
                        });
                        let msg = &d.message;
                        self.deliveries.send_content(msg, unacked, |delivery_tag| {
                            Method::BasicGetOk(BasicGetOk {
                                delivery_tag,
                                redelivered: d.redelivered,
                                exchange: msg.exchange.clone(),
                                routing_key: msg.routing_key.clone(),
                                message_count,
                            })
                        });
                    }
                }
            }
            Method::BasicAck(m) => {
                self.settle_or_buffer(ctx, m.delivery_tag, m.multiple, Settle::Ack)?
            }
            Method::BasicReject(m) => {
                self.settle_or_buffer(ctx, m.delivery_tag, false, Settle::rejected(m.requeue))?
            }
            Method::BasicNack(m) => {
                let how = Settle::rejected(m.requeue);
                self.settle_or_buffer(ctx, m.delivery_tag, m.multiple, how)?
            }
            // RabbitMQ cannot redeliver to the same consumer only, and says so.
            Method::BasicRecover(BasicRecover { requeue: false })
            | Method::BasicRecoverAsync(BasicRecoverAsync { requeue: false }) => {
                return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
            }
            Method::BasicRecover(_) => {
                // recover-ok goes first, as from RabbitMQ: clients drop the deliveries they hold
                // when it arrives, so redeliveries sent before it would be lost to them.
                ctx.send(ch, BasicRecoverOk {});
                self.requeue_all(ctx);
            }
            Method::BasicRecoverAsync(_) => self.requeue_all(ctx),
            Method::ChannelFlow(m) => {
                self.deliveries.set_flow(m.active);
                ctx.send(ch, ChannelFlowOk { active: m.active });
                if m.active {
                    self.wake_consumers(ctx);
                }
            }
            Method::ConfirmSelect(m) => {
                if self.tx.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirm.is_none() {
                    self.confirm = Some(Confirms::default());
                }
                if !m.no_wait {
                    ctx.send(ch, ConfirmSelectOk {});
                }
            }
            Method::TxSelect(_) => {
                if self.confirm.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Vec::new);
                ctx.send(ch, TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let Some(ops) = self.tx.as_mut().map(std::mem::take) else {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                self.commit(ctx, ops)?;
                // commit-ok promises the transaction's publishes and acks are done: with a
                // store, once everything appended so far (its records included) is durable.
                match &ctx.broker.store {
                    Some(store) => {
                        self.held_replies
                            .push_back((store.log.last_lsn(), TxCommitOk {}.into()));
                        return Ok(Effects {
                            published: false,
                            reply_held: true,
                        });
                    }
                    None => ctx.send(ch, TxCommitOk {}),
                }
            }
            Method::TxRollback(_) => {
                let Some(ops) = self.tx.as_mut() else {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                ops.clear();
                ctx.send(ch, TxRollbackOk {});
            }
            other => {
                return Err(AmqpError::connection(
                    COMMAND_INVALID,
                    format!(
                        "method {} is not valid from a client on a channel",
                        other.name()
                    ),
                ))
            }
        }
        Ok(Effects::default())
    }

    /// Sends the reply to a declare, delete, bind or unbind once the vhost's definition records
    /// (this change's, or a racing one's it reports) are durable: held like `tx.commit-ok`
    /// while the log is behind, so no runtime worker waits for an fsync.
    fn reply_when_defined(&mut self, ctx: &ConnCtx, reply: impl Into<Method>) -> Effects {
        let lsn = ctx.vhost.definitions_lsn();
        let synced = ctx
            .broker
            .store
            .as_ref()
            .map_or(u64::MAX, |s| s.log.synced());
        if self.held_replies.is_empty() && lsn <= synced {
            ctx.send(self.id, reply);
            return Effects::default();
        }
        self.held_replies.push_back((lsn, reply.into()));
        Effects {
            published: false,
            reply_held: true,
        }
    }

    /// A queue name from a method, where "" means the last queue declared on this channel.
    fn resolve_queue(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::channel(NOT_FOUND, "no previously declared queue"))
    }

    fn consume(&mut self, ctx: &ConnCtx, m: BasicConsume) -> AmqpResult<()> {
        let queue_name = self.resolve_queue(&m.queue)?;
        let tag = if m.consumer_tag.is_empty() {
            generate_name("amq.ctag-")
        } else {
            m.consumer_tag.clone()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let q = if queue_name == DIRECT_REPLY_TO {
            if !m.no_ack {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    "reply consumer cannot acknowledge",
                ));
            }
            if self.reply_queue.is_some() {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    "reply consumer already set",
                ));
            }
            let q = ctx
                .vhost
                .create_private_queue(generate_name(&format!("{DIRECT_REPLY_TO}.")), ctx.conn_id);
            self.reply_queue = Some(q.clone());
            q
        } else {
            ctx.permit(Perm::Read, ResourceKind::Queue, &queue_name)?;
            ctx.vhost.queue_for(&queue_name, ctx.conn_id)?
        };
        let sink = AmqpConsumer::new(
            tag.clone(),
            m.no_ack,
            self.deliveries.clone(),
            self.prefetch_count,
            ctx.consumer_cancel_notify,
        );
        let priority = consumer_priority(&m.arguments)?;
        let id = ctx.broker.next_id();
        let effects = q
            .add_consumer_with_priority(
                Consumer {
                    id,
                    tag: tag.clone(),
                    no_ack: m.no_ack,
                    exclusive: m.exclusive,
                    owner: ctx.conn_id,
                    sink: sink.clone(),
                },
                priority,
            )
            .map_err(|e| match e {
                ConsumeError::Deleted(_) => AmqpError::channel(
                    NOT_FOUND,
                    format!("no queue '{queue_name}' in vhost '{}'", ctx.vhost.name),
                ),
                e @ ConsumeError::NotLeader { .. } => {
                    AmqpError::channel(PRECONDITION_FAILED, e.to_string())
                }
                _ => AmqpError::channel(
                    ACCESS_REFUSED,
                    format!(
                        "queue '{queue_name}' in vhost '{}' in exclusive use",
                        ctx.vhost.name
                    ),
                ),
            })?;
        // consume-ok goes on the wire before the consumer may receive anything.
        if !m.no_wait {
            ctx.send(
                self.id,
                BasicConsumeOk {
                    consumer_tag: tag.clone(),
                },
            );
        }
        ctx.vhost.apply(&q, effects);
        sink.activate();
        ctx.vhost.dispatch(&q);
        self.consumers
            .insert(tag, ChannelConsumer { id, queue: q, sink });
        Ok(())
    }

    fn publish(
        &mut self,
        ctx: &ConnCtx,
        publish: BasicPublish,
        mut properties: Properties,
        raw: Bytes,
        body: Bytes,
    ) -> AmqpResult<()> {
        // As RabbitMQ: write permission first, then whether the exchange exists.
        self.permit_publish(ctx, &publish.exchange, &publish.routing_key)?;
        let exchange = self
            .last_exchange
            .get(&ctx.vhost, &publish.exchange)
            .ok_or_else(|| {
                AmqpError::channel(
                    NOT_FOUND,
                    format!(
                        "no exchange '{}' in vhost '{}'",
                        publish.exchange, ctx.vhost.name
                    ),
                )
            })?;
        if exchange.internal {
            return Err(AmqpError::channel(
                ACCESS_REFUSED,
                format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    exchange.name, ctx.vhost.name
                ),
            ));
        }
        ctx.vhost
            .check_routing_key(&exchange, &publish.routing_key)?;
        if let Some(uid) = &properties.user_id {
            if *uid != ctx.user && !ctx.impersonator {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "user_id property set to '{uid}' but authenticated user was '{}'",
                        ctx.user
                    ),
                ));
            }
        }
        if let Some(expiration) = &properties.expiration {
            if let Err(reason) = parse_expiration(expiration) {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!("invalid expiration '{expiration}': {reason}"),
                ));
            }
        }
        let mut raw = Some(raw);
        if properties.reply_to.as_deref() == Some(DIRECT_REPLY_TO) {
            let Some(rq) = &self.reply_queue else {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    "fast reply consumer does not exist",
                ));
            };
            properties.reply_to = Some(rq.name.clone());
            raw = None;
        }
        let charge = ctx.broker.memory.charge(Message::charge_size(body.len()));
        let message = Arc::new(Message::with_properties(
            publish.exchange,
            publish.routing_key,
            properties,
            raw,
            body,
            charge,
        ));
        if let Some(ops) = &mut self.tx {
            ops.push(TxOp::Publish {
                exchange,
                message,
                mandatory: publish.mandatory,
            });
            return Ok(());
        }
        let routed = self.route(ctx, &exchange, message, publish.mandatory);
        if let Some(c) = &mut self.confirm {
            c.published(routed.lsn, routed.refused, routed.tickets);
        }
        Ok(())
    }

    /// Write permission on the exchange (cached per exchange until access control changes),
    /// then topic permission on the routing key when topic permissions apply.
    fn permit_publish(
        &mut self,
        ctx: &ConnCtx,
        exchange: &str,
        routing_key: &str,
    ) -> AmqpResult<()> {
        let restricted = self
            .publish_verdicts
            .check(&ctx.broker.access, &ctx.vhost.name, &ctx.user, exchange)
            .map_err(|r| AmqpError::channel(ACCESS_REFUSED, r.0))?;
        if restricted {
            ctx.permit_topic(Perm::Write, exchange, routing_key)?;
        }
        Ok(())
    }

    /// Routes a message to its queues; returns the log record a confirm must wait for (0 when
    /// nothing was persisted) and whether a queue refused it.
    fn route(
        &mut self,
        ctx: &ConnCtx,
        exchange: &Arc<Exchange>,
        message: Arc<Message>,
        mandatory: bool,
    ) -> Routed {
        ctx.counters.published();
        let publish = Publish {
            to: PublishTo::Exchange(exchange),
            message: &message,
            holdable: false,
        };
        let mut queues = std::mem::take(&mut self.routed_to);
        let outcome = ctx.vhost.publish(publish, &mut queues);
        self.routed_to = queues;
        // A delayed message is held, not unroutable: `mandatory` does not apply to it.
        if outcome.queues == 0 && !outcome.held {
            if mandatory {
                let method = Method::BasicReturn(BasicReturn {
                    reply_code: NO_ROUTE,
                    reply_text: code_name(NO_ROUTE).to_owned(),
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                });
                ctx.outbox.push(|out| {
                    encode_content(
                        out,
                        self.id,
                        &method,
                        message.properties(),
                        message.raw_properties.as_deref(),
                        &message.body,
                        ctx.frame_max,
                    )
                });
            }
            return Routed::default();
        }
        Routed {
            lsn: outcome.lsn,
            // As RabbitMQ: one refusing queue makes the publish nacked.
            refused: outcome.refused(),
            tickets: outcome.tickets,
        }
    }

    /// Closes the current batch of confirm-mode publishes and acknowledges, with one `multiple`
    /// ack, every batch whose records are durable (log synced up to `synced`). True while
    /// batches still wait for the log.
    pub fn flush_confirms(&mut self, ctx: &ConnCtx, synced: u64) -> bool {
        while let Some((lsn, _)) = self.held_replies.front() {
            if *lsn > synced {
                return true;
            }
            if let Some((_, reply)) = self.held_replies.pop_front() {
                ctx.send(self.id, reply);
            }
        }
        let Some(c) = &mut self.confirm else {
            return false;
        };
        if let Some((seq, lsn, tickets)) = c.batch.take() {
            c.waiting.push_back(Confirm::Ack { seq, lsn, tickets });
        }
        let mut tag = None;
        let ack = |tag: &mut Option<u64>| {
            if let Some(delivery_tag) = tag.take() {
                ctx.send(
                    self.id,
                    BasicAck {
                        delivery_tag,
                        multiple: true,
                    },
                );
            }
        };
        while let Some(next) = c.waiting.front() {
            match next {
                Confirm::Ack { lsn, .. } if *lsn > synced => break,
                Confirm::Ack { tickets, .. } if tickets.iter().any(|t| t.outcome().is_none()) => {
                    break
                }
                Confirm::Ack { seq, tickets, .. }
                    if tickets.iter().any(|t| t.outcome() == Some(false)) =>
                {
                    // A quorum queue was deleted before it committed these: nacked.
                    let seq = *seq;
                    c.answered = seq;
                    ack(&mut tag);
                    ctx.send(
                        self.id,
                        BasicNack {
                            delivery_tag: seq,
                            multiple: true,
                            requeue: false,
                        },
                    );
                }
                Confirm::Ack { seq, .. } => {
                    let seq = *seq;
                    ctx.counters.confirmed(seq.saturating_sub(c.answered));
                    c.answered = seq;
                    tag = Some(seq);
                }
                &Confirm::Nack { seq } => {
                    c.answered = seq;
                    // The acks before it go first, so the publisher sees them in order.
                    ack(&mut tag);
                    ctx.send(
                        self.id,
                        BasicNack {
                            delivery_tag: seq,
                            multiple: false,
                            requeue: false,
                        },
                    );
                }
            }
            c.waiting.pop_front();
        }
        ack(&mut tag);
        let waiting = !c.waiting.is_empty();
        self.store_gauges();
        waiting
    }

    fn settle_or_buffer(
        &mut self,
        ctx: &ConnCtx,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> AmqpResult<()> {
        if let Some(ops) = &mut self.tx {
            ops.push(TxOp::Settle { tag, multiple, how });
            return Ok(());
        }
        self.settle(ctx, tag, multiple, how)
    }

    fn settle(&mut self, ctx: &ConnCtx, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        let taken = self.deliveries.take(tag, multiple).ok_or_else(|| {
            AmqpError::channel(PRECONDITION_FAILED, format!("unknown delivery tag {tag}"))
        })?;
        let taken = taken.into_iter().map(|u| (u.queue, u.message_id));
        settle::apply(&ctx.vhost, taken, how);
        self.wake_consumers(ctx);
        Ok(())
    }

    fn commit(&mut self, ctx: &ConnCtx, ops: Vec<TxOp>) -> AmqpResult<()> {
        for op in ops {
            match op {
                TxOp::Publish {
                    exchange,
                    message,
                    mandatory,
                } => {
                    self.route(ctx, &exchange, message, mandatory);
                }
                TxOp::Settle { tag, multiple, how } => self.settle(ctx, tag, multiple, how)?,
            }
        }
        Ok(())
    }

    fn requeue_all(&mut self, ctx: &ConnCtx) {
        settle::apply(
            &ctx.vhost,
            self.deliveries
                .take_all()
                .into_iter()
                .map(|u| (u.queue, u.message_id)),
            Settle::Requeue,
        );
        self.wake_consumers(ctx);
    }

    /// Lets this channel's consumers' queues deliver again (credit or room came back).
    pub fn wake_consumers(&mut self, ctx: &ConnCtx) {
        let before = self.consumers.len();
        self.consumers.retain(|_, c| !c.sink.is_cancelled());
        if self.consumers.len() != before {
            self.store_gauges();
        }
        let mut woken: Vec<&Arc<Queue>> = Vec::with_capacity(self.consumers.len());
        for c in self.consumers.values() {
            if !woken.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                woken.push(&c.queue);
                ctx.vhost.dispatch(&c.queue);
            }
        }
    }

    /// Releases everything the channel holds: consumers go, unacked deliveries return to their
    /// queues in order, marked redelivered.
    pub fn cleanup(&mut self, ctx: &ConnCtx) {
        self.deliveries.close();
        self.content = None;
        for (_, c) in self.consumers.drain() {
            ctx.vhost.remove_consumer(&c.queue, c.id);
            ctx.vhost.consumer_gone(&c.queue);
        }
        if let Some(rq) = self.reply_queue.take() {
            ctx.vhost.remove_queue(&rq);
        }
        // Consumers are gone first so requeued messages go to other consumers, not back here.
        settle::apply(
            &ctx.vhost,
            self.deliveries
                .take_all()
                .into_iter()
                .map(|u| (u.queue, u.message_id)),
            Settle::Requeue,
        );
    }
}

/// The `x-priority` consume argument (0 when absent); RabbitMQ wants an integer.
fn consumer_priority(arguments: &FieldTable) -> AmqpResult<i32> {
    let Some(v) = arguments.get("x-priority") else {
        return Ok(0);
    };
    match v.as_i64() {
        Some(p) => Ok(i32::try_from(p).unwrap_or(if p < 0 { i32::MIN } else { i32::MAX })),
        None => Err(AmqpError::channel(
            PRECONDITION_FAILED,
            format!(
                "invalid arg 'x-priority': {{unacceptable_type,{}}}",
                crate::core::queue::args::type_name(v)
            ),
        )),
    }
}

/// What routing one publish did.
#[derive(Debug, Default, Clone)]
struct Routed {
    /// The log record a confirm must wait for (0: nothing persisted).
    lsn: u64,
    /// The quorum-queue commits a confirm waits for as well.
    tickets: Vec<Ticket>,
    /// A queue refused the message for its length limit.
    refused: bool,
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Commits `change` through the cluster before it is made here (nothing to do unclustered or
/// for a definition the cluster does not keep). Without a majority the connection is closed
/// with 541 INTERNAL_ERROR and the reason, as RabbitMQ answers a declaration its metadata
/// store could not commit.
fn replicate(ctx: &ConnCtx, change: Option<Change>) -> AmqpResult<()> {
    let Some(change) = change else {
        return Ok(());
    };
    definitions::commit_blocking(&ctx.broker, change)
        .map(|_| ())
        .map_err(refusal)
}

/// A change the cluster did not make, as AMQP answers it: the broker's own error, else 541
/// INTERNAL_ERROR with the reason (no quorum, say).
fn refusal(e: ChangeError) -> AmqpError {
    match e {
        ChangeError::Core(e) => e.into(),
        e => AmqpError::connection(INTERNAL_ERROR, e.to_string()),
    }
}

/// [`replicate`] for binding (`bind`) or unbinding `ends` (source, destination type,
/// destination).
fn replicate_binding(
    ctx: &ConnCtx,
    bind: bool,
    ends: (&str, &str, &str),
    routing_key: &str,
    arguments: &FieldTable,
) -> AmqpResult<()> {
    let change =
        definitions::binding_changed(&ctx.broker, &ctx.vhost, bind, ends, routing_key, arguments);
    replicate(ctx, change)
}
