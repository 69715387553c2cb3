//! `switchboard bench`: a load generator pointed at any broker on 127.0.0.1 by default.
//!
//! Scenarios: AMQP publish → queue → consume, AMQP fan-out, STOMP send → subscribe, MQTT
//! publish → subscribe at QoS 0/1/2 (3.1.1 and 5), cross-protocol flows, and idle MQTT
//! connections (`--connections`); `declare` times durable queue declares and deletes (see
//! [`declare`]). Every body carries a stamp (run, publisher, sequence number, send time; see
//! [`body`]), from which consumers measure latency into an HDR histogram and count loss and
//! duplicates exactly. Given the broker's pid, a run reports the broker's CPU seconds
//! per million messages (the figure that holds on a shared machine) and its peak RSS.

pub mod amqp;
pub mod body;
pub mod cli;
pub mod client;
pub mod confirm;
pub mod connections;
pub mod declare;
pub mod live;
pub mod mqtt;
pub mod procfs;
pub mod record;
pub mod report;
pub mod run;
pub mod stomp;
pub mod transport;

use live::Live;
use record::Recorder;
use report::Report;
use run::{drive, Flow, StopConsumers, Task};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("AMQP client: {0}")]
    Amqp(#[from] client::ClientError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the broker refused: {0}")]
    Refused(String),
    #[error("the broker closed the connection")]
    Closed,
    #[error("a client task failed: {0}")]
    Task(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("bad options: {0}")]
    Options(String),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// A protocol a scenario publishes or consumes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Amqp,
    Mqtt,
    Stomp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Amqp => "amqp",
            Protocol::Mqtt => "mqtt",
            Protocol::Stomp => "stomp",
        }
    }
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Publishers → one queue → competing consumers.
    Amqp,
    /// Publishers → a fanout exchange → one private queue per consumer (durable with
    /// `persistent`).
    AmqpFanout,
    /// SEND to `/queue/NAME.stomp` → competing subscribers.
    Stomp,
    /// Publish to topic `NAME/mqtt` → every subscriber gets every message (fan-out 1 → N is
    /// one publisher and N consumers).
    Mqtt,
    /// Publish with one protocol through `amq.topic`, consume with another; every consumer
    /// gets every message.
    Cross { from: Protocol, to: Protocol },
}

/// Everything a run is told. Unused options are ignored by scenarios they do not apply to.
#[derive(Debug, Clone)]
pub struct Options {
    pub amqp_addr: SocketAddr,
    pub stomp_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    pub mqtt_version: switchboard_mqtt::Protocol,
    /// MQTT over WebSocket: `mqtt_addr` is a Web MQTT listener (`ws://ADDR/ws`).
    pub mqtt_ws: bool,
    /// Every connection over TLS, trusting these roots (`--tls --ca-file`).
    pub tls: Option<transport::BenchTls>,
    /// QoS of MQTT publishes and subscriptions.
    pub qos: switchboard_mqtt::QoS,
    /// The MQTT CONNECT's keep alive in seconds (0: none). The bench sends no PINGREQ, so a
    /// broker that refuses 0 (rumqttd) needs one longer than the run.
    pub mqtt_keep_alive: u16,
    pub user: String,
    pub password: String,
    pub publishers: usize,
    pub consumers: usize,
    /// Body size in bytes (at least the stamp's 16).
    pub size: usize,
    /// Publishing time.
    pub duration: Duration,
    /// Stop after this many messages in all (spread over the publishers).
    pub messages: Option<u64>,
    /// Messages per second per publisher.
    pub rate: Option<u64>,
    /// Messages per second per consumer (a deliberately slow consumer).
    pub consumer_rate: Option<u64>,
    /// Publishers pause while this many deliveries are outstanding, so a run measures a
    /// steady state instead of filling the broker's memory.
    pub max_in_flight: u64,
    /// At most how long consumers get to take what was published after publishing stops (the
    /// drain also ends once they receive nothing for 3 s).
    pub drain_timeout: Duration,
    /// Manual acknowledgements with this prefetch (AMQP acks, STOMP `client-individual`).
    pub manual_ack: Option<u16>,
    /// Persistent messages (AMQP delivery mode 2 to a durable queue, STOMP `persistent:true`;
    /// MQTT: sessions the broker keeps).
    pub persistent: bool,
    /// At most this many unconfirmed messages per publisher (AMQP confirms, STOMP receipts).
    pub confirm_window: Option<u32>,
    /// The queue (or name stem) the scenario uses.
    pub queue: String,
    /// Arguments of the `amqp` scenario's queue declare (`--queue-arg`, e.g. `x-queue-type`).
    pub queue_args: switchboard_amqp::FieldTable,
    /// The broker's processes (one per node of a cluster): their CPU seconds are summed, and
    /// each one's memory is reported.
    pub broker_pids: Vec<u32>,
    /// Kill a broker node during the run, to time its failover (`--kill-pid`).
    pub kill: Option<Kill>,
    /// Print the progress line even when stderr is not a terminal.
    pub progress: bool,
}

