//! The delivery side of a STOMP session: message ids, unacknowledged deliveries, prefetch credit,
//! and the consumer sink through which queues hand messages to a subscription.
//!
//! Queues deliver from whatever task published (DESIGN.md), so this state is shared. Ids are
//! assigned and MESSAGE frames appended under one lock, which keeps ids in wire order: a
//! cumulative ACK in `client` mode never covers a message the client has not seen.

use super::destination::destination_of;
use super::headers::message_headers;
use crate::adapter::outbox::Outbox;
use crate::core::{ConsumerSink, Delivery, Queue};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use switchboard_stomp::{encode_parts, Command, Version};

/// A subscription's `ack` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    /// Cumulative: an ACK covers every earlier message of the subscription.
    Client,
    ClientIndividual,
}

impl AckMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(AckMode::Auto),
            "client" => Some(AckMode::Client),
            "client-individual" => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

/// A delivery awaiting ACK or NACK.
#[derive(Debug)]
pub struct Unacked {
    /// The subscription's broker-unique consumer id.
    pub subscription: u64,
    pub queue: Arc<Queue>,
    pub message_id: u64,
    /// Delivered to a `client` mode subscription: acks of later deliveries cover it.
    cumulative: bool,
    credit: Arc<AtomicU32>,
}

#[derive(Debug, Default)]
struct Ids {
    next: u64,
    unacked: BTreeMap<u64, Unacked>,
}

/// Delivery state shared by a session and the queues delivering to its subscriptions.
#[derive(Debug)]
pub struct SessionDeliveries {
    pub outbox: Arc<Outbox>,
    pub version: Version,
    /// The session id sent in CONNECTED; part of every message id.
    pub session: String,
    ids: Mutex<Ids>,
    closed: AtomicBool,
}

