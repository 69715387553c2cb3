//! MQTT state in the message log: a persistent session's queue is a durable core queue AMQP
//! tools can see and count; SUBACK, PUBACK of a retained publish, PUBREC, PUBREL and PUBCOMP
//! come only once the records they depend on are durable; the snapshots an older release wrote
//! under `<data_dir>/mqtt/` are imported once and removed. (SIGKILL at every step: the crash
//! suite, tests/crash_mqtt.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use base64::Engine;
use bytes::BytesMut;
use common::mqtt::{connect_packet, publish_packet, RawMqtt};
use common::{bounded, fresh_data_dir, unique, TestBroker};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use switchboard_mqtt::*;

fn log_is_synced(b: &TestBroker) -> bool {
    let log = &b.broker().store.as_ref().expect("a store").log;
    log.synced() >= log.last_lsn()
}

/// How many messages AMQP's passive queue.declare counts in `queue`.
async fn amqp_count(b: &TestBroker, queue: &str) -> u32 {
    let (_c, ch) = b.channel().await;
    let q = bounded(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("the session queue exists for AMQP");
    q.message_count()
}

#[tokio::test]
async fn an_offline_sessions_messages_are_in_its_durable_queue_and_acks_follow_the_fsync() {
    let b = TestBroker::start().await;
    let dev = unique("dev");
    let topic = unique("t");
    let mut sub = RawMqtt::connect(b.mqtt, Protocol::V311, &dev, false).await;
    sub.subscribe(&format!("{topic}/#"), QoS::ExactlyOnce).await;
    assert!(
        log_is_synced(&b),
        "SUBACK of a persistent session before its record was durable"
    );
    sub.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(sub.closed().await.is_none());
    let mut publ = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("pub"), false).await;
    for i in 1..=3u16 {
        publ.publish(&format!("{topic}/{i}"), QoS::AtLeastOnce, i, b"m")
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        assert!(log_is_synced(&b), "PUBACK before the fsync");
    }
    // A retained publish: its PUBACK waits for the retained record too.
    let retained = Publish {
        retain: true,
        ..publish_packet(&format!("{topic}-r"), QoS::AtLeastOnce, 9, b"kept")
    };
    publ.send(&Packet::Publish(retained)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    assert!(log_is_synced(&b), "retained PUBACK before the fsync");
    // Inbound QoS 2: PUBREC and PUBCOMP wait for the session record (id added, removed).
    publ.publish(&format!("{topic}/q2"), QoS::ExactlyOnce, 4, b"two")
        .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
    assert!(log_is_synced(&b), "PUBREC before the fsync");
    publ.send(&Packet::PubRel(PubResponse::new(4))).await;
    assert_eq!(
        publ.recv().await,
        Some(Packet::PubComp(PubResponse::new(4)))
    );
    assert!(log_is_synced(&b), "PUBCOMP before the fsync");

    let queue = format!("mqtt-subscription-{dev}");
    let q = b.broker().vhost("/").unwrap().queue(&queue).expect("queue");
    assert!(q.durable);
    assert_eq!(amqp_count(&b, &queue).await, 4, "AMQP counts what waits");
    // Nothing is held by the session itself.
    let state = b.mqtt_state();
    let key = switchboard::adapter::mqtt::registry::SessionKey {
        vhost: "/".into(),
        client_id: dev.clone(),
    };
    {
        let sessions = state.sessions();
        let s = sessions[&key].session.lock().unwrap();
        assert!(s.pending.is_empty() && s.in_flight.is_empty());
    }

    // Back online: delivered from the queue; outbound QoS 2 settles at PUBREC, and PUBREL
    // waits for the record of the released id.
    let (mut sub, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, &dev, false)).await;
    assert!(ack.session_present);
    for _ in 0..4 {
        let m = sub.next_publish().await;
        let id = m.packet_id.expect("QoS 1 or 2");
        if m.qos == QoS::ExactlyOnce {
            sub.send(&Packet::PubRec(PubResponse::new(id))).await;
            assert_eq!(sub.recv().await, Some(Packet::PubRel(PubResponse::new(id))));
            assert!(log_is_synced(&b), "PUBREL before the fsync");
            sub.send(&Packet::PubComp(PubResponse::new(id))).await;
        } else {
            sub.send(&Packet::PubAck(PubResponse::new(id))).await;
        }
    }
    sub.expect_nothing_pending().await;
    assert_eq!(q.stats().ready + q.stats().unacked, 0, "all settled");
    b.stop().await;
}

