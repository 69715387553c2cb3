//! Sessions and QoS state over a raw socket: QoS 2 exactly once inbound and outbound,
//! persistent sessions with offline queueing (bounded), in-flight resend with DUP, Receive
//! Maximum, session and message expiry, wills.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use bytes::Bytes;
use common::mqtt::*;
use common::*;
use switchboard::adapter::mqtt::registry::{MqttState, SessionKey};
use switchboard_mqtt::*;

/// Waits until the session of `client_id` in the default vhost has no connection, and returns
/// the MQTT state and the session's key for looking at it.
async fn wait_released(b: &TestBroker, client_id: &str) -> (std::sync::Arc<MqttState>, SessionKey) {
    let state = b.mqtt_state();
    let key = SessionKey {
        vhost: "/".into(),
        client_id: client_id.into(),
    };
    wait_until("session released", || {
        state
            .sessions()
            .get(&key)
            .is_some_and(|s| s.owner.is_none())
    })
    .await;
    (state, key)
}

#[tokio::test]
async fn qos2_inbound_is_routed_once_across_resends() {
    let b = TestBroker::start().await;
    let mut sub = RawMqtt::connect(b.mqtt, Protocol::V311, "q2-sub", true).await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "q2-pub", false).await;
    p.publish("q2", QoS::ExactlyOnce, 9, b"once").await;
    assert_eq!(p.recv().await, Some(Packet::PubRec(PubResponse::new(9))));
    // The client missed the PUBREC, reconnects and resends with DUP.
    drop(p);
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "q2-pub", false).await;
    let mut again = publish_packet("q2", QoS::ExactlyOnce, 9, b"once");
    again.dup = true;
    p.send(&Packet::Publish(again)).await;
    assert_eq!(p.recv().await, Some(Packet::PubRec(PubResponse::new(9))));
    p.send(&Packet::PubRel(PubResponse::new(9))).await;
    assert_eq!(p.recv().await, Some(Packet::PubComp(PubResponse::new(9))));
    // Outbound QoS 2: PUBLISH, PUBREC → PUBREL, PUBCOMP.
    let got = sub.next_publish().await;
    assert_eq!(
        (&got.payload[..], got.qos),
        (&b"once"[..], QoS::ExactlyOnce)
    );
    let id = got.packet_id.expect("packet id");
    sub.send(&Packet::PubRec(PubResponse::new(id))).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(PubResponse::new(id))));
    sub.send(&Packet::PubComp(PubResponse::new(id))).await;
    sub.expect_nothing_pending().await;
    b.stop().await;
}

#[tokio::test]
async fn persistent_session_queues_qos1_while_offline() {
    let b = TestBroker::start().await;
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V311, "persist", false).await;
    s.subscribe("off/+", QoS::AtLeastOnce).await;
    drop(s);
    wait_released(&b, "persist").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "persist-pub", true).await;
    p.publish("off/0", QoS::AtMostOnce, 0, b"q0").await;
    for i in 1..=3u16 {
        p.publish(&format!("off/{i}"), QoS::AtLeastOnce, i, b"q1")
            .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    let (mut s, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, "persist", false)).await;
    assert!(ack.session_present);
    let mut topics = Vec::new();
    // QoS 0 messages wait in the session's queue too (not in the log: they are transient).
    let m = s.next_publish().await;
    assert_eq!((m.topic.as_str(), m.qos), ("off/0", QoS::AtMostOnce));
    for _ in 0..3 {
        let m = s.next_publish().await;
        s.send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
            .await;
        topics.push(m.topic);
    }
    assert_eq!(topics, vec!["off/1", "off/2", "off/3"]);
    s.expect_nothing_pending().await;
    // A clean session discards it.
    drop(s);
    let (_s, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, "persist", true)).await;
    assert!(!ack.session_present);
    b.stop().await;
}

#[tokio::test]
async fn offline_queue_is_bounded_oldest_dropped() {
    let b = TestBroker::start_with(|c| c.mqtt.max_offline_messages = 2).await;
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V311, "bounded", false).await;
    s.subscribe("bd", QoS::AtLeastOnce).await;
    drop(s);
    wait_released(&b, "bounded").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "bounded-pub", true).await;
    for i in 1..=5u16 {
        p.publish("bd", QoS::AtLeastOnce, i, &[i as u8]).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    // The session's queue holds them, with the limit as its x-max-length.
    let queue = b
        .broker()
        .vhost("/")
        .unwrap()
        .queue("mqtt-subscription-bounded")
        .expect("session queue");
    assert!(queue.durable, "a persistent session's queue is durable");
    assert_eq!(queue.message_count(), 2);
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V311, "bounded", false).await;
    let a = s.next_publish().await;
    let c = s.next_publish().await;
    assert_eq!((&a.payload[..], &c.payload[..]), (&[4u8][..], &[5u8][..]));
    b.stop().await;
}

