//! How a connection's outbox reaches its socket: a writer task of its own, or the connection's
//! own task (see [`crate::adapter::outbox`]).

use crate::adapter::outbox::{InlineWriter, Outbox};
use crate::core::memory::MemoryMonitor;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

/// Time the last frames (a close, an error, receipts) get to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Which writer a protocol wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// A writer task: deliveries pushed by publishers' tasks are written while this
    /// connection's task reads (AMQP, STOMP).
    Task,
    /// The connection's task writes: one task per connection, for protocols with many idle
    /// connections (MQTT). The outbox's wake-up is then the session's wake-up too.
    Inline,
}

/// What happened on the writer side.
pub enum Outbound {
    /// The outbox has room again after consumers were refused (writer task).
    Drained,
    /// The writer task stopped: the socket failed or closed.
    WriterDone,
    /// The outbox was woken: frames pushed, or another task wants the session (inline).
    Woken,
    /// A write finished (inline); `Ok(true)`: what was taken is written and consumers may
    /// deliver again.
    Written(std::io::Result<bool>),
}

pub enum WriteSide<W> {
    Task(JoinHandle<()>),
    Inline(InlineWriter<W>),
}

impl<W: AsyncWrite + Unpin + Send + 'static> WriteSide<W> {
    pub fn start(mode: WriteMode, socket: W, memory: &Arc<MemoryMonitor>) -> (Arc<Outbox>, Self) {
        match mode {
            WriteMode::Task => {
                let (outbox, writer) = Outbox::start(socket, memory);
                (outbox, WriteSide::Task(writer))
            }
            WriteMode::Inline => {
                let outbox = Arc::new(Outbox::charged_to(memory));
                let writer = InlineWriter::new(socket, &outbox);
                (outbox, WriteSide::Inline(writer))
            }
        }
    }

    /// The next thing the writer side has to say. Cancel-safe (a `select!` branch): an
    /// inline writer keeps its progress in itself.
    pub async fn next_event(&mut self, outbox: &Outbox) -> Outbound {
        match self {
            WriteSide::Task(_) => tokio::select! {
                _ = outbox.drained.notified() => Outbound::Drained,
                _ = outbox.writer_done.notified() => Outbound::WriterDone,
            },
            WriteSide::Inline(w) if w.is_idle() => {
                outbox.frames_pushed().await;
                Outbound::Woken
            }
            WriteSide::Inline(w) => tokio::select! {
                _ = outbox.frames_pushed() => Outbound::Woken,
                written = w.write_some(outbox) => Outbound::Written(written),
            },
        }
    }

    /// An inline writer takes the frames pushed since its last write (a writer task takes
    /// them itself).
    pub fn take(&mut self, outbox: &Outbox) {
        if let WriteSide::Inline(w) = self {
            w.take(outbox);
        }
    }

    /// Closes the outbox and writes what is left (bounded by [`CLOSE_TIMEOUT`]).
    pub async fn finish(self, outbox: &Outbox) {
        match self {
            WriteSide::Task(writer) => {
                outbox.close();
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
            }
            WriteSide::Inline(writer) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.finish(outbox)).await;
            }
        }
    }
}
