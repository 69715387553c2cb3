//! Delivery to MQTT clients: the consumer sinks a session's queue hands messages to, and the
//! sending side of a session (packet ids, in-flight limit, topic aliases, size limits).
//!
//! Queues call `deliver` under their own lock, from whatever task published; the sinks then
//! take the session lock. The connection task never calls into a queue while holding the
//! session lock, so the order is always queue → session.
//!
//! A persistent session's own queue is consumed with acknowledgements: a message stays in the
//! queue (and in the message log) until its flow completes (PUBACK, or PUBREC for QoS 2) or the
//! session drops it, and the session settles it then. Messages waiting for an offline client
//! are simply left in the queue. A session that ends with its connection, and shared groups'
//! queues, are consumed with `no_ack`: a delivery belongs to the session (or member) it was
//! handed to, and nothing outlives the connection for it.

use super::convert::{mqtt_form, outbound_from_form};
use super::registry::lock;
use super::session::{shared_key, InFlight, OutboundMessage, Session};
use crate::adapter::outbox::Outbox;
use crate::core::timer::Timer;
use crate::core::{ConsumerSink, Delivery, Queue};
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_mqtt::{
    encode, encode_publish, EncodeError, Packet, Protocol, PubResponse, PublishOut, QoS,
};

/// What a client accepts, from its CONNECT.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientLimits {
    pub protocol: Protocol,
    /// The client's Maximum Packet Size (v5), else unlimited.
    pub max_packet_size: usize,
    /// QoS 1/2 messages in flight at most (client Receive Maximum capped by config).
    pub in_flight: usize,
    /// Topic aliases the client accepts (v5 Topic Alias Maximum).
    pub topic_alias_max: u16,
    /// Messages kept waiting for a slot or for the client to return.
    pub pending: usize,
}

/// The live side of a session: delivers to a connected client.
pub(super) struct Link {
    pub session: Arc<Mutex<Session>>,
    pub outbox: Arc<Outbox>,
    pub client_id: String,
    pub limits: ClientLimits,
    /// The session queue is consumed with acknowledgements (a persistent session).
    pub settles: bool,
    /// The broker's clock, for message expiry.
    timer: Arc<Timer>,
    /// Outbound topic aliases by topic (one connection's; they do not outlive it).
    aliases: Mutex<HashMap<String, u16>>,
    closed: AtomicBool,
    /// A queue this link consumes from was deleted (by an AMQP client, say): the connection
    /// ends, and the client's reconnect rebuilds the queue and its bindings.
    queue_deleted: AtomicBool,
    /// Shared groups whose queue was deleted under this member (its last other member left
    /// as this one joined, on another node, say): the connection makes them again.
    lost_groups: Mutex<Vec<String>>,
}

impl Link {
    pub(super) fn new(
        session: Arc<Mutex<Session>>,
        outbox: Arc<Outbox>,
        client_id: String,
        limits: ClientLimits,
        settles: bool,
        timer: Arc<Timer>,
    ) -> Arc<Self> {
        Arc::new(Link {
            session,
            outbox,
            client_id,
            limits,
            settles,
            timer,
            aliases: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            queue_deleted: AtomicBool::new(false),
            lost_groups: Mutex::new(Vec::new()),
        })
    }

    /// Whether a queue this link consumes from was deleted (the connection then ends).
    pub(super) fn queue_was_deleted(&self) -> bool {
        self.queue_deleted.load(Ordering::Acquire)
    }

