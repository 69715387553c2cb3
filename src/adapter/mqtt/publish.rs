//! Inbound publishes: the one place an MQTT publish (or a will) enters the core, and the one
//! place a QoS 1/2 publish is acknowledged to the client (the connection holds that
//! acknowledgement until the records the publish wrote are durable).

use super::convert::{
    arrival_headers, publish_properties_but_headers, topic_to_key, FormMeta, MqttForm,
};
use super::persist;
use super::registry::MqttState;
use super::retained::RetainedFull;
use super::session::OutboundMessage;
use crate::core::message::Protocol;
use crate::core::vhost::LastExchange;
use crate::core::{Broker, Message, Publish, PublishTo, VHost};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use switchboard_mqtt::{reason, Packet, Properties, PubResponse, QoS};

/// Everything needed to publish on behalf of one client; owned, so a delayed will can carry it
/// after the connection is gone.
#[derive(Clone)]
pub(super) struct Publisher {
    pub broker: Arc<Broker>,
    pub state: Arc<MqttState>,
    pub vhost: Arc<VHost>,
    /// Shared with every message it publishes (for No Local and the derived headers).
    pub client_id: Arc<str>,
    pub exchange: LastExchange,
}

/// What routing a publish did.
#[derive(Debug, Clone, Default)]
pub(super) struct Routed {
    /// Queues it reached.
    pub queues: usize,
    /// The LSN of the log records it wrote (0 when none).
    pub lsn: u64,
    /// A full queue refused it (`x-overflow` `reject-publish`), or the retained store did.
    pub refused: bool,
    /// The retained store was full: the message was neither retained nor routed.
    pub retained_full: Option<RetainedFull>,
    /// A queue it reached is over `mqtt.flow_backlog` (see `flow`).
    pub congested: Option<Arc<crate::core::Queue>>,
    /// The quorum-queue commits its acknowledgement waits for as well.
    pub tickets: Vec<crate::core::queue::Ticket>,
}

impl Routed {
    /// The PUBACK/PUBREC reason code (v5; v3 acknowledgements carry none): 0x97 Quota
    /// exceeded when a queue refused it, 0x10 when no queue matched.
    pub(super) fn reason(&self) -> u8 {
        if let Some(full) = &self.retained_full {
            full.reason()
        } else if self.refused {
            reason::QUOTA_EXCEEDED
        } else if self.queues == 0 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        }
    }
}

/// One MQTT application message as received.
#[derive(Debug, Clone)]
pub(super) struct InboundMessage {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    /// The DUP flag (a resend), kept as RabbitMQ's `x-mqtt-dup` header.
    pub dup: bool,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publisher {
    /// Routes a message to the configured exchange with the topic as routing key and, when
    /// `retain` is set, makes it the topic's retained message. A retained message the retained
    /// store has no room for is not routed either: the publish is refused as a whole, so a
    /// client that retries does not deliver it twice.
    pub(super) fn route(&mut self, m: InboundMessage) -> Routed {
        let now = self.broker.timer.now_system();
        let mut retained_lsn = 0;
        if m.retain {
            let mut properties = m.properties.clone();
            if let Some(v) = properties.present_mut() {
                v.topic_alias = None;
                v.subscription_identifiers.clear();
            }
            let expires_at = properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s)));
            let retained = OutboundMessage::new(
                m.topic.clone(),
                m.payload.clone(),
                m.qos,
                true,
                properties,
                expires_at,
            );
            // The acknowledgement waits for the record (a clear is a delete); clustered, for
            // the cluster's commit, which stores it on every node.
            let stored = if self.broker.cluster.get().is_some() {
                super::replica::retain(&self.broker, &self.state, &self.vhost.name, retained, now)
            } else {
                self.state
                    .retained()
                    .set(&self.vhost.name, retained, now, |r| {
                        persist::write_retained(&self.broker, &self.vhost.name, r)
                    })
            };
            match stored {
                Ok(lsn) => retained_lsn = lsn,
                Err(full) => {
                    tracing::warn!(vhost = %self.vhost.name, topic = %m.topic, client = %self.client_id, "{full}; publish refused");
                    return Routed {
                        refused: true,
                        retained_full: Some(full),
                        ..Default::default()
                    };
                }
            }
        }
        let exchange_name = &self.broker.config.mqtt.exchange;
        let Some(exchange) = self.exchange.get(&self.vhost, exchange_name) else {
            tracing::warn!(vhost = %self.vhost.name, exchange = %exchange_name, "MQTT exchange missing; message dropped");
            return Routed {
                lsn: retained_lsn,
                ..Default::default()
            };
        };
        let properties = publish_properties_but_headers(m.qos, &m.properties, now);
        let routing_key = topic_to_key(&m.topic);
        // MQTT subscribers read the topic and flags from here, not back from the routing key
        // and headers; the headers are made from it only for a consumer (or a store, a
        // headers exchange...) that reads them.
        let arrived = MqttForm::arrived(
            m.properties,
            FormMeta {
                topic: m.topic,
                qos: m.qos,
                retain: m.retain,
                dup: m.dup,
                publisher: Some(self.client_id.clone()),
            },
        );
        let charge = self
            .broker
            .memory
            .charge(Message::charge_size(m.payload.len()));
        let message = Arc::new(
            Message::with_properties(
                exchange_name.clone(),
                routing_key,
                properties,
                None,
                m.payload,
                charge,
            )
            .with_arrival(Protocol::Mqtt, arrived)
            .with_derived_headers(arrival_headers),
        );
        let publish = Publish {
            to: PublishTo::Exchange(&exchange),
            message: &message,
            holdable: m.qos != QoS::AtMostOnce,
        };
        let outcome = self.vhost.publish(publish, &mut Vec::new());
        Routed {
            // A delayed message is accepted now (and acknowledged once stored) as routed; it
            // is routed when due.
            queues: if outcome.held { 1 } else { outcome.queues },
            lsn: outcome.lsn.max(retained_lsn),
            refused: outcome.refused(),
            retained_full: None,
            congested: outcome.congested,
            tickets: outcome.tickets,
        }
    }
}

/// The acknowledgement of a routed QoS 1 (PUBACK) or QoS 2 (PUBREC) publish; none for QoS 0.
/// v5 says 0x10 when no subscriber matched.
pub(super) fn publish_ack(qos: QoS, packet_id: u16, code: u8) -> Option<Packet> {
    let mut ack = PubResponse::new(packet_id);
    ack.reason = code;
    match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Packet::PubAck(ack)),
        QoS::ExactlyOnce => Some(Packet::PubRec(ack)),
    }
}
