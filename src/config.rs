//! The TOML configuration: its schema, the embedded default and environment overrides.
//!
//! Unknown keys and values of the wrong type are errors that name the key and its line.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The default configuration, identical to `config/switchboard.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/switchboard.toml");

/// Prefix of environment variables that override configuration values.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Sections that `SWITCHBOARD_<SECTION>_<KEY>` can reach. Other `SWITCHBOARD_*` variables (such
/// as `SWITCHBOARD_LOG`, or a test harness's `SWITCHBOARD_BIN`) are not configuration.
const ENV_SECTIONS: &[&str] = &[
    "server",
    "store",
    "amqp",
    "mqtt",
    "stomp",
    "http",
    "prometheus",
    "tls",
    "cluster",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration{origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Every key has a default, and it is the value the embedded default file gives it: leaving a
/// key (or a whole section, or `[[users]]`/`[[vhosts]]`) out of a file means the same as the
/// embedded default (a test compares the two key by key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub amqp: AmqpConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub stomp: StompConfig,
    #[serde(default)]
    pub http: ListenerConfig,
    /// The Prometheus scrape listener (`/metrics`, `/metrics/per-object`).
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    /// Certificates for every `tls_listen` (and `wss_listen`) address.
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_users")]
    pub users: Vec<UserConfig>,
    #[serde(default = "default_vhosts")]
    pub vhosts: Vec<VHostConfig>,
    /// Queue arguments applied by name pattern, as RabbitMQ policies (see `core::policy`).
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Cluster membership and the inter-node listener (`src/cluster`); off by default.
    #[serde(default)]
    pub cluster: crate::cluster::ClusterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_watermark")]
    pub memory_high_watermark: f64,
    #[serde(default)]
    pub memory_high_watermark_bytes: Option<u64>,
    #[serde(default = "default_loopback_users")]
    pub loopback_users: Vec<String>,
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// Publishers are blocked while the data directory's disk has less free space than this
    /// (0 = never).
    #[serde(default = "default_disk_free_limit")]
    pub disk_free_limit_bytes: u64,
    /// Most words (`.`-separated) in a binding key of a topic exchange and in a routing key
    /// published to one; longer ones are refused, so that matching stays cheap.
    #[serde(default = "default_topic_max_words")]
    pub topic_max_words: usize,
    /// Most connections open at once over all listeners (HTTP included); 0 = the file
    /// descriptor limit less a reserve. Connections past it are closed as they are accepted.
    #[serde(default)]
    pub max_connections: usize,
    /// Most connections open at once from one source address (0 = no limit of its own).
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: default_data_dir(),
            memory_high_watermark: default_watermark(),
            memory_high_watermark_bytes: None,
            loopback_users: default_loopback_users(),
            shutdown_grace_seconds: default_grace(),
            disk_free_limit_bytes: default_disk_free_limit(),
            topic_max_words: default_topic_max_words(),
            max_connections: 0,
            max_connections_per_address: default_max_connections_per_address(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// The message store (`src/store`): what a confirm promises, and segment size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `always`: a confirm for a persistent message is sent only after its record is fsync'd.
    /// `never`: after it is written to the OS (survives a broker crash, not a power cut).
    #[serde(default)]
    pub fsync: crate::store::FsyncPolicy,
    /// A log segment is closed and a new one started past this size, in bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Past this many bytes of ready message bodies in memory, a durable queue keeps further
    /// persistent messages only as positions in the log and reads them back when delivering.
    #[serde(default = "default_queue_memory_bytes")]
    pub queue_memory_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: Default::default(),
            segment_bytes: default_segment_bytes(),
            queue_memory_bytes: default_queue_memory_bytes(),
        }
    }
}

fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_queue_memory_bytes() -> u64 {
    128 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    #[serde(default = "default_amqp_listen")]
    pub listen: Vec<SocketAddr>,
    /// AMQP over TLS (amqps, 5671 by convention); needs `[tls]`.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat: u16,
    #[serde(default = "default_frame_max")]
    pub frame_max: u32,
    #[serde(default = "default_channel_max")]
    pub channel_max: u16,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            listen: default_amqp_listen(),
            tls_listen: Vec::new(),
            heartbeat: default_heartbeat(),
            frame_max: default_frame_max(),
            channel_max: default_channel_max(),
            max_message_size: default_max_message_size(),
        }
    }
}

