//! One AMQP connection: the handshake, then the session the connection driver
//! (`crate::net::driver`) runs: frames routed to channels, heartbeats, confirms after the log,
//! `connection.blocked`, and the close handshake.

use super::channel::{Channel, ConnCtx};
use super::error::*;
use super::handshake::{handshake, HandshakeError, Negotiated};
use crate::adapter::outbox::Outbox;
use crate::core::broker::ConnectionEntry;
use crate::core::hash::FastHashMap;
use crate::core::Broker;
use crate::net::driver::{
    Check, Driver, Liveness, ReadPolicy, Session as DriverSession, Step, Stop, WriteMode,
};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_amqp::*;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout, Instant};

/// Time a client has to complete the handshake (as RabbitMQ's `handshake_timeout`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the peer has to answer our `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// The read buffer's size. Bodies are sliced out of it, so a buffer is freed only once its
/// messages are gone, and each refill takes a new one. Kept under glibc's 64 KiB
/// `FASTBIN_CONSOLIDATION_THRESHOLD`: freeing a chunk that large consolidates every free small
/// chunk (the per-message strings and boxes), which cost ~90 instructions per 16 B message and
/// slowed the small allocations after it. Larger frames still grow the buffer as needed.
const READ_BUFFER: usize = 32 * 1024;

/// Serves a connection over any byte stream (TCP, TLS, in-memory for tests).
pub async fn serve_stream<R, W>(
    rd: R,
    wr: W,
    peer: SocketAddr,
    cert_name: Option<String>,
    broker: Arc<Broker>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut driver = Driver::new(
        "amqp",
        rd,
        wr,
        peer,
        &broker,
        ReadPolicy::Keep {
            initial: READ_BUFFER,
        },
        WriteMode::Task,
    );
    let outbox = driver.outbox.clone();
    let negotiated = timeout(
        HANDSHAKE_TIMEOUT,
        handshake(
            &mut driver.reader,
            &mut driver.read.buf,
            &outbox,
            &broker,
            peer,
            cert_name.as_deref(),
        ),
    )
    .await;
    match negotiated {
        Err(_) => tracing::info!(%peer, "AMQP handshake timed out"),
        Ok(Err(HandshakeError::Protocol(e))) => {
            tracing::info!(%peer, error = %e, "AMQP handshake failed");
            send_connection_close(&outbox, &e);
        }
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "AMQP handshake failed"),
        Ok(Ok(n)) => {
            tracing::debug!(%peer, user = %n.user, vhost = %n.vhost.name, "AMQP connection opened");
            if let Ok(mut s) = driver.entry.session.lock() {
                *s = Some((n.user.clone(), n.vhost.name.clone()));
            }
            let mut conn = Connection::new(&broker, driver.entry.clone(), &outbox, n);
            driver.run(&mut conn).await;
            conn.cleanup();
        }
    }
    driver.finish().await;
    tracing::debug!(%peer, "AMQP connection closed");
}

fn send_connection_close(outbox: &Outbox, e: &AmqpError) {
    let close = ConnectionClose {
        reply_code: e.code,
        reply_text: e.text.clone(),
        class_id: e.class_id,
        method_id: e.method_id,
    };
    outbox.push(|out| encode_method(out, 0, &close.into()));
}

/// What handling frames leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    /// We sent `connection.close`; wait for close-ok.
    Closing,
    Done,
}

struct Connection {
    ctx: ConnCtx,
    entry: Arc<ConnectionEntry>,
    channels: FastHashMap<u16, Channel>,
    channel_max: u16,
    connection_blocked_cap: bool,
    /// Channels with publishes whose confirms are not yet sent.
    confirm_dirty: Vec<u16>,
    /// Channels whose confirms wait for the message log to be durable.
    confirm_waiting: Vec<u16>,
    /// A message was published since the last memory-alarm check.
    published: bool,
    liveness: Liveness,
    /// Not read because of the memory alarm (a publisher, as in RabbitMQ).
    blocked: bool,
    /// The client was sent `connection.blocked` (it asked for them).
    blocked_notified: bool,
    /// We sent `connection.close` and wait for close-ok.
    closing: bool,
}

impl Connection {
    fn new(
        broker: &Arc<Broker>,
        entry: Arc<ConnectionEntry>,
        outbox: &Arc<Outbox>,
        n: Negotiated,
    ) -> Self {
        // Beats at half the interval; two missed intervals mean a dead peer.
        let hb = (n.heartbeat > 0).then(|| Duration::from_secs(u64::from(n.heartbeat)));
        let liveness = Liveness::new(
            hb.map(|h| h / 2),
            hb.map(|h| (Check::Every(h / 2), h * 2)),
            crate::net::driver::now(&broker.timer),
        );
        Connection {
            ctx: ConnCtx {
                broker: broker.clone(),
                vhost: n.vhost,
                conn_id: entry.id,
                user: n.user,
                impersonator: n.impersonator,
                outbox: outbox.clone(),
                frame_max: n.frame_max,
                max_message_size: broker.config.amqp.max_message_size,
                consumer_cancel_notify: n.consumer_cancel_notify,
                counters: entry.stats.clone(),
            },
            entry,
            channels: FastHashMap::default(),
            channel_max: n.channel_max,
            connection_blocked_cap: n.connection_blocked,
            confirm_dirty: Vec::new(),
            confirm_waiting: Vec::new(),
            published: false,
            liveness,
            blocked: false,
            blocked_notified: false,
            closing: false,
        }
    }

