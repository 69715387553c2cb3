//! `bench declare`: declares N durable queues over C AMQP connections (one channel each, one
//! declare in flight per channel, as a client waiting for `declare-ok` does), declares each
//! again as it is (what a client does every time it starts), then deletes them the same way,
//! and reports each phase's rate overall and in its first and last tenth, which shows whether
//! a declare costs more as more queues exist. Works against any AMQP 0-9-1
//! broker, so Switchboard and RabbitMQ are measured by the same load generator.

use super::amqp::expect_ok;
use super::client::BenchClient;
use super::{BenchError, Options};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use switchboard_amqp::{Method, QueueDeclare, QueueDelete};
use tokio::task::JoinSet;

/// One phase (declaring or deleting).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub seconds: f64,
    pub per_second: f64,
    /// Rate over the first tenth of the queues.
    pub first_tenth_per_second: f64,
    /// Rate over the last tenth.
    pub last_tenth_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeclareReport {
    pub queues: u64,
    pub channels: usize,
    pub declare: PhaseReport,
    /// The same declarations again, of queues that exist.
    pub redeclare: PhaseReport,
    pub delete: PhaseReport,
}

impl DeclareReport {
    pub fn render(&self) -> String {
        let row = |name: &str, p: &PhaseReport| {
            format!(
                "{name:<8} {:>9.2} s {:>10.0}/s   first 10%: {:>8.0}/s   last 10%: {:>8.0}/s\n",
                p.seconds, p.per_second, p.first_tenth_per_second, p.last_tenth_per_second
            )
        };
        format!(
            "{} durable queues over {} channels\n{}{}{}",
            self.queues,
            self.channels,
            row("declare", &self.declare),
            row("again", &self.redeclare),
            row("delete", &self.delete)
        )
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// When each tenth of the operations completed, counted across every channel.
struct Progress {
    started: Instant,
    total: u64,
    done: AtomicU64,
    /// Seconds since `started` at which 1/10, 2/10, ... 10/10 were done.
    tenths: Mutex<[f64; 10]>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress {
            started: Instant::now(),
            total,
            done: AtomicU64::new(0),
            tenths: Mutex::new([0.0; 10]),
        }
    }

    fn one_done(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        // The operation that completes tenth k (k = 1..=10) stamps it.
        for k in 1..=10u64 {
            if n == (self.total * k).div_ceil(10) {
                let t = self.started.elapsed().as_secs_f64();
                if let Ok(mut tenths) = self.tenths.lock() {
                    tenths[(k - 1) as usize] = t;
                }
            }
        }
    }

    fn report(&self) -> PhaseReport {
        let seconds = self.started.elapsed().as_secs_f64();
        let t = self.tenths.lock().map(|t| *t).unwrap_or([seconds; 10]);
        let tenth = self.total as f64 / 10.0;
        let rate = |n: f64, s: f64| n / s.max(1e-9);
        PhaseReport {
            seconds,
            per_second: rate(self.total as f64, seconds),
            first_tenth_per_second: rate(tenth, t[0]),
            last_tenth_per_second: rate(tenth, t[9] - t[8]),
        }
    }
}

/// What one channel does to queue `name`.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Declare,
    Delete,
}

impl Phase {
    fn method(self, name: String) -> Method {
        match self {
            Phase::Declare => QueueDeclare {
                queue: name,
                durable: true,
                ..Default::default()
            }
            .into(),
            Phase::Delete => QueueDelete {
                queue: name,
                ..Default::default()
            }
            .into(),
        }
    }
}

/// Runs `phase` over the queues `stem-0` .. `stem-(n-1)`, channel `c` of `channels` taking
/// every `channels`-th one.
async fn run_phase(
    clients: Vec<BenchClient>,
    stem: &str,
    n: u64,
    phase: Phase,
) -> Result<(Vec<BenchClient>, PhaseReport), BenchError> {
    let channels = clients.len() as u64;
    let progress = Arc::new(Progress::new(n));
    let mut tasks = JoinSet::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let (progress, stem) = (progress.clone(), stem.to_owned());
        tasks.spawn(async move {
            let mut i = c as u64;
            while i < n {
                expect_ok(client.call(phase.method(format!("{stem}-{i}"))).await?)?;
                progress.one_done();
                i += channels;
            }
            Ok::<_, BenchError>(client)
        });
    }
    let mut clients = Vec::new();
    while let Some(done) = tasks.join_next().await {
        clients.push(done.map_err(|e| BenchError::Task(e.to_string()))??);
    }
    Ok((clients, progress.report()))
}

/// Declares and then deletes `queues` durable queues named after `o.queue` over `channels`
/// connections.
pub async fn run(o: &Options, queues: u64, channels: usize) -> Result<DeclareReport, BenchError> {
    if channels == 0 || queues < 10 {
        return Err(BenchError::Options(
            "declare needs at least 1 channel and 10 queues".into(),
        ));
    }
    let mut clients = Vec::with_capacity(channels);
    for _ in 0..channels {
        clients
            .push(BenchClient::connect(o.amqp_addr, o.tls.as_ref(), &o.user, &o.password).await?);
    }
    let stem = format!("{}-declare-{:04x}", o.queue, rand::random::<u16>());
    let (clients, declare) = run_phase(clients, &stem, queues, Phase::Declare).await?;
    let (clients, redeclare) = run_phase(clients, &stem, queues, Phase::Declare).await?;
    let (_, delete) = run_phase(clients, &stem, queues, Phase::Delete).await?;
    Ok(DeclareReport {
        queues,
        channels,
        declare,
        redeclare,
        delete,
    })
}
