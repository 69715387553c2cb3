//! WebSocket transports, as RabbitMQ's Web MQTT and Web STOMP plugins: the HTTP upgrade at
//! `/ws` with the protocol's subprotocols, then the WebSocket as a plain byte stream under the
//! driver, so that no protocol knows it runs on WebSocket. Data messages (binary or text) are
//! read as one stream of bytes, whatever the protocol frames' boundaries; each write leaves as
//! one binary message; pings are answered by tungstenite; the session's end closes the
//! WebSocket with the RFC 6455 code of why it ended ([`Cause`]): what the protocol adapters,
//! the driver and this transport learn is recorded by [`closing_because`] for the connection's task.
//!
//! What tungstenite holds outside the driver's read buffer is memory the client controls (a
//! frame whose end has not arrived, the frames of an unfinished message, a whole message up to
//! the protocol's frame limit): it is charged to the memory monitor as the driver charges its
//! own buffer, so that many clients each sending most of a big message trip the watermark.

use crate::core::memory::{MemoryCharge, MemoryMonitor};
use bytes::Bytes;
use futures_util::{Sink, Stream};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The one path served, as RabbitMQ's plugins (`web_mqtt.ws_path`, `web_stomp.ws_path`).
pub const PATH: &str = "/ws";

/// Time a client has for the HTTP upgrade, as for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a WebSocket listener accepts for its protocol.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// Subprotocols served, any of which the client may pick (the first it offers is echoed).
    subprotocols: &'static [&'static str],
    /// Whether a client that offers no subprotocol is refused (RabbitMQ's Web MQTT refuses it;
    /// its Web STOMP does not).
    subprotocol_required: bool,
    /// Largest WebSocket message (and frame): the protocol's own frame limit, since a message
    /// is buffered whole before its bytes reach the driver.
    max_message_size: usize,
}

impl Endpoint {
    pub fn mqtt(max_packet_size: usize) -> Self {
        Endpoint {
            subprotocols: &["mqtt", "mqttv3.1"],
            subprotocol_required: true,
            max_message_size: max_packet_size,
        }
    }

    pub fn stomp(max_frame_size: usize) -> Self {
        Endpoint {
            subprotocols: &["v12.stomp", "v11.stomp", "v10.stomp"],
            subprotocol_required: false,
            max_message_size: max_frame_size,
        }
    }

    /// The subprotocol to echo for the client's `Sec-WebSocket-Protocol` headers: `Ok(None)`
    /// when it offered none (and none is required), `Err` when nothing it offered is served.
    fn choose(&self, request: &Request) -> Result<Option<&'static str>, ()> {
        let mut offered = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .peekable();
        if offered.peek().is_none() {
            return if self.subprotocol_required {
                Err(())
            } else {
                Ok(None)
            };
        }
        offered
            .find_map(|p| self.subprotocols.iter().find(|s| s.eq_ignore_ascii_case(p)))
            .map(|s| Some(*s))
            .ok_or(())
    }

    /// The upgrade's answer: 404 for another path, 400 for no served subprotocol.
    #[allow(
        clippy::result_large_err,
        reason = "the type of tungstenite's callback"
    )]
    fn answer(&self, request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
        if request.uri().path() != PATH {
            return Err(refusal(StatusCode::NOT_FOUND, "WebSocket path is /ws"));
        }
        match self.choose(request) {
            Ok(Some(p)) => {
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
                Ok(response)
            }
            Ok(None) => Ok(response),
            Err(()) => Err(refusal(
                StatusCode::BAD_REQUEST,
                &format!(
                    "subprotocol must be one of {}",
                    self.subprotocols.join(", ")
                ),
            )),
        }
    }

    /// The WebSocket handshake on an accepted stream (bounded); `None` when it failed, which is
    /// logged. What the WebSocket then holds of unfinished input is charged to `memory`.
    #[allow(
        clippy::result_large_err,
        reason = "the type of tungstenite's callback"
    )]
    pub async fn accept<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        memory: &Arc<MemoryMonitor>,
    ) -> Option<WsBytes<Counted<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size));
        let (stream, ingress) = Counted::new(stream);
        let handshake = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            |request: &Request, response| self.answer(request, response),
            Some(config),
        );
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(ws)) => {
                // The upgrade request is answered and gone; what follows it is the client's.
                ingress.store(0, Ordering::Relaxed);
                let mut ws = WsBytes::from(ws);
                ws.held = Some(HeldInput {
                    ingress,
                    charge: memory.charge(0),
                });
                Some(ws)
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "WebSocket handshake failed");
                None
            }
            Err(_) => {
                tracing::info!(%peer, "WebSocket handshake timed out");
                None
            }
        }
    }
}

