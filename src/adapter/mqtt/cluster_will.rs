//! Clustered, the will of a connected client is a record of the cluster's
//! ([`MqttWillRecord`]) for as long as its connection lasts. The node holding the connection
//! publishes the will itself when the connection ends, as a single node does, and removes the
//! record. A node that goes down takes its connections with it and publishes nothing, so the
//! metadata leader that finds it down makes each of its clients' wills due at itself (with
//! the client ids, [`crate::cluster::adapter::adopt_sessions_of`]) and publishes them, after
//! their Will Delay Interval, unless the client id is claimed again meanwhile. A due will
//! is removed from the cluster before it is published, so that it is published at most once
//! however often its record is applied.

use super::persist;
use super::publish::{InboundMessage, Publisher};
use super::registry::{MqttState, SessionKey};
use crate::cluster::adapter::{MqttWillRecord, MQTT_WILL, NO_CONNECTION};
use crate::cluster::definitions::{self, Change};
use crate::cluster::Command;
use crate::core::Broker;
use crate::net::driver::clock;
use base64::Engine;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use switchboard_mqtt::Will;

fn record_key(vhost: &str, client_id: &str) -> String {
    definitions::key(MQTT_WILL, &[vhost, client_id])
}

/// The seconds a will waits once its connection is gone: its Will Delay Interval, at most
/// the session's expiry (the session ending publishes it, MQTT 3.1.3.2).
pub(super) fn delay_of(will: &Will, expiry: u32) -> u32 {
    will.properties.will_delay_interval.unwrap_or(0).min(expiry)
}

/// The message a will publishes. The Will Delay Interval is the broker's, not the message's:
/// a PUBLISH may not carry it (Paho's client drops the connection on one that does).
pub(super) fn will_message(will: Will) -> InboundMessage {
    let mut properties = will.properties;
    if let Some(v) = properties.present_mut() {
        v.will_delay_interval = None;
    }
    InboundMessage {
        topic: will.topic,
        qos: will.qos,
        retain: will.retain,
        dup: false,
        properties,
        payload: will.payload,
    }
}

/// A will's message as its record keeps it: an encoded v5 PUBLISH (which keeps every
/// property exactly), in base64.
fn encoded(m: &InboundMessage) -> Option<String> {
    let mut out = BytesMut::new();
    persist::encode_stored_publish(
        m.topic.clone(),
        m.qos,
        m.retain,
        m.properties.clone(),
        m.payload.clone(),
        &mut out,
    )?;
    Some(base64::engine::general_purpose::STANDARD.encode(out))
}

fn decoded(message: &str) -> Option<InboundMessage> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(message)
        .ok()?;
    let p = persist::decode_stored_publish(&bytes)?;
    Some(InboundMessage {
        topic: p.topic,
        qos: p.qos,
        retain: p.retain,
        dup: false,
        properties: p.properties,
        payload: p.payload,
    })
}

/// The change a claim of `key`'s client id by connection `conn` of this node commits with
/// it: the connection's will as the cluster's, or the removal of one an earlier connection
/// left; none when there is nothing to change (or the broker is not clustered).
pub(super) fn claimed(
    broker: &Broker,
    key: &SessionKey,
    conn: u64,
    will: Option<&Will>,
    expiry: u32,
) -> Option<Change> {
    let cluster = broker.cluster.get()?;
    let record = will.and_then(|w| {
        Some(MqttWillRecord {
            vhost: key.vhost.clone(),
            client_id: key.client_id.clone(),
            node: cluster.node().name,
            conn,
            delay: delay_of(w, expiry),
            message: encoded(&will_message(w.clone()))?,
        })
    });
    match record {
        Some(r) => Some(Change::PutMqttWill(r)),
        None => cluster
            .get(&record_key(&key.vhost, &key.client_id))
            .is_some()
            .then(|| Change::ClearMqttWill {
                vhost: key.vhost.clone(),
                client_id: key.client_id.clone(),
            }),
    }
}