/// `0.0.0.0:PORT`, a listener's default address.
fn any_address(port: u16) -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], port))]
}
fn default_amqp_listen() -> Vec<SocketAddr> {
    any_address(5672)
}
fn default_mqtt_listen() -> Vec<SocketAddr> {
    any_address(1883)
}
fn default_stomp_listen() -> Vec<SocketAddr> {
    any_address(61613)
}
fn default_mqtt_ws_listen() -> Vec<SocketAddr> {
    any_address(15675)
}
fn default_stomp_ws_listen() -> Vec<SocketAddr> {
    any_address(15674)
}
fn default_http_listen() -> Vec<SocketAddr> {
    any_address(15672)
}

/// For keys whose "off" is "no value": TOML has no null, so an empty string turns them off.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then_some(s))
}

/// The MQTT listener and its limits (the MQTT adapter's settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default = "default_mqtt_listen")]
    pub listen: Vec<SocketAddr>,
    /// MQTT over TLS (mqtts, 8883 by convention); needs `[tls]`.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// MQTT over WebSocket at `/ws` (RabbitMQ's Web MQTT, 15675).
    #[serde(default = "default_mqtt_ws_listen")]
    pub ws_listen: Vec<SocketAddr>,
    /// MQTT over WebSocket over TLS; needs `[tls]`.
    #[serde(default)]
    pub wss_listen: Vec<SocketAddr>,
    /// A TLS client whose CONNECT has no user name logs in as its certificate's common name.
    #[serde(default)]
    pub ssl_cert_login: bool,
    /// Vhost for user names without a `vhost:` prefix.
    #[serde(default = "default_mqtt_vhost")]
    pub default_vhost: String,
    /// Exchange MQTT publishes go to and subscriptions bind to.
    #[serde(default = "default_mqtt_exchange")]
    pub exchange: String,
    /// User that connections without a user name act as; `""` refuses them.
    #[serde(
        default = "default_mqtt_anonymous_user",
        deserialize_with = "empty_is_none"
    )]
    pub anonymous_user: Option<String>,
    /// Anonymous connections only from loopback (like `guest`), unless false.
    #[serde(default = "default_true")]
    pub anonymous_loopback_only: bool,
    /// Largest packet accepted after CONNECT (bytes); larger ones get DISCONNECT 0x95 (v5) or
    /// a closed connection (v3).
    #[serde(default = "default_mqtt_max_packet_size")]
    pub max_packet_size: u32,
    /// Largest CONNECT accepted before the client has authenticated (bytes).
    #[serde(default = "default_mqtt_max_connect_size")]
    pub max_connect_size: u32,
    /// QoS 1/2 messages sent to a client and not yet acknowledged, at most (v3, and the cap on
    /// a v5 client's Receive Maximum).
    #[serde(default = "default_mqtt_max_inflight")]
    pub max_inflight: u16,
    /// Receive Maximum the broker announces to v5 clients: inbound QoS 2 messages awaiting
    /// PUBREL, at most.
    #[serde(default = "default_mqtt_receive_maximum")]
    pub receive_maximum: u16,
    /// Messages a persistent session keeps while its client is offline; beyond it the oldest
    /// are dropped (and counted).
    #[serde(default = "default_mqtt_max_offline_messages")]
    pub max_offline_messages: usize,
    /// Publisher flow control: a QoS 1/2 publisher is not read while a queue it published to
    /// holds more than this many ready messages and has a consumer, until it is down to half
    /// (0 = off). Bounds the backlog, and so the delivery latency, of a saturating publisher.
    #[serde(default = "default_mqtt_flow_backlog")]
    pub flow_backlog: usize,
    /// Retained messages kept over all vhosts, at most (0 = no limit of its own); a retained
    /// publish for a new topic beyond it is refused.
    #[serde(default = "default_mqtt_retained_max_messages")]
    pub retained_max_messages: usize,
    /// Bytes retained messages may hold over all vhosts (0 = no limit of its own).
    #[serde(default = "default_mqtt_retained_max_bytes")]
    pub retained_max_bytes: usize,
    /// Longest session expiry interval granted (seconds); also the lifetime of a v3
    /// persistent session after its client disconnects.
    #[serde(default = "default_mqtt_max_session_expiry")]
    pub max_session_expiry_interval: u32,
    /// Longest topic name or filter (bytes).
    #[serde(default = "default_mqtt_max_topic_length")]
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    #[serde(default = "default_mqtt_max_topic_levels")]
    pub max_topic_levels: usize,
    /// Topic aliases a v5 client may set up (Topic Alias Maximum in CONNACK).
    #[serde(default = "default_mqtt_topic_alias_maximum")]
    pub topic_alias_maximum: u16,
    /// Keep alive the broker imposes on v5 clients (Server Keep Alive), 0 = accept the
    /// client's.
    #[serde(default)]
    pub server_keep_alive: u16,
    /// Longest keep alive granted to a v5 client (seconds); one asking for longer, or for
    /// none, is told this one in Server Keep Alive. 0 = no cap.
    #[serde(default)]
    pub max_keep_alive: u16,
    /// What an MQTT 5 client refused for want of permission is told (see [`RefusalReason`]).
    #[serde(default)]
    pub refusal_reason: RefusalReason,
}

