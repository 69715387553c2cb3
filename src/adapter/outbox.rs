//! A connection's outbound buffer and the writer that drains it: a task of its own
//! ([`Outbox::start`]), or the connection's own task ([`InlineWriter`], one task per connection
//! where idle connections are many, as with MQTT).
//!
//! Anything may append frames (the connection task, or a publisher's task delivering to one of
//! this connection's consumers); the writer swaps the whole buffer out and writes it with one
//! syscall, so many small frames cost one write. Consumers stop taking deliveries while the
//! buffer is over [`HIGH_WATERMARK`], and the connection task is told when it drains so that it
//! can wake their queues: a slow reader cannot make the broker buffer without bound.
//!
//! The writer charges the bytes it is writing to the broker's memory monitor until the write
//! completes: a socket that does not drain holds them, up to about [`HIGH_WATERMARK`] per
//! connection, and a thousand stalled consumers make that memory the high watermark is about.
//! Not charged: what is appended while a write is under way (bounded by the same mark) and the
//! capacity kept for the next write (up to `RETAINED_CAPACITY`).

use crate::core::memory::{MemoryCharge, MemoryMonitor};
use crate::core::stats::ConnectionCounters;
use bytes::BytesMut;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Above this many pending bytes, consumers get no more deliveries.
pub const HIGH_WATERMARK: usize = 1 << 20;

/// A write buffer larger than this is released after use instead of kept for the next write.
const RETAINED_CAPACITY: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Pending {
    buf: BytesMut,
    /// No more frames will come: the writer flushes what is left and shuts the socket.
    closing: bool,
}

#[derive(Debug, Default)]
pub struct Outbox {
    pending: Mutex<Pending>,
    /// The length of `pending.buf`, kept beside it so that [`Outbox::has_room`], asked before
    /// every delivery, does not take the lock that pushes and the writer contend for.
    pending_len: AtomicUsize,
    /// Wakes the writer.
    wake_writer: Notify,
    /// A consumer was refused for lack of room.
    stalled: AtomicBool,
    /// Tells the connection task that a stalled outbox has room again.
    pub drained: Notify,
    /// The writer has stopped (socket error or closed).
    dead: AtomicBool,
    pub writer_done: Notify,
    /// Charged for the bytes being written; none for outboxes of unit tests.
    memory: Option<Arc<MemoryMonitor>>,
    /// Where the bytes written are counted (the connection's `send_oct`), once set.
    counters: std::sync::OnceLock<Arc<ConnectionCounters>>,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// An outbox whose writer charges the bytes it is writing to `memory`.
    pub fn charged_to(memory: &Arc<MemoryMonitor>) -> Self {
        Outbox {
            memory: Some(memory.clone()),
            ..Outbox::new()
        }
    }

    /// Counts the bytes written from now on into `counters`.
    pub fn count_into(&self, counters: &Arc<ConnectionCounters>) {
        let _ = self.counters.set(counters.clone());
    }

    /// A charge for bytes being written (nothing for outboxes without a monitor).
    fn write_charge(&self) -> MemoryCharge {
        self.memory
            .as_ref()
            .map_or_else(MemoryCharge::default, |m| m.charge(0))
    }

    /// A new outbox and the writer task draining it into `socket`, the bytes it writes charged
    /// to `memory`.
    pub fn start<W>(socket: W, memory: &Arc<MemoryMonitor>) -> (Arc<Outbox>, JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let outbox = Arc::new(Outbox::charged_to(memory));
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.run_writer(socket).await }
        });
        (outbox, writer)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends frames written by `f`. Frames appended by one call are contiguous on the wire.
    pub fn push(&self, f: impl FnOnce(&mut BytesMut)) {
        let mut p = self.lock();
        if p.closing {
            return;
        }
        let was_empty = p.buf.is_empty();
        f(&mut p.buf);
        self.pending_len.store(p.buf.len(), Ordering::Relaxed);
        drop(p);
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    /// Whether a consumer may add a delivery now. A refusal is remembered so that the
    /// connection task is told once the buffer drains.
    pub fn has_room(&self) -> bool {
        if self.dead.load(Ordering::Relaxed) {
            return false;
        }
        if self.pending_len.load(Ordering::Relaxed) < HIGH_WATERMARK {
            return true;
        }
        self.stalled.store(true, Ordering::Relaxed);
        false
    }

    /// Flushes what is pending, then closes the socket's write side.
    pub fn close(&self) {
        self.lock().closing = true;
        self.wake_writer.notify_one();
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Swaps the pending frames into `out` (which must be empty); whether the outbox is closing.
    fn take_pending(&self, out: &mut BytesMut) -> bool {
        let mut p = self.lock();
        std::mem::swap(&mut p.buf, out);
        self.pending_len.store(0, Ordering::Relaxed);
        if out.is_empty() && (out.capacity() > 0 || p.buf.capacity() > 0) {
            // Nothing to write: an idle connection holds no buffer while it waits (the next
            // frame allocates one; a busy connection finds frames pending here and keeps
            // reusing its two buffers).
            p.buf = BytesMut::new();
            *out = BytesMut::new();
        }
        p.closing
    }

    /// After `out` was written: empties it, and says whether consumers refused for lack of
    /// room may deliver again.
    fn written(&self, out: &mut BytesMut) -> bool {
        if let Some(c) = self.counters.get() {
            c.sent(out.len());
        }
        out.clear();
        if out.capacity() > RETAINED_CAPACITY {
            // A burst grew it; do not keep that much per connection forever.
            *out = BytesMut::new();
        }
        self.stalled.swap(false, Ordering::Relaxed)
    }

    /// Resolves once frames may be pending, the outbox closes, or [`wake`](Self::wake) is called.
    pub fn frames_pushed(&self) -> impl Future<Output = ()> + '_ {
        self.wake_writer.notified()
    }

    /// Wakes whoever waits in [`frames_pushed`](Self::frames_pushed): a connection task that
    /// writes its own outbox uses it as its one wake-up for other events too (it keeps one
    /// waiter instead of one per event).
    pub fn wake(&self) {
        self.wake_writer.notify_one();
    }

    /// Drains the outbox into `socket` until closed or the socket fails.
    pub async fn run_writer<W: AsyncWrite + Unpin>(&self, mut socket: W) {
        // Grows on demand (the buffers are swapped, so each side keeps what it grew to while
        // frames keep coming).
        let mut out = BytesMut::new();
        let mut charge = self.write_charge();
        loop {
            let closing = self.take_pending(&mut out);
            if out.is_empty() {
                if closing {
                    break;
                }
                self.wake_writer.notified().await;
                continue;
            }
            charge.resize(out.len());
            if let Err(e) = socket.write_all(&out).await {
                tracing::debug!(error = %e, "socket write failed");
                break;
            }
            charge.resize(0);
            if self.written(&mut out) {
                self.drained.notify_one();
            }
        }
        let _ = socket.shutdown().await;
        self.dead.store(true, Ordering::Relaxed);
        self.writer_done.notify_one();
    }
}

