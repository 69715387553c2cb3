//! `switchboard bench`: an end-to-end load generator (here: AMQP publish → consume), pointed at
//! any AMQP 0-9-1 broker on 127.0.0.1 by default. It reports messages per second, latency
//! percentiles from a timestamp in each body, and, given the broker's pid, the broker's CPU
//! seconds per million messages — the figure that holds on a shared machine.

pub mod client;

use bytes::BytesMut;
use client::{BenchClient, BenchReader, ClientError, CH};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_amqp::*;

/// Parameters of the AMQP publish → consume scenario.
#[derive(Debug, Clone)]
pub struct AmqpScenario {
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    pub publishers: usize,
    pub consumers: usize,
    pub size: usize,
    pub duration: Duration,
    /// Manual acks (with this prefetch) instead of auto-ack.
    pub manual_ack: bool,
    pub prefetch: u16,
    /// Publishers pause while this many messages are published but not yet consumed, so a run
    /// measures a steady state instead of filling the broker's memory.
    pub max_in_flight: u64,
    pub queue: String,
    /// Persistent messages to a durable queue.
    pub persistent: bool,
    /// Publisher confirms with this window of unconfirmed messages per publisher.
    pub confirm_window: Option<u32>,
    /// Stop after this many messages in all.
    pub messages: Option<u64>,
    pub broker_pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub elapsed: Duration,
    pub published: u64,
    pub consumed: u64,
    pub latency_us: Option<[u64; 3]>,
    pub broker_cpu_seconds: Option<f64>,
}

impl Report {
    pub fn consumed_per_second(&self) -> f64 {
        self.consumed as f64 / self.elapsed.as_secs_f64()
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "elapsed {:.2}s  published {}  consumed {}  rate {:.0} msg/s",
            self.elapsed.as_secs_f64(),
            self.published,
            self.consumed,
            self.consumed_per_second()
        );
        if let Some([p50, p99, p999]) = self.latency_us {
            s += &format!("  latency p50 {p50} µs  p99 {p99} µs  p99.9 {p999} µs");
        }
        if let Some(cpu) = self.broker_cpu_seconds {
            let per_million = cpu / (self.consumed.max(1) as f64 / 1e6);
            s += &format!("  broker CPU {cpu:.2}s = {per_million:.2} CPU-s per million");
        }
        s
    }
}

/// Broker CPU seconds (user + system) from /proc/PID/stat.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks; USER_HZ is 100 on every mainstream configuration.
    Some((utime + stime) / 100.0)
}

struct Shared {
    start: Instant,
    published: AtomicU64,
    consumed: AtomicU64,
    stop: AtomicBool,
    /// Latency samples in µs, pushed by consumers in chunks.
    latencies: std::sync::Mutex<Vec<u32>>,
}

pub async fn run_amqp(s: AmqpScenario) -> Result<Report, ClientError> {
    let mut setup = BenchClient::connect(s.addr, &s.user, &s.password).await?;
    setup
        .call(QueueDeclare {
            queue: s.queue.clone(),
            durable: s.persistent,
            auto_delete: false,
            ..Default::default()
        })
        .await?;
    setup
        .call(QueuePurge {
            queue: s.queue.clone(),
            no_wait: false,
        })
        .await?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        published: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        latencies: std::sync::Mutex::new(Vec::new()),
    });
    let mut consumers = Vec::new();
    for _ in 0..s.consumers {
        let mut c = BenchClient::connect(s.addr, &s.user, &s.password).await?;
        if s.manual_ack {
            c.call(BasicQos {
                prefetch_size: 0,
                prefetch_count: s.prefetch,
                global: false,
            })
            .await?;
        }
        c.call(BasicConsume {
            queue: s.queue.clone(),
            no_ack: !s.manual_ack,
            ..Default::default()
        })
        .await?;
        consumers.push(tokio::spawn(consume(c, shared.clone(), s.manual_ack)));
    }
    let cpu_before = s.broker_pid.and_then(process_cpu_seconds);
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..s.publishers {
        let mut c = BenchClient::connect(s.addr, &s.user, &s.password).await?;
        if s.confirm_window.is_some() {
            c.call(ConfirmSelect { no_wait: false }).await?;
        }
        publishers.push(tokio::spawn(publish(c, shared.clone(), s.clone())));
    }
    let deadline = Instant::now() + s.duration;
    while Instant::now() < deadline
        && s.messages
            .is_none_or(|n| shared.published.load(Ordering::Relaxed) < n)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for p in publishers {
        let _ = p.await;
    }
    // Let consumers drain what was published, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.consumed.load(Ordering::Relaxed) < shared.published.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let cpu_after = s.broker_pid.and_then(process_cpu_seconds);
    for c in consumers {
        c.abort();
    }
    let mut lat = std::mem::take(&mut *shared.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    lat.sort_unstable();
    let pct = |p: f64| u64::from(lat[((lat.len() - 1) as f64 * p) as usize]);
    Ok(Report {
        elapsed,
        published: shared.published.load(Ordering::Relaxed),
        consumed: shared.consumed.load(Ordering::Relaxed),
        latency_us: (!lat.is_empty()).then(|| [pct(0.5), pct(0.99), pct(0.999)]),
        broker_cpu_seconds: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
    })
}

