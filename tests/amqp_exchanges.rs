//! Exchanges over AMQP with lapin: routing by every exchange type, the pre-declared `amq.*`
//! exchanges, exchange-to-exchange bindings, internal and auto-delete exchanges, and the errors
//! RabbitMQ gives for bad declarations and deletions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

fn table(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

fn headers(pairs: &[(&str, &str)]) -> BasicProperties {
    BasicProperties::default().with_headers(table(pairs))
}

fn passive_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn exchange_exists(ch: &lapin::Channel, name: &str) -> bool {
    // A failed passive declare closes the channel, so probe on a channel of its own.
    let r = bounded(ch.exchange_declare(
        name.into(),
        ExchangeKind::Direct,
        passive_exchange(),
        FieldTable::default(),
    ))
    .await;
    match r {
        Ok(()) => true,
        Err(e) => {
            let (code, text) = amqp_error(&e).expect("an AMQP error");
            assert_eq!(code, 404, "{text}");
            assert_eq!(
                text,
                format!("NOT_FOUND - no exchange '{name}' in vhost '/'")
            );
            false
        }
    }
}

async fn probe(conn: &lapin::Connection, name: &str) -> bool {
    let ch = bounded(conn.create_channel()).await.expect("channel");
    exchange_exists(&ch, name).await
}

#[tokio::test]
async fn direct_routes_by_exact_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("direct");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let (q1, q2) = (unique("q1"), unique("q2"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    bind(&ch, &q1, &x, "k1").await;
    bind(&ch, &q1, &x, "k2").await;
    bind(&ch, &q2, &x, "k1").await;
    for key in ["k1", "k2", "k3", "K1", ""] {
        publish(&ch, &x, key, key.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q1).await, ["k1", "k2"]);
    assert_eq!(drain(&ch, &q2).await, ["k1"]);

    // Unbinding stops the routing for that key only.
    bounded(ch.queue_unbind(
        q1.as_str().into(),
        x.as_str().into(),
        "k1".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, &x, "k1", b"k1").await;
    publish(&ch, &x, "k2", b"k2").await;
    assert_eq!(drain(&ch, &q1).await, ["k2"]);
    assert_eq!(drain(&ch, &q2).await, ["k1"]);
}

#[tokio::test]
async fn default_exchange_routes_to_the_queue_named_by_the_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("dflt");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"to q").await;
    publish(&ch, "", "no-such-queue", b"dropped").await;
    assert_eq!(drain(&ch, &q).await, ["to q"]);
    // Binding to the default exchange is refused, as in RabbitMQ.
    let r = bounded(ch.queue_bind(
        q.as_str().into(),
        "".into(),
        "x".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(
        r,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
}

#[tokio::test]
async fn fanout_routes_to_every_bound_queue_whatever_the_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("fanout");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    let (q1, q2, q3) = (unique("q1"), unique("q2"), unique("unbound"));
    for q in [&q1, &q2, &q3] {
        declare(&ch, q).await;
    }
    bind(&ch, &q1, &x, "").await;
    bind(&ch, &q2, &x, "ignored").await;
    publish(&ch, &x, "any.key", b"m1").await;
    publish(&ch, &x, "", b"m2").await;
    assert_eq!(drain(&ch, &q1).await, ["m1", "m2"]);
    assert_eq!(drain(&ch, &q2).await, ["m1", "m2"]);
    assert!(drain(&ch, &q3).await.is_empty());
}

#[tokio::test]
async fn topic_rabbitmq_tutorial_bindings() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("topic");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let (q1, q2) = (unique("q1"), unique("q2"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    bind(&ch, &q1, &x, "*.orange.*").await;
    bind(&ch, &q2, &x, "*.*.rabbit").await;
    bind(&ch, &q2, &x, "lazy.#").await;
    for key in [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.male.rabbit",
        "lazy.orange.male.rabbit",
    ] {
        publish(&ch, &x, key, key.as_bytes()).await;
    }
    assert_eq!(
        drain(&ch, &q1).await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox"
        ]
    );
    // lazy.pink.rabbit matches both of q2's bindings but is delivered once.
    assert_eq!(
        drain(&ch, &q2).await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.male.rabbit"
        ]
    );
}

#[tokio::test]
async fn topic_wildcards_and_empty_words() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("topic");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let patterns = ["a.*.b", "a..b", "#", "a.#", "#.b", "*", "a.#.b", "", "a.*"];
    let mut queues = Vec::new();
    for p in patterns {
        let q = unique("tq");
        declare(&ch, &q).await;
        bind(&ch, &q, &x, p).await;
        queues.push(q);
    }
    let keys = ["a..b", "a.x.b", "a.b", "a", "b", "", "x", "a.x.y.b", "a."];
    for key in keys {
        publish(&ch, &x, key, key.as_bytes()).await;
    }
    let expected: [&[&str]; 9] = [
        &["a..b", "a.x.b"],
        &["a..b"],
        &keys,
        &["a..b", "a.x.b", "a.b", "a", "a.x.y.b", "a."],
        &["a..b", "a.x.b", "a.b", "b", "a.x.y.b"],
        &["a", "b", "x"],
        &["a..b", "a.x.b", "a.b", "a.x.y.b"],
        &[""],
        &["a.b", "a."],
    ];
    for ((pattern, q), want) in patterns.iter().zip(&queues).zip(expected) {
        assert_eq!(drain(&ch, q).await, want, "pattern {pattern:?}");
    }
}

#[tokio::test]
async fn headers_x_match_modes() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("headers");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;
    let bindings: [(&str, &[(&str, &str)]); 5] = [
        (
            "all",
            &[("x-match", "all"), ("format", "pdf"), ("type", "report")],
        ),
        (
            "any",
            &[("x-match", "any"), ("format", "pdf"), ("type", "report")],
        ),
        // With plain `all`, x- keys in the binding are ignored.
        (
            "all-ignoring-x",
            &[("x-match", "all"), ("x-tenant", "a"), ("format", "pdf")],
        ),
        (
            "all-with-x",
            &[
                ("x-match", "all-with-x"),
                ("x-tenant", "a"),
                ("format", "pdf"),
            ],
        ),
        (
            "any-with-x",
            &[("x-match", "any-with-x"), ("x-tenant", "a")],
        ),
    ];
    let mut queues = Vec::new();
    for (name, args) in bindings {
        let q = unique(name);
        declare(&ch, &q).await;
        bind_args(&ch, &q, &x, "", table(args)).await;
        queues.push(q);
    }
    let messages: [(&str, &[(&str, &str)]); 6] = [
        ("m1", &[("format", "pdf"), ("type", "report")]),
        ("m2", &[("format", "pdf")]),
        ("m3", &[("format", "pdf"), ("x-tenant", "a")]),
        ("m4", &[("x-tenant", "a")]),
        ("m5", &[]),
        (
            "m6",
            &[("type", "report"), ("x-tenant", "b"), ("format", "pdf")],
        ),
    ];
    for (body, h) in messages {
        // The routing key plays no part in a headers exchange.
        publish_with(&ch, &x, "whatever", body.as_bytes(), headers(h)).await;
    }
    let expected: [&[&str]; 5] = [
        &["m1", "m6"],
        &["m1", "m2", "m3", "m6"],
        &["m1", "m2", "m3", "m6"],
        &["m3"],
        &["m3", "m4"],
    ];
    for (((name, _), q), want) in bindings.iter().zip(&queues).zip(expected) {
        assert_eq!(drain(&ch, q).await, want, "binding {name}");
    }
}

