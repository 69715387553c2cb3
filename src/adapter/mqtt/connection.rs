//! One established MQTT connection: the steady-state loop (reads, keep-alive, takeover,
//! memory alarm, shutdown) and the packet handlers for publishes and acknowledgements
//! (subscriptions are in `subscribe`, the end of the connection in `release`).

use super::connect::Attached;
use super::convert::filter_to_pattern;
use super::delivery::Link;
use super::error::Violation;
use super::publish::{acknowledge_publish, InboundMessage, Publisher};
use super::registry::{lock, MqttState};
use super::session::is_shared;
use crate::adapter::outbox::Outbox;
use crate::core::broker::ConnectionEntry;
use crate::core::{Broker, Consumer, Queue, VHost};
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchboard_amqp::FieldTable;
use switchboard_mqtt::*;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Read buffer growth step while data flows. An idle connection holds only a small buffer
/// (`IDLE_READ_RESERVE`): a packet larger than that makes the decoder reserve its announced
/// size once its fixed header is in.
const READ_RESERVE: usize = 2048;
const IDLE_READ_RESERVE: usize = 256;

/// How a connection ended, which decides the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// DISCONNECT from the client; v5 reason 0x04 asks for the will anyway.
    Normal { publish_will: bool },
    /// Socket loss, keep-alive timeout, protocol error, takeover, shutdown.
    Abnormal,
}

pub struct Connection {
    pub broker: Arc<Broker>,
    pub state: Arc<MqttState>,
    pub entry: Arc<ConnectionEntry>,
    pub outbox: Arc<Outbox>,
    pub protocol: Protocol,
    pub publisher: Publisher,
    pub attached: Attached,
    pub link: Arc<Link>,
    pub consumer_id: u64,
    pub will: Option<Will>,
    /// 1.5 × the keep alive in force, if any.
    pub keep_alive: Option<Duration>,
    pub inbound_aliases: HashMap<u16, String>,
    /// v5 Request Problem Information (reason strings beyond CONNACK/DISCONNECT).
    pub problem_info: bool,
    /// Published since the last memory-alarm check.
    pub published: bool,
    /// Shared subscription groups joined, by subscription key: the group's queue and this
    /// connection's consumer on it.
    pub shared: HashMap<String, (Arc<Queue>, u64)>,
}

impl Connection {
    pub(super) fn vhost(&self) -> &Arc<VHost> {
        &self.attached.vhost
    }

    pub(super) fn queue(&self) -> &Arc<Queue> {
        &self.attached.queue
    }

    pub(super) fn send(&self, packet: &Packet) {
        let protocol = self.protocol;
        self.outbox.push(|out| {
            if let Err(e) = encode(packet, protocol, out) {
                tracing::warn!(error = %e, "cannot encode {}", packet.name());
            }
        });
    }

    /// Starts delivering: resends what was in flight, sends what waited, then consumes.
    pub fn start_delivery(&mut self) {
        let (shared, filters) = {
            let mut s = lock(&self.attached.session);
            self.link.resend_in_flight(&mut s);
            self.link.pump(&mut s);
            let filters: Vec<String> = s.subscriptions.keys().cloned().collect();
            (s.shared_keys(), filters)
        };
        // A resumed session's bindings exist already unless its queue was deleted meanwhile
        // (by an AMQP client, say); binding again is idempotent.
        for filter in filters.iter().filter(|f| !is_shared(f)) {
            let _ = self.vhost().bind_queue(
                &self.queue().name,
                &self.broker.config.mqtt.exchange,
                &filter_to_pattern(filter),
                &FieldTable::new(),
                self.entry.id,
            );
        }
        for key in shared {
            self.join_shared(&key);
        }
        let consumer = Consumer {
            id: self.consumer_id,
            tag: format!("mqtt-{}", self.attached.key.client_id),
            no_ack: true,
            exclusive: false,
            owner: self.entry.id,
            sink: self.link.clone(),
        };
        if let Err(e) = self.queue().add_consumer(consumer) {
            tracing::warn!(error = %e, "MQTT session queue cannot be consumed");
        }
    }

