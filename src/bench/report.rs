//! The figures of a run: a summary table for people, one JSON object for machines.

use super::record::Recorder;
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// The broker's resources over a run, when its pid was given. With several (the nodes of a
/// cluster) CPU seconds are their sum, the RSS figures the largest node's, and `nodes` has
/// each one's.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BrokerUsage {
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_per_million: Option<f64>,
    pub rss_start_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeUsage>,
}

/// One broker process of several.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct NodeUsage {
    pub pid: u32,
    pub cpu_seconds: Option<f64>,
    pub rss_start_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
}

/// Publisher confirms of a run: how long each took (send → ack received), and how many the
/// broker refused.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ConfirmReport {
    pub confirmed: u64,
    pub nacked: u64,
    pub latency: Option<Latency>,
    /// The longest time without a confirm once they had started.
    pub longest_gap_ms: f64,
}

/// A run that killed a broker node (`--kill-pid`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct FailoverReport {
    pub killed_pid: u32,
    /// When the node was killed, seconds into the run.
    pub killed_at_seconds: f64,
    /// From the kill to the first confirm of a message published after it; None if none was
    /// confirmed before the run ended.
    pub first_confirm_after_kill_ms: Option<f64>,
}

/// Idle connections opened by `--connections`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ConnectionsReport {
    pub opened: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Broker RSS growth divided by the connections opened.
    pub rss_bytes_per_connection: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub publishers: usize,
    pub consumers: usize,
    pub size: usize,
    /// From the first publish until the last message was consumed (or the drain gave up).
    pub elapsed_seconds: f64,
    /// Publishing time alone.
    pub publish_seconds: f64,
    pub published: u64,
    /// Messages received, duplicates included.
    pub consumed: u64,
    /// Deliveries expected: every published message once per consumer group.
    pub expected: u64,
    /// Expected deliveries never received.
    pub missing: u64,
    pub duplicates: u64,
    /// Messages without this run's stamp (left in a queue by an earlier run).
    pub foreign: u64,
    /// False for flows where the protocol allows dropping (MQTT QoS 0, a slow consumer
    /// whose backlog was not drained): `missing` is then a figure, not a defect.
    pub loss_is_defect: bool,
    /// False when consumers were not given the time to take the backlog (`--consumer-rate`).
    pub drained: bool,
    pub publish_rate: f64,
    pub consume_rate: f64,
    pub latency: Option<Latency>,
    pub broker: BrokerUsage,
    pub connections: Option<ConnectionsReport>,
    /// Publisher confirms, when publishers asked for them (AMQP).
    pub confirms: Option<ConfirmReport>,
    pub failover: Option<FailoverReport>,
}

/// What a run measured, before it becomes a report.
pub struct Tally {
    pub elapsed_seconds: f64,
    pub publish_seconds: f64,
    /// Messages each publisher sent, by publisher index.
    pub sent: Vec<u64>,
    pub recorders: Vec<Recorder>,
    pub groups: usize,
    pub broker: BrokerUsage,
}

impl Report {
    /// Merges the consumers' records, group by group, against what each publisher sent.
    pub fn from_tally(
        scenario: String,
        consumers: usize,
        size: usize,
        loss_is_defect: bool,
        t: Tally,
    ) -> Report {
        let published: u64 = t.sent.iter().sum();
        let mut latency: Option<Histogram<u64>> = None;
        let (mut consumed, mut duplicates, mut foreign, mut unique) = (0, 0, 0, 0);
        for group in 0..t.groups {
            let mut seen = super::record::SeqBitmap::default();
            for r in t.recorders.iter().filter(|r| r.group == group) {
                consumed += r.received;
                foreign += r.foreign;
                duplicates += r.duplicates + seen.merge(&r.seen);
                match &mut latency {
                    Some(h) => {
                        // Same bounds on every recorder, so adding cannot fail.
                        let _ = h.add(&r.latency_us);
                    }
                    None => latency = Some(r.latency_us.clone()),
                }
            }
            for (p, sent) in t.sent.iter().enumerate() {
                unique += seen.seen_below(p as u16, *sent);
            }
        }
        let expected = published * t.groups as u64;
        let mut broker = t.broker;
        broker.cpu_seconds_per_million = broker
            .cpu_seconds
            .map(|cpu| cpu / (consumed.max(published).max(1) as f64 / 1e6));
        Report {
            scenario,
            publishers: t.sent.len(),
            consumers,
            size,
            elapsed_seconds: t.elapsed_seconds,
            publish_seconds: t.publish_seconds,
            published,
            consumed,
            expected,
            missing: expected.saturating_sub(unique),
            duplicates,
            foreign,
            loss_is_defect,
            drained: true,
            publish_rate: published as f64 / t.publish_seconds.max(1e-9),
            consume_rate: consumed as f64 / t.elapsed_seconds.max(1e-9),
            latency: latency.as_ref().and_then(Latency::of),
            broker,
            connections: None,
            confirms: None,
            failover: None,
        }
    }

