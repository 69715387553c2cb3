//! A persistent message routed to several durable queues is written once and referenced by
//! the others: fewer bytes written, every queue gets it back after a restart, and the body
//! stays until the last queue settles it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::{bounded, fresh_data_dir, unique, TestBroker};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use std::sync::atomic::Ordering;

const QUEUES: usize = 10;
const MESSAGES: usize = 50;
const BODY: usize = 4096;

fn bytes_written(b: &TestBroker) -> u64 {
    let log = &b.broker().store.as_ref().expect("store").log;
    log.stats.bytes_written.load(Ordering::Relaxed)
}

async fn settle_all(b: &TestBroker) {
    let log = &b.broker().store.as_ref().expect("store").log;
    bounded(log.wait_synced(log.last_lsn())).await;
}

#[tokio::test]
async fn a_fanned_out_body_is_written_once_and_kept_until_the_last_queue_acks() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let x = unique("fan");
    declare_durable_exchange(&ch, &x, ExchangeKind::Fanout).await;
    let queues: Vec<String> = (0..QUEUES).map(|i| unique(&format!("fan-q{i}"))).collect();
    for q in &queues {
        bounded(ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .expect("queue");
        bind(&ch, q, &x, "").await;
    }
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirms");
    settle_all(&b).await;
    let before = bytes_written(&b);
    // What is live before any message: the definitions, and the users, vhosts and permissions
    // seeded from the configuration.
    let live_records = |b: &TestBroker| -> u64 {
        let log = &b.broker().store.as_ref().expect("store").log;
        log.segments().iter().map(|(_, u)| u.records).sum()
    };
    let baseline = live_records(&b);
    assert!(baseline > 2 * QUEUES as u64, "definitions are live records");
    for i in 0..MESSAGES {
        let mut body = format!("m{i:03}-").into_bytes();
        body.resize(BODY, b'.');
        let confirm = bounded(ch.basic_publish(
            x.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .expect("publish");
        assert!(bounded(confirm).await.expect("confirm").is_ack());
    }
    settle_all(&b).await;
    let per_message = (bytes_written(&b) - before) / MESSAGES as u64;
    eprintln!("{per_message} bytes written per {BODY}-byte message fanned out to {QUEUES} queues");
    // The body once plus nine 48-byte references, not ten bodies.
    assert!(
        per_message < (BODY as u64) * 2,
        "{per_message} bytes written per message fanned out to {QUEUES} queues"
    );
    b.stop().await;

    // Every queue has every message back; acking in all but the last keeps its bodies.
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i:03}-")).collect();
    for q in &queues[..QUEUES - 1] {
        let (_c, ch) = b.channel().await;
        let got: Vec<String> = drain(&ch, q)
            .await
            .iter()
            .map(|m| m[..5].to_owned())
            .collect();
        assert_eq!(got, expected, "queue {q}");
    }
    settle_all(&b).await;
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let last = &queues[QUEUES - 1];
    for q in &queues[..QUEUES - 1] {
        let (_c, ch) = b.channel().await;
        assert_eq!(
            ready_count(&ch, q).await,
            0,
            "acked messages stay gone in {q}"
        );
    }
    let (_c, ch) = b.channel().await;
    let got: Vec<String> = drain(&ch, last)
        .await
        .iter()
        .map(|m| m[..5].to_owned())
        .collect();
    assert_eq!(got, expected, "the last queue still has every body");
    settle_all(&b).await;
    // Nothing holds a message any more: no segment has a live message record (only the
    // keyed records live before the first message remain).
    let log = &b.broker().store.as_ref().expect("store").log;
    assert_eq!(live_records(&b), baseline, "{:?}", log.segments());
    b.stop().await;
}