    fn send_blocked(&self, on: bool) {
        let method: Method = if on {
            ConnectionBlocked {
                reason: "low on memory".into(),
            }
            .into()
        } else {
            ConnectionUnblocked {}.into()
        };
        self.ctx.send(0, method);
    }

    /// Sends the confirms that are due: those of channels that published since the last call,
    /// and those waiting for the log.
    fn flush_confirms(&mut self) {
        if self.confirm_dirty.is_empty() && self.confirm_waiting.is_empty() {
            return;
        }
        let synced = self
            .ctx
            .broker
            .store
            .as_ref()
            .map_or(u64::MAX, |s| s.log.synced());
        let mut ids = std::mem::take(&mut self.confirm_dirty);
        for id in std::mem::take(&mut self.confirm_waiting) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for id in ids {
            if let Some(ch) = self.channels.get_mut(&id) {
                if ch.flush_confirms(&self.ctx, synced) {
                    self.confirm_waiting.push(id);
                }
            }
        }
    }

    /// Handles every complete frame in `buf`.
    fn process(&mut self, buf: &mut BytesMut, closing: bool) -> Next {
        loop {
            let frame = match decode_frame(buf, self.ctx.frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => return Next::Continue,
                Err(e) => {
                    if closing {
                        return Next::Done;
                    }
                    let e = AmqpError::from(e);
                    tracing::info!(peer = %self.entry.peer, error = %e, "AMQP frame error");
                    self.close_connection(&e);
                    return Next::Closing;
                }
            };
            if closing {
                // After our connection.close only close/close-ok matter.
                match frame {
                    Frame::Method {
                        channel: 0,
                        method: Method::ConnectionCloseOk(_),
                    } => return Next::Done,
                    Frame::Method {
                        channel: 0,
                        method: Method::ConnectionClose(_),
                    } => {
                        self.ctx.send(0, ConnectionCloseOk {});
                        return Next::Done;
                    }
                    _ => continue,
                }
            }
            match self.handle_frame(frame) {
                Ok(Next::Continue) => {}
                Ok(next) => return next,
                Err(e) if e.scope == Scope::Connection => {
                    tracing::info!(peer = %self.entry.peer, error = %e, "closing AMQP connection");
                    self.close_connection(&e);
                    return Next::Closing;
                }
                Err(e) => {
                    tracing::debug!(peer = %self.entry.peer, error = %e, "AMQP channel error");
                }
            }
        }
    }

    /// Closes every channel and sends `connection.close`.
    fn close_connection(&mut self, e: &AmqpError) {
        self.cleanup();
        send_connection_close(&self.ctx.outbox, e);
    }

