//! One established MQTT connection: the session the connection driver (`crate::net::driver`)
//! runs (packets in, keep-alive, takeover, deleted queue, acknowledgements after the log) and
//! the packet handlers for publishes and acknowledgements
//! (subscriptions are in `subscribe`, the end of the connection in `release`).

use super::connect::Attached;
use super::convert::filter_to_pattern;
use super::delivery::Link;
use super::error::Violation;
use super::publish::{publish_ack, InboundMessage, Publisher};
use super::registry::{lock, MqttState};
use super::session::is_shared;
use crate::adapter::outbox::Outbox;
use crate::core::broker::ConnectionEntry;
use crate::core::queue::{all_decided, Ticket};
use crate::core::{Broker, Consumer, Queue, VHost};
use crate::net::driver::{Liveness, Session as DriverSession, Step, Stop};
use bytes::BytesMut;
use std::collections::btree_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use switchboard_amqp::FieldTable;
use switchboard_mqtt::*;
use tokio::time::Instant;

/// Read buffer growth step while data flows. An idle connection holds only a small buffer
/// (`IDLE_READ_RESERVE`): a packet larger than that makes the decoder reserve its announced
/// size once its fixed header is in.
pub(super) const READ_RESERVE: usize = 2048;
pub(super) const IDLE_READ_RESERVE: usize = 64;

/// How a connection ended, which decides the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// DISCONNECT from the client; v5 reason 0x04 asks for the will anyway.
    Normal { publish_will: bool },
    /// Socket loss, keep-alive timeout, protocol error, takeover, shutdown.
    Abnormal,
}

pub(super) struct Connection {
    pub broker: Arc<Broker>,
    pub state: Arc<MqttState>,
    pub entry: Arc<ConnectionEntry>,
    pub outbox: Arc<Outbox>,
    pub protocol: Protocol,
    pub publisher: Publisher,
    pub attached: Attached,
    pub link: Arc<Link>,
    pub consumer_id: u64,
    /// Boxed: most clients set none, and the connection lives as long as the client does.
    pub will: Option<Box<Will>>,
    pub inbound_aliases: HashMap<u16, String>,
    /// v5 Request Problem Information (reason strings beyond CONNACK/DISCONNECT).
    pub problem_info: bool,
    /// Published since the last memory-alarm check.
    pub published: bool,
    /// Shared subscription groups joined, by subscription key: the group's queue and this
    /// connection's consumer on it.
    pub shared: HashMap<String, (Arc<Queue>, u64)>,
    /// Acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK) waiting for the
    /// message log to be durable up to their LSN, in order.
    /// Each with the quorum-queue commits it waits for as well.
    pub held: VecDeque<(u64, Vec<Ticket>, Packet)>,
    /// Outbound QoS 2 PUBLISH packets (see [`super::session::Session::unrecorded_publishes`])
    /// waiting for the session record that holds their packet ids, as the acknowledgements
    /// wait in `held`. Filled while the record is written, which borrows the connection
    /// shared.
    pub held_publishes: std::sync::Mutex<VecDeque<(u64, Vec<Ticket>, BytesMut)>>,
    /// Publish permission verdicts (see [`super::permit`]).
    pub publish_verdicts: crate::core::access::PublishVerdicts,
    /// The keep alive as a deadline.
    pub liveness: Liveness,
    /// Not read because of the memory alarm.
    pub blocked: bool,
    /// Publisher flow control: not read while a queue it publishes to is too far behind.
    pub flow: super::flow::Flow,
    /// How the connection ended (socket loss unless a packet or the broker says otherwise).
    pub ending: Ending,
    /// A SUBSCRIBE or UNSUBSCRIBE handled a slice at a time (see `subscribe`).
    pub unfinished: Option<Box<super::subscribe::Unfinished>>,
    /// The publish acknowledgements (PUBACK, PUBREC) of the read being handled, encoded here
    /// and written to the outbox once the read is handled, or before any other packet this
    /// connection sends, so that packets keep their order: a saturating QoS 1 publisher's
    /// acknowledgements cost one outbox push per read instead of one each.
    pub acks: BytesMut,
    /// Acknowledgements freed in-flight slots: the queues are asked to deliver once the read
    /// is handled. Asking per PUBACK made a saturated QoS 1 subscriber take the queue's lock
    /// and walk its consumers for every single message.
    pub redispatch: bool,
    /// Clustered: commits the session's records to the cluster, and says when that failed.
    pub cluster_state: Option<super::state_writer::StateWriter>,
}