    pub async fn run<R: AsyncRead + Unpin>(&mut self, rd: &mut R, mut buf: BytesMut) -> Ending {
        let outbox = self.outbox.clone();
        let kick = self.attached.kick.clone();
        let link = self.link.clone();
        let mut shutdown = self.broker.shutdown_signal();
        let mut alarm = self.broker.memory.subscribe();
        let mut blocked = false;
        let mut last_read = Instant::now();
        // Packets that arrived with the CONNECT.
        if let Some(end) = self.process(&mut buf) {
            return end;
        }
        loop {
            let keep_alive_deadline = self
                .keep_alive
                .map_or(last_read + Duration::from_secs(86_400 * 365), |k| {
                    last_read + k
                });
            if buf.capacity() - buf.len() < 64 {
                buf.reserve(if buf.is_empty() {
                    IDLE_READ_RESERVE
                } else {
                    READ_RESERVE
                });
            }
            tokio::select! {
                read = rd.read_buf(&mut buf), if !blocked => {
                    match read {
                        Ok(0) | Err(_) => return Ending::Abnormal,
                        Ok(_) => {}
                    }
                    last_read = Instant::now();
                    if let Some(end) = self.process(&mut buf) {
                        return end;
                    }
                    if buf.is_empty() && buf.capacity() > IDLE_READ_RESERVE {
                        buf = BytesMut::new();
                    }
                    // As for AMQP: only a connection that publishes during the alarm stops
                    // being read, so consumers can still ack and drain.
                    if std::mem::take(&mut self.published) && self.broker.memory.alarm() {
                        blocked = true;
                    }
                }
                _ = kick.notified() => {
                    self.disconnect(&Violation::new(reason::SESSION_TAKEN_OVER, "another connection took the session over"));
                    return Ending::Abnormal;
                }
                _ = link.queue_deleted.notified() => {
                    self.disconnect(&Violation::new(reason::IMPLEMENTATION_SPECIFIC_ERROR, "the session's queue was deleted"));
                    return Ending::Abnormal;
                }
                _ = tokio::time::sleep_until(keep_alive_deadline), if self.keep_alive.is_some() && !blocked => {
                    tracing::info!(peer = %self.entry.peer, "MQTT keep alive expired");
                    self.disconnect(&Violation::new(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout"));
                    return Ending::Abnormal;
                }
                _ = outbox.drained.notified() => self.dispatch_all(),
                _ = outbox.writer_done.notified() => return Ending::Abnormal,
                changed = alarm.changed() => {
                    if changed.is_ok() && !*alarm.borrow_and_update() {
                        blocked = false;
                        last_read = Instant::now();
                    }
                }
                _ = shutdown.changed() => {
                    self.disconnect(&Violation::new(reason::SERVER_SHUTTING_DOWN, "broker shutting down"));
                    return Ending::Abnormal;
                }
            }
        }
    }

    /// Handles every complete packet in `buf`; `Some` when the connection is to end.
    fn process(&mut self, buf: &mut BytesMut) -> Option<Ending> {
        let max = self.broker.config.mqtt.max_packet_size as usize;
        loop {
            let result = match decode(buf, self.protocol, max) {
                Ok(None) => return None,
                Ok(Some(packet)) => self.handle(packet),
                Err(e) => Err(Violation::from(e)),
            };
            match result {
                Ok(None) => {}
                Ok(Some(end)) => return Some(end),
                Err(v) => {
                    tracing::info!(peer = %self.entry.peer, error = %v, "closing MQTT connection");
                    self.disconnect(&v);
                    return Some(Ending::Abnormal);
                }
            }
        }
    }

    /// Tells a v5 client why it is being disconnected (v3 has no way to say).
    fn disconnect(&self, v: &Violation) {
        if self.protocol.is_v5() {
            let mut d = Disconnect {
                reason: v.reason,
                properties: Properties::default(),
            };
            if self.problem_info {
                d.properties.reason_string = Some(v.text.clone());
            }
            self.send(&Packet::Disconnect(d));
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<Option<Ending>, Violation> {
        match packet {
            Packet::Publish(p) => self.on_publish(p)?,
            Packet::PubAck(a) => {
                let mut s = lock(&self.attached.session);
                if s.in_flight
                    .get(&a.packet_id)
                    .is_some_and(|f| f.message.qos == QoS::AtLeastOnce)
                {
                    s.in_flight.remove(&a.packet_id);
                }
                drop(s);
                self.after_completion();
            }
            Packet::PubRec(a) => {
                let mut s = lock(&self.attached.session);
                let known = s
                    .in_flight
                    .get(&a.packet_id)
                    .is_some_and(|f| f.message.qos == QoS::ExactlyOnce);
                if known && a.reason >= 0x80 {
                    // The client refused it: the flow ends here (v5 4.3.3).
                    s.in_flight.remove(&a.packet_id);
                    drop(s);
                    self.after_completion();
                } else {
                    let mut rel = PubResponse::new(a.packet_id);
                    if let Some(f) = s.in_flight.get_mut(&a.packet_id) {
                        f.released = true;
                    } else {
                        rel.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                    }
                    drop(s);
                    self.send(&Packet::PubRel(rel));
                }
            }
            Packet::PubRel(a) => {
                let found = lock(&self.attached.session)
                    .inbound_qos2
                    .remove(&a.packet_id);
                let mut comp = PubResponse::new(a.packet_id);
                if !found {
                    comp.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(&Packet::PubComp(comp));
            }
            Packet::PubComp(a) => {
                let mut s = lock(&self.attached.session);
                if s.in_flight.get(&a.packet_id).is_some_and(|f| f.released) {
                    s.in_flight.remove(&a.packet_id);
                }
                drop(s);
                self.after_completion();
            }
            Packet::Subscribe(s) => self.on_subscribe(s)?,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    let mut s = lock(&self.attached.session);
                    if s.expiry_interval == 0 && e > 0 {
                        return Err(Violation::protocol(
                            "session expiry set on DISCONNECT after 0 on CONNECT",
                        ));
                    }
                    s.expiry_interval = e.min(self.broker.config.mqtt.max_session_expiry_interval);
                }
                // Only a normal disconnection (0x00) discards the will (v5 3.1.2.5); 0x04 and
                // error reasons from the client still send it.
                return Ok(Some(Ending::Normal {
                    publish_will: d.reason != reason::NORMAL_DISCONNECTION,
                }));
            }
            Packet::Connect(_) => return Err(Violation::protocol("second CONNECT")),
            Packet::Auth(_) => {
                return Err(Violation::protocol(
                    "AUTH without an authentication method in CONNECT",
                ))
            }
            other => {
                return Err(Violation::protocol(format!(
                    "{} is not sent by clients",
                    other.name()
                )))
            }
        }
        Ok(None)
    }

    /// After an outbound flow completed: fill the freed slot, and let the queue deliver again
    /// once nothing waits.
    fn after_completion(&self) {
        let drained = {
            let mut s = lock(&self.attached.session);
            self.link.pump(&mut s)
        };
        if drained {
            self.dispatch_all();
        }
    }

    /// Lets every queue this connection consumes from deliver again.
    fn dispatch_all(&self) {
        self.queue().dispatch();
        for (q, _) in self.shared.values() {
            q.dispatch();
        }
    }

    pub(super) fn check_topic_limits(&self, topic: &str) -> bool {
        let cfg = &self.broker.config.mqtt;
        topic.len() <= cfg.max_topic_length && topic.split('/').count() <= cfg.max_topic_levels
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<(), Violation> {
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Violation::protocol(
                "a PUBLISH from a client carries a subscription identifier",
            ));
        }
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > self.broker.config.mqtt.topic_alias_maximum {
                return Err(Violation::new(
                    reason::TOPIC_ALIAS_INVALID,
                    format!("topic alias {alias} out of range"),
                ));
            }
            if p.topic.is_empty() {
                match self.inbound_aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(Violation::protocol(format!("unknown topic alias {alias}")))
                    }
                }
            } else {
                self.inbound_aliases.insert(alias, p.topic.clone());
            }
        } else if p.topic.is_empty() {
            return Err(Violation::protocol("empty topic without a topic alias"));
        }
        if !self.check_topic_limits(&p.topic) {
            return Err(Violation::new(
                reason::TOPIC_NAME_INVALID,
                "topic over the length or level limit",
            ));
        }
        let id = p.packet_id.unwrap_or(0);
        if self.protocol.is_v5()
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            if p.qos == QoS::AtMostOnce {
                return Err(Violation::new(
                    reason::PAYLOAD_FORMAT_INVALID,
                    "payload is not UTF-8",
                ));
            }
            let mut ack = PubResponse::new(id);
            ack.reason = reason::PAYLOAD_FORMAT_INVALID;
            self.send(&if p.qos == QoS::AtLeastOnce {
                Packet::PubAck(ack)
            } else {
                Packet::PubRec(ack)
            });
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce {
            let s = lock(&self.attached.session);
            if s.inbound_qos2.contains(&id) {
                // A resend of a message routed already: acknowledge again, route nothing.
                drop(s);
                acknowledge_publish(&self.outbox, self.protocol, p.qos, id, 1);
                return Ok(());
            }
            if s.inbound_qos2.len() >= usize::from(self.broker.config.mqtt.receive_maximum) {
                return Err(Violation::new(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "too many QoS 2 publishes awaiting PUBREL",
                ));
            }
        }
        let qos = p.qos;
        let routed = self.publisher.route(InboundMessage {
            topic: p.topic,
            qos,
            retain: p.retain,
            properties: p.properties,
            payload: p.payload,
        });
        self.published = true;
        if qos == QoS::ExactlyOnce {
            lock(&self.attached.session).inbound_qos2.insert(id);
        }
        acknowledge_publish(&self.outbox, self.protocol, qos, id, routed);
        Ok(())
    }
}
