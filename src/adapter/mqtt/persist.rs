//! MQTT state in the message log: each persistent session, each of its subscriptions and each
//! retained message is a keyed record (`kind::MQTT_SESSION`, `kind::MQTT_SUBSCRIPTION`,
//! `kind::RETAINED`), written when it changes, with the same group commit as messages (a
//! SUBSCRIBE or UNSUBSCRIBE writes one record per filter it names, not the whole session); the acknowledgement that depends on a change (SUBACK, PUBREC, PUBCOMP,
//! the PUBACK of a retained publish) waits for its LSN. A persistent session's messages are in
//! its durable queue, not in its record.
//!
//! At start the records are read back and each session is set up as disconnected: its queue
//! and bindings are durable definitions already, and it expires on schedule, counted from the
//! disconnect time it recorded. A data directory written by an older release holds JSON
//! snapshots under `<data_dir>/mqtt/` instead: they are read once, written as records (their
//! waiting messages as persistent messages of the session queues), and removed once all of that
//! is durable.

use super::connect::{queue_name, session_queue_spec};
use super::convert::{
    filter_to_pattern, publish_properties, topic_to_key, FormMeta, MqttForm, PublishFlags,
};
use super::registry::{MqttState, SessionKey, SessionSlot};
use super::session::{is_shared, OutboundMessage, Session, SubscriptionEntry};
use crate::cluster::adapter::MqttQos2State;
use crate::core::message::Protocol as Origin;
use crate::core::{self, Broker, Message, PublishTo, VHost};
use crate::store::{compose_key, kind, split_key, Store};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_amqp::FieldTable;
use switchboard_mqtt::{
    decode, encode, Packet, Properties, Protocol, Publish, QoS, SubscriptionOptions,
};

