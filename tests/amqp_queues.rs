//! Queues over AMQP with lapin: declaration flags and equivalence, server-named queues,
//! exclusivity, auto-delete, purge and delete (with their preconditions), and the consumer
//! cancel notification sent when a queue goes under its consumers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use std::sync::Arc;
use switchboard::core::Queue;

fn find_queue(b: &TestBroker, name: &str) -> Option<Arc<Queue>> {
    b.broker().vhost("/").expect("vhost /").queue(name)
}

async fn declare_opts(
    ch: &lapin::Channel,
    name: &str,
    o: QueueDeclareOptions,
) -> lapin::Result<lapin::Queue> {
    bounded(ch.queue_declare(name.into(), o, FieldTable::default())).await
}

#[tokio::test]
async fn declare_keeps_durable_exclusive_and_auto_delete_flags() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let cases = [
        (
            "durable",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        ),
        (
            "exclusive",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        ),
        (
            "autodel",
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        ),
        ("plain", QueueDeclareOptions::default()),
    ];
    for (prefix, o) in cases {
        let name = unique(prefix);
        let declared = declare_opts(&ch, &name, o).await.unwrap();
        assert_eq!(declared.name().as_str(), name);
        assert_eq!(
            (declared.message_count(), declared.consumer_count()),
            (0, 0)
        );
        let q = find_queue(&b, &name).expect("queue exists");
        assert_eq!(q.durable, o.durable, "{name}");
        assert_eq!(q.auto_delete, o.auto_delete, "{name}");
        assert_eq!(q.exclusive_owner.is_some(), o.exclusive, "{name}");
        // The same declaration again (same connection) is accepted.
        declare_opts(&ch, &name, o).await.unwrap();
    }
}

#[tokio::test]
async fn server_named_queues() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q1 = declare(&ch, "").await.name().to_string();
    let q2 = declare(&ch, "").await.name().to_string();
    for q in [&q1, &q2] {
        assert!(q.starts_with("amq.gen-"), "{q}");
        assert_eq!(q.len(), "amq.gen-".len() + 22, "{q}");
        assert!(find_queue(&b, q).is_some());
    }
    assert_ne!(q1, q2);
    // The name works like any other, and "" in a later method means the last queue declared on
    // the channel (here q2).
    publish(&ch, "", &q1, b"one").await;
    bind(&ch, "", "amq.fanout", "").await;
    publish(&ch, "amq.fanout", "", b"two").await;
    assert_eq!(drain(&ch, &q1).await, ["one"]);
    assert_eq!(drain(&ch, &q2).await, ["two"]);

    // Clients may not pick amq. names themselves.
    let r = declare_opts(&ch, "amq.mine", QueueDeclareOptions::default()).await;
    assert_amqp_err(
        r,
        403,
        "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'",
    );
}

#[tokio::test]
async fn passive_declare() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let missing = unique("missing");
    let r = declare_opts(&ch, &missing, passive()).await;
    assert_amqp_err(
        r,
        404,
        &format!("NOT_FOUND - no queue '{missing}' in vhost '/'"),
    );
    assert!(find_queue(&b, &missing).is_none(), "passive never creates");

    let ch = bounded(c.create_channel()).await.unwrap();
    let q = unique("counted");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    let got = declare_opts(&ch, &q, passive()).await.unwrap();
    assert_eq!((got.message_count(), got.consumer_count()), (2, 0));

    let ch2 = bounded(c.create_channel()).await.unwrap();
    bounded(ch2.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&ch2, &q, false).await;
    next(&mut consumer).await;
    let got = declare_opts(&ch, &q, passive()).await.unwrap();
    assert_eq!((got.message_count(), got.consumer_count()), (1, 1));
}

