//! A minimal AMQP 0-9-1 client for load generation, built on our codec: handshake, one channel,
//! and raw frame reads and batched writes. It trades features for speed, so the load generator
//! is not the bottleneck it measures.

use super::transport::{self, BenchTls, ReadHalf, WriteHalf};
use bytes::BytesMut;
use std::net::SocketAddr;
use switchboard_amqp::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("broker closed the connection")]
    Closed,
    #[error("unexpected method {0}")]
    Unexpected(&'static str),
}

pub struct BenchClient {
    rd: ReadHalf,
    pub wr: WriteHalf,
    buf: BytesMut,
    pub frame_max: u32,
}

/// Channel used for all traffic.
pub const CH: u16 = 1;

impl BenchClient {
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<&BenchTls>,
        user: &str,
        password: &str,
    ) -> Result<Self, ClientError> {
        let (rd, wr) = transport::connect_split(addr, tls).await?;
        let mut c = BenchClient {
            rd,
            wr,
            buf: BytesMut::with_capacity(256 * 1024),
            frame_max: 131_072,
        };
        c.wr.write_all(PROTOCOL_HEADER).await?;
        c.expect_method().await?; // connection.start
        let response = format!("\0{user}\0{password}");
        c.send(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: response.into_bytes().into(),
                locale: "en_US".into(),
            },
        )
        .await?;
        let Method::ConnectionTune(tune) = c.expect_method().await? else {
            return Err(ClientError::Unexpected("expected connection.tune"));
        };
        c.frame_max = tune.frame_max;
        c.send(
            0,
            ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            },
        )
        .await?;
        c.send(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            },
        )
        .await?;
        c.expect_method().await?; // open-ok
        c.send(CH, ChannelOpen {}).await?;
        c.expect_method().await?; // channel.open-ok
        Ok(c)
    }

    pub async fn send(
        &mut self,
        channel: u16,
        method: impl Into<Method>,
    ) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &method.into());
        self.wr.write_all(&out).await?;
        Ok(())
    }

    /// Sends a method and returns the next method the broker sends.
    pub async fn call(&mut self, method: impl Into<Method>) -> Result<Method, ClientError> {
        self.send(CH, method).await?;
        self.expect_method().await
    }

    async fn expect_method(&mut self) -> Result<Method, ClientError> {
        loop {
            match self.next_frame().await? {
                Frame::Method { method, .. } => {
                    if let Method::ConnectionClose(c) = &method {
                        tracing::error!(code = c.reply_code, text = %c.reply_text, "broker closed");
                        return Err(ClientError::Closed);
                    }
                    return Ok(method);
                }
                _ => continue,
            }
        }
    }

    pub async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 0)? {
                return Ok(f);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Every complete frame buffered now, reading once if none is.
    pub async fn frames(&mut self, out: &mut Vec<Frame>) -> Result<(), ClientError> {
        read_frames(&mut self.rd, &mut self.buf, out).await
    }

    /// Splits into a frame reader and the write half, for a publisher that reads its confirms
    /// on another task.
    pub fn into_split(self) -> (BenchReader, WriteHalf, u32) {
        (
            BenchReader {
                rd: self.rd,
                buf: self.buf,
            },
            self.wr,
            self.frame_max,
        )
    }
}

/// The read side of a split [`BenchClient`].
pub struct BenchReader {
    rd: ReadHalf,
    buf: BytesMut,
}

impl BenchReader {
    pub async fn frames(&mut self, out: &mut Vec<Frame>) -> Result<(), ClientError> {
        read_frames(&mut self.rd, &mut self.buf, out).await
    }
}

async fn read_frames(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    out: &mut Vec<Frame>,
) -> Result<(), ClientError> {
    out.clear();
    loop {
        while let Some(f) = decode_frame(buf, 0)? {
            out.push(f);
        }
        if !out.is_empty() {
            return Ok(());
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}
