//! MQTT state across restarts: persistent sessions (subscriptions, QoS 2 packet ids, messages in
//! flight and waiting) and retained messages, one snapshot file per vhost under
//! `<data_dir>/mqtt/`.
//!
//! Snapshots are written atomically (temp file, fsync, rename, fsync the directory) every
//! [`INTERVAL`] when the state changed, and at shutdown; at start they are read back and each
//! session is set up as if its client had just disconnected: its queue and bindings collect
//! messages, and it expires on schedule. A graceful restart loses nothing; a crash loses what
//! changed since the last snapshot (at most [`INTERVAL`]) — unlike persistent messages in
//! durable queues, which the message log keeps with every confirm.

use super::delivery::OfflineSink;
use super::registry::{lock, MqttState, SessionKey, SessionSlot};
use super::session::{InFlight, OutboundMessage, Session, SubscriptionEntry};
use crate::core::memory::MemoryCharge;
use crate::core::vhost::QueueSpec;
use crate::core::{Broker, Consumer};
use base64::Engine;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_amqp::FieldTable;
use switchboard_mqtt::{decode, encode, Packet, Protocol, Publish, QoS, SubscriptionOptions};

/// How often changed state is written.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct VHostSnapshot {
    sessions: Vec<SessionRecord>,
    retained: Vec<MessageRecord>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SessionRecord {
    client_id: String,
    queue: String,
    expiry_interval: u32,
    subscriptions: Vec<SubscriptionRecord>,
    inbound_qos2: Vec<u16>,
    in_flight: Vec<(u16, MessageRecord, bool)>,
    pending: Vec<MessageRecord>,
    dropped: u64,
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

/// A message as an encoded v5 PUBLISH (base64), which keeps every property exactly.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct MessageRecord {
    publish: String,
    /// Seconds since the epoch when it expires.
    expires_at: Option<u64>,
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn message_record(m: &OutboundMessage) -> Option<MessageRecord> {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id: (m.qos != QoS::AtMostOnce).then_some(1),
        properties: m.properties.clone(),
        payload: m.payload.clone(),
    });
    let mut out = BytesMut::new();
    encode(&packet, Protocol::V5, &mut out).ok()?;
    Some(MessageRecord {
        publish: b64().encode(&out),
        expires_at: m.expires_at.map(unix),
    })
}

fn outbound(r: &MessageRecord) -> Option<OutboundMessage> {
    let mut buf = BytesMut::from(&b64().decode(&r.publish).ok()?[..]);
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, Protocol::V5, usize::MAX) else {
        return None;
    };
    Some(OutboundMessage {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties,
        expires_at: r.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        charge: MemoryCharge::default(),
    })
}

fn session_record(s: &Session) -> SessionRecord {
    SessionRecord {
        client_id: s.client_id.clone(),
        queue: s.queue.clone(),
        expiry_interval: s.expiry_interval,
        subscriptions: s
            .subscriptions
            .iter()
            .map(|(filter, e)| SubscriptionRecord {
                filter: filter.clone(),
                qos: e.options.qos as u8,
                no_local: e.options.no_local,
                retain_as_published: e.options.retain_as_published,
                retain_handling: e.options.retain_handling,
                identifier: e.identifier,
            })
            .collect(),
        inbound_qos2: s.inbound_qos2.iter().copied().collect(),
        in_flight: s
            .in_flight
            .iter()
            .filter_map(|(id, f)| Some((*id, message_record(&f.message)?, f.released)))
            .collect(),
        pending: s.pending.iter().filter_map(message_record).collect(),
        dropped: s.dropped,
    }
}

fn session(vhost: &str, r: &SessionRecord) -> Session {
    let mut s = Session::new(r.client_id.clone(), vhost.to_owned(), r.queue.clone());
    s.expiry_interval = r.expiry_interval;
    for sub in &r.subscriptions {
        s.subscriptions.insert(
            sub.filter.clone(),
            SubscriptionEntry {
                options: SubscriptionOptions {
                    qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    retain_handling: sub.retain_handling,
                },
                identifier: sub.identifier,
            },
        );
    }
    s.inbound_qos2 = r.inbound_qos2.iter().copied().collect();
    for (id, m, released) in &r.in_flight {
        if let Some(message) = outbound(m) {
            s.in_flight.insert(
                *id,
                InFlight {
                    message,
                    released: *released,
                },
            );
        }
    }
    s.pending = r.pending.iter().filter_map(outbound).collect();
    s.dropped = r.dropped;
    s
}

fn dir(broker: &Broker) -> PathBuf {
    broker.config.server.data_dir.join("mqtt")
}

fn file(dir: &Path, vhost: &str) -> PathBuf {
    let hex: String = vhost.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("vhost-{hex}.json"))
}

