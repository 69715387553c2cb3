//! One STOMP connection: the CONNECT handshake, then the session the connection driver
//! (`crate::net::driver`) runs: frames in, heart-beats both ways, receipts after the log.

use super::error::StompError;
use super::handshake::{connect, Negotiated, ACCESS_REFUSED};
use super::session::{Next, Session, SessionCtx};
use crate::adapter::outbox::Outbox;
use crate::core::Broker;
use crate::net::driver::{
    Check, Driver, Liveness, ReadPolicy, Session as DriverSession, Step, Stop, WriteMode,
};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_stomp::{encode, Command, Decoder, Frame, Limits, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{timeout, Instant};

/// Time a client has to send CONNECT (as RabbitMQ's handshake timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the receipts still waiting for the log get after DISCONNECT.
const RECEIPTS_TIMEOUT: Duration = Duration::from_secs(5);
/// The read buffer's starting size.
const READ_BUFFER: usize = 16 * 1024;
/// Versions decode CONNECT the same way (its headers are never escaped).
const HANDSHAKE_VERSION: Version = Version::V1_2;

/// Serves a connection over any byte stream (TCP, TLS, WebSocket).
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
        "stomp",
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
    let limits = limits_of(&broker);
    let mut decoder = Decoder::new();
    match timeout(
        HANDSHAKE_TIMEOUT,
        read_connect(
            &mut driver.reader,
            &mut driver.read.buf,
            &mut decoder,
            &limits,
        ),
    )
    .await
    {
        Err(_) => tracing::info!(%peer, "STOMP client sent no CONNECT in time"),
        Ok(Err(ReadEnd::Closed)) => tracing::debug!(%peer, "STOMP client left before CONNECT"),
        Ok(Err(ReadEnd::Error(e))) => {
            tracing::info!(%peer, error = %e, "bad STOMP frame before CONNECT");
            send_error(&outbox, HANDSHAKE_VERSION, &e, None);
        }
        Ok(Ok(frame)) => match connect(&frame, &broker, peer, cert_name.as_deref()) {
            Err(e) => {
                if e.message == ACCESS_REFUSED {
                    broker.auth_throttle.failed(peer.ip()).await;
                }
                tracing::info!(%peer, error = %e, "STOMP CONNECT refused");
                send_error(&outbox, HANDSHAKE_VERSION, &e, frame.header("receipt"));
            }
            Ok((n, connected)) => {
                broker.auth_throttle.succeeded(peer.ip());
                tracing::debug!(%peer, user = %n.user, vhost = %n.vhost.name, version = n.version.as_str(), "STOMP connection opened");
                if let Ok(mut s) = driver.entry.session.lock() {
                    *s = Some((n.user.clone(), n.vhost.name.clone()));
                }
                outbox.push(|out| encode(&connected, n.version, out));
                let mut conn = Connection::new(
                    &broker,
                    driver.entry.id,
                    peer,
                    &outbox,
                    n,
                    limits,
                    driver.entry.stats.clone(),
                );
                driver.run(&mut conn).await;
                conn.session.cleanup();
            }
        },
    }
    driver.finish().await;
    tracing::debug!(%peer, "STOMP connection closed");
}

fn limits_of(broker: &Broker) -> Limits {
    let c = &broker.config.stomp;
    Limits {
        max_frame_size: c.max_frame_size,
        max_headers: c.max_headers,
        max_header_line: c.max_header_line,
        max_body_size: c.max_body_size,
    }
}

enum ReadEnd {
    Closed,
    Error(StompError),
}

/// Reads until the first frame is complete.
async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    limits: &Limits,
) -> Result<Frame, ReadEnd> {
    loop {
        match decoder.decode(buf, HANDSHAKE_VERSION, limits) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(ReadEnd::Error(e.into())),
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadEnd::Closed),
            Ok(_) => {}
        }
    }
}

/// Queues an ERROR frame; the caller then closes the connection.
fn send_error(outbox: &Outbox, version: Version, e: &StompError, receipt: Option<&str>) {
    crate::net::websocket::closing_because(e.ws_cause());
    let mut frame = Frame::new(Command::Error)
        .with("message", e.message.clone())
        .with("content-type", "text/plain");
    if let Some(r) = receipt {
        frame = frame.with("receipt-id", r);
    }
    for (name, value) in &e.extra_headers {
        frame = frame.with(*name, value.clone());
    }
    frame.body = e.detail.clone().into_bytes().into();
    outbox.push(|out| encode(&frame, version, out));
}

struct Connection {
    session: Session,
    decoder: Decoder,
    outbox: Arc<Outbox>,
    peer: SocketAddr,
    limits: Limits,
    liveness: Liveness,
    /// Not read because of the memory alarm: its silence proves nothing.
    blocked: bool,
    /// After DISCONNECT or an ERROR: only the receipts still waiting for the log are sent.
    closing: bool,
}

