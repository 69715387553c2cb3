//! Test harness: a broker in-process on OS-chosen ports, and helpers for lapin clients.
#![allow(dead_code)]
// Test helpers fail the test that calls them by panicking, as the tests themselves do, and
// are `pub` for the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

pub mod amqp;
pub mod cluster;
pub mod cluster_procs;
pub mod fault_proxy;
pub mod history;
pub mod http;
pub mod in_memory;
pub mod mqtt;
pub mod netns;
pub mod process;
pub mod raw;
pub mod stomp;
pub mod tls;
pub mod tolerant;
pub mod websocket;
pub mod workload;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use switchboard::{Config, RunningBroker};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A fresh data directory for one test broker (brokers in one test binary must not share one).
pub fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("switchboard-test-{}-{n}", std::process::id()))
}

/// The test config: every listener on 127.0.0.1:0, a fresh temp data dir, two users, two vhosts.
use switchboard::core::clock::{Clock, ManualClock, SystemClock};

pub fn test_config_text() -> String {
    test_config_text_in(&fresh_data_dir())
}

/// The test config with its data in `dir` (to restart a broker on the same data).
pub fn test_config_text_in(dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
data_dir = "{}"
memory_high_watermark_bytes = 0
# Tests that want the disk alarm set their own limit; the others must not depend on the disk.
disk_free_limit_bytes = 0
[amqp]
listen = ["127.0.0.1:0"]
heartbeat = 60
[mqtt]
listen = ["127.0.0.1:0"]
ws_listen = ["127.0.0.1:0"]
[stomp]
listen = ["127.0.0.1:0"]
ws_listen = ["127.0.0.1:0"]
[http]
listen = ["127.0.0.1:0"]
[prometheus]
listen = ["127.0.0.1:0"]
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
[[users]]
name = "alice"
password = "secret"
tags = []
[[vhosts]]
name = "/"
[[vhosts]]
name = "other"
"#,
        dir.display()
    )
}

pub struct TestBroker {
    pub running: Option<RunningBroker>,
    pub amqp: SocketAddr,
    pub mqtt: SocketAddr,
    pub stomp: SocketAddr,
    pub http: SocketAddr,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts on the test config as changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::parse(&test_config_text()).expect("test config");
        tweak(&mut config);
        Self::start_config(config).await
    }

    /// Starts on the test config with its data in `dir`, as changed by `tweak`.
    pub async fn start_in(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::parse(&test_config_text_in(dir)).expect("test config");
        tweak(&mut config);
        Self::start_config(config).await
    }

    pub async fn start_config(config: Config) -> Self {
        let clock = std::sync::Arc::new(switchboard::core::clock::SystemClock);
        Self::start_config_with_clock(config, clock).await
    }

    /// Starts on the test config with its data in `dir`, the core reading time from `clock`.
    pub async fn start_in_with_clock(
        dir: &std::path::Path,
        clock: std::sync::Arc<dyn switchboard::core::clock::Clock>,
    ) -> Self {
        let config = Config::parse(&test_config_text_in(dir)).expect("test config");
        Self::start_config_with_clock(config, clock).await
    }

    /// Starts on the test config, on a fresh data directory, with a clock that only moves when
    /// the test moves it ([`TestBroker::advance`]).
    pub async fn start_on_manual_clock() -> (Self, std::sync::Arc<ManualClock>) {
        Self::start_with_on_manual_clock(|_| {}).await
    }

    /// [`TestBroker::start_on_manual_clock`] on the test config as changed by `tweak`.
    pub async fn start_with_on_manual_clock(
        tweak: impl FnOnce(&mut Config),
    ) -> (Self, std::sync::Arc<ManualClock>) {
        let mut config = Config::parse(&test_config_text()).expect("test config");
        tweak(&mut config);
        let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now_ms()));
        let b = Self::start_config_with_clock(config, clock.clone()).await;
        (b, clock)
    }

    /// Moves `clock` on by `ms` and runs what the broker's timer has due by then.
    pub fn advance(&self, clock: &ManualClock, ms: u64) {
        clock.advance(ms);
        self.broker().timer.fire_due();
    }

    pub async fn start_config_with_clock(
        config: Config,
        clock: std::sync::Arc<dyn switchboard::core::clock::Clock>,
    ) -> Self {
        let running = switchboard::net::start_with_clock(config, clock)
            .await
            .expect("broker starts");
        let amqp = running.addrs.amqp[0];
        let http = running.addrs.http[0];
        let mqtt = running.addrs.mqtt[0];
        let stomp = running.addrs.stomp[0];
        TestBroker {
            running: Some(running),
            amqp,
            mqtt,
            stomp,
            http,
        }
    }

    /// Every bound address (TLS listeners too).
    pub fn addrs(&self) -> &switchboard::net::BoundAddrs {
        &self.running.as_ref().expect("running").addrs
    }

    pub fn broker(&self) -> &std::sync::Arc<switchboard::core::Broker> {
        &self.running.as_ref().expect("running").broker
    }

    /// The users that the open connections have logged in as.
    pub fn logged_in_users(&self) -> Vec<String> {
        self.broker()
            .connections()
            .iter()
            .filter_map(|c| c.session.lock().ok().and_then(|s| s.clone()))
            .map(|(user, _)| user)
            .collect()
    }

    /// The MQTT adapter's state (sessions, retained messages) of this broker.
    pub fn mqtt_state(&self) -> std::sync::Arc<switchboard::adapter::mqtt::registry::MqttState> {
        self.running.as_ref().expect("running").mqtt.clone()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub async fn connect(&self) -> lapin::Connection {
        bounded(lapin::Connection::connect(
            &self.url(),
            lapin::ConnectionProperties::default(),
        ))
        .await
        .expect("connect")
    }

    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let c = self.connect().await;
        let ch = bounded(c.create_channel()).await.expect("channel");
        (c, ch)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.broker.begin_shutdown();
        }
    }
}

/// Awaits `f` for at most [`WAIT`], panicking on timeout.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("operation timed out")
}

/// Polls `cond` until true, or panics after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// As [`wait_until`], for a condition that has to do I/O to be checked.
pub async fn wait_until_async<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A unique name for a test's queue or exchange.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}