#[tokio::test]
async fn in_flight_messages_are_resent_with_dup_on_reconnect() {
    let b = TestBroker::start().await;
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V311, "resend", false).await;
    s.subscribe("rs", QoS::ExactlyOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "resend-pub", true).await;
    p.publish("rs", QoS::AtLeastOnce, 1, b"one").await;
    p.publish("rs", QoS::ExactlyOnce, 2, b"two").await;
    let first = s.next_publish().await;
    let second = s.next_publish().await;
    assert!(!first.dup);
    // Acknowledge neither fully: PUBREC for the QoS 2 one only.
    let id2 = second.packet_id.unwrap();
    s.send(&Packet::PubRec(PubResponse::new(id2))).await;
    assert_eq!(s.recv().await, Some(Packet::PubRel(PubResponse::new(id2))));
    drop(s);
    let (mut s, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, "resend", false)).await;
    assert!(ack.session_present);
    let again = s.next_publish().await;
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(&again.payload[..], b"one");
    // The released QoS 2 message continues with PUBREL, not a second PUBLISH.
    assert_eq!(s.recv().await, Some(Packet::PubRel(PubResponse::new(id2))));
    b.stop().await;
}

#[tokio::test]
async fn receive_maximum_limits_messages_in_flight() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "recvmax", true);
    c.properties.receive_maximum = Some(1);
    let (mut s, ack) = RawMqtt::connect_with(b.mqtt, c).await;
    assert_eq!(ack.properties.receive_maximum, Some(128));
    s.subscribe("rm", QoS::AtLeastOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "recvmax-pub", true).await;
    for i in 1..=3u16 {
        p.publish("rm", QoS::AtLeastOnce, i, &[i as u8]).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    for i in 1..=3u8 {
        let m = s.next_publish().await;
        assert_eq!(&m.payload[..], &[i]);
        // Nothing else comes until this one is acknowledged.
        s.expect_nothing_pending().await;
        s.send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
            .await;
    }
    b.stop().await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut c = connect_packet(Protocol::V5, "expiry", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = RawMqtt::connect_with(b.mqtt, c.clone()).await;
    s.subscribe("ex", QoS::AtLeastOnce).await;
    drop(s);
    wait_released(&b, "expiry").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "expiry-pub", true).await;
    let mut short = publish_packet("ex", QoS::AtLeastOnce, 1, b"short");
    short.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(short)).await;
    let mut long = publish_packet("ex", QoS::AtLeastOnce, 2, b"long");
    long.properties.message_expiry_interval = Some(100);
    p.send(&Packet::Publish(long)).await;
    p.recv().await;
    p.recv().await;
    // The expiry is the input here: move the broker's clock past the short one's second.
    b.advance(&clock, 2100);
    let (mut s, ack) = RawMqtt::connect_with(b.mqtt, c).await;
    assert!(ack.session_present);
    let m = s.next_publish().await;
    assert_eq!(&m.payload[..], b"long");
    let left = m.properties.message_expiry_interval.unwrap();
    assert!(left < 100, "counted down: {left}");
    b.stop().await;
}

#[tokio::test]
async fn session_expiry_ends_a_disconnected_session() {
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut c = connect_packet(Protocol::V5, "sess-exp", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = RawMqtt::connect_with(b.mqtt, c.clone()).await;
    s.subscribe("se", QoS::AtLeastOnce).await;
    drop(s);
    let (state, key) = wait_released(&b, "sess-exp").await;
    // Expiry counts on the broker's clock: a second short of it, the session is kept.
    b.advance(&clock, 59_000);
    let (mut back, ack) = RawMqtt::connect_with(b.mqtt, c.clone()).await;
    assert!(ack.session_present, "expired early");
    back.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(back.recv().await, None);
    wait_released(&b, "sess-exp").await;
    // Counted again from this disconnect, not from the first.
    b.advance(&clock, 59_000);
    assert!(
        state.sessions().contains_key(&key),
        "counted from the first disconnect"
    );
    b.advance(&clock, 1_000);
    wait_until("session expired", || !state.sessions().contains_key(&key)).await;
    assert!(b
        .broker()
        .vhost("/")
        .unwrap()
        .queue("mqtt-subscription-sess-exp")
        .is_none());
    let (_s, ack) = RawMqtt::connect_with(b.mqtt, c).await;
    assert!(!ack.session_present);
    b.stop().await;
}

fn with_will(protocol: Protocol, id: &str, topic: &str, delay: Option<u32>) -> Connect {
    let mut c = connect_packet(protocol, id, true);
    let properties: Properties = PropertyValues {
        will_delay_interval: delay,
        ..Default::default()
    }
    .into();
    c.will = Some(Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties,
    });
    c
}

