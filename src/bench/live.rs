//! Counters shared by every publisher and consumer of a run while it goes, and the pacing
//! each publisher applies before sending a batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Messages a publisher writes with one socket write at full speed.
pub const BATCH: u64 = 64;

pub struct Live {
    pub start: Instant,
    /// Tags this run's bodies (see [`super::body::Stamp`]).
    pub run: u16,
    pub published: AtomicU64,
    /// Distinct messages received by consumers: a consumer's duplicates are not counted
    /// (flushed once per read).
    pub consumed: AtomicU64,
    /// Publishers stop when set.
    pub stop: AtomicBool,
    /// How many consumer groups each published message should reach.
    pub groups: u64,
    /// Publishers pause while more deliveries than this are outstanding.
    pub max_in_flight: u64,
    /// When the run killed a broker node (`--kill-pid`), in ns since `start`; 0 until then.
    pub kill_ns: AtomicU64,
    /// Confirming publishers' tallies, merged as each ends.
    pub confirms: super::confirm::SharedTally,
}

impl Live {
    pub fn new(groups: u64, max_in_flight: u64) -> Self {
        Live {
            start: Instant::now(),
            run: rand::random(),
            published: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            groups: groups.max(1),
            max_in_flight,
            kill_ns: AtomicU64::new(0),
            confirms: std::sync::Mutex::new(None),
        }
    }

    /// When the run killed a broker node, if it has.
    pub fn killed_at_ns(&self) -> Option<u64> {
        Some(self.kill_ns.load(Ordering::Relaxed)).filter(|k| *k > 0)
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Deliveries published but not yet consumed.
    pub fn in_flight(&self) -> u64 {
        (self.published.load(Ordering::Relaxed) * self.groups)
            .saturating_sub(self.consumed.load(Ordering::Relaxed))
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One publisher's pacing: its message budget, its rate, and the in-flight bound.
pub struct Pacer {
    /// Messages this publisher may still send.
    budget: u64,
    /// Messages per second, if limited.
    rate: Option<u64>,
    started: Instant,
    pub sent: u64,
}

impl Pacer {
    pub fn new(budget: u64, rate: Option<u64>) -> Self {
        Pacer {
            budget,
            rate: rate.filter(|r| *r > 0),
            started: Instant::now(),
            sent: 0,
        }
    }

    /// How many messages to send now (at most `BATCH`), waiting as pacing requires; `None`
    /// once the run stops or the budget is spent.
    pub async fn next_batch(&mut self, live: &Live) -> Option<u64> {
        loop {
            if live.stopped() || self.sent >= self.budget {
                return None;
            }
            if live.in_flight() > live.max_in_flight {
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            }
            let mut n = BATCH.min(self.budget - self.sent);
            if let Some(rate) = self.rate {
                let due = (self.started.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
                if due <= self.sent {
                    // Sleep until the next message is due (tokio timers have 1 ms resolution,
                    // so at high rates this sends small bursts).
                    let at = Duration::from_secs_f64(self.sent as f64 / rate as f64);
                    tokio::time::sleep(at.saturating_sub(self.started.elapsed())).await;
                    continue;
                }
                n = n.min(due - self.sent);
            }
            return Some(n);
        }
    }

    /// Trims a batch of `n` to what the acknowledgement window leaves room for (`acked`: the
    /// publisher's acknowledged count). None when the window is full: it waited briefly for
    /// acknowledgements (bounded, so a stop request is seen even if the broker stops acking)
    /// and the caller asks its pacer again.
    pub async fn fit_window(
        &self,
        n: u64,
        window: Option<u64>,
        acked: &AtomicU64,
        wake: &tokio::sync::Notify,
    ) -> Option<u64> {
        let Some(w) = window else {
            return Some(n);
        };
        let open = self.sent - acked.load(Ordering::Relaxed);
        if open >= w {
            let _ = tokio::time::timeout(Duration::from_millis(50), wake.notified()).await;
            return None;
        }
        Some(n.min(w - open))
    }

    /// Counts `n` messages as written.
    pub fn count_sent(&mut self, live: &Live, n: u64) {
        self.sent += n;
        live.published.fetch_add(n, Ordering::Relaxed);
    }
}

/// How long a publisher's last write and its outstanding acknowledgements get once the run
/// stops.
const GRACE: Duration = Duration::from_secs(5);

/// Writes `buf` unless the run stops and the write still cannot finish within [`GRACE`]: a
/// publisher the broker has stopped reading (its memory alarm) must still end with the run.
/// Returns whether the write completed (when it did not, part of `buf` may have been sent).
pub async fn write_unless_stopped<W>(wr: &mut W, buf: &[u8], live: &Live) -> std::io::Result<bool>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let write = wr.write_all(buf);
    tokio::pin!(write);
    let mut stopped_at = None;
    loop {
        tokio::select! {
            r = &mut write => return r.map(|()| true),
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if live.stopped() {
                    let since = *stopped_at.get_or_insert_with(Instant::now);
                    if since.elapsed() > GRACE {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// Waits (at most [`GRACE`]) for a publisher's reader task, which ends when the broker answers
/// the publisher's goodbye (AMQP `connection.close-ok`, a STOMP DISCONNECT receipt): closing
/// before that lets a broker drop what it had not yet processed (RabbitMQ does). An error the
/// reader met (the broker refused something) is the run's error.
pub async fn finish_reader(
    reader: tokio::task::JoinHandle<Result<(), super::BenchError>>,
) -> Result<(), super::BenchError> {
    match tokio::time::timeout(GRACE, reader).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_cancelled() => Ok(()),
        Ok(Err(join)) => Err(super::BenchError::Task(join.to_string())),
        Err(_) => Ok(()),
    }
}

/// Writes a publisher's goodbye, bounded: a broker under its memory alarm may not be reading.
pub async fn write_goodbye<W>(wr: &mut W, buf: &[u8]) -> bool
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    matches!(
        tokio::time::timeout(Duration::from_secs(1), wr.write_all(buf)).await,
        Ok(Ok(()))
    )
}

/// Waits (at most [`GRACE`]) until `acked` reaches `sent`: a publisher that closes its socket
/// with acknowledgements unread makes the kernel reset the connection, and the broker may
/// then lose what it had not yet read.
pub async fn await_acks(acked: &AtomicU64, sent: u64, wake: &tokio::sync::Notify) {
    let until = Instant::now() + GRACE;
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < until {
        let _ = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
    }
}
