//! STOMP messaging: destinations, ack modes, NACK, prefetch, transactions over SEND and ACK,
//! durable topic subscriptions, queue arguments and headers ⇄ properties, all STOMP to STOMP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::stomp::{text, StompClient};
use common::{unique, wait_until, TestBroker};
use std::sync::Arc;
use std::time::Duration;
use switchboard::core::vhost::QueueSpec;
use switchboard::core::Queue;
use switchboard_amqp::FieldValue;
use switchboard_stomp::{Command, Frame};

const QUIET: Duration = Duration::from_millis(200);

/// The core queue behind a `/queue/<name>` destination.
fn queue_behind(tb: &TestBroker, destination: &str) -> Arc<Queue> {
    let name = destination.trim_start_matches("/queue/");
    tb.broker()
        .vhost("/")
        .unwrap()
        .queue(name)
        .expect("queue exists")
}

#[tokio::test]
async fn queue_destination_round_trip_in_every_version() {
    let tb = TestBroker::start().await;
    for version in ["1.0", "1.1", "1.2"] {
        let q = unique("/queue/v");
        let mut c = StompClient::connect(tb.stomp, version).await;
        c.subscribe("s1", &q, "auto").await;
        c.send(&q, b"hello", &[]).await;
        let m = c.message().await;
        assert_eq!(text(&m), "hello");
        assert_eq!(m.header("destination"), Some(q.as_str()));
        assert_eq!(m.header("subscription"), Some("s1"));
        assert_eq!(m.header("redelivered"), Some("false"));
        assert_eq!(m.header("content-length"), Some("5"));
        assert!(m.header("message-id").is_some());
        // The queue is durable, as RabbitMQ declares it.
        let queue = queue_behind(&tb, &q);
        assert!(queue.durable && !queue.auto_delete);
    }
}

#[tokio::test]
async fn send_to_a_queue_before_anyone_subscribes_keeps_the_message() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/early");
    let mut a = StompClient::connect(tb.stomp, "1.2").await;
    a.send(&q, b"first", &[]).await;
    let mut b = StompClient::connect(tb.stomp, "1.2").await;
    b.subscribe("s", &q, "auto").await;
    assert_eq!(text(&b.message().await), "first");
}

#[tokio::test]
async fn client_ack_is_cumulative_and_unacked_messages_come_back_redelivered() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/cum");
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.send_numbered(&q, "m", 3).await;
    c.subscribe("s", &q, "client").await;
    let ms = [c.message().await, c.message().await, c.message().await];
    assert_eq!(ms[1].header("ack"), ms[1].header("message-id"));
    // ACK of the second covers the first too.
    c.ack(&ms[1], Command::Ack, &[]).await;
    let queue = queue_behind(&tb, &q);
    assert_eq!(queue.stats().unacked, 1);
    drop(c); // abrupt close: the third comes back
    let mut d = StompClient::connect(tb.stomp, "1.1").await;
    d.subscribe("s", &q, "client-individual").await;
    let m = d.message().await;
    assert_eq!(
        (text(&m).as_str(), m.header("redelivered")),
        ("m2", Some("true"))
    );
    assert_eq!(m.header("ack"), None, "no ack header before 1.2");
    d.ack(&m, Command::Ack, &[]).await;
    wait_until("queue settled", || {
        queue.stats().unacked == 0 && queue.stats().ready == 0
    })
    .await;
}

#[tokio::test]
async fn client_individual_acks_one_and_nack_requeues_or_discards() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/ind");
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.send_numbered(&q, "m", 2).await;
    c.subscribe("s", &q, "client-individual").await;
    let m0 = c.message().await;
    let m1 = c.message().await;
    c.ack(&m1, Command::Ack, &[]).await;
    let queue = queue_behind(&tb, &q);
    assert_eq!(queue.stats().unacked, 1, "m0 still unacked");
    // NACK requeues by default...
    c.ack(&m0, Command::Nack, &[]).await;
    let again = c.message().await;
    assert_eq!(
        (text(&again).as_str(), again.header("redelivered")),
        ("m0", Some("true"))
    );
    // ...and drops with requeue:false.
    c.ack(&again, Command::Nack, &[("requeue", "false")]).await;
    c.expect_nothing(QUIET).await;
    let s = queue.stats();
    assert_eq!((s.ready, s.unacked), (0, 0));
}

