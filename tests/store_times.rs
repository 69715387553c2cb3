//! Times survive restarts: a persistent message's TTL (`x-message-ttl`, `expiration`) and a
//! durable queue's `x-expires` count from before the restart. The broker reads time from a
//! clock the test moves by hand, and is restarted on the same data directory with that clock
//! moved on, as if it had been down meanwhile: no test waits for time to pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::{bounded, fresh_data_dir, unique, wait_until, TestBroker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use std::sync::Arc;
use switchboard::core::clock::{Clock, ManualClock, SystemClock};
use switchboard::core::Queue;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemClock.now_ms()))
}

async fn start(dir: &std::path::Path, clock: &Arc<ManualClock>) -> TestBroker {
    TestBroker::start_in_with_clock(dir, clock.clone()).await
}

fn queue(b: &TestBroker, name: &str) -> Option<Arc<Queue>> {
    b.broker().vhost("/").expect("vhost /").queue(name)
}

/// The reason of the first `x-death` entry of a dead-lettered message.
fn death_reason(m: &lapin::message::BasicGetMessage) -> Option<String> {
    let headers = m.delivery.properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn a_ttl_that_ran_out_while_the_broker_was_down_dead_letters_at_start() {
    let dir = fresh_data_dir();
    let clock = clock();
    let (source, dropped, dead) = (unique("ttl-src"), unique("ttl-drop"), unique("ttl-dead"));
    let dlx = unique("ttl-dlx");
    let b = start(&dir, &clock).await;
    {
        let (_c, ch) = b.channel().await;
        declare_durable_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
        declare_durable(&ch, &dead, FieldTable::default()).await;
        bind(&ch, &dead, &dlx, "").await;
        let source_args = args(&[
            ("x-message-ttl", AMQPValue::LongInt(60_000)),
            ("x-dead-letter-exchange", longstr(&dlx)),
        ]);
        declare_durable(&ch, &source, source_args).await;
        declare_durable(&ch, &dropped, FieldTable::default()).await;
        confirm_mode(&ch).await;
        publish_confirmed(&ch, "", &source, b"queue ttl", persistent()).await;
        let per_message = persistent().with_expiration("60000".into());
        publish_confirmed(&ch, "", &dropped, b"message ttl", per_message).await;
    }
    b.stop().await;

    clock.advance(61_000);
    let b = start(&dir, &clock).await;
    let (src, drop_q) = (
        queue(&b, &source).expect("source"),
        queue(&b, &dropped).expect("dropped"),
    );
    wait_until("both messages expire at start", || {
        src.expired_count() == 1 && drop_q.expired_count() == 1
    })
    .await;
    let (_c, ch) = b.channel().await;
    assert_eq!(ready_count(&ch, &source).await, 0);
    assert_eq!(ready_count(&ch, &dropped).await, 0);
    let m = get(&ch, &dead, true)
        .await
        .expect("the dead-lettered message");
    assert_eq!(&m.delivery.data[..], b"queue ttl");
    assert_eq!(death_reason(&m).as_deref(), Some("expired"));
    assert!(
        get(&ch, &dead, true).await.is_none(),
        "only the DLX queue's one"
    );
}

#[tokio::test]
async fn a_ttl_not_yet_run_out_is_delivered_and_expires_at_its_original_time() {
    let dir = fresh_data_dir();
    let clock = clock();
    let (by_queue, by_message) = (unique("ttl-queue"), unique("ttl-message"));
    let b = start(&dir, &clock).await;
    {
        let (_c, ch) = b.channel().await;
        let ttl = args(&[("x-message-ttl", AMQPValue::LongInt(60_000))]);
        declare_durable(&ch, &by_queue, ttl).await;
        declare_durable(&ch, &by_message, FieldTable::default()).await;
        confirm_mode(&ch).await;
        publish_confirmed(&ch, "", &by_queue, b"q", persistent()).await;
        let expiring = persistent().with_expiration("60000".into());
        publish_confirmed(&ch, "", &by_message, b"m", expiring).await;
    }
    b.stop().await;

    clock.advance(30_000);
    let b = start(&dir, &clock).await;
    let (_c, ch) = b.channel().await;
    for name in [&by_queue, &by_message] {
        // Delivered after the restart, and put back (keeping its expiry) for the rest.
        let m = get(&ch, name, false).await.expect("not expired yet");
        assert!(m.delivery.redelivered);
        bounded(m.delivery.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        }))
        .await
        .expect("nack with requeue");
        wait_until("requeued", || {
            queue(&b, name).is_some_and(|q| q.stats().ready == 1)
        })
        .await;
    }
    // 59.5 s after the publish: still there (a TTL counted from the restart has 30.5 s left).
    b.advance(&clock, 29_500);
    for name in [&by_queue, &by_message] {
        let q = queue(&b, name).expect("queue");
        assert_eq!(
            (q.stats().ready, q.expired_count()),
            (1, 0),
            "{name} at 59.5 s"
        );
    }
    // 60.5 s after the publish: gone, not 30 s later.
    b.advance(&clock, 1_000);
    for name in [&by_queue, &by_message] {
        let q = queue(&b, name).expect("queue");
        assert_eq!(
            (q.stats().ready, q.expired_count()),
            (0, 1),
            "{name} at 60.5 s"
        );
    }
}

#[tokio::test]
async fn x_expires_counts_from_the_last_use_before_the_restart() {
    let dir = fresh_data_dir();
    let clock = clock();
    let (idle, used) = (unique("idle"), unique("used"));
    let b = start(&dir, &clock).await;
    {
        let (_c, ch) = b.channel().await;
        let expires = || args(&[("x-expires", AMQPValue::LongInt(60_000))]);
        declare_durable(&ch, &idle, expires()).await;
        declare_durable(&ch, &used, expires()).await;
        // 20 s after declaring them, one is used (a basic.get).
        clock.advance(20_000);
        assert!(get(&ch, &used, true).await.is_none());
    }
    b.stop().await;

    clock.advance(30_000);
    let b = start(&dir, &clock).await;
    assert!(queue(&b, &idle).is_some() && queue(&b, &used).is_some());
    // 60.5 s after the declaration: the unused one is gone (counted from the restart it
    // would have had 10 s left)...
    b.advance(&clock, 10_500);
    assert!(queue(&b, &idle).is_none(), "idle since its declaration");
    assert!(queue(&b, &used).is_some(), "used 20 s later");
    // ... and the used one goes 60 s after its use (up to one second later: a use is recorded
    // at most once a second), not 60 s after the restart.
    b.advance(&clock, 20_000);
    assert!(
        queue(&b, &used).is_some(),
        "60.5 s after its use: within the second"
    );
    b.advance(&clock, 1_500);
    assert!(queue(&b, &used).is_none(), "62 s after its use");
    b.stop().await;

    // Their deletion is durable.
    let b = start(&dir, &clock).await;
    assert!(queue(&b, &idle).is_none() && queue(&b, &used).is_none());
}
