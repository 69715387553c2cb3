//! The `switchboard bench` command line: options, the run, and its output.

use super::{run, Options, Protocol, Scenario};
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;
use switchboard_amqp::FieldValue;

/// Runs are bounded: no longer than this.
const MAX_DURATION_SECS: u64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// P publishers -> one queue -> C competing consumers.
    Amqp,
    /// 1..P publishers -> fanout exchange -> C consumers, each with its own queue.
    AmqpFanout,
    /// SEND to /queue/NAME.stomp -> C competing subscribers.
    Stomp,
    /// Publish to topic NAME/mqtt -> C subscribers, each getting every message (fan-out
    /// 1 -> N: --publishers 1 --consumers N). With --connections N: idle connections instead.
    Mqtt,
    /// Publish with --from, consume with --to, through amq.topic (each consumer gets all).
    Cross,
    /// Declare --queues durable queues over --channels connections, then delete them: rates
    /// overall and in the first and last tenth.
    Declare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolName {
    Amqp,
    Mqtt,
    Stomp,
}

impl From<ProtocolName> for Protocol {
    fn from(p: ProtocolName) -> Self {
        match p {
            ProtocolName::Amqp => Protocol::Amqp,
            ProtocolName::Mqtt => Protocol::Mqtt,
            ProtocolName::Stomp => Protocol::Stomp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MqttVersion {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to run.
    #[arg(value_enum, default_value = "amqp")]
    scenario: ScenarioName,
    /// Publishing protocol of `cross`.
    #[arg(long, value_enum, default_value = "amqp")]
    from: ProtocolName,
    /// Consuming protocol of `cross`.
    #[arg(long, value_enum, default_value = "stomp")]
    to: ProtocolName,
    /// The broker's address for the scenario's protocol (overrides --amqp-addr / --stomp-addr).
    #[arg(long)]
    addr: Option<SocketAddr>,
    #[arg(long, default_value = "127.0.0.1:5672")]
    amqp_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:61613")]
    stomp_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_addr: SocketAddr,
    /// MQTT protocol version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    mqtt_version: MqttVersion,
    /// MQTT over WebSocket: --mqtt-addr (or --addr) is a Web MQTT listener, `ws://ADDR/ws`
    /// (Switchboard's and RabbitMQ's 15675, Mosquitto's `protocol websockets` listener).
    #[arg(long)]
    ws: bool,
    /// Every connection over TLS (with --ws: `wss://`), to the broker's TLS listener at the
    /// address given; the broker's certificate must name the address's IP and be signed by a
    /// CA in --ca-file.
    #[arg(long, requires = "ca_file")]
    tls: bool,
    /// PEM file of the CA certificates the bench trusts with --tls.
    #[arg(long, value_name = "PATH", requires = "tls")]
    ca_file: Option<std::path::PathBuf>,
    /// MQTT QoS of publishes and subscriptions (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// MQTT keep alive in seconds sent in CONNECT (0: none). The bench sends no PINGREQ:
    /// for a broker that refuses 0, give more than 1.5 times nothing is published for.
    #[arg(long, default_value_t = 0)]
    keep_alive: u16,
    /// Open this many idle MQTT connections, each with one subscription, and report the
    /// connect rate and (with --broker-pid) the broker's RSS per connection.
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long, default_value = "guest")]
    user: String,
    #[arg(long, default_value = "guest")]
    password: String,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Body size in bytes (at least 16: the body carries a stamp).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seconds to publish for (at most 600).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop publishing after this many messages in all (besides --duration).
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per second per publisher (for latency at a fixed rate).
    #[arg(long)]
    rate: Option<u64>,
    /// Messages per second per consumer: a deliberately slow consumer, to show flow control.
    #[arg(long)]
    consumer_rate: Option<u64>,
    /// Acknowledge manually with this prefetch: AMQP one multiple-ack per read, STOMP
    /// client-individual with prefetch-count.
    #[arg(long)]
    manual_ack: Option<u16>,
    /// Deliveries published but not yet consumed before publishers pause (0: no bound).
    #[arg(long, default_value_t = 100_000)]
    max_in_flight: u64,
    /// At most this many seconds for consumers to take the rest once publishing stops (the
    /// drain also ends once nothing arrives for 3 s).
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// The queue (or name stem) used.
    #[arg(long, default_value = "switchboard-bench")]
    queue: String,
    /// Persistent messages (AMQP delivery mode 2 to a durable queue, STOMP persistent:true;
    /// MQTT: sessions the broker keeps).
    #[arg(long)]
    persistent: bool,
    /// At most this many unconfirmed messages per publisher: AMQP publisher confirms, STOMP
    /// a receipt for every SEND, MQTT QoS 1/2 in flight (default 1000 there).
    #[arg(long, alias = "receipts")]
    confirm: Option<u32>,
    /// The broker's pid: report its CPU seconds per million messages and peak RSS. Given
    /// once per node of a cluster, CPU seconds are summed and each node's RSS is reported.
    #[arg(long)]
    broker_pid: Vec<u32>,
    /// An argument of the `amqp` scenario's queue declare, KEY=VALUE (repeatable): integers
    /// are sent as long integers, `true`/`false` as booleans, anything else as a string; e.g.
    /// `--queue-arg x-queue-type=quorum --persistent`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_queue_arg)]
    queue_arg: Vec<(String, FieldValue)>,
    /// Kill this process (a broker node) with SIGKILL --kill-after seconds into publishing,
    /// and report the time from the kill to the first confirm of a message published after
    /// it (with --confirm).
    #[arg(long, requires = "confirm")]
    kill_pid: Option<u32>,
    /// Seconds of publishing before --kill-pid is killed.
    #[arg(long, default_value_t = 5.0, requires = "kill_pid")]
    kill_after: f64,
    /// Durable queues `declare` makes and deletes.
    #[arg(long, default_value_t = 10_000)]
    queues: u64,
    /// Connections (one channel each, one declare in flight on each) `declare` uses.
    #[arg(long, default_value_t = 16)]
    channels: usize,
    /// Print one JSON object with every figure instead of the table.
    #[arg(long)]
    json: bool,
    /// Print the progress line every second even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
}

impl BenchArgs {
    /// The messaging scenario to run (None for `declare`, which is not one).
    pub fn scenario(&self) -> Option<Scenario> {
        Some(match self.scenario {
            ScenarioName::Amqp => Scenario::Amqp,
            ScenarioName::AmqpFanout => Scenario::AmqpFanout,
            ScenarioName::Stomp => Scenario::Stomp,
            ScenarioName::Mqtt => Scenario::Mqtt,
            ScenarioName::Cross => Scenario::Cross {
                from: self.from.into(),
                to: self.to.into(),
            },
            ScenarioName::Declare => return None,
        })
    }

