//! Dead-lettering over AMQP with lapin: reject/nack without requeue, expiry and length limits
//! republish to `x-dead-letter-exchange` with the `x-death` history RabbitMQ writes; retry with
//! back-off through a TTL queue; dead letters of persistent messages survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use std::collections::BTreeMap;

/// A header table as text keys and values, for assertions.
fn table(t: &FieldTable) -> BTreeMap<String, AMQPValue> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn headers(d: &lapin::message::Delivery) -> BTreeMap<String, AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .map(table)
        .unwrap_or_default()
}

fn x_death(d: &lapin::message::Delivery) -> Vec<BTreeMap<String, AMQPValue>> {
    match headers(d).get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(table(t)),
                _ => None,
            })
            .collect(),
        other => panic!("no x-death array: {other:?}"),
    }
}

async fn nack(d: &lapin::message::Delivery, multiple: bool) {
    bounded(d.acker.nack(BasicNackOptions {
        multiple,
        requeue: false,
    }))
    .await
    .expect("basic.nack");
}

#[tokio::test]
async fn rejected_message_carries_x_death_as_rabbitmq_writes_it() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (work, dead, dlx) = (unique("work"), unique("dead"), unique("dlx"));
    declare_exchange(&ch, &dlx, ExchangeKind::Direct).await;
    declare(&ch, &dead).await;
    bind(&ch, &dead, &dlx, "failed").await;
    declare_with_args(
        &ch,
        &work,
        args(&[
            ("x-dead-letter-exchange", longstr(&dlx)),
            ("x-dead-letter-routing-key", longstr("failed")),
        ]),
    )
    .await;
    let props = BasicProperties::default()
        .with_expiration("60000".into())
        .with_message_id("id-1".into());
    bind(&ch, &work, "amq.direct", "orders").await;
    publish_with(&ch, "amq.direct", "orders", b"order", props).await;
    let got = get(&ch, &work, false).await.expect("the order");
    bounded(
        got.delivery
            .acker
            .reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    let mut c = consume(&ch, &dead, true).await;
    let d = next(&mut c).await;
    assert_eq!(text(&d), "order");
    assert_eq!(d.exchange.as_str(), dlx);
    assert_eq!(d.routing_key.as_str(), "failed");
    assert_eq!(d.properties.expiration(), &None, "expiration is removed");
    assert_eq!(
        d.properties.message_id().as_ref().map(|m| m.as_str()),
        Some("id-1")
    );
    let x = x_death(&d);
    assert_eq!(x.len(), 1);
    let e = &x[0];
    assert_eq!(e["count"], AMQPValue::LongLongInt(1));
    assert_eq!(e["reason"], longstr("rejected"));
    assert_eq!(e["queue"], longstr(&work));
    assert_eq!(e["exchange"], longstr("amq.direct"));
    assert_eq!(e["original-expiration"], longstr("60000"));
    let AMQPValue::FieldArray(keys) = &e["routing-keys"] else {
        panic!("routing-keys is not an array: {:?}", e["routing-keys"]);
    };
    assert_eq!(keys.as_slice(), &[longstr("orders")]);
    assert!(matches!(e["time"], AMQPValue::Timestamp(t) if t > 1_600_000_000));
    let h = headers(&d);
    assert_eq!(h["x-first-death-reason"], longstr("rejected"));
    assert_eq!(h["x-first-death-queue"], longstr(&work));
    assert_eq!(h["x-first-death-exchange"], longstr("amq.direct"));
    assert_eq!(h["x-last-death-reason"], longstr("rejected"));
    assert_eq!(h["x-last-death-queue"], longstr(&work));
}