/// What writing the session's record gives an acknowledgement to wait for: the store's LSN,
/// and clustered, the commit of the cluster's record. The default waits for nothing.
#[derive(Default)]
pub(super) struct Saved {
    pub lsn: u64,
    pub tickets: Vec<Ticket>,
}

impl Connection {
    pub(super) fn vhost(&self) -> &Arc<VHost> {
        &self.attached.vhost
    }

    pub(super) fn queue(&self) -> &Arc<Queue> {
        &self.attached.queue
    }

    /// The highest LSN the message log has made durable (everything, without a store).
    fn durable_lsn(&self) -> u64 {
        self.broker
            .store
            .as_ref()
            .map_or(u64::MAX, |s| s.log.synced())
    }

    /// Sends `packet` once the log records it acknowledges (up to `lsn`) are durable, and
    /// after every acknowledgement held before it.
    pub(super) fn send_when_synced(&mut self, lsn: u64, packet: Packet) {
        self.send_when_committed(lsn, Vec::new(), packet);
    }

    /// [`Self::send_when_synced`] that also waits for quorum queues to commit (`tickets`).
    fn send_when_committed(&mut self, lsn: u64, tickets: Vec<Ticket>, packet: Packet) {
        if self.may_send_now(lsn, &tickets) {
            self.send(&packet);
        } else {
            self.held.push_back((lsn, tickets, packet));
        }
    }

    /// Whether a packet acknowledging records up to `lsn` (and quorum-queue `tickets`) may go
    /// now: they are durable, the tickets decided, and no acknowledgement is held before it.
    fn may_send_now(&self, lsn: u64, tickets: &[Ticket]) -> bool {
        self.held.is_empty() && self.durable(lsn, tickets)
    }

    /// Whether records up to `lsn` are durable, `tickets` decided and the cluster's record
    /// of the session confirmed.
    fn durable(&self, lsn: u64, tickets: &[Ticket]) -> bool {
        lsn <= self.durable_lsn() && all_decided(tickets) && self.cluster_state_confirmed().is_ok()
    }

    fn held_publishes(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Vec<Ticket>, BytesMut)>> {
        lock(&self.held_publishes)
    }

    /// An error once the cluster did not confirm the session's record: the connection
    /// closes with every acknowledgement it holds unsent (the client sends again, to a node
    /// that has the cluster's state).
    fn cluster_state_confirmed(&self) -> Result<(), Violation> {
        match &self.cluster_state {
            Some(w) if w.failed() => Err(Violation::new(
                reason::SERVER_BUSY,
                "the cluster did not confirm the session's state",
            )),
            _ => Ok(()),
        }
    }

    /// Acknowledges a QoS 1/2 publish once the records it wrote (persistent messages in
    /// durable queues, a retained message, the session's QoS 2 packet id) are durable.
    fn ack_publish(
        &mut self,
        qos: QoS,
        packet_id: u16,
        code: u8,
        lsn: u64,
        tickets: Vec<Ticket>,
    ) -> Result<(), Violation> {
        let Some(packet) = publish_ack(qos, packet_id, code) else {
            return Ok(());
        };
        self.entry.stats.confirmed(1);
        if !self.may_send_now(lsn, &tickets) {
            self.held.push_back((lsn, tickets, packet));
            return Ok(());
        }
        let packet = self.as_decided(&tickets, packet)?;
        if !put_plain_ack(&packet, self.protocol, &mut self.acks) {
            if let Err(e) = encode(&packet, self.protocol, &mut self.acks) {
                tracing::warn!(error = %e, "cannot encode {}", packet.name());
            }
        }
        Ok(())
    }

