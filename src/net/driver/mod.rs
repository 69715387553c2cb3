//! The one connection driver: it owns a connection's transport (any `AsyncRead + AsyncWrite`:
//! TCP, TLS, WebSocket), its read buffer and that buffer's memory charge, memory-alarm gating,
//! the session's timers, waiting for the message log before durable acknowledgements, the
//! outbox's writer, and shutdown. A protocol supplies a [`Session`]: bytes and `now` in, frames
//! (pushed to the outbox) and its next deadline out; it never sees a socket or a clock.
//!
//! Time is the broker's injected clock ([`clock`]), read only here (once per read, never per
//! frame) and handed to the session, so tests of heart-beats and keep-alives move a manual
//! clock instead of sleeping.

pub mod clock;
mod liveness;
mod read_buffer;
mod write_side;

pub use clock::now;
pub use liveness::{Check, Due, Liveness};
pub use read_buffer::{ReadBuffer, ReadPolicy};
use write_side::Outbound;
pub use write_side::{WriteMode, WriteSide};

use crate::adapter::outbox::Outbox;
use crate::core::broker::ConnectionEntry;
use crate::core::Broker;
use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

/// During a memory alarm a connection holding this many bytes of unfinished frames is not read
/// any more, as one that published: the bytes are a publish on its way (no acknowledgement or
/// control frame a consumer sends is anywhere near this large).
pub const UNFINISHED_BLOCKS_AT: usize = 64 * 1024;

/// The most a connection reads at once, and handles before it gives its runtime worker back:
/// a client sending a long batch of cheap frames must not hold a worker (and the connections
/// queued behind it) for the whole batch. A read that never waits (the socket always has more)
/// also never reaches tokio's own cooperative budget, so the driver yields itself.
pub const SLICE_BYTES: usize = 64 * 1024;

/// What the session wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// End the connection now (what the session queued is still written).
    Close,
    /// Keep reading (the session ignores what is not part of the close) and waiting for the
    /// log, with no timers, until the session says [`Step::Close`] or this instant passes.
    Closing(Instant),
}

/// Why the broker ends a connection.
#[derive(Debug, Clone)]
pub enum Stop {
    Shutdown,
    /// By an operator or because its user or vhost was deleted; the reason.
    Forced(String),
}

/// A protocol's connection state machine as the driver sees it.
pub trait Session {
    /// Handles every complete frame at the front of `buf` (consuming them), read at `now`.
    fn received(&mut self, buf: &mut BytesMut, now: Instant) -> Step;
    /// Bytes of unfinished frames the session keeps outside the read buffer (an AMQP body
    /// still arriving), charged to the memory monitor with the buffer.
    fn held_bytes(&self) -> usize {
        0
    }
    /// Whether the session stopped part way through a frame it handles in slices (an MQTT
    /// SUBSCRIBE naming a million filters) and wants [`received`](Self::received) again, with
    /// what is buffered, once the runtime has had its turn and before anything more is read.
    fn unfinished(&self) -> bool {
        false
    }
    /// Whether a publish was routed since the last call (the memory alarm then blocks reads).
    fn take_published(&mut self) -> bool;
    /// Whether publisher flow control holds the connection back at `now` (a queue it
    /// publishes to is too far behind): it is then not read, as under the memory alarm, and
    /// asked again after every event; once it says no, what it left in the read buffer is
    /// handed to [`received`](Self::received) again. Protocols without it never hold.
    fn flow_held(&mut self, _now: Instant) -> bool {
        false
    }
    /// When [`timer`](Self::timer) is next due, if ever. Changes only when it fires or the
    /// session starts or stops a timer, so the driver rarely re-arms it.
    fn deadline(&self) -> Option<Instant>;
    fn timer(&mut self, now: Instant) -> Step;
    /// Whether acknowledgements wait for the message log to be durable.
    fn awaits_log(&self) -> bool;
    /// The log made more records durable.
    fn log_synced(&mut self) -> Step;
    /// The outbox has room again: consumers refused for lack of it may deliver.
    fn drained(&mut self);
    /// The outbox was woken ([`Outbox::wake`] or frames pushed); only with
    /// [`WriteMode::Inline`], where that is the session's one wake-up from other tasks.
    fn woken(&mut self) -> Step {
        Step::Continue
    }
    /// Reads stopped (`true`) or resumed (`false`) because of the memory alarm.
    fn alarm_blocked(&mut self, on: bool, now: Instant);
    fn stop(&mut self, why: Stop) -> Step;
}

