//! MQTT 5 properties kept exactly as published: MQTT → MQTT keeps user properties in order
//! with repeated names (MQTT 5.0 §3.3.2.3.7); MQTT → AMQP carries a repeated name as an array
//! of its values and the DUP flag as `x-mqtt-dup`; MQTT → AMQP → MQTT gives every value back;
//! MQTT → STOMP renders the array in the documented JSON form.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use bytes::Bytes;
use common::amqp::*;
use common::mqtt::*;
use common::stomp::StompClient;
use common::*;
use lapin::types::{AMQPValue, FieldTable};
use switchboard_mqtt::*;

fn user_properties() -> Vec<(String, String)> {
    [
        ("region", "eu"),
        ("trace", "abc"),
        ("region", "dup"),
        ("zone", "1"),
        ("region", "third"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn publish_with_properties(topic: &str, qos: QoS, dup: bool) -> Packet {
    let mut p = publish_packet(topic, qos, 1, b"payload");
    p.dup = dup && qos != QoS::AtMostOnce;
    p.properties.user_properties = user_properties();
    p.properties.content_type = Some("text/plain".into());
    p.properties.correlation_data = Some(Bytes::from_static(b"\x00\xffbinary"));
    p.properties.response_topic = Some("reply/here".into());
    p.properties.payload_format_indicator = Some(1);
    Packet::Publish(p)
}

#[tokio::test]
async fn mqtt_to_mqtt_keeps_every_property_in_order() {
    let b = TestBroker::start().await;
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V5, "props-sub", true).await;
    s.subscribe("props/#", QoS::AtLeastOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "props-pub", true).await;
    p.send(&publish_with_properties("props/a", QoS::AtMostOnce, false))
        .await;
    let got = s.next_publish().await;
    assert_eq!(got.properties.user_properties, user_properties());
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        got.properties.correlation_data.as_deref(),
        Some(&b"\x00\xffbinary"[..])
    );
    assert_eq!(got.properties.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    b.stop().await;
}

#[tokio::test]
async fn mqtt_to_amqp_carries_repeats_as_an_array_and_the_dup_flag() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("props-amqp");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "props.amqp").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "props-pub2", true).await;
    p.send(&publish_with_properties(
        "props/amqp",
        QoS::AtLeastOnce,
        true,
    ))
    .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let m = get(&ch, &q, true).await.expect("a message");
    let headers = m.properties.headers().clone().expect("headers");
    let h = headers.inner();
    let region = h.get("region").expect("region");
    let AMQPValue::FieldArray(values) = region else {
        panic!("region is {region:?}");
    };
    let values: Vec<String> = values
        .as_slice()
        .iter()
        .map(|v| match v {
            AMQPValue::LongString(s) => s.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, ["eu", "dup", "third"]);
    assert!(matches!(h.get("trace"), Some(AMQPValue::LongString(s)) if s.to_string() == "abc"));
    assert_eq!(h.get("x-mqtt-dup"), Some(&AMQPValue::Boolean(true)));
    b.stop().await;
}

#[tokio::test]
async fn mqtt_to_amqp_to_mqtt_gives_every_value_back() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("props-relay");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "props.in").await;
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V5, "props-end", true).await;
    s.subscribe("props/out", QoS::AtMostOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "props-start", true).await;
    p.send(&publish_with_properties("props/in", QoS::AtMostOnce, false))
        .await;
    // An AMQP client relays the message with the headers it got.
    let m = get(&ch, &q, true).await.expect("a message");
    let headers: FieldTable = m.properties.headers().clone().expect("headers");
    let props = lapin::BasicProperties::default().with_headers(headers);
    publish_with(&ch, "amq.topic", "props.out", &m.data, props).await;
    let got = s.next_publish().await;
    let values = |name: &str| -> Vec<String> {
        got.properties
            .user_properties
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(values("region"), ["eu", "dup", "third"]);
    assert_eq!(values("trace"), ["abc"]);
    assert_eq!(values("zone"), ["1"]);
    b.stop().await;
}

#[tokio::test]
async fn mqtt_to_stomp_renders_repeats_as_a_json_array() {
    let b = TestBroker::start().await;
    let mut c = StompClient::connect(b.stomp, "1.2").await;
    c.subscribe("s", "/topic/props.stomp", "auto").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "props-pub3", true).await;
    p.send(&publish_with_properties(
        "props/stomp",
        QoS::AtMostOnce,
        false,
    ))
    .await;
    let m = c.message().await;
    assert_eq!(m.header("region"), Some(r#"["eu","dup","third"]"#));
    assert_eq!(m.header("trace"), Some("abc"));
    c.disconnect().await;
    b.stop().await;
}
