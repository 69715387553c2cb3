//! Durable definitions and persistent messages survive a restart on the same data directory;
//! transient ones do not; the log's segments are reclaimed and a torn tail is cut off.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::{bounded, fresh_data_dir, unique, TestBroker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test]
async fn durable_definitions_survive_and_transient_ones_do_not() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (c, ch) = b.channel().await;
    let ex = unique("dur-ex");
    declare_durable_exchange(&ch, &ex, ExchangeKind::Topic).await;
    declare_exchange(&ch, &unique("transient-ex"), ExchangeKind::Fanout).await;
    let q = unique("dur-q");
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
    declare_durable(&ch, &q, args).await;
    bind(&ch, &q, &ex, "a.#").await;
    bind(&ch, &q, "amq.fanout", "").await;
    let transient = unique("transient-q");
    declare(&ch, &transient).await;
    let excl = unique("excl-q");
    bounded(ch.queue_declare(
        excl.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("exclusive durable queue");
    let deleted = unique("deleted-q");
    declare_durable(&ch, &deleted, FieldTable::default()).await;
    bounded(ch.queue_delete(deleted.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("delete");
    drop(c);
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    // The durable queue is back with its arguments (an inequivalent redeclare is refused)...
    let mut other = FieldTable::default();
    other.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    assert_amqp_err(
        bounded(ch.queue_declare(q.as_str().into(), durable(), other)).await,
        406,
        "x-max-priority",
    );
    let (_c, ch) = b.channel().await;
    // ...and both bindings route to it.
    publish(&ch, &ex, "a.b.c", b"via topic").await;
    publish(&ch, "amq.fanout", "", b"via fanout").await;
    assert_eq!(drain(&ch, &q).await, ["via topic", "via fanout"]);
    for gone in [&transient, &excl, &deleted] {
        let (_c, ch) = b.channel().await;
        assert_amqp_err(
            bounded(ch.queue_declare(gone.as_str().into(), passive(), FieldTable::default())).await,
            404,
            gone,
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn persistent_messages_survive_in_order_and_acked_ones_stay_gone() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (c, ch) = b.channel().await;
    confirm_mode(&ch).await;
    let q = unique("persist");
    declare_durable(&ch, &q, FieldTable::default()).await;
    for i in 0..10 {
        let props = if i % 2 == 0 {
            persistent()
        } else {
            BasicProperties::default()
        };
        publish_confirmed(&ch, "", &q, format!("m{i}").as_bytes(), props).await;
    }
    // Take m0 and m2, ack m0 only: m2 was delivered and not acked.
    let m0 = get(&ch, &q, false).await.expect("m0");
    assert_eq!(text(&m0.delivery), "m0");
    bounded(m0.delivery.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    let m1 = get(&ch, &q, true).await.expect("m1");
    assert_eq!(text(&m1.delivery), "m1");
    let m2 = get(&ch, &q, false).await.expect("m2");
    assert_eq!(text(&m2.delivery), "m2");
    // A persistent message to a transient queue is not kept either.
    let tq = unique("transient");
    declare(&ch, &tq).await;
    publish_confirmed(&ch, "", &tq, b"lost", persistent()).await;
    // Order the acks before the shutdown: a later confirmed publish implies they were applied.
    publish_confirmed(&ch, "", &q, b"m10", persistent()).await;
    drop(c);
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let mut got = Vec::new();
    while let Some(m) = get(&ch, &q, true).await {
        assert!(
            m.delivery.redelivered,
            "recovered messages are marked redelivered"
        );
        got.push(text(&m.delivery));
    }
    assert_eq!(got, ["m2", "m4", "m6", "m8", "m10"]);
    let (_c, ch) = b.channel().await;
    assert_amqp_err(
        bounded(ch.queue_declare(tq.as_str().into(), passive(), FieldTable::default())).await,
        404,
        &tq,
    );
    b.stop().await;
}

#[tokio::test]
async fn a_queue_declared_again_after_delete_does_not_get_old_messages() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    confirm_mode(&ch).await;
    let q = unique("reborn");
    declare_durable(&ch, &q, FieldTable::default()).await;
    publish_confirmed(&ch, "", &q, b"old", persistent()).await;
    bounded(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("delete");
    declare_durable(&ch, &q, FieldTable::default()).await;
    publish_confirmed(&ch, "", &q, b"new", persistent()).await;
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(drain(&ch, &q).await, ["new"]);
    b.stop().await;
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("messages"))
        .expect("messages dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn settled_segments_are_deleted() {
    let dir = fresh_data_dir();
    let small_segments = |c: &mut switchboard::Config| c.store.segment_bytes = 4096;
    let b = TestBroker::start_in(&dir, small_segments).await;
    let (_c, ch) = b.channel().await;
    confirm_mode(&ch).await;
    let q = unique("reclaim");
    declare_durable(&ch, &q, FieldTable::default()).await;
    let body = vec![b'x'; 1000];
    for _ in 0..40 {
        publish_confirmed(&ch, "", &q, &body, persistent()).await;
    }
    let before = segment_files(&dir).len();
    assert!(before >= 8, "40 KB in 4 KB segments: {before} segments");
    assert_eq!(drain(&ch, &q).await.len(), 40);
    // The settle records go to the log; one more confirmed publish makes the writer run.
    let q2 = unique("after");
    declare_durable(&ch, &q2, FieldTable::default()).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        publish_confirmed(&ch, "", &q2, b"tick", persistent()).await;
        let now = segment_files(&dir).len();
        if now <= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "segments not reclaimed: {now} left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_the_rest_recovered() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    confirm_mode(&ch).await;
    let q = unique("torn");
    declare_durable(&ch, &q, FieldTable::default()).await;
    for i in 0..5 {
        publish_confirmed(&ch, "", &q, format!("t{i}").as_bytes(), persistent()).await;
    }
    b.stop().await;
    // A crash mid-write: half a record (valid magic and a length promising more) at the end.
    let last = segment_files(&dir).pop().expect("a segment");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .expect("open");
    std::io::Write::write_all(&mut f, &[0x53, 0x42, 0x4c, 0x47, 0, 0, 1, 0, 9, 9]).expect("append");
    drop(f);

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(drain(&ch, &q).await, ["t0", "t1", "t2", "t3", "t4"]);
    confirm_mode(&ch).await;
    publish_confirmed(&ch, "", &q, b"after", persistent()).await;
    b.stop().await;
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(drain(&ch, &q).await, ["after"]);
    b.stop().await;
}

#[tokio::test]
async fn an_old_message_does_not_pin_the_segments_after_it() {
    let dir = fresh_data_dir();
    let small_segments = |c: &mut switchboard::Config| c.store.segment_bytes = 4096;
    let b = TestBroker::start_in(&dir, small_segments).await;
    let (_c, ch) = b.channel().await;
    confirm_mode(&ch).await;
    let old = unique("old");
    declare_durable(&ch, &old, FieldTable::default()).await;
    publish_confirmed(&ch, "", &old, b"still here", persistent()).await;
    let q = unique("stream");
    declare_durable(&ch, &q, FieldTable::default()).await;
    let body = vec![b'x'; 1000];
    for _ in 0..40 {
        publish_confirmed(&ch, "", &q, &body, persistent()).await;
    }
    assert_eq!(drain(&ch, &q).await.len(), 40);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        publish_confirmed(&ch, "", &q, b"tick", persistent()).await;
        assert_eq!(drain(&ch, &q).await.len(), 1);
        let now = segment_files(&dir).len();
        if now <= 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "segments not reclaimed behind an old message: {now} left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    b.stop().await;
    let b = TestBroker::start_in(&dir, small_segments).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(drain(&ch, &old).await, ["still here"]);
    assert!(drain(&ch, &q).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn too_little_free_disk_blocks_publishers() {
    // No disk has this much free space, so the alarm goes off at once.
    let b = TestBroker::start_with(|c| c.server.disk_free_limit_bytes = u64::MAX).await;
    common::wait_until("the disk alarm", || b.broker().memory.alarm()).await;
    let publisher = b.connect().await;
    let mut events = publisher.events_listener();
    let ch = bounded(publisher.create_channel()).await.expect("channel");
    publish_doomed(&ch, "", "nowhere", b"x", BasicProperties::default()).await;
    wait_event(&mut events, "connection.blocked", |e| {
        matches!(e, lapin::Event::ConnectionBlocked(_)).then_some(())
    })
    .await;
    assert!(publisher.status().blocked());
    b.stop().await;
}

/// The log is durable up to everything appended so far (nothing else writes in these tests).
fn log_is_synced(b: &TestBroker) -> bool {
    let log = &b.broker().store.as_ref().expect("a store").log;
    log.synced() >= log.last_lsn()
}

#[tokio::test]
async fn a_confirm_and_a_stomp_receipt_come_only_after_the_fsync_and_survive_a_restart() {
    use switchboard_stomp::{Command, Frame};
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    confirm_mode(&ch).await;
    let q = unique("receipts");
    declare_durable(&ch, &q, FieldTable::default()).await;
    for i in 0..3 {
        publish_confirmed(&ch, "", &q, format!("amqp{i}").as_bytes(), persistent()).await;
        assert!(
            log_is_synced(&b),
            "confirm sent before its record was durable"
        );
    }
    let mut stomp = common::stomp::StompClient::connect(b.stomp, "1.2").await;
    for i in 0..3 {
        stomp
            .request(
                Frame::new(Command::Send)
                    .with("destination", format!("/queue/{q}"))
                    .with("persistent", "true")
                    .with_body(format!("stomp{i}").into_bytes()),
            )
            .await;
        assert!(
            log_is_synced(&b),
            "receipt sent before its record was durable"
        );
    }
    stomp.disconnect().await;
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(
        drain(&ch, &q).await,
        ["amqp0", "amqp1", "amqp2", "stomp0", "stomp1", "stomp2"]
    );
    b.stop().await;
}

#[tokio::test]
async fn a_stomp_durable_topic_subscription_keeps_its_messages_across_a_restart() {
    use common::stomp::{text, StompClient};
    let dir = fresh_data_dir();
    let dest = format!("/topic/{}", unique("durable-sub"));
    let durable = [("durable", "true"), ("auto-delete", "false")];
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let mut sub = StompClient::connect(b.stomp, "1.2").await;
    sub.subscribe_with("sub-1", &dest, "client", &durable).await;
    sub.disconnect().await;
    let mut publisher = StompClient::connect(b.stomp, "1.2").await;
    publisher
        .send(&dest, b"while away", &[("persistent", "true")])
        .await;
    publisher.disconnect().await;
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let mut sub = StompClient::connect(b.stomp, "1.2").await;
    sub.subscribe_with("sub-1", &dest, "client", &durable).await;
    let m = sub.message().await;
    assert_eq!(text(&m), "while away");
    b.stop().await;
}

#[tokio::test]
async fn tx_commit_ok_comes_after_the_fsync_of_its_publishes_and_acks() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let q = unique("tx-durable");
    declare_durable(&ch, &q, FieldTable::default()).await;
    bounded(ch.tx_select()).await.expect("tx.select");
    for body in ["a", "b", "c"] {
        publish_with(&ch, "", &q, body.as_bytes(), persistent()).await;
    }
    bounded(ch.tx_commit()).await.expect("tx.commit");
    assert!(
        log_is_synced(&b),
        "commit-ok before the publishes were durable"
    );
    let a = get(&ch, &q, false).await.expect("a");
    bounded(a.delivery.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    bounded(ch.tx_commit()).await.expect("tx.commit");
    assert!(log_is_synced(&b), "commit-ok before the ack was durable");
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(drain(&ch, &q).await, ["b", "c"]);
    b.stop().await;
}

#[tokio::test]
async fn an_mqtt_puback_and_pubrec_come_only_after_the_fsync_and_survive_a_restart() {
    use common::mqtt::RawMqtt;
    use switchboard_mqtt::{Packet, Protocol, QoS};
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let q = unique("from-mqtt");
    declare_durable(&ch, &q, FieldTable::default()).await;
    let topic = unique("sensors");
    bind(&ch, &q, "amq.topic", &format!("{topic}.#")).await;
    let mut m = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("dev"), true).await;
    for (i, qos) in [(1u16, QoS::AtLeastOnce), (2, QoS::ExactlyOnce)] {
        m.publish(&format!("{topic}/t{i}"), qos, i, format!("m{i}").as_bytes())
            .await;
        let ack = m.recv().await.expect("an acknowledgement");
        assert!(
            matches!(ack, Packet::PubAck(_) | Packet::PubRec(_)),
            "{ack:?}"
        );
        assert!(
            log_is_synced(&b),
            "{ack:?} sent before the record was durable"
        );
    }
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(drain(&ch, &q).await, ["m1", "m2"]);
    b.stop().await;
}

#[tokio::test]
async fn mqtt_persistent_sessions_and_retained_messages_survive_a_restart() {
    use common::mqtt::{connect_packet, publish_packet, RawMqtt};
    use switchboard_mqtt::{Disconnect, Packet, Protocol, PubResponse, QoS};
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (dev, publisher) = (unique("dev"), unique("pub"));
    let topic = unique("t");
    let mut sub = RawMqtt::connect(b.mqtt, Protocol::V311, &dev, false).await;
    sub.subscribe(&format!("{topic}/#"), QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(sub.closed().await.is_none(), "a clean close");
    // The publisher has a persistent session too: its QoS 2 packet ids must survive.
    let mut publ = RawMqtt::connect(b.mqtt, Protocol::V311, &publisher, false).await;
    publ.publish(
        &format!("{topic}/queued"),
        QoS::AtLeastOnce,
        1,
        b"while away",
    )
    .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let retained = switchboard_mqtt::Publish {
        retain: true,
        ..publish_packet(&format!("{topic}-r/x"), QoS::AtLeastOnce, 2, b"kept")
    };
    publ.send(&Packet::Publish(retained)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    // A QoS 2 publish received (PUBREC'd) but not yet released when the broker stops.
    publ.publish(
        &format!("{topic}/once"),
        QoS::ExactlyOnce,
        3,
        b"exactly once",
    )
    .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
    publ.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(publ.closed().await.is_none());
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (mut sub, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, &dev, false)).await;
    assert_eq!(ack.code, 0);
    assert!(ack.session_present, "the subscriber's session came back");
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = sub.next_publish().await;
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        if let Some(id) = p.packet_id {
            sub.send(&Packet::PubAck(PubResponse::new(id))).await;
        }
    }
    got.sort();
    assert_eq!(got, ["exactly once", "while away"]);
    // The publisher resends its unreleased QoS 2 message: acknowledged, not routed again.
    let (mut publ, ack) =
        RawMqtt::connect_with(b.mqtt, connect_packet(Protocol::V311, &publisher, false)).await;
    assert!(ack.session_present, "the publisher's session came back");
    let mut again = publish_packet(
        &format!("{topic}/once"),
        QoS::ExactlyOnce,
        3,
        b"exactly once",
    );
    again.dup = true;
    publ.send(&Packet::Publish(again)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
    publ.send(&Packet::PubRel(PubResponse::new(3))).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubComp(_))));
    sub.expect_nothing_pending().await;
    // A new subscriber gets the retained message.
    let mut late = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("late"), true).await;
    late.subscribe(&format!("{topic}-r/#"), QoS::AtLeastOnce)
        .await;
    let r = late.next_publish().await;
    assert_eq!(&r.payload[..], b"kept");
    assert!(r.retain);
    b.stop().await;
}

#[tokio::test]
async fn a_stomp_receipt_for_a_delayed_persistent_send_follows_its_fsync() {
    use switchboard_stomp::{Command, Frame};
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (_c, ch) = b.channel().await;
    let ex = unique("delayed-durable");
    bounded(ch.exchange_declare(
        ex.as_str().into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args(&[("x-delayed-type", longstr("direct"))]),
    ))
    .await
    .expect("delayed exchange");
    let q = unique("delayed-target");
    declare_durable(&ch, &q, FieldTable::default()).await;
    bind(&ch, &q, &ex, "k").await;
    let mut stomp = common::stomp::StompClient::connect(b.stomp, "1.2").await;
    stomp
        .request(
            Frame::new(Command::Send)
                .with("destination", format!("/exchange/{ex}/k"))
                .with("persistent", "true")
                .with("x-delay", "60000")
                .with_body(b"later".to_vec()),
        )
        .await;
    assert!(
        log_is_synced(&b),
        "receipt sent before the held message was durable"
    );
    b.stop().await;
}
