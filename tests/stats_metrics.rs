//! Message statistics in the management API (`message_stats` with rates) and the Prometheus
//! endpoints, scraped and parsed with a real exposition-format parser (`prometheus-parse`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use serde_json::Value;
use std::time::Duration;
use switchboard::ctl::api::Api;

/// A broker that samples rates every 50 ms, so that a test sees them move quickly.
async fn sampling_broker() -> TestBroker {
    TestBroker::start_with(|c| c.http.stats_interval_ms = 50).await
}

/// GETs `path` as guest (blocking HTTP, off the runtime).
async fn api_get(b: &TestBroker, path: &str) -> Value {
    let api = Api::new(&b.http_url(), "guest", "guest");
    let path = path.to_owned();
    bounded(tokio::task::spawn_blocking(move || api.get_ok(&path)))
        .await
        .expect("request task")
        .expect("GET succeeds")
}

/// Polls `path` until `cond` holds on its JSON, or panics after [`WAIT`].
async fn api_until(b: &TestBroker, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = api_get(b, path).await;
        if cond(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scrapes a Prometheus endpoint and parses it.
async fn scrape(b: &TestBroker, path: &str) -> prometheus_parse::Scrape {
    let addr = b.running.as_ref().expect("running").addrs.prometheus[0];
    let url = format!("http://{addr}{path}");
    let text = bounded(tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .expect("scrape answers")
            .body_mut()
            .read_to_string()
            .expect("scrape body")
    }))
    .await
    .expect("scrape task");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid exposition format")
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|got| got == *v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test]
async fn queue_exchange_overview_and_vhost_have_message_stats_with_rates() {
    let b = sampling_broker().await;
    let (_c, ch) = b.channel().await;
    let q = unique("stats");
    declare(&ch, &q).await;
    for i in 0..20 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut consumer = consume(&ch, &q, false).await;
    for d in next_n(&mut consumer, 20).await {
        ack(&d).await;
    }
    assert!(get(&ch, &q, true).await.is_none(), "the queue is drained");

    let queues = api_until(&b, "/api/queues", "the queue's acks counted", |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|x| x["name"] == q.as_str() && x["message_stats"]["ack"] == 20)
    })
    .await;
    let stats = &queues
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == q.as_str()))
        .expect("listed")["message_stats"];
    assert_eq!(stats["publish"], 20);
    assert_eq!(stats["deliver"], 20);
    assert_eq!(stats["deliver_get"], 20);
    assert_eq!(stats["get_empty"], 1);
    assert!(stats["publish_details"]["rate"].is_number());

    let overview = api_until(&b, "/api/overview", "a publish rate", |v| {
        v["message_stats"]["publish"] == 20
            && v["message_stats"]["publish_details"]["rate"].as_f64() > Some(0.0)
    })
    .await;
    assert_eq!(overview["message_stats"]["ack"], 20);

    let exchanges = api_get(&b, "/api/exchanges").await;
    let default = exchanges
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "" && x["vhost"] == "/"))
        .expect("default exchange listed");
    assert_eq!(default["message_stats"]["publish_in"], 20);
    assert_eq!(default["message_stats"]["publish_out"], 20);

    let vhosts = api_get(&b, "/api/vhosts").await;
    let root = vhosts
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "/"))
        .expect("vhost listed");
    assert_eq!(root["message_stats"]["publish"], 20);
    assert_eq!(root["message_stats"]["deliver_get"], 20);

    let connections = api_get(&b, "/api/connections").await;
    let amqp = connections
        .as_array()
        .and_then(|a| a.iter().find(|x| x["protocol"] == "amqp"))
        .expect("connection listed");
    assert_eq!(amqp["message_stats"]["publish"], 20);
    assert!(amqp["recv_oct"].as_u64() > Some(0));
    assert!(amqp["send_oct"].as_u64() > Some(0));
}

#[tokio::test]
async fn a_closed_connections_publishes_stay_counted() {
    let b = sampling_broker().await;
    let q = unique("closed");
    {
        let (c, ch) = b.channel().await;
        declare(&ch, &q).await;
        for _ in 0..5 {
            publish(&ch, "", &q, b"x").await;
        }
        bounded(c.close(200, "bye".into())).await.expect("close");
    }
    wait_until("the connection unregistered", || {
        b.broker().connections().is_empty()
    })
    .await;
    let scrape = scrape(&b, "/metrics").await;
    assert_eq!(
        sample(
            &scrape,
            "rabbitmq_global_messages_received_total",
            &[("protocol", "amqp091")]
        ),
        Some(5.0)
    );
    let overview = api_get(&b, "/api/overview").await;
    assert_eq!(overview["message_stats"]["publish"], 5);
}

#[tokio::test]
async fn prometheus_aggregated_and_per_object_parse_with_rabbitmq_names() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("scraped");
    declare(&ch, &q).await;
    for _ in 0..3 {
        publish(&ch, "", &q, b"abc").await;
    }
    wait_until("published", || {
        b.broker()
            .vhost("/")
            .and_then(|v| v.queue(&q))
            .is_some_and(|q| q.message_count() == 3)
    })
    .await;

    let agg = scrape(&b, "/metrics").await;
    assert_eq!(sample(&agg, "rabbitmq_connections", &[]), Some(1.0));
    assert!(sample(&agg, "rabbitmq_queues", &[]) >= Some(1.0));
    assert_eq!(
        sample(&agg, "rabbitmq_queue_messages_ready", &[]),
        Some(3.0)
    );
    assert_eq!(
        sample(&agg, "switchboard_connections", &[("protocol", "amqp091")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&agg, "rabbitmq_alarms_memory_used_watermark", &[]),
        Some(0.0)
    );
    assert!(sample(&agg, "switchboard_log_bytes", &[]) > Some(0.0));
    assert!(
        agg.samples
            .iter()
            .all(|s| !s.labels.iter().any(|(k, _)| k == "queue")),
        "the aggregated endpoint has no per-queue series"
    );

    let per = scrape(&b, "/metrics/per-object").await;
    assert_eq!(
        sample(
            &per,
            "rabbitmq_queue_messages_ready",
            &[("vhost", "/"), ("queue", &q)]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &per,
            "rabbitmq_queue_messages_published_total",
            &[("vhost", "/"), ("queue", &q)]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &per,
            "rabbitmq_exchange_messages_published_total",
            &[("vhost", "/"), ("exchange", "")]
        ),
        Some(3.0)
    );
}
