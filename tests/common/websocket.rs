//! WebSocket test clients (tokio-tungstenite): the upgrade at a path with the subprotocols
//! offered, over TCP or any stream (TLS), and the next message with a bounded wait.

use super::bounded;
use futures_util::StreamExt;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

#[allow(unused_imports)]
pub use switchboard::net::websocket::WsBytes;

/// The upgrade on `stream` to `path`, offering `subprotocols` (none: no header).
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    subprotocols: &[&str],
) -> Result<(WebSocketStream<S>, Response), Error> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if !subprotocols.is_empty() {
        let offer = subprotocols.join(", ").parse().expect("header value");
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, offer);
    }
    bounded(tokio_tungstenite::client_async(request, stream)).await
}

/// A WebSocket over TCP to `addr` at `path`.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    subprotocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, Response), Error> {
    let tcp = bounded(TcpStream::connect(addr))
        .await
        .expect("tcp connect");
    upgrade(tcp, addr, path, subprotocols).await
}

/// A WebSocket at `/ws` that the server accepted, with the subprotocol it chose.
pub async fn open(
    addr: SocketAddr,
    subprotocols: &[&str],
) -> (WebSocketStream<TcpStream>, Option<String>) {
    let (ws, response) = connect(addr, "/ws", subprotocols)
        .await
        .expect("WebSocket upgrade");
    let chosen = response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (ws, chosen)
}

/// The HTTP status the server refused the upgrade with.
pub async fn refusal(addr: SocketAddr, path: &str, subprotocols: &[&str]) -> u16 {
    match connect(addr, path, subprotocols).await {
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade was accepted"),
    }
}

/// The next message, or None once the WebSocket is closed.
pub async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<Message> {
    match bounded(ws.next()).await {
        Some(Ok(m)) => Some(m),
        Some(Err(Error::ConnectionClosed | Error::AlreadyClosed)) | None => None,
        Some(Err(e)) => panic!("WebSocket failed: {e}"),
    }
}