#[tokio::test]
async fn redeclare_with_other_durable_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("q");
    declare(&ch, &q).await;
    let r = declare_opts(
        &ch,
        &q,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await;
    assert_amqp_err(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': \
             received 'true' but current is 'false'"
        ),
    );
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = declare_opts(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    assert_amqp_err(r, 406, "inequivalent arg 'auto_delete'");
    // The queue itself is untouched.
    let ch = bounded(c.create_channel()).await.unwrap();
    assert!(!find_queue(&b, &q).unwrap().durable);
    declare(&ch, &q).await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection() {
    let b = TestBroker::start().await;
    let (_owner, och) = b.channel().await;
    let q = unique("excl");
    declare_opts(
        &och,
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let other = b.connect().await;
    let locked = format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'"
    );
    let ch = bounded(other.create_channel()).await.unwrap();
    assert_amqp_err(declare_opts(&ch, &q, passive()).await, 405, &locked);
    let ch = bounded(other.create_channel()).await.unwrap();
    assert_amqp_err(
        declare_opts(
            &ch,
            &q,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await,
        405,
        &locked,
    );
    let ch = bounded(other.create_channel()).await.unwrap();
    let r = bounded(ch.basic_consume(
        q.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(r, 405, &locked);
    let ch = bounded(other.create_channel()).await.unwrap();
    let r = bounded(ch.basic_get(q.as_str().into(), BasicGetOptions::default())).await;
    assert_amqp_err(r, 405, &locked);
    let ch = bounded(other.create_channel()).await.unwrap();
    let r = bounded(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())).await;
    assert_amqp_err(r, 405, &locked);
    let ch = bounded(other.create_channel()).await.unwrap();
    let r = bounded(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())).await;
    assert_amqp_err(r, 405, &locked);

    // Publishing to it is allowed from anywhere, as in RabbitMQ.
    let ch = bounded(other.create_channel()).await.unwrap();
    publish(&ch, "", &q, b"from elsewhere").await;
    bounded(ch.basic_qos(0, BasicQosOptions::default()))
        .await
        .unwrap();
    assert_eq!(drain(&och, &q).await, ["from elsewhere"]);
}

#[tokio::test]
async fn exclusive_queue_goes_when_its_connection_closes() {
    let b = TestBroker::start().await;
    let (owner, och) = b.channel().await;
    let q = unique("excl");
    declare_opts(
        &och,
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    publish(&och, "", &q, b"lost with the queue").await;
    assert_eq!(ready_count(&och, &q).await, 1);
    bounded(owner.close(200, "bye".into())).await.unwrap();
    wait_until("exclusive queue deleted", || find_queue(&b, &q).is_none()).await;
    let (_c, ch) = b.channel().await;
    assert_amqp_err(declare_opts(&ch, &q, passive()).await, 404, "NOT_FOUND");
}

#[tokio::test]
async fn auto_delete_queue_goes_after_its_last_consumer() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("autodel");
    let auto = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare_opts(&ch, &q, auto).await.unwrap();
    let c1 = consume(&ch, &q, true).await;
    let c2 = consume(&ch, &q, true).await;
    bounded(ch.basic_cancel(c1.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    let left = declare_opts(&ch, &q, passive()).await.unwrap();
    assert_eq!(
        left.consumer_count(),
        1,
        "one consumer left: the queue stays"
    );
    bounded(ch.basic_cancel(c2.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    assert!(
        find_queue(&b, &q).is_none(),
        "deleted with its last consumer"
    );
    assert_amqp_err(declare_opts(&ch, &q, passive()).await, 404, "NOT_FOUND");

    // A consumer going away with its channel counts too.
    let ch = bounded(c.create_channel()).await.unwrap();
    declare_opts(&ch, &q, auto).await.unwrap();
    let ch2 = bounded(c.create_channel()).await.unwrap();
    let _c3 = consume(&ch2, &q, false).await;
    assert!(find_queue(&b, &q).is_some());
    bounded(ch2.close(200, "bye".into())).await.unwrap();
    assert!(
        find_queue(&b, &q).is_none(),
        "deleted when the consumer's channel closed"
    );
}

#[tokio::test]
async fn auto_delete_queue_without_consumers_stays() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("autodel");
    declare_opts(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"m").await;
    // basic.get is not a consumer; closing the connection that declared it changes nothing.
    assert_eq!(drain(&ch, &q).await, ["m"]);
    bounded(c.close(200, "bye".into())).await.unwrap();
    let (_c, ch) = b.channel().await;
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test]
async fn purge_returns_the_ready_count() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("purge");
    declare(&ch, &q).await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    // One delivery is out unacked on another channel: purge leaves it alone.
    let getter = bounded(c.create_channel()).await.unwrap();
    let held = get(&getter, &q, false).await.expect("a message");
    assert_eq!(held.message_count, 3);
    let purged = bounded(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 3);
    assert_eq!(ready_count(&ch, &q).await, 0);
    let purged = bounded(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 0);
    // The unacked one comes back when its channel closes.
    bounded(getter.close(200, "bye".into())).await.unwrap();
    assert_eq!(drain(&ch, &q).await, ["m0"]);
}

#[tokio::test]
async fn delete_if_unused_and_if_empty() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("del");
    declare(&ch, &q).await;
    let cch = bounded(c.create_channel()).await.unwrap();
    let consumer = consume(&cch, &q, true).await;
    let r = bounded(ch.queue_delete(
        q.as_str().into(),
        QueueDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"),
    );
    assert!(find_queue(&b, &q).is_some());
    bounded(cch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();

    let ch = bounded(c.create_channel()).await.unwrap();
    publish(&ch, "", &q, b"m").await;
    let r = bounded(ch.queue_delete(
        q.as_str().into(),
        QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        },
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"),
    );
    assert!(find_queue(&b, &q).is_some());

    // Both conditions now hold for an unused, emptied queue.
    let ch = bounded(c.create_channel()).await.unwrap();
    assert_eq!(drain(&ch, &q).await, ["m"]);
    let n = bounded(ch.queue_delete(
        q.as_str().into(),
        QueueDeleteOptions {
            if_unused: true,
            if_empty: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(n, 0);
    assert!(find_queue(&b, &q).is_none());
}

#[tokio::test]
async fn delete_returns_the_message_count_and_drops_bindings() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("del");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.direct", &q).await;
    for _ in 0..3 {
        publish(&ch, "amq.direct", &q, b"m").await;
    }
    let n = bounded(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 3);
    // A new queue of the same name has neither the messages nor the binding.
    declare(&ch, &q).await;
    publish(&ch, "amq.direct", &q, b"unrouted").await;
    assert_eq!(ready_count(&ch, &q).await, 0);
    // Deleting a queue that does not exist succeeds with 0, as in RabbitMQ.
    let n = bounded(ch.queue_delete(
        unique("never").as_str().into(),
        QueueDeleteOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("doomed");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, false).await;
    publish(&ch, "", &q, b"before").await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "before");

    let (_c2, ch2) = b.channel().await;
    bounded(ch2.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    // lapin advertises consumer_cancel_notify: the server's basic.cancel ends the stream.
    let end = bounded(consumer.next()).await;
    assert!(end.is_none(), "consumer stream should end, got {end:?}");
    // The delivery it already had can still be acked (a no-op now), and the channel stays open.
    ack(&d).await;
    declare(&ch, &unique("still-open")).await;
}

#[tokio::test]
async fn redeclare_checks_equivalent_arguments() {
    use lapin::types::AMQPValue;
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let q = unique("args");
    let args = |v: AMQPValue| {
        let mut t = FieldTable::default();
        t.insert("x-max-length".into(), v);
        t
    };
    let ch = bounded(c.create_channel()).await.unwrap();
    bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        args(AMQPValue::LongInt(10)),
    ))
    .await
    .unwrap();
    // Integers compare by value whatever their width, as in RabbitMQ.
    bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        args(AMQPValue::LongLongInt(10)),
    ))
    .await
    .unwrap();
    let r = bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        args(AMQPValue::LongInt(11)),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q}' in vhost '/'"
        ),
    );
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = declare_opts(&ch, &q, QueueDeclareOptions::default()).await;
    assert_amqp_err(r, 406, "inequivalent arg 'x-max-length'");
    // Arguments RabbitMQ does not compare may differ.
    let ch = bounded(c.create_channel()).await.unwrap();
    let mut other = args(AMQPValue::LongInt(10));
    other.insert("x-custom".into(), AMQPValue::Boolean(true));
    bounded(ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), other))
        .await
        .unwrap();
}
