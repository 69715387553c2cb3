//! Queue features across protocols: an MQTT 5 message with a Message Expiry Interval expires in
//! an AMQP queue; a STOMP NACK without requeue dead-letters, with `x-death` readable from STOMP;
//! a STOMP SEND with `x-delay` to a delayed exchange is held; a STOMP SEND with `expiration`
//! expires.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::{args, bind, declare, declare_with_args, longstr};
use common::mqtt::*;
use common::stomp::{text, StompClient};
use common::*;
use std::time::{Duration, Instant};
use switchboard_mqtt::*;

#[tokio::test]
async fn mqtt5_message_expiry_interval_expires_in_an_amqp_queue() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("from-mqtt");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "sensors.t1").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, &unique("exp-pub"), true).await;
    for (id, expiry) in [(1, Some(1)), (2, None)] {
        let mut m = publish_packet("sensors/t1", QoS::AtLeastOnce, id, b"reading");
        m.properties.message_expiry_interval = expiry;
        p.send(&Packet::Publish(m)).await;
        p.recv().await; // PUBACK: it is in the queue
    }
    let queue = b.broker().vhost("/").unwrap().queue(&q).unwrap();
    assert_eq!(queue.stats().ready, 2);
    // MQTT counts expiry in seconds: the one-second message goes, nobody consuming.
    wait_until("the MQTT message expires", || queue.expired_count() == 1).await;
    assert_eq!(queue.stats().ready, 1);
}

#[tokio::test]
async fn stomp_nack_without_requeue_dead_letters_with_x_death_readable_from_stomp() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (work, dead) = (unique("stomp-work"), unique("stomp-dead"));
    declare(&ch, &dead).await;
    declare_with_args(
        &ch,
        &work,
        args(&[
            ("x-dead-letter-exchange", longstr("")),
            ("x-dead-letter-routing-key", longstr(&dead)),
        ]),
    )
    .await;
    let mut st = StompClient::connect(b.stomp, "1.2").await;
    st.subscribe("w", &format!("/amq/queue/{work}"), "client-individual")
        .await;
    st.send(&format!("/amq/queue/{work}"), b"bad job", &[])
        .await;
    let m = st.message().await;
    st.ack(
        &m,
        switchboard_stomp::Command::Nack,
        &[("requeue", "false")],
    )
    .await;
    st.subscribe("d", &format!("/amq/queue/{dead}"), "auto")
        .await;
    let m = st.message().await;
    assert_eq!(text(&m), "bad job");
    let x_death = m.header("x-death").expect("x-death as text");
    for part in ["rejected", work.as_str(), "count"] {
        assert!(x_death.contains(part), "{part} in {x_death}");
    }
    assert_eq!(m.header("x-first-death-reason"), Some("rejected"));
    assert_eq!(m.header("x-first-death-queue"), Some(work.as_str()));
}

#[tokio::test]
async fn stomp_send_with_x_delay_is_held_by_a_delayed_exchange_and_expiration_applies() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (ex, q) = (unique("stomp-delayed"), unique("stomp-delayed-q"));
    bounded(ch.exchange_declare(
        ex.as_str().into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        lapin::options::ExchangeDeclareOptions::default(),
        args(&[("x-delayed-type", longstr("direct"))]),
    ))
    .await
    .unwrap();
    declare(&ch, &q).await;
    bind(&ch, &q, &ex, "k").await;
    let mut st = StompClient::connect(b.stomp, "1.2").await;
    st.subscribe("s", &format!("/amq/queue/{q}"), "auto").await;
    let sent = Instant::now();
    st.send(
        &format!("/exchange/{ex}/k"),
        b"later",
        &[("x-delay", "150")],
    )
    .await;
    let m = st.message().await;
    assert_eq!(text(&m), "later");
    // Millisecond resolution: at most 1 ms of rounding.
    assert!(sent.elapsed() >= Duration::from_millis(149));

    let short = unique("stomp-ttl");
    declare(&ch, &short).await;
    st.send(
        &format!("/amq/queue/{short}"),
        b"stale",
        &[("expiration", "20")],
    )
    .await;
    let queue = b.broker().vhost("/").unwrap().queue(&short).unwrap();
    wait_until("the STOMP message expires", || queue.expired_count() == 1).await;
}