    /// A report for an idle-connections run (no messages).
    pub fn of_connections(c: ConnectionsReport, broker: BrokerUsage) -> Report {
        Report {
            scenario: "mqtt --connections".into(),
            publishers: 0,
            consumers: 0,
            size: 0,
            elapsed_seconds: c.seconds,
            publish_seconds: 0.0,
            published: 0,
            consumed: 0,
            expected: 0,
            missing: 0,
            duplicates: 0,
            foreign: 0,
            loss_is_defect: false,
            drained: true,
            publish_rate: 0.0,
            consume_rate: 0.0,
            latency: None,
            broker,
            connections: Some(c),
            confirms: None,
            failover: None,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The summary table printed at the end of a run.
    pub fn render(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![("scenario", self.scenario.clone())];
        if let Some(c) = &self.connections {
            rows.push(("connections opened", c.opened.to_string()));
            rows.push(("connect time", format!("{:.2} s", c.seconds)));
            rows.push(("connect rate", format!("{:.0} /s", c.per_second)));
            if let Some(b) = c.rss_bytes_per_connection {
                rows.push(("broker RSS per connection", format!("{:.0} B", b)));
            }
        } else {
            rows.push((
                "publishers -> consumers",
                format!("{} -> {}", self.publishers, self.consumers),
            ));
            rows.push(("message size", format!("{} B", self.size)));
            rows.push(("elapsed", format!("{:.2} s", self.elapsed_seconds)));
            rows.push(("published", self.published.to_string()));
            rows.push(("consumed", self.consumed.to_string()));
            let missing = if !self.drained {
                format!("{} (backlog not drained)", self.missing)
            } else if self.loss_is_defect {
                self.missing.to_string()
            } else {
                format!("{} (allowed here)", self.missing)
            };
            rows.push(("missing", missing));
            rows.push(("duplicates", self.duplicates.to_string()));
            if self.foreign > 0 {
                rows.push(("foreign (earlier runs)", self.foreign.to_string()));
            }
            rows.push(("publish rate", format!("{:.0} msg/s", self.publish_rate)));
            rows.push(("consume rate", format!("{:.0} msg/s", self.consume_rate)));
            if let Some(l) = &self.latency {
                rows.push((
                    "latency p50 / p99 / p99.9 / max",
                    format!(
                        "{} / {} / {} / {} µs",
                        l.p50_us, l.p99_us, l.p999_us, l.max_us
                    ),
                ));
            }
            if let Some(c) = &self.confirms {
                rows.push((
                    "confirmed / nacked",
                    format!("{} / {}", c.confirmed, c.nacked),
                ));
                if let Some(l) = &c.latency {
                    rows.push((
                        "confirm latency p50 / p99 / p99.9 / max",
                        format!(
                            "{} / {} / {} / {} µs",
                            l.p50_us, l.p99_us, l.p999_us, l.max_us
                        ),
                    ));
                }
                rows.push((
                    "longest time without a confirm",
                    format!("{:.1} ms", c.longest_gap_ms),
                ));
            }
            if let Some(f) = &self.failover {
                rows.push((
                    "killed",
                    format!("pid {} at {:.2} s", f.killed_pid, f.killed_at_seconds),
                ));
                rows.push((
                    "kill -> first confirm of a later publish",
                    match f.first_confirm_after_kill_ms {
                        Some(ms) => format!("{ms:.1} ms"),
                        None => "none before the run ended".into(),
                    },
                ));
            }
        }
        let b = &self.broker;
        if let Some(cpu) = b.cpu_seconds {
            rows.push(("broker CPU", format!("{cpu:.2} s")));
        }
        if let Some(m) = b
            .cpu_seconds_per_million
            .filter(|_| self.connections.is_none())
        {
            rows.push(("broker CPU-s per million", format!("{m:.2}")));
        }
        if let (Some(start), Some(peak)) = (b.rss_start_bytes, b.rss_peak_bytes) {
            rows.push((
                "broker RSS start / peak",
                format!("{} / {} MiB", start >> 20, peak >> 20),
            ));
        }
        for n in &b.nodes {
            rows.push((
                "node pid: CPU s, RSS peak MiB",
                format!(
                    "{}: {}, {}",
                    n.pid,
                    n.cpu_seconds.map_or("-".into(), |c| format!("{c:.2}")),
                    n.rss_peak_bytes
                        .map_or("-".into(), |r| (r >> 20).to_string())
                ),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}