/// Counts a publisher's confirmed messages from the acks the broker sends.
async fn read_confirms(
    mut rd: BenchReader,
    confirmed: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<(), ClientError> {
    let mut frames = Vec::new();
    loop {
        rd.frames(&mut frames).await?;
        for f in frames.drain(..) {
            if let Frame::Method {
                method: Method::BasicAck(a),
                ..
            } = f
            {
                // Tags count from 1 and acks only go forward; `multiple` covers all below.
                confirmed.fetch_max(a.delivery_tag, Ordering::Relaxed);
                wake.notify_one();
            }
        }
    }
}

async fn publish(c: BenchClient, shared: Arc<Shared>, s: AmqpScenario) -> Result<(), ClientError> {
    use tokio::io::AsyncWriteExt;
    const BATCH: u64 = 64;
    let (rd, mut wr, frame_max) = c.into_split();
    let confirmed = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let reader = s
        .confirm_window
        .map(|_| tokio::spawn(read_confirms(rd, confirmed.clone(), wake.clone())));
    let window = s.confirm_window.map(|w| u64::from(w).max(BATCH));
    let mut sent: u64 = 0;
    let method: Method = BasicPublish {
        exchange: String::new(),
        routing_key: s.queue.clone(),
        ..Default::default()
    }
    .into();
    let props = BasicProperties {
        delivery_mode: s.persistent.then_some(2),
        ..Default::default()
    };
    let mut body = vec![0u8; s.size.max(8)];
    let mut out = BytesMut::with_capacity(64 * 1024);
    while !shared.stop.load(Ordering::Relaxed) {
        let lag =
            shared.published.load(Ordering::Relaxed) - shared.consumed.load(Ordering::Relaxed);
        if lag > s.max_in_flight {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        if let Some(w) = window {
            if sent - confirmed.load(Ordering::Relaxed) + BATCH > w {
                // Bounded, so a stop request is seen even if the broker stops acking.
                let _ = tokio::time::timeout(Duration::from_millis(50), wake.notified()).await;
                continue;
            }
        }
        out.clear();
        for _ in 0..BATCH {
            let now = shared.start.elapsed().as_nanos() as u64;
            body[..8].copy_from_slice(&now.to_be_bytes());
            encode_content(
                &mut out,
                CH,
                &method,
                &props,
                None,
                &body[..s.size.max(8)],
                frame_max,
            );
        }
        wr.write_all(&out).await?;
        sent += BATCH;
        shared.published.fetch_add(BATCH, Ordering::Relaxed);
    }
    if let Some(r) = reader {
        r.abort();
    }
    Ok(())
}

/// Consumes until aborted; latency samples go to `shared.latencies` in chunks.
async fn consume(
    mut c: BenchClient,
    shared: Arc<Shared>,
    manual_ack: bool,
) -> Result<(), ClientError> {
    use tokio::io::AsyncWriteExt;
    let mut frames = Vec::new();
    let mut samples = Vec::with_capacity(1 << 16);
    let mut acks = BytesMut::new();
    let mut n: u64 = 0;
    loop {
        c.frames(&mut frames).await?;
        let mut last_tag = None;
        for f in frames.drain(..) {
            match f {
                Frame::Method {
                    method: Method::BasicDeliver(d),
                    ..
                } => last_tag = Some(d.delivery_tag),
                Frame::Body { payload, .. } if payload.len() >= 8 => {
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(&payload[..8]);
                    let sent = u64::from_be_bytes(ts);
                    let now = shared.start.elapsed().as_nanos() as u64;
                    n += 1;
                    // Sample one message in 16 to keep the cost of measuring low.
                    if n.is_multiple_of(16) {
                        samples.push(
                            u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX),
                        );
                    }
                    shared.consumed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        if samples.len() >= 256 {
            shared
                .latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut samples);
        }
        if manual_ack {
            if let Some(tag) = last_tag {
                acks.clear();
                encode_method(
                    &mut acks,
                    CH,
                    &BasicAck {
                        delivery_tag: tag,
                        multiple: true,
                    }
                    .into(),
                );
                c.wr.write_all(&acks).await?;
            }
        }
    }
}