#[tokio::test]
async fn nack_multiple_expiry_and_drop_head_all_dead_letter_with_their_reason() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (dead, dlx) = (unique("dead"), unique("dlx"));
    declare_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
    declare(&ch, &dead).await;
    bind(&ch, &dead, &dlx, "").await;
    let dl = ("x-dead-letter-exchange", longstr(&dlx));
    let nacked = unique("nacked");
    declare_with_args(&ch, &nacked, args(std::slice::from_ref(&dl))).await;
    let expiring = unique("expiring");
    declare_with_args(
        &ch,
        &expiring,
        args(&[dl.clone(), ("x-message-ttl", AMQPValue::LongInt(20))]),
    )
    .await;
    let short = unique("short");
    declare_with_args(
        &ch,
        &short,
        args(&[dl.clone(), ("x-max-length", AMQPValue::LongInt(1))]),
    )
    .await;
    let mut c = consume(&ch, &nacked, false).await;
    publish(&ch, "", &nacked, b"n1").await;
    publish(&ch, "", &nacked, b"n2").await;
    let ds = next_n(&mut c, 2).await;
    nack(&ds[1], true).await;
    let mut deadc = consume(&ch, &dead, true).await;
    let mut reasons = Vec::new();
    for d in next_n(&mut deadc, 2).await {
        reasons.push((text(&d), x_death(&d)[0]["reason"].clone()));
    }
    publish(&ch, "", &expiring, b"e1").await;
    let d = next(&mut deadc).await;
    reasons.push((text(&d), x_death(&d)[0]["reason"].clone()));
    publish(&ch, "", &short, b"s1").await;
    publish(&ch, "", &short, b"s2").await;
    let d = next(&mut deadc).await;
    reasons.push((text(&d), x_death(&d)[0]["reason"].clone()));
    assert_eq!(
        reasons,
        vec![
            ("n1".to_owned(), longstr("rejected")),
            ("n2".to_owned(), longstr("rejected")),
            ("e1".to_owned(), longstr("expired")),
            ("s1".to_owned(), longstr("maxlen")),
        ]
    );
    assert_eq!(drain(&ch, &short).await, vec!["s2"]);
}

#[tokio::test]
async fn retry_with_back_off_through_a_ttl_queue() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (work, retry, retry_ex) = (unique("work"), unique("retry"), unique("retry-ex"));
    declare_exchange(&ch, &retry_ex, ExchangeKind::Fanout).await;
    // Failed work waits 50 ms in the retry queue, then goes back to the work queue.
    declare_with_args(
        &ch,
        &retry,
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", longstr("")),
            ("x-dead-letter-routing-key", longstr(&work)),
        ]),
    )
    .await;
    bind(&ch, &retry, &retry_ex, "").await;
    declare_with_args(
        &ch,
        &work,
        args(&[("x-dead-letter-exchange", longstr(&retry_ex))]),
    )
    .await;
    publish(&ch, "", &work, b"job").await;
    let mut c = consume(&ch, &work, false).await;
    for attempt in 1..=3i64 {
        let d = next(&mut c).await;
        assert_eq!(text(&d), "job");
        if attempt > 1 {
            let x = x_death(&d);
            assert_eq!(x.len(), 2, "one entry per queue and reason");
            assert_eq!(x[0]["queue"], longstr(&retry));
            assert_eq!(x[0]["reason"], longstr("expired"));
            assert_eq!(x[0]["count"], AMQPValue::LongLongInt(attempt - 1));
            assert_eq!(x[1]["queue"], longstr(&work));
            assert_eq!(x[1]["reason"], longstr("rejected"));
            assert_eq!(x[1]["count"], AMQPValue::LongLongInt(attempt - 1));
            assert_eq!(headers(&d)["x-first-death-queue"], longstr(&work));
        }
        if attempt < 3 {
            nack(&d, false).await;
        } else {
            ack(&d).await;
        }
    }
    assert_quiet(&mut c).await;
}

#[tokio::test]
async fn expiry_into_the_same_queue_is_a_cycle_and_dropped() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("cycle");
    declare_with_args(
        &ch,
        &q,
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(10)),
            ("x-dead-letter-exchange", longstr("")),
        ]),
    )
    .await;
    publish(&ch, "", &q, b"x").await;
    let queue = b.broker().vhost("/").unwrap().queue(&q).unwrap();
    wait_until("it expires", || queue.expired_count() == 1).await;
    assert_eq!(ready_count(&ch, &q).await, 0, "not republished into itself");
}

#[tokio::test]
async fn dead_lettered_persistent_message_moves_for_good_across_a_restart() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (c, ch) = b.channel().await;
    let (work, dead) = (unique("work"), unique("dead"));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    bounded(ch.queue_declare(dead.as_str().into(), durable, FieldTable::default()))
        .await
        .unwrap();
    bounded(ch.queue_declare(
        work.as_str().into(),
        durable,
        args(&[
            ("x-dead-letter-exchange", longstr("")),
            ("x-dead-letter-routing-key", longstr(&dead)),
        ]),
    ))
    .await
    .unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish_with(&ch, "", &work, b"p", persistent).await;
    let got = get(&ch, &work, false).await.expect("message");
    bounded(
        got.delivery
            .acker
            .reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    assert_eq!(ready_count(&ch, &dead).await, 1);
    drop(c);
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(
        ready_count(&ch, &work).await,
        0,
        "the rejected one stays gone"
    );
    let got = get(&ch, &dead, true)
        .await
        .expect("the dead letter survived");
    let x = x_death(&got.delivery);
    assert_eq!(x[0]["queue"], longstr(&work));
    assert_eq!(x[0]["reason"], longstr("rejected"));
}
