//! Durable definitions as keyed records in the log: replies wait for their fsync, the records
//! survive restarts, many definitions cost no more per declare than a few and recover quickly,
//! and the definitions files of the previous release are moved into the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::{bounded, fresh_data_dir, test_config_text_in, unique, TestBroker};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::core::vhost::{ExchangeSpec, QueueSpec};
use switchboard::core::Broker;
use switchboard::Config;

fn log_is_synced(b: &TestBroker) -> bool {
    let log = &b.broker().store.as_ref().expect("a store").log;
    log.synced() >= log.last_lsn()
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_definition_reply_comes_after_its_fsync_and_the_change_survives() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let (x, y) = (unique("defs-x"), unique("defs-y"));
    let (q, gone) = (unique("defs-q"), unique("defs-gone"));
    let synced = |what: &str| assert!(log_is_synced(&b), "{what} sent before its fsync");
    for ex in [&x, &y] {
        bounded(ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        ))
        .await
        .expect("exchange.declare");
        synced("exchange.declare-ok");
    }
    for name in [&q, &gone] {
        bounded(ch.queue_declare(name.as_str().into(), durable_queue(), FieldTable::default()))
            .await
            .expect("queue.declare");
        synced("queue.declare-ok");
    }
    bind(&ch, &q, &x, "a.#").await;
    synced("queue.bind-ok");
    bind(&ch, &q, &x, "dropped").await;
    bounded(ch.queue_unbind(
        q.as_str().into(),
        x.as_str().into(),
        "dropped".into(),
        FieldTable::default(),
    ))
    .await
    .expect("queue.unbind");
    synced("queue.unbind-ok");
    bounded(ch.exchange_bind(
        x.as_str().into(),
        y.as_str().into(),
        "b.#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange.bind");
    synced("exchange.bind-ok");
    bounded(ch.queue_delete(gone.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    synced("queue.delete-ok");
    b.stop().await;
    assert!(
        !dir.join("definitions").exists(),
        "no definitions files are written any more"
    );

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    publish(&ch, &x, "a.direct", b"via x").await;
    publish(&ch, &x, "dropped", b"unbound key").await;
    publish(&ch, &y, "b.via-y", b"not routed: x only takes a.#").await;
    publish(&ch, &y, "a.via-y", b"nor this").await;
    assert_eq!(drain(&ch, &q).await, ["via x"]);
    let (_c, ch) = b.channel().await;
    assert_amqp_err(
        bounded(ch.queue_declare(gone.as_str().into(), passive(), FieldTable::default())).await,
        404,
        &gone,
    );
    let vh = b.broker().vhost("/").expect("vhost");
    let y_ex = vh.exchange(&y).expect("y is back");
    assert_eq!(y_ex.bindings().len(), 1, "the exchange-to-exchange binding");
    b.stop().await;
}

#[tokio::test]
async fn deleting_an_exchange_or_queue_deletes_the_bindings_records_with_it() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let (x, q, kept) = (unique("del-x"), unique("del-q"), unique("del-kept"));
    bounded(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        durable_exchange(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange.declare");
    for name in [&q, &kept] {
        bounded(ch.queue_declare(name.as_str().into(), durable_queue(), FieldTable::default()))
            .await
            .expect("queue.declare");
        bind(&ch, name, &x, "k").await;
        bind(&ch, name, "amq.direct", "k").await;
    }
    let last_lsn = |b: &TestBroker| b.broker().store.as_ref().expect("store").log.last_lsn();
    let before = last_lsn(&b);
    bounded(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    assert!(last_lsn(&b) > before, "the delete appended records");
    bounded(ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .expect("exchange.delete");
    b.stop().await;

    // After a restart the deleted queue and exchange are gone with their bindings, and no
    // binding record was left behind (each would be restored or reported).
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let vh = b.broker().vhost("/").expect("vhost");
    assert!(vh.queue(&q).is_none() && vh.exchange(&x).is_none());
    let direct = vh.exchange("amq.direct").expect("amq.direct");
    let to: Vec<String> = direct
        .bindings()
        .iter()
        .map(|b| b.destination.name().to_owned())
        .collect();
    assert_eq!(to, std::slice::from_ref(&kept));
    b.stop().await;
}

/// A broker on `dir` through the core API only (no listeners).
fn open_broker(dir: &Path) -> Arc<Broker> {
    let config = Config::parse(&test_config_text_in(dir)).expect("config");
    Broker::open(config).expect("broker opens")
}

/// Waits for the log and stops its writer, so another broker may open the directory.
async fn close_broker(b: &Broker) {
    let log = &b.store.as_ref().expect("store").log;
    bounded(log.wait_synced(log.last_lsn())).await;
    log.stop();
}

/// How many queues the scale test makes: `SWITCHBOARD_DEFINITIONS_SCALE` (the README's
/// figure is for 100,000 in a release build), else a number a debug build makes in seconds.
fn scale() -> usize {
    std::env::var("SWITCHBOARD_DEFINITIONS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[tokio::test]
async fn many_durable_queues_cost_the_same_per_declare_and_recover_quickly() {
    let n = scale();
    let dir = fresh_data_dir();
    let b = open_broker(&dir);
    let vh = b.vhost("/").expect("vhost");
    vh.declare_exchange(
        ExchangeSpec {
            name: "devices".into(),
            kind: "topic".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        },
        false,
    )
    .expect("exchange");
    let tenth = n / 10;
    let mut tenths = Vec::new();
    let started = Instant::now();
    let mut lap = Instant::now();
    for i in 0..n {
        let name = format!("device-{i}");
        let spec = QueueSpec {
            name: name.clone(),
            durable: true,
            ..Default::default()
        };
        vh.declare_queue(spec, false, 0).expect("declare");
        vh.bind_queue(
            &name,
            "devices",
            &format!("d.{i}.#"),
            &Default::default(),
            0,
        )
        .expect("bind");
        // Every reply waits for its records: a client waits like this for each declare-ok.
        bounded(vh.definitions_synced()).await;
        if (i + 1) % tenth == 0 {
            tenths.push(lap.elapsed());
            lap = Instant::now();
        }
    }
    let declared = started.elapsed();
    close_broker(&b).await;
    drop((vh, b));

    let started = Instant::now();
    let b = open_broker(&dir);
    let recovered = started.elapsed();
    let vh = b.vhost("/").expect("vhost");
    let devices = vh.exchange("devices").expect("exchange is back");
    assert_eq!(vh.queues().len(), n);
    assert_eq!(devices.bindings().len(), n);
    let first = tenths[0];
    let last = tenths[tenths.len() - 1];
    eprintln!(
        "{n} durable queues with a binding each: declared and bound in {declared:?} \
         (first tenth {first:?}, last tenth {last:?}), recovered in {recovered:?}"
    );
    // Flat: the last tenth costs about what the first did (generous: fsync times vary on a
    // shared CI machine; rewriting the definitions file on each declare made the last tenth
    // several times the first).
    assert!(
        last <= first * 3 + Duration::from_secs(1),
        "declares slowed down as queues grew: first tenth {first:?}, last {last:?}"
    );
    close_broker(&b).await;
}

/// Copies the previous release's definitions fixture into `dir/definitions`, and a message for
/// its queue (log id 4242) into the log, as that release left them.
fn write_legacy_data_dir(dir: &Path) {
    let defs = dir.join("definitions");
    std::fs::create_dir_all(&defs).expect("definitions dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-definitions");
    std::fs::copy(fixture.join("vhost-2f.json"), defs.join("vhost-2f.json")).expect("fixture");
    let messages = dir.join("messages");
    std::fs::create_dir_all(&messages).expect("messages dir");
    let mut props = bytes::BytesMut::new();
    switchboard_amqp::BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
    .encode(&mut props);
    let mut segment = Vec::new();
    switchboard::store::record::encode_enqueue(
        &mut segment,
        switchboard::store::record::Entry::new(4242, 0),
        "legacy-ex",
        "a.b",
        &props,
        b"kept across the upgrade",
    );
    std::fs::write(
        switchboard::store::log::segment_path(&messages, 1),
        &segment,
    )
    .expect("segment");
}

/// The fixture's definitions and message are all there.
async fn assert_legacy_content(b: &TestBroker) {
    let (_c, ch) = b.channel().await;
    bounded(ch.queue_declare("legacy-q".into(), passive(), FieldTable::default()))
        .await
        .expect("legacy-q is there");
    publish(&ch, "legacy-ex", "a.new", b"routed by the old binding").await;
    assert_eq!(
        drain(&ch, "legacy-q").await,
        ["kept across the upgrade", "routed by the old binding"]
    );
}

#[tokio::test]
async fn a_data_directory_of_the_previous_release_is_moved_into_the_log() {
    let dir = fresh_data_dir();
    write_legacy_data_dir(&dir);
    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert!(!dir.join("definitions").exists(), "old files are retired");
    assert!(
        dir.join("definitions.migrated/vhost-2f.json").exists(),
        "and kept aside"
    );
    let vh = b.broker().vhost("/").expect("vhost");
    assert_eq!(vh.definitions_lsn(), 0, "no change made since the start");
    let (_c, ch) = b.channel().await;
    bounded(ch.queue_declare("legacy-q".into(), passive(), FieldTable::default()))
        .await
        .expect("legacy-q is there");
    b.stop().await;

    // The records alone (the old files are gone) bring everything back.
    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert_legacy_content(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn an_upgrade_interrupted_before_the_old_files_were_retired_is_done_again() {
    let dir = fresh_data_dir();
    write_legacy_data_dir(&dir);
    // The first start migrated and retired the files; put them back as if it had crashed
    // after writing the records but before the rename.
    let b = TestBroker::start_in(&dir, |_| {}).await;
    b.stop().await;
    std::fs::rename(dir.join("definitions.migrated"), dir.join("definitions")).expect("undo");

    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert!(!dir.join("definitions").exists());
    let vh = b.broker().vhost("/").expect("vhost");
    assert_eq!(vh.queues().len(), 1, "one queue, not two");
    assert_eq!(vh.exchange("legacy-ex").expect("ex").bindings().len(), 1);
    assert_legacy_content(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn an_unreadable_old_definitions_file_stops_the_start_with_its_name() {
    let dir = fresh_data_dir();
    write_legacy_data_dir(&dir);
    let bad = dir.join("definitions/vhost-2f.json");
    std::fs::write(&bad, b"{ not json").expect("corrupt");
    let config = Config::parse(&test_config_text_in(&dir)).expect("config");
    let err = Broker::open(config).expect_err("refuses to start");
    let text = err.to_string();
    assert!(text.contains("vhost-2f.json"), "{text}");
    assert!(bad.exists(), "the file is left for the operator");
}