/// A persistent session as its record keeps it (the key holds the vhost and client id).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct SessionRecord {
    expiry_interval: u32,
    /// Seconds since the epoch when the client went away; None while connected.
    disconnected_at: Option<u64>,
    /// Only in records of releases that kept the subscriptions in the session's record; they
    /// are now records of their own (`kind::MQTT_SUBSCRIPTION`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subscriptions: Vec<SubscriptionRecord>,
    #[serde(flatten)]
    qos2: MqttQos2State,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SubscriptionRecord {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    identifier: Option<u32>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn session_key(vhost: &str, client_id: &str) -> Vec<u8> {
    compose_key(&[vhost.as_bytes(), client_id.as_bytes()])
}

fn subscription_key(vhost: &str, client_id: &str, filter: &str) -> Vec<u8> {
    compose_key(&[vhost.as_bytes(), client_id.as_bytes(), filter.as_bytes()])
}

fn retained_key(vhost: &str, topic: &str) -> Vec<u8> {
    compose_key(&[vhost.as_bytes(), topic.as_bytes()])
}

/// The (vhost, name) a record key holds.
fn key_fields(key: &[u8]) -> Option<(String, String)> {
    match split_key(key)?.as_slice() {
        [v, n] => Some((
            String::from_utf8(v.to_vec()).ok()?,
            String::from_utf8(n.to_vec()).ok()?,
        )),
        _ => None,
    }
}

fn subscription_record(filter: &str, e: &SubscriptionEntry) -> SubscriptionRecord {
    SubscriptionRecord {
        filter: filter.to_owned(),
        qos: e.options.qos as u8,
        no_local: e.options.no_local,
        retain_as_published: e.options.retain_as_published,
        retain_handling: e.options.retain_handling,
        identifier: e.identifier,
    }
}

/// The session's own record, without its subscriptions (records of their own).
fn session_record(s: &Session) -> SessionRecord {
    SessionRecord {
        expiry_interval: s.expiry_interval,
        disconnected_at: s.disconnected_at,
        subscriptions: Vec::new(),
        qos2: qos2_state(s),
    }
}

/// The session's QoS 2 state as its records keep it (here and in the cluster's).
pub(super) fn qos2_state(s: &Session) -> MqttQos2State {
    MqttQos2State {
        inbound_qos2: s.inbound_qos2.iter().copied().collect(),
        in_flight: s
            .in_flight
            .iter()
            .filter(|(_, f)| f.message.qos == QoS::ExactlyOnce)
            .filter_map(|(id, f)| Some((*id, f.message.delivery?)))
            .chain(s.resumed_ids.iter().map(|(d, id)| (*id, *d)))
            .collect(),
        released: s.released.iter().copied().collect(),
    }
}

/// Takes a record's QoS 2 state into a session that is not connected: its messages in
/// flight go out again with their packet ids when the queue delivers them (those the session
/// holds in flight itself, on the node that sent them, are resent from there).
pub(super) fn restore_qos2(s: &mut Session, q: &MqttQos2State) {
    s.inbound_qos2 = q.inbound_qos2.iter().copied().collect();
    s.resumed_ids = q
        .in_flight
        .iter()
        .filter(|(id, _)| !s.in_flight.contains_key(id))
        .map(|&(id, d)| (d, id))
        .collect();
    s.released = q.released.iter().copied().collect();
}

fn subscription_entry(sub: &SubscriptionRecord) -> SubscriptionEntry {
    SubscriptionEntry {
        options: SubscriptionOptions {
            qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
            no_local: sub.no_local,
            retain_as_published: sub.retain_as_published,
            retain_handling: sub.retain_handling,
        },
        identifier: sub.identifier,
    }
}

/// The session a record and its subscription records (`subscriptions`) describe.
fn session(
    vhost: &str,
    client_id: &str,
    r: &SessionRecord,
    subscriptions: &[SubscriptionRecord],
) -> Session {
    let mut s = Session::new(
        client_id.to_owned(),
        vhost.to_owned(),
        queue_name(client_id),
    );
    s.expiry_interval = r.expiry_interval;
    s.disconnected_at = r.disconnected_at;
    for sub in r.subscriptions.iter().chain(subscriptions) {
        s.subscriptions
            .insert(sub.filter.clone(), subscription_entry(sub));
    }
    restore_qos2(&mut s, &r.qos2);
    s.recorded = true;
    s
}

/// Writes the session's record (a persistent session) or removes it with its subscriptions'
/// (a session that ends with its connection); the LSN to wait for before acknowledging what
/// changed, 0 without a store. A session written for the first time gets a record for each
/// subscription it has; after that only [`write_subscriptions`] writes them.
pub fn write_session(broker: &Broker, s: &mut Session) -> u64 {
    s.record_stale = false;
    let Some(store) = &broker.store else {
        return 0;
    };
    let key = session_key(&s.vhost, &s.client_id);
    if s.expiry_interval == 0 {
        if !s.recorded {
            return 0;
        }
        let lsn = forget_subscriptions(store, s);
        s.recorded = false;
        return lsn.max(store.delete(kind::MQTT_SESSION, &key));
    }
    let value = match serde_json::to_vec(&session_record(s)) {
        Ok(value) => value,
        Err(e) => {
            tracing::error!(client = %s.client_id, error = %e, "cannot encode an MQTT session record");
            return 0;
        }
    };
    let mut lsn = 0;
    if !s.recorded {
        for (filter, e) in s.subscriptions.iter() {
            lsn = lsn.max(put_subscription(store, s, filter, e));
        }
    }
    s.recorded = true;
    lsn.max(store.put(kind::MQTT_SESSION, &key, &value))
}

fn put_subscription(store: &Store, s: &Session, filter: &str, e: &SubscriptionEntry) -> u64 {
    let key = subscription_key(&s.vhost, &s.client_id, filter);
    match serde_json::to_vec(&subscription_record(filter, e)) {
        Ok(value) => store.put(kind::MQTT_SUBSCRIPTION, &key, &value),
        Err(e) => {
            tracing::error!(client = %s.client_id, error = %e, "cannot encode an MQTT subscription record");
            0
        }
    }
}

/// Records what a SUBSCRIBE or UNSUBSCRIBE changed: for each of `filters`, its subscription
/// (or its removal) as the session now has it. Costs the filters named, whatever the session
/// holds. A session without a record yet gets its whole record (see [`write_session`]); one
/// that ends with its connection writes nothing. The LSN to wait for, 0 without a store.
pub fn write_subscriptions<'f>(
    broker: &Broker,
    s: &mut Session,
    filters: impl IntoIterator<Item = &'f str>,
) -> u64 {
    let Some(store) = &broker.store else {
        return 0;
    };
    if s.expiry_interval == 0 || !s.recorded {
        return write_session(broker, s);
    }
    let mut lsn = 0;
    for filter in filters {
        lsn = lsn.max(match s.subscriptions.get(filter) {
            Some(e) => put_subscription(store, s, filter, e),
            None => store.delete(
                kind::MQTT_SUBSCRIPTION,
                &subscription_key(&s.vhost, &s.client_id, filter),
            ),
        });
    }
    lsn
}

