//! Publisher flow control (`mqtt.flow_backlog`): a QoS 1 publisher is not read while the
//! queue it publishes to is too far behind, resumes once the consumer catches up, loses
//! nothing, and never waits for ever (its own queue, two clients publishing to each other, a
//! consumer that never reads). The broker runs on a manual clock, so no hold runs out unless
//! the test moves the clock.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use bytes::BytesMut;
use common::mqtt::*;
use common::*;
use switchboard_mqtt::{encode, Packet, Protocol, PubResponse, QoS};
use tokio::net::TcpStream;

const BOUND: usize = 20;
const MESSAGES: u16 = 300;

async fn broker() -> (
    TestBroker,
    std::sync::Arc<switchboard::core::clock::ManualClock>,
) {
    TestBroker::start_with_on_manual_clock(|c| c.mqtt.flow_backlog = BOUND).await
}

/// Whether the connection of MQTT client `id` is held back by flow control.
fn in_flow(b: &TestBroker, id: &str) -> bool {
    b.broker().connections().iter().any(|c| {
        *c.client_id.lock().unwrap() == id && c.in_flow.load(std::sync::atomic::Ordering::Relaxed)
    })
}

/// The ready messages of client `id`'s session queue.
fn backlog(b: &TestBroker, id: &str) -> u32 {
    let vhost = b.broker().vhost("/").unwrap();
    vhost
        .queue(&format!("mqtt-subscription-{id}"))
        .map_or(0, |q| q.message_count())
}

/// `MESSAGES` QoS 1 publishes to `topic` (packet ids 1..), written in one go, payloads their
/// sequence numbers.
async fn publish_all(c: &mut RawMqtt<TcpStream>, topic: &str) {
    let mut out = BytesMut::new();
    for i in 1..=MESSAGES {
        let p = publish_packet(topic, QoS::AtLeastOnce, i, i.to_string().as_bytes());
        encode(&Packet::Publish(p), Protocol::V311, &mut out).unwrap();
    }
    c.send_bytes(&out).await;
}

/// Reads until `MESSAGES` deliveries (each acknowledged) and `MESSAGES` PUBACKs for
/// `acks_expected` publishes arrived; the delivered payloads in order.
async fn read_and_ack(c: &mut RawMqtt<TcpStream>, acks_expected: usize) -> (Vec<String>, usize) {
    let mut got = Vec::new();
    let mut acks = 0;
    while got.len() < usize::from(MESSAGES) || acks < acks_expected {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                let id = p.packet_id.unwrap();
                c.send(&Packet::PubAck(PubResponse::new(id))).await;
            }
            Some(Packet::PubAck(_)) => acks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, acks)
}

fn in_order() -> Vec<String> {
    (1..=MESSAGES).map(|i| i.to_string()).collect()
}

/// A subscriber `sub` to `topic` that reads nothing, and a publisher `publisher` that sent it
/// `MESSAGES` and is held back: 32 went in flight (`max_inflight`), the rest queued up.
async fn held_publisher(
    b: &TestBroker,
    sub: &str,
    clean: bool,
    publisher: &str,
    topic: &str,
) -> (RawMqtt<TcpStream>, RawMqtt<TcpStream>) {
    let mut s = RawMqtt::connect(b.mqtt, Protocol::V311, sub, clean).await;
    s.subscribe(topic, QoS::AtLeastOnce).await;
    let mut p = RawMqtt::connect(b.mqtt, Protocol::V311, publisher, true).await;
    publish_all(&mut p, topic).await;
    bounded(wait_until("the publisher held back", || {
        in_flow(b, publisher)
    }))
    .await;
    (s, p)
}