    pub fn options(&self) -> Result<Options, super::transport::TlsSetupError> {
        let tls = match (&self.ca_file, self.tls) {
            (Some(path), true) => Some(super::transport::BenchTls::from_ca_file(path)?),
            _ => None,
        };
        let mut o = Options {
            amqp_addr: self.amqp_addr,
            stomp_addr: self.stomp_addr,
            mqtt_addr: self.mqtt_addr,
            mqtt_version: match self.mqtt_version {
                MqttVersion::V311 => switchboard_mqtt::Protocol::V311,
                MqttVersion::V5 => switchboard_mqtt::Protocol::V5,
            },
            mqtt_ws: self.ws,
            tls,
            qos: switchboard_mqtt::QoS::from_u8(self.qos).unwrap_or_default(),
            mqtt_keep_alive: self.keep_alive,
            user: self.user.clone(),
            password: self.password.clone(),
            publishers: self.publishers,
            consumers: self.consumers,
            size: self.size,
            duration: Duration::from_secs(self.duration.min(MAX_DURATION_SECS)),
            messages: self.messages,
            rate: self.rate,
            consumer_rate: self.consumer_rate,
            max_in_flight: if self.max_in_flight == 0 {
                u64::MAX
            } else {
                self.max_in_flight
            },
            drain_timeout: Duration::from_secs(self.drain_timeout.min(MAX_DURATION_SECS)),
            manual_ack: self.manual_ack,
            persistent: self.persistent,
            confirm_window: self.confirm,
            queue: self.queue.clone(),
            queue_args: self.queue_arg.iter().cloned().collect(),
            broker_pids: self.broker_pid.clone(),
            kill: self.kill_pid.map(|pid| super::Kill {
                pid,
                after: Duration::from_secs_f64(
                    self.kill_after.clamp(0.0, MAX_DURATION_SECS as f64),
                ),
            }),
            progress: self.progress,
        };
        if let Some(addr) = self.addr {
            match self.scenario {
                ScenarioName::Amqp | ScenarioName::AmqpFanout | ScenarioName::Declare => {
                    o.amqp_addr = addr
                }
                ScenarioName::Stomp => o.stomp_addr = addr,
                ScenarioName::Mqtt => o.mqtt_addr = addr,
                // Two protocols: --addr means the publishing side.
                ScenarioName::Cross => match self.from {
                    ProtocolName::Amqp => o.amqp_addr = addr,
                    ProtocolName::Stomp => o.stomp_addr = addr,
                    ProtocolName::Mqtt => o.mqtt_addr = addr,
                },
            }
        }
        Ok(o)
    }
}

/// `KEY=VALUE` of `--queue-arg`: a long integer, a boolean, or else a string.
fn parse_queue_arg(s: &str) -> Result<(String, FieldValue), String> {
    let (key, value) = s
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))?;
    let value = if let Ok(n) = value.parse::<i64>() {
        FieldValue::I64(n)
    } else if let Ok(b) = value.parse::<bool>() {
        FieldValue::Bool(b)
    } else {
        FieldValue::string(value)
    };
    Ok((key.to_owned(), value))
}

/// Runs the command: the report goes to stdout, as a table or as JSON.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let options = args.options()?;
    let Some(scenario) = args.scenario() else {
        let report = runtime.block_on(super::declare::run(&options, args.queues, args.channels))?;
        if args.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.render());
        }
        return Ok(());
    };
    let report = match args.connections {
        Some(n) => runtime.block_on(super::connections::run(&options, n))?,
        None => runtime.block_on(run(scenario, &options))?,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_queue_arg, FieldValue};

    #[test]
    fn queue_args_are_typed_by_their_text() {
        assert_eq!(
            parse_queue_arg("x-queue-type=quorum").unwrap(),
            ("x-queue-type".into(), FieldValue::string("quorum"))
        );
        assert_eq!(
            parse_queue_arg("x-max-length=10").unwrap().1,
            FieldValue::I64(10)
        );
        assert_eq!(
            parse_queue_arg("x-single-active-consumer=true").unwrap().1,
            FieldValue::Bool(true)
        );
        assert_eq!(
            parse_queue_arg("x-note=a=b").unwrap().1,
            FieldValue::string("a=b")
        );
        assert!(parse_queue_arg("novalue").is_err());
        assert!(parse_queue_arg("=1").is_err());
    }
}