#[tokio::test]
async fn version_1_0_acks_by_message_id() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/ten");
    let mut c = StompClient::connect(tb.stomp, "1.0").await;
    c.send(&q, b"x", &[]).await;
    // 1.0 subscriptions may omit the id.
    c.request(
        Frame::new(Command::Subscribe)
            .with("destination", q.as_str())
            .with("ack", "client"),
    )
    .await;
    let m = c.message().await;
    assert_eq!(m.header("subscription"), Some(q.as_str()));
    c.request(Frame::new(Command::Ack).with("message-id", m.header("message-id").unwrap()))
        .await;
    let queue = queue_behind(&tb, &q);
    assert_eq!(queue.stats().unacked, 0);
}

#[tokio::test]
async fn prefetch_count_limits_unacked_messages() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/pf");
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.send_numbered(&q, "", 5).await;
    c.subscribe_with("s", &q, "client-individual", &[("prefetch-count", "2")])
        .await;
    let a = c.message().await;
    let _b = c.message().await;
    c.expect_nothing(QUIET).await;
    c.ack(&a, Command::Ack, &[]).await;
    assert_eq!(text(&c.message().await), "2");
}

#[tokio::test]
async fn transactions_hold_sends_and_acks_until_commit() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/tx");
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.send(&q, b"before", &[]).await;
    c.subscribe("s", &q, "client-individual").await;
    let before = c.message().await;
    c.request(Frame::new(Command::Begin).with("transaction", "t1"))
        .await;
    c.send(&q, b"in-tx", &[("transaction", "t1")]).await;
    c.ack(&before, Command::Ack, &[("transaction", "t1")]).await;
    c.expect_nothing(QUIET).await;
    let queue = queue_behind(&tb, &q);
    assert_eq!(queue.stats().unacked, 1, "ack held");
    c.request(Frame::new(Command::Commit).with("transaction", "t1"))
        .await;
    let in_tx = c.message().await;
    assert_eq!(text(&in_tx), "in-tx");
    assert_eq!(
        queue.stats().unacked,
        1,
        "the first is acked, the new one is not"
    );

    // ABORT drops both kinds: the SEND never arrives and the ACK never happens.
    c.request(Frame::new(Command::Begin).with("transaction", "t2"))
        .await;
    c.send(&q, b"aborted", &[("transaction", "t2")]).await;
    c.ack(&in_tx, Command::Ack, &[("transaction", "t2")]).await;
    c.request(Frame::new(Command::Abort).with("transaction", "t2"))
        .await;
    c.expect_nothing(QUIET).await;
    let s = queue.stats();
    assert_eq!((s.ready, s.unacked), (0, 1));
}

#[tokio::test]
async fn topic_subscriptions_get_their_own_queues() {
    let tb = TestBroker::start().await;
    let key = unique("news").replace('-', "_");
    let mut a = StompClient::connect(tb.stomp, "1.2").await;
    let mut b = StompClient::connect(tb.stomp, "1.2").await;
    a.subscribe("s", &format!("/topic/{key}.*"), "auto").await;
    b.subscribe("s", &format!("/topic/{key}.sport"), "auto")
        .await;
    let mut p = StompClient::connect(tb.stomp, "1.1").await;
    p.send(&format!("/topic/{key}.sport"), b"goal", &[]).await;
    for c in [&mut a, &mut b] {
        let m = c.message().await;
        assert_eq!(text(&m), "goal");
        assert_eq!(
            m.header("destination"),
            Some(format!("/topic/{key}.sport").as_str())
        );
    }
    // The subscription queues are auto-delete: they go with the subscription.
    let vh = tb.broker().vhost("/").unwrap();
    let subs = || {
        vh.queues()
            .into_iter()
            .filter(|q| q.name.starts_with("stomp-subscription-"))
            .count()
    };
    assert_eq!(subs(), 2);
    a.request(Frame::new(Command::Unsubscribe).with("id", "s"))
        .await;
    b.disconnect().await;
    wait_until("subscription queues deleted", || subs() == 0).await;
}

