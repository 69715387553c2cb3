//! MQTT 5 extras over a raw socket: topic aliases both ways, Maximum Packet Size when sending,
//! Payload Format Indicator checks, No Local, Retain Handling, Retain As Published, SUBACK
//! failure codes, Request Problem Information, shared subscriptions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::mqtt::*;
use common::*;
use switchboard_mqtt::*;

fn sub(filter: &str, qos: QoS) -> Subscription {
    Subscription {
        filter: filter.into(),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn topic_aliases_both_ways() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "alias-sub", true);
    c.properties.topic_alias_maximum = Some(2);
    let (mut s, ack) = RawMqtt::connect_with(b.mqtt, c).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(16));
    s.subscribe("al/#", QoS::AtMostOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "alias-pub", true).await;
    // Inbound: set alias 1, then use it with an empty topic.
    let mut first = publish_packet("al/long/topic", QoS::AtMostOnce, 0, b"1");
    first.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(first)).await;
    let mut second = publish_packet("", QoS::AtMostOnce, 0, b"2");
    second.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(second)).await;
    // Outbound: the first message sets an alias, the second uses it.
    let m1 = s.next_publish().await;
    assert_eq!(m1.topic, "al/long/topic");
    let alias = m1.properties.topic_alias.expect("alias set");
    let m2 = s.next_publish().await;
    assert_eq!(
        (m2.topic.as_str(), m2.properties.topic_alias),
        ("", Some(alias))
    );
    assert_eq!(&m2.payload[..], b"2");
    // An unknown alias with an empty topic is a protocol error; alias 0 is invalid.
    let mut bad = publish_packet("", QoS::AtMostOnce, 0, b"x");
    bad.properties.topic_alias = Some(2);
    p.send(&Packet::Publish(bad)).await;
    match p.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::PROTOCOL_ERROR),
        other => panic!("{other:?}"),
    }
    // A client may not send a Subscription Identifier in PUBLISH.
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "alias-subid", true).await;
    let mut with_id = publish_packet("al/x", QoS::AtMostOnce, 0, b"x");
    with_id.properties.subscription_identifiers = vec![3];
    p.send(&Packet::Publish(with_id)).await;
    match p.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::PROTOCOL_ERROR),
        other => panic!("{other:?}"),
    }
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "alias-pub2", true).await;
    let mut zero = publish_packet("al/x", QoS::AtMostOnce, 0, b"x");
    zero.properties.topic_alias = Some(0);
    p.send(&Packet::Publish(zero)).await;
    match p.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::TOPIC_ALIAS_INVALID),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn maximum_packet_size_is_honoured_when_sending() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "small", true);
    c.properties.maximum_packet_size = Some(64);
    let (mut s, _) = RawMqtt::connect_with(b.mqtt, c).await;
    s.subscribe("mp", QoS::AtLeastOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "small-pub", true).await;
    p.publish("mp", QoS::AtLeastOnce, 1, &[b'x'; 200]).await;
    p.publish("mp", QoS::AtLeastOnce, 2, b"fits").await;
    let m = s.next_publish().await;
    assert_eq!(&m.payload[..], b"fits");
    b.stop().await;
}