/// A v5 PUBLISH as the older release's snapshots held it (base64).
fn snapshot_message(topic: &str, payload: &[u8], retain: bool) -> serde_json::Value {
    let mut out = BytesMut::new();
    let p = Publish {
        retain,
        ..publish_packet(topic, QoS::AtLeastOnce, 1, payload)
    };
    encode(&Packet::Publish(p), Protocol::V5, &mut out).expect("encode");
    serde_json::json!({
        "publish": base64::engine::general_purpose::STANDARD.encode(&out),
        "expires_at": null,
    })
}

#[tokio::test]
async fn snapshots_of_the_older_release_are_imported_once_then_removed() {
    let dir = fresh_data_dir();
    let mqtt_dir = dir.join("mqtt");
    std::fs::create_dir_all(&mqtt_dir).unwrap();
    let snapshot = serde_json::json!({
        "sessions": [{
            "client_id": "old-dev",
            "queue": "mqtt-subscription-old-dev",
            "expiry_interval": 3600,
            "subscriptions": [{
                "filter": "old/#", "qos": 1, "no_local": false,
                "retain_as_published": false, "retain_handling": 0, "identifier": null
            }],
            "inbound_qos2": [7],
            "in_flight": [[3, snapshot_message("old/a", b"in flight", false), false]],
            "pending": [snapshot_message("old/b", b"waiting", false)],
            "dropped": 0
        }],
        "retained": [snapshot_message("old/r", b"kept", true)]
    });
    // "/" is 2f in the old file names.
    let file = mqtt_dir.join("vhost-2f.json");
    std::fs::write(&file, serde_json::to_vec(&snapshot).unwrap()).unwrap();

    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert!(!file.exists(), "the imported snapshot is removed");
    assert!(!mqtt_dir.exists());
    assert_eq!(amqp_count(&b, "mqtt-subscription-old-dev").await, 2);
    b.stop().await;

    // Now records: a second start (no snapshot any more) still has it all.
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (mut s, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, "old-dev", false)).await;
    assert!(ack.session_present, "the imported session is present");
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = s.next_publish().await;
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
        s.send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
            .await;
    }
    assert_eq!(got, ["in flight", "waiting"], "in order, in flight first");
    // Its inbound QoS 2 id is still known: a resend is not routed again.
    let mut again = publish_packet("old/dup", QoS::ExactlyOnce, 7, b"dup");
    again.dup = true;
    s.send(&Packet::Publish(again)).await;
    assert_eq!(s.recv().await, Some(Packet::PubRec(PubResponse::new(7))));
    s.expect_nothing_pending().await;
    let mut late = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("late"), true).await;
    late.subscribe("old/r", QoS::AtLeastOnce).await;
    assert_eq!(&late.next_publish().await.payload[..], b"kept");
    b.stop().await;
}

#[tokio::test]
async fn an_unreadable_old_snapshot_is_left_in_place() {
    let dir = fresh_data_dir();
    let mqtt_dir = dir.join("mqtt");
    std::fs::create_dir_all(&mqtt_dir).unwrap();
    let file = mqtt_dir.join("vhost-2f.json");
    std::fs::write(&file, b"{ not json").unwrap();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert!(file.exists(), "never deleted without being imported");
    b.stop().await;
}