#[tokio::test]
async fn wills_on_abnormal_loss_only() {
    let b = TestBroker::start().await;
    let mut watcher = RawMqtt::connect(b.mqtt, Protocol::V5, "will-watch", true).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    // Normal DISCONNECT: no will.
    let (mut c, _) =
        RawMqtt::connect_with(b.mqtt, with_will(Protocol::V311, "w1", "will/normal", None)).await;
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(c.recv().await, None);
    // Socket dropped: will, with its QoS.
    let (c, _) = RawMqtt::connect_with(
        b.mqtt,
        with_will(Protocol::V311, "w2", "will/dropped", None),
    )
    .await;
    drop(c);
    let m = watcher.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.qos),
        ("will/dropped", QoS::AtLeastOnce)
    );
    watcher
        .send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
        .await;
    // v5 DISCONNECT 0x04: will.
    let (mut c, _) =
        RawMqtt::connect_with(b.mqtt, with_will(Protocol::V5, "w3", "will/asked", None)).await;
    c.send(&Packet::Disconnect(Disconnect {
        reason: reason::DISCONNECT_WITH_WILL,
        properties: Properties::default(),
    }))
    .await;
    let m = watcher.next_publish().await;
    assert_eq!(m.topic, "will/asked");
    watcher
        .send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
        .await;
    // v5 DISCONNECT with an error reason from the client: will (only 0x00 discards it).
    let (mut c, _) = RawMqtt::connect_with(
        b.mqtt,
        with_will(Protocol::V5, "w5", "will/client-error", None),
    )
    .await;
    c.send(&Packet::Disconnect(Disconnect {
        reason: reason::UNSPECIFIED_ERROR,
        properties: Properties::default(),
    }))
    .await;
    let m = watcher.next_publish().await;
    assert_eq!(m.topic, "will/client-error");
    watcher
        .send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
        .await;
    // Protocol error: will.
    let (mut c, _) =
        RawMqtt::connect_with(b.mqtt, with_will(Protocol::V311, "w4", "will/error", None)).await;
    c.send_bytes(&[0xc1, 0]).await;
    let m = watcher.next_publish().await;
    assert_eq!(m.topic, "will/error");
    watcher
        .send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
        .await;
    // The will was retained: a new subscriber gets it.
    let mut late = RawMqtt::connect(b.mqtt, Protocol::V311, "will-late", true).await;
    late.subscribe("will/dropped", QoS::AtLeastOnce).await;
    let m = late.next_publish().await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"gone");
    watcher.expect_nothing_pending().await;
    b.stop().await;
}

#[tokio::test]
async fn will_delay_is_cancelled_by_a_resumed_session() {
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut watcher = RawMqtt::connect(b.mqtt, Protocol::V5, "wd-watch", true).await;
    watcher.subscribe("wd/#", QoS::AtMostOnce).await;
    let mut c = with_will(Protocol::V5, "wd", "wd/delayed", Some(30));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (conn, _) = RawMqtt::connect_with(b.mqtt, c.clone()).await;
    drop(conn);
    wait_released(&b, "wd").await;
    // Back before the delay ends: no will, when the delay passes either.
    b.advance(&clock, 29_000);
    let (mut conn, ack) = RawMqtt::connect_with(b.mqtt, c.clone()).await;
    assert!(ack.session_present);
    // A delayed will is sent when the delay passes on the broker's clock.
    let mut c2 = with_will(Protocol::V5, "wd2", "wd/late", Some(30));
    if let Some(w) = &mut c2.will {
        w.properties.content_type = Some("text/plain".into());
    }
    c2.clean_start = false;
    c2.properties.session_expiry_interval = Some(60);
    let (conn2, _) = RawMqtt::connect_with(b.mqtt, c2).await;
    drop(conn2);
    wait_released(&b, "wd2").await;
    // Long past the first will's delay too: only the second will comes, as the first one's
    // session was resumed.
    b.advance(&clock, 30_000);
    let m = watcher.next_publish().await;
    assert_eq!(m.topic, "wd/late");
    // The will's message properties come with it; its delay, which no PUBLISH may carry, not.
    assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m.properties.will_delay_interval, None, "{:?}", m.properties);
    conn.send(&Packet::Disconnect(Disconnect::default())).await;
    watcher.expect_nothing_pending().await;
    b.stop().await;
}