#[tokio::test]
async fn mqtt5_user_property_x_delay_is_held_when_mqtt_publishes_to_a_delayed_exchange() {
    let b = TestBroker::start_with(|c| c.mqtt.exchange = "mqtt.delayed".into()).await;
    let (_c, ch) = b.channel().await;
    bounded(ch.exchange_declare(
        "mqtt.delayed".into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        lapin::options::ExchangeDeclareOptions::default(),
        args(&[("x-delayed-type", longstr("topic"))]),
    ))
    .await
    .unwrap();
    let q = unique("mqtt-delayed-q");
    declare(&ch, &q).await;
    bind(&ch, &q, "mqtt.delayed", "jobs.#").await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, &unique("delay-pub"), true).await;
    let mut m = publish_packet("jobs/1", QoS::AtMostOnce, 0, b"later");
    m.properties.user_properties = vec![("x-delay".into(), "150".into())];
    let sent = Instant::now();
    p.send(&Packet::Publish(m)).await;
    let queue = b.broker().vhost("/").unwrap().queue(&q).unwrap();
    wait_until("the delayed MQTT message arrives", || {
        queue.stats().ready == 1
    })
    .await;
    // Millisecond resolution: at most 1 ms of rounding.
    assert!(sent.elapsed() >= Duration::from_millis(149));
}

#[tokio::test]
async fn mqtt5_publish_refused_by_a_full_queue_gets_quota_exceeded() {
    use lapin::types::AMQPValue;
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("full");
    let a = args(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", longstr("reject-publish")),
    ]);
    declare_with_args(&ch, &q, a).await;
    let topic = unique("capped");
    bind(&ch, &q, "amq.topic", &format!("{topic}.#")).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, &unique("capped-pub"), true).await;
    let mut codes = Vec::new();
    for id in [1, 2] {
        p.publish(&format!("{topic}/x"), QoS::AtLeastOnce, id, b"m")
            .await;
        match p.recv().await {
            Some(Packet::PubAck(ack)) => codes.push(ack.reason),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert_eq!(codes, [reason::SUCCESS, reason::QUOTA_EXCEEDED]);
}

/// 3.1.1 has no negative acknowledgement: the publisher is disconnected rather than told a
/// message no queue took is safe, and the queue keeps only what it took.
#[tokio::test]
async fn mqtt311_publish_refused_by_a_full_queue_disconnects_instead_of_acknowledging() {
    use lapin::types::AMQPValue;
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("full-v3");
    let a = args(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", longstr("reject-publish")),
    ]);
    declare_with_args(&ch, &q, a).await;
    let topic = unique("capped-v3");
    bind(&ch, &q, "amq.topic", &format!("{topic}.#")).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("capped-pub"), true).await;
    p.publish(&format!("{topic}/x"), QoS::AtLeastOnce, 1, b"kept")
        .await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubAck(_))),
        "the first publish is taken and acknowledged"
    );
    p.publish(&format!("{topic}/x"), QoS::AtLeastOnce, 2, b"refused")
        .await;
    assert_eq!(p.closed().await, None, "no PUBACK for the refused publish");
    let got = bounded(ch.basic_get(q.as_str().into(), Default::default()))
        .await
        .unwrap()
        .expect("the first message");
    assert_eq!(&got.delivery.data[..], b"kept");
}

#[tokio::test]
async fn stomp_send_refused_by_a_full_queue_gets_an_error() {
    use lapin::types::AMQPValue;
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("full-stomp");
    let a = args(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", longstr("reject-publish")),
    ]);
    declare_with_args(&ch, &q, a).await;
    let mut s = StompClient::connect(b.stomp, "1.2").await;
    let dest = format!("/amq/queue/{q}");
    s.send(&dest, b"first", &[]).await;
    let err = s
        .expect_error(
            switchboard_stomp::Frame::new(switchboard_stomp::Command::Send)
                .with("destination", dest.as_str())
                .with("receipt", "r-full")
                .with_body(b"second".to_vec()),
        )
        .await;
    assert_eq!(err.header("message"), Some("Message rejected"));
    assert!(text(&err).contains(&q), "{}", text(&err));
}