/// The MQTT 5 reason code for a refusal for want of permission (SUBACK, PUBACK/PUBREC,
/// DISCONNECT, CONNACK). MQTT 3.1.1 answers are not affected: their only SUBACK failure code
/// is 0x80 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalReason {
    /// 0x87 Not authorized, as RabbitMQ and Mosquitto answer.
    #[default]
    Specific,
    /// 0x80 Unspecified error, without a Reason String: legal wherever 0x87 is, and it does
    /// not tell the client why it was refused.
    Unspecified,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: default_mqtt_listen(),
            tls_listen: Vec::new(),
            ws_listen: default_mqtt_ws_listen(),
            wss_listen: Vec::new(),
            ssl_cert_login: false,
            default_vhost: default_mqtt_vhost(),
            exchange: default_mqtt_exchange(),
            anonymous_user: default_mqtt_anonymous_user(),
            anonymous_loopback_only: true,
            max_packet_size: default_mqtt_max_packet_size(),
            max_connect_size: default_mqtt_max_connect_size(),
            max_inflight: default_mqtt_max_inflight(),
            receive_maximum: default_mqtt_receive_maximum(),
            max_offline_messages: default_mqtt_max_offline_messages(),
            flow_backlog: default_mqtt_flow_backlog(),
            retained_max_messages: default_mqtt_retained_max_messages(),
            retained_max_bytes: default_mqtt_retained_max_bytes(),
            max_session_expiry_interval: default_mqtt_max_session_expiry(),
            max_topic_length: default_mqtt_max_topic_length(),
            max_topic_levels: default_mqtt_max_topic_levels(),
            topic_alias_maximum: default_mqtt_topic_alias_maximum(),
            server_keep_alive: 0,
            max_keep_alive: 0,
            refusal_reason: RefusalReason::Specific,
        }
    }
}

fn default_mqtt_vhost() -> String {
    "/".into()
}
fn default_mqtt_exchange() -> String {
    "amq.topic".into()
}
fn default_mqtt_anonymous_user() -> Option<String> {
    Some("guest".into())
}
fn default_true() -> bool {
    true
}
fn default_mqtt_max_packet_size() -> u32 {
    16 * 1024 * 1024
}
fn default_mqtt_max_connect_size() -> u32 {
    64 * 1024
}
fn default_mqtt_max_inflight() -> u16 {
    32
}
fn default_mqtt_receive_maximum() -> u16 {
    128
}
fn default_mqtt_max_offline_messages() -> usize {
    1000
}
fn default_mqtt_flow_backlog() -> usize {
    500
}
fn default_mqtt_retained_max_messages() -> usize {
    100_000
}
fn default_mqtt_retained_max_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_mqtt_max_session_expiry() -> u32 {
    86_400
}
fn default_mqtt_max_topic_length() -> usize {
    4096
}
fn default_mqtt_max_topic_levels() -> usize {
    128
}
fn default_mqtt_topic_alias_maximum() -> u16 {
    16
}