    fn handle_frame(&mut self, frame: Frame) -> AmqpResult<Next> {
        let channel = frame.channel();
        if channel == 0 {
            return self.handle_connection_frame(frame);
        }
        if let Frame::Method {
            method: Method::ChannelOpen(_),
            ..
        } = &frame
        {
            if channel > self.channel_max {
                return Err(AmqpError::connection(
                    NOT_ALLOWED,
                    format!(
                        "channel number {channel} exceeds the negotiated channel_max {}",
                        self.channel_max
                    ),
                )
                .during(20, 10));
            }
            if self.channels.contains_key(&channel) {
                return Err(AmqpError::connection(
                    CHANNEL_ERROR,
                    format!("second 'channel.open' seen on channel {channel}"),
                )
                .during(20, 10));
            }
            let ch = Channel::new(channel, self.ctx.outbox.clone(), self.ctx.frame_max);
            self.entry.channel_opened(channel, ch.deliveries.clone());
            self.channels.insert(channel, ch);
            self.ctx.send(channel, ChannelOpenOk {});
            return Ok(Next::Continue);
        }
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Err(AmqpError::connection(
                CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {channel}"),
            ));
        };
        match frame {
            Frame::Method {
                method: Method::ChannelClose(_),
                ..
            } => {
                if let Some(mut ch) = self.channels.remove(&channel) {
                    ch.cleanup(&self.ctx);
                    self.entry.channel_closed(channel);
                }
                self.ctx.send(channel, ChannelCloseOk {});
                return Ok(Next::Continue);
            }
            Frame::Method {
                method: Method::ChannelCloseOk(_),
                ..
            } => {
                if ch.closing {
                    self.channels.remove(&channel);
                    self.entry.channel_closed(channel);
                }
                return Ok(Next::Continue);
            }
            // After the server closed a channel, all else on it is dropped until close-ok.
            _ if ch.closing => return Ok(Next::Continue),
            _ => {}
        }
        match ch.handle_frame(&self.ctx, frame) {
            Ok(effects) => {
                if effects.published {
                    self.published = true;
                }
                if (effects.published || effects.reply_held)
                    && !self.confirm_dirty.contains(&channel)
                {
                    self.confirm_dirty.push(channel);
                }
                Ok(Next::Continue)
            }
            Err(e) if e.scope == Scope::Channel => {
                ch.cleanup(&self.ctx);
                ch.closing = true;
                self.ctx.send(
                    channel,
                    ChannelClose {
                        reply_code: e.code,
                        reply_text: e.text.clone(),
                        class_id: e.class_id,
                        method_id: e.method_id,
                    },
                );
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn handle_connection_frame(&mut self, frame: Frame) -> AmqpResult<Next> {
        let method = match frame {
            Frame::Heartbeat { .. } => return Ok(Next::Continue),
            Frame::Method { method, .. } => method,
            _ => {
                return Err(AmqpError::connection(
                    UNEXPECTED_FRAME,
                    "content frame on channel 0",
                ))
            }
        };
        match method {
            Method::ConnectionClose(m) => {
                tracing::debug!(peer = %self.entry.peer, code = m.reply_code, text = %m.reply_text, "client closed the connection");
                self.cleanup();
                self.ctx.send(0, ConnectionCloseOk {});
                Ok(Next::Done)
            }
            Method::ConnectionCloseOk(_) => Ok(Next::Done),
            Method::ConnectionUpdateSecret(_) => {
                self.ctx.send(0, ConnectionUpdateSecretOk {});
                Ok(Next::Continue)
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(Next::Continue),
            other => Err(AmqpError::connection(
                COMMAND_INVALID,
                format!("method {} is not valid on channel 0", other.name()),
            )
            .during(other.class_id(), other.method_id())),
        }
    }

    /// Releases every channel's consumers and unacked deliveries.
    fn cleanup(&mut self) {
        for (_, mut ch) in self.channels.drain() {
            ch.cleanup(&self.ctx);
        }
        self.entry.all_channels_closed();
    }
}

impl DriverSession for Connection {
    fn received(&mut self, buf: &mut BytesMut, now: Instant) -> Step {
        self.liveness.heard(now);
        let next = self.process(buf, self.closing);
        match next {
            Next::Continue => {}
            Next::Closing => self.closing = true,
            Next::Done => return Step::Close,
        }
        self.flush_confirms();
        if next == Next::Closing {
            Step::Closing(now + CLOSE_TIMEOUT)
        } else {
            Step::Continue
        }
    }

    fn held_bytes(&self) -> usize {
        self.channels.values().map(Channel::content_bytes).sum()
    }

    fn take_published(&mut self) -> bool {
        std::mem::take(&mut self.published)
    }

    fn deadline(&self) -> Option<Instant> {
        self.liveness.deadline()
    }

    fn timer(&mut self, now: Instant) -> Step {
        let due = self.liveness.poll(now, self.blocked);
        if due.send_beat {
            self.ctx.outbox.push(encode_heartbeat);
        }
        if due.peer_silent {
            tracing::info!(peer = %self.entry.peer, "missed heartbeats from client, closing");
            return Step::Close;
        }
        Step::Continue
    }

    fn awaits_log(&self) -> bool {
        !self.confirm_waiting.is_empty()
    }

    fn log_synced(&mut self) -> Step {
        self.flush_confirms();
        Step::Continue
    }

    fn drained(&mut self) {
        for ch in self.channels.values_mut() {
            ch.wake_consumers(&self.ctx);
        }
    }

    fn alarm_blocked(&mut self, on: bool, now: Instant) {
        // As in RabbitMQ, only a publishing connection is blocked, and told so if it asked:
        // clients stop writing when told, and a consumer's connection must stay free to ack,
        // cancel and purge.
        self.blocked = on;
        if on != self.blocked_notified && (self.connection_blocked_cap || !on) {
            self.send_blocked(on);
            self.blocked_notified = on;
        }
        if !on {
            self.liveness.heard(now);
        }
    }

    fn stop(&mut self, why: Stop) -> Step {
        let now = crate::net::driver::now(&self.ctx.broker.timer);
        let (reason, wait) = match why {
            Stop::Shutdown => {
                let grace = self.ctx.broker.config.server.shutdown_grace_seconds;
                (
                    "shutdown".to_owned(),
                    Duration::from_secs(grace).min(CLOSE_TIMEOUT),
                )
            }
            Stop::Forced(reason) => (reason, CLOSE_TIMEOUT),
        };
        let e = AmqpError::connection(
            CONNECTION_FORCED,
            format!("broker forced connection closure with reason '{reason}'"),
        );
        self.close_connection(&e);
        self.closing = true;
        Step::Closing(now + wait)
    }
}
