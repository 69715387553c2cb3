//! Publish/subscribe with rumqttc 3.1.1 and 5: QoS 0/1/2 both ways, the spec's filter edge
//! cases, overlapping subscriptions, unsubscribe, retained messages.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::mqtt::*;
use common::*;
use rumqttc::QoS;

#[tokio::test]
async fn qos_0_1_2_round_trip_with_subscription_qos_as_ceiling() {
    let b = TestBroker::start().await;
    let mut sub = V3Client::connect(b.mqtt, "sub-qos", true).await;
    sub.subscribe("q/exact", QoS::ExactlyOnce).await;
    sub.subscribe("q/ceiling", QoS::AtLeastOnce).await;
    let publisher = V3Client::connect(b.mqtt, "pub-qos", true).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .client
            .publish("q/exact", qos, false, format!("{qos:?}"))
            .await
            .unwrap();
        let p = sub.next_publish().await;
        assert_eq!(p.topic, "q/exact");
        assert_eq!(p.qos, qos);
        assert_eq!(&p.payload[..], format!("{qos:?}").as_bytes());
    }
    publisher
        .client
        .publish("q/ceiling", QoS::ExactlyOnce, false, "c")
        .await
        .unwrap();
    let p = sub.next_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    b.stop().await;
}

#[tokio::test]
async fn wildcard_edge_cases_follow_mqtt_rules() {
    let b = TestBroker::start().await;
    let mut sub = V3Client::connect(b.mqtt, "sub-wild", true).await;
    sub.subscribe("sport/#", QoS::AtMostOnce).await;
    sub.subscribe("+/+", QoS::AtMostOnce).await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    let mut publisher =
        RawMqtt::connect(b.mqtt, switchboard_mqtt::Protocol::V311, "pub-wild", true).await;
    // `sport/#` matches `sport` itself; `#` matches everything but `$` topics.
    for topic in ["sport", "/finance", "a.b/c", "$SYS/x", "last"] {
        publisher
            .publish(
                topic,
                switchboard_mqtt::QoS::AtMostOnce,
                0,
                topic.as_bytes(),
            )
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sub.next_publish().await.topic);
    }
    // Overlapping subscriptions deliver once; `$SYS/x` never arrives.
    assert_eq!(got, vec!["sport", "/finance", "a.b/c", "last"]);
    b.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_at_once() {
    let b = TestBroker::start().await;
    let mut sub = V3Client::connect(b.mqtt, "sub-unsub", true).await;
    sub.subscribe("u/1", QoS::AtLeastOnce).await;
    sub.subscribe("u/2", QoS::AtLeastOnce).await;
    sub.client.unsubscribe("u/1").await.unwrap();
    loop {
        if let Some(rumqttc::Packet::UnsubAck(_)) = sub.next().await {
            break;
        }
    }
    let publisher = V3Client::connect(b.mqtt, "pub-unsub", true).await;
    publisher
        .client
        .publish("u/1", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    publisher
        .client
        .publish("u/2", QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    let p = sub.next_publish().await;
    assert_eq!(p.topic, "u/2");
    b.stop().await;
}

#[tokio::test]
async fn retained_messages_reach_wildcard_subscribers_and_clear() {
    let b = TestBroker::start().await;
    let publisher = V3Client::connect(b.mqtt, "pub-ret", true).await;
    publisher
        .client
        .publish("ret/a", QoS::AtLeastOnce, true, "A")
        .await
        .unwrap();
    publisher
        .client
        .publish("ret/b", QoS::AtMostOnce, true, "B")
        .await
        .unwrap();
    publisher
        .client
        .publish("ret/b", QoS::AtMostOnce, true, "")
        .await
        .unwrap();
    publisher
        .client
        .publish("ret/c", QoS::AtLeastOnce, true, "C")
        .await
        .unwrap();
    // PUBACK of the last one means all were handled in order.
    let mut publisher = publisher;
    loop {
        if let Some(rumqttc::Packet::PubAck(a)) = publisher.next().await {
            if a.pkid == 2 {
                break;
            }
        }
    }
    let mut sub = V3Client::connect(b.mqtt, "sub-ret", true).await;
    sub.subscribe("ret/+", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = sub.next_publish().await;
        assert!(p.retain);
        got.push((p.topic, p.payload.to_vec()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("ret/a".into(), b"A".to_vec()),
            ("ret/c".into(), b"C".to_vec())
        ]
    );
    // Live messages to a subscriber arrive without the retain flag (3.1.1).
    publisher
        .client
        .publish("ret/a", QoS::AtLeastOnce, true, "A2")
        .await
        .unwrap();
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], b"A2");
    assert!(!p.retain);
    b.stop().await;
}

#[tokio::test]
async fn v5_properties_and_subscription_identifiers() {
    use rumqttc::v5::mqttbytes::v5::{PublishProperties, SubscribeProperties};
    use rumqttc::v5::mqttbytes::{v5::Filter, QoS as Q5};
    let b = TestBroker::start().await;
    let mut sub = V5Client::connect(b.mqtt, "sub-v5").await;
    let props = SubscribeProperties {
        id: Some(7),
        user_properties: vec![],
    };
    sub.client
        .subscribe_with_properties("v5/#", Q5::AtLeastOnce, props)
        .await
        .unwrap();
    sub.wait_suback().await;
    sub.client
        .subscribe_many(vec![Filter::new("v5/+", Q5::ExactlyOnce)])
        .await
        .unwrap();
    sub.wait_suback().await;
    let publisher = V5Client::connect(b.mqtt, "pub-v5").await;
    let p = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("text/plain".into()),
        response_topic: Some("v5/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("k".into(), "v".into()), ("a".into(), "b".into())],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("v5/x", Q5::ExactlyOnce, false, "hello", p)
        .await
        .unwrap();
    let got = sub.next_publish().await;
    assert_eq!(&got.topic[..], b"v5/x");
    // Overlapping subscriptions: one copy, the highest QoS, the identifier of the one with one.
    assert_eq!(got.qos, Q5::ExactlyOnce);
    let props = got.properties.expect("properties");
    assert_eq!(props.subscription_identifiers, vec![7]);
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.response_topic.as_deref(), Some("v5/reply"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    let mut up = props.user_properties.clone();
    up.sort();
    assert_eq!(up, vec![("a".into(), "b".into()), ("k".into(), "v".into())]);
    let left = props.message_expiry_interval.expect("expiry counted down");
    assert!((3590..=3600).contains(&left), "{left}");
    b.stop().await;
}
