//! Delivery over AMQP with lapin: acknowledgement modes, round-robin, prefetch (per consumer and
//! channel-wide), ack/nack/reject, requeue order and the redelivered flag, recovery on channel and
//! connection close, basic.recover, basic.get, exclusive consumers and consumer tags.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use switchboard::core::queue::QueueStats;

/// The queue's depth and consumers (its message counters are tests/stats_metrics.rs's subject).
fn stats(b: &TestBroker, queue: &str) -> QueueStats {
    let s = b
        .broker()
        .vhost("/")
        .expect("vhost /")
        .queue(queue)
        .expect("queue exists")
        .stats();
    QueueStats {
        counters: Default::default(),
        ..s
    }
}

/// A queue with `n` messages "m0".."m{n-1}" published on `ch`.
async fn queue_with(ch: &Channel, n: usize) -> String {
    let q = unique("q");
    declare(ch, &q).await;
    for i in 0..n {
        publish(ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    q
}

fn texts(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(text).collect()
}

fn redelivered(ds: &[Delivery]) -> Vec<bool> {
    ds.iter().map(|d| d.redelivered).collect()
}

/// The next delivery from either consumer, with its index.
async fn next_of_two(a: &mut Consumer, b: &mut Consumer) -> (usize, Delivery) {
    let got = bounded(async {
        tokio::select! {
            d = a.next() => (0, d),
            d = b.next() => (1, d),
        }
    })
    .await;
    match got {
        (i, Some(Ok(d))) => (i, d),
        (i, other) => panic!("consumer {i} ended: {other:?}"),
    }
}

/// Asserts neither consumer gets anything for [`QUIET`] (a wait expected to time out).
async fn assert_both_quiet(a: &mut Consumer, b: &mut Consumer) {
    let got = tokio::time::timeout(QUIET, async {
        tokio::select! {
            d = a.next() => d,
            d = b.next() => d,
        }
    })
    .await;
    if let Ok(d) = got {
        panic!("expected no delivery, got {d:?}");
    }
}

#[tokio::test]
async fn manual_ack_settles_the_message() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 1).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let d = next(&mut consumer).await;
    assert_eq!((text(&d).as_str(), d.redelivered), ("m0", false));
    assert_eq!(d.routing_key.as_str(), q);
    assert_eq!((stats(&b, &q).ready, stats(&b, &q).unacked), (0, 1));
    ack(&d).await;
    ready_count(&cch, &q).await; // orders the check after the ack
    assert_eq!(stats(&b, &q).unacked, 0);
    // Nothing left to come back when the channel closes.
    bounded(cch.close(200, "bye".into())).await.unwrap();
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test]
async fn auto_ack_needs_no_ack() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 2).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, true).await;
    assert_eq!(texts(&next_n(&mut consumer, 2).await), ["m0", "m1"]);
    assert_eq!(
        stats(&b, &q).unacked,
        0,
        "no_ack deliveries are settled on sending"
    );
    bounded(cch.close(200, "bye".into())).await.unwrap();
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test]
async fn consumers_get_messages_round_robin() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("rr");
    declare(&ch, &q).await;
    let (ch1, ch2) = (
        bounded(c.create_channel()).await.unwrap(),
        bounded(c.create_channel()).await.unwrap(),
    );
    let mut c1 = consume(&ch1, &q, true).await;
    let mut c2 = consume(&ch2, &q, true).await;
    for i in 0..6 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    assert_eq!(texts(&next_n(&mut c1, 3).await), ["m0", "m2", "m4"]);
    assert_eq!(texts(&next_n(&mut c2, 3).await), ["m1", "m3", "m5"]);
}

#[tokio::test]
async fn prefetch_one_holds_the_next_message_until_the_ack() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 2).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    bounded(cch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let first = next(&mut consumer).await;
    assert_eq!(text(&first), "m0");
    assert_quiet(&mut consumer).await;
    assert_eq!((stats(&b, &q).ready, stats(&b, &q).unacked), (1, 1));
    ack(&first).await;
    let second = next(&mut consumer).await;
    assert_eq!(text(&second), "m1");
}