/// One connection: its transport, read buffer and outbox.
pub struct Driver<R, W> {
    pub reader: R,
    pub read: ReadBuffer,
    pub outbox: Arc<Outbox>,
    writer: WriteSide<W>,
    pub broker: Arc<Broker>,
    pub entry: Arc<ConnectionEntry>,
}

impl<R, W> Driver<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// Registers the connection and starts its writer.
    pub fn new(
        protocol: &'static str,
        reader: R,
        writer: W,
        peer: SocketAddr,
        broker: &Arc<Broker>,
        policy: ReadPolicy,
        mode: WriteMode,
    ) -> Self {
        let entry = broker.register_connection(protocol, peer);
        let (outbox, writer) = WriteSide::start(mode, writer, &broker.memory);
        outbox.count_into(&entry.stats);
        Driver {
            reader,
            read: ReadBuffer::new(policy, &broker.memory),
            outbox,
            writer,
            broker: broker.clone(),
            entry,
        }
    }

    /// Runs `session` until it closes, the peer goes, or the writer fails.
    pub async fn run<S: Session>(&mut self, session: &mut S) {
        let mut shutdown = self.broker.shutdown_signal();
        let mut alarm = self.broker.memory.subscribe();
        let mut log_synced = self.broker.store.as_ref().map(|s| s.log.subscribe());
        // Not read while blocked by the memory alarm (its TCP window fills and the client
        // stops). Only a connection that publishes is blocked: consumers' connections stay
        // readable so that their acknowledgements can free memory.
        let mut blocked = false;
        // Not read while publisher flow control holds it back (the session says until when).
        let mut flow_hold = false;
        let mut closing: Option<Instant> = None;
        // The closing wait bounds a peer's answer in real time (tokio's), so that a manual
        // clock nobody moves cannot keep a closed connection.
        let closing_timer = tokio::time::sleep_until(far_future());
        tokio::pin!(closing_timer);
        // The session's deadline, on the broker's timer.
        let deadline = Arc::new(clock::Alarm::default());
        let mut armed: Option<Instant> = None;
        // Bytes read since the driver last gave the runtime back.
        let mut since_yield = 0;

        // Frames that arrived behind the handshake.
        let now = self.now();
        let mut step = session.received(&mut self.read.buf, now);
        self.read.processed(session.held_bytes());
        loop {
            if flow_hold && step == Step::Continue && !session.flow_held(self.now()) {
                // What was read behind the publish that held it back.
                let now = self.now();
                step = session.received(&mut self.read.buf, now);
                self.read.processed(session.held_bytes());
                flow_hold = step == Step::Continue && session.flow_held(now);
            }
            if flow_hold != self.entry.in_flow.load(Ordering::Relaxed) {
                self.entry.in_flow.store(flow_hold, Ordering::Relaxed);
            }
            match step {
                Step::Continue => {}
                Step::Close => return,
                Step::Closing(until) => {
                    if closing.is_none() {
                        closing = Some(until);
                        let wait = until.saturating_duration_since(self.now());
                        closing_timer.as_mut().reset(Instant::now() + wait);
                    }
                }
            }
            step = Step::Continue;
            if session.unfinished() && !blocked && closing.is_none() {
                // One slice of a long frame done: the other tasks' turn, then the next.
                tokio::task::yield_now().await;
                let now = self.now();
                step = session.received(&mut self.read.buf, now);
                self.read.processed(session.held_bytes());
                continue;
            }
            let due = if closing.is_some() {
                None
            } else {
                session.deadline()
            };
            if due != armed {
                armed = due;
                // A deadline moved later leaves the earlier one armed: it rings early, and
                // the ring is ignored.
                if let Some(at) = due {
                    deadline.arm(&self.broker.timer, at);
                }
            }
            self.read.prepare_read();
            // Reading and waiting for the alarm to clear exclude each other, so they share one
            // future (and its room in the connection's future).
            let read_buf = &mut self.read.buf;
            let reader = &mut self.reader;
            let wait_alarm = blocked && closing.is_none();
            // Held back: only the session's wake-up (outbox) or its deadline ends it.
            let wait_flow = flow_hold && closing.is_none();
            let input = async {
                if wait_alarm {
                    Input::AlarmChanged(alarm.changed().await.is_ok())
                } else if wait_flow {
                    std::future::pending().await
                } else {
                    Input::Read(reader.read_buf(&mut read_buf.limit(SLICE_BYTES)).await)
                }
            };
            let outbound = self.writer.next_event(&self.outbox);
            let entry = &self.entry;
            let event = tokio::select! {
                input = input => match input {
                    Input::Read(Ok(0) | Err(_)) => return,
                    Input::Read(Ok(n)) => {
                        entry.stats.received(n);
                        Event::Read(n)
                    }
                    Input::AlarmChanged(ok) => Event::AlarmChanged { ok },
                },
                _ = deadline.rung(), if armed.is_some() => Event::Timer,
                _ = &mut closing_timer, if closing.is_some() => Event::ClosingTimeout,
                outbound = outbound => match outbound {
                    Outbound::Drained => Event::Drained,
                    Outbound::Woken => Event::Woken,
                    Outbound::Written(Ok(drained)) => Event::Written { drained },
                    Outbound::Written(Err(e)) => {
                        tracing::debug!(peer = %entry.peer, error = %e, "socket write failed");
                        return;
                    }
                    Outbound::WriterDone => return,
                },
                _ = crate::store::log::synced_changed(&mut log_synced), if session.awaits_log() => Event::LogSynced,
                _ = shutdown.changed(), if closing.is_none() => Event::Stop(Stop::Shutdown),
                why = entry.forced(), if closing.is_none() => Event::Stop(Stop::Forced(why)),
            };
            match event {
                Event::Read(n) => {
                    let now = self.now();
                    step = session.received(&mut self.read.buf, now);
                    let held = session.held_bytes();
                    self.read.processed(held);
                    let published = session.take_published();
                    flow_hold =
                        closing.is_none() && step == Step::Continue && session.flow_held(now);
                    if closing.is_none()
                        && step == Step::Continue
                        && self.broker.memory.alarm()
                        && (published || self.read.unfinished(held) >= UNFINISHED_BLOCKS_AT)
                    {
                        blocked = true;
                        session.alarm_blocked(true, now);
                    }
                    since_yield += n;
                    if since_yield >= SLICE_BYTES {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Event::AlarmChanged { ok } => {
                    // A monitor gone (never while the broker runs) blocks nothing.
                    if !ok || !*alarm.borrow_and_update() {
                        blocked = false;
                        session.alarm_blocked(false, self.now());
                    }
                }
                Event::Timer => {
                    let now = self.now();
                    if armed.is_some_and(|at| at <= now) {
                        armed = None;
                        step = session.timer(now);
                    }
                }
                Event::ClosingTimeout => return,
                Event::Drained => session.drained(),
                Event::Woken => {
                    step = session.woken();
                    self.writer.take(&self.outbox);
                }
                Event::Written { drained } => {
                    // Frames pushed while this write was under way woke nobody.
                    self.writer.take(&self.outbox);
                    if drained {
                        session.drained();
                    }
                }
                Event::LogSynced => step = session.log_synced(),
                Event::Stop(why) => {
                    if matches!(why, Stop::Shutdown) {
                        crate::net::websocket::closing_because(
                            crate::net::websocket::Cause::GoingAway,
                        );
                    }
                    step = session.stop(why);
                }
            }
        }
    }

    /// Now on the broker's clock.
    fn now(&self) -> Instant {
        clock::now(&self.broker.timer)
    }

    /// Writes what is left (bounded) and unregisters the connection.
    pub async fn finish(self) {
        self.writer.finish(&self.outbox).await;
        self.broker.unregister_connection(self.entry.id);
    }

    /// As [`finish`](Self::finish), then reads and drops the peer's input for at most `linger`
    /// (and [`LINGER_BYTES`]) until it closes too. Closing a socket with unread input makes the
    /// kernel answer with a reset, and a client still writing then loses our last frames to a
    /// broken pipe; with the write side shut (FIN sent) it reads them first.
    pub async fn finish_lingering(mut self, linger: std::time::Duration) {
        self.writer.finish(&self.outbox).await;
        let _ = tokio::time::timeout(linger, discard_until_closed(&mut self.reader)).await;
        self.broker.unregister_connection(self.entry.id);
    }
}

/// How much input a closed connection may still send; past it, the socket is dropped.
const LINGER_BYTES: usize = 1024 * 1024;

/// Reads and drops input until the peer closes, fails, or sent [`LINGER_BYTES`].
async fn discard_until_closed<R: AsyncRead + Unpin>(rd: &mut R) {
    // On the heap: a connection's future holds this function's state for its whole life.
    let mut scratch = vec![0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        match rd.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// A deadline that never comes, for a timer not in use.
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// What the connection's input branch produced.
enum Input {
    Read(std::io::Result<usize>),
    AlarmChanged(bool),
}

enum Event {
    /// This many bytes were read.
    Read(usize),
    AlarmChanged {
        ok: bool,
    },
    Timer,
    ClosingTimeout,
    Drained,
    Woken,
    Written {
        drained: bool,
    },
    LogSynced,
    Stop(Stop),
}