/// The subscriptions of `client_id`'s session as the registry holds them: (filter, QoS,
/// identifier, no local), in filter order.
fn subscriptions_of(b: &TestBroker, client_id: &str) -> Vec<(String, u8, Option<u32>, bool)> {
    let key = switchboard::adapter::mqtt::registry::SessionKey {
        vhost: "/".into(),
        client_id: client_id.into(),
    };
    let state = b.mqtt_state();
    let sessions = state.sessions();
    let s = sessions[&key].session.lock().unwrap();
    s.subscriptions
        .iter()
        .map(|(f, e)| {
            (
                f.clone(),
                e.options.qos as u8,
                e.identifier,
                e.options.no_local,
            )
        })
        .collect()
}

/// A persistent session subscribed over many packets, then unsubscribed in part (and one
/// filter subscribed again with other options), is the same session after a restart: each
/// subscription is a record of its own, written by the packet that names it.
#[tokio::test]
async fn a_session_with_many_subscriptions_changed_packet_by_packet_survives_a_restart() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let dev = unique("many");
    let mut connect = connect_packet(Protocol::V5, &dev, false);
    connect.properties.session_expiry_interval = Some(3600);
    let (mut c, ack) = RawMqtt::connect_with(b.mqtt, connect).await;
    assert_eq!(ack.code, 0);
    let filters: Vec<String> = (0..2_000).map(|i| format!("fleet/{i}/+/temp")).collect();
    let mut packet_id = 0u16;
    for (p, chunk) in filters.chunks(250).enumerate() {
        packet_id += 1;
        let subscriptions = chunk
            .iter()
            .map(|f| Subscription {
                filter: f.clone(),
                options: SubscriptionOptions {
                    qos: QoS::from_u8((p % 3) as u8).unwrap(),
                    no_local: p % 2 == 1,
                    ..Default::default()
                },
            })
            .collect();
        let properties: Properties = PropertyValues {
            subscription_identifiers: vec![p as u32 + 1],
            ..Default::default()
        }
        .into();
        let ack = c.subscribe_with(packet_id, subscriptions, properties).await;
        assert_eq!(ack.codes.len(), chunk.len());
        assert!(log_is_synced(&b), "SUBACK before its records were durable");
    }
    // Unsubscribe every third packet's worth, and some single filters.
    let mut gone: Vec<String> = filters.chunks(250).step_by(3).flatten().cloned().collect();
    gone.extend(["fleet/1/+/temp".to_owned(), "fleet/1999/+/temp".to_owned()]);
    for chunk in gone.chunks(300) {
        packet_id += 1;
        c.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: chunk.to_vec(),
        }))
        .await;
        assert!(matches!(c.recv().await, Some(Packet::UnsubAck(_))));
        assert!(
            log_is_synced(&b),
            "UNSUBACK before its records were durable"
        );
    }
    // One filter subscribed again, with other options: its record is replaced.
    packet_id += 1;
    let again = Subscription {
        filter: "fleet/300/+/temp".into(),
        options: SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            ..Default::default()
        },
    };
    c.subscribe_with(packet_id, vec![again], Properties::default())
        .await;
    let before = subscriptions_of(&b, &dev);
    assert_eq!(
        before.len(),
        2_000 - 750 - 1,
        "fleet/1999 was unsubscribed with its chunk"
    );
    assert!(before.contains(&("fleet/300/+/temp".to_owned(), 2, None, false)));
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(c.closed().await.is_none());
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert_eq!(subscriptions_of(&b, &dev), before, "the same subscriptions");
    // The bindings work: a kept filter delivers, an unsubscribed one does not.
    let mut connect = connect_packet(Protocol::V5, &dev, false);
    connect.properties.session_expiry_interval = Some(3600);
    let (mut c, ack) = RawMqtt::connect_with(b.mqtt, connect).await;
    assert!(ack.session_present);
    let mut publ = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("pub"), true).await;
    publ.publish("fleet/0/x/temp", QoS::AtMostOnce, 0, b"gone")
        .await;
    publ.publish("fleet/300/x/temp", QoS::AtMostOnce, 0, b"kept")
        .await;
    let m = c.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("fleet/300/x/temp", &b"kept"[..])
    );
    c.expect_nothing_pending().await;
    b.stop().await;
}
