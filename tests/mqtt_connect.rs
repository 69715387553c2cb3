//! CONNECT and connection handling over a raw socket: every version on one listener, protocol
//! levels, client ids, auth, takeover, keep alive, and bad input (malformed, oversize, not
//! CONNECT first, second CONNECT, floods, abrupt drops) — each followed by proof that the broker
//! still serves another client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use bytes::Bytes;
use common::mqtt::*;
use common::*;
use switchboard_mqtt::*;

/// Proves the broker still serves: a fresh client subscribes, publishes and receives.
async fn still_serving(b: &TestBroker) {
    let id = unique("probe");
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V311, &id, true).await;
    let topic = format!("probe/{id}");
    assert_eq!(c.subscribe(&topic, QoS::AtLeastOnce).await.codes, vec![1]);
    c.publish(&topic, QoS::AtMostOnce, 0, b"alive").await;
    assert_eq!(&c.next_publish().await.payload[..], b"alive");
}

#[tokio::test]
async fn one_listener_serves_31_311_and_5() {
    let b = TestBroker::start().await;
    let mut subs = Vec::new();
    for (i, v) in [Protocol::V31, Protocol::V311, Protocol::V5]
        .into_iter()
        .enumerate()
    {
        let mut c = RawMqtt::connect(b.mqtt, v, &format!("ver-{i}"), true).await;
        assert_eq!(c.subscribe("ver/t", QoS::AtMostOnce).await.codes, vec![0]);
        subs.push(c);
    }
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V31, "ver-pub", true).await;
    p.publish("ver/t", QoS::AtMostOnce, 0, b"x").await;
    for s in &mut subs {
        let got = s.next_publish().await;
        assert_eq!((got.topic.as_str(), &got.payload[..]), ("ver/t", &b"x"[..]));
    }
    b.stop().await;
}