/// Deletes the subscription records of a recorded session; the LSN to wait for.
fn forget_subscriptions(store: &Store, s: &Session) -> u64 {
    if !s.recorded {
        return 0;
    }
    s.subscriptions.keys().fold(0, |lsn, filter| {
        lsn.max(store.delete(
            kind::MQTT_SUBSCRIPTION,
            &subscription_key(&s.vhost, &s.client_id, filter),
        ))
    })
}

/// Deletes the records of `filters` of a recorded session (a slice of them, see
/// `discard`), whether or not the session still has them; the LSN to wait for.
pub fn forget_subscriptions_named(broker: &Broker, s: &Session, filters: &[String]) -> u64 {
    let Some(store) = &broker.store else {
        return 0;
    };
    if !s.recorded {
        return 0;
    }
    filters.iter().fold(0, |lsn, filter| {
        lsn.max(store.delete(
            kind::MQTT_SUBSCRIPTION,
            &subscription_key(&s.vhost, &s.client_id, filter),
        ))
    })
}

/// Removes a session's record and its subscriptions' (it expired or was discarded); the LSN
/// to wait for.
pub fn forget_session(broker: &Broker, s: &mut Session) -> u64 {
    let Some(store) = &broker.store else {
        return 0;
    };
    forget_subscriptions(store, s).max(forget_session_record(broker, s))
}

/// Removes a session's own record, once its subscriptions' records are gone (deleted a slice
/// at a time by `discard`): from now on nothing is recorded for it. The LSN to wait for.
pub fn forget_session_record(broker: &Broker, s: &mut Session) -> u64 {
    let Some(store) = &broker.store else {
        return 0;
    };
    s.recorded = false;
    store.delete(kind::MQTT_SESSION, &session_key(&s.vhost, &s.client_id))
}

/// A retained message as its record keeps it: when it expires (seconds since the epoch, 0 for
/// never, big-endian u64), then the message as an encoded v5 PUBLISH, which keeps every
/// property exactly.
pub(super) fn retained_value(m: &OutboundMessage) -> Option<Vec<u8>> {
    let mut out = BytesMut::new();
    out.put_u64(m.expires_at.map_or(0, unix));
    encode_stored_publish(
        m.topic().to_owned(),
        m.qos,
        m.retain,
        m.properties().clone(),
        m.payload.clone(),
        &mut out,
    )?;
    Some(out.to_vec())
}

/// A message as a v5 PUBLISH, the form stored records keep it in (every property exactly),
/// appended to `out`.
pub(super) fn encode_stored_publish(
    topic: String,
    qos: QoS,
    retain: bool,
    properties: Properties,
    payload: Bytes,
    out: &mut BytesMut,
) -> Option<()> {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic,
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties,
        payload,
    });
    encode(&packet, Protocol::V5, out).ok()
}