    /// The shared groups whose queue was deleted since the last call.
    pub(super) fn take_lost_groups(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.lost_groups))
    }

    /// No more deliveries through this link.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Sends `m` now if a slot is free, else queues it behind the others.
    pub(super) fn offer(&self, s: &mut Session, m: OutboundMessage) {
        if m.qos == QoS::AtMostOnce {
            self.write_publish(&m, None, false);
            // Sent is done for QoS 0.
            s.drop_message(&m);
            return;
        }
        if s.pending.is_empty() && s.in_flight_count() < self.limits.in_flight {
            self.send_in_flight(s, m);
        } else {
            s.push_pending(m, self.limits.pending);
        }
    }

    fn send_in_flight(&self, s: &mut Session, m: OutboundMessage) {
        // A QoS 2 message in flight before a restart keeps its packet id (sent as a DUP).
        let resumed = m.delivery.and_then(|d| s.resumed_ids.remove(&d));
        let (id, dup) = match resumed {
            Some(id) => (id, true),
            None => (s.next_packet_id(), false),
        };
        // A session queue's QoS 2 message under a new id waits for the record holding it;
        // the connection task, woken, writes that record.
        let sent = if m.qos == QoS::ExactlyOnce && m.delivery.is_some() && !dup {
            let held = self.write_publish_to(&m, Some(id), dup, Some(&mut s.unrecorded_publishes));
            self.outbox.wake();
            held
        } else {
            self.write_publish(&m, Some(id), dup)
        };
        if sent {
            if m.qos == QoS::ExactlyOnce && m.delivery.is_some() {
                s.record_stale = true;
            }
            s.in_flight.insert(id, InFlight::new(m));
        } else {
            s.drop_message(&m);
        }
    }

    /// Moves pending messages into free in-flight slots. True when nothing is left pending,
    /// so the session's queue may deliver again.
    pub(super) fn pump(&self, s: &mut Session) -> bool {
        while s.in_flight_count() < self.limits.in_flight {
            let Some(m) = s.pending.pop_front() else {
                break;
            };
            if m.qos == QoS::AtMostOnce {
                self.write_publish(&m, None, false);
                s.drop_message(&m);
            } else {
                self.send_in_flight(s, m);
            }
        }
        s.pending.is_empty()
    }

    /// Lets the connection task know there are deliveries to settle.
    pub(super) fn wake_if_settling(&self, s: &Session) {
        if !s.to_settle.is_empty() || s.record_stale || !s.unrecorded_publishes.is_empty() {
            self.outbox.wake();
        }
    }

    /// Resends everything in flight after a reconnect: PUBLISH with DUP, or PUBREL for QoS 2
    /// messages already PUBREC'd (spec 4.4). A message that expired meanwhile, or no longer
    /// fits the client's Maximum Packet Size, is dropped rather than left holding a slot.
    pub(super) fn resend_in_flight(&self, s: &mut Session) {
        // Encoded for the connection before (its topic aliases), and in flight: sent again
        // below.
        s.unrecorded_publishes.clear();
        // In packet id order, as they were first sent.
        let mut ids: Vec<u16> = s.in_flight.keys().chain(&s.released).copied().collect();
        ids.sort_unstable();
        for id in ids {
            if s.released.contains(&id) {
                let p = Packet::PubRel(PubResponse::new(id));
                self.outbox.push(|out| {
                    let _ = encode(&p, self.limits.protocol, out);
                });
                continue;
            }
            let sent = s
                .in_flight
                .get(&id)
                .is_some_and(|f| self.write_publish(&f.message, Some(id), true));
            if !sent {
                if let Some(f) = s.in_flight.remove(&id) {
                    s.record_stale |= f.message.qos == QoS::ExactlyOnce;
                    s.drop_message(&f.message);
                }
            }
        }
    }

    /// Writes one PUBLISH. False (and nothing written) when the message has expired or would
    /// exceed the client's Maximum Packet Size: the spec says to discard it as if delivered.
    fn write_publish(&self, m: &OutboundMessage, packet_id: Option<u16>, dup: bool) -> bool {
        self.write_publish_to(m, packet_id, dup, None)
    }

    /// [`Self::write_publish`] into `held` rather than the outbox, when given.
    fn write_publish_to(
        &self,
        m: &OutboundMessage,
        packet_id: Option<u16>,
        dup: bool,
        held: Option<&mut BytesMut>,
    ) -> bool {
        // The clock is read only for a message that can expire.
        let expiry = match m.expires_at {
            Some(_) => {
                let now = self.timer.now_system();
                if m.is_expired(now) {
                    return false;
                }
                m.remaining_expiry(now)
            }
            None => None,
        };
        let v5 = self.limits.protocol.is_v5();
        let mut topic = m.topic();
        let properties = m.properties();
        // v5 only, and only when something per hop changes them: the properties as kept.
        let mut adjusted = None;
        if v5 {
            let mut alias = None;
            if self.limits.topic_alias_max > 0 && !dup {
                let mut aliases = lock(&self.aliases);
                if let Some(&a) = aliases.get(topic) {
                    alias = Some(a);
                    topic = "";
                } else if aliases.len() < usize::from(self.limits.topic_alias_max) {
                    let a = aliases.len() as u16 + 1;
                    aliases.insert(topic.to_owned(), a);
                    alias = Some(a);
                }
            }
            if expiry.is_some() || alias.is_some() || !m.identifiers.is_empty() {
                let mut p = properties.clone();
                p.message_expiry_interval = expiry;
                p.topic_alias = alias;
                p.subscription_identifiers.clone_from(&m.identifiers);
                adjusted = Some(p);
            }
        }
        let publish = PublishOut {
            dup,
            qos: m.qos,
            retain: m.retain,
            topic,
            packet_id,
            properties: adjusted.as_ref().unwrap_or(properties),
            payload: &m.payload,
        };
        let (protocol, max) = (self.limits.protocol, self.limits.max_packet_size);
        let written = match held {
            Some(out) => encode_publish(&publish, protocol, max, out),
            None => {
                let mut written = Ok(0);
                self.outbox.push(|out| {
                    written = encode_publish(&publish, protocol, max, out);
                });
                written
            }
        };
        match written {
            Ok(_) => true,
            Err(EncodeError::PacketTooLarge(n)) => {
                tracing::debug!(client = %self.client_id, size = n, "message over the client's maximum packet size dropped");
                false
            }
            Err(e) => {
                tracing::debug!(client = %self.client_id, error = %e, "message cannot be encoded for MQTT, dropped");
                false
            }
        }
    }
}