/// Reads PUBACKs until `total` have arrived, counting from `acks`.
async fn acks_up_to(c: &mut RawMqtt<TcpStream>, mut acks: usize, total: usize) -> usize {
    while acks < total {
        match c.recv().await {
            Some(Packet::PubAck(_)) => acks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    acks
}

#[tokio::test]
async fn a_publisher_is_held_back_while_its_subscriber_does_not_read_and_resumes_when_it_does() {
    let (b, _clock) = broker().await;
    let (mut sub, mut publisher) = held_publisher(&b, "flow-sub", true, "flow-pub", "flow/t").await;
    // Held back just past the bound: the rest of what it sent waits unread.
    let queued = backlog(&b, "flow-sub") as usize;
    assert!(
        (BOUND..BOUND + 5).contains(&queued),
        "{queued} ready, bound {BOUND}"
    );
    let mut acks = acks_up_to(&mut publisher, 0, queued + 32).await;
    // Every publish routed was acknowledged, and no more were routed meanwhile.
    assert!(in_flow(&b, "flow-pub"));
    assert_eq!(backlog(&b, "flow-sub") as usize, queued);
    assert!(acks < usize::from(MESSAGES));

    // The subscriber reads: the publisher resumes, and everything arrives once, in order.
    let (got, _) = read_and_ack(&mut sub, 0).await;
    assert_eq!(got, in_order());
    acks = acks_up_to(&mut publisher, acks, usize::from(MESSAGES)).await;
    assert_eq!(acks, usize::from(MESSAGES));
    assert!(!in_flow(&b, "flow-pub"));
    publisher.expect_nothing_pending().await;
    sub.expect_nothing_pending().await;
    b.stop().await;
}

#[tokio::test]
async fn a_client_publishing_to_its_own_subscription_is_not_held_back() {
    let (b, _clock) = broker().await;
    let mut c = RawMqtt::connect(b.mqtt, Protocol::V311, "flow-self", true).await;
    c.subscribe("self/t", QoS::AtLeastOnce).await;
    // Its own queue fills past the bound while it does not read; holding it back would stop
    // the acknowledgements that drain that queue.
    publish_all(&mut c, "self/t").await;
    let (got, acks) = read_and_ack(&mut c, usize::from(MESSAGES)).await;
    assert_eq!(got, in_order());
    assert_eq!(acks, usize::from(MESSAGES));
    b.stop().await;
}

#[tokio::test]
async fn two_clients_publishing_into_each_others_queues_both_finish() {
    let (b, _clock) = broker().await;
    let mut x = RawMqtt::connect(b.mqtt, Protocol::V311, "flow-x", true).await;
    x.subscribe("to/x", QoS::AtLeastOnce).await;
    let mut y = RawMqtt::connect(b.mqtt, Protocol::V311, "flow-y", true).await;
    y.subscribe("to/y", QoS::AtLeastOnce).await;
    // Both fill the other's queue before reading anything: if both were held back, each
    // would wait for the other to read its acknowledgements.
    publish_all(&mut x, "to/y").await;
    publish_all(&mut y, "to/x").await;
    let n = usize::from(MESSAGES);
    let (gx, gy) = tokio::join!(
        bounded(read_and_ack(&mut x, n)),
        bounded(read_and_ack(&mut y, n))
    );
    assert_eq!((gx.0, gx.1), (in_order(), n));
    assert_eq!((gy.0, gy.1), (in_order(), n));
    b.stop().await;
}

#[tokio::test]
async fn a_hold_runs_out_when_the_consumer_never_reads() {
    let (b, clock) = broker().await;
    let (mut sub, mut publisher) =
        held_publisher(&b, "flow-stuck", true, "flow-waits", "stuck/t").await;
    let queued = backlog(&b, "flow-stuck") as usize;
    assert!(queued < usize::from(MESSAGES) - 32);
    // The subscriber never reads, but a hold lasts a second at most: what the publisher sent
    // is then read and routed.
    bounded(wait_until("the rest routed", || {
        if in_flow(&b, "flow-waits") {
            b.advance(&clock, 1_500);
        }
        backlog(&b, "flow-stuck") as usize == usize::from(MESSAGES) - 32
    }))
    .await;
    acks_up_to(&mut publisher, 0, usize::from(MESSAGES)).await;
    let (got, _) = read_and_ack(&mut sub, 0).await;
    assert_eq!(got, in_order());
    b.stop().await;
}

#[tokio::test]
async fn a_held_publisher_resumes_when_its_consumer_goes() {
    let (b, _clock) = broker().await;
    let (sub, mut publisher) =
        held_publisher(&b, "flow-leaves", false, "flow-stays", "leaves/t").await;
    // Nobody drains the persistent session's queue now: it keeps the messages (up to
    // `max_offline_messages`), and the publisher goes on.
    drop(sub);
    acks_up_to(&mut publisher, 0, usize::from(MESSAGES)).await;
    assert!(!in_flow(&b, "flow-stays"));
    b.stop().await;
}
