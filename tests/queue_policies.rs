//! Policies from the configuration (`[[policies]]`) over AMQP with lapin: the highest-priority
//! matching policy sets queue arguments; an argument on the queue wins.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::types::AMQPValue;
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