#[tokio::test]
async fn durable_topic_subscription_outlives_the_connection() {
    let tb = TestBroker::start().await;
    let dest = format!("/topic/{}", unique("durable"));
    let durable = [("durable", "true"), ("auto-delete", "false")];
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe_with("sub-1", &dest, "client", &durable).await;
    c.disconnect().await;
    let mut p = StompClient::connect(tb.stomp, "1.2").await;
    p.send(&dest, b"while away", &[("persistent", "true")])
        .await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe_with("sub-1", &dest, "client", &durable).await;
    let m = c.message().await;
    assert_eq!(text(&m), "while away");
    assert_eq!(m.header("persistent"), Some("true"));
    c.ack(&m, Command::Ack, &[]).await;
    let vh = tb.broker().vhost("/").unwrap();
    let durable_queues = || {
        vh.queues()
            .into_iter()
            .filter(|q| q.durable && q.name.starts_with("stomp-subscription-"))
            .count()
    };
    assert_eq!(durable_queues(), 1);
    // UNSUBSCRIBE with durable:true ends it for good.
    c.request(
        Frame::new(Command::Unsubscribe)
            .with("id", "sub-1")
            .with("durable", "true"),
    )
    .await;
    assert_eq!(durable_queues(), 0);
}

#[tokio::test]
async fn exchange_and_amq_queue_destinations() {
    let tb = TestBroker::start().await;
    let vh = tb.broker().vhost("/").unwrap();
    let name = unique("existing");
    vh.declare_queue(
        QueueSpec {
            name: name.clone(),
            ..Default::default()
        },
        false,
        0,
    )
    .unwrap();
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe("direct", "/exchange/amq.direct/rk", "auto")
        .await;
    c.subscribe("fanout", "/exchange/amq.fanout", "auto").await;
    c.subscribe("amq", &format!("/amq/queue/{name}"), "auto")
        .await;
    c.send("/exchange/amq.direct/rk", b"d", &[]).await;
    let m = c.message().await;
    assert_eq!(
        (m.header("subscription"), m.header("destination")),
        (Some("direct"), Some("/exchange/amq.direct/rk"))
    );
    c.send("/exchange/amq.fanout", b"f", &[]).await;
    let m = c.message().await;
    assert_eq!(
        (m.header("subscription"), m.header("destination")),
        (Some("fanout"), Some("/exchange/amq.fanout"))
    );
    c.send(&format!("/amq/queue/{name}"), b"a", &[]).await;
    let m = c.message().await;
    assert_eq!(m.header("subscription"), Some("amq"));
    assert_eq!(
        m.header("destination"),
        Some(format!("/queue/{name}").as_str())
    );
}

#[tokio::test]
async fn subscribe_headers_become_queue_arguments() {
    let tb = TestBroker::start().await;
    let q = unique("args");
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe_with(
        "s",
        &format!("/queue/{q}"),
        "auto",
        &[
            ("x-max-length", "10"),
            ("x-dead-letter-exchange", "dlx"),
            ("x-queue-type", "classic"),
        ],
    )
    .await;
    let queue = tb.broker().vhost("/").unwrap().queue(&q).unwrap();
    assert_eq!(
        queue.arguments.get("x-max-length"),
        Some(&FieldValue::I64(10))
    );
    assert_eq!(
        queue
            .arguments
            .get("x-dead-letter-exchange")
            .and_then(|v| v.as_str()),
        Some("dlx")
    );
    // x-queue-name names a topic subscription's queue.
    let named = unique("named");
    c.subscribe_with(
        "t",
        "/topic/named.key",
        "auto",
        &[("x-queue-name", named.as_str())],
    )
    .await;
    assert!(tb.broker().vhost("/").unwrap().queue(&named).is_some());
    // Redeclaring with other arguments is refused, as in RabbitMQ.
    let err = c
        .expect_error(
            Frame::new(Command::Subscribe)
                .with("id", "s2")
                .with("destination", format!("/queue/{q}"))
                .with("x-max-length", "11"),
        )
        .await;
    assert!(text(&err).contains("PRECONDITION_FAILED"), "{}", text(&err));
}

