//! Message TTL (`x-message-ttl`, the `expiration` property), TTL 0 and queue expiry
//! (`x-expires`) over AMQP with lapin, with short real delays and bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use std::sync::Arc;
use switchboard::core::Queue;

fn find_queue(b: &TestBroker, name: &str) -> Option<Arc<Queue>> {
    b.broker().vhost("/").expect("vhost /").queue(name)
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

#[tokio::test]
async fn expired_messages_are_removed_from_the_head_without_a_consumer_and_counted() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ttl");
    declare_with_args(&ch, &q, args(&[("x-message-ttl", AMQPValue::LongInt(100))])).await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let queue = find_queue(&b, &q).expect("queue");
    // Nobody consumes or gets: only the broker's timer can remove them. (Waiting for the
    // count, not an empty queue: unconfirmed publishes may not have arrived yet.)
    wait_until("the messages expire", || {
        queue.expired_count() == 3 && queue.stats().ready == 0
    })
    .await;
    assert_eq!(queue.expired_count(), 3);
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test]
async fn the_lower_of_queue_and_message_ttl_wins() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ttl-lower");
    declare_with_args(
        &ch,
        &q,
        args(&[("x-message-ttl", AMQPValue::LongInt(60_000))]),
    )
    .await;
    publish_with(&ch, "", &q, b"short", expiring("50")).await;
    publish(&ch, "", &q, b"long").await;
    let queue = find_queue(&b, &q).expect("queue");
    wait_until("the short one expires", || queue.expired_count() == 1).await;
    assert_eq!(drain(&ch, &q).await, vec!["long"]);
    // A message TTL longer than the queue's does not extend it.
    let q2 = unique("ttl-queue-wins");
    declare_with_args(&ch, &q2, args(&[("x-message-ttl", AMQPValue::LongInt(50))])).await;
    publish_with(&ch, "", &q2, b"x", expiring("60000")).await;
    let queue2 = find_queue(&b, &q2).expect("queue");
    wait_until("the queue TTL applies", || queue2.expired_count() == 1).await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered_to_a_consumer_that_was_busy() {
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ttl-busy");
    declare(&ch, &q).await;
    bounded(ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&ch, &q, false).await;
    publish(&ch, "", &q, b"first").await;
    publish_with(&ch, "", &q, b"stale", expiring("30")).await;
    publish(&ch, "", &q, b"fresh").await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "first");
    let queue = find_queue(&b, &q).expect("queue");
    // "first" can reach the consumer before the broker has read the next two publishes; the
    // clock must move only once "stale" is queued with its deadline.
    wait_until("stale and fresh queued", || queue.message_count() == 2).await;
    // While the consumer has no credit "stale" passes its TTL on the broker's clock; it must
    // not be delivered when credit returns.
    b.advance(&clock, 40);
    ack(&d).await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "fresh");
    assert_eq!(queue.expired_count(), 1);
}

#[tokio::test]
async fn ttl_zero_delivers_to_a_waiting_consumer_or_expires() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ttl-zero");
    declare_with_args(&ch, &q, args(&[("x-message-ttl", AMQPValue::LongInt(0))])).await;
    publish(&ch, "", &q, b"nobody").await;
    assert_eq!(ready_count(&ch, &q).await, 0);
    let mut consumer = consume(&ch, &q, true).await;
    publish(&ch, "", &q, b"taken").await;
    assert_eq!(text(&next(&mut consumer).await), "taken");
    assert_eq!(find_queue(&b, &q).expect("queue").expired_count(), 1);
}

#[tokio::test]
async fn bad_ttl_values_are_refused_in_rabbitmq_words() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("ttl-bad");
    let r = bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        args(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        &format!("invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
    );
    let ch = bounded(c.create_channel()).await.unwrap();
    let q = unique("ttl-bad-expiration");
    declare(&ch, &q).await;
    let text = provoke(&c, 406, publish_doomed(&ch, "", &q, b"x", expiring("soon"))).await;
    assert!(text.contains("invalid expiration 'soon'"), "{text}");
}

#[tokio::test]
async fn unused_queue_is_deleted_after_x_expires() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let idle = unique("expires");
    let used = unique("expires-used");
    let expires = args(&[("x-expires", AMQPValue::LongInt(150))]);
    declare_with_args(&ch, &idle, expires.clone()).await;
    declare_with_args(&ch, &used, expires.clone()).await;
    publish(&ch, "", &idle, b"even with messages").await;
    let mut consumer = consume(&ch, &used, true).await;
    wait_until("the idle queue expires", || find_queue(&b, &idle).is_none()).await;
    // The consumed one outlives it.
    assert!(find_queue(&b, &used).is_some());
    publish(&ch, "", &used, b"still here").await;
    assert_eq!(text(&next(&mut consumer).await), "still here");
}
