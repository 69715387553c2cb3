//! Prometheus metrics on their own listener (`[prometheus] listen`, RabbitMQ's port 15692):
//! `/metrics` aggregated and `/metrics/per-object` with a series per queue, exchange and
//! connection, under `rabbitmq_prometheus`'s metric names and labels for what the two brokers
//! share, plus ours (`switchboard_*`). Encoded by `prometheus-client` (OpenMetrics text, which
//! Prometheus scrapes). Like RabbitMQ's, the endpoints need no credentials.

use crate::adapter::mqtt::registry::MqttState;
use crate::core::broker::ConnectionEntry;
use crate::core::sampler::{protocol_counts, vhost_counts};
use crate::core::stats::{Counts, Field};
use crate::core::Broker;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The exposition format's content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the metrics endpoints on the connections `acceptor` admits.
pub async fn serve(
    acceptor: crate::net::accept::Acceptor,
    broker: Arc<Broker>,
    mqtt: Arc<MqttState>,
) {
    let app = Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .layer(Extension(mqtt))
        .with_state(broker.clone());
    super::serve_app(acceptor, broker, app, None).await
}

async fn aggregated(
    State(b): State<Arc<Broker>>,
    Extension(mqtt): Extension<Arc<MqttState>>,
) -> Response {
    respond(render(&b, &mqtt, false))
}

async fn per_object(
    State(b): State<Arc<Broker>>,
    Extension(mqtt): Extension<Arc<MqttState>>,
) -> Response {
    respond(render(&b, &mqtt, true))
}

fn respond(text: Result<String, std::fmt::Error>) -> Response {
    match text {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

type Labels = Vec<(&'static str, String)>;

/// Gauge or counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// One metric's series, summed by label set while the broker is walked, then registered: an
/// unlabelled series as a plain metric (no `{}` on the line), labelled ones as a family.
#[derive(Debug)]
struct Series {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    values: Vec<(Labels, u64)>,
}

impl Series {
    fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Series {
            name,
            help,
            kind,
            values: Vec::new(),
        }
    }

    /// Adds `n` to the series with `labels` (made on first use).
    fn add(&mut self, labels: Labels, n: u64) {
        match self.values.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, v)) => *v += n,
            None => self.values.push((labels, n)),
        }
    }

    fn register(self, r: &mut Registry) {
        let single = self.values.len() == 1 && self.values[0].0.is_empty();
        match (self.kind, single) {
            (Kind::Gauge, true) => {
                let g: Gauge = Gauge::default();
                g.set(as_i64(self.values[0].1));
                r.register(self.name, self.help, g);
            }
            (Kind::Counter, true) => {
                let c: Counter = Counter::default();
                c.inc_by(self.values[0].1);
                r.register(self.name, self.help, c);
            }
            (Kind::Gauge, false) => {
                let f = Family::<Labels, Gauge>::default();
                for (l, v) in &self.values {
                    f.get_or_create(l).set(as_i64(*v));
                }
                r.register(self.name, self.help, f);
            }
            (Kind::Counter, false) => {
                let f = Family::<Labels, Counter>::default();
                for (l, v) in &self.values {
                    f.get_or_create(l).inc_by(*v);
                }
                r.register(self.name, self.help, f);
            }
        }
    }
}

/// Registers one unlabelled gauge.
fn gauge(r: &mut Registry, name: &'static str, help: &'static str, value: u64) {
    let mut s = Series::new(name, help, Kind::Gauge);
    s.add(vec![], value);
    s.register(r);
}

fn as_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// RabbitMQ's `protocol` label value for one of our connection protocols.
fn protocol_label(protocol: &str) -> &'static str {
    match protocol {
        "amqp" => "amqp091",
        "mqtt" => "mqtt",
        "stomp" => "stomp",
        _ => "other",
    }
}

