//! Connections and channel modes with lapin: authentication, vhosts, publisher confirms with
//! mandatory returns, transactions, direct reply-to, the memory alarm (connection.blocked),
//! heartbeats and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, Event};
use switchboard::core::queue::QueueStats;

async fn connect_url(url: &str) -> lapin::Result<Connection> {
    bounded(Connection::connect(url, ConnectionProperties::default())).await
}

fn stats(b: &TestBroker, queue: &str) -> QueueStats {
    b.broker()
        .vhost("/")
        .unwrap()
        .queue(queue)
        .expect("queue")
        .stats()
}

#[tokio::test]
async fn wrong_password_is_refused_and_the_broker_stays_up() {
    let b = TestBroker::start().await;
    for (user, pass) in [("guest", "wrong"), ("nobody", "guest"), ("alice", "guest")] {
        let r = connect_url(&format!("amqp://{user}:{pass}@{}/%2f", b.amqp)).await;
        // lapin advertises authentication_failure_close, so it gets RabbitMQ's 403 close.
        assert_amqp_err(
            r,
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
        );
    }
    wait_until("refused connections gone", || {
        b.broker().connections().is_empty()
    })
    .await;
    // Good credentials still work, for either user.
    let alice = connect_url(&format!("amqp://alice:secret@{}/%2f", b.amqp))
        .await
        .expect("alice connects");
    assert_eq!(alice.status().username(), "alice");
    let (_c, ch) = b.channel().await;
    let q = unique("after");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"ok").await;
    assert_eq!(drain(&ch, &q).await, ["ok"]);
}

