//! Policies over AMQP with lapin: from the configuration (`[[policies]]`), the highest-priority
//! matching policy sets queue arguments and an argument on the queue wins; run-time policies set
//! through the management API apply at once to queues that exist, clearing one reverts them,
//! and both survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::http::call;
use common::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use serde_json::{json, Value};
use switchboard::config::PolicyConfig;

fn policy(name: &str, pattern: &str, priority: i32, definition: &str) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        pattern: pattern.into(),
        apply_to: "queues".into(),
        priority,
        vhost: None,
        definition: toml::from_str(definition).expect("definition"),
    }
}

#[tokio::test]
async fn matching_policy_applies_and_queue_arguments_win() {
    // Higher than both, but for another vhost: not applied in "/".
    let mut elsewhere = policy("elsewhere", "^pol\\.", 50, "max-length = 7");
    elsewhere.vhost = Some("other".into());
    let b = TestBroker::start_with(|c| {
        c.policies = vec![
            policy("limits", "^pol\\.", 0, "max-length = 2"),
            policy(
                "short",
                "^pol\\.short",
                10,
                "max-length = 1\nmessage-ttl = 30\noverflow = \"reject-publish\"",
            ),
            elsewhere,
        ];
    })
    .await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "pol.plain").await;
    declare(&ch, "pol.short.q").await;
    declare_with_args(
        &ch,
        "pol.own",
        args(&[("x-max-length", AMQPValue::LongInt(3))]),
    )
    .await;
    declare(&ch, "unmatched").await;
    for q in ["pol.plain", "pol.short.q", "pol.own", "unmatched"] {
        for i in 0..4 {
            publish(&ch, "", q, format!("m{i}").as_bytes()).await;
        }
    }
    assert_eq!(
        drain(&ch, "pol.plain").await,
        vec!["m2", "m3"],
        "drop-head at 2"
    );
    assert_eq!(
        drain(&ch, "pol.own").await,
        vec!["m1", "m2", "m3"],
        "the queue's 3 wins"
    );
    assert_eq!(drain(&ch, "unmatched").await.len(), 4);
    // The higher-priority policy: one message, refused beyond it, expiring after 30 ms.
    let short = b.broker().vhost("/").unwrap().queue("pol.short.q").unwrap();
    wait_until("the policy TTL expires it", || short.expired_count() == 1).await;
    assert_eq!(ready_count(&ch, "pol.short.q").await, 0);
}

#[test]
fn a_bad_policy_is_a_configuration_error() {
    let text = format!(
        "{}\n[[policies]]\nname = \"bad\"\npattern = \".*\"\ndefinition = {{ message-ttl = -1 }}\n",
        test_config_text()
    );
    let err = switchboard::Config::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("policies") && err.contains("value_negative"),
        "{err}"
    );
}

/// Sets run-time policy `name` in vhost "/" for queues matching `pattern`.
async fn set_policy(b: &TestBroker, name: &str, pattern: &str, definition: Value) {
    let body = json!({"pattern": pattern, "apply-to": "queues", "definition": definition});
    let a = call(b, "PUT", &format!("/api/policies/%2F/{name}"), Some(body)).await;
    assert!(a.status == 201 || a.status == 204, "{a:?}");
}

async fn clear_policy(b: &TestBroker, name: &str) {
    let a = call(b, "DELETE", &format!("/api/policies/%2F/{name}"), None).await;
    assert_eq!(a.status, 204, "{a:?}");
}

/// The queue's `policy` and `effective_policy_definition` as the API shows them.
async fn queue_policy(b: &TestBroker, q: &str) -> (Value, Value) {
    let v = call(b, "GET", &format!("/api/queues/%2F/{q}"), None)
        .await
        .body;
    (
        v["policy"].clone(),
        v["effective_policy_definition"].clone(),
    )
}

/// The `reason` of the newest `x-death` entry of a dead-lettered delivery.
fn death_reason(d: &lapin::message::Delivery) -> String {
    let headers = d.properties.headers().clone().unwrap_or_default();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    match deaths.as_slice().first() {
        Some(AMQPValue::FieldTable(t)) => match t.inner().get("reason") {
            Some(AMQPValue::LongString(r)) => r.to_string(),
            other => panic!("reason {other:?}"),
        },
        other => panic!("x-death entry {other:?}"),
    }
}

async fn publish_n(ch: &lapin::Channel, q: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", q, format!("m{i}").as_bytes()).await;
    }
}

