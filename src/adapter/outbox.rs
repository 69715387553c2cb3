//! A connection's outbound buffer and the writer task that drains it.
//!
//! Anything may append frames (the connection task, or a publisher's task delivering to one of
//! this connection's consumers); the writer swaps the whole buffer out and writes it with one
//! syscall, so many small frames cost one write. Consumers stop taking deliveries while the
//! buffer is over [`HIGH_WATERMARK`], and the connection task is told when it drains so that it
//! can wake their queues: a slow reader cannot make the broker buffer without bound.

use bytes::BytesMut;
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
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new outbox and the writer task draining it into `socket`.
    pub fn start<W>(socket: W) -> (Arc<Outbox>, JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let outbox = Arc::new(Outbox::new());
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

    /// Drains the outbox into `socket` until closed or the socket fails.
    pub async fn run_writer<W: AsyncWrite + Unpin>(&self, mut socket: W) {
        // Grows on demand (the buffers are swapped, so each side keeps what it grew to): an
        // idle connection holds no buffer at all.
        let mut out = BytesMut::new();
        loop {
            let closing = {
                let mut p = self.lock();
                std::mem::swap(&mut p.buf, &mut out);
                self.pending_len.store(0, Ordering::Relaxed);
                p.closing
            };
            if out.is_empty() {
                if closing {
                    break;
                }
                self.wake_writer.notified().await;
                continue;
            }
            if let Err(e) = socket.write_all(&out).await {
                tracing::debug!(error = %e, "socket write failed");
                break;
            }
            out.clear();
            if out.capacity() > RETAINED_CAPACITY {
                // A burst grew it; do not keep that much per connection forever.
                out = BytesMut::new();
            }
            if self.stalled.swap(false, Ordering::Relaxed) {
                self.drained.notify_one();
            }
        }
        let _ = socket.shutdown().await;
        self.dead.store(true, Ordering::Relaxed);
        self.writer_done.notify_one();
    }
}