/// The queue metrics `rabbitmq_prometheus` has (`queue_coarse_metrics`, `queue_metrics`,
/// `queue_delivery_metrics`) and the fields they are read from.
const QUEUE_DELIVERY_METRICS: [(Field, &str, &str); 8] = [
    (Field::Publish, "rabbitmq_queue_messages_published", "Total number of messages published to queues"),
    (Field::Get, "rabbitmq_queue_get_ack", "Total number of messages fetched from a queue with basic.get in manual acknowledgement mode"),
    (Field::GetNoAck, "rabbitmq_queue_get", "Total number of messages fetched from a queue with basic.get in automatic acknowledgement mode"),
    (Field::Deliver, "rabbitmq_queue_messages_delivered_ack", "Total number of messages delivered from a queue to consumers in manual acknowledgement mode"),
    (Field::DeliverNoAck, "rabbitmq_queue_messages_delivered", "Total number of messages delivered from a queue to consumers in automatic acknowledgement mode"),
    (Field::Redeliver, "rabbitmq_queue_messages_redelivered", "Total number of messages redelivered from a queue to consumers"),
    (Field::Ack, "rabbitmq_queue_messages_acked", "Total number of messages acknowledged by consumers on a queue"),
    (Field::GetEmpty, "rabbitmq_queue_get_empty", "Total number of times basic.get operations fetched no message on a queue"),
];

/// The whole exposition: per-object series when `per_object`, else one series per metric.
fn render(b: &Arc<Broker>, mqtt: &MqttState, per_object: bool) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();
    let vhosts = b.vhosts();
    let connections = b.connections();
    let table = b.stats.table();

    // Totals (RabbitMQ's TOTALS).
    gauge(
        &mut r,
        "rabbitmq_connections",
        "Connections currently open",
        connections.len() as u64,
    );
    let channels: u64 = connections
        .iter()
        .map(|c| u64::from(c.channels.load(std::sync::atomic::Ordering::Relaxed)))
        .sum();
    gauge(
        &mut r,
        "rabbitmq_channels",
        "Channels currently open",
        channels,
    );
    let queue_count: usize = vhosts.iter().map(|v| v.queues().len()).sum();
    gauge(
        &mut r,
        "rabbitmq_queues",
        "Queues available",
        queue_count as u64,
    );

    // Queues: per queue, or summed into one unlabelled series each.
    let mut ready = Series::new(
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        Kind::Gauge,
    );
    let mut unacked = Series::new(
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        Kind::Gauge,
    );
    let mut messages = Series::new(
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        Kind::Gauge,
    );
    let mut consumers = Series::new(
        "rabbitmq_queue_consumers",
        "Consumers on a queue",
        Kind::Gauge,
    );
    let mut ready_bytes = Series::new(
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        Kind::Gauge,
    );
    let mut deliveries: Vec<(Field, Series)> = QUEUE_DELIVERY_METRICS
        .iter()
        .map(|&(f, name, help)| (f, Series::new(name, help, Kind::Counter)))
        .collect();
    let mut consumers_total = 0u64;
    for vh in &vhosts {
        for q in vh.queues() {
            let s = q.stats_recent();
            consumers_total += s.consumers;
            let labels: Labels = if per_object {
                vec![("vhost", vh.name.clone()), ("queue", q.name.clone())]
            } else {
                vec![]
            };
            ready.add(labels.clone(), s.ready);
            unacked.add(labels.clone(), s.unacked);
            messages.add(labels.clone(), s.ready + s.unacked);
            consumers.add(labels.clone(), s.consumers);
            ready_bytes.add(labels.clone(), s.ready_bytes);
            let counts = s.counters.counts();
            for (f, series) in &mut deliveries {
                series.add(labels.clone(), counts.get(*f));
            }
        }
    }
    for s in [ready, unacked, messages, consumers, ready_bytes] {
        s.register(&mut r);
    }
    for (_, s) in deliveries {
        s.register(&mut r);
    }
    gauge(
        &mut r,
        "rabbitmq_consumers",
        "Consumers currently connected",
        consumers_total,
    );

    // Exchanges.
    let mut published = Series::new(
        "rabbitmq_exchange_messages_published",
        "Total number of messages published into an exchange",
        Kind::Counter,
    );
    let mut routed = Series::new(
        "rabbitmq_exchange_messages_routed",
        "Total number of messages routed out of an exchange to queues, once per queue (ours)",
        Kind::Counter,
    );
    for vh in &vhosts {
        for e in vh.exchanges() {
            let labels: Labels = if per_object {
                vec![("vhost", vh.name.clone()), ("exchange", e.name.clone())]
            } else {
                vec![]
            };
            let c = e.stats.counts();
            published.add(labels.clone(), c.get(Field::PublishIn));
            routed.add(labels, c.get(Field::PublishOut));
        }
    }
    published.register(&mut r);
    routed.register(&mut r);

    // Connections: bytes, per connection or summed.
    let mut incoming = Series::new(
        "rabbitmq_connection_incoming_bytes",
        "Total number of bytes received on a connection",
        Kind::Counter,
    );
    let mut outgoing = Series::new(
        "rabbitmq_connection_outgoing_bytes",
        "Total number of bytes sent on a connection",
        Kind::Counter,
    );
    incoming.add(vec![], 0);
    outgoing.add(vec![], 0);
    for c in &connections {
        let labels: Labels = if per_object {
            vec![("connection", c.name())]
        } else {
            vec![]
        };
        let (recv, sent) = c.stats.octets();
        incoming.add(labels.clone(), recv);
        outgoing.add(labels, sent);
    }
    if per_object {
        // The zero placeholders keep the aggregated series present with no connections.
        incoming.values.retain(|(l, _)| !l.is_empty());
        outgoing.values.retain(|(l, _)| !l.is_empty());
    }
    incoming.register(&mut r);
    outgoing.register(&mut r);

    global_metrics(&mut r, &connections, &table, &vhosts);
    drop(table);
    node_metrics(&mut r, b, mqtt, &connections);

    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

