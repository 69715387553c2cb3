//! The delivery side of a channel: delivery tags, unacknowledged deliveries, prefetch credit,
//! and the consumer sink that queues call to hand messages to this channel.
//!
//! Queues deliver from whatever task published (DESIGN.md: no hop through a central task), so
//! this state is shared. Tags are assigned and frames appended under one lock, which keeps tags
//! in wire order: an ack with `multiple` never covers a delivery the client has not seen.

use crate::adapter::outbox::Outbox;
use crate::core::channel_info::{ChannelGauges, ChannelInfo, ChannelView};
use crate::core::{ConsumerSink, Delivery, Queue};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_amqp::{encode_content, BasicCancel, ContentMethod, DeliverArgs, Method};

/// A delivery awaiting ack: enough to settle or requeue it and to return its credit.
#[derive(Debug)]
pub struct Unacked {
    pub queue: Arc<Queue>,
    pub message_id: u64,
    /// The consumer's in-flight counter, when the delivery took consumer credit.
    pub consumer_credit: Option<Arc<AtomicU32>>,
}

#[derive(Debug, Default)]
struct Tags {
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
}

/// Delivery state shared between a channel and the queues delivering to it.
#[derive(Debug)]
pub struct ChannelDeliveries {
    pub channel: u16,
    pub outbox: Arc<Outbox>,
    pub frame_max: u32,
    tags: Mutex<Tags>,
    /// Channel-wide prefetch (`basic.qos` with `global`), 0 = unlimited.
    global_limit: AtomicU32,
    /// Unacked consumer deliveries on this channel.
    global_in_flight: AtomicU32,
    /// `channel.flow` state; no deliveries while false.
    flow_active: AtomicBool,
    closed: AtomicBool,
    /// The channel's figures for the management API, stored by the channel.
    pub gauges: ChannelGauges,
}

/// Takes one unit from `counter` if it is below `limit` (0 = unlimited).
fn take_credit(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (limit == 0 || n < limit).then_some(n + 1)
        })
        .is_ok()
}

fn return_credit(counter: &AtomicU32) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

impl ChannelDeliveries {
    pub fn new(channel: u16, outbox: Arc<Outbox>, frame_max: u32) -> Arc<Self> {
        Arc::new(ChannelDeliveries {
            channel,
            outbox,
            frame_max,
            tags: Mutex::new(Tags {
                next_tag: 1,
                unacked: BTreeMap::new(),
            }),
            global_limit: AtomicU32::new(0),
            global_in_flight: AtomicU32::new(0),
            flow_active: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            gauges: ChannelGauges::default(),
        })
    }