    /// `packet`, acknowledging a publish whose quorum-queue `tickets` are decided, as it may
    /// go: unchanged, or, when a quorum queue refused the message as full, with v5's reason
    /// 0x97 Quota exceeded (a PUBREC with it ends the QoS 2 flow: no PUBREL comes for the
    /// id). 3.1.1 has no negative acknowledgement: the connection closes instead, as for a
    /// full classic queue.
    fn as_decided(&mut self, tickets: &[Ticket], packet: Packet) -> Result<Packet, Violation> {
        if !tickets.iter().any(Ticket::refused) {
            return Ok(packet);
        }
        if !self.protocol.is_v5() {
            return Err(Violation::new(
                reason::QUOTA_EXCEEDED,
                "a quorum queue refused the message (full)",
            ));
        }
        Ok(match packet {
            Packet::PubAck(mut a) => {
                a.reason = reason::QUOTA_EXCEEDED;
                Packet::PubAck(a)
            }
            Packet::PubRec(mut a) => {
                lock(&self.attached.session)
                    .inbound_qos2
                    .remove(&a.packet_id);
                // Not waited for: a crash before it is written only makes a resend of the
                // id count as a duplicate, which the client does not send after 0x97.
                let _ = self.save_session();
                a.reason = reason::QUOTA_EXCEEDED;
                Packet::PubRec(a)
            }
            other => other,
        })
    }