/// `rabbitmq_global_*`: per protocol what publishers did, and over every queue what consumers
/// did. RabbitMQ labels the latter by protocol and queue type; ours are counted per queue, so
/// they carry only `queue_type`.
fn global_metrics(
    r: &mut Registry,
    connections: &[Arc<ConnectionEntry>],
    table: &crate::core::stats::RateTable,
    vhosts: &[Arc<crate::core::VHost>],
) {
    let mut received = Series::new(
        "rabbitmq_global_messages_received",
        "Total number of messages received from publishers",
        Kind::Counter,
    );
    let mut confirmed = Series::new(
        "rabbitmq_global_messages_confirmed",
        "Total number of messages confirmed to publishers",
        Kind::Counter,
    );
    for protocol in ["amqp", "mqtt", "stomp"] {
        let c = protocol_counts(table, protocol, connections);
        let labels: Labels = vec![("protocol", protocol_label(protocol).to_owned())];
        received.add(labels.clone(), c.get(Field::Publish));
        confirmed.add(labels, c.get(Field::Confirm));
    }
    received.register(r);
    confirmed.register(r);
    let mut all = Counts::default();
    for vh in vhosts {
        all.add(&vhost_counts(table, vh, connections));
    }
    let consumed = [
        ("rabbitmq_global_messages_delivered", "Total number of messages delivered to consumers", all.deliver_get()),
        ("rabbitmq_global_messages_delivered_consume_manual_ack", "Total number of messages delivered to consumers using basic.consume with manual acknowledgment", all.get(Field::Deliver)),
        ("rabbitmq_global_messages_delivered_consume_auto_ack", "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment", all.get(Field::DeliverNoAck)),
        ("rabbitmq_global_messages_delivered_get_manual_ack", "Total number of messages delivered to consumers using basic.get with manual acknowledgment", all.get(Field::Get)),
        ("rabbitmq_global_messages_delivered_get_auto_ack", "Total number of messages delivered to consumers using basic.get with automatic acknowledgment", all.get(Field::GetNoAck)),
        ("rabbitmq_global_messages_get_empty", "Total number of times basic.get operations fetched no message", all.get(Field::GetEmpty)),
        ("rabbitmq_global_messages_redelivered", "Total number of messages redelivered to consumers", all.get(Field::Redeliver)),
        ("rabbitmq_global_messages_acknowledged", "Total number of messages acknowledged by consumers", all.get(Field::Ack)),
    ];
    for (name, help, n) in consumed {
        let mut s = Series::new(name, help, Kind::Counter);
        s.add(vec![("queue_type", "rabbit_classic_queue".to_owned())], n);
        s.register(r);
    }
}