/// The PUBLISH [`encode_stored_publish`] wrote.
pub(super) fn decode_stored_publish(bytes: &[u8]) -> Option<Publish> {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, Protocol::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => Some(p),
        _ => None,
    }
}

fn decode_publish(bytes: &[u8], expires_at: Option<u64>) -> Option<OutboundMessage> {
    let p = decode_stored_publish(bytes)?;
    Some(OutboundMessage::new(
        p.topic,
        p.payload,
        p.qos,
        p.retain,
        p.properties,
        expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
    ))
}

pub(super) fn retained_message(value: &[u8]) -> Option<OutboundMessage> {
    let (at, publish) = value.split_first_chunk::<8>()?;
    let at = u64::from_be_bytes(*at);
    decode_publish(publish, (at != 0).then_some(at))
}

/// Records a topic's retained message, or its removal (an empty payload clears it); the LSN
/// the publish's acknowledgement waits for, 0 without a store.
pub fn write_retained(broker: &Broker, vhost: &str, m: &OutboundMessage) -> u64 {
    let Some(store) = &broker.store else {
        return 0;
    };
    let key = retained_key(vhost, m.topic());
    if m.payload.is_empty() {
        return store.delete(kind::RETAINED, &key);
    }
    retained_value(m).map_or(0, |value| store.put(kind::RETAINED, &key, &value))
}

/// Seconds a disconnected session has left at `now` (seconds since the epoch), counted from
/// when its client went away; None when it never expires. A session recorded while connected
/// (the broker stopped under it) counts from `now`.
fn expiry_left(expiry: u32, disconnected_at: Option<u64>, now: u64) -> Option<u64> {
    if expiry == u32::MAX {
        return None;
    }
    let elapsed = now.saturating_sub(disconnected_at.unwrap_or(now));
    Some(u64::from(expiry).saturating_sub(elapsed))
}

/// Sets up a restored persistent session as disconnected: its durable queue (declared and
/// bound again only if it is missing), then its slot and expiry. A session whose expiry ran
/// out while the broker was down goes now, with its queue and record.
fn install(broker: &Arc<Broker>, state: &Arc<MqttState>, vhost: &Arc<VHost>, mut s: Session) {
    s.subscriptions.charge_to(&broker.memory);
    let key = SessionKey {
        vhost: vhost.name.clone(),
        client_id: s.client_id.clone(),
    };
    let left = expiry_left(
        s.expiry_interval,
        s.disconnected_at,
        unix(broker.timer.now_system()),
    );
    if left == Some(0) {
        if let Some(q) = vhost.queue(&s.queue) {
            vhost.remove_queue(&q);
        }
        forget_session(broker, &mut s);
        tracing::debug!(client = %key.client_id, "MQTT session expired while the broker was down");
        return;
    }
    if vhost.queue(&s.queue).is_none() {
        let spec = session_queue_spec(broker, &s.client_id, true);
        if let Err(e) = vhost.declare_queue(spec, false, 0) {
            tracing::warn!(client = %key.client_id, "cannot restore MQTT session queue: {e}");
            return;
        }
        for filter in s.subscriptions.keys().filter(|f| !is_shared(f)) {
            let _ = vhost.bind_queue(
                &s.queue,
                &broker.config.mqtt.exchange,
                &filter_to_pattern(filter),
                &FieldTable::new(),
                0,
            );
        }
    }
    state.sessions().insert(
        key.clone(),
        SessionSlot {
            session: Arc::new(Mutex::new(s)),
            owner: None,
            generation: 1,
        },
    );
    if let Some(secs) = left {
        super::release::schedule_expiry(broker.clone(), state.clone(), vhost.clone(), key, 1, secs);
    }
}