/// A broker process the run kills with SIGKILL once it has published for `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    pub pid: u32,
    pub after: Duration,
}

impl Options {
    /// Defaults: standard ports on 127.0.0.1, guest/guest, 1 → 1, 16 B, 10 s.
    pub fn new() -> Self {
        Options {
            amqp_addr: SocketAddr::from(([127, 0, 0, 1], 5672)),
            stomp_addr: SocketAddr::from(([127, 0, 0, 1], 61613)),
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            mqtt_version: switchboard_mqtt::Protocol::V311,
            mqtt_ws: false,
            tls: None,
            qos: switchboard_mqtt::QoS::AtMostOnce,
            mqtt_keep_alive: 0,
            user: "guest".into(),
            password: "guest".into(),
            publishers: 1,
            consumers: 1,
            size: 16,
            duration: Duration::from_secs(10),
            messages: None,
            rate: None,
            consumer_rate: None,
            max_in_flight: 100_000,
            drain_timeout: Duration::from_secs(60),
            manual_ack: None,
            persistent: false,
            confirm_window: None,
            queue: "switchboard-bench".into(),
            queue_args: Default::default(),
            broker_pids: Vec::new(),
            kill: None,
            progress: false,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// Where publishers send.
enum Target {
    Amqp { exchange: String, key: String },
    Stomp(String),
    Mqtt(String),
}

/// Where consumers take from, and whether they share the messages.
struct Source {
    from: SourceKind,
    /// Consumers compete for one copy of each message (one queue) rather than each getting all.
    shared: bool,
}

enum SourceKind {
    Amqp(amqp::Source),
    Stomp(String),
    Mqtt(String),
}

/// The topic key cross-protocol flows use on `amq.topic`.
fn cross_key(o: &Options) -> String {
    format!("{}.cross", o.queue)
}

/// Runs a scenario to its end and reports.
pub async fn run(scenario: Scenario, o: &Options) -> Result<Report, BenchError> {
    if o.size < body::STAMP_LEN {
        return Err(BenchError::Options(format!(
            "--size must be at least {} (the stamp)",
            body::STAMP_LEN
        )));
    }
    if o.publishers == 0 || o.publishers > usize::from(u16::MAX) {
        return Err(BenchError::Options("--publishers must be 1..65535".into()));
    }
    let (label, target, source) = match scenario {
        Scenario::Amqp => {
            amqp::declare_queue(o, &o.queue).await?;
            (
                "amqp".to_string(),
                Target::Amqp {
                    exchange: String::new(),
                    key: o.queue.clone(),
                },
                Source {
                    from: SourceKind::Amqp(amqp::Source::Queue(o.queue.clone())),
                    shared: true,
                },
            )
        }
        Scenario::AmqpFanout => {
            let exchange = format!("{}.fanout", o.queue);
            amqp::declare_fanout(o, &exchange).await?;
            (
                "amqp-fanout".to_string(),
                Target::Amqp {
                    exchange: exchange.clone(),
                    key: String::new(),
                },
                Source {
                    from: SourceKind::Amqp(amqp::Source::Bound {
                        exchange,
                        key: String::new(),
                    }),
                    shared: false,
                },
            )
        }
        Scenario::Stomp => {
            // Not the AMQP scenario's queue: STOMP declares its queues durable, and a broker
            // refuses to re-declare a transient queue as durable.
            let destination = format!("/queue/{}.stomp", o.queue);
            (
                "stomp".to_string(),
                Target::Stomp(destination.clone()),
                Source {
                    from: SourceKind::Stomp(destination),
                    shared: true,
                },
            )
        }
        Scenario::Mqtt => {
            let topic = format!("{}/mqtt", o.queue);
            (
                format!(
                    "mqtt {:?} {:?}{}",
                    o.mqtt_version,
                    o.qos,
                    if o.mqtt_ws { " over WebSocket" } else { "" }
                ),
                Target::Mqtt(topic.clone()),
                Source {
                    from: SourceKind::Mqtt(topic),
                    shared: false,
                },
            )
        }
        Scenario::Cross { from, to } => {
            let key = cross_key(o);
            let target = match from {
                Protocol::Amqp => Target::Amqp {
                    exchange: "amq.topic".into(),
                    key: key.clone(),
                },
                Protocol::Stomp => Target::Stomp(format!("/topic/{key}")),
                Protocol::Mqtt => Target::Mqtt(mqtt_topic(&key)),
            };
            let from_kind = match to {
                Protocol::Amqp => SourceKind::Amqp(amqp::Source::Bound {
                    exchange: "amq.topic".into(),
                    key,
                }),
                Protocol::Stomp => SourceKind::Stomp(format!("/topic/{key}")),
                Protocol::Mqtt => SourceKind::Mqtt(mqtt_topic(&key)),
            };
            (
                format!("cross {} -> {}", from.name(), to.name()),
                target,
                Source {
                    from: from_kind,
                    shared: false,
                },
            )
        }
    };
    // MQTT QoS 0 may drop: what is missing is then a figure, not a defect.
    let mqtt_involved =
        matches!(target, Target::Mqtt(_)) || matches!(source.from, SourceKind::Mqtt(_));
    let loss_is_defect = !(mqtt_involved && o.qos == switchboard_mqtt::QoS::AtMostOnce);
    flow(label, target, source, o, loss_is_defect).await
}

/// The MQTT topic that maps to an `amq.topic` routing key (`.` and `/` swap).
fn mqtt_topic(key: &str) -> String {
    key.replace('.', "/")
}

/// An MQTT client id unique to this run.
fn client_id(live: &Live, role: char, i: usize) -> String {
    format!("sb-bench-{:04x}-{role}{i}", live.run)
}

/// Subscribes the consumers, then drives the publishers.
async fn flow(
    label: String,
    target: Target,
    source: Source,
    o: &Options,
    loss_is_defect: bool,
) -> Result<Report, BenchError> {
    let groups = if source.shared { 1 } else { o.consumers };
    let live = Arc::new(Live::new(groups as u64, o.max_in_flight));
    let stop = StopConsumers::new();
    let mut consumers = Vec::new();
    for i in 0..o.consumers {
        let group = if source.shared { 0 } else { i };
        let rec = Recorder::new(live.clone(), group, o.consumer_rate)
            .map_err(|e| BenchError::Options(format!("latency histogram: {e}")))?;
        let task = match &source.from {
            SourceKind::Amqp(s) => amqp::start_consumer(o, s, rec, stop.subscribe()).await,
            SourceKind::Stomp(d) => stomp::start_consumer(o, d, rec, stop.subscribe()).await,
            SourceKind::Mqtt(t) => {
                let id = client_id(&live, 'c', i);
                mqtt::start_consumer(o, t, id, rec, stop.subscribe()).await
            }
        };
        match task {
            Ok(t) => consumers.push(t),
            Err(e) => {
                consumers.iter().for_each(|c| c.abort());
                return Err(e);
            }
        }
    }
    let flow = Flow {
        label,
        live: live.clone(),
        groups,
        stop,
        consumers,
        loss_is_defect,
    };
    drive(flow, o, || start_publishers(&target, o, live)).await
}

async fn start_publishers(
    target: &Target,
    o: &Options,
    live: Arc<Live>,
) -> Result<Vec<Task<u64>>, BenchError> {
    let mut tasks = Vec::new();
    for i in 0..o.publishers {
        let budget = publisher_budget(o.messages, o.publishers, i);
        let id = i as u16;
        let task = match target {
            Target::Amqp { exchange, key } => {
                amqp::start_publisher(o, exchange, key, id, budget, live.clone()).await
            }
            Target::Stomp(d) => stomp::start_publisher(o, d, id, budget, live.clone()).await,
            Target::Mqtt(t) => {
                let client = client_id(&live, 'p', i);
                mqtt::start_publisher(o, t, client, id, budget, live.clone()).await
            }
        };
        match task {
            Ok(t) => tasks.push(t),
            Err(e) => {
                tasks.iter().for_each(|t| t.abort());
                return Err(e);
            }
        }
    }
    Ok(tasks)
}

/// Publisher `i`'s share of `messages` (all of u32's range when unbounded: sequence numbers
/// are 32-bit).
fn publisher_budget(messages: Option<u64>, publishers: usize, i: usize) -> u64 {
    match messages {
        None => u64::from(u32::MAX),
        Some(m) => {
            let p = publishers as u64;
            m / p + u64::from((i as u64) < m % p)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_budget_is_spread_over_publishers_exactly() {
        let shares: Vec<u64> = (0..3)
            .map(|i| super::publisher_budget(Some(10), 3, i))
            .collect();
        assert_eq!(shares, [4, 3, 3]);
        assert_eq!(super::publisher_budget(None, 3, 0), u64::from(u32::MAX));
    }
}