#[tokio::test]
async fn bad_protocol_level_is_refused_then_closed() {
    let b = TestBroker::start().await;
    // MQTT level 2: a 3.1.1-style CONNACK with 0x01.
    let mut c = RawMqtt::tcp(b.mqtt, Protocol::V311).await;
    c.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 2, 2, 0, 60, 0, 0])
        .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, reason::V3_UNACCEPTABLE_PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, None);
    // Level 6: a v5 CONNACK with 0x84.
    let mut c = RawMqtt::tcp(b.mqtt, Protocol::V5).await;
    c.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0])
        .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, reason::UNSUPPORTED_PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, None);
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    let b = TestBroker::start().await;
    let mut c = RawMqtt::tcp(b.mqtt, Protocol::V311).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.closed().await, None);
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let b = TestBroker::start().await;
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V5, "twice-5", true).await;
    c.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V5,
        "twice-5",
        true,
    ))))
    .await;
    match c.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::PROTOCOL_ERROR),
        other => panic!("{other:?}"),
    }
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V311, "twice-3", true).await;
    c.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V311,
        "twice-3",
        true,
    ))))
    .await;
    assert_eq!(c.closed().await, None);
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn malformed_packets_close_only_their_connection() {
    let b = TestBroker::start().await;
    let mut bystander = RawMqtt::connect(b.mqtt, Protocol::V311, "bystander", true).await;
    bystander.subscribe("by/#", QoS::AtMostOnce).await;
    // v5: PUBLISH with QoS 3 → DISCONNECT 0x81.
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V5, "bad-5", true).await;
    c.send_bytes(&[0x36, 4, 0, 1, b'a', 0]).await;
    match c.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::MALFORMED_PACKET),
        other => panic!("{other:?}"),
    }
    // v5: wildcard in a topic name → 0x90.
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V5, "bad-topic", true).await;
    c.send_bytes(&[0x30, 4, 0, 1, b'#', 0]).await;
    match c.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::TOPIC_NAME_INVALID),
        other => panic!("{other:?}"),
    }
    // v3: five-byte remaining length, U+0000 in a topic → closed.
    for bytes in [
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..],
        &[0x30, 4, 0, 2, b'a', 0],
    ] {
        let mut c = RawMqtt::connect(b.mqtt, Protocol::V311, "bad-3", true).await;
        c.send_bytes(bytes).await;
        assert_eq!(c.closed().await, None);
    }
    // Garbage instead of a CONNECT.
    let mut c = RawMqtt::tcp(b.mqtt, Protocol::V311).await;
    c.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.closed().await, None);
    bystander.expect_nothing_pending().await;
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn oversize_packets_are_refused_before_buffering() {
    let b = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V5, "big-5", true).await;
    // Only the fixed header of a 1 MiB PUBLISH is sent: the size alone is refused.
    c.send_bytes(&[0x30, 0x80, 0x80, 0x40]).await;
    match c.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::PACKET_TOO_LARGE),
        other => panic!("{other:?}"),
    }
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V311, "big-3", true).await;
    c.publish("t", QoS::AtMostOnce, 0, &[0u8; 2000]).await;
    assert_eq!(c.closed().await, None);
    // The CONNECT limit applies before authentication.
    let mut c = RawMqtt::tcp(b.mqtt, Protocol::V311).await;
    c.send_bytes(&[0x10, 0xff, 0xff, 0x7f]).await;
    assert_eq!(c.closed().await, None);
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn connect_floods_and_abrupt_disconnects_leave_others_served() {
    let b = TestBroker::start().await;
    let mut bystander = RawMqtt::connect(b.mqtt, Protocol::V311, "flood-bystander", true).await;
    bystander.subscribe("flood/#", QoS::AtLeastOnce).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let addr = b.mqtt;
        tasks.push(tokio::spawn(async move {
            let mut c = RawMqtt::tcp(addr, Protocol::V311).await;
            match i % 4 {
                // Half a CONNECT, then gone.
                0 => c.send_bytes(&[0x10, 20, 0, 4, b'M']).await,
                // A full CONNECT with a shared client id (takeovers), then gone.
                1 => {
                    c.send(&Packet::Connect(Box::new(connect_packet(
                        Protocol::V311,
                        "flood",
                        true,
                    ))))
                    .await
                }
                // Connected, half a PUBLISH, then gone.
                2 => {
                    c.send(&Packet::Connect(Box::new(connect_packet(
                        Protocol::V311,
                        &format!("flood-{i}"),
                        false,
                    ))))
                    .await;
                    c.send_bytes(&[0x30, 50, 0, 7, b'f']).await;
                }
                // Connected, subscribed, gone.
                _ => {
                    c.send(&Packet::Connect(Box::new(connect_packet(
                        Protocol::V5,
                        &format!("flood-{i}"),
                        true,
                    ))))
                    .await;
                }
            }
            drop(c);
        }));
    }
    for t in tasks {
        bounded(t).await.expect("flood task");
    }
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "flood-pub", true).await;
    p.publish("flood/x", QoS::AtLeastOnce, 1, b"still here")
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    assert_eq!(&bystander.next_publish().await.payload[..], b"still here");
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn client_id_rules() {
    let b = TestBroker::start().await;
    // 3.1.1: empty id with a clean session gets one; with a persistent session, 0x02.
    let (_c, ack) = RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, "", true)).await;
    assert_eq!(ack.code, 0);
    let (mut c, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, "", false)).await;
    assert_eq!(ack.code, reason::V3_IDENTIFIER_REJECTED);
    assert_eq!(c.recv().await, None);
    // 3.1 needs an id.
    let (_, ack) = RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V31, "", true)).await;
    assert_eq!(ack.code, reason::V3_IDENTIFIER_REJECTED);
    // v5: assigned and told.
    let (_c, ack) = RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V5, "", false)).await;
    assert_eq!(ack.code, 0);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    assert!(!assigned.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn authentication_codes_and_vhost_user_form() {
    let b = TestBroker::start_with(|c| c.mqtt.anonymous_user = None).await;
    let with = |v: Protocol, user: Option<&str>, pass: &str| {
        let mut c = connect_packet(v, &unique("auth"), true);
        c.username = user.map(str::to_owned);
        c.password = user.map(|_| Bytes::copy_from_slice(pass.as_bytes()));
        c
    };
    for (v, bad, denied) in [
        (
            Protocol::V311,
            reason::V3_BAD_USER_NAME_OR_PASSWORD,
            reason::V3_NOT_AUTHORIZED,
        ),
        (
            Protocol::V5,
            reason::BAD_USER_NAME_OR_PASSWORD,
            reason::NOT_AUTHORIZED,
        ),
    ] {
        let (_, ack) = RawMqtt::connect_with(b.mqtt, with(v, Some("guest"), "wrong")).await;
        assert_eq!(ack.code, bad);
        let (_, ack) = RawMqtt::connect_with(b.mqtt, with(v, Some("nope:guest"), "guest")).await;
        assert_eq!(ack.code, denied, "unknown vhost");
        let (_, ack) = RawMqtt::connect_with(b.mqtt, with(v, None, "")).await;
        assert_eq!(ack.code, denied, "anonymous refused by config");
        if v.is_v5() {
            let mut c = with(v, Some("guest"), "guest");
            c.properties.authentication_method = Some("SCRAM-SHA-1".into());
            let (_, ack) = RawMqtt::connect_with(b.mqtt, c).await;
            assert_eq!(ack.code, reason::BAD_AUTHENTICATION_METHOD);
        }
        let (_, ack) = RawMqtt::connect_with(b.mqtt, with(v, Some("other:alice"), "secret")).await;
        assert_eq!(ack.code, 0, "vhost:user form");
    }
    b.stop().await;
    // The default: anonymous acts as guest, from loopback.
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V311, "anon", true);
    c.username = None;
    c.password = None;
    let (_, ack) = RawMqtt::connect_with(b.mqtt, c).await;
    assert_eq!(ack.code, 0);
    b.stop().await;
}