/// Reads the MQTT records back (and imports the snapshots of an older release): retained
/// messages into their stores, and every persistent session set up as disconnected.
pub async fn restore(broker: &Arc<Broker>, state: &Arc<MqttState>) {
    let Some(store) = broker.store.clone() else {
        return;
    };
    let now = broker.timer.now_system();
    let mut subscriptions: HashMap<(String, String), Vec<SubscriptionRecord>> = HashMap::new();
    for (key, value) in broker.take_recovered(kind::MQTT_SUBSCRIPTION) {
        let fields = split_key(&key).and_then(|f| match f.as_slice() {
            [v, c, _] => Some((
                String::from_utf8(v.to_vec()).ok()?,
                String::from_utf8(c.to_vec()).ok()?,
            )),
            _ => None,
        });
        match (fields, serde_json::from_slice::<SubscriptionRecord>(&value)) {
            (Some(owner), Ok(r)) => subscriptions.entry(owner).or_default().push(r),
            _ => tracing::error!("unreadable MQTT subscription record; ignored"),
        }
    }
    let mut sessions = 0usize;
    for (key, value) in broker.take_recovered(kind::MQTT_SESSION) {
        let (Some((vhost, client_id)), Ok(r)) = (
            key_fields(&key),
            serde_json::from_slice::<SessionRecord>(&value),
        ) else {
            tracing::error!("unreadable MQTT session record; ignored");
            continue;
        };
        let subs = subscriptions
            .remove(&(vhost.clone(), client_id.clone()))
            .unwrap_or_default();
        let Some(vh) = broker.vhost(&vhost) else {
            continue;
        };
        let mut s = session(&vhost, &client_id, &r, &subs);
        if !r.subscriptions.is_empty() {
            // A record of an older release, subscriptions inside: written again the new way.
            s.recorded = false;
            write_session(broker, &mut s);
        }
        install(broker, state, &vh, s);
        sessions += 1;
    }
    // Subscriptions whose session has no record (the broker stopped between the two): gone.
    for ((vhost, client_id), subs) in subscriptions {
        for sub in subs {
            store.delete(
                kind::MQTT_SUBSCRIPTION,
                &subscription_key(&vhost, &client_id, &sub.filter),
            );
        }
    }
    let mut retained = 0usize;
    for (key, value) in broker.take_recovered(kind::RETAINED) {
        let Some((vhost, topic)) = key_fields(&key) else {
            continue;
        };
        match retained_message(&value) {
            Some(m) if !m.is_expired(now) => {
                state.retained().restore(&vhost, m);
                retained += 1;
            }
            Some(_) => {
                store.delete(kind::RETAINED, &key);
            }
            None => tracing::error!(%vhost, %topic, "unreadable retained message record; ignored"),
        }
    }
    tracing::info!(sessions, retained, "MQTT state restored");
    legacy::import(broker, &store, state).await;
}

/// The snapshots of releases before the MQTT state moved into the log.
mod legacy {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    pub(super) struct VHostSnapshot {
        pub sessions: Vec<SessionSnapshot>,
        pub retained: Vec<MessageSnapshot>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(super) struct SessionSnapshot {
        pub client_id: String,
        pub queue: String,
        pub expiry_interval: u32,
        pub subscriptions: Vec<SubscriptionRecord>,
        pub inbound_qos2: Vec<u16>,
        pub in_flight: Vec<(u16, MessageSnapshot, bool)>,
        pub pending: Vec<MessageSnapshot>,
        pub dropped: u64,
    }

    /// A message as an encoded v5 PUBLISH (base64).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(super) struct MessageSnapshot {
        pub publish: String,
        /// Seconds since the epoch when it expires.
        pub expires_at: Option<u64>,
    }

