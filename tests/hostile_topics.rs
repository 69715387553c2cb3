//! Topic keys a client can make expensive: binding and routing keys past `server.topic_max_words`
//! are refused on every protocol, and the bindings that made a backtracking matcher exponential
//! (`#` repeated, long keys) route correctly without stalling anyone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::mqtt::RawMqtt;
use common::stomp::StompClient;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use switchboard_mqtt::{Protocol, QoS};
use switchboard_stomp::{Command, Frame};

/// A key of `n` words, `.`-separated (`sep` `/` for MQTT).
fn key(n: usize, sep: &str) -> String {
    vec!["w"; n].join(sep)
}

/// A key of `n` empty words: short enough for an AMQP short string (255 bytes) at any `n` the
/// limit is about.
fn dots(n: usize) -> String {
    vec![""; n].join(".")
}

#[tokio::test]
async fn keys_past_the_word_limit_are_refused_on_every_protocol() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = bounded(c.create_channel()).await.unwrap();
    let q = unique("long-keys");
    declare(&ch, &q).await;
    // The limit itself is accepted.
    bind(&ch, &q, "amq.topic", &dots(128)).await;
    let r = bounded(ch.queue_bind(
        q.as_str().into(),
        "amq.topic".into(),
        dots(129).as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        "PRECONDITION_FAILED - binding key of 129 words is longer than the limit of 128 words \
         (server.topic_max_words) for topic exchange 'amq.topic' in vhost '/'",
    );
    let ch = bounded(c.create_channel()).await.unwrap();
    let long = dots(129);
    let reply = provoke(&c, 406, async {
        bounded(ch.basic_publish(
            "amq.topic".into(),
            long.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            Default::default(),
        ))
        .await
        .expect("publish sent");
    })
    .await;
    assert!(reply.contains("routing key of 129 words"), "{reply}");
    // A direct exchange does not match word by word: no limit there.
    let ch = bounded(c.create_channel()).await.unwrap();
    bind(&ch, &q, "amq.direct", &long).await;

    let mut s = StompClient::connect(b.stomp, "1.2").await;
    let err = s
        .expect_error(
            Frame::new(Command::Send)
                .with("destination", format!("/topic/{}", key(129, ".")))
                .with_body(b"x".to_vec()),
        )
        .await;
    assert!(
        format!("{err:?}").contains("routing key of 129 words"),
        "{err:?}"
    );
    let mut s = StompClient::connect(b.stomp, "1.2").await;
    let err = s
        .expect_error(
            Frame::new(Command::Subscribe)
                .with("id", "1")
                .with("destination", format!("/topic/{}", key(129, "."))),
        )
        .await;
    assert!(
        format!("{err:?}").contains("binding key of 129 words"),
        "{err:?}"
    );

    let mut m = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("long"), true).await;
    let ack = m.subscribe(&key(129, "/"), QoS::AtMostOnce).await;
    assert_eq!(ack.codes, vec![0x80], "SUBACK failure for the filter");
    let ack = m.subscribe(&key(128, "/"), QoS::AtMostOnce).await;
    assert_eq!(ack.codes, vec![0]);
    m.publish(&key(129, "/"), QoS::AtMostOnce, 0, b"x").await;
    assert!(m.closed().await.is_none(), "closed for a bad topic name");
    b.stop().await;
}

#[tokio::test]
async fn the_word_limit_is_configurable() {
    let b = TestBroker::start_with(|c| c.server.topic_max_words = 4).await;
    let (_c, ch) = b.channel().await;
    let q = unique("short-keys");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "a.b.c.d").await;
    let r = bounded(ch.queue_bind(
        q.as_str().into(),
        "amq.topic".into(),
        "a.b.c.d.e".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    let (code, text) = amqp_error(&r.unwrap_err()).expect("an AMQP error");
    assert_eq!(code, 406);
    assert!(text.contains("limit of 4 words"), "{text}");
    // MQTT's level limit follows the lower of the two.
    let mut m = RawMqtt::connect(b.mqtt, Protocol::V5, &unique("short"), true).await;
    let ack = m.subscribe("a/b/c/d/e", QoS::AtMostOnce).await;
    assert_eq!(ack.codes, vec![0x8F], "Topic Filter invalid");
    b.stop().await;
}

#[tokio::test]
async fn repeated_hash_bindings_and_long_keys_route_at_once() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("hashes");
    declare(&ch, &q).await;
    // Nine and twenty `#`: 26 s and forever with the backtracking matcher.
    bind(&ch, &q, "amq.topic", &format!("{}.z", ["#"; 9].join("."))).await;
    bind(&ch, &q, "amq.topic", &format!("{}.z", ["#"; 20].join("."))).await;
    // Interleaved with words, so that they do not collapse.
    bind(
        &ch,
        &q,
        "amq.topic",
        &format!("{}.z", ["#.w"; 20].join(".")),
    )
    .await;
    let mut m = RawMqtt::connect(b.mqtt, Protocol::V311, &unique("long"), true).await;
    m.publish(&key(127, "/"), QoS::AtMostOnce, 0, b"no z").await;
    m.publish(&format!("{}/z", key(127, "/")), QoS::AtLeastOnce, 1, b"z")
        .await;
    assert!(matches!(
        m.recv().await,
        Some(switchboard_mqtt::Packet::PubAck(_))
    ));
    // Once, though three bindings match.
    assert_eq!(drain(&ch, &q).await, ["z"]);
    b.stop().await;
}