    /// The channel-wide prefetch (`basic.qos` with `global`), 0 = unlimited.
    pub fn global_limit(&self) -> u32 {
        self.global_limit.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Tags> {
        self.tags.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_global_limit(&self, limit: u32) {
        self.global_limit.store(limit, Ordering::Release);
    }

    pub fn set_flow(&self, active: bool) {
        self.flow_active.store(active, Ordering::Release);
    }

    /// No more deliveries: the channel is closing.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn accepting(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.flow_active.load(Ordering::Acquire)
            && self.outbox.has_room()
    }

    /// Assigns the next delivery tag to a message and appends its frames, recording it as
    /// unacked when `unacked` is given. `method` builds the delivery method from the tag.
    pub fn send_content<M: ContentMethod>(
        &self,
        message: &crate::core::Message,
        unacked: Option<Unacked>,
        method: impl FnOnce(u64) -> M,
    ) -> u64 {
        let mut tags = self.lock();
        let tag = tags.next_tag;
        tags.next_tag += 1;
        if let Some(u) = unacked {
            tags.unacked.insert(tag, u);
        }
        let method = method(tag);
        let frame_max = self.frame_max;
        self.outbox.push(|out| {
            encode_content(
                out,
                self.channel,
                &method,
                message.properties(),
                message.raw_properties.as_deref(),
                &message.body,
                frame_max,
            )
        });
        tag
    }

    /// Removes the deliveries an ack/nack/reject names: `tag` alone, or with `multiple` every
    /// tag up to it (0 = all). None if a named tag is unknown.
    pub fn take(&self, tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        let mut tags = self.lock();
        if multiple {
            if tag == 0 {
                return Some(self.release_all(std::mem::take(&mut tags.unacked)));
            }
            if !tags.unacked.contains_key(&tag) {
                return None;
            }
            let rest = tags.unacked.split_off(&(tag + 1));
            let taken = std::mem::replace(&mut tags.unacked, rest);
            Some(self.release_all(taken))
        } else {
            let u = tags.unacked.remove(&tag)?;
            Some(self.release_all(BTreeMap::from([(tag, u)])))
        }
    }

    /// Removes every unacked delivery (channel close, `basic.recover`).
    pub fn take_all(&self) -> Vec<Unacked> {
        let all = std::mem::take(&mut self.lock().unacked);
        self.release_all(all)
    }

    fn release_all(&self, taken: BTreeMap<u64, Unacked>) -> Vec<Unacked> {
        taken
            .into_values()
            .inspect(|u| {
                if let Some(c) = &u.consumer_credit {
                    return_credit(c);
                    return_credit(&self.global_in_flight);
                }
            })
            .collect()
    }

    pub fn unacked_count(&self) -> usize {
        self.lock().unacked.len()
    }
}

/// An AMQP consumer as queues see it.
#[derive(Debug)]
pub struct AmqpConsumer {
    pub tag: String,
    pub no_ack: bool,
    pub channel: Arc<ChannelDeliveries>,
    /// Per-consumer prefetch, 0 = unlimited.
    limit: u32,
    in_flight: Arc<AtomicU32>,
    /// False until `basic.consume-ok` is on the wire, so no delivery can precede it.
    active: AtomicBool,
    /// Whether to tell the client when the queue goes (`consumer_cancel_notify`).
    notify_cancel: bool,
    cancelled: AtomicBool,
}

impl AmqpConsumer {
    pub fn new(
        tag: String,
        no_ack: bool,
        channel: Arc<ChannelDeliveries>,
        limit: u32,
        notify_cancel: bool,
    ) -> Arc<Self> {
        Arc::new(AmqpConsumer {
            tag,
            no_ack,
            channel,
            limit,
            in_flight: Arc::new(AtomicU32::new(0)),
            active: AtomicBool::new(false),
            notify_cancel,
            cancelled: AtomicBool::new(false),
        })
    }

    pub fn activate(&self) {
        self.active.store(true, Ordering::Release);
    }

    /// Whether the server cancelled this consumer (its queue was deleted).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

impl ConsumerSink for AmqpConsumer {
    fn try_reserve(&self, needs_ack: bool) -> bool {
        if !self.active.load(Ordering::Acquire) || !self.channel.accepting() {
            return false;
        }
        if !needs_ack {
            return true;
        }
        if !take_credit(&self.in_flight, self.limit) {
            return false;
        }
        let global = self.channel.global_limit.load(Ordering::Acquire);
        if !take_credit(&self.channel.global_in_flight, global) {
            return_credit(&self.in_flight);
            return false;
        }
        true
    }

    fn deliver(&self, queue: &Arc<Queue>, d: Delivery) {
        let unacked = (!self.no_ack).then(|| Unacked {
            queue: queue.clone(),
            message_id: d.id,
            consumer_credit: Some(self.in_flight.clone()),
        });
        let message = &d.message;
        self.channel
            .send_content(message, unacked, |delivery_tag| DeliverArgs {
                consumer_tag: &self.tag,
                delivery_tag,
                redelivered: d.redelivered,
                exchange: &message.exchange,
                routing_key: &message.routing_key,
            });
    }

    fn prefetch_count(&self) -> u32 {
        self.limit
    }

    fn channel_number(&self) -> Option<u16> {
        Some(self.channel.channel)
    }

    fn cancelled(&self, _queue: &Queue, consumer_tag: &str) {
        self.cancelled.store(true, Ordering::Release);
        if self.notify_cancel {
            let method = Method::BasicCancel(BasicCancel {
                consumer_tag: consumer_tag.to_owned(),
                no_wait: true,
            });
            let ch = self.channel.channel;
            self.channel
                .outbox
                .push(|out| switchboard_amqp::encode_method(out, ch, &method));
        }
    }
}

impl ChannelView for ChannelDeliveries {
    fn info(&self) -> ChannelInfo {
        let unacked = self.lock().unacked.len() as u64;
        self.gauges.load(unacked)
    }
}