    fn message(m: &MessageSnapshot) -> Option<OutboundMessage> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&m.publish)
            .ok()?;
        decode_publish(&bytes, m.expires_at)
    }

    pub(super) fn dir(broker: &Broker) -> PathBuf {
        broker.config.server.data_dir.join("mqtt")
    }

    pub(super) fn file(dir: &Path, vhost: &str) -> PathBuf {
        let hex: String = vhost.bytes().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("vhost-{hex}.json"))
    }

    /// Puts a message a snapshot held for a session into the session's queue, as the
    /// persistent message it would be had it been routed there; the LSN of its record.
    fn enqueue(broker: &Broker, vhost: &VHost, queue: &str, m: &OutboundMessage) -> u64 {
        let now = broker.timer.now_system();
        let (Some(q), false) = (vhost.queue(queue), m.is_expired(now)) else {
            return 0;
        };
        let mut props = m.properties().clone();
        let expiry = m.remaining_expiry(now);
        if expiry.is_some() || props.message_expiry_interval.is_some() {
            props.message_expiry_interval = expiry;
        }
        let exchange = broker.config.mqtt.exchange.clone();
        let flags = PublishFlags {
            qos: m.qos,
            retain: m.retain,
            dup: false,
        };
        let properties = publish_properties(flags, "", &props, now);
        let charge = broker.memory.charge(Message::charge_size(m.payload.len()));
        let message = Message::new(
            exchange,
            topic_to_key(m.topic()),
            properties,
            None,
            m.payload.clone(),
            charge,
        );
        let meta = FormMeta::of(&message);
        let message = message.with_arrival(
            Origin::Mqtt,
            MqttForm::arrived(m.properties().clone(), meta),
        );
        let message = Arc::new(message);
        let publish = core::Publish {
            to: PublishTo::Queue(&q),
            message: &message,
            holdable: false,
        };
        vhost.publish(publish, &mut Vec::new()).lsn
    }

    /// Imports one vhost's snapshot; the highest LSN it wrote.
    fn import_vhost(
        broker: &Arc<Broker>,
        store: &Store,
        state: &Arc<MqttState>,
        vhost: &Arc<VHost>,
        snap: &VHostSnapshot,
    ) -> u64 {
        let now = broker.timer.now_system();
        let mut lsn = 0;
        for r in &snap.retained {
            if let Some(m) = message(r).filter(|m| !m.is_expired(now)) {
                lsn = lsn.max(write_retained(broker, &vhost.name, &m));
                state.retained().restore(&vhost.name, m);
            }
        }
        for r in &snap.sessions {
            let key = SessionKey {
                vhost: vhost.name.clone(),
                client_id: r.client_id.clone(),
            };
            if state.sessions().contains_key(&key) || r.expiry_interval == 0 {
                continue;
            }
            let mut s = Session::new(
                r.client_id.clone(),
                vhost.name.clone(),
                queue_name(&r.client_id),
            );
            s.expiry_interval = r.expiry_interval;
            // The snapshot did not keep the disconnect time: expiry counts from the upgrade.
            s.disconnected_at = Some(unix(now));
            for sub in &r.subscriptions {
                s.subscriptions
                    .insert(sub.filter.clone(), subscription_entry(sub));
            }
            s.inbound_qos2 = r.inbound_qos2.iter().copied().collect();
            s.released = r
                .in_flight
                .iter()
                .filter(|(_, _, released)| *released)
                .map(|(id, _, _)| *id)
                .collect();
            let waiting: Vec<OutboundMessage> = r
                .in_flight
                .iter()
                .filter(|(_, _, released)| !released)
                .map(|(_, m, _)| m)
                .chain(&r.pending)
                .filter_map(message)
                .collect();
            lsn = lsn.max(write_session(broker, &mut s));
            let queue = s.queue.clone();
            install(broker, state, vhost, s);
            for m in &waiting {
                lsn = lsn.max(enqueue(broker, vhost, &queue, m));
            }
        }
        lsn.max(store.log.last_lsn())
    }

    /// Reads the snapshots of an older release once, writes them as records and removes them
    /// once the records are durable. A snapshot that cannot be read is left in place (and
    /// said so): nothing is deleted that was not imported.
    pub(super) async fn import(broker: &Arc<Broker>, store: &Arc<Store>, state: &Arc<MqttState>) {
        let dir = dir(broker);
        if !dir.is_dir() {
            return;
        }
        let mut imported = Vec::new();
        let mut lsn = 0;
        for vhost in broker.vhosts() {
            let path = file(&dir, &vhost.name);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<VHostSnapshot>(&bytes) {
                Ok(snap) => {
                    lsn = lsn.max(import_vhost(broker, store, state, &vhost, &snap));
                    tracing::info!(vhost = %vhost.name, sessions = snap.sessions.len(), retained = snap.retained.len(), "MQTT snapshot of an older release imported");
                    imported.push(path);
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "unreadable MQTT snapshot of an older release; left in place, not imported")
                }
            }
        }
        store.log.wait_synced(lsn).await;
        for path in imported {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove an imported MQTT snapshot");
            }
        }
        // Only goes when nothing is left in it.
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchboard_mqtt::PropertyValues;

    fn message() -> OutboundMessage {
        OutboundMessage::new(
            "a/b".into(),
            Bytes::from_static(&[0, 255, 1]),
            QoS::AtLeastOnce,
            true,
            PropertyValues {
                content_type: Some("text/plain".into()),
                ..Default::default()
            }
            .into(),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
        )
    }

    #[test]
    fn session_records_round_trip() {
        let mut s = Session::new("dev".into(), "/".into(), queue_name("dev"));
        s.expiry_interval = 60;
        s.disconnected_at = Some(1_700_000_000);
        s.subscriptions.insert(
            "a/+".into(),
            SubscriptionEntry {
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: 2,
                },
                identifier: Some(7),
            },
        );
        s.inbound_qos2.insert(9);
        s.released.insert(4);
        let mut m = message();
        m.qos = QoS::ExactlyOnce;
        m.delivery = Some(77);
        s.in_flight
            .insert(3, super::super::session::InFlight::new(m));
        let text = serde_json::to_vec(&session_record(&s)).expect("json");
        let back: SessionRecord = serde_json::from_slice(&text).expect("parse");
        let subs: Vec<SubscriptionRecord> = s
            .subscriptions
            .iter()
            .map(|(f, e)| subscription_record(f, e))
            .collect();
        assert!(
            back.subscriptions.is_empty(),
            "kept in records of their own"
        );
        let restored = session("/", "dev", &back, &subs);
        assert_eq!(restored.subscriptions, s.subscriptions);
        assert_eq!(restored.inbound_qos2, s.inbound_qos2);
        assert_eq!(restored.released, s.released);
        assert_eq!(restored.disconnected_at, Some(1_700_000_000));
        assert_eq!(restored.expiry_interval, 60);
        // The QoS 2 message in flight is redelivered from the queue under its packet id.
        assert_eq!(restored.resumed_ids.get(&77), Some(&3));
        assert_eq!(restored.queue, "mqtt-subscription-dev");
    }

    #[test]
    fn retained_records_round_trip() {
        let m = message();
        let value = retained_value(&m).expect("encodes");
        assert_eq!(retained_message(&value), Some(m.clone()));
        let mut never = m;
        never.expires_at = None;
        let value = retained_value(&never).expect("encodes");
        assert_eq!(retained_message(&value).and_then(|m| m.expires_at), None);
        assert_eq!(retained_message(&value[..4]), None);
    }

    #[test]
    fn session_expiry_counts_from_the_disconnect_across_restarts() {
        assert_eq!(expiry_left(60, Some(1_000), 1_045), Some(15));
        assert_eq!(expiry_left(60, Some(1_000), 1_060), Some(0));
        assert_eq!(
            expiry_left(60, Some(1_000), 900),
            Some(60),
            "clock went back"
        );
        assert_eq!(expiry_left(60, None, 5_000), Some(60));
        assert_eq!(expiry_left(u32::MAX, Some(0), 5_000), None);
    }

    #[test]
    fn keys_hold_vhost_and_name() {
        let k = session_key("v/1", "client:x");
        assert_eq!(
            key_fields(&k),
            Some(("v/1".to_owned(), "client:x".to_owned()))
        );
        assert_eq!(key_fields(b"junk"), None);
    }
}