/// The STOMP listener and its limits (the STOMP adapter's settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompConfig {
    #[serde(default = "default_stomp_listen")]
    pub listen: Vec<SocketAddr>,
    /// STOMP over TLS (61614 by convention); needs `[tls]`.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// STOMP over WebSocket at `/ws` (RabbitMQ's Web STOMP, 15674).
    #[serde(default = "default_stomp_ws_listen")]
    pub ws_listen: Vec<SocketAddr>,
    /// STOMP over WebSocket over TLS; needs `[tls]`.
    #[serde(default)]
    pub wss_listen: Vec<SocketAddr>,
    /// A TLS client whose CONNECT has no `login` logs in as its certificate's common name.
    #[serde(default)]
    pub ssl_cert_login: bool,
    /// The vhost for a CONNECT whose `host` names no vhost (most clients send the server's
    /// hostname there), as ActiveMQ does.
    #[serde(default = "default_stomp_vhost")]
    pub default_vhost: String,
    /// Login used for a CONNECT without `login` (as RabbitMQ's `stomp.default_user`); `""` =
    /// such connections are refused.
    #[serde(default = "default_stomp_login", deserialize_with = "empty_is_none")]
    pub default_login: Option<String>,
    /// Its passcode; `""` = none is checked (the login is trusted, as for a loopback guest).
    #[serde(default = "default_stomp_login", deserialize_with = "empty_is_none")]
    pub default_passcode: Option<String>,
    /// Whether the default login applies only to connections from loopback.
    #[serde(default = "default_true")]
    pub default_login_loopback_only: bool,
    /// Heart-beat interval the server asks the client to send at, and offers to send at, in
    /// milliseconds (0 = no heart-beats either way).
    #[serde(default = "default_stomp_heartbeat_ms")]
    pub heartbeat_ms: u32,
    /// The server sends heart-beats at the interval the client asks for, but never more often
    /// than this (milliseconds).
    #[serde(default = "default_stomp_heartbeat_min_ms")]
    pub heartbeat_min_ms: u32,
    /// Largest frame (command, headers and body), in bytes.
    #[serde(default = "default_stomp_max_frame_size")]
    pub max_frame_size: usize,
    /// Largest body, in bytes.
    #[serde(default = "default_stomp_max_body_size")]
    pub max_body_size: usize,
    /// Most headers in one frame.
    #[serde(default = "default_stomp_max_headers")]
    pub max_headers: usize,
    /// Longest header line, in bytes.
    #[serde(default = "default_stomp_max_header_line")]
    pub max_header_line: usize,
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            listen: default_stomp_listen(),
            tls_listen: Vec::new(),
            ws_listen: default_stomp_ws_listen(),
            wss_listen: Vec::new(),
            ssl_cert_login: false,
            default_vhost: default_stomp_vhost(),
            default_login: default_stomp_login(),
            default_passcode: default_stomp_login(),
            default_login_loopback_only: true,
            heartbeat_ms: default_stomp_heartbeat_ms(),
            heartbeat_min_ms: default_stomp_heartbeat_min_ms(),
            max_frame_size: default_stomp_max_frame_size(),
            max_body_size: default_stomp_max_body_size(),
            max_headers: default_stomp_max_headers(),
            max_header_line: default_stomp_max_header_line(),
        }
    }
}

fn default_stomp_vhost() -> String {
    "/".into()
}
/// guest, as RabbitMQ's `stomp.default_user` / `default_pass`.
fn default_stomp_login() -> Option<String> {
    Some("guest".into())
}
fn default_stomp_heartbeat_ms() -> u32 {
    10_000
}
fn default_stomp_heartbeat_min_ms() -> u32 {
    100
}
// The codec's own defaults, so that the two cannot drift apart.
fn default_stomp_max_frame_size() -> usize {
    switchboard_stomp::Limits::default().max_frame_size
}
fn default_stomp_max_body_size() -> usize {
    switchboard_stomp::Limits::default().max_body_size
}
fn default_stomp_max_headers() -> usize {
    switchboard_stomp::Limits::default().max_headers
}
fn default_stomp_max_header_line() -> usize {
    switchboard_stomp::Limits::default().max_header_line
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(default = "default_http_listen")]
    pub listen: Vec<SocketAddr>,
    /// HTTPS; needs `[tls]`.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// An HTTP connection that has not sent a whole request head this long after it opened or
    /// after its last response is closed (idle and slow-header connections alike), as RabbitMQ
    /// closes idle management connections after 5 s.
    #[serde(default = "default_http_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How often message counters are sampled into rates (RabbitMQ's
    /// `collect_statistics_interval`); 0 = never (counts are still reported, rates are 0).
    #[serde(default = "default_stats_interval_ms")]
    pub stats_interval_ms: u64,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            listen: default_http_listen(),
            tls_listen: Vec::new(),
            idle_timeout_ms: default_http_idle_timeout_ms(),
            stats_interval_ms: default_stats_interval_ms(),
        }
    }
}

