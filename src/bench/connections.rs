//! `--connections N`: N idle MQTT connections, each with one subscription, opened as fast as
//! the broker accepts them; reports the connect rate and the broker's RSS per connection.

use super::mqtt;
use super::procfs;
use super::report::{ConnectionsReport, Report};
use super::run::BrokerProbe;
use super::{BenchError, Options};
use std::time::{Duration, Instant};
use switchboard_mqtt::QoS;
use tokio::task::JoinSet;

/// Connection handshakes in progress at once. Measured on the 2-core box against a release
/// broker: 4 → 2.9k/s, 16 → 4.2k/s, 64 → 4.8k/s, 256 → 1.6-1.9k/s (the kernel counted listen
/// queue overflows, so SYNs were dropped and retried a second later).
const PARALLEL: usize = 64;
/// Time the broker gets after the last SUBACK before its RSS is read, so memory it frees or
/// grows lazily right after the handshake is counted as it settles.
const SETTLE: Duration = Duration::from_millis(500);

/// Raises this process's open-file limit to its hard limit: each connection is a descriptor.
fn raise_fd_limit() {
    if !crate::sys::raise_open_file_limit() {
        tracing::warn!("could not raise the open-file limit to its hard limit");
    }
}

pub async fn run(o: &Options, n: usize) -> Result<Report, BenchError> {
    raise_fd_limit();
    let tag: u16 = rand::random();
    // Per connection is the first broker process's growth (one node takes them all).
    let pid = o.broker_pids.first().copied();
    let rss_before = pid.and_then(procfs::rss_bytes);
    let mut probe = BrokerProbe::start(&o.broker_pids);
    let started = Instant::now();
    let mut pending = JoinSet::new();
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        if pending.len() >= PARALLEL {
            if let Some(done) = pending.join_next().await {
                open.push(done.map_err(|e| BenchError::Task(e.to_string()))??);
            }
        }
        let o = o.clone();
        pending.spawn(async move {
            let (mut rd, mut wr) = mqtt::connect(&o, format!("sb-idle-{tag:04x}-{i}")).await?;
            let filter = format!("{}/idle/{i}", o.queue);
            mqtt::subscribe(&mut rd, &mut wr, &filter, QoS::AtMostOnce).await?;
            Ok::<_, BenchError>((rd, wr))
        });
    }
    while let Some(done) = pending.join_next().await {
        open.push(done.map_err(|e| BenchError::Task(e.to_string()))??);
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    probe.sample();
    let rss_after = pid.and_then(procfs::rss_bytes);
    let usage = probe.finish();
    drop(open);
    let report = ConnectionsReport {
        opened: n as u64,
        seconds,
        per_second: n as f64 / seconds.max(1e-9),
        rss_bytes_per_connection: rss_before
            .zip(rss_after)
            .map(|(a, b)| (b as f64 - a as f64) / n.max(1) as f64),
    };
    Ok(Report::of_connections(report, usage))
}