#[tokio::test]
async fn payload_format_indicator_checks_utf8() {
    let b = TestBroker::start().await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "pfi", true).await;
    let mut bad = publish_packet("pfi", QoS::AtLeastOnce, 3, &[0xff, 0xfe]);
    bad.properties.payload_format_indicator = Some(1);
    p.send(&Packet::Publish(bad)).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, reason::PAYLOAD_FORMAT_INVALID),
        other => panic!("{other:?}"),
    }
    let mut bad0 = publish_packet("pfi", QoS::AtMostOnce, 0, &[0xff]);
    bad0.properties.payload_format_indicator = Some(1);
    p.send(&Packet::Publish(bad0)).await;
    match p.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::PAYLOAD_FORMAT_INVALID),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn no_local_and_no_matching_subscribers() {
    let b = TestBroker::start().await;
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V5, "nolocal", true).await;
    let mut s = sub("nl", QoS::AtLeastOnce);
    s.options.no_local = true;
    c.subscribe_with(1, vec![s], Properties::default()).await;
    c.publish("nl", QoS::AtLeastOnce, 5, b"mine").await;
    // Routed to our own queue, so it matched; but we do not get it back.
    assert_eq!(c.recv().await, Some(Packet::PubAck(PubResponse::new(5))));
    c.expect_nothing_pending().await;
    let mut other = RawMqtt::connect(b.mqtt, Protocol::V5, "nolocal-other", true).await;
    other.publish("nl", QoS::AtMostOnce, 0, b"theirs").await;
    assert_eq!(&c.next_publish().await.payload[..], b"theirs");
    // No subscriber at all: v5 PUBACK 0x10.
    other
        .publish("nobody/here", QoS::AtLeastOnce, 6, b"x")
        .await;
    match other.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, reason::NO_MATCHING_SUBSCRIBERS),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    let b = TestBroker::start().await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "rh-pub", true).await;
    let mut r = publish_packet("rh/t", QoS::AtLeastOnce, 1, b"kept");
    r.retain = true;
    p.send(&Packet::Publish(r.clone())).await;
    p.recv().await;
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V5, "rh-sub", true).await;
    // 2: never send retained.
    let mut s2 = sub("rh/#", QoS::AtLeastOnce);
    s2.options.retain_handling = 2;
    c.subscribe_with(1, vec![s2], Properties::default()).await;
    c.expect_nothing_pending().await;
    // 1: only for a new subscription: "rh/#" exists, "rh/+" is new.
    let mut s1 = sub("rh/#", QoS::AtLeastOnce);
    s1.options.retain_handling = 1;
    let mut s1new = sub("rh/+", QoS::AtLeastOnce);
    s1new.options.retain_handling = 1;
    s1new.options.retain_as_published = true;
    c.subscribe_with(2, vec![s1, s1new], Properties::default())
        .await;
    let m = c.next_publish().await;
    assert!(m.retain);
    c.send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
        .await;
    c.expect_nothing_pending().await;
    // Retain As Published on "rh/+": a live retained publish keeps its flag.
    r.packet_id = Some(2);
    p.send(&Packet::Publish(r)).await;
    let m = c.next_publish().await;
    assert!(m.retain);
    b.stop().await;
}

#[tokio::test]
async fn suback_failure_codes_for_refused_filters() {
    let b = TestBroker::start_with(|c| c.mqtt.max_topic_levels = 3).await;
    let mut c5 = RawMqtt::connect(b.mqtt, Protocol::V5, "fail5", true).await;
    let a = c5
        .subscribe_with(
            1,
            vec![
                sub("ok/+", QoS::ExactlyOnce),
                sub("a/#/b", QoS::AtMostOnce),
                sub("a+", QoS::AtMostOnce),
                sub("a/b/c/d", QoS::AtMostOnce),
                sub("$share//x", QoS::AtMostOnce),
                sub("$share/g/a/#/b", QoS::AtMostOnce),
            ],
            Properties::default(),
        )
        .await;
    assert_eq!(
        a.codes,
        vec![
            2,
            reason::TOPIC_FILTER_INVALID,
            reason::TOPIC_FILTER_INVALID,
            reason::TOPIC_FILTER_INVALID,
            reason::TOPIC_FILTER_INVALID,
            reason::TOPIC_FILTER_INVALID
        ]
    );
    let mut c3 = RawMqtt::connect(b.mqtt, Protocol::V311, "fail3", true).await;
    let a = c3
        .subscribe_with(
            1,
            vec![sub("ok", QoS::AtLeastOnce), sub("x/#/y", QoS::AtMostOnce)],
            Properties::default(),
        )
        .await;
    assert_eq!(a.codes, vec![1, reason::V3_SUBACK_FAILURE]);
    // Topics over the level limit are refused too.
    c3.publish("a/b/c/d", QoS::AtMostOnce, 0, b"x").await;
    assert_eq!(c3.closed().await, None);
    b.stop().await;
}