/// Removes the will of connection `conn` of this node from the cluster once the connection
/// has ended: this node published it, or the client's DISCONNECT discarded it. Not waited
/// for; guarded, so a will another connection put since stays.
pub(super) fn ended(broker: &Broker, key: &SessionKey, conn: u64) {
    let Some(cluster) = broker.cluster.get() else {
        return;
    };
    let at = record_key(&key.vhost, &key.client_id);
    let Some(held) = cluster.get(&at) else {
        return;
    };
    let ours = serde_json::from_value::<MqttWillRecord>(held.clone())
        .is_ok_and(|r| r.node == cluster.node().name && r.conn == conn);
    if !ours {
        return;
    }
    let cluster = cluster.clone();
    tokio::spawn(async move {
        if let Err(e) = cluster.propose(removal(at, held)).await {
            tracing::debug!(error = %e, "an ended connection's will stays a record of the cluster");
        }
    });
}

/// Removes the record at `key` while it is still `expected`.
fn removal(key: String, expected: serde_json::Value) -> Command {
    Command::Guarded {
        key: key.clone(),
        expected: Some(expected),
        then: vec![Command::Delete { key }],
    }
}

/// Publishes a will the cluster made due at this node (see the module's comment), after its
/// delay. Called for each time the record is applied.
pub(super) fn due(broker: &Arc<Broker>, state: &Arc<MqttState>, r: &MqttWillRecord) {
    let Some(cluster) = broker.cluster.get() else {
        return;
    };
    if r.conn != NO_CONNECTION || r.node != cluster.node().name {
        return;
    }
    let Some(message) = decoded(&r.message) else {
        tracing::warn!(client = %r.client_id, "a will of the cluster's does not decode; dropped");
        return;
    };
    let Some(vhost) = broker.vhost(&r.vhost) else {
        return;
    };
    let mut publisher = Publisher {
        broker: broker.clone(),
        state: state.clone(),
        vhost,
        client_id: r.client_id.as_str().into(),
        exchange: Default::default(),
    };
    let (cluster, record) = (cluster.clone(), r.clone());
    let timer = broker.timer.clone();
    let at = clock::now(&timer) + Duration::from_secs(u64::from(r.delay));
    tokio::spawn(async move {
        clock::sleep_until(&timer, at).await;
        let key = record_key(&record.vhost, &record.client_id);
        let Ok(expected) = serde_json::to_value(&record) else {
            return;
        };
        // Claimed again meanwhile (a new connection's will, or none, is there instead).
        if cluster.get(&key).as_ref() != Some(&expected) {
            return;
        }
        match cluster.propose(removal(key, expected)).await {
            // Only the removal that took the record publishes: once, however often it was due.
            Ok(r) if r.guard_held => {
                tracing::info!(client = %record.client_id, "the will of a client whose node is down published");
                publisher.route(message);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(client = %record.client_id, error = %e, "a will of a client whose node is down not published: the cluster did not confirm its removal")
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_mqtt::{Properties, QoS};

    #[test]
    fn a_will_keeps_its_properties_in_its_record_but_not_its_delay() {
        let mut properties = Properties::default();
        properties.will_delay_interval = Some(30);
        properties.content_type = Some("text/plain".into());
        properties.user_properties = vec![("k".into(), "v".into())];
        let will = Will {
            topic: "devices/7/status".into(),
            payload: bytes::Bytes::from_static(b"offline"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties,
        };
        assert_eq!(delay_of(&will, 10), 10);
        assert_eq!(delay_of(&will, 60), 30);
        let message = will_message(will);
        let back = decoded(&encoded(&message).unwrap()).unwrap();
        assert_eq!(back.topic, "devices/7/status");
        assert_eq!(&back.payload[..], b"offline");
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.properties, message.properties);
        assert_eq!(back.properties.will_delay_interval, None);
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.properties.user_properties.len(), 1);
        assert!(decoded("not base64!").is_none());
    }
}
