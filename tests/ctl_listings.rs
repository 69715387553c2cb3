//! `switchboard ctl` listings through the HTTP API, checked against state made with lapin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use switchboard::ctl::{run_listing, CtlError, LISTINGS};

/// Runs `command` (blocking HTTP) off the runtime, as guest.
async fn listing(
    b: &TestBroker,
    command: &str,
    vhost: &str,
    columns: &[&str],
) -> Result<Vec<String>, CtlError> {
    listing_as(b, command, vhost, columns, ("guest", "guest")).await
}

async fn listing_as(
    b: &TestBroker,
    command: &str,
    vhost: &str,
    columns: &[&str],
    (user, password): (&str, &str),
) -> Result<Vec<String>, CtlError> {
    let listing = LISTINGS
        .iter()
        .find(|l| l.command == command)
        .expect("known listing");
    let (url, vhost, user, password) = (
        b.http_url(),
        vhost.to_owned(),
        user.to_owned(),
        password.to_owned(),
    );
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    bounded(tokio::task::spawn_blocking(move || {
        run_listing(listing, &url, &user, &password, &vhost, &columns)
    }))
    .await
    .expect("listing task")
}

#[tokio::test]
async fn list_queues_counts_ready_unacked_and_consumers() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("listed");
    declare(&ch, &q).await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let cch = bounded(c.create_channel()).await.unwrap();
    bounded(cch.basic_qos(2, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    next_n(&mut consumer, 2).await;
    ready_count(&cch, &q).await;

    let columns = [
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ];
    let lines = listing(&b, "list_queues", "/", &columns).await.unwrap();
    assert_eq!(lines[0], columns.join("\t"));
    assert!(lines.contains(&format!("{q}\t1\t2\t1")), "{lines:#?}");

    // After the channel goes, the two are ready again and there is no consumer.
    bounded(cch.close(200, "bye".into())).await.unwrap();
    let lines = listing(&b, "list_queues", "/", &columns).await.unwrap();
    assert!(lines.contains(&format!("{q}\t3\t0\t0")), "{lines:#?}");
}

#[tokio::test]
async fn list_exchanges_per_vhost() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("listed-x");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let lines = listing(&b, "list_exchanges", "/", &["name", "type"])
        .await
        .unwrap();
    for want in [
        "\tdirect".to_owned(),
        "amq.direct\tdirect".to_owned(),
        "amq.fanout\tfanout".to_owned(),
        "amq.topic\ttopic".to_owned(),
        "amq.headers\theaders".to_owned(),
        "amq.match\theaders".to_owned(),
        format!("{x}\ttopic"),
    ] {
        assert!(lines.contains(&want), "{want:?} missing from {lines:#?}");
    }
    let other = listing(&b, "list_exchanges", "other", &["name", "type"])
        .await
        .unwrap();
    assert!(other.contains(&"amq.topic\ttopic".to_owned()));
    assert!(
        !other.iter().any(|l| l.starts_with(&x)),
        "{x} is in vhost / only"
    );
}

#[tokio::test]
async fn list_bindings_shows_queue_and_exchange_bindings() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (x, dst) = (unique("src"), unique("dst"));
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
    let q = unique("bound");
    declare(&ch, &q).await;
    bind(&ch, &q, &x, "the.key").await;
    bounded(ch.exchange_bind(
        dst.as_str().into(),
        x.as_str().into(),
        "e2e".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let columns = [
        "source_name",
        "source_kind",
        "destination_name",
        "destination_kind",
        "routing_key",
    ];
    let lines = listing(&b, "list_bindings", "/", &columns).await.unwrap();
    for want in [
        format!("{x}\texchange\t{q}\tqueue\tthe.key"),
        format!("{x}\texchange\t{dst}\texchange\te2e"),
        // The default exchange's implicit binding.
        format!("\texchange\t{q}\tqueue\t{q}"),
    ] {
        assert!(lines.contains(&want), "{want:?} missing from {lines:#?}");
    }
    bounded(ch.queue_unbind(
        q.as_str().into(),
        x.as_str().into(),
        "the.key".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let lines = listing(&b, "list_bindings", "/", &columns).await.unwrap();
    assert!(!lines.iter().any(|l| l.ends_with("the.key")), "{lines:#?}");
}

#[tokio::test]
async fn list_connections_shows_users_and_vhosts() {
    let b = TestBroker::start().await;
    let (_c, _ch) = b.channel().await;
    let alice = bounded(lapin::Connection::connect(
        &format!("amqp://alice:secret@{}/other", b.amqp),
        lapin::ConnectionProperties::default(),
    ))
    .await
    .unwrap();
    let columns = [
        "user",
        "vhost",
        "state",
        "protocol",
        "channels",
        "peer_host",
    ];
    let lines = listing(&b, "list_connections", "/", &columns)
        .await
        .unwrap();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines.contains(&"guest\t/\trunning\tamqp\t1\t127.0.0.1".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"alice\tother\trunning\tamqp\t0\t127.0.0.1".to_owned()),
        "{lines:#?}"
    );
    bounded(alice.close(200, "bye".into())).await.unwrap();
    wait_until("alice's connection gone", || {
        b.broker().connections().len() == 1
    })
    .await;
    let lines = listing(&b, "list_connections", "/", &["user"])
        .await
        .unwrap();
    assert_eq!(lines, ["user", "guest"]);
}

#[tokio::test]
async fn ctl_errors() {
    let b = TestBroker::start().await;
    let err = listing(&b, "list_queues", "/", &["name", "colour"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, CtlError::UnknownColumn { ref column, .. } if column == "colour"),
        "{err}"
    );
    let err = listing_as(&b, "list_queues", "/", &[], ("guest", "wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CtlError::Refused { status: 401, .. }),
        "{err}"
    );
    // The API is for administrators.
    let err = listing_as(&b, "list_queues", "/", &[], ("alice", "secret"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}