#[tokio::test]
async fn prefetch_is_per_consumer_by_default() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 5).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    bounded(cch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut c1 = consume(&cch, &q, false).await;
    let mut c2 = consume(&cch, &q, false).await;
    // Each consumer on the channel gets its own single message.
    let d1 = next(&mut c1).await;
    let d2 = next(&mut c2).await;
    assert_eq!((text(&d1).as_str(), text(&d2).as_str()), ("m0", "m1"));
    assert_both_quiet(&mut c1, &mut c2).await;
    assert_eq!(stats(&b, &q).unacked, 2);
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_channel() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q1 = queue_with(&ch, 3).await;
    let q2 = queue_with(&ch, 3).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    bounded(cch.basic_qos(2, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut c1 = consume(&cch, &q1, false).await;
    let mut c2 = consume(&cch, &q2, false).await;
    let (_, first) = next_of_two(&mut c1, &mut c2).await;
    let (_, _second) = next_of_two(&mut c1, &mut c2).await;
    // Two unacked on the channel in all, whichever consumers they went to.
    assert_both_quiet(&mut c1, &mut c2).await;
    assert_eq!(stats(&b, &q1).unacked + stats(&b, &q2).unacked, 2);
    ack(&first).await;
    next_of_two(&mut c1, &mut c2).await;
    assert_both_quiet(&mut c1, &mut c2).await;
    assert_eq!(stats(&b, &q1).unacked + stats(&b, &q2).unacked, 2);
}

#[tokio::test]
async fn ack_multiple_settles_everything_up_to_the_tag() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 4).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let ds = next_n(&mut consumer, 4).await;
    bounded(cch.basic_ack(ds[2].delivery_tag, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    ready_count(&cch, &q).await;
    assert_eq!(stats(&b, &q).unacked, 1, "m3 is still unacked");
    // Closing requeues only m3.
    bounded(cch.close(200, "bye".into())).await.unwrap();
    assert_eq!(drain(&ch, &q).await, ["m3"]);
}

#[tokio::test]
async fn ack_multiple_with_tag_zero_settles_everything() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 3).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    next_n(&mut consumer, 3).await;
    bounded(cch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    ready_count(&cch, &q).await;
    assert_eq!(
        stats(&b, &q),
        QueueStats {
            consumers: 1,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn nack_multiple_with_requeue_redelivers_in_order() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 3).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let ds = next_n(&mut consumer, 3).await;
    assert_eq!(redelivered(&ds), [false; 3]);
    bounded(cch.basic_nack(
        ds[2].delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    let again = next_n(&mut consumer, 3).await;
    assert_eq!(texts(&again), ["m0", "m1", "m2"]);
    assert_eq!(redelivered(&again), [true; 3]);
    // New delivery tags for the redeliveries.
    assert!(again.iter().all(|d| d.delivery_tag > ds[2].delivery_tag));
}

#[tokio::test]
async fn reject_and_nack_without_requeue_discard() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 4).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let ds = next_n(&mut consumer, 4).await;
    assert!(
        bounded(ds[0].acker.reject(BasicRejectOptions { requeue: false }))
            .await
            .unwrap()
    );
    bounded(cch.basic_nack(
        ds[2].delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    ))
    .await
    .unwrap();
    assert!(
        bounded(ds[3].acker.reject(BasicRejectOptions { requeue: true }))
            .await
            .unwrap()
    );
    // Only the requeued m3 comes back.
    let d = next(&mut consumer).await;
    assert_eq!((text(&d).as_str(), d.redelivered), ("m3", true));
    ack(&d).await;
    ready_count(&cch, &q).await;
    assert_eq!(
        stats(&b, &q),
        QueueStats {
            consumers: 1,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn requeued_messages_go_back_to_their_original_place() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue_with(&ch, 5).await;
    let held: Vec<_> = [
        get(&ch, &q, false).await.unwrap(),
        get(&ch, &q, false).await.unwrap(),
        get(&ch, &q, false).await.unwrap(),
    ]
    .into();
    // Requeue out of order: m1, then m0, then m2.
    for i in [1, 0, 2] {
        bounded(
            held[i]
                .delivery
                .acker
                .reject(BasicRejectOptions { requeue: true }),
        )
        .await
        .unwrap();
    }
    let mut order = Vec::new();
    while let Some(m) = get(&ch, &q, true).await {
        order.push((text(&m.delivery), m.delivery.redelivered));
    }
    let want: Vec<(String, bool)> = [
        ("m0", true),
        ("m1", true),
        ("m2", true),
        ("m3", false),
        ("m4", false),
    ]
    .iter()
    .map(|(t, r)| (t.to_string(), *r))
    .collect();
    assert_eq!(order, want);
}

/// Publishes three messages, lets a consumer on `holder` take them without acking, then starts
/// a consumer elsewhere; returns (queue, the holder's consumer, the other consumer).
async fn held_by_one_consumer(
    b: &TestBroker,
    ch: &Channel,
    holder: &Channel,
) -> (String, Consumer, lapin::Connection, Consumer) {
    let q = queue_with(ch, 3).await;
    let mut held = consume(holder, &q, false).await;
    assert_eq!(texts(&next_n(&mut held, 3).await), ["m0", "m1", "m2"]);
    let (other_conn, other_ch) = b.channel().await;
    let mut other = consume(&other_ch, &q, false).await;
    assert_quiet(&mut other).await;
    (q, held, other_conn, other)
}

#[tokio::test]
async fn closing_a_channel_requeues_its_unacked_messages_in_order() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let holder = bounded(c.create_channel()).await.unwrap();
    let (q, _held, _oc, mut other) = held_by_one_consumer(&b, &ch, &holder).await;
    bounded(holder.close(200, "bye".into())).await.unwrap();
    let again = next_n(&mut other, 3).await;
    assert_eq!(texts(&again), ["m0", "m1", "m2"]);
    assert_eq!(redelivered(&again), [true; 3]);
    assert_eq!(stats(&b, &q).consumers, 1);
}

#[tokio::test]
async fn closing_a_connection_requeues_its_unacked_messages_in_order() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let (hc, holder) = b.channel().await;
    let (_q, _held, _oc, mut other) = held_by_one_consumer(&b, &ch, &holder).await;
    bounded(hc.close(200, "bye".into())).await.unwrap();
    let again = next_n(&mut other, 3).await;
    assert_eq!(texts(&again), ["m0", "m1", "m2"]);
    assert_eq!(redelivered(&again), [true; 3]);
    drop(c);
}

#[tokio::test]
async fn basic_recover_redelivers_unacked_messages() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 2).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let first = next_n(&mut consumer, 2).await;
    assert_eq!(redelivered(&first), [false, false]);
    bounded(cch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    let again = next_n(&mut consumer, 2).await;
    assert_eq!(texts(&again), ["m0", "m1"]);
    assert_eq!(redelivered(&again), [true, true]);
    for d in &again {
        ack(d).await;
    }
    ready_count(&cch, &q).await;
    assert_eq!(stats(&b, &q).unacked, 0);
}

#[tokio::test]
async fn basic_get_reports_the_remaining_count_and_get_empty() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue_with(&ch, 3).await;
    for (want, left) in [("m0", 2), ("m1", 1), ("m2", 0)] {
        let m = get(&ch, &q, true).await.expect("a message");
        assert_eq!(text(&m.delivery), want);
        assert_eq!(m.message_count, left);
        assert!(!m.delivery.redelivered);
        assert_eq!(m.delivery.exchange.as_str(), "");
        assert_eq!(m.delivery.routing_key.as_str(), q);
    }
    assert!(get(&ch, &q, true).await.is_none(), "get-empty");
    // A get without no_ack must be acked like a delivery.
    publish(&ch, "", &q, b"again").await;
    let m = get(&ch, &q, false).await.unwrap();
    assert_eq!(stats(&b, &q).unacked, 1);
    ack(&m.delivery).await;
    ready_count(&ch, &q).await;
    assert_eq!(stats(&b, &q).unacked, 0);
}