#[tokio::test]
async fn request_problem_information_zero_hides_reason_strings() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "rpi", true);
    c.properties.request_problem_information = Some(0);
    let (mut conn, _) = RawMqtt::connect_with(b.mqtt, c).await;
    conn.send_bytes(&[0xc1, 0]).await;
    match conn.closed().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, reason::MALFORMED_PACKET);
            assert!(d.properties.reason_string.is_none());
        }
        other => panic!("{other:?}"),
    }
    let (mut conn, _) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V5, "rpi2", true)).await;
    conn.send_bytes(&[0xc1, 0]).await;
    match conn.closed().await {
        Some(Packet::Disconnect(d)) => assert!(d.properties.reason_string.is_some()),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn shared_subscriptions_load_balance_across_members() {
    let b = TestBroker::start().await;
    let mut m1 = RawMqtt::connect(b.mqtt, Protocol::V5, "share-1", true).await;
    let mut m2 = RawMqtt::connect(b.mqtt, Protocol::V311, "share-2", true).await;
    let mut plain = RawMqtt::connect(b.mqtt, Protocol::V5, "share-plain", true).await;
    assert_eq!(
        m1.subscribe("$share/grp/jobs/+", QoS::AtLeastOnce)
            .await
            .codes,
        vec![1]
    );
    assert_eq!(
        m2.subscribe("$share/grp/jobs/+", QoS::AtMostOnce)
            .await
            .codes,
        vec![0]
    );
    plain.subscribe("jobs/+", QoS::AtMostOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "share-pub", true).await;
    for i in 0..10u8 {
        p.publish("jobs/x", QoS::AtMostOnce, 0, &[i]).await;
    }
    // Every message reaches the group once, and the plain subscriber too.
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(plain.next_publish().await.payload[0]);
    }
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    let mut group = Vec::new();
    for _ in 0..5 {
        let m = m1.next_publish().await;
        assert_eq!(m.topic, "jobs/x");
        group.push(m.payload[0]);
    }
    for _ in 0..5 {
        group.push(m2.next_publish().await.payload[0]);
    }
    group.sort_unstable();
    assert_eq!(group, (0..10).collect::<Vec<u8>>());
    m1.expect_nothing_pending().await;
    m2.expect_nothing_pending().await;
    // A member that leaves stops getting its share; the other takes everything.
    m2.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Properties::default(),
        filters: vec!["$share/grp/jobs/+".into()],
    }))
    .await;
    assert!(matches!(m2.recv().await, Some(Packet::UnsubAck(_))));
    for i in 0..4u8 {
        p.publish("jobs/y", QoS::AtMostOnce, 0, &[i]).await;
    }
    for i in 0..4u8 {
        assert_eq!(m1.next_publish().await.payload[0], i);
    }
    m2.expect_nothing_pending().await;
    // The last member out removes the group's queue.
    drop(m1);
    let vh = b.broker().vhost("/").unwrap();
    wait_until("group queue deleted", || {
        vh.queue("mqtt-shared-grp/jobs/+").is_none()
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_shared_group_whose_queue_is_deleted_under_a_member_is_made_again() {
    let b = TestBroker::start().await;
    let mut member = RawMqtt::connect(b.mqtt, Protocol::V5, "regroup-1", true).await;
    assert_eq!(
        member
            .subscribe("$share/regroup/rg/+", QoS::AtMostOnce)
            .await
            .codes,
        vec![0]
    );
    let vh = b.broker().vhost("/").unwrap();
    let queue = "mqtt-shared-regroup/rg/+";
    let first = vh.queue(queue).expect("the group's queue");
    // Deleted under the member (as when its last other member, on another node, leaves as
    // this one joins): the member stays connected and the group's queue is made again.
    let (_c, ch) = b.channel().await;
    bounded(ch.queue_delete(queue.into(), Default::default()))
        .await
        .expect("queue.delete");
    wait_until("the group's queue made again, consumed", || {
        vh.queue(queue)
            .is_some_and(|q| !std::sync::Arc::ptr_eq(&q, &first) && q.consumer_count() == 1)
    })
    .await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "regroup-pub", true).await;
    p.publish("rg/x", QoS::AtMostOnce, 0, b"still a member")
        .await;
    assert_eq!(&member.next_publish().await.payload[..], b"still a member");
    b.stop().await;
}

#[tokio::test]
async fn retained_messages_expire() {
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "rexp-pub", true).await;
    for (topic, expiry, id) in [("rexp/short", 1, 1), ("rexp/long", 100, 2)] {
        let mut m = publish_packet(topic, QoS::AtLeastOnce, id, topic.as_bytes());
        m.retain = true;
        m.properties.message_expiry_interval = Some(expiry);
        p.send(&Packet::Publish(m)).await;
        p.recv().await;
    }
    // The expiry is the input here: move the broker's clock past the short one's second.
    b.advance(&clock, 2100);
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V5, "rexp-sub", true).await;
    c.subscribe("rexp/#", QoS::AtLeastOnce).await;
    let m = c.next_publish().await;
    assert_eq!(m.topic, "rexp/long");
    assert!(m.properties.message_expiry_interval.unwrap() < 100);
    c.send(&Packet::PubAck(PubResponse::new(m.packet_id.unwrap())))
        .await;
    c.expect_nothing_pending().await;
    b.stop().await;
}
