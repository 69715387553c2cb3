//! Channel and connection errors seen through lapin: RabbitMQ's reply codes and texts, and that
//! a channel error leaves the connection and its other channels working.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test]
async fn missing_exchanges_and_queues_are_404() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let q = unique("q");
    let ch = bounded(c.create_channel()).await.unwrap();
    declare(&ch, &q).await;
    let no_x = "NOT_FOUND - no exchange 'nope' in vhost '/'";
    let no_q = "NOT_FOUND - no queue 'nope' in vhost '/'";

    let r = bounded(ch.queue_bind(
        q.as_str().into(),
        "nope".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(r, 404, no_x);
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = bounded(ch.queue_bind(
        "nope".into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(r, 404, no_q);
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = bounded(ch.basic_consume(
        "nope".into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(r, 404, no_q);
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = bounded(ch.basic_get("nope".into(), BasicGetOptions::default())).await;
    assert_amqp_err(r, 404, no_q);
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = bounded(ch.queue_purge("nope".into(), QueuePurgeOptions::default())).await;
    assert_amqp_err(r, 404, no_q);
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = bounded(ch.exchange_bind(
        "amq.fanout".into(),
        "nope".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(r, 404, no_x);
    let ch = bounded(c.create_channel()).await.unwrap();
    let text = provoke(
        &c,
        404,
        publish_doomed(&ch, "nope", "k", b"lost", BasicProperties::default()),
    )
    .await;
    assert_eq!(text, no_x);
    // All of those were channel errors.
    assert!(c.status().connected());
}

#[tokio::test]
async fn a_channel_error_spares_the_other_channels() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let good = bounded(c.create_channel()).await.unwrap();
    let q = unique("q");
    declare(&good, &q).await;
    let mut consumer = consume(&good, &q, true).await;

    let bad = bounded(c.create_channel()).await.unwrap();
    let r = bounded(bad.queue_declare("nope".into(), passive(), FieldTable::default())).await;
    assert_amqp_err(r, 404, "NOT_FOUND");
    assert!(!bad.status().connected());

    publish(&good, "", &q, b"unaffected").await;
    assert_eq!(text(&next(&mut consumer).await), "unaffected");
    // The closed channel's number can be reused by a new channel.
    let again = bounded(c.create_channel()).await.unwrap();
    declare(&again, &unique("q")).await;
}

#[tokio::test]
async fn user_id_must_match_the_login() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("q");
    declare(&ch, &q).await;
    publish_with(
        &ch,
        "",
        &q,
        b"mine",
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await;
    assert_eq!(ready_count(&ch, &q).await, 1);
    let forged = BasicProperties::default().with_user_id("bob".into());
    let text = provoke(&c, 406, publish_doomed(&ch, "", &q, b"forged", forged)).await;
    assert_eq!(
        text,
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'"
    );
    let (_c2, ch2) = b.channel().await;
    assert_eq!(ready_count(&ch2, &q).await, 1);
}

#[tokio::test]
async fn messages_over_max_message_size_are_406() {
    let b = TestBroker::start_with(|c| c.amqp.max_message_size = 1_000).await;
    let (c, ch) = b.channel().await;
    let q = unique("q");
    declare(&ch, &q).await;
    publish(&ch, "", &q, &[b'x'; 1_000]).await;
    assert_eq!(ready_count(&ch, &q).await, 1, "exactly the limit is fine");
    let text = provoke(
        &c,
        406,
        publish_doomed(&ch, "", &q, &[b'x'; 1_001], BasicProperties::default()),
    )
    .await;
    assert_eq!(
        text,
        "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000"
    );
    let (_c2, ch2) = b.channel().await;
    assert_eq!(ready_count(&ch2, &q).await, 1);
}

#[tokio::test]
async fn immediate_publish_is_not_implemented() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let opts = BasicPublishOptions {
        immediate: true,
        ..Default::default()
    };
    let text = provoke(&c, 540, async {
        // The connection may close before lapin has finished: the outcome is not checked.
        let sent = bounded(ch.basic_publish(
            "".into(),
            "q".into(),
            opts,
            b"now",
            BasicProperties::default(),
        ))
        .await;
        drop(sent);
    })
    .await;
    assert_eq!(text, "NOT_IMPLEMENTED - immediate=true");
    wait_until("connection closed", || !c.status().connected()).await;
}

#[tokio::test]
async fn recover_without_requeue_is_not_implemented() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = bounded(ch.basic_recover(BasicRecoverOptions { requeue: false })).await;
    assert_amqp_err(r, 540, "NOT_IMPLEMENTED - requeue=false");
    wait_until("connection closed", || !c.status().connected()).await;
}

#[tokio::test]
async fn default_exchange_cannot_be_declared_or_deleted() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = bounded(c.create_channel()).await.unwrap();
    // A passive declare of the default exchange is fine.
    bounded(ch.exchange_declare(
        "".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let r = bounded(ch.exchange_declare(
        "".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(
        r,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    let ch = bounded(c.create_channel()).await.unwrap();
    let r = bounded(ch.exchange_delete("".into(), ExchangeDeleteOptions::default())).await;
    assert_amqp_err(
        r,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
}

#[tokio::test]
async fn server_closes_name_the_failing_method() {
    // The class and method ids in channel.close let clients say what failed; lapin shows them
    // in its error only through the code and text, so check them with a raw client.
    use common::raw::RawClient;
    use switchboard_amqp::*;
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.amqp, 0).await;
    c.send(1, ChannelOpen {}).await;
    c.recv_method().await;
    c.send(
        1,
        QueueDeclare {
            queue: "missing".into(),
            passive: true,
            ..Default::default()
        },
    )
    .await;
    match c.recv_method().await {
        (1, Method::ChannelClose(close)) => {
            assert_eq!(close.reply_code, 404);
            assert_eq!(
                close.reply_text,
                "NOT_FOUND - no queue 'missing' in vhost '/'"
            );
            assert_eq!((close.class_id, close.method_id), (50, 10));
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    // Until close-ok, the channel ignores everything else...
    c.send(1, QueueDeclare::default()).await;
    c.send(1, ChannelCloseOk {}).await;
    // ...and after it, the channel number is free again.
    c.send(1, ChannelOpen {}).await;
    assert!(matches!(
        c.recv_method().await,
        (1, Method::ChannelOpenOk(_))
    ));
}