fn default_stats_interval_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    #[serde(default = "default_prometheus_listen")]
    pub listen: Vec<SocketAddr>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            listen: default_prometheus_listen(),
        }
    }
}

/// RabbitMQ's `rabbitmq_prometheus` port.
fn default_prometheus_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 15692))]
}

fn default_http_idle_timeout_ms() -> u64 {
    5_000
}

/// The server's certificate and the client certificates it accepts, as RabbitMQ's
/// `ssl_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own certificate first.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// PEM certificates of the authorities client certificates are verified against.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against `ca_file`.
    #[serde(default)]
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that send no certificate.
    #[serde(default)]
    pub fail_if_no_peer_cert: bool,
    /// TLS versions offered, of `tlsv1.2` and `tlsv1.3` (empty: both); the lowest is the floor.
    #[serde(default)]
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VHostConfig {
    pub name: String,
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    /// A regular expression matched against queue names (unanchored, as in RabbitMQ).
    pub pattern: String,
    /// "queues", "exchanges" or "all".
    #[serde(default = "default_apply_to")]
    pub apply_to: String,
    /// Among matching policies the highest priority applies.
    #[serde(default)]
    pub priority: i32,
    /// The vhost it applies in; every vhost when unset.
    #[serde(default)]
    pub vhost: Option<String>,
    /// Queue arguments without their `x-` prefix: `message-ttl`, `expires`,
    /// `dead-letter-exchange`, `dead-letter-routing-key`, `max-length`, `max-length-bytes`,
    /// `overflow`, `max-priority`, `single-active-consumer`.
    #[serde(default)]
    pub definition: toml::Table,
}

fn default_users() -> Vec<UserConfig> {
    vec![UserConfig {
        name: "guest".into(),
        password: "guest".into(),
        tags: vec!["administrator".into()],
    }]
}
fn default_vhosts() -> Vec<VHostConfig> {
    vec![VHostConfig { name: "/".into() }]
}

fn default_apply_to() -> String {
    "all".into()
}

fn default_watermark() -> f64 {
    0.4
}
fn default_loopback_users() -> Vec<String> {
    vec!["guest".into()]
}
fn default_max_connections_per_address() -> usize {
    16_384
}
fn default_topic_max_words() -> usize {
    crate::core::topic::DEFAULT_MAX_WORDS
}
fn default_grace() -> u64 {
    5
}
fn default_disk_free_limit() -> u64 {
    // RabbitMQ's default.
    50_000_000
}
fn default_heartbeat() -> u16 {
    60
}
fn default_frame_max() -> u32 {
    131_072
}
fn default_channel_max() -> u16 {
    2047
}
fn default_max_message_size() -> u64 {
    128 * 1024 * 1024
}

