//! Drives a run once its consumers are subscribed: starts the clock, watches the deadline and
//! the broker, prints progress, stops the publishers, drains, and collects every record.

use super::live::Live;
use super::procfs;
use super::record::Recorder;
use super::report::{BrokerUsage, ConfirmReport, FailoverReport, NodeUsage, Report, Tally};
use super::{BenchError, Options};
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running client task.
pub type Task<T> = JoinHandle<Result<T, BenchError>>;

/// How often the broker's memory is sampled and the stop conditions are checked.
const TICK: Duration = Duration::from_millis(100);
/// Consumers get this long to hand back their records once told to stop.
const COLLECT: Duration = Duration::from_secs(10);
/// The drain ends once consumers have received nothing for this long.
const STALLED: Duration = Duration::from_secs(3);

/// Told to consumers when a run ends; each returns its [`Recorder`].
pub struct StopConsumers {
    tx: watch::Sender<bool>,
}

impl StopConsumers {
    pub fn new() -> Self {
        StopConsumers {
            tx: watch::channel(false).0,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn stop(&self) {
        self.tx.send_replace(true);
    }
}

impl Default for StopConsumers {
    fn default() -> Self {
        Self::new()
    }
}

/// Samples the broker's CPU and memory over a run: one process, or every node of a cluster.
pub struct BrokerProbe {
    nodes: Vec<NodeProbe>,
}

struct NodeProbe {
    cpu_start: Option<f64>,
    usage: NodeUsage,
}

impl BrokerProbe {
    pub fn start(pids: &[u32]) -> Self {
        let nodes = pids
            .iter()
            .map(|&pid| {
                let rss = procfs::rss_bytes(pid);
                NodeProbe {
                    cpu_start: procfs::cpu_seconds(pid),
                    usage: NodeUsage {
                        pid,
                        cpu_seconds: None,
                        rss_start_bytes: rss,
                        rss_peak_bytes: rss,
                    },
                }
            })
            .collect();
        BrokerProbe { nodes }
    }

    pub fn sample(&mut self) {
        for n in &mut self.nodes {
            if let Some(rss) = procfs::rss_bytes(n.usage.pid) {
                n.usage.rss_peak_bytes = Some(n.usage.rss_peak_bytes.unwrap_or(0).max(rss));
            }
        }
    }

    /// The usage of every node, and over all of them: CPU seconds summed (over the nodes that
    /// answered at both ends: a node killed by the run has none), memory of the largest node.
    pub fn finish(mut self) -> BrokerUsage {
        self.sample();
        let mut total = BrokerUsage::default();
        for n in &mut self.nodes {
            let end = procfs::cpu_seconds(n.usage.pid);
            n.usage.cpu_seconds = n.cpu_start.zip(end).map(|(a, b)| b - a);
            if let Some(cpu) = n.usage.cpu_seconds {
                total.cpu_seconds = Some(total.cpu_seconds.unwrap_or(0.0) + cpu);
            }
            total.rss_start_bytes = total.rss_start_bytes.max(n.usage.rss_start_bytes);
            total.rss_peak_bytes = total.rss_peak_bytes.max(n.usage.rss_peak_bytes);
        }
        if self.nodes.len() > 1 {
            total.nodes = self.nodes.into_iter().map(|n| n.usage).collect();
        }
        total
    }
}

/// The live progress line, once a second.
struct Progress {
    enabled: bool,
    last: Instant,
    last_in: u64,
    last_out: u64,
}

impl Progress {
    fn new(forced: bool) -> Self {
        Progress {
            enabled: forced || std::io::stderr().is_terminal(),
            last: Instant::now(),
            last_in: 0,
            last_out: 0,
        }
    }

    fn tick(&mut self, live: &Live) {
        let dt = self.last.elapsed().as_secs_f64();
        if !self.enabled || dt < 1.0 {
            return;
        }
        let (p, c) = (
            live.published.load(Ordering::Relaxed),
            live.consumed.load(Ordering::Relaxed),
        );
        eprintln!(
            "[{:>5.1}s] in {:>9.0} msg/s  out {:>9.0} msg/s  in flight {}",
            live.start.elapsed().as_secs_f64(),
            (p - self.last_in) as f64 / dt,
            (c - self.last_out) as f64 / dt,
            live.in_flight()
        );
        (self.last, self.last_in, self.last_out) = (Instant::now(), p, c);
    }
}

/// What a scenario hands to [`drive`].
pub struct Flow {
    pub label: String,
    pub live: Arc<Live>,
    pub groups: usize,
    pub stop: StopConsumers,
    pub consumers: Vec<Task<Recorder>>,
    /// False where the protocol allows dropping messages (MQTT QoS 0).
    pub loss_is_defect: bool,
}

/// Starts the publishers (each returning how many messages it sent), runs until the duration
/// or the message budget is used up, drains, and reports.
pub async fn drive<F, Fut>(
    flow: Flow,
    common: &Options,
    start_publishers: F,
) -> Result<Report, BenchError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Vec<Task<u64>>, BenchError>>,
{
    let Flow {
        label,
        live,
        groups,
        stop,
        consumers,
        loss_is_defect,
    } = flow;
    let result = drive_publishers(&live, common, start_publishers).await;
    // Whatever happened, consumers are told to stop so their tasks end.
    let (sent, publish_seconds, elapsed, broker) = match result {
        Ok(r) => r,
        Err(e) => {
            stop.stop();
            for c in consumers {
                c.abort();
            }
            return Err(e);
        }
    };
    stop.stop();
    let mut recorders = Vec::new();
    for c in consumers {
        match tokio::time::timeout(COLLECT, c).await {
            Ok(Ok(r)) => recorders.push(r?),
            Ok(Err(join)) => return Err(BenchError::Task(join.to_string())),
            Err(_) => return Err(BenchError::Timeout("a consumer did not stop")),
        }
    }
    let tally = Tally {
        elapsed_seconds: elapsed.as_secs_f64(),
        publish_seconds: publish_seconds.as_secs_f64(),
        sent,
        recorders,
        groups,
        broker,
    };
    let mut report =
        Report::from_tally(label, common.consumers, common.size, loss_is_defect, tally);
    // A slow consumer's backlog is left undrained on purpose: what is missing then is not loss.
    report.drained = report.missing == 0 || common.consumer_rate.is_none();
    report.loss_is_defect &= report.drained;
    let confirms = live.confirms.lock().ok().and_then(|mut t| t.take());
    report.confirms = confirms.as_ref().map(|t| ConfirmReport {
        confirmed: t.confirmed,
        nacked: t.nacked,
        latency: t.latency(),
        longest_gap_ms: t.longest_gap_ns as f64 / 1e6,
    });
    report.failover = common
        .kill
        .zip(live.killed_at_ns())
        .map(|(k, at)| FailoverReport {
            killed_pid: k.pid,
            killed_at_seconds: at as f64 / 1e9,
            first_confirm_after_kill_ms: confirms
                .as_ref()
                .and_then(|t| t.first_after_kill_ns)
                .map(|ns| ns as f64 / 1e6),
        });
    Ok(report)
}

type Driven = (Vec<u64>, Duration, Duration, BrokerUsage);

async fn drive_publishers<F, Fut>(
    live: &Arc<Live>,
    common: &Options,
    start_publishers: F,
) -> Result<Driven, BenchError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Vec<Task<u64>>, BenchError>>,
{
    let mut probe = BrokerProbe::start(&common.broker_pids);
    let mut progress = Progress::new(common.progress);
    let started = Instant::now();
    let mut publishers = start_publishers().await?;
    let deadline = started + common.duration;
    let mut kill = common.kill;
    while Instant::now() < deadline && publishers.iter().any(|p| !p.is_finished()) {
        tokio::time::sleep(TICK).await;
        probe.sample();
        progress.tick(live);
        if let Some(k) = kill.filter(|k| started.elapsed() >= k.after) {
            // The time is taken first: a confirm read after it is "after the kill".
            live.kill_ns.store(live.now_ns().max(1), Ordering::Relaxed);
            crate::sys::kill_process(k.pid)?;
            kill = None;
        }
        // A publisher that failed ends the run now rather than at the deadline.
        if let Some(i) = publishers
            .iter()
            .position(|p| p.is_finished())
            .filter(|_| common.messages.is_none())
        {
            live.stop.store(true, Ordering::Relaxed);
            let failed = publishers.swap_remove(i);
            for p in publishers {
                p.abort();
            }
            failed
                .await
                .map_err(|e| BenchError::Task(e.to_string()))??;
            return Err(BenchError::Timeout("a publisher stopped early"));
        }
    }
    live.stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for p in publishers {
        // Bounded: a publisher blocked by the broker (memory alarm) may never see the stop.
        match tokio::time::timeout(COLLECT, p).await {
            Ok(done) => sent.push(done.map_err(|e| BenchError::Task(e.to_string()))??),
            Err(_) => return Err(BenchError::Timeout("a publisher did not stop")),
        }
    }
    let publish_time = started.elapsed();
    // A slow consumer's backlog is not waited for: the run shows the throttling, not the drain.
    let drain_until = Instant::now()
        + if common.consumer_rate.is_some() {
            Duration::ZERO
        } else {
            common.drain_timeout
        };
    // Drain while consumers make progress: a broker that stalls ends the drain early.
    let mut last_progress = (live.consumed.load(Ordering::Relaxed), Instant::now());
    while live.in_flight() > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(2)).await;
        probe.sample();
        progress.tick(live);
        let consumed = live.consumed.load(Ordering::Relaxed);
        if consumed != last_progress.0 {
            last_progress = (consumed, Instant::now());
        } else if last_progress.1.elapsed() > STALLED {
            break;
        }
    }
    Ok((sent, publish_time, started.elapsed(), probe.finish()))
}