#[tokio::test]
async fn vhosts_are_isolated() {
    let b = TestBroker::start().await;
    let mut other = connect_packet(Protocol::V311, "iso-sub", true);
    other.username = Some("other:alice".into());
    other.password = Some(Bytes::from_static(b"secret"));
    let (mut sub_other, _) = RawMqtt::connect_with(b.mqtt, other).await;
    sub_other.subscribe("iso", QoS::AtMostOnce).await;
    let mut sub_default = RawMqtt::connect(b.mqtt, Protocol::V311, "iso-sub", true).await;
    sub_default.subscribe("iso", QoS::AtMostOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "iso-pub", true).await;
    p.publish("iso", QoS::AtMostOnce, 0, b"default").await;
    assert_eq!(&sub_default.next_publish().await.payload[..], b"default");
    // The same client id in another vhost is another session, and got nothing.
    sub_other.expect_nothing_pending().await;
    b.stop().await;
}

#[tokio::test]
async fn client_id_takeover_closes_the_old_connection() {
    let b = TestBroker::start().await;
    let mut old = RawMqtt::connect(b.mqtt, Protocol::V5, "taken", true).await;
    let mut new = RawMqtt::connect(b.mqtt, Protocol::V5, "taken", true).await;
    match old.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::SESSION_TAKEN_OVER),
        other => panic!("{other:?}"),
    }
    new.subscribe("tk", QoS::AtMostOnce).await;
    new.publish("tk", QoS::AtMostOnce, 0, b"mine").await;
    assert_eq!(&new.next_publish().await.payload[..], b"mine");
    // v3: the old connection is just closed.
    let mut old = RawMqtt::connect(b.mqtt, Protocol::V311, "taken-3", true).await;
    let _new = RawMqtt::connect(b.mqtt, Protocol::V311, "taken-3", true).await;
    assert_eq!(old.closed().await, None);
    b.stop().await;
}

#[tokio::test]
async fn server_keep_alive_overrides_the_clients_and_is_announced() {
    // The keep alive itself is enforced in tests/transport_time.rs, on paused time.
    let b = TestBroker::start_with(|c| c.mqtt.server_keep_alive = 30).await;
    let (_, ack) = RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V5, "ska", true)).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    b.stop().await;
}

#[tokio::test]
async fn memory_alarm_stops_reading_publishers_only() {
    use common::amqp::*;
    let b = TestBroker::start_with(|c| c.server.memory_high_watermark_bytes = Some(10_000)).await;
    let (_conn, ch) = b.channel().await;
    let q = unique("mem");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "mem.#").await;
    let mut reader = RawMqtt::connect(b.mqtt, Protocol::V311, "mem-reader", true).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, "mem-pub", true).await;
    p.publish("mem/big", QoS::AtLeastOnce, 1, &[7u8; 20_000])
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    wait_until("alarm", || b.broker().memory.alarm()).await;
    // The publisher is no longer read: its PINGREQ stays unanswered...
    p.send(&Packet::PingReq).await;
    let quiet = tokio::time::timeout(QUIET, p.recv()).await;
    assert!(
        quiet.is_err(),
        "publisher was read during the alarm: {quiet:?}"
    );
    // ...while a connection that did not publish is still served.
    reader.expect_nothing_pending().await;
    // Draining the queue clears the alarm and the publisher is read again.
    assert!(get(&ch, &q, true).await.is_some());
    assert_eq!(p.recv().await, Some(Packet::PingResp));
    b.stop().await;
}