impl Config {
    /// The embedded default with environment overrides applied.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                format!(" in {}", p.display()),
            ),
            None => (DEFAULT_CONFIG.to_owned(), " (embedded default)".to_owned()),
        };
        Self::parse_with_env(&text, &origin, std::env::vars())
    }

    /// Parses `text` (no environment overrides).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, "", std::iter::empty())
    }

    fn parse_with_env(
        text: &str,
        origin: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |source| ConfigError::Parse {
            origin: origin.to_owned(),
            source: Box::new(source),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let mut overridden = false;
        for (var, value) in env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                overridden |= apply_env_override(&mut table, &var, rest, &value)?;
            }
        }
        let config: Config = if overridden {
            // Re-serialise so that errors still name the key (line numbers then refer to the
            // merged document).
            let merged = toml::to_string(&table).map_err(|e| ConfigError::Env {
                var: "SWITCHBOARD_*".into(),
                reason: e.to_string(),
            })?;
            toml::from_str(&merged).map_err(parse_err)?
        } else {
            toml::from_str(text).map_err(parse_err)?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.amqp.frame_max != 0 && self.amqp.frame_max < switchboard_amqp::FRAME_MIN_SIZE {
            return Err(ConfigError::Invalid {
                key: "amqp.frame_max",
                reason: format!("must be at least {}", switchboard_amqp::FRAME_MIN_SIZE),
            });
        }
        if !(0.0..=1.0).contains(&self.server.memory_high_watermark) {
            return Err(ConfigError::Invalid {
                key: "server.memory_high_watermark",
                reason: "must be a fraction between 0 and 1".into(),
            });
        }
        if let Err(e) = crate::core::policy::Policies::from_config(&self.policies) {
            return Err(ConfigError::Invalid {
                key: "policies",
                reason: e.to_string(),
            });
        }
        let stomp = &self.stomp;
        for (key, value) in [
            ("stomp.max_frame_size", stomp.max_frame_size),
            ("stomp.max_body_size", stomp.max_body_size),
            ("stomp.max_headers", stomp.max_headers),
            ("stomp.max_header_line", stomp.max_header_line),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if let Err(e) = self.cluster.validate() {
            return Err(ConfigError::Invalid {
                key: "cluster",
                reason: e.to_string(),
            });
        }
        if self.vhosts.is_empty() {
            return Err(ConfigError::Invalid {
                key: "vhosts",
                reason: "at least one vhost is needed".into(),
            });
        }
        Ok(())
    }

    /// The memory high watermark in bytes (0 = no limit).
    pub fn memory_high_watermark_bytes(&self) -> usize {
        if let Some(b) = self.server.memory_high_watermark_bytes {
            return usize::try_from(b).unwrap_or(usize::MAX);
        }
        let total = total_memory_bytes().unwrap_or(0);
        (total as f64 * self.server.memory_high_watermark) as usize
    }
}

/// `SERVER_DATA_DIR=x` sets `server.data_dir = x`. The value is read as a TOML value when it
/// parses as one (numbers, booleans, arrays), else as a string. Returns whether it applied.
fn apply_env_override(
    table: &mut toml::Table,
    var: &str,
    rest: &str,
    value: &str,
) -> Result<bool, ConfigError> {
    let lower = rest.to_ascii_lowercase();
    let Some((section, key)) = lower
        .split_once('_')
        .filter(|(section, _)| ENV_SECTIONS.contains(section))
    else {
        return Ok(false);
    };
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let section_table = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = section_table else {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            reason: format!("[{section}] is not a table"),
        });
    };
    section_table.insert(key.to_owned(), parsed);
    Ok(true)
}

