//! The load generator runs each scenario briefly against an in-process broker and accounts for
//! every message: nothing missing, nothing duplicated, every figure present in the JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
mod common;
use common::*;
use std::time::Duration;
use switchboard::bench::report::Report;
use switchboard::bench::{connections, run, Kill, Options, Protocol, Scenario};
use switchboard_amqp::FieldValue;
use switchboard_mqtt::{Protocol as MqttVersion, QoS};

fn options(b: &TestBroker) -> Options {
    Options {
        amqp_addr: b.amqp,
        stomp_addr: b.stomp,
        mqtt_addr: b.mqtt,
        publishers: 1,
        consumers: 2,
        size: 32,
        duration: Duration::from_millis(300),
        max_in_flight: 5_000,
        queue: unique("bench"),
        broker_pids: vec![std::process::id()],
        ..Options::new()
    }
}

/// Everything published reached every consumer group once, and the JSON carries it all.
fn assert_accounted(report: &Report) {
    assert!(report.loss_is_defect, "{report:?}");
    assert_eq!(report.missing, 0, "no loss: {report:?}");
    assert_eq!(report.consumed, report.expected, "{report:?}");
    assert_figures(report);
}

/// A run published, nothing arrived twice, and every figure is in the JSON.
fn assert_figures(report: &Report) {
    assert!(report.published > 0, "{report:?}");
    assert_eq!(report.duplicates, 0, "no duplicates: {report:?}");
    assert!(report.latency.is_some(), "latency measured: {report:?}");
    assert!(
        report.broker.cpu_seconds_per_million.is_some(),
        "{report:?}"
    );
    assert!(
        report.broker.rss_peak_bytes.is_some_and(|b| b > 0),
        "{report:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON parses");
    assert_eq!(json["published"], report.published);
    assert_eq!(json["missing"], 0);
    assert!(json["latency"]["p99_us"].is_u64(), "{json}");
    assert!(report.render().contains("consume rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_auto_and_manual_ack_runs_consume_everything_published() {
    let b = TestBroker::start().await;
    for manual_ack in [None, Some(50)] {
        let o = Options {
            manual_ack,
            ..options(&b)
        };
        let report = bounded(run(Scenario::Amqp, &o)).await.expect("bench runs");
        assert_accounted(&report);
        assert_eq!(
            report.expected, report.published,
            "competing consumers share"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_persistent_confirmed_run_consumes_everything_published() {
    let b = TestBroker::start().await;
    let o = Options {
        persistent: true,
        confirm_window: Some(256),
        manual_ack: Some(100),
        messages: Some(2_000),
        duration: Duration::from_secs(5),
        ..options(&b)
    };
    let report = bounded(run(Scenario::Amqp, &o)).await.expect("bench runs");
    assert_eq!(report.published, 2_000, "{report:?}");
    assert_accounted(&report);
    let confirms = report.confirms.expect("confirm figures");
    assert_eq!((confirms.confirmed, confirms.nacked), (2_000, 0));
    let latency = confirms.latency.expect("confirm latency");
    assert!(latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us);
    assert!(report.failover.is_none(), "nothing was killed");
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON parses");
    assert!(json["confirms"]["latency"]["p99_us"].is_u64(), "{json}");
    assert!(report.render().contains("confirm latency"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_args_go_into_the_declare_of_the_amqp_queue() {
    let b = TestBroker::start().await;
    let o = Options {
        queue_args: [
            ("x-max-priority".to_string(), FieldValue::I64(5)),
            ("x-queue-mode".to_string(), FieldValue::string("lazy")),
        ]
        .into_iter()
        .collect(),
        ..options(&b)
    };
    let report = bounded(run(Scenario::Amqp, &o)).await.expect("bench runs");
    assert_accounted(&report);
    let q = b.broker().vhost("/").unwrap().queue(&o.queue).unwrap();
    assert_eq!(q.arguments.get("x-max-priority"), Some(&FieldValue::I64(5)));
    assert_eq!(
        q.arguments.get("x-queue-mode").and_then(FieldValue::as_str),
        Some("lazy")
    );
}

/// A run told to kill a process kills it on time and times the first confirm of a message
/// published after the kill; with two pids, each node's figures are reported and CPU is their
/// sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_run_kills_the_node_and_times_the_next_confirm() {
    use std::os::unix::process::ExitStatusExt;
    let b = TestBroker::start().await;
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep starts");
    let o = Options {
        persistent: true,
        confirm_window: Some(100),
        manual_ack: Some(100),
        duration: Duration::from_millis(1_200),
        broker_pids: vec![std::process::id(), victim.id()],
        kill: Some(Kill {
            pid: victim.id(),
            after: Duration::from_millis(300),
        }),
        ..options(&b)
    };
    let report = bounded(run(Scenario::Amqp, &o)).await.expect("bench runs");
    let status = victim.wait().expect("the victim is reaped");
    assert_eq!(status.signal(), Some(9), "killed with SIGKILL");
    assert_accounted(&report);
    let f = report.failover.expect("failover figures");
    assert_eq!(f.killed_pid, victim.id());
    assert!(f.killed_at_seconds >= 0.3, "{f:?}");
    // This broker never stopped: confirms went on right after the kill.
    let ms = f
        .first_confirm_after_kill_ms
        .expect("a later publish was confirmed");
    assert!(ms > 0.0 && ms < 1_000.0, "{f:?}");
    let nodes = &report.broker.nodes;
    assert_eq!(nodes.len(), 2, "{:?}", report.broker);
    assert!(nodes.iter().all(|n| n.rss_peak_bytes.is_some()));
    let sum: f64 = nodes.iter().filter_map(|n| n.cpu_seconds).sum();
    assert_eq!(report.broker.cpu_seconds, Some(sum));
    assert!(report.render().contains("kill -> first confirm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_fanout_gives_every_consumer_every_message() {
    let b = TestBroker::start().await;
    let o = Options {
        consumers: 3,
        ..options(&b)
    };
    let report = bounded(run(Scenario::AmqpFanout, &o))
        .await
        .expect("bench runs");
    assert_accounted(&report);
    assert_eq!(report.expected, 3 * report.published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_auto_and_client_individual_with_receipts_consume_everything() {
    let b = TestBroker::start().await;
    for (manual_ack, receipts) in [(None, None), (Some(100), Some(500))] {
        let o = Options {
            publishers: 2,
            manual_ack,
            confirm_window: receipts,
            ..options(&b)
        };
        let report = bounded(run(Scenario::Stomp, &o)).await.expect("bench runs");
        assert_accounted(&report);
        assert_eq!(report.publishers, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_protocol_flows_deliver_everything_to_every_consumer() {
    let b = TestBroker::start().await;
    for (from, to) in [
        (Protocol::Amqp, Protocol::Stomp),
        (Protocol::Stomp, Protocol::Amqp),
    ] {
        let report = bounded(run(Scenario::Cross { from, to }, &options(&b)))
            .await
            .expect("bench runs");
        assert_accounted(&report);
        assert_eq!(
            report.expected,
            2 * report.published,
            "each consumer gets all"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_publisher_sends_about_its_rate() {
    let b = TestBroker::start().await;
    let o = Options {
        rate: Some(1_000),
        duration: Duration::from_millis(500),
        ..options(&b)
    };
    let report = bounded(run(Scenario::Amqp, &o)).await.expect("bench runs");
    assert_accounted(&report);
    // Pacing, not speed: never more than the rate allows over the publishing time.
    let allowed = (1_000.0 * report.publish_seconds) as u64 + 2;
    assert!(report.published <= allowed, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_consumer_keeps_its_rate_and_its_backlog_is_not_loss() {
    let b = TestBroker::start().await;
    let o = Options {
        consumers: 1,
        consumer_rate: Some(2_000),
        max_in_flight: u64::MAX,
        duration: Duration::from_millis(500),
        ..options(&b)
    };
    let report = bounded(run(Scenario::Amqp, &o)).await.expect("bench runs");
    // Pacing, not speed: the consumer takes at most its rate over the run (it was subscribed
    // a moment before publishing started) plus what one read brings.
    let allowed = (2_000.0 * (report.elapsed_seconds + 0.5)) as u64 + 8_192;
    assert!(
        report.consumed <= allowed,
        "consumer kept its rate: {report:?}"
    );
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert!(
        !report.drained,
        "the backlog is left on purpose: {report:?}"
    );
    assert!(!report.loss_is_defect, "an undrained backlog is not loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_below_the_stamp_is_refused() {
    let b = TestBroker::start().await;
    let o = Options {
        size: 8,
        ..options(&b)
    };
    let err = bounded(run(Scenario::Amqp, &o)).await.expect_err("refused");
    assert!(err.to_string().contains("--size"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_at_each_qos_and_version_gives_every_subscriber_every_message() {
    let b = TestBroker::start().await;
    for version in [MqttVersion::V311, MqttVersion::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let o = Options {
                mqtt_version: version,
                qos,
                ..options(&b)
            };
            let report = bounded(run(Scenario::Mqtt, &o)).await.expect("bench runs");
            assert_eq!(report.expected, 2 * report.published, "{report:?}");
            if qos == QoS::AtMostOnce {
                // QoS 0 may drop; what is missing is reported, not a defect.
                assert!(!report.loss_is_defect, "{report:?}");
                assert_figures(&report);
            } else {
                assert_accounted(&report);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_accounts_for_every_message() {
    let b = TestBroker::start().await;
    let o = Options {
        mqtt_addr: b.addrs().mqtt_ws[0],
        mqtt_ws: true,
        qos: QoS::AtLeastOnce,
        ..options(&b)
    };
    let report = bounded(run(Scenario::Mqtt, &o)).await.expect("bench runs");
    assert_accounted(&report);
    assert_eq!(report.expected, 2 * report.published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_fan_out_reaches_every_subscriber() {
    let b = TestBroker::start().await;
    let o = Options {
        consumers: 20,
        qos: QoS::AtLeastOnce,
        ..options(&b)
    };
    let report = bounded(run(Scenario::Mqtt, &o)).await.expect("bench runs");
    assert_accounted(&report);
    assert_eq!(report.expected, 20 * report.published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_protocol_flows_through_mqtt_deliver_everything() {
    let b = TestBroker::start().await;
    for (from, to) in [
        (Protocol::Mqtt, Protocol::Amqp),
        (Protocol::Amqp, Protocol::Mqtt),
        (Protocol::Stomp, Protocol::Mqtt),
    ] {
        let o = Options {
            qos: QoS::AtLeastOnce,
            ..options(&b)
        };
        let report = bounded(run(Scenario::Cross { from, to }, &o))
            .await
            .expect("bench runs");
        assert_accounted(&report);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_opened_and_counted() {
    let b = TestBroker::start().await;
    let report = bounded(connections::run(&options(&b), 300))
        .await
        .expect("connections open");
    let c = report.connections.expect("connection figures");
    assert_eq!(c.opened, 300);
    assert!(c.per_second > 0.0);
    assert!(c.rss_bytes_per_connection.is_some(), "{c:?}");
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON parses");
    assert_eq!(json["connections"]["opened"], 300);
    wait_until("the bench closed them again", || {
        b.broker().connections().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_makes_and_deletes_every_queue_and_times_both_phases() {
    let b = TestBroker::start().await;
    let o = options(&b);
    let report = bounded(switchboard::bench::declare::run(&o, 200, 4))
        .await
        .expect("bench declare runs");
    assert_eq!((report.queues, report.channels), (200, 4));
    for phase in [&report.declare, &report.redeclare, &report.delete] {
        assert!(phase.seconds > 0.0 && phase.per_second > 0.0, "{report:?}");
        assert!(phase.first_tenth_per_second > 0.0, "{report:?}");
        assert!(phase.last_tenth_per_second > 0.0, "{report:?}");
    }
    let vhost = b.broker().vhost("/").expect("vhost /");
    let left = vhost
        .queues()
        .iter()
        .filter(|q| q.name.starts_with(&o.queue))
        .count();
    assert_eq!(left, 0, "every declared queue was deleted");
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON parses");
    assert_eq!(json["queues"], 200);
    assert!(report.render().contains("last 10%"));
}

/// `--tls --ca-file`: AMQP, MQTT (QoS 1) and STOMP runs against the broker's TLS listeners,
/// trusting the test CA's PEM file, account for every message; without the CA the bench is
/// refused by its own certificate check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_runs_on_every_protocol_account_for_every_message() {
    use switchboard::bench::transport::BenchTls;
    let pki = common::tls::TestPki::new();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b = TestBroker::start_with(|c| {
        c.tls = pki.server_config(false, false);
        c.amqp.tls_listen = vec![any];
        c.mqtt.tls_listen = vec![any];
        c.stomp.tls_listen = vec![any];
    })
    .await;
    let addrs = b.addrs();
    let tls = BenchTls::from_ca_file(&pki.dir.join("ca.pem")).expect("CA file loads");
    let over_tls = Options {
        amqp_addr: addrs.amqp_tls[0],
        mqtt_addr: addrs.mqtt_tls[0],
        stomp_addr: addrs.stomp_tls[0],
        tls: Some(tls),
        qos: QoS::AtLeastOnce,
        ..options(&b)
    };
    for scenario in [Scenario::Amqp, Scenario::Mqtt, Scenario::Stomp] {
        let report = bounded(run(scenario, &over_tls))
            .await
            .unwrap_or_else(|e| panic!("{scenario:?} over TLS: {e}"));
        assert_accounted(&report);
    }

    // A CA that did not sign the broker's certificate: the handshake fails, nothing runs.
    let stranger = common::tls::TestPki::new();
    let distrusting = Options {
        tls: Some(BenchTls::from_config(stranger.client_config(None))),
        ..over_tls.clone()
    };
    let err = bounded(run(Scenario::Amqp, &distrusting))
        .await
        .expect_err("an unknown issuer is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}
