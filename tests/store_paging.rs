//! A durable queue's backlog larger than its memory budget: persistent messages past the budget
//! are kept only as log positions, and the backlog still drains completely and in order, before
//! and after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::{bounded, fresh_data_dir, unique, TestBroker};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

const BUDGET: u64 = 64 * 1024;
const MESSAGES: usize = 2000;
const SIZE: usize = 1024;

fn small_budget(c: &mut switchboard::Config) {
    c.store.queue_memory_bytes = BUDGET;
    c.store.segment_bytes = 256 * 1024;
}

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:08}").into_bytes();
    b.resize(SIZE, b'.');
    b
}

/// Consumes `n` messages with manual acks and checks they are `first..first+n` in order.
async fn drain_in_order(ch: &lapin::Channel, q: &str, first: usize, n: usize) {
    bounded(ch.basic_qos(100, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut consumer = bounded(ch.basic_consume(
        q.into(),
        "drain".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("consume");
    for i in first..first + n {
        let d = bounded(consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery ok");
        assert_eq!(&d.data[..], &body(i)[..], "message {i}");
        bounded(d.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    bounded(ch.basic_cancel("drain".into(), BasicCancelOptions::default()))
        .await
        .expect("cancel");
}

#[tokio::test]
async fn a_backlog_many_times_the_budget_drains_in_order_before_and_after_restart() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, small_budget).await;
    let (_c, ch) = b.channel().await;
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let q = unique("paged");
    bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("declare");
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    for i in 0..MESSAGES {
        let c = bounded(ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &body(i),
            props.clone(),
        ))
        .await
        .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(bounded(c).await.expect("confirm").is_ack());
    }
    assert_eq!(ready_count(&ch, &q).await as usize, MESSAGES);
    // 2 MB of backlog, but only about the budget of it is held in memory.
    let used = b.broker().memory.used() as u64;
    assert!(
        used < BUDGET * 4,
        "{used} bytes of messages in memory for a {BUDGET}-byte budget"
    );

    // Half now, the rest after a restart (recovery pages the backlog out too).
    drain_in_order(&ch, &q, 0, MESSAGES / 2).await;
    // A confirmed publish orders the acks before the shutdown.
    bounded(
        bounded(ch.basic_publish(
            "".into(),
            "no-such-queue".into(),
            BasicPublishOptions::default(),
            b"x",
            props.clone(),
        ))
        .await
        .expect("publish"),
    )
    .await
    .expect("confirm");
    b.stop().await;

    let b = TestBroker::start_in(&dir, small_budget).await;
    let used = b.broker().memory.used() as u64;
    assert!(
        used < BUDGET * 4,
        "{used} bytes in memory after recovering a paged backlog"
    );
    let (_c, ch) = b.channel().await;
    assert_eq!(ready_count(&ch, &q).await as usize, MESSAGES / 2);
    drain_in_order(&ch, &q, MESSAGES / 2, MESSAGES / 2).await;
    assert_eq!(ready_count(&ch, &q).await, 0);
    b.stop().await;
}