/// Total physical memory, from /proc/meminfo.
fn total_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_matches_design_defaults() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.amqp.listen, vec!["0.0.0.0:5672".parse().unwrap()]);
        assert_eq!(c.mqtt.listen, vec!["0.0.0.0:1883".parse().unwrap()]);
        assert_eq!(c.stomp.listen, vec!["0.0.0.0:61613".parse().unwrap()]);
        assert_eq!(c.http.listen, vec!["0.0.0.0:15672".parse().unwrap()]);
        assert_eq!(c.mqtt.ws_listen, vec!["0.0.0.0:15675".parse().unwrap()]);
        assert_eq!(c.stomp.ws_listen, vec!["0.0.0.0:15674".parse().unwrap()]);
        assert!(c.mqtt.wss_listen.is_empty() && c.stomp.wss_listen.is_empty());
        assert_eq!(c.server.data_dir, PathBuf::from("data"));
        assert_eq!(c.users[0].name, "guest");
        assert_eq!(c.vhosts[0].name, "/");
        assert_eq!(c.stomp.default_vhost, "/");
        assert_eq!(c.stomp.default_login.as_deref(), Some("guest"));
        assert!(c.stomp.default_login_loopback_only);
        assert_eq!(c.stomp.heartbeat_ms, 10_000);
        let limits = switchboard_stomp::Limits::default();
        assert_eq!(c.stomp.max_frame_size, limits.max_frame_size);
        assert_eq!(c.stomp.max_body_size, limits.max_body_size);
        assert_eq!(c.stomp.max_headers, limits.max_headers);
        assert_eq!(c.stomp.max_header_line, limits.max_header_line);
    }

    /// Every value, in a form that compares all of them (Config holds no secrets worth hiding
    /// from a test's failure message).
    fn every_value(c: &Config) -> String {
        format!("{c:#?}")
    }

    #[test]
    fn an_empty_file_means_the_embedded_default() {
        let embedded = Config::parse(DEFAULT_CONFIG).unwrap();
        let empty = Config::parse("").unwrap();
        assert_eq!(every_value(&empty), every_value(&embedded));
    }

    #[test]
    fn every_key_left_out_defaults_to_its_embedded_value() {
        let embedded: toml::Table = toml::from_str(DEFAULT_CONFIG).unwrap();
        let want = every_value(&Config::parse(DEFAULT_CONFIG).unwrap());
        let mut checked = 0;
        for (name, value) in &embedded {
            // The whole section (or array of tables) left out...
            let mut without = embedded.clone();
            without.remove(name);
            let got = Config::parse(&toml::to_string(&without).unwrap()).unwrap();
            assert_eq!(every_value(&got), want, "without {name}");
            checked += 1;
            // ...and each of its keys on its own.
            if let toml::Value::Table(section) = value {
                for key in section.keys() {
                    let mut without = embedded.clone();
                    if let Some(toml::Value::Table(s)) = without.get_mut(name) {
                        s.remove(key);
                    }
                    let got = Config::parse(&toml::to_string(&without).unwrap()).unwrap();
                    assert_eq!(every_value(&got), want, "without {name}.{key}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 50, "only {checked} keys checked");
    }

    #[test]
    fn an_empty_string_turns_default_logins_off() {
        let text = DEFAULT_CONFIG
            .replace("default_login = \"guest\"", "default_login = \"\"")
            .replace("anonymous_user = \"guest\"", "anonymous_user = \"\"");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.stomp.default_login, None);
        assert_eq!(c.mqtt.anonymous_user, None);
        assert_eq!(c.stomp.default_passcode.as_deref(), Some("guest"));
    }

    #[test]
    fn the_example_file_is_the_embedded_default() {
        let file = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/switchboard.toml"
        ))
        .unwrap();
        assert_eq!(file, DEFAULT_CONFIG);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = DEFAULT_CONFIG.replace("[amqp]\n", "[amqp]\nlisten_on = 1\n");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let text = DEFAULT_CONFIG.replace("heartbeat = 60", "heartbeat = \"often\"");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("heartbeat"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let env = vec![
            (
                "SWITCHBOARD_SERVER_DATA_DIR".to_owned(),
                "/tmp/x".to_owned(),
            ),
            (
                "SWITCHBOARD_AMQP_LISTEN".to_owned(),
                "[\"127.0.0.1:0\"]".to_owned(),
            ),
            ("SWITCHBOARD_AMQP_FRAME_MAX".to_owned(), "8192".to_owned()),
            ("OTHER".to_owned(), "ignored".to_owned()),
            ("SWITCHBOARD_LOG".to_owned(), "debug".to_owned()),
            ("SWITCHBOARD_BIN".to_owned(), "/x".to_owned()),
        ];
        let c = Config::parse_with_env(DEFAULT_CONFIG, "", env.into_iter()).unwrap();
        assert_eq!(c.server.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.amqp.listen, vec!["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(c.amqp.frame_max, 8192);
    }

    #[test]
    fn env_override_with_bad_key_is_an_error() {
        let env = vec![("SWITCHBOARD_AMQP_NOPE".to_owned(), "1".to_owned())];
        let err = Config::parse_with_env(DEFAULT_CONFIG, "", env.into_iter())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn zero_stomp_limit_rejected() {
        let text = DEFAULT_CONFIG.replace("max_headers = 256", "max_headers = 0");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("stomp.max_headers"), "{err}");
    }

    #[test]
    fn small_frame_max_rejected() {
        let text = DEFAULT_CONFIG.replace("frame_max = 131072", "frame_max = 100");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("amqp.frame_max"), "{err}");
    }
}
