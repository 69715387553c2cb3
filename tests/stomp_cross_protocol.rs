//! STOMP meets AMQP at the same exchanges and queues: STOMP SEND to `/topic/a.b` reaches an AMQP
//! queue bound to amq.topic, an AMQP publish reaches a STOMP `/queue` subscriber with its
//! properties and every header type as text, a STOMP RPC over `/temp-queue` is answered by an
//! AMQP server, and bodies with every byte value cross unchanged both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::{self as amqp, bind, consume, declare, next, publish_with};
use common::stomp::{text, StompClient};
use common::{unique, TestBroker};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::BasicProperties;

#[tokio::test]
async fn stomp_topic_send_reaches_an_amqp_queue_bound_to_amq_topic() {
    let tb = TestBroker::start().await;
    let (_conn, ch) = tb.channel().await;
    let q = unique("amqp-side");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "a.b").await;
    let mut consumer = consume(&ch, &q, true).await;
    let mut s = StompClient::connect(tb.stomp, "1.2").await;
    s.send(
        "/topic/a.b",
        b"from stomp",
        &[
            ("content-type", "text/plain"),
            ("persistent", "true"),
            ("x-note", "hi"),
        ],
    )
    .await;
    let d = next(&mut consumer).await;
    assert_eq!(amqp::text(&d), "from stomp");
    assert_eq!(d.exchange.as_str(), "amq.topic");
    assert_eq!(d.routing_key.as_str(), "a.b");
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    let headers = d.properties.headers().clone().expect("headers");
    let note = headers.inner().get("x-note").cloned();
    assert!(
        matches!(note, Some(AMQPValue::LongString(ref s)) if s.to_string() == "hi"),
        "{note:?}"
    );
}

#[tokio::test]
async fn amqp_publish_reaches_a_stomp_queue_subscriber_with_every_header_as_text() {
    let tb = TestBroker::start().await;
    let q = unique("shared");
    let mut s = StompClient::connect(tb.stomp, "1.2").await;
    s.subscribe("s", &format!("/queue/{q}"), "client").await;
    let (_conn, ch) = tb.channel().await;
    let mut headers = FieldTable::default();
    headers.insert("count".into(), AMQPValue::LongLongInt(-42));
    headers.insert("flag".into(), AMQPValue::Boolean(true));
    headers.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString("x".into()),
            AMQPValue::ShortInt(3),
        ])),
    );
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("text/plain"))
        .with_correlation_id(ShortString::from("corr"))
        .with_reply_to(ShortString::from("amq.gen-replyq"))
        .with_priority(3)
        .with_timestamp(1_700_000_000)
        .with_headers(headers);
    publish_with(&ch, "", &q, b"from amqp", props).await;
    let m = s.message().await;
    assert_eq!(text(&m), "from amqp");
    assert_eq!(
        m.header("destination"),
        Some(format!("/queue/{q}").as_str())
    );
    assert_eq!(m.header("content-type"), Some("text/plain"));
    assert_eq!(m.header("correlation-id"), Some("corr"));
    assert_eq!(m.header("reply-to"), Some("/reply-queue/amq.gen-replyq"));
    assert_eq!(m.header("priority"), Some("3"));
    assert_eq!(m.header("timestamp"), Some("1700000000"));
    assert_eq!(m.header("count"), Some("-42"));
    assert_eq!(m.header("flag"), Some("true"));
    assert_eq!(m.header("list"), Some(r#"["x",3]"#));
    assert_eq!(m.header("content-length"), Some("9"));
}

#[tokio::test]
async fn stomp_rpc_over_temp_queue_answered_by_an_amqp_server() {
    let tb = TestBroker::start().await;
    let (_conn, ch) = tb.channel().await;
    let rpc = unique("rpc");
    declare(&ch, &rpc).await;
    let mut requests = consume(&ch, &rpc, true).await;
    let mut s = StompClient::connect(tb.stomp, "1.2").await;
    s.send(
        &format!("/amq/queue/{rpc}"),
        b"21",
        &[("reply-to", "/temp-queue/r"), ("correlation-id", "c7")],
    )
    .await;
    let req = next(&mut requests).await;
    let reply_to = req
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();
    // The AMQP server sees a queue name it can publish to with the default exchange.
    assert!(reply_to.starts_with("amq.gen-"), "{reply_to}");
    let answer = BasicProperties::default().with_correlation_id(ShortString::from("c7"));
    publish_with(&ch, "", &reply_to, b"42", answer).await;
    let m = s.message().await;
    assert_eq!(text(&m), "42");
    assert_eq!(m.header("subscription"), Some("/temp-queue/r"));
    assert_eq!(m.header("correlation-id"), Some("c7"));
}

#[tokio::test]
async fn binary_bodies_with_all_256_byte_values_cross_both_ways() {
    let tb = TestBroker::start().await;
    let body: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let (_conn, ch) = tb.channel().await;
    // STOMP -> AMQP
    let q = unique("bin-to-amqp");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, true).await;
    for version in ["1.0", "1.1", "1.2"] {
        let mut s = StompClient::connect(tb.stomp, version).await;
        s.send(&format!("/amq/queue/{q}"), &body, &[]).await;
        assert_eq!(
            next(&mut consumer).await.data,
            body,
            "STOMP {version} -> AMQP"
        );
    }
    // AMQP -> STOMP
    let q2 = unique("bin-to-stomp");
    for version in ["1.0", "1.1", "1.2"] {
        let mut s = StompClient::connect(tb.stomp, version).await;
        s.subscribe("s", &format!("/queue/{q2}"), "auto").await;
        publish_with(&ch, "", &q2, &body, BasicProperties::default()).await;
        let m = s.message().await;
        assert_eq!(&m.body[..], &body[..], "AMQP -> STOMP {version}");
        assert_eq!(m.header("content-length"), Some("512"));
    }
}