#[tokio::test]
async fn headers_binding_with_bad_x_match_is_refused() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("q");
    declare(&ch, &q).await;
    let r = bounded(ch.queue_bind(
        q.as_str().into(),
        "amq.headers".into(),
        "".into(),
        QueueBindOptions::default(),
        table(&[("x-match", "some")]),
    ))
    .await;
    // RabbitMQ's text shows the value in Erlang syntax, so only the gist is compared.
    let (code, text) = amqp_error(&r.unwrap_err()).expect("an AMQP error");
    assert_eq!(code, 406, "{text}");
    assert!(text.starts_with("PRECONDITION_FAILED - "), "{text}");
    assert!(text.contains("x-match field value"), "{text}");
}

#[tokio::test]
async fn predeclared_amq_exchanges_exist_and_route() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    for name in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        assert!(probe(&c, name).await, "{name} exists");
    }
    assert!(!probe(&c, "amq.nope").await);

    let q = unique("amq");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.direct", "d").await;
    bind(&ch, &q, "amq.fanout", "").await;
    bind(&ch, &q, "amq.topic", "t.*").await;
    bind_args(&ch, &q, "amq.headers", "", table(&[("h", "1")])).await;
    bind_args(&ch, &q, "amq.match", "", table(&[("m", "1")])).await;
    publish(&ch, "amq.direct", "d", b"direct").await;
    publish(&ch, "amq.direct", "nope", b"lost").await;
    publish(&ch, "amq.fanout", "x", b"fanout").await;
    publish(&ch, "amq.topic", "t.x", b"topic").await;
    publish(&ch, "amq.topic", "t.x.y", b"lost").await;
    publish_with(&ch, "amq.headers", "", b"headers", headers(&[("h", "1")])).await;
    publish_with(&ch, "amq.match", "", b"match", headers(&[("m", "1")])).await;
    publish_with(&ch, "amq.match", "", b"lost", headers(&[("m", "2")])).await;
    assert_eq!(
        drain(&ch, &q).await,
        ["direct", "fanout", "topic", "headers", "match"]
    );
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_and_unbind() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (src, dst) = (unique("src"), unique("dst"));
    declare_exchange(&ch, &src, ExchangeKind::Direct).await;
    declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
    let q = unique("q");
    declare(&ch, &q).await;
    bind(&ch, &q, &dst, "").await;
    bounded(ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "k".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, &src, "k", b"via e2e").await;
    publish(&ch, &src, "other", b"not bound").await;
    assert_eq!(drain(&ch, &q).await, ["via e2e"]);

    bounded(ch.exchange_unbind(
        dst.as_str().into(),
        src.as_str().into(),
        "k".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, &src, "k", b"after unbind").await;
    assert!(drain(&ch, &q).await.is_empty());
}