/// Writes an [`Outbox`] from the connection's own task: its loop selects on
/// [`Outbox::frames_pushed`] (then [`take`](Self::take)) and on [`write_some`](Self::write_some)
/// beside its reads. It saves the writer task and its wake-up notifications, which for an idle
/// MQTT connection are a good part of its memory (issue 7).
#[derive(Debug)]
pub struct InlineWriter<W> {
    socket: W,
    out: BytesMut,
    /// How much of `out` is on the wire already.
    sent: usize,
    /// Charged for `out` until it is written, as the writer task charges (module comment).
    charge: MemoryCharge,
}

impl<W: AsyncWrite + Unpin> InlineWriter<W> {
    pub fn new(socket: W, outbox: &Outbox) -> Self {
        InlineWriter {
            socket,
            out: BytesMut::new(),
            sent: 0,
            charge: outbox.write_charge(),
        }
    }

    /// Whether everything taken from the outbox is written.
    pub fn is_idle(&self) -> bool {
        self.out.is_empty()
    }

    /// Takes the outbox's pending frames to write (call when idle).
    pub fn take(&mut self, outbox: &Outbox) {
        if self.is_idle() {
            outbox.take_pending(&mut self.out);
            self.charge.resize(self.out.len());
        }
    }

    /// Writes part of what was taken: `Ok(true)` when that finished it and consumers refused
    /// for lack of room may deliver again. Cancel-safe, so it can be a `select!` branch:
    /// progress is kept here, not in the future.
    pub async fn write_some(&mut self, outbox: &Outbox) -> std::io::Result<bool> {
        let n = match self.socket.write(&self.out[self.sent..]).await {
            Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e),
        }
        .inspect_err(|_| outbox.dead.store(true, Ordering::Relaxed))?;
        self.sent += n;
        if self.sent < self.out.len() {
            return Ok(false);
        }
        self.sent = 0;
        self.charge.resize(0);
        Ok(outbox.written(&mut self.out))
    }

    /// The end of the connection: closes the outbox, writes what is left and shuts the
    /// socket's write side.
    pub async fn finish(mut self, outbox: &Outbox) {
        outbox.close();
        loop {
            if self.is_idle() {
                self.take(outbox);
                if self.is_idle() {
                    break;
                }
            }
            if self.write_some(outbox).await.is_err() {
                break;
            }
        }
        let _ = self.socket.shutdown().await;
        outbox.dead.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(tokio::time::Instant::now() < until, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn buffers_are_charged_while_held_and_released_with_the_writer() {
        let memory = MemoryMonitor::new(0);
        // A peer that reads nothing yet: the writer stalls once 4 KiB are in the pipe.
        let (wr, mut peer) = tokio::io::duplex(4096);
        let (outbox, writer) = Outbox::start(wr, &memory);
        for _ in 0..64 {
            outbox.push(|b| b.extend_from_slice(&[7; 4096]));
        }
        wait_for("the bytes being written charged", || {
            memory.used() == 64 * 4096
        })
        .await;
        let mut got = vec![0; 64 * 4096];
        peer.read_exact(&mut got).await.unwrap();
        outbox.close();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(memory.used(), 0, "the writer's charge goes with it");
        assert!(got.iter().all(|&b| b == 7));
    }
}
