//! The load generator runs against the broker and accounts for every message.
mod common;
use common::*;
use std::time::Duration;
use switchboard::bench::{run_amqp, AmqpScenario};

fn scenario(b: &TestBroker, manual_ack: bool) -> AmqpScenario {
    AmqpScenario {
        addr: b.amqp,
        user: "guest".into(),
        password: "guest".into(),
        publishers: 1,
        consumers: 2,
        size: 32,
        duration: Duration::from_millis(300),
        manual_ack,
        prefetch: 50,
        max_in_flight: 5_000,
        queue: unique("bench"),
        persistent: false,
        confirm_window: None,
        messages: None,
        broker_pid: Some(std::process::id()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_and_manual_ack_runs_consume_everything_published() {
    let b = TestBroker::start().await;
    for manual in [false, true] {
        let report = bounded(run_amqp(scenario(&b, manual)))
            .await
            .expect("bench runs");
        assert!(report.published > 0, "{report:?}");
        assert_eq!(report.consumed, report.published, "no loss, no duplicates");
        assert!(report.latency_us.is_some(), "latency sampled");
        assert!(report.broker_cpu_seconds.is_some(), "cpu read from /proc");
        assert!(report.render().contains("msg/s"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_confirmed_run_consumes_everything_published() {
    let b = TestBroker::start().await;
    let s = AmqpScenario {
        persistent: true,
        confirm_window: Some(256),
        messages: Some(2_000),
        duration: Duration::from_secs(5),
        ..scenario(&b, true)
    };
    let report = bounded(run_amqp(s)).await.expect("bench runs");
    assert!(report.published >= 2_000, "{report:?}");
    assert_eq!(report.consumed, report.published, "no loss, no duplicates");
}
