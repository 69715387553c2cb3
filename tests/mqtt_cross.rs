//! MQTT ⇄ AMQP through `amq.topic`, with real clients on each side (rumqttc, lapin): bodies
//! byte for byte, topics translated, properties mapped as DESIGN.md says.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::mqtt::*;
use common::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

#[tokio::test]
async fn mqtt_publish_reaches_an_amqp_consumer_byte_for_byte() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    let q = unique("from-mqtt");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "sensors.*.temp").await;
    let mut consumer = consume(&ch, &q, true).await;

    let p = V5Client::connect(b.mqtt, "cross-pub").await;
    let props = v5p::PublishProperties {
        content_type: Some("application/octet-stream".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"req-42")),
        response_topic: Some("replies/me".into()),
        user_properties: vec![("site".into(), "north".into())],
        message_expiry_interval: Some(30),
        ..Default::default()
    };
    p.client
        .publish_with_properties(
            "sensors/k1/temp",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            all_bytes(),
            props,
        )
        .await
        .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.data, all_bytes());
    assert_eq!(d.routing_key.as_str(), "sensors.k1.temp");
    assert_eq!(d.exchange.as_str(), "amq.topic");
    let pr = &d.properties;
    assert_eq!(pr.delivery_mode(), &Some(2));
    assert_eq!(
        pr.content_type().as_ref().map(|s| s.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(
        pr.correlation_id().as_ref().map(|s| s.as_str()),
        Some("req-42")
    );
    assert_eq!(pr.expiration().as_ref().map(|s| s.as_str()), Some("30000"));
    let headers = pr.headers().as_ref().expect("headers");
    let h = |k: &str| headers.inner().get(k).cloned();
    assert!(matches!(h("site"), Some(AMQPValue::LongString(s)) if s.to_string() == "north"));
    assert!(
        matches!(h("x-reply-to-topic"), Some(AMQPValue::LongString(s)) if s.to_string() == "replies/me")
    );
    b.stop().await;
}

#[tokio::test]
async fn amqp_publish_reaches_an_mqtt_wildcard_subscriber_byte_for_byte() {
    let b = TestBroker::start().await;
    let mut sub = V5Client::connect(b.mqtt, "cross-sub").await;
    sub.subscribe("devices/+/cmd/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let mut v3 = V3Client::connect(b.mqtt, "cross-sub3", true).await;
    v3.subscribe("devices/#", rumqttc::QoS::AtLeastOnce).await;
    let (_conn, ch) = b.channel().await;
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("n"), AMQPValue::LongLongInt(-5));
    let mut table = FieldTable::default();
    table.insert(ShortString::from("a"), AMQPValue::Boolean(true));
    headers.insert(ShortString::from("t"), AMQPValue::FieldTable(table));
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/x".into())
        .with_correlation_id("c-1".into())
        .with_headers(headers);
    publish_with(
        &ch,
        "amq.topic",
        "devices.d7.cmd.reboot",
        &all_bytes(),
        props,
    )
    .await;
    let m = sub.next_publish().await;
    assert_eq!(&m.topic[..], b"devices/d7/cmd/reboot");
    assert_eq!(&m.payload[..], &all_bytes()[..]);
    // Persistent AMQP messages arrive as QoS 1.
    assert_eq!(m.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    let p = m.properties.expect("properties");
    assert_eq!(p.content_type.as_deref(), Some("text/x"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"c-1"[..]));
    let mut up = p.user_properties.clone();
    up.sort();
    // Every header type arrives as text (tables as JSON), none dropped.
    assert_eq!(
        up,
        vec![
            ("n".into(), "-5".into()),
            ("t".into(), "{\"a\":true}".into())
        ]
    );
    let m3 = v3.next_publish().await;
    assert_eq!(m3.topic, "devices/d7/cmd/reboot");
    assert_eq!(&m3.payload[..], &all_bytes()[..]);
    // Non-persistent AMQP messages arrive as QoS 0.
    publish(&ch, "amq.topic", "devices.d8", b"plain").await;
    let m3 = v3.next_publish().await;
    assert_eq!(m3.qos, rumqttc::QoS::AtMostOnce);
    b.stop().await;
}

#[tokio::test]
async fn deleting_the_session_queue_over_amqp_disconnects_and_reconnect_rebuilds_it() {
    use switchboard_mqtt::{reason, Packet, Protocol, QoS};
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "deleted", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut m, _) = RawMqtt::connect_with(b.mqtt, c.clone()).await;
    m.subscribe("del/t", QoS::AtLeastOnce).await;
    let (_conn, ch) = b.channel().await;
    bounded(ch.queue_delete(
        "mqtt-subscription-deleted".into(),
        lapin::options::QueueDeleteOptions::default(),
    ))
    .await
    .expect("queue.delete");
    match m.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::IMPLEMENTATION_SPECIFIC_ERROR),
        other => panic!("{other:?}"),
    }
    // The session survives; reconnecting declares the queue and binds its filters again.
    let (mut m, ack) = RawMqtt::connect_with(b.mqtt, c).await;
    assert!(ack.session_present);
    publish(&ch, "amq.topic", "del.t", b"back").await;
    assert_eq!(&m.next_publish().await.payload[..], b"back");
    b.stop().await;
}