/// The state of every vhost as snapshots: persistent sessions (expiry interval > 0) only.
fn snapshots(broker: &Broker, state: &MqttState) -> Vec<(String, VHostSnapshot)> {
    let mut out: Vec<(String, VHostSnapshot)> = broker
        .vhosts()
        .iter()
        .map(|v| (v.name.clone(), VHostSnapshot::default()))
        .collect();
    {
        let sessions = state.sessions();
        for (key, slot) in sessions.iter() {
            let s = lock(&slot.session);
            if s.expiry_interval == 0 {
                continue;
            }
            if let Some((_, snap)) = out.iter_mut().find(|(v, _)| *v == key.vhost) {
                snap.sessions.push(session_record(&s));
            }
        }
    }
    for (vhost, snap) in &mut out {
        snap.sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        snap.retained =
            state.with_retained(vhost, |r| r.all().filter_map(message_record).collect());
    }
    out
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Writes the snapshots that differ from `last` (what was written before); returns them.
fn save(broker: &Broker, state: &MqttState, last: &mut Vec<(String, Vec<u8>)>) {
    let dir = dir(broker);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(error = %e, dir = %dir.display(), "cannot create the MQTT state directory");
        return;
    }
    for (vhost, snap) in snapshots(broker, state) {
        let Ok(bytes) = serde_json::to_vec(&snap) else {
            continue;
        };
        if last.iter().any(|(v, b)| *v == vhost && *b == bytes) {
            continue;
        }
        let path = file(&dir, &vhost);
        match write_atomically(&path, &bytes) {
            Ok(()) => {
                last.retain(|(v, _)| *v != vhost);
                last.push((vhost, bytes));
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot save MQTT state")
            }
        }
    }
}

/// Reads the snapshots back: retained messages into their stores, and every persistent
/// session set up as disconnected (queue, bindings, offline consumer, expiry timer).
pub fn restore(broker: &Arc<Broker>) {
    if broker.store.is_none() {
        return;
    }
    let state = MqttState::for_broker(broker);
    let dir = dir(broker);
    let now = SystemTime::now();
    for vhost in broker.vhosts() {
        let path = file(&dir, &vhost.name);
        let snap: VHostSnapshot = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "unreadable MQTT state; ignored");
                    continue;
                }
            },
            Err(_) => continue,
        };
        let retained = snap.retained.iter().filter_map(outbound);
        state.with_retained(&vhost.name, |store| {
            for m in retained.filter(|m| !m.is_expired(now)) {
                store.set(m);
            }
        });
        for r in &snap.sessions {
            let s = session(&vhost.name, r);
            let spec = QueueSpec {
                name: s.queue.clone(),
                durable: false,
                ..Default::default()
            };
            let queue = match vhost.declare_queue(spec, false, 0) {
                Ok(d) => d.queue,
                Err(e) => {
                    tracing::warn!(client = %r.client_id, "cannot restore MQTT session queue: {e}");
                    continue;
                }
            };
            for filter in s
                .subscriptions
                .keys()
                .filter(|f| !super::session::is_shared(f))
            {
                let _ = vhost.bind_queue(
                    &queue.name,
                    &broker.config.mqtt.exchange,
                    &super::convert::filter_to_pattern(filter),
                    &FieldTable::new(),
                    0,
                );
            }
            let expiry = s.expiry_interval;
            let session = Arc::new(Mutex::new(s));
            let id = broker.next_id();
            let consumer = Consumer {
                id,
                tag: format!("mqtt-offline-{}", r.client_id),
                no_ack: true,
                exclusive: false,
                owner: 0,
                sink: Arc::new(OfflineSink {
                    session: session.clone(),
                    client_id: r.client_id.clone(),
                    limit: broker.config.mqtt.max_offline_messages,
                }),
            };
            let attached = queue.add_consumer(consumer).is_ok();
            let key = SessionKey {
                vhost: vhost.name.clone(),
                client_id: r.client_id.clone(),
            };
            state.sessions().insert(
                key.clone(),
                SessionSlot {
                    session,
                    owner: None,
                    generation: 1,
                    offline_consumer: attached.then_some(id),
                },
            );
            if expiry != u32::MAX {
                super::release::schedule_expiry(state.clone(), vhost.clone(), key, 1, expiry);
            }
        }
        tracing::info!(vhost = %vhost.name, sessions = snap.sessions.len(), retained = snap.retained.len(), "MQTT state restored");
    }
}

/// Saves changed state every [`INTERVAL`] until shutdown, then once more.
pub async fn run(broker: Arc<Broker>) {
    if broker.store.is_none() {
        return;
    }
    let state = MqttState::for_broker(&broker);
    let mut last = Vec::new();
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        save(&broker, &state, &mut last);
    }
    save(&broker, &state, &mut last);
}

/// Saves now (at shutdown, once connections have let go of their sessions).
pub fn save_now(broker: &Arc<Broker>) {
    if broker.store.is_none() {
        return;
    }
    let state = MqttState::for_broker(broker);
    save(broker, &state, &mut Vec::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchboard_mqtt::Properties;

    #[test]
    fn sessions_and_messages_round_trip() {
        let mut s = Session::new("dev".into(), "/".into(), "mqtt-subscription-dev".into());
        s.expiry_interval = 60;
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
        let m = OutboundMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(&[0, 255, 1]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            charge: MemoryCharge::default(),
        };
        s.in_flight.insert(
            3,
            InFlight {
                message: m.clone(),
                released: true,
            },
        );
        s.pending.push_back(m);
        let r = session_record(&s);
        let text = serde_json::to_vec(&r).expect("json");
        let back: SessionRecord = serde_json::from_slice(&text).expect("parse");
        let restored = session("/", &back);
        assert_eq!(restored.subscriptions, s.subscriptions);
        assert_eq!(restored.inbound_qos2, s.inbound_qos2);
        assert_eq!(restored.in_flight, s.in_flight);
        assert_eq!(restored.pending, s.pending);
        assert_eq!(restored.expiry_interval, 60);
    }
}