impl Connection {
    fn new(
        broker: &Arc<Broker>,
        conn_id: u64,
        peer: SocketAddr,
        outbox: &Arc<Outbox>,
        n: Negotiated,
        limits: Limits,
        counters: Arc<crate::core::stats::ConnectionCounters>,
    ) -> Self {
        let ctx = SessionCtx {
            counters,
            broker: broker.clone(),
            vhost: n.vhost,
            conn_id,
            user: n.user,
            impersonator: n.impersonator,
            outbox: outbox.clone(),
            version: n.version,
        };
        Connection {
            session: Session::new(ctx, n.session),
            decoder: Decoder::new(),
            outbox: outbox.clone(),
            peer,
            limits,
            // Two missed heart-beats mean a dead peer.
            liveness: Liveness::new(
                n.send_every,
                n.expect_every.map(|e| (Check::Every(e / 2), e * 2)),
                crate::net::driver::now(&broker.timer),
            ),
            blocked: false,
            closing: false,
        }
    }

    /// The end after DISCONNECT or an ERROR: at once, or once the receipts still waiting for
    /// the log are sent (bounded, so a stuck disk cannot hold the connection forever).
    fn close(&mut self, now: Instant) -> Step {
        self.closing = true;
        match self.session.flush_receipts() {
            Ok(true) => Step::Closing(now + RECEIPTS_TIMEOUT),
            Ok(false) => Step::Close,
            Err((e, receipt)) => self.refused(&e, &receipt),
        }
    }

    /// Ends the connection with ERROR `e` for the frame whose receipt was `receipt` (a
    /// message a quorum queue refused once it committed): nothing follows it.
    fn refused(&mut self, e: &StompError, receipt: &str) -> Step {
        tracing::info!(peer = %self.peer, error = %e, "STOMP error, closing");
        self.session.drop_receipts();
        send_error(&self.outbox, self.session.version(), e, Some(receipt));
        self.closing = true;
        Step::Close
    }

    /// Handles every complete frame in `buf`. False when the connection must close (after
    /// DISCONNECT, or after an ERROR frame was queued).
    fn process(&mut self, buf: &mut BytesMut) -> bool {
        let version = self.session.version();
        loop {
            let frame = match self.decoder.decode(buf, version, &self.limits) {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(e) => {
                    tracing::info!(peer = %self.peer, error = %e, "malformed STOMP frame");
                    if matches!(
                        e,
                        switchboard_stomp::DecodeError::FrameTooLarge { .. }
                            | switchboard_stomp::DecodeError::BodyTooLarge { .. }
                    ) {
                        crate::net::websocket::closing_because(
                            crate::net::websocket::Cause::TooBig,
                        );
                    }
                    self.session.drop_receipts();
                    send_error(&self.outbox, version, &e.into(), None);
                    return false;
                }
            };
            let receipt = frame.header("receipt").map(str::to_owned);
            let command = frame.command;
            match self.session.handle(frame) {
                Ok(Next::Continue) => {}
                Ok(Next::Disconnect) => return false,
                Err(e) => {
                    tracing::info!(peer = %self.peer, %command, error = %e, "STOMP error, closing");
                    // Nothing follows an ERROR frame.
                    self.session.drop_receipts();
                    send_error(&self.outbox, version, &e, receipt.as_deref());
                    return false;
                }
            }
        }
    }
}

impl DriverSession for Connection {
    fn received(&mut self, buf: &mut BytesMut, now: Instant) -> Step {
        if self.closing {
            // After DISCONNECT or ERROR nothing the client sends is read.
            buf.clear();
            return Step::Continue;
        }
        self.liveness.heard(now);
        if self.process(buf) {
            Step::Continue
        } else {
            self.close(now)
        }
    }

    fn take_published(&mut self) -> bool {
        // Only a SEND since the last read counts, so a connection that published long ago and
        // now only consumes stays readable.
        std::mem::take(&mut self.session.published)
    }

    fn deadline(&self) -> Option<Instant> {
        self.liveness.deadline()
    }

    fn timer(&mut self, now: Instant) -> Step {
        let due = self.liveness.poll(now, self.blocked);
        if due.send_beat {
            self.outbox.push(|out| out.extend_from_slice(b"\n"));
        }
        if due.peer_silent {
            tracing::info!(peer = %self.peer, "STOMP client missed heart-beats, closing");
            return Step::Close;
        }
        Step::Continue
    }

    fn awaits_log(&self) -> bool {
        self.session.receipts_pending()
    }

    fn log_synced(&mut self) -> Step {
        match self.session.flush_receipts() {
            Ok(waiting) if !self.closing || waiting => Step::Continue,
            Ok(_) => Step::Close,
            Err((e, receipt)) => self.refused(&e, &receipt),
        }
    }

    fn drained(&mut self) {
        self.session.wake_subscriptions();
    }

    fn alarm_blocked(&mut self, on: bool, now: Instant) {
        self.blocked = on;
        if !on {
            self.liveness.heard(now);
        }
    }

    fn stop(&mut self, why: Stop) -> Step {
        let e = match why {
            Stop::Shutdown => StompError::new("Server shutdown", "The broker is shutting down."),
            Stop::Forced(why) => StompError::new("Connection closed by the broker", why),
        };
        send_error(&self.outbox, self.session.version(), &e, None);
        Step::Close
    }
}