/// Node-level metrics: memory, alarms, identity, and ours (connections per protocol, MQTT
/// sessions and retained messages, the message log's size and fsync latency).
fn node_metrics(
    r: &mut Registry,
    b: &Arc<Broker>,
    mqtt: &MqttState,
    connections: &[Arc<ConnectionEntry>],
) {
    let resident = crate::core::process_memory::resident_bytes().unwrap_or(0);
    gauge(
        r,
        "rabbitmq_process_resident_memory_bytes",
        "Memory used in bytes",
        resident as u64,
    );
    gauge(
        r,
        "rabbitmq_resident_memory_limit_bytes",
        "Memory high watermark in bytes",
        b.memory.high_watermark() as u64,
    );
    gauge(
        r,
        "rabbitmq_alarms_memory_used_watermark",
        "is set to 1 when the memory alarm is in effect",
        u64::from(b.memory.alarm()),
    );
    r.register(
        "rabbitmq_build",
        "RabbitMQ & Erlang/OTP version info",
        Info::new(vec![
            ("rabbitmq_version", env!("CARGO_PKG_VERSION")),
            ("product_name", "Switchboard"),
        ]),
    );
    r.register(
        "rabbitmq_identity",
        "RabbitMQ node & cluster identity info",
        Info::new(vec![
            ("rabbitmq_node", "switchboard@localhost"),
            ("rabbitmq_cluster", "switchboard"),
        ]),
    );

    let mut per_protocol = Series::new(
        "switchboard_connections",
        "Connections open, by protocol",
        Kind::Gauge,
    );
    for protocol in ["amqp", "mqtt", "stomp"] {
        let n = connections
            .iter()
            .filter(|c| c.protocol == protocol)
            .count();
        per_protocol.add(
            vec![("protocol", protocol_label(protocol).to_owned())],
            n as u64,
        );
    }
    per_protocol.register(r);
    let sessions = mqtt.session_summaries();
    let connected = sessions.iter().filter(|s| s.connected).count() as u64;
    let mut by_state = Series::new(
        "switchboard_mqtt_sessions",
        "MQTT sessions, by whether their client is connected",
        Kind::Gauge,
    );
    by_state.add(vec![("state", "connected".to_owned())], connected);
    by_state.add(
        vec![("state", "disconnected".to_owned())],
        sessions.len() as u64 - connected,
    );
    by_state.register(r);
    gauge(
        r,
        "switchboard_mqtt_retained_messages",
        "MQTT retained messages",
        mqtt.retained_count() as u64,
    );
    gauge(
        r,
        "switchboard_memory_used_bytes",
        "Bytes counted against the memory high watermark",
        b.memory.used() as u64,
    );
    if let Some(store) = &b.store {
        gauge(
            r,
            "switchboard_log_bytes",
            "Bytes of message log segments on disk",
            store.log.size_on_disk(),
        );
        r.register(
            "switchboard_fsync_duration_seconds",
            "Time each group commit's fdatasync of the message log took",
            store.log.stats.fsync_seconds.clone(),
        );
    }
}