#[tokio::test]
async fn headers_map_to_properties_and_back() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/props");
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe("s", &q, "auto").await;
    let sent = [
        ("content-type", "application/json"),
        ("content-encoding", "utf-8"),
        ("persistent", "true"),
        ("priority", "7"),
        ("correlation-id", "c-1"),
        ("reply-to", "/queue/replies"),
        ("expiration", "60000"),
        ("amqp-message-id", "m-1"),
        ("timestamp", "1700000000"),
        ("type", "greeting"),
        ("user-id", "guest"),
        ("app-id", "tests"),
        ("x-custom", "with:colon\nand newline"),
    ];
    c.send(&q, b"{}", &sent).await;
    let m = c.message().await;
    for (k, v) in sent {
        assert_eq!(m.header(k), Some(v), "{k}");
    }
}

#[tokio::test]
async fn user_id_must_match_the_login() {
    let tb = TestBroker::start().await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    let err = c
        .expect_error(
            Frame::new(Command::Send)
                .with("destination", "/queue/uid")
                .with("user-id", "mallory"),
        )
        .await;
    assert!(text(&err).contains("user_id"));
}

#[tokio::test]
async fn temp_queue_replies_come_back_on_the_temp_subscription() {
    let tb = TestBroker::start().await;
    let service = unique("/queue/service");
    let mut server = StompClient::connect(tb.stomp, "1.2").await;
    server.subscribe("svc", &service, "auto").await;
    let mut client = StompClient::connect(tb.stomp, "1.2").await;
    client
        .send(&service, b"ping", &[("reply-to", "/temp-queue/answers")])
        .await;
    let req = server.message().await;
    let reply_to = req.header("reply-to").unwrap().to_owned();
    assert!(reply_to.starts_with("/reply-queue/amq.gen-"), "{reply_to}");
    server.send(&reply_to, b"pong", &[]).await;
    let reply = client.message().await;
    assert_eq!(text(&reply), "pong");
    assert_eq!(reply.header("subscription"), Some("/temp-queue/answers"));
    // The temp queue is private and goes with the connection.
    let name = reply_to.trim_start_matches("/reply-queue/").to_owned();
    let vh = tb.broker().vhost("/").unwrap();
    assert!(vh.queue(&name).is_some());
    client.disconnect().await;
    wait_until("temp queue deleted", || vh.queue(&name).is_none()).await;
}

#[tokio::test]
async fn a_deleted_temp_queue_is_made_again_on_next_use() {
    let tb = TestBroker::start().await;
    let service = unique("/queue/svc2");
    let mut server = StompClient::connect(tb.stomp, "1.2").await;
    server.subscribe("svc", &service, "auto").await;
    let mut client = StompClient::connect(tb.stomp, "1.2").await;
    let vh = tb.broker().vhost("/").unwrap();
    let mut names = Vec::new();
    for round in 0..2 {
        client
            .send(&service, b"ping", &[("reply-to", "/temp-queue/r")])
            .await;
        let reply_to = server
            .message()
            .await
            .header("reply-to")
            .unwrap()
            .to_owned();
        server.send(&reply_to, b"pong", &[]).await;
        let reply = client.message().await;
        assert_eq!(
            reply.header("subscription"),
            Some("/temp-queue/r"),
            "round {round}"
        );
        let name = reply_to.trim_start_matches("/reply-queue/").to_owned();
        // An admin deletes it between the rounds.
        vh.remove_queue(&vh.queue(&name).expect("temp queue"));
        names.push(name);
    }
    assert_ne!(names[0], names[1]);
}