impl SessionDeliveries {
    pub fn new(outbox: Arc<Outbox>, version: Version, session: String) -> Arc<Self> {
        Arc::new(SessionDeliveries {
            outbox,
            version,
            session,
            ids: Mutex::new(Ids {
                next: 1,
                unacked: BTreeMap::new(),
            }),
            closed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No more deliveries: the session is ending.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The delivery number inside a `message-id` / `ack` value (`T_<sub>@@<session>@@<n>`, as
    /// RabbitMQ writes them).
    pub fn parse_ack_id(id: &str) -> Option<u64> {
        id.rsplit_once("@@")?.1.parse().ok()
    }

    /// Takes what an ACK/NACK of delivery `n` covers: in `client` mode every unacked delivery of
    /// the same subscription up to `n`, else `n` alone. Empty if `n` is not unacked.
    pub fn take(&self, n: u64) -> Vec<Unacked> {
        let mut ids = self.lock();
        let Some((sub, cumulative)) = ids.unacked.get(&n).map(|u| (u.subscription, u.cumulative))
        else {
            return Vec::new();
        };
        let keys: Vec<u64> = if cumulative {
            ids.unacked
                .range(..=n)
                .filter(|(_, u)| u.subscription == sub)
                .map(|(k, _)| *k)
                .collect()
        } else {
            vec![n]
        };
        keys.iter()
            .filter_map(|k| ids.unacked.remove(k))
            .inspect(return_credit)
            .collect()
    }

    /// Takes every unacked delivery (the session ends).
    pub fn take_all(&self) -> Vec<Unacked> {
        let all = std::mem::take(&mut self.lock().unacked);
        all.into_values().inspect(return_credit).collect()
    }
}

fn return_credit(u: &Unacked) {
    let _ = u
        .credit
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// A SUBSCRIBE as queues see it.
#[derive(Debug)]
pub struct StompSubscription {
    /// Broker-unique consumer id.
    pub consumer_id: u64,
    /// The client's subscription `id`.
    pub id: String,
    pub ack: AckMode,
    deliveries: Arc<SessionDeliveries>,
    /// `prefetch-count`, 0 = unlimited.
    limit: u32,
    in_flight: Arc<AtomicU32>,
    cancelled: AtomicBool,
}

impl StompSubscription {
    pub fn new(
        consumer_id: u64,
        id: String,
        ack: AckMode,
        deliveries: Arc<SessionDeliveries>,
        limit: u32,
    ) -> Arc<Self> {
        Arc::new(StompSubscription {
            consumer_id,
            id,
            ack,
            deliveries,
            limit,
            in_flight: Arc::new(AtomicU32::new(0)),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Whether the queue was deleted under this subscription.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

impl ConsumerSink for StompSubscription {
    fn try_reserve(&self, needs_ack: bool) -> bool {
        let d = &self.deliveries;
        if d.closed.load(Ordering::Acquire) || !d.outbox.has_room() {
            return false;
        }
        if !needs_ack {
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.limit == 0 || n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn deliver(&self, queue: &Arc<Queue>, d: Delivery) {
        let deliveries = &self.deliveries;
        let message = &d.message;
        let mut ids = deliveries.lock();
        let n = ids.next;
        ids.next += 1;
        if self.ack != AckMode::Auto {
            ids.unacked.insert(
                n,
                Unacked {
                    subscription: self.consumer_id,
                    queue: queue.clone(),
                    message_id: d.id,
                    cumulative: self.ack == AckMode::Client,
                    credit: self.in_flight.clone(),
                },
            );
        }
        let message_id = format!("T_{}@@{}@@{n}", self.id, deliveries.session);
        let mut headers: Vec<(String, String)> = Vec::with_capacity(8);
        headers.push(("subscription".into(), self.id.clone()));
        headers.push((
            "destination".into(),
            destination_of(&message.exchange, &message.routing_key),
        ));
        headers.push(("message-id".into(), message_id.clone()));
        headers.push(("redelivered".into(), d.redelivered.to_string()));
        if deliveries.version == switchboard_stomp::Version::V1_2 && self.ack != AckMode::Auto {
            headers.push(("ack".into(), message_id));
        }
        message_headers(message, &mut headers);
        deliveries.outbox.push(|out| {
            encode_parts(
                out,
                deliveries.version,
                Command::Message,
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &message.body,
            )
        });
        drop(ids);
    }

    /// The queue cancelled the subscription (it was deleted, or its quorum queue's lead
    /// moved): the client is told with an ERROR naming the subscription, as RabbitMQ's STOMP
    /// adapter tells it, and the connection stays open (the client may subscribe again).
    /// The ERROR is ours to send: STOMP has no frame for a subscription the server ended.
    fn cancelled(&self, queue: &Queue, _consumer_tag: &str) {
        if self.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(queue = %queue.name, subscription = %self.id, "STOMP subscription cancelled by its queue");
        let deliveries = &self.deliveries;
        // A `/temp-queue/` reply subscription is the broker's own, made again on next use.
        if deliveries.closed.load(Ordering::Acquire) || self.id.starts_with("/temp-queue/") {
            return;
        }
        let body = format!(
            "The server has cancelled subscription {} to queue '{}'.\nNo more messages will be delivered for it.\n",
            self.id, queue.name
        );
        let headers = [
            ("message", "Server cancelled subscription"),
            ("subscription", self.id.as_str()),
            ("content-type", "text/plain"),
        ];
        deliveries.outbox.push(|out| {
            encode_parts(
                out,
                deliveries.version,
                Command::Error,
                headers,
                body.as_bytes(),
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_parse() {
        assert_eq!(
            SessionDeliveries::parse_ack_id("T_sub@@session-x@@42"),
            Some(42)
        );
        assert_eq!(SessionDeliveries::parse_ack_id("T_a@@b@@c@@7"), Some(7));
        assert_eq!(SessionDeliveries::parse_ack_id("42"), None);
        assert_eq!(SessionDeliveries::parse_ack_id("x@@y"), None);
    }
}