    /// Writes the acknowledgements gathered in [`Connection::acks`] to the outbox.
    fn flush_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let acks = &mut self.acks;
        self.outbox.push(|out| out.extend_from_slice(acks));
        acks.clear();
    }

    /// Sends the held acknowledgements whose records are now durable (and quorum-queue
    /// commits decided); a refusal 3.1.1 cannot say closes the connection.
    fn flush_held(&mut self) -> Result<(), Violation> {
        self.cluster_state_confirmed()?;
        let synced = self.durable_lsn();
        while self
            .held
            .front()
            .is_some_and(|(lsn, tickets, _)| *lsn <= synced && all_decided(tickets))
        {
            if let Some((_, tickets, packet)) = self.held.pop_front() {
                let packet = self.as_decided(&tickets, packet)?;
                self.send(&packet);
            }
        }
        let mut publishes = self.held_publishes();
        while publishes
            .front()
            .is_some_and(|(lsn, tickets, _)| *lsn <= synced && all_decided(tickets))
        {
            if let Some((_, _, bytes)) = publishes.pop_front() {
                self.outbox.push(|out| out.extend_from_slice(&bytes));
            }
        }
        Ok(())
    }

    /// Writes the session's record: to this node's store, and clustered, for a persistent
    /// session, to the cluster's (see [`super::state_writer`]).
    pub(super) fn save_session(&self) -> Saved {
        let mut s = lock(&self.attached.session);
        // Under the lock the record is written with: this record holds their packet ids.
        let publishes = std::mem::take(&mut s.unrecorded_publishes);
        let lsn = super::persist::write_session(&self.broker, &mut s);
        let tickets = match &self.cluster_state {
            Some(w) if s.expiry_interval > 0 => vec![w.write(super::replica::session_record(&s))],
            _ => Vec::new(),
        };
        drop(s);
        if !publishes.is_empty() {
            let mut held = self.held_publishes();
            if held.is_empty() && self.durable(lsn, &tickets) {
                self.outbox.push(|out| out.extend_from_slice(&publishes));
            } else {
                held.push_back((lsn, tickets.clone(), publishes));
            }
        }
        Saved { lsn, tickets }
    }

    /// Settles the session queue's deliveries the session is done with (or dropped), and
    /// writes its record if deliveries changed it. Called from the connection task, outside
    /// every queue lock.
    pub(super) fn settle_dropped(&self) {
        let ids = {
            let mut s = lock(&self.attached.session);
            // Publishes held for a record go with the next one, whoever wrote the last.
            if s.record_stale || !s.unrecorded_publishes.is_empty() {
                drop(s);
                self.save_session();
                s = lock(&self.attached.session);
            }
            std::mem::take(&mut s.to_settle)
        };
        if !ids.is_empty() {
            self.queue().settle(&ids);
        }
    }

    /// Settles one delivery of the session queue, if the message came from it.
    fn settle(&self, delivery: Option<u64>) {
        if let Some(id) = delivery {
            self.queue().settle(&[id]);
        }
    }

    pub(super) fn send(&mut self, packet: &Packet) {
        let protocol = self.protocol;
        let acks = &mut self.acks;
        self.outbox.push(|out| {
            // The acknowledgements gathered before it go first.
            out.extend_from_slice(acks);
            if let Err(e) = encode(packet, protocol, out) {
                tracing::warn!(error = %e, "cannot encode {}", packet.name());
            }
        });
        self.acks.clear();
    }

    /// Starts delivering: resends what was in flight, sends what waited, then consumes.
    pub(super) fn start_delivery(&mut self) {
        let (shared, filters) = {
            let mut s = lock(&self.attached.session);
            self.link.resend_in_flight(&mut s);
            self.link.pump(&mut s);
            // A resumed session's bindings exist already unless its queue was deleted
            // meanwhile (by an AMQP client, say) and declared again by this CONNECT; copying
            // 100,000 filters on every resume would cost as much as binding them.
            let filters: Vec<String> = if self.attached.queue_created {
                s.subscriptions.keys().cloned().collect()
            } else {
                Vec::new()
            };
            (s.shared_keys(), filters)
        };
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
        // A persistent session's messages leave the queue when their flow completes (see
        // `delivery`).
        let consumer = Consumer {
            id: self.consumer_id,
            tag: format!("mqtt-{}", self.attached.key.client_id),
            no_ack: !self.link.settles,
            exclusive: false,
            owner: self.entry.id,
            sink: self.link.clone(),
        };
        match self.queue().add_consumer(consumer) {
            Ok(effects) => self.vhost().apply(self.queue(), effects),
            Err(e) => tracing::warn!(error = %e, "MQTT session queue cannot be consumed"),
        }
    }

    /// Handles every complete packet in `buf` (stopping at a publish that holds the
    /// connection back: the rest waits in `buf`); `Some` when the connection is to end.
    fn process(&mut self, buf: &mut BytesMut, now: Instant) -> Option<Ending> {
        let max = self.broker.config.mqtt.max_packet_size as usize;
        loop {
            // A SUBSCRIBE or UNSUBSCRIBE under way goes on first, a slice per call: the
            // packets behind it wait their turn; a held publisher is not read further.
            if !self.continue_unfinished() || self.flow.is_held() {
                return None;
            }
            let result = match decode(buf, self.protocol, max) {
                Ok(None) => return None,
                Ok(Some(packet)) => self.handle(packet, now),
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

    /// Tells a v5 client why it is being disconnected (v3 has no way to say but the
    /// WebSocket's close code).
    fn disconnect(&mut self, v: &Violation) {
        crate::net::websocket::closing_because(ws_cause(v.reason));
        if self.protocol.is_v5() {
            let mut d = Disconnect {
                reason: v.reason,
                properties: Properties::default(),
            };
            if self.problem_info && v.tell {
                d.properties.reason_string = Some(v.text.clone());
            }
            self.send(&Packet::Disconnect(d));
        }
    }

    fn handle(&mut self, packet: Packet, now: Instant) -> Result<Option<Ending>, Violation> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, now)?,
            Packet::PubAck(a) => {
                // One lock for the completion and the freed slot's refill; the message is
                // freed outside it.
                let (done, drained) = {
                    let mut s = lock(&self.attached.session);
                    let done = match s.in_flight.entry(a.packet_id) {
                        Entry::Occupied(f) if f.get().message.qos == QoS::AtLeastOnce => {
                            Some(f.remove())
                        }
                        _ => None,
                    };
                    (done, self.link.pump(&mut s))
                };
                self.redispatch |= drained;
                self.settle(done.and_then(|f| f.message.delivery));
            }
            Packet::PubRec(a) => {
                let mut s = lock(&self.attached.session);
                let flight = match s.in_flight.get(&a.packet_id) {
                    Some(f) if f.message.qos == QoS::ExactlyOnce => {
                        s.in_flight.remove(&a.packet_id)
                    }
                    _ => None,
                };
                if let (Some(f), true) = (&flight, a.reason >= 0x80) {
                    // The client refused it: the flow ends here (v5 4.3.3).
                    let delivery = f.message.delivery;
                    drop(s);
                    self.settle(delivery);
                    self.save_session();
                    self.after_completion();
                } else if let Some(f) = flight {
                    // The client has the message: it leaves the queue, and only the packet id
                    // (in the session's record) is left until PUBCOMP. PUBREL waits for that
                    // record, so a restart resends PUBREL rather than the message.
                    s.released.insert(a.packet_id);
                    drop(s);
                    self.settle(f.message.delivery);
                    let saved = self.save_session();
                    self.send_when_committed(
                        saved.lsn,
                        saved.tickets,
                        Packet::PubRel(PubResponse::new(a.packet_id)),
                    );
                } else {
                    let known = s.released.contains(&a.packet_id);
                    drop(s);
                    let mut rel = PubResponse::new(a.packet_id);
                    if !known {
                        rel.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                    }
                    self.send_when_synced(0, Packet::PubRel(rel));
                }
            }
            Packet::PubRel(a) => {
                let found = lock(&self.attached.session)
                    .inbound_qos2
                    .remove(&a.packet_id);
                let mut comp = PubResponse::new(a.packet_id);
                let saved = if found {
                    // PUBCOMP waits for the id to be gone from the record: after a crash (or
                    // on another node) a reused id must not be taken for a duplicate.
                    self.save_session()
                } else {
                    comp.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                    Saved::default()
                };
                self.send_when_committed(saved.lsn, saved.tickets, Packet::PubComp(comp));
            }
            Packet::PubComp(a) => {
                let done = lock(&self.attached.session).released.remove(&a.packet_id);
                if done {
                    self.save_session();
                }
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
    /// once nothing waits (once for every acknowledgement in the same read: see
    /// [`Connection::redispatch`]).
    fn after_completion(&mut self) {
        let drained = {
            let mut s = lock(&self.attached.session);
            self.link.pump(&mut s)
        };
        self.redispatch |= drained;
    }

    /// Lets every queue this connection consumes from deliver again.
    fn dispatch_all(&self) {
        self.vhost().dispatch(self.queue());
        for (q, _) in self.shared.values() {
            self.vhost().dispatch(q);
        }
    }

    pub(super) fn check_topic_limits(&self, topic: &str) -> bool {
        let cfg = &self.broker.config;
        // A level is a word of the topic exchange's key: its word limit applies too.
        let max_levels = cfg.mqtt.max_topic_levels.min(cfg.server.topic_max_words);
        // Levels are the separators plus one, counted by a byte scan ('/' is ASCII): a
        // `split` with a char pattern cost about 400 instructions per publish.
        topic.len() <= cfg.mqtt.max_topic_length
            && topic.bytes().filter(|&b| b == b'/').count() < max_levels
    }

    fn on_publish(&mut self, mut p: Publish, now: Instant) -> Result<(), Violation> {
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Violation::protocol(
                "a PUBLISH from a client carries a subscription identifier",
            ));
        }
        if let Some(alias) = p
            .properties
            .present_mut()
            .and_then(|v| v.topic_alias.take())
        {
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
        if let Err(refused) = self.permit_publish(&p.topic) {
            // v5 answers a refused QoS 1/2 publish with 0x87 (or as mqtt.refusal_reason
            // says); v3 has no way to say so but closing, and neither has a QoS 0 publish.
            let how = self.broker.config.mqtt.refusal_reason;
            if !self.protocol.is_v5() || p.qos == QoS::AtMostOnce {
                return Err(Violation::not_authorized(how, refused.0));
            }
            tracing::info!(peer = %self.entry.peer, "{refused}");
            self.ack_publish(p.qos, id, super::error::not_authorized(how), 0, Vec::new())?;
            return Ok(());
        }
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
                self.ack_publish(p.qos, id, reason::SUCCESS, 0, Vec::new())?;
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
        self.entry.stats.published();
        let routed = self.publisher.route(InboundMessage {
            topic: p.topic,
            qos,
            retain: p.retain,
            dup: p.dup,
            properties: p.properties,
            payload: p.payload,
        });
        self.published = true;
        if let Some(full) = &routed.retained_full {
            // v5 refuses a QoS 1/2 publish in its acknowledgement; v3 and QoS 0 have no way to
            // say so but closing (as Mosquitto closes a v3 client whose retained publish it
            // does not accept), which the client sees, rather than a silent drop.
            if !self.protocol.is_v5() || qos == QoS::AtMostOnce {
                return Err(Violation::new(full.reason(), full.to_string()));
            }
        }
        if routed.refused && !self.protocol.is_v5() && qos != QoS::AtMostOnce {
            // 3.1.1 has no negative acknowledgement, and a PUBACK would say a message no queue
            // took is safe (a full `reject-publish` queue, or a queue whose home node did not
            // answer): closing makes the client send it again on its next connection.
            return Err(Violation::new(
                reason::QUOTA_EXCEEDED,
                "a queue refused the message (full, or its node did not answer)",
            ));
        }
        let mut lsn = routed.lsn;
        let code = routed.reason();
        let mut tickets = routed.tickets;
        // A v5 PUBREC with an error code ends the QoS 2 flow (4.3.3): no PUBREL will come.
        let flow_goes_on = !self.protocol.is_v5() || code < 0x80;
        if qos == QoS::ExactlyOnce && flow_goes_on {
            lock(&self.attached.session).inbound_qos2.insert(id);
            // PUBREC waits for the record holding the id, so a resend after a crash (or to
            // another node) is still recognised as a duplicate.
            let saved = self.save_session();
            lsn = lsn.max(saved.lsn);
            tickets.extend(saved.tickets);
        }
        self.ack_publish(qos, id, code, lsn, tickets)?;
        if let (Some(queue), true) = (&routed.congested, qos != QoS::AtMostOnce) {
            self.hold_back_for(queue, now);
        }
        Ok(())
    }

    /// Stops reading this connection until `queue`'s backlog is low again (see
    /// [`super::flow`]), unless that could wait for ever.
    fn hold_back_for(&mut self, queue: &Arc<Queue>, now: Instant) {
        if !self.flow.may_hold() {
            return;
        }
        let own = || std::iter::once(self.queue()).chain(self.shared.values().map(|(q, _)| q));
        // Its own acknowledgements drain a queue it consumes.
        if own().any(|q| Arc::ptr_eq(q, queue)) {
            return;
        }
        let (low, waiter) = self.flow.waiter();
        if !queue.hold_publisher(low, waiter) {
            return;
        }
        // A publisher waiting for one of its queues waits for it to read. Checked after
        // registering: of two connections registering with each other's queues at once, the
        // later one to look sees the other's registration.
        if own().any(|q| q.holds_publishers()) {
            return;
        }
        self.flow.held(now);
    }
}

impl DriverSession for Connection {
    fn received(&mut self, buf: &mut BytesMut, now: Instant) -> Step {
        self.liveness.heard(now);
        self.flow.read_handled();
        let ended = self.process(buf, now);
        self.flush_acks();
        if std::mem::take(&mut self.redispatch) {
            self.dispatch_all();
        }
        match ended {
            None => Step::Continue,
            Some(end) => {
                self.ending = end;
                Step::Close
            }
        }
    }

    fn held_bytes(&self) -> usize {
        self.unfinished_bytes()
    }

    fn unfinished(&self) -> bool {
        self.unfinished.is_some()
    }

    fn take_published(&mut self) -> bool {
        // As for AMQP: only a connection that publishes during the alarm stops being read, so
        // consumers can still ack and drain.
        std::mem::take(&mut self.published)
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.liveness.deadline(), self.flow.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn flow_held(&mut self, now: Instant) -> bool {
        self.flow.still_held(now)
    }

    fn timer(&mut self, now: Instant) -> Step {
        // Not read meanwhile, so not heard either: the keep alive waits, as under the alarm.
        let unread = self.blocked || self.flow.is_held();
        if !self.liveness.poll(now, unread).peer_silent {
            return Step::Continue;
        }
        tracing::info!(peer = %self.entry.peer, "MQTT keep alive expired");
        self.disconnect(&Violation::new(
            reason::KEEP_ALIVE_TIMEOUT,
            "keep alive timeout",
        ));
        Step::Close
    }

    fn awaits_log(&self) -> bool {
        !self.held.is_empty() || !self.held_publishes().is_empty()
    }

    fn log_synced(&mut self) -> Step {
        match self.flush_held() {
            Ok(()) => Step::Continue,
            Err(v) => {
                tracing::info!(peer = %self.entry.peer, "{}", v);
                self.disconnect(&v);
                Step::Close
            }
        }
    }

    fn drained(&mut self) {
        self.dispatch_all();
    }

    /// Frames to write, a takeover or a deleted queue: all wake the outbox.
    fn woken(&mut self) -> Step {
        if self.attached.handover.is_kicked() {
            self.disconnect(&Violation::new(
                reason::SESSION_TAKEN_OVER,
                "another connection took the session over",
            ));
            return Step::Close;
        }
        if let Err(v) = self.cluster_state_confirmed() {
            self.disconnect(&v);
            return Step::Close;
        }
        if self.link.queue_was_deleted() {
            self.disconnect(&Violation::new(
                reason::IMPLEMENTATION_SPECIFIC_ERROR,
                "the session's queue was deleted",
            ));
            return Step::Close;
        }
        for key in self.link.take_lost_groups() {
            // Still a member: the group's queue is made again, here, with this member in it.
            if self.shared.remove(&key).is_some() && !self.join_shared(&key) {
                self.disconnect(&Violation::new(
                    reason::IMPLEMENTATION_SPECIFIC_ERROR,
                    "a shared subscription's queue was deleted and could not be made again",
                ));
                return Step::Close;
            }
        }
        self.settle_dropped();
        Step::Continue
    }

    fn alarm_blocked(&mut self, on: bool, now: Instant) {
        self.blocked = on;
        if !on {
            self.liveness.heard(now);
        }
    }

    fn stop(&mut self, why: Stop) -> Step {
        let v = match why {
            Stop::Shutdown => Violation::new(reason::SERVER_SHUTTING_DOWN, "broker shutting down"),
            Stop::Forced(why) => Violation::new(reason::ADMINISTRATIVE_ACTION, why),
        };
        self.disconnect(&v);
        Step::Close
    }
}

/// Writes a successful PUBACK or PUBREC without properties, the four bytes every version
/// sends for it (v5's short form), and says whether it did: the general encoder cost about
/// 550 instructions for each acknowledgement of a saturating QoS 1 publisher.
fn put_plain_ack(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> bool {
    let (first, ack) = match packet {
        Packet::PubAck(a) => (0x40, a),
        Packet::PubRec(a) => (0x50, a),
        _ => return false,
    };
    // v3 acknowledgements carry no reason; a v5 one with reason 0 and no properties omits it.
    if protocol.is_v5()
        && (ack.reason != reason::SUCCESS || ack.properties != Properties::default())
    {
        return false;
    }
    let [hi, lo] = ack.packet_id.to_be_bytes();
    out.extend_from_slice(&[first, 2, hi, lo]);
    true
}

/// The WebSocket close code of a disconnect's reason code.
pub(super) fn ws_cause(code: u8) -> crate::net::websocket::Cause {
    use crate::net::websocket::Cause;
    match code {
        reason::MALFORMED_PACKET
        | reason::PROTOCOL_ERROR
        | reason::UNSUPPORTED_PROTOCOL_VERSION
        | reason::TOPIC_FILTER_INVALID
        | reason::TOPIC_NAME_INVALID
        | reason::PACKET_IDENTIFIER_IN_USE
        | reason::RECEIVE_MAXIMUM_EXCEEDED
        | reason::TOPIC_ALIAS_INVALID
        | reason::PAYLOAD_FORMAT_INVALID
        | reason::RETAIN_NOT_SUPPORTED
        | reason::QOS_NOT_SUPPORTED
        | reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        | reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED
        | reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED => Cause::ProtocolError,
        reason::CLIENT_IDENTIFIER_NOT_VALID
        | reason::BAD_USER_NAME_OR_PASSWORD
        | reason::NOT_AUTHORIZED
        | reason::BAD_AUTHENTICATION_METHOD
        | reason::QUOTA_EXCEEDED
        | reason::ADMINISTRATIVE_ACTION => Cause::Policy,
        reason::PACKET_TOO_LARGE => Cause::TooBig,
        reason::SERVER_SHUTTING_DOWN => Cause::GoingAway,
        reason::UNSPECIFIED_ERROR
        | reason::IMPLEMENTATION_SPECIFIC_ERROR
        | reason::SERVER_UNAVAILABLE
        | reason::SERVER_BUSY => Cause::Internal,
        _ => Cause::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_acks_are_what_the_encoder_writes() {
        for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
            for code in [reason::SUCCESS, reason::NO_MATCHING_SUBSCRIBERS] {
                for ack in [
                    Packet::PubAck(PubResponse {
                        reason: code,
                        ..PubResponse::new(0x1234)
                    }),
                    Packet::PubRec(PubResponse {
                        reason: code,
                        ..PubResponse::new(7)
                    }),
                ] {
                    let mut plain = BytesMut::new();
                    let mut encoded = BytesMut::new();
                    encode(&ack, protocol, &mut encoded).unwrap();
                    if put_plain_ack(&ack, protocol, &mut plain) {
                        assert_eq!(plain, encoded, "{protocol:?} {ack:?}");
                    } else {
                        assert!(protocol.is_v5() && code != reason::SUCCESS);
                    }
                }
            }
        }
    }
}