#[tokio::test]
async fn runtime_policy_applies_to_existing_queues_and_clearing_reverts() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_exchange(&ch, "rt.dlx", lapin::ExchangeKind::Fanout).await;
    declare(&ch, "rt.dead").await;
    bind(&ch, "rt.dead", "rt.dlx", "").await;
    let mut dead = consume(&ch, "rt.dead", true).await;
    declare(&ch, "rt.orders").await;
    declare_with_args(
        &ch,
        "rt.own",
        args(&[("x-max-length", AMQPValue::LongInt(4))]),
    )
    .await;
    declare(&ch, "other").await;
    for q in ["rt.orders", "rt.own", "other"] {
        publish_n(&ch, q, 5).await;
    }
    assert_eq!(ready_count(&ch, "rt.orders").await, 5);

    // A lower length limit with a dead-letter exchange: the excess goes at once, dead-lettered.
    set_policy(
        &b,
        "cap",
        "^rt\\.(orders|own)$",
        json!({"max-length": 2, "dead-letter-exchange": "rt.dlx"}),
    )
    .await;
    assert_eq!(ready_count(&ch, "rt.orders").await, 2);
    assert_eq!(
        ready_count(&ch, "rt.own").await,
        4,
        "the queue's own x-max-length wins"
    );
    assert_eq!(ready_count(&ch, "other").await, 5, "not matched");
    // rt.own was already at its own limit of 4; rt.orders loses its 3 oldest.
    let dropped = next_n(&mut dead, 3).await;
    assert!(dropped.iter().all(|d| death_reason(d) == "maxlen"));
    assert_eq!(
        dropped.iter().map(text).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    let (name, definition) = queue_policy(&b, "rt.orders").await;
    assert_eq!(name, "cap");
    assert_eq!(
        definition,
        json!({"max-length": 2, "dead-letter-exchange": "rt.dlx"})
    );
    publish_n(&ch, "rt.orders", 3).await;
    assert_eq!(
        ready_count(&ch, "rt.orders").await,
        2,
        "new publishes are capped too"
    );
    next_n(&mut dead, 3).await;

    // Replaced: reject-publish refuses instead of dropping; a confirm-mode publisher is nacked.
    set_policy(
        &b,
        "cap",
        "^rt\\.orders$",
        json!({"max-length": 2, "overflow": "reject-publish"}),
    )
    .await;
    let confirm = confirm_channel(&_c).await;
    assert!(
        publish_for_confirmation(&confirm, "", "rt.orders", b"refused")
            .await
            .is_nack()
    );
    assert_eq!(
        ready_count(&ch, "rt.own").await,
        4,
        "rt.own is no longer matched"
    );
    publish_n(&ch, "rt.own", 1).await;
    assert_eq!(
        ready_count(&ch, "rt.own").await,
        4,
        "its own limit still holds"
    );

    // Message TTL 0 with a dead-letter exchange and routing key: what no consumer takes at
    // once expires into the dead-letter exchange under that key (once at the head: emptied).
    assert_eq!(drain(&ch, "rt.orders").await.len(), 2);
    set_policy(
        &b,
        "cap",
        "^rt\\.orders$",
        json!({"message-ttl": 0, "dead-letter-exchange": "rt.dlx", "dead-letter-routing-key": "late"}),
    )
    .await;
    publish(&ch, "", "rt.orders", b"ttl").await;
    let expired = next(&mut dead).await;
    assert_eq!(text(&expired), "ttl");
    assert_eq!(death_reason(&expired), "expired");
    assert_eq!(expired.routing_key.as_str(), "late");

    // Cleared: the declared arguments alone again.
    clear_policy(&b, "cap").await;
    assert_eq!(
        queue_policy(&b, "rt.orders").await,
        (Value::Null, json!({}))
    );
    publish_n(&ch, "rt.orders", 4).await;
    assert_eq!(ready_count(&ch, "rt.orders").await, 4);
    assert_quiet(&mut dead).await;
}

#[tokio::test]
async fn runtime_expires_policy_deletes_an_unused_existing_queue() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "idle.q").await;
    set_policy(&b, "idle", "^idle\\.", json!({"expires": 50})).await;
    let vh = b.broker().vhost("/").unwrap();
    wait_until("the policy's x-expires to delete the queue", || {
        vh.queue("idle.q").is_none()
    })
    .await;
}

#[tokio::test]
async fn runtime_policies_and_their_clearing_survive_a_restart() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let (c, ch) = b.channel().await;
    bounded(ch.queue_declare(
        "kept".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    ))
    .await
    .unwrap();
    set_policy(&b, "one", "^kept$", json!({"max-length": 1})).await;
    drop((ch, c));
    b.stop().await;

    // Transient messages: each start finds "kept" empty, then takes three publishes.
    let ready_after_restart = |clear: bool| {
        let dir = dir.clone();
        async move {
            let b = TestBroker::start_in(&dir, |_| {}).await;
            let (c, ch) = b.channel().await;
            publish_n(&ch, "kept", 3).await;
            let ready = ready_count(&ch, "kept").await;
            let policy = queue_policy(&b, "kept").await.0;
            if clear {
                clear_policy(&b, "one").await;
            }
            drop((ch, c));
            b.stop().await;
            (ready, policy)
        }
    };
    assert_eq!(ready_after_restart(true).await, (1, json!("one")));
    assert_eq!(
        ready_after_restart(false).await,
        (3, Value::Null),
        "cleared for good"
    );
}