/// Why a connection ended, as its WebSocket close code says it (RFC 6455, 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cause {
    /// 1000: the session ended as the protocol ends it (DISCONNECT, a keep-alive timeout).
    Normal = 1,
    /// 1001: the broker is shutting down.
    GoingAway,
    /// 1002: the peer broke the protocol (bad framing, a malformed frame).
    ProtocolError,
    /// 1008: refused by policy (authentication or authorisation).
    Policy,
    /// 1009: a message or frame over the limit.
    TooBig,
    /// 1011: the broker failed.
    Internal,
}

impl Cause {
    fn code(self) -> CloseCode {
        match self {
            Cause::Normal => CloseCode::Normal,
            Cause::GoingAway => CloseCode::Away,
            Cause::ProtocolError => CloseCode::Protocol,
            Cause::Policy => CloseCode::Policy,
            Cause::TooBig => CloseCode::Size,
            Cause::Internal => CloseCode::Error,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        [
            Cause::Normal,
            Cause::GoingAway,
            Cause::ProtocolError,
            Cause::Policy,
            Cause::TooBig,
            Cause::Internal,
        ]
        .into_iter()
        .find(|e| *e as u8 == v)
    }
}

/// The first [`Cause`] recorded for one WebSocket connection (what is learnt first is the
/// cause; what follows, such as the socket's end, is its consequence).
#[derive(Debug, Default)]
pub struct CloseReason(AtomicU8);

impl CloseReason {
    pub fn set(&self, cause: Cause) {
        let _ = self
            .0
            .compare_exchange(0, cause as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Cause> {
        Cause::from_u8(self.0.load(Ordering::Relaxed))
    }
}

tokio::task_local! {
    /// The close reason of the WebSocket connection the current task serves.
    static REASON: Arc<CloseReason>;
}

/// Records why the connection the current task serves ends, for its close frame; nothing on
/// other transports, where no close code exists.
pub fn closing_because(cause: Cause) {
    let _ = REASON.try_with(|r| r.set(cause));
}

/// Runs `serve` (a connection's session over `ws`) with [`closing_because`] recording into `ws`'s reason.
pub async fn serve_with_reason<F: std::future::Future>(
    reason: Arc<CloseReason>,
    serve: F,
) -> F::Output {
    REASON.scope(reason, serve).await
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = status;
    response
}

/// A stream that counts the bytes read from it, into a counter its owner shares: how much
/// tungstenite has read of what it has not yet returned as a message.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    read: Arc<AtomicUsize>,
}

impl<S> Counted<S> {
    fn new(inner: S) -> (Self, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        (
            Counted {
                inner,
                read: read.clone(),
            },
            read,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read
            .fetch_add(buf.filled().len() - before, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The input a server's WebSocket holds outside the driver, and its charge.
#[derive(Debug)]
struct HeldInput {
    /// Bytes read from the stream since tungstenite last returned a message: the unfinished
    /// frame or message. What tungstenite read past a message it returned (at most one read,
    /// 128 KiB) is not counted, like the driver buffer's spare room.
    ingress: Arc<AtomicUsize>,
    /// Those bytes plus the unread rest of the last data message.
    charge: MemoryCharge,
}

/// A WebSocket as a byte stream (what the driver reads and writes).
#[derive(Debug)]
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// What the reader has not taken yet of the last data message.
    unread: Bytes,
    /// On a server's WebSocket: what it holds of the client's input, charged.
    held: Option<HeldInput>,
    /// The length of the write whose message is queued but not yet written through.
    queued: Option<usize>,
    /// Whether our close frame is queued (shutdown may be polled more than once).
    close_sent: bool,
    /// Why the connection ends: the close frame's code.
    reason: Arc<CloseReason>,
}

impl<S> WsBytes<S> {
    /// Why the connection ends, shared with whoever learns it ([`serve_with_reason`]).
    pub fn reason(&self) -> Arc<CloseReason> {
        self.reason.clone()
    }
}

impl<S> From<WebSocketStream<S>> for WsBytes<S> {
    /// Either side's WebSocket (a client's too, as in the tests).
    fn from(ws: WebSocketStream<S>) -> Self {
        WsBytes {
            ws,
            unread: Bytes::new(),
            held: None,
            queued: None,
            close_sent: false,
            reason: Arc::default(),
        }
    }
}

/// What a failed read says about why the connection ends.
fn read_ending(e: &WsError) -> Cause {
    match e {
        WsError::Capacity(_) => Cause::TooBig,
        WsError::Protocol(_) | WsError::Utf8(_) => Cause::ProtocolError,
        _ => Cause::Internal,
    }
}

/// A closed WebSocket is the end of the stream; anything else the peer got wrong is bad data.
fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsBytes<S> {
    /// Reads messages until one has data (`true`) or the WebSocket ends (`false`).
    fn poll_unread(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.unread.is_empty() {
            let next = ready!(Pin::new(&mut self.ws).poll_next(cx));
            if let (Some(Ok(_)), Some(held)) = (&next, &self.held) {
                held.ingress.store(0, Ordering::Relaxed);
            }
            match next {
                Some(Ok(Message::Binary(data))) => self.unread = data,
                Some(Ok(Message::Text(text))) => self.unread = text.into(),
                // Pongs to pings are queued by tungstenite and sent on its next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The peer's close (tungstenite answers it) is the end of the stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(false)),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(false))
                }
                Some(Err(WsError::Io(e))) => return Poll::Ready(Err(e)),
                Some(Err(e)) => {
                    self.reason.set(read_ending(&e));
                    return Poll::Ready(Err(io_error(e)));
                }
            }
        }
        Poll::Ready(Ok(true))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = this.poll_unread(cx);
        if let Poll::Ready(Ok(true)) = polled {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
        }
        // Charged after every poll, pending ones too: a pending read is where an unfinished
        // message grows.
        if let Some(held) = &mut this.held {
            let bytes = held.ingress.load(Ordering::Relaxed) + this.unread.len();
            if bytes != held.charge.bytes() {
                held.charge.resize(bytes);
            }
        }
        polled.map_ok(|_| ())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    /// Accepts `buf` once its message is written through to the stream: the driver never
    /// flushes (TCP needs none), so nothing may wait in tungstenite's buffer. A write that
    /// returned `Pending` after its message was queued is finished by the next call, which
    /// the driver makes with the same bytes (the outbox's unwritten rest).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.queued.is_none() {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
            Pin::new(&mut this.ws)
                .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
                .map_err(io_error)?;
            this.queued = Some(buf.len());
        }
        ready!(Pin::new(&mut this.ws).poll_flush(cx)).map_err(io_error)?;
        Poll::Ready(Ok(this.queued.take().unwrap_or(0)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
            let close = CloseFrame {
                code: this.reason.get().unwrap_or(Cause::Normal).code(),
                reason: "".into(),
            };
            Pin::new(&mut this.ws)
                .start_send(Message::Close(Some(close)))
                .map_err(io_error)?;
            this.close_sent = true;
        }
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: &[&str]) -> Request {
        let mut b = Request::builder().uri("/ws");
        for p in protocols {
            b = b.header(header::SEC_WEBSOCKET_PROTOCOL, *p);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn the_first_served_subprotocol_offered_is_chosen() {
        let stomp = Endpoint::stomp(1024);
        let r = request(&["v11.stomp, v12.stomp"]);
        assert_eq!(stomp.choose(&r), Ok(Some("v11.stomp")));
        let r = request(&["chat", "V10.STOMP"]);
        assert_eq!(stomp.choose(&r), Ok(Some("v10.stomp")));
        assert_eq!(stomp.choose(&request(&[])), Ok(None));
        assert_eq!(stomp.choose(&request(&["mqtt"])), Err(()));
    }

    #[test]
    fn mqtt_needs_its_subprotocol() {
        let mqtt = Endpoint::mqtt(1024);
        assert_eq!(mqtt.choose(&request(&["mqtt"])), Ok(Some("mqtt")));
        assert_eq!(mqtt.choose(&request(&["mqttv3.1"])), Ok(Some("mqttv3.1")));
        assert_eq!(mqtt.choose(&request(&[])), Err(()));
        assert_eq!(mqtt.choose(&request(&["v12.stomp"])), Err(()));
    }
}