#[tokio::test]
async fn unknown_vhost_is_530_and_vhosts_are_separate() {
    let b = TestBroker::start().await;
    let r = connect_url(&format!("amqp://guest:guest@{}/nope", b.amqp)).await;
    assert_amqp_err(r, 530, "NOT_ALLOWED - vhost nope not found");

    let other = connect_url(&format!("amqp://guest:guest@{}/other", b.amqp))
        .await
        .expect("vhost 'other' exists");
    let och = bounded(other.create_channel()).await.unwrap();
    let q = unique("in-other");
    declare(&och, &q).await;
    assert!(b.broker().vhost("other").unwrap().queue(&q).is_some());
    let (_c, ch) = b.channel().await;
    let r = bounded(ch.queue_declare(q.as_str().into(), passive(), FieldTable::default())).await;
    assert_amqp_err(r, 404, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
}

#[tokio::test]
async fn publisher_confirms_ack_every_publish() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let q = unique("confirmed");
    declare(&ch, &q).await;
    let mut confirms = Vec::new();
    for i in 0..20 {
        let body = format!("m{i}");
        confirms.push(
            bounded(ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap(),
        );
    }
    // Unroutable without mandatory: dropped, but still confirmed.
    confirms.push(
        bounded(ch.basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions::default(),
            b"lost",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    );
    for c in confirms {
        assert_eq!(bounded(c).await.unwrap(), Confirmation::Ack(None));
    }
    assert_eq!(ready_count(&ch, &q).await, 20);
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_its_ack() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let q = unique("routable");
    declare(&ch, &q).await;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let props = BasicProperties::default().with_content_type("text/plain".into());
    let returned = bounded(ch.basic_publish(
        "amq.direct".into(),
        "nowhere".into(),
        mandatory,
        b"bounce",
        props,
    ))
    .await
    .unwrap();
    // lapin attaches a basic.return to the confirm only when the return came first. (It is
    // awaited before the next publish: when one `multiple` ack covers both publishes, lapin
    // may attach the return to either confirm.)
    let Confirmation::Ack(Some(msg)) = bounded(returned).await.unwrap() else {
        panic!("expected an ack carrying the returned message");
    };
    let routed = bounded(ch.basic_publish(
        "".into(),
        q.as_str().into(),
        mandatory,
        b"stays",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert_eq!(msg.reply_code, 312);
    assert_eq!(msg.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(msg.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(msg.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(msg.delivery.data, b"bounce");
    assert_eq!(
        msg.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(bounded(routed).await.unwrap(), Confirmation::Ack(None));
    assert_eq!(drain(&ch, &q).await, ["stays"]);
}

#[tokio::test]
async fn tx_commit_publishes_and_rollback_discards() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("tx");
    declare(&ch, &q).await;
    let tx = bounded(c.create_channel()).await.unwrap();
    bounded(tx.tx_select()).await.unwrap();
    publish(&tx, "", &q, b"t1").await;
    publish(&tx, "", &q, b"t2").await;
    assert_eq!(ready_count(&tx, &q).await, 0, "nothing before commit");
    bounded(tx.tx_commit()).await.unwrap();
    assert_eq!(ready_count(&ch, &q).await, 2);

    publish(&tx, "", &q, b"rolled back").await;
    bounded(tx.tx_rollback()).await.unwrap();
    // The channel stays transactional: the next commit only has what came after the rollback.
    publish(&tx, "", &q, b"t3").await;
    bounded(tx.tx_commit()).await.unwrap();
    assert_eq!(drain(&ch, &q).await, ["t1", "t2", "t3"]);
}

#[tokio::test]
async fn tx_acks_take_effect_at_commit() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("txack");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    let tx = bounded(c.create_channel()).await.unwrap();
    bounded(tx.tx_select()).await.unwrap();
    let a = get(&tx, &q, false).await.unwrap();
    let bm = get(&tx, &q, false).await.unwrap();
    ack(&a.delivery).await;
    ready_count(&tx, &q).await;
    assert_eq!(stats(&b, &q).unacked, 2, "the ack waits for the commit");
    bounded(tx.tx_commit()).await.unwrap();
    assert_eq!(stats(&b, &q).unacked, 1);

    // A rolled-back ack never happened: closing the channel requeues the message.
    ack(&bm.delivery).await;
    bounded(tx.tx_rollback()).await.unwrap();
    assert_eq!(stats(&b, &q).unacked, 1);
    bounded(tx.close(200, "bye".into())).await.unwrap();
    let m = get(&ch, &q, true).await.expect("b requeued");
    assert_eq!(
        (text(&m.delivery).as_str(), m.delivery.redelivered),
        ("b", true)
    );
}

#[tokio::test]
async fn tx_and_confirm_modes_do_not_mix() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = bounded(ch.tx_commit()).await;
    assert_amqp_err(r, 406, "PRECONDITION_FAILED - channel is not transactional");
    let ch = bounded(c.create_channel()).await.unwrap();
    bounded(ch.tx_select()).await.unwrap();
    let r = bounded(ch.confirm_select(ConfirmSelectOptions::default())).await;
    assert_amqp_err(
        r,
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
    );
    let ch = bounded(c.create_channel()).await.unwrap();
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let r = bounded(ch.tx_select()).await;
    assert_amqp_err(
        r,
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
    );
}

#[tokio::test]
async fn direct_reply_to_rpc() {
    let b = TestBroker::start().await;
    // The RPC server.
    let (_sc, server) = b.channel().await;
    let rpc = unique("rpc");
    declare(&server, &rpc).await;
    let mut requests = consume(&server, &rpc, false).await;

    // The client consumes the pseudo-queue, then publishes with reply_to set to it.
    let (_cc, client) = b.channel().await;
    let mut replies = consume(&client, "amq.rabbitmq.reply-to", true).await;
    let props = BasicProperties::default()
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_correlation_id("c-1".into());
    publish_with(&client, "", &rpc, b"ping", props).await;

    let req = next(&mut requests).await;
    assert_eq!(text(&req), "ping");
    // The broker rewrote reply_to; the other properties came through.
    assert_eq!(
        req.properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-1")
    );
    let reply_to = req
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.")
            && reply_to.len() > "amq.rabbitmq.reply-to.".len(),
        "reply_to rewritten to a routable name, got {reply_to}"
    );
    let reply_props = BasicProperties::default().with_correlation_id("c-1".into());
    publish_with(&server, "", &reply_to, b"pong", reply_props).await;
    ack(&req).await;

    let reply = next(&mut replies).await;
    assert_eq!(text(&reply), "pong");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-1")
    );
}

#[tokio::test]
async fn reply_to_without_a_reply_consumer_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("rpc");
    declare(&ch, &q).await;
    let props = BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
    let text = provoke(&c, 406, publish_doomed(&ch, "", &q, b"ping", props)).await;
    assert_eq!(
        text,
        "PRECONDITION_FAILED - fast reply consumer does not exist"
    );
    let (_c2, ch2) = b.channel().await;
    assert_eq!(
        ready_count(&ch2, &q).await,
        0,
        "the request was not enqueued"
    );
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_until_memory_is_freed() {
    let b = TestBroker::start_with(|c| c.server.memory_high_watermark_bytes = Some(50_000)).await;
    let publisher = b.connect().await;
    let mut events = publisher.events_listener();
    let pch = bounded(publisher.create_channel()).await.unwrap();
    bounded(pch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let q = unique("hog");
    declare(&pch, &q).await;
    // A consumer-only connection, which must stay usable during the alarm.
    let (_cc, cch) = b.channel().await;

    let body = vec![b'x'; 2_000];
    let mut published = 0;
    while !b.broker().memory.alarm() {
        assert!(published < 100, "no alarm after {published} messages");
        let confirm = bounded(pch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        assert!(bounded(confirm).await.unwrap().is_ack());
        published += 1;
    }
    assert!(
        published >= 15,
        "alarm only above 50 kB: 2 kB bodies plus overhead (after {published})"
    );

    wait_event(&mut events, "connection.blocked", |e| {
        matches!(e, Event::ConnectionBlocked(_)).then_some(())
    })
    .await;
    assert!(publisher.status().blocked());

    // A publish now is held back, not lost: it completes once the alarm clears.
    let mut held = tokio::spawn({
        let pch = pch.clone();
        let q = q.clone();
        async move {
            let confirm = pch
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    b"held",
                    BasicProperties::default(),
                )
                .await?;
            confirm.await
        }
    });
    // Expected to time out: the publisher is blocked.
    assert!(tokio::time::timeout(QUIET, &mut held).await.is_err());

    // The consumer-only connection was never blocked and can free the memory.
    assert_eq!(ready_count(&cch, &q).await, published);
    let purged = bounded(cch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, published);
    assert!(!b.broker().memory.alarm(), "alarm cleared by the purge");
    wait_event(&mut events, "connection.unblocked", |e| {
        matches!(e, Event::ConnectionUnblocked).then_some(())
    })
    .await;
    assert!(!publisher.status().blocked());
    assert!(bounded(held).await.unwrap().unwrap().is_ack());
    assert_eq!(drain(&cch, &q).await, ["held"]);
}

#[tokio::test]
async fn a_flood_into_a_stalled_consumer_stays_at_the_watermark_and_resumes_as_it_drains() {
    const WATERMARK: usize = 200_000;
    const MESSAGES: usize = 500;
    // After the alarm goes off the publisher's connection finishes the frames it has already
    // read (one read buffer of 64 KiB, about 30 of these messages with their overhead), and a
    // consumer's connection holds what it is writing: the count may pass the mark by that.
    const SLACK: usize = 128 * 1024;
    let b =
        TestBroker::start_with(|c| c.server.memory_high_watermark_bytes = Some(WATERMARK as u64))
            .await;
    let memory = b.broker().memory.clone();
    let publisher = b.connect().await;
    let mut events = publisher.events_listener();
    let pch = bounded(publisher.create_channel()).await.unwrap();
    let q = unique("flood");
    declare(&pch, &q).await;
    let flood = tokio::spawn({
        let q = q.clone();
        async move {
            for i in 0..MESSAGES {
                let mut body = vec![b'x'; 2_000];
                body[..8].copy_from_slice(&(i as u64).to_be_bytes());
                pch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("basic.publish");
            }
        }
    });
    // Nobody consumes yet: the publisher is blocked at the watermark.
    wait_event(&mut events, "connection.blocked", |e| {
        matches!(e, Event::ConnectionBlocked(_)).then_some(())
    })
    .await;
    let at_block = memory.used();
    assert!(
        (WATERMARK..WATERMARK + SLACK).contains(&at_block),
        "blocked at {at_block} bytes"
    );
    assert!(!flood.is_finished(), "the flood is held back");
    // A consumer drains with acknowledgements; the publisher is let through again each time
    // the count falls below 90% of the mark, until every message has arrived, in order.
    let (_cc, cch) = b.channel().await;
    bounded(cch.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&cch, &q, false).await;
    let mut peak = at_block;
    for i in 0..MESSAGES {
        let d = next(&mut consumer).await;
        assert_eq!(
            d.data[..8],
            (i as u64).to_be_bytes(),
            "message {i} in order"
        );
        ack(&d).await;
        peak = peak.max(memory.used());
    }
    bounded(flood).await.unwrap();
    assert!(peak < WATERMARK + SLACK, "counted {peak} bytes at most");
    wait_until("all memory released", || memory.used() < WATERMARK / 2).await;
    assert!(!memory.alarm());
}

#[tokio::test]
async fn graceful_shutdown_closes_connections_with_320() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    declare(&ch, &unique("q")).await;
    let mut events = c.events_listener();
    bounded(b.stop()).await;
    let text = wait_error_event(&mut events, 320).await;
    assert_eq!(
        text,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    wait_until("lapin sees the connection closed", || {
        let s = c.status();
        s.closed() || s.errored()
    })
    .await;
}