#[tokio::test]
async fn a_queue_reached_by_two_paths_gets_one_copy() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (x1, x2) = (unique("x1"), unique("x2"));
    declare_exchange(&ch, &x1, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &x2, ExchangeKind::Fanout).await;
    let q = unique("q");
    declare(&ch, &q).await;
    bind(&ch, &q, &x1, "").await;
    bind(&ch, &q, &x2, "").await;
    bounded(ch.exchange_bind(
        x2.as_str().into(),
        x1.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, &x1, "", b"once").await;
    assert_eq!(drain(&ch, &q).await, ["once"]);
}

#[tokio::test]
async fn exchange_binding_cycle_does_not_loop() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (x1, x2) = (unique("x1"), unique("x2"));
    declare_exchange(&ch, &x1, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &x2, ExchangeKind::Fanout).await;
    for (dst, src) in [(&x2, &x1), (&x1, &x2)] {
        bounded(ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    let (q1, q2) = (unique("q1"), unique("q2"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    bind(&ch, &q1, &x1, "").await;
    bind(&ch, &q2, &x2, "").await;
    publish(&ch, &x1, "", b"from x1").await;
    publish(&ch, &x2, "", b"from x2").await;
    // The broker answers (it is not spinning) and each queue got each message exactly once.
    assert_eq!(drain(&ch, &q1).await, ["from x1", "from x2"]);
    assert_eq!(drain(&ch, &q2).await, ["from x1", "from x2"]);
}

#[tokio::test]
async fn internal_exchange_refuses_publishes_but_routes_e2e() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let ix = unique("internal");
    bounded(ch.exchange_declare(
        ix.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let q = unique("q");
    declare(&ch, &q).await;
    bind(&ch, &q, &ix, "").await;

    let src = unique("src");
    declare_exchange(&ch, &src, ExchangeKind::Direct).await;
    bounded(ch.exchange_bind(
        ix.as_str().into(),
        src.as_str().into(),
        "k".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, &src, "k", b"through src").await;
    assert_eq!(drain(&ch, &q).await, ["through src"]);

    let bad = bounded(c.create_channel()).await.unwrap();
    let text = provoke(
        &c,
        403,
        publish_doomed(
            &bad,
            &ix,
            "",
            b"direct to internal",
            BasicProperties::default(),
        ),
    )
    .await;
    assert_eq!(
        text,
        format!("ACCESS_REFUSED - cannot publish to internal exchange '{ix}' in vhost '/'")
    );
    assert_eq!(ready_count(&ch, &q).await, 0, "nothing got through");
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let ax = unique("autodel");
    let auto = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    bounded(ch.exchange_declare(
        ax.as_str().into(),
        ExchangeKind::Direct,
        auto,
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Never bound: it stays.
    assert!(probe(&c, &ax).await);
    let (q1, q2) = (unique("q1"), unique("q2"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    bind(&ch, &q1, &ax, "a").await;
    bind(&ch, &q2, &ax, "b").await;
    bounded(ch.queue_unbind(
        q1.as_str().into(),
        ax.as_str().into(),
        "a".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(probe(&c, &ax).await, "one binding left");
    bounded(ch.queue_unbind(
        q2.as_str().into(),
        ax.as_str().into(),
        "b".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(!probe(&c, &ax).await, "deleted with its last binding");

    // Deleting the last bound queue removes the binding, and so the exchange, too.
    bounded(ch.exchange_declare(
        ax.as_str().into(),
        ExchangeKind::Direct,
        auto,
        FieldTable::default(),
    ))
    .await
    .unwrap();
    bind(&ch, &q1, &ax, "a").await;
    bounded(ch.queue_delete(q1.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(!probe(&c, &ax).await, "deleted with its last queue");
}

#[tokio::test]
async fn redeclare_with_another_type_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let x = unique("typed");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    // The same declaration again is fine.
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let r = bounded(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': \
             received 'fanout' but current is 'direct'"
        ),
    );
    // A channel error: the connection and the exchange are fine.
    assert!(probe(&c, &x).await);
}

#[tokio::test]
async fn reserved_amq_prefix_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = bounded(ch.exchange_declare(
        "amq.custom".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(
        r,
        403,
        "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'",
    );
    assert!(!probe(&c, "amq.custom").await);
    // Redeclaring a pre-declared one with its own properties is allowed.
    let ch = bounded(c.create_channel()).await.unwrap();
    bounded(ch.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Deleting a pre-declared one is refused.
    let r =
        bounded(ch.exchange_delete("amq.fanout".into(), ExchangeDeleteOptions::default())).await;
    assert_amqp_err(
        r,
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '/' not allowed",
    );
    assert!(probe(&c, "amq.fanout").await);
}

#[tokio::test]
async fn unknown_exchange_type_closes_the_channel_with_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = bounded(ch.exchange_declare(
        unique("weird").as_str().into(),
        ExchangeKind::Custom("x-no-such-type".into()),
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        "PRECONDITION_FAILED - invalid exchange type 'x-no-such-type'",
    );
    // As RabbitMQ 3.13+: only the channel closes; the connection carries on.
    wait_until("channel closed", || !ch.status().connected()).await;
    assert!(c.status().connected());
    let ch2 = bounded(c.create_channel()).await.expect("channel");
    declare(&ch2, &unique("after")).await;
}

#[tokio::test]
async fn delete_if_unused_refuses_a_bound_exchange() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let x = unique("used");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let q = unique("q");
    declare(&ch, &q).await;
    bind(&ch, &q, &x, "k").await;
    let if_unused = ExchangeDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    let r = bounded(ch.exchange_delete(x.as_str().into(), if_unused)).await;
    assert_amqp_err(
        r,
        406,
        &format!("PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use"),
    );
    assert!(probe(&c, &x).await);

    let ch = bounded(c.create_channel()).await.unwrap();
    bounded(ch.queue_unbind(
        q.as_str().into(),
        x.as_str().into(),
        "k".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    bounded(ch.exchange_delete(x.as_str().into(), if_unused))
        .await
        .unwrap();
    assert!(!probe(&c, &x).await);
    // Deleting a missing exchange succeeds, as in RabbitMQ.
    bounded(ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_an_exchange_drops_its_bindings() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (src, dst) = (unique("src"), unique("dst"));
    declare_exchange(&ch, &src, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
    let q = unique("q");
    declare(&ch, &q).await;
    bind(&ch, &q, &dst, "").await;
    bounded(ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    bounded(ch.exchange_delete(dst.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    // Recreated under the same name, it is a new exchange without the old bindings.
    declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
    publish(&ch, &src, "", b"m").await;
    publish(&ch, &dst, "", b"m").await;
    assert!(drain(&ch, &q).await.is_empty());
}

/// A channel keeps the exchange it last published to: it must see that exchange deleted,
/// replaced by a new one of the same name, or auto-deleted, exactly as a fresh look-up would.
#[tokio::test]
async fn a_publisher_follows_its_exchange_being_deleted_and_replaced() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let pch = bounded(c.create_channel()).await.expect("channel");
    bounded(pch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let confirmed = |x: String, key: &'static str, body: &'static [u8]| {
        let pch = pch.clone();
        async move {
            let confirm = publish_with(&pch, &x, key, body, BasicProperties::default()).await;
            bounded(confirm).await.expect("confirmed")
        }
    };
    let x = unique("replaced");
    let (q1, q2) = (unique("q1"), unique("q2"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    bind(&ch, &q1, &x, "").await;
    confirmed(x.clone(), "k", b"first").await;
    assert_eq!(drain(&ch, &q1).await, ["first"]);

    // Deleted and declared again with another type: the publisher routes by the new one.
    bounded(ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .expect("exchange.delete");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    bind(&ch, &q2, &x, "k").await;
    confirmed(x.clone(), "k", b"second").await;
    confirmed(x.clone(), "other", b"unroutable").await;
    assert_eq!(drain(&ch, &q1).await, Vec::<String>::new());
    assert_eq!(drain(&ch, &q2).await, ["second"]);

    // Auto-deleted when its last binding goes, then declared again.
    let auto = unique("auto");
    bounded(ch.exchange_declare(
        auto.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("auto-delete exchange.declare");
    bind(&ch, &q1, &auto, "").await;
    confirmed(auto.clone(), "", b"auto").await;
    assert_eq!(drain(&ch, &q1).await, ["auto"]);
    bounded(ch.queue_unbind(
        q1.as_str().into(),
        auto.as_str().into(),
        "".into(),
        FieldTable::default(),
    ))
    .await
    .expect("queue.unbind");
    assert!(!probe(&c, &auto).await, "auto-deleted");
    declare_exchange(&ch, &auto, ExchangeKind::Fanout).await;
    bind(&ch, &q2, &auto, "").await;
    confirmed(auto.clone(), "", b"new auto").await;
    assert_eq!(drain(&ch, &q1).await, Vec::<String>::new());
    assert_eq!(drain(&ch, &q2).await, ["new auto"]);

    // Deleted for good: the next publish on that channel is a 404 that closes it.
    bounded(ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .expect("exchange.delete");
    let confirm = publish_with(&pch, &x, "k", b"gone", BasicProperties::default()).await;
    let _ = bounded(confirm).await;
    wait_until("publishing channel closed", || !pch.status().connected()).await;
    assert!(c.status().connected(), "only the channel closes");
}
