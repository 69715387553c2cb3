//! Delayed delivery over AMQP with lapin: the `x-delayed-message` exchange type with
//! `x-delayed-type`, messages with an `x-delay` header held and routed when due, persistent ones
//! surviving a restart; the lateness of a batch of delayed messages is measured and printed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::{Duration, Instant};
use switchboard::ctl::{run_listing, LISTINGS};

async fn declare_delayed(ch: &lapin::Channel, name: &str, durable: bool) {
    bounded(ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        args(&[("x-delayed-type", longstr("direct"))]),
    ))
    .await
    .expect("x-delayed-message exchange");
}

fn with_delay(ms: i64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    BasicProperties::default().with_headers(h)
}

#[tokio::test]
async fn delayed_messages_arrive_in_due_order_and_not_before_their_delay() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (ex, q) = (unique("delayed"), unique("delayed-q"));
    declare_delayed(&ch, &ex, false).await;
    declare(&ch, &q).await;
    bind(&ch, &q, &ex, "k").await;
    let mut consumer = consume(&ch, &q, true).await;
    let start = Instant::now();
    for (body, delay) in [("200", 200), ("100", 100), ("none", 0), ("negative", -5)] {
        publish_with(&ch, &ex, "k", body.as_bytes(), with_delay(delay)).await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next(&mut consumer).await;
        let header = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delay").cloned());
        got.push((text(&d), start.elapsed()));
        // The x-delay header stays on the delivered message, as with the plugin; the broker's
        // own bookkeeping header does not leak.
        assert!(header.is_some(), "x-delay kept");
        let leaked = d
            .properties
            .headers()
            .as_ref()
            .map_or(0, |h| h.inner().len());
        assert_eq!(leaked, 1, "only x-delay in the headers");
    }
    let bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, vec!["none", "negative", "100", "200"]);
    // Millisecond resolution: at most 1 ms of rounding.
    assert!(got[2].1 >= Duration::from_millis(99), "{got:?}");
    assert!(got[3].1 >= Duration::from_millis(199), "{got:?}");
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test]
async fn a_delayed_exchange_is_listed_with_its_declared_type() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let ex = unique("delayed-listed");
    declare_delayed(&ch, &ex, false).await;
    let listing = LISTINGS
        .iter()
        .find(|l| l.command == "list_exchanges")
        .expect("listing");
    let url = b.http_url();
    let lines = bounded(tokio::task::spawn_blocking(move || {
        let columns = vec!["name".to_owned(), "type".to_owned()];
        run_listing(listing, &url, "guest", "guest", "/", &columns)
    }))
    .await
    .expect("listing task")
    .expect("listing");
    assert!(
        lines.contains(&format!("{ex}\tx-delayed-message")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_delayed_exchange_needs_x_delayed_type() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let r = bounded(ch.exchange_declare(
        unique("delayed-bad").as_str().into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        "Invalid argument, 'x-delayed-type' must be an existing exchange type",
    );
}

#[tokio::test]
async fn persistent_delayed_messages_survive_a_restart_and_fire_after_it() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (c, ch) = b.channel().await;
    let (ex, q) = (unique("delayed-durable"), unique("delayed-durable-q"));
    declare_delayed(&ch, &ex, true).await;
    bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    bind(&ch, &q, &ex, "k").await;
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for (body, mode) in [("persistent", 2), ("transient", 1)] {
        let confirm = bounded(ch.basic_publish(
            ex.as_str().into(),
            "k".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            with_delay(300).with_delivery_mode(mode),
        ))
        .await
        .unwrap();
        assert!(bounded(confirm).await.unwrap().is_ack());
    }
    assert_eq!(ready_count(&ch, &q).await, 0, "still held");
    drop(c);
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let mut consumer = consume(&ch, &q, true).await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "persistent");
    assert_quiet(&mut consumer).await;
    // Fired and settled: a second restart does not bring it back.
    drop(ch);
    b.stop().await;
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(ready_count(&ch, &q).await, 0);
    let ex_still_delays = b.broker().vhost("/").unwrap().exchange(&ex).unwrap();
    assert_eq!(ex_still_delays.type_name(), "x-delayed-message");
}

/// Publishes delayed messages and prints how late they arrive (the figure is reported, not
/// asserted: timing depends on the machine).
#[tokio::test]
async fn lateness_of_delayed_messages_is_measured() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (ex, q) = (unique("delayed-timing"), unique("delayed-timing-q"));
    declare_delayed(&ch, &ex, false).await;
    declare(&ch, &q).await;
    bind(&ch, &q, &ex, "k").await;
    let mut consumer = consume(&ch, &q, true).await;
    let n = 500;
    let start = Instant::now();
    let mut due = std::collections::HashMap::new();
    for i in 0..n {
        let delay = 50 + (i * 37 % 400) as i64;
        let body = format!("{i}");
        due.insert(
            body.clone(),
            start.elapsed() + Duration::from_millis(delay as u64),
        );
        publish_with(&ch, &ex, "k", body.as_bytes(), with_delay(delay)).await;
    }
    let mut late = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next(&mut consumer).await;
        let arrived = start.elapsed();
        let expected = due[&text(&d)];
        // Due times have millisecond resolution (as in RabbitMQ): up to 1 ms early is the
        // rounding of the publish instant.
        assert!(
            arrived + Duration::from_millis(1) >= expected,
            "delivered before its delay"
        );
        late.push(arrived.saturating_sub(expected));
    }
    late.sort();
    let pct = |p: usize| late[(late.len() - 1) * p / 100];
    println!(
        "delayed lateness over {n} messages: p50 {:?} p99 {:?} max {:?}",
        pct(50),
        pct(99),
        late[late.len() - 1]
    );
}
