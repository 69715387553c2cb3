//! Length limits over AMQP with lapin: `x-max-length` / `x-max-length-bytes` with `x-overflow`
//! `drop-head`, `reject-publish` (a confirm-mode publisher gets a nack for exactly the refused
//! publishes, in order with the acks) and `reject-publish-dlx`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Confirmation, ExchangeKind};

#[tokio::test]
async fn drop_head_keeps_the_newest_by_count_and_by_bytes() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let by_count = unique("maxlen");
    declare_with_args(
        &ch,
        &by_count,
        args(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
    let by_bytes = unique("maxbytes");
    declare_with_args(
        &ch,
        &by_bytes,
        args(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    for i in 0..5 {
        publish(&ch, "", &by_count, format!("m{i}").as_bytes()).await;
    }
    for body in ["aaaa", "bbbb", "cccc"] {
        publish(&ch, "", &by_bytes, body.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &by_count).await, vec!["m3", "m4"]);
    assert_eq!(drain(&ch, &by_bytes).await, vec!["bbbb", "cccc"]);
}

#[tokio::test]
async fn reject_publish_nacks_exactly_the_refused_publishes_in_order() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("reject");
    declare_with_args(
        &ch,
        &q,
        args(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", longstr("reject-publish")),
        ]),
    )
    .await;
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..4 {
        pending.push(
            bounded(ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap(),
        );
    }
    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(bounded(p).await.unwrap().is_ack());
    }
    assert_eq!(outcomes, vec![true, true, false, false]);
    // Room again: the next publish is accepted.
    assert!(get(&ch, &q, true).await.is_some());
    let p = bounded(ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"m4",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert_eq!(bounded(p).await.unwrap(), Confirmation::Ack(None));
    assert_eq!(drain(&ch, &q).await, vec!["m1", "m4"]);
}

#[tokio::test]
async fn reject_publish_without_confirms_drops_silently_and_dlx_variant_dead_letters() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (dead, dlx) = (unique("dead"), unique("dlx"));
    declare_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
    declare(&ch, &dead).await;
    bind(&ch, &dead, &dlx, "").await;
    let plain = unique("reject");
    declare_with_args(
        &ch,
        &plain,
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", longstr("reject-publish")),
            ("x-dead-letter-exchange", longstr(&dlx)),
        ]),
    )
    .await;
    let with_dlx = unique("reject-dlx");
    declare_with_args(
        &ch,
        &with_dlx,
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", longstr("reject-publish-dlx")),
            ("x-dead-letter-exchange", longstr(&dlx)),
        ]),
    )
    .await;
    for q in [&plain, &with_dlx] {
        publish(&ch, "", q, b"kept").await;
        publish(&ch, "", q, format!("refused by {q}").as_bytes()).await;
    }
    assert_eq!(drain(&ch, &plain).await, vec!["kept"]);
    assert_eq!(drain(&ch, &with_dlx).await, vec!["kept"]);
    assert_eq!(
        drain(&ch, &dead).await,
        vec![format!("refused by {with_dlx}")]
    );
}

#[tokio::test]
async fn bad_overflow_value_is_refused() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("overflow-bad");
    let r = bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        args(&[("x-overflow", longstr("drop-tail"))]),
    ))
    .await;
    assert_amqp_err(r, 406, "invalid arg 'x-overflow'");
}
