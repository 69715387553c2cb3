//! A small STOMP client over a plain TCP socket, built on the `switchboard_stomp` codec: enough
//! to drive the broker frame by frame, including frames no client library would send.

use super::{bounded, WAIT};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use switchboard_stomp::{encode, Command, Decoder, Frame, Limits, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Over TCP by default; any byte stream (in-memory, TLS) with [`StompClient::over`].
pub struct StompClient<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
    decoder: Decoder,
    pub version: Version,
    /// Frames read while waiting for something else (a RECEIPT).
    pending: VecDeque<Frame>,
    next_receipt: u64,
    /// Heart-beat EOLs seen so far.
    pub heartbeats: usize,
}

impl StompClient {
    /// A TCP connection with no STOMP spoken yet.
    pub async fn tcp(addr: SocketAddr) -> Self {
        let stream = bounded(TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        StompClient::over(stream)
    }

    /// Sends CONNECT with `headers` and returns the answer (CONNECTED or ERROR).
    pub async fn connect_with(addr: SocketAddr, headers: &[(&str, &str)]) -> (Self, Frame) {
        Self::tcp(addr).await.handshake(headers).await
    }

    /// Connects as guest, accepting `version` ("1.0", "1.1" or "1.2").
    pub async fn connect(addr: SocketAddr, version: &str) -> Self {
        let (c, answer) = Self::connect_with(
            addr,
            &[
                ("accept-version", version),
                ("host", "/"),
                ("login", "guest"),
                ("passcode", "guest"),
            ],
        )
        .await;
        assert_eq!(answer.command, Command::Connected, "{answer:?}");
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> StompClient<S> {
    /// A client on `stream` that has sent nothing yet.
    pub fn over(stream: S) -> Self {
        StompClient {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(),
            version: Version::V1_2,
            pending: VecDeque::new(),
            next_receipt: 1,
            heartbeats: 0,
        }
    }

    /// Sends CONNECT with `headers` and returns the answer (CONNECTED or ERROR).
    pub async fn handshake(mut self, headers: &[(&str, &str)]) -> (Self, Frame) {
        let mut f = Frame::new(Command::Connect);
        for (k, v) in headers {
            f = f.with(*k, *v);
        }
        self.send_frame(&f).await;
        let answer = self.recv().await.expect("an answer to CONNECT");
        if let Some(v) = answer.header("version").and_then(Version::parse) {
            self.version = v;
        }
        (self, answer)
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        bounded(self.stream.write_all(bytes)).await.expect("write");
    }

    pub async fn send_frame(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        encode(frame, self.version, &mut out);
        self.send_bytes(&out).await;
    }

    /// The next frame, or None when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            self.heartbeats += switchboard_stomp::skip_heartbeats(&mut self.buf);
            if let Some(f) = self
                .decoder
                .decode(&mut self.buf, self.version, &Limits::default())
                .expect("server frame decodes")
            {
                return Some(f);
            }
            match bounded(self.stream.read_buf(&mut self.buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame, which must be a `command`.
    pub async fn expect(&mut self, command: Command) -> Frame {
        let f = self
            .recv()
            .await
            .unwrap_or_else(|| panic!("connection closed, expected {command}"));
        assert_eq!(f.command, command, "{f:?}");
        f
    }

    /// Sends `frame` with a fresh `receipt` and waits for its RECEIPT; frames arriving before
    /// it are kept for [`recv`](Self::recv). Panics on ERROR.
    pub async fn request(&mut self, frame: Frame) {
        let id = format!("r-{}", self.next_receipt);
        self.next_receipt += 1;
        self.send_frame(&frame.with("receipt", id.clone())).await;
        loop {
            let f = self
                .read_frame()
                .await
                .expect("connection closed awaiting a RECEIPT");
            match f.command {
                Command::Receipt if f.header("receipt-id") == Some(&id) => return,
                Command::Error => panic!(
                    "ERROR instead of RECEIPT: {f:?} {:?}",
                    String::from_utf8_lossy(&f.body)
                ),
                _ => self.pending.push_back(f),
            }
        }
    }

    /// Sends `frame` and expects an ERROR frame followed by the server closing the connection.
    pub async fn expect_error(&mut self, frame: Frame) -> Frame {
        self.send_frame(&frame).await;
        let err = self.expect(Command::Error).await;
        self.expect_closed().await;
        err
    }

    /// Reads until the server closes; frames other than ERROR are not expected.
    pub async fn expect_closed(&mut self) {
        while let Some(f) = self.recv().await {
            assert_eq!(
                f.command,
                Command::Error,
                "unexpected frame before close: {f:?}"
            );
        }
    }

    pub async fn subscribe(&mut self, id: &str, destination: &str, ack: &str) {
        self.subscribe_with(id, destination, ack, &[]).await;
    }

    pub async fn subscribe_with(
        &mut self,
        id: &str,
        destination: &str,
        ack: &str,
        extra: &[(&str, &str)],
    ) {
        let mut f = Frame::new(Command::Subscribe)
            .with("id", id)
            .with("destination", destination)
            .with("ack", ack);
        for (k, v) in extra {
            f = f.with(*k, *v);
        }
        self.request(f).await;
    }

    /// SEND with a receipt.
    pub async fn send(&mut self, destination: &str, body: &[u8], extra: &[(&str, &str)]) {
        let mut f = Frame::new(Command::Send)
            .with("destination", destination)
            .with_body(body.to_vec());
        for (k, v) in extra {
            f = f.with(*k, *v);
        }
        self.request(f).await;
    }

    /// SENDs `n` messages with bodies `<prefix>0`, `<prefix>1`, …, each with a receipt.
    pub async fn send_numbered(&mut self, destination: &str, prefix: &str, n: usize) {
        for i in 0..n {
            self.send(destination, format!("{prefix}{i}").as_bytes(), &[])
                .await;
        }
    }

    /// The next MESSAGE.
    pub async fn message(&mut self) -> Frame {
        self.expect(Command::Message).await
    }

    /// Reads until `n` heart-beats in all have arrived; panics on a frame or a close, and
    /// after [`WAIT`].
    pub async fn wait_heartbeats(&mut self, n: usize) {
        let wait = async {
            while self.heartbeats < n {
                self.heartbeats += switchboard_stomp::skip_heartbeats(&mut self.buf);
                if self.heartbeats >= n {
                    break;
                }
                assert!(self.buf.is_empty(), "a frame instead of heart-beats");
                let read = self.stream.read_buf(&mut self.buf).await.expect("read");
                assert!(read > 0, "closed while waiting for heart-beats");
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("heart-beats in time");
    }

    /// Asserts that no frame (other than heart-beats) arrives within `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        assert!(self.pending.is_empty(), "pending: {:?}", self.pending);
        let got = tokio::time::timeout(quiet, self.read_frame()).await;
        assert!(got.is_err(), "unexpected frame: {got:?}");
    }

    /// ACK (1.2: by the MESSAGE's `ack`; earlier versions by `message-id` + `subscription`).
    pub async fn ack(&mut self, message: &Frame, command: Command, extra: &[(&str, &str)]) {
        let mut f = Frame::new(command);
        if self.version == Version::V1_2 {
            f = f.with("id", message.header("ack").expect("ack header"));
        } else {
            f = f
                .with(
                    "message-id",
                    message.header("message-id").expect("message-id"),
                )
                .with("subscription", message.header("subscription").unwrap_or(""));
        }
        for (k, v) in extra {
            f = f.with(*k, *v);
        }
        self.request(f).await;
    }

    pub async fn disconnect(mut self) {
        self.request(Frame::new(Command::Disconnect)).await;
        let closed = tokio::time::timeout(WAIT, self.read_frame()).await;
        assert!(
            matches!(closed, Ok(None)),
            "server closes after DISCONNECT: {closed:?}"
        );
    }
}

/// The body of a frame as text.
pub fn text(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}