#[tokio::test]
async fn inbound_receive_maximum_is_enforced() {
    let b = TestBroker::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let (mut p, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V5, "rm-in", true)).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=2u16 {
        p.publish("rmi", QoS::ExactlyOnce, id, b"x").await;
        assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    }
    // Released ones free their slot.
    p.send(&Packet::PubRel(PubResponse::new(1))).await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(_))));
    p.publish("rmi", QoS::ExactlyOnce, 3, b"x").await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    // A third unreleased one is over the maximum.
    p.publish("rmi", QoS::ExactlyOnce, 4, b"x").await;
    match p.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::RECEIVE_MAXIMUM_EXCEEDED),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn a_client_still_writing_when_disconnected_reads_the_disconnect() {
    // Paho's test_flow_control2: the client sends one QoS 2 publish past the Receive Maximum
    // without reading, then answers each PUBREC with PUBREL while it reads. Its writes must
    // not meet a reset socket (a broken pipe) before it has read the DISCONNECT.
    let b = TestBroker::start_with(|c| c.mqtt.receive_maximum = 8).await;
    let (mut p, _) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V5, "rm-busy", true)).await;
    let mut burst = bytes::BytesMut::new();
    for id in 1..=9u16 {
        let packet = Packet::Publish(publish_packet("rmb", QoS::ExactlyOnce, id, b"x"));
        encode(&packet, Protocol::V5, &mut burst).expect("encode");
    }
    p.send_bytes(&burst).await;
    let mut recs = 0;
    loop {
        match p.recv().await {
            Some(Packet::PubRec(r)) => {
                recs += 1;
                p.send(&Packet::PubRel(PubResponse::new(r.packet_id))).await;
            }
            Some(Packet::PubComp(_)) => {}
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, reason::RECEIVE_MAXIMUM_EXCEEDED);
                break;
            }
            other => panic!("after {recs} PUBRECs: {other:?}"),
        }
    }
    assert_eq!(recs, 8);
    assert_eq!(p.closed().await, None, "then the broker closes");
    b.stop().await;
}

#[tokio::test]
async fn unsubscribe_drops_messages_already_waiting_for_the_client() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "unsub-wait", false);
    c.properties.session_expiry_interval = Some(60);
    c.properties.receive_maximum = Some(1);
    let (mut s, _) = RawMqtt::connect_with(b.mqtt, c.clone()).await;
    s.subscribe("uw/+", QoS::AtLeastOnce).await;
    drop(s);
    wait_released(&b, "unsub-wait").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "unsub-wait-pub", true).await;
    for i in 1..=3u16 {
        p.publish("uw/a", QoS::AtLeastOnce, i, &[i as u8]).await;
        p.recv().await;
    }
    // Back with Receive Maximum 1: one message in flight, two waiting in the session.
    let (mut s, _) = RawMqtt::connect_with(b.mqtt, c).await;
    let first = s.next_publish().await;
    s.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        properties: Properties::default(),
        filters: vec!["uw/+".into()],
    }))
    .await;
    match s.recv().await {
        Some(Packet::UnsubAck(a)) => assert_eq!(a.codes, vec![reason::SUCCESS]),
        other => panic!("{other:?}"),
    }
    s.send(&Packet::PubAck(PubResponse::new(first.packet_id.unwrap())))
        .await;
    s.expect_nothing_pending().await;
    b.stop().await;
}

#[tokio::test]
async fn messages_a_session_keeps_are_charged_until_delivered() {
    let b = TestBroker::start_with(|c| c.mqtt.max_offline_messages = 2).await;
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V311, "charged", false).await;
    s.subscribe("charged", QoS::AtLeastOnce).await;
    drop(s);
    wait_released(&b, "charged").await;
    let memory = &b.broker().memory;
    let base = memory.used();
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "charged-pub", true).await;
    for i in 1..=4u16 {
        p.publish("charged", QoS::AtLeastOnce, i, &[i as u8; 1000])
            .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    // The session's queue keeps the newest two (the oldest two were dropped, and their
    // charges released): two messages with their 1000-byte bodies, headers and the queue's
    // and log's bookkeeping, the boxed properties and the AMQP headers made for the store
    // (about 3 KB each; all four would be over 12 KB).
    wait_until("only the queue's two messages charged", || {
        let held = memory.used().saturating_sub(base);
        (2_000..8_000).contains(&held)
    })
    .await;
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V311, "charged", false).await;
    for _ in 0..2 {
        let m = s.next_publish().await;
        assert_eq!(m.payload.len(), 1000);
        s.send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
            .await;
    }
    wait_until("acknowledged messages released", || memory.used() == base).await;
    b.stop().await;
}
