//! Priority queues (`x-max-priority`), consumer priorities (`x-priority`) and single active
//! consumer (`x-single-active-consumer`) over AMQP with lapin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;

async fn publish_prio(ch: &lapin::Channel, q: &str, body: &str, priority: Option<u8>) {
    let mut props = BasicProperties::default();
    if let Some(p) = priority {
        props = props.with_priority(p);
    }
    publish_with(ch, "", q, body.as_bytes(), props).await;
}

#[tokio::test]
async fn higher_priority_first_fifo_within_a_priority() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("prio");
    declare_with_args(
        &ch,
        &q,
        args(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]),
    )
    .await;
    for (body, p) in [
        ("low-1", Some(1)),
        ("none", None),
        ("high-1", Some(9)),
        ("above-max", Some(200)),
        ("low-2", Some(1)),
        ("high-2", Some(9)),
    ] {
        publish_prio(&ch, &q, body, p).await;
    }
    // Above the max counts as the max: it comes right after the 9s published before it.
    assert_eq!(
        drain(&ch, &q).await,
        vec!["above-max", "high-1", "high-2", "low-1", "low-2", "none"]
    );
}

#[tokio::test]
async fn requeued_message_goes_back_to_its_place_in_its_level() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("prio-requeue");
    declare_with_args(&ch, &q, args(&[("x-max-priority", AMQPValue::LongInt(5))])).await;
    for (body, p) in [("a", 2), ("b", 5), ("c", 5), ("d", 2)] {
        publish_prio(&ch, &q, body, Some(p)).await;
    }
    let first = get(&ch, &q, false).await.expect("a message");
    assert_eq!(text(&first.delivery), "b");
    bounded(first.delivery.acker.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(drain(&ch, &q).await, vec!["b", "c", "a", "d"]);
}

#[tokio::test]
async fn max_priority_out_of_range_is_refused_in_rabbitmq_words() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("prio-bad");
    let r = bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        args(&[("x-max-priority", AMQPValue::LongInt(256))]),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        &format!(
            "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{max_value_exceeded,256}}"
        ),
    );
    drop(c);
}

async fn consume_prio(ch: &lapin::Channel, q: &str, priority: i32) -> lapin::Consumer {
    bounded(ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions::default(),
        args(&[("x-priority", AMQPValue::LongInt(priority))]),
    ))
    .await
    .expect("basic.consume")
}

#[tokio::test]
async fn consumer_priorities_lower_gets_only_what_higher_has_no_credit_for() {
    let b = TestBroker::start().await;
    let (_c1, high_ch) = b.channel().await;
    let (_c2, low_ch) = b.channel().await;
    let (_c3, pub_ch) = b.channel().await;
    let q = unique("consumer-prio");
    declare(&pub_ch, &q).await;
    bounded(high_ch.basic_qos(2, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut low = consume_prio(&low_ch, &q, -5).await;
    let mut high = consume_prio(&high_ch, &q, 10).await;
    for i in 0..5 {
        publish(&pub_ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let got_high: Vec<String> = next_n(&mut high, 2).await.iter().map(text).collect();
    assert_eq!(got_high, vec!["m0", "m1"]);
    let got_low: Vec<String> = next_n(&mut low, 3).await.iter().map(text).collect();
    assert_eq!(got_low, vec!["m2", "m3", "m4"]);
    assert_quiet(&mut high).await;
}

#[tokio::test]
async fn single_active_consumer_hands_over_in_registration_order() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("sac");
    declare_with_args(
        &ch,
        &q,
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let mut first = consume_with(&ch, &q, "first", BasicConsumeOptions::default()).await;
    let mut second = consume_with(&ch, &q, "second", BasicConsumeOptions::default()).await;
    let mut third = consume_with(&ch, &q, "third", BasicConsumeOptions::default()).await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("a{i}").as_bytes()).await;
    }
    for d in next_n(&mut first, 3).await {
        ack(&d).await;
    }
    assert_quiet(&mut second).await;
    bounded(ch.basic_cancel("first".into(), BasicCancelOptions::default()))
        .await
        .unwrap();
    publish(&ch, "", &q, b"b0").await;
    let d = next(&mut second).await;
    assert_eq!(text(&d), "b0");
    ack(&d).await;
    assert_quiet(&mut third).await;
}
