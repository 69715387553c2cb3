//! One STOMP connection: the CONNECT handshake, then the loop that reads frames, keeps
//! heart-beats both ways, honours the memory alarm and shutdown, and closes cleanly.

use super::error::StompError;
use super::handshake::{connect, Negotiated, ACCESS_REFUSED};
use super::session::{Next, Session, SessionCtx};
use crate::adapter::outbox::Outbox;
use crate::core::broker::ConnectionEntry;
use crate::core::Broker;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_stomp::{encode, Command, Decoder, Frame, Limits, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{timeout, Instant};

/// Time a client has to send CONNECT (as RabbitMQ's handshake timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the writer gets to flush the last frames (ERROR, RECEIPT) before the socket closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Versions decode CONNECT the same way (its headers are never escaped).
const HANDSHAKE_VERSION: Version = Version::V1_2;

/// Serves a connection over any byte stream (TCP, TLS, WebSocket later).
pub async fn serve_stream<R, W>(mut rd: R, wr: W, peer: SocketAddr, broker: Arc<Broker>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let entry = broker.register_connection("stomp", peer);
    let (outbox, writer) = Outbox::start(wr, &broker.memory);
    outbox.count_into(&entry.stats);
    let limits = limits_of(&broker);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut decoder = Decoder::new();
    match timeout(
        HANDSHAKE_TIMEOUT,
        read_connect(&mut rd, &mut buf, &mut decoder, &limits),
    )
    .await
    {
        Err(_) => tracing::info!(%peer, "STOMP client sent no CONNECT in time"),
        Ok(Err(ReadEnd::Closed)) => tracing::debug!(%peer, "STOMP client left before CONNECT"),
        Ok(Err(ReadEnd::Error(e))) => {
            tracing::info!(%peer, error = %e, "bad STOMP frame before CONNECT");
            send_error(&outbox, HANDSHAKE_VERSION, &e, None);
        }
        Ok(Ok(frame)) => match connect(&frame, &broker, peer) {
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
                if let Ok(mut s) = entry.session.lock() {
                    *s = Some((n.user.clone(), n.vhost.name.clone()));
                }
                outbox.push(|out| encode(&connected, n.version, out));
                let mut conn = Connection::new(
                    &broker,
                    entry.id,
                    peer,
                    &outbox,
                    n,
                    limits,
                    entry.stats.clone(),
                );
                conn.run(&mut rd, buf, &entry).await;
                conn.session.cleanup();
            }
        },
    }
    outbox.close();
    let _ = timeout(CLOSE_TIMEOUT, writer).await;
    broker.unregister_connection(entry.id);
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
    broker: Arc<Broker>,
    outbox: Arc<Outbox>,
    peer: SocketAddr,
    limits: Limits,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
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
            broker: broker.clone(),
            outbox: outbox.clone(),
            peer,
            limits,
            send_every: n.send_every,
            expect_every: n.expect_every,
        }
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        entry: &ConnectionEntry,
    ) {
        let mut shutdown = self.broker.shutdown_signal();
        let mut alarm = self.broker.memory.subscribe();
        let mut log_synced = self.broker.store.as_ref().map(|s| s.log.subscribe());
        // A connection that published during a memory alarm is not read until it clears (its
        // TCP window fills and the client stops). Consumers' connections stay readable so that
        // their ACKs can free memory.
        let mut blocked = false;
        let far = Duration::from_secs(3600);
        let mut send_ticker = tokio::time::interval(self.send_every.unwrap_or(far));
        send_ticker.tick().await;
        let mut check_ticker = tokio::time::interval(self.expect_every.map_or(far, |e| e / 2));
        check_ticker.tick().await;
        let mut last_read = Instant::now();

        // Frames that arrived right behind CONNECT.
        if !self.process(&mut buf) {
            self.finish_receipts(&mut log_synced).await;
            return;
        }
        loop {
            tokio::select! {
                read = rd.read_buf(&mut buf), if !blocked => {
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => entry.stats.received(n),
                    }
                    last_read = Instant::now();
                    if !self.process(&mut buf) {
                        self.finish_receipts(&mut log_synced).await;
                        return;
                    }
                    // Only a SEND in this very read counts, so a connection that published
                    // long ago and now only consumes stays readable.
                    let published = std::mem::take(&mut self.session.published);
                    if published && self.broker.memory.alarm() {
                        blocked = true;
                    }
                }
                _ = self.outbox.drained.notified() => self.session.wake_subscriptions(),
                _ = crate::store::log::synced_changed(&mut log_synced), if self.session.receipts_pending() => {
                    self.session.flush_receipts();
                }
                _ = self.outbox.writer_done.notified() => return,
                _ = send_ticker.tick(), if self.send_every.is_some() => {
                    self.outbox.push(|out| out.extend_from_slice(b"\n"));
                }
                _ = check_ticker.tick(), if self.expect_every.is_some() => {
                    // Two missed heart-beats mean a dead peer. A blocked connection is not
                    // read, so its silence proves nothing.
                    if let Some(every) = self.expect_every {
                        if !blocked && last_read.elapsed() > every * 2 {
                            tracing::info!(peer = %self.peer, "STOMP client missed heart-beats, closing");
                            return;
                        }
                    }
                }
                changed = alarm.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    if !*alarm.borrow_and_update() {
                        blocked = false;
                        last_read = Instant::now();
                    }
                }
                _ = shutdown.changed() => {
                    let e = StompError::new("Server shutdown", "The broker is shutting down.");
                    send_error(&self.outbox, self.session.version(), &e, None);
                    return;
                }
                why = entry.forced() => {
                    let e = StompError::new("Connection closed by the broker", why);
                    send_error(&self.outbox, self.session.version(), &e, None);
                    return;
                }
            }
        }
    }

    /// Before closing after DISCONNECT: sends the receipts still waiting for the log (bounded,
    /// so a stuck disk cannot hold the connection forever).
    async fn finish_receipts(
        &mut self,
        log_synced: &mut Option<tokio::sync::watch::Receiver<u64>>,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.session.flush_receipts() {
            if tokio::time::timeout_at(deadline, crate::store::log::synced_changed(log_synced))
                .await
                .is_err()
            {
                return;
            }
        }
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