#[tokio::test]
async fn exclusive_consumer_keeps_others_out() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 0).await;
    let excl = BasicConsumeOptions {
        exclusive: true,
        no_ack: true,
        ..Default::default()
    };
    let owner = consume_with(&ch, &q, "owner", excl).await;
    let in_use = format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use");
    let (c2, ch2) = b.channel().await;
    let r = bounded(ch2.basic_consume(
        q.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(r, 403, &in_use);
    // Nor can an exclusive consumer join a queue that already has consumers.
    bounded(ch.basic_cancel(owner.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    let _plain = consume(&ch, &q, true).await;
    let ch3 = bounded(c2.create_channel()).await.unwrap();
    let r =
        bounded(ch3.basic_consume(q.as_str().into(), "".into(), excl, FieldTable::default())).await;
    assert_amqp_err(r, 403, &in_use);
    drop(c);
}

#[tokio::test]
async fn consumer_tags() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 1).await;
    let consumer = consume(&ch, &q, true).await;
    let tag = consumer.tag().to_string();
    assert!(tag.starts_with("amq.ctag-"), "{tag}");
    assert_eq!(tag.len(), "amq.ctag-".len() + 22);
    let named = consume_with(&ch, &q, "mine", BasicConsumeOptions::default()).await;
    assert_eq!(named.tag().as_str(), "mine");

    // Reusing a tag on the same channel is a connection error, as in RabbitMQ.
    let r = bounded(ch.basic_consume(
        q.as_str().into(),
        "mine".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(r, 530, "NOT_ALLOWED - attempt to reuse consumer tag 'mine'");
    wait_until("connection closed", || !c.status().connected()).await;
}

#[tokio::test]
async fn no_local_is_accepted_and_ignored_like_rabbitmq() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("nolocal");
    declare(&ch, &q).await;
    let opts = BasicConsumeOptions {
        no_local: true,
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = consume_with(&ch, &q, "", opts).await;
    publish(&ch, "", &q, b"own message").await;
    assert_eq!(text(&next(&mut consumer).await), "own message");
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let mut events = c.events_listener();
    bounded(ch.basic_ack(42, BasicAckOptions::default()))
        .await
        .unwrap();
    let text = wait_error_event(&mut events, 406).await;
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 42");
    wait_until("channel closed", || !ch.status().connected()).await;

    // Acking the same tag twice is the same error.
    let ch = bounded(c.create_channel()).await.unwrap();
    let q = queue_with(&ch, 1).await;
    let m = get(&ch, &q, false).await.unwrap();
    let tag = m.delivery.delivery_tag;
    bounded(ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .unwrap();
    bounded(ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .unwrap();
    let text = wait_error_event(&mut events, 406).await;
    assert_eq!(
        text,
        format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
    );
    // The connection survives.
    let ch = bounded(c.create_channel()).await.unwrap();
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test]
async fn deliveries_outlive_their_cancelled_consumer() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = queue_with(&ch, 2).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let ds = next_n(&mut consumer, 2).await;
    bounded(cch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    // Not requeued by the cancel (RabbitMQ keeps them with the channel)...
    assert_eq!(
        stats(&b, &q),
        QueueStats {
            unacked: 2,
            ..Default::default()
        }
    );
    // ...and still ackable.
    ack(&ds[0]).await;
    ready_count(&cch, &q).await;
    assert_eq!(
        stats(&b, &q),
        QueueStats {
            unacked: 1,
            ..Default::default()
        }
    );
    assert!(cch.status().connected(), "the ack was valid");
    // Closing the channel requeues the rest.
    bounded(cch.close(200, "bye".into())).await.unwrap();
    let m = get(&ch, &q, true).await.expect("m1 requeued");
    assert_eq!(
        (text(&m.delivery).as_str(), m.delivery.redelivered),
        ("m1", true)
    );
}

#[tokio::test]
async fn large_and_empty_bodies_and_all_properties_round_trip() {
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
    use lapin::BasicProperties;
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("bodies");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, true).await;

    // Larger than frame_max (128 KiB) both ways: several body frames in and out.
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", &q, &large).await;
    // Empty: a content header and no body frame.
    publish(&ch, "", &q, b"").await;

    let mut headers = FieldTable::default();
    headers.insert("s".into(), AMQPValue::LongString(LongString::from("text")));
    headers.insert("i".into(), AMQPValue::LongInt(-7));
    headers.insert("l".into(), AMQPValue::LongLongInt(1 << 40));
    headers.insert("b".into(), AMQPValue::Boolean(true));
    headers.insert("d".into(), AMQPValue::Double(2.5));
    headers.insert("t".into(), AMQPValue::Timestamp(1_700_000_000));
    headers.insert("v".into(), AMQPValue::Void);
    let mut nested = FieldTable::default();
    nested.insert("k".into(), AMQPValue::ShortShortUInt(1));
    headers.insert("n".into(), AMQPValue::FieldTable(nested));
    headers.insert(
        "a".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::ShortInt(1),
            AMQPValue::LongString(LongString::from("x")),
        ])),
    );
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("id-1".into())
        .with_timestamp(1_700_000_001)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("tests".into());
    publish_with(&ch, "", &q, b"{}", props.clone()).await;

    let got = next(&mut consumer).await;
    assert_eq!(got.data.len(), large.len());
    assert!(got.data == large, "large body intact");
    let got = next(&mut consumer).await;
    assert!(got.data.is_empty());
    let got = next(&mut consumer).await;
    assert_eq!(got.data, b"{}");
    assert_eq!(got.properties, props);
}