/// Builds the MQTT message for a queue delivery to `s`, or `None` when no subscription of
/// the session matches it under MQTT's rules.
fn for_session(
    s: &Session,
    client_id: &str,
    queue: &Queue,
    d: &Delivery,
    timer: &Timer,
) -> Option<OutboundMessage> {
    let msg = &d.message;
    let form = mqtt_form(msg);
    let meta = form.meta();
    let topic = &meta.topic;
    let matched = match shared_key(&queue.name) {
        Some(key) => s.match_shared(&key, topic)?,
        None => {
            let from_self = meta.publisher.as_deref() == Some(client_id);
            s.match_topic(topic, from_self)?
        }
    };
    let mut m = outbound_from_form(msg, form, || timer.now_system());
    m.qos = m.qos.min(matched.qos);
    m.retain = m.retain && matched.retain_as_published;
    m.identifiers = matched.identifiers;
    if m.qos != QoS::AtMostOnce {
        // The session keeps it (in flight or waiting) after the queue lets go of the message.
        m.charge = msg.charge_copy(m.footprint());
    }
    Some(m)
}

impl ConsumerSink for Link {
    fn try_reserve(&self, _needs_ack: bool) -> bool {
        if self.closed.load(Ordering::Acquire) || !self.outbox.has_room() {
            return false;
        }
        let s = lock(&self.session);
        s.pending.is_empty() && s.in_flight_count() < self.limits.in_flight
    }

    fn deliver(&self, queue: &Arc<Queue>, delivery: Delivery) {
        let mut s = lock(&self.session);
        // Only a persistent session's own queue waits for a settle.
        let settles = (self.settles && shared_key(&queue.name).is_none()).then_some(delivery.id);
        match for_session(&s, &self.client_id, queue, &delivery, &self.timer) {
            Some(mut m) => {
                m.delivery = settles;
                self.offer(&mut s, m);
            }
            None => s.to_settle.extend(settles),
        }
        self.wake_if_settling(&s);
    }

    fn cancelled(&self, queue: &Queue, _consumer_tag: &str) {
        tracing::info!(client = %self.client_id, queue = %queue.name, "MQTT queue deleted under a connected client");
        match shared_key(&queue.name) {
            Some(key) => lock(&self.lost_groups).push(key),
            None => self.queue_deleted.store(true, Ordering::Release),
        }
        self.outbox.wake();
    }
}
