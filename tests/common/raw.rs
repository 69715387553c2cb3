//! A hand-driven AMQP client over a plain TCP socket, built on the `switchboard_amqp` codec, for
//! tests that send what no well-behaved client library would.

use super::bounded;
use bytes::BytesMut;
use std::net::SocketAddr;
use switchboard_amqp::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Over TCP by default; any byte stream (in-memory, TLS) with [`RawClient::over`].
pub struct RawClient<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = bounded(TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        RawClient::over(stream)
    }

    /// Connects and runs the client side of the handshake: PLAIN guest/guest, the server's tune
    /// values with `heartbeat`, vhost "/".
    pub async fn open(addr: SocketAddr, heartbeat: u16) -> Self {
        Self::connect(addr).await.handshake(heartbeat).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    /// A client on `stream` that has sent nothing yet.
    pub fn over(stream: S) -> Self {
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The client side of the handshake: PLAIN guest/guest, the server's tune values with
    /// `heartbeat`, vhost "/".
    pub async fn handshake(mut self, heartbeat: u16) -> Self {
        let c = &mut self;
        c.send_bytes(PROTOCOL_HEADER).await;
        match c.recv_method().await {
            (0, Method::ConnectionStart(s)) => {
                assert!(String::from_utf8_lossy(&s.mechanisms).contains("PLAIN"));
            }
            other => panic!("expected connection.start, got {other:?}"),
        }
        c.send(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: bytes::Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
            },
        )
        .await;
        let tune = match c.recv_method().await {
            (0, Method::ConnectionTune(t)) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        c.send(
            0,
            ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat,
            },
        )
        .await;
        c.send(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            },
        )
        .await;
        match c.recv_method().await {
            (0, Method::ConnectionOpenOk(_)) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        self
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        bounded(self.stream.write_all(bytes)).await.expect("write");
    }

    pub async fn send(&mut self, channel: u16, method: impl Into<Method>) {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &method.into());
        self.send_bytes(&out).await;
    }

    /// The next frame from the server; None once it closed the socket.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 0).expect("server sent a valid frame") {
                return Some(f);
            }
            match bounded(self.stream.read_buf(&mut self.buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next method frame (heartbeats skipped), as (channel, method).
    pub async fn recv_method(&mut self) -> (u16, Method) {
        loop {
            match self.recv().await {
                Some(Frame::Method { channel, method }) => return (channel, method),
                Some(Frame::Heartbeat { .. }) => continue,
                Some(other) => panic!("expected a method frame, got {other:?}"),
                None => panic!("server closed the socket"),
            }
        }
    }

    /// Opens channel `channel` and waits for its open-ok.
    pub async fn open_channel(&mut self, channel: u16) {
        self.send(channel, ChannelOpen {}).await;
        match self.recv_method().await {
            (c, Method::ChannelOpenOk(_)) if c == channel => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Reads until the server's `connection.close`, answers it with close-ok, and returns it.
    pub async fn expect_connection_close(&mut self) -> ConnectionClose {
        loop {
            if let (0, Method::ConnectionClose(c)) = self.recv_method().await {
                self.send(0, ConnectionCloseOk {}).await;
                return c;
            }
        }
    }

    /// Everything the server sends until it closes the socket.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = self.buf.split().to_vec();
        bounded(self.stream.read_to_end(&mut out))
            .await
            .expect("read");
        out
    }

    /// Waits until the server closed the socket, discarding anything it sends.
    pub async fn expect_eof(&mut self) {
        let mut scratch = [0u8; 4096];
        loop {
            match bounded(self.stream.read(&mut scratch)).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// A `basic.publish` on channel 1 (to the default exchange, key "nowhere") whose content header
/// announces a body of `announced` bytes, and body frames up to about `sent` bytes of it: a
/// body that will never be finished.
pub fn unfinished_publish(announced: u64, sent: usize) -> BytesMut {
    let mut out = BytesMut::new();
    let publish = BasicPublish {
        exchange: "".into(),
        routing_key: "nowhere".into(),
        ..Default::default()
    };
    encode_method(&mut out, 1, &publish.into());
    encode_header(&mut out, 1, announced, &BasicProperties::default());
    let chunk = vec![7u8; 128 * 1024 - 8];
    while out.len() < sent {
        encode_body(&mut out, 1, &chunk);
    }
    out
}
