//! The retained store's own limits (count and bytes over all vhosts) and its memory charge:
//! a v5 QoS 1/2 publish beyond a limit gets PUBACK/PUBREC 0x97 and is not routed; a v3 client
//! or a QoS 0 publish is disconnected; replacing or clearing a topic's message always works.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::mqtt::*;
use common::*;
use switchboard_mqtt::*;

fn retained(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Packet {
    let mut p = publish_packet(topic, qos, id, payload);
    p.retain = true;
    Packet::Publish(p)
}

/// Sends a retained QoS 1 publish and returns its PUBACK's reason code.
async fn retain_qos1(c: &mut RawMqtt, topic: &str, id: u16, payload: &[u8]) -> u8 {
    c.send(&retained(topic, QoS::AtLeastOnce, id, payload))
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn count_limit_refuses_new_topics_with_quota_exceeded_and_routes_nothing() {
    let b = TestBroker::start_with(|c| c.mqtt.retained_max_messages = 2).await;
    let mut watcher = RawMqtt::connect(b.mqtt, Protocol::V5, "rl-watch", true).await;
    watcher.subscribe("rl/#", QoS::AtLeastOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "rl-pub", true).await;
    assert_eq!(retain_qos1(&mut p, "rl/a", 1, b"a1").await, reason::SUCCESS);
    assert_eq!(retain_qos1(&mut p, "rl/b", 2, b"b1").await, reason::SUCCESS);
    assert_eq!(
        retain_qos1(&mut p, "rl/c", 3, b"c1").await,
        reason::QUOTA_EXCEEDED
    );
    // QoS 2 is refused in its PUBREC, and that ends the flow.
    p.send(&retained("rl/c", QoS::ExactlyOnce, 4, b"c2")).await;
    match p.recv().await {
        Some(Packet::PubRec(r)) => assert_eq!(r.reason, reason::QUOTA_EXCEEDED),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // Replacing and clearing kept topics is always accepted.
    assert_eq!(retain_qos1(&mut p, "rl/a", 5, b"a2").await, reason::SUCCESS);
    assert_eq!(retain_qos1(&mut p, "rl/b", 6, b"").await, reason::SUCCESS);
    assert_eq!(retain_qos1(&mut p, "rl/c", 7, b"c3").await, reason::SUCCESS);
    // The watcher saw every accepted publish and no refused one.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let m = watcher.next_publish().await;
        watcher
            .send(&Packet::PubAck(PubResponse::new(
                m.packet_id.expect("QoS 1"),
            )))
            .await;
        seen.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(seen, ["a1", "b1", "a2", "", "c3"]);
    watcher.expect_nothing_pending().await;
    // A new subscriber gets the two kept messages.
    let mut late = RawMqtt::connect(b.mqtt, Protocol::V5, "rl-late", true).await;
    late.subscribe("rl/#", QoS::AtMostOnce).await;
    let got = [late.next_publish().await, late.next_publish().await];
    assert_eq!(
        got.map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
        ["a2", "c3"]
    );
    late.expect_nothing_pending().await;
    // QoS 0 has no acknowledgement to refuse in: DISCONNECT 0x97.
    p.send(&retained("rl/d", QoS::AtMostOnce, 0, b"d")).await;
    match p.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::QUOTA_EXCEEDED),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn byte_limit_refuses_v5_and_disconnects_v3() {
    let b = TestBroker::start_with(|c| c.mqtt.retained_max_bytes = 64 * 1024).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "rb-pub", true).await;
    let big = vec![b'x'; 40 * 1024];
    assert_eq!(
        retain_qos1(&mut p, "rb/1", 1, &big).await,
        reason::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        retain_qos1(&mut p, "rb/2", 2, &big).await,
        reason::QUOTA_EXCEEDED
    );
    assert_eq!(
        retain_qos1(&mut p, "rb/2", 3, b"small").await,
        reason::NO_MATCHING_SUBSCRIBERS
    );
    // A 3.1.1 client cannot be told in its PUBACK: it is disconnected, and nothing is kept.
    let mut v3 = RawMqtt::connect(b.mqtt, Protocol::V311, "rb-v3", true).await;
    v3.send(&retained("rb/3", QoS::AtLeastOnce, 1, &big)).await;
    assert_eq!(v3.closed().await, None, "closed without a PUBACK");
    let mut late = RawMqtt::connect(b.mqtt, Protocol::V5, "rb-late", true).await;
    late.subscribe("rb/#", QoS::AtMostOnce).await;
    let topics = [
        late.next_publish().await.topic,
        late.next_publish().await.topic,
    ];
    assert_eq!(topics, ["rb/1", "rb/2"]);
    late.expect_nothing_pending().await;
    b.stop().await;
}

#[tokio::test]
async fn retained_messages_are_charged_to_the_memory_monitor_until_cleared() {
    let b = TestBroker::start().await;
    let memory = b.broker().memory.clone();
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V5, "rm-pub", true).await;
    let body = vec![b'm'; 1 << 20];
    let before = memory.used();
    for (i, topic) in ["rm/1", "rm/2", "rm/3"].into_iter().enumerate() {
        retain_qos1(&mut p, topic, i as u16 + 1, &body).await;
    }
    // Routed copies are gone once no queue holds them; the retained ones stay counted.
    wait_until("three retained MiB counted", || {
        let used = memory.used();
        used >= before + (3 << 20) && used < before + (4 << 20)
    })
    .await;
    for (i, topic) in ["rm/1", "rm/2", "rm/3"].into_iter().enumerate() {
        retain_qos1(&mut p, topic, i as u16 + 10, b"").await;
    }
    wait_until("the charge released", || memory.used() < before + (1 << 20)).await;
    b.stop().await;
}
