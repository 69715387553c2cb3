//! MQTT 3.1.1 and STOMP 1.2 clients for fault tests: every call gives up quietly (`None`) when
//! the broker goes away, is killed or stops answering within [`WAIT`], so that a workload can
//! reconnect instead of failing the test. Built on our codecs, as the panicking clients of
//! [`super::mqtt`] and [`super::stomp`] are.

use super::mqtt::connect_packet;
use super::WAIT;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use switchboard_mqtt as mqtt;
use switchboard_stomp as stomp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tcp(addr: SocketAddr) -> Option<TcpStream> {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = s.set_nodelay(true);
    Some(s)
}

pub struct MqttWire {
    stream: TcpStream,
    buf: BytesMut,
}

impl MqttWire {
    /// Connects as guest; `None` unless the CONNACK accepts.
    pub async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> Option<MqttWire> {
        let mut w = MqttWire {
            stream: tcp(addr).await?,
            buf: BytesMut::new(),
        };
        let c = connect_packet(mqtt::Protocol::V311, client_id, clean);
        w.send(&mqtt::Packet::Connect(Box::new(c))).await?;
        match w.recv(WAIT).await? {
            mqtt::Packet::ConnAck(a) if a.code == 0 => Some(w),
            _ => None,
        }
    }

    pub async fn send(&mut self, p: &mqtt::Packet) -> Option<()> {
        let mut out = BytesMut::new();
        mqtt::encode(p, mqtt::Protocol::V311, &mut out).ok()?;
        tokio::time::timeout(WAIT, self.stream.write_all(&out))
            .await
            .ok()?
            .ok()
    }

    /// The next packet within `wait`; `None` on timeout, close or a bad packet.
    pub async fn recv(&mut self, wait: Duration) -> Option<mqtt::Packet> {
        loop {
            if let Some(p) = mqtt::decode(&mut self.buf, mqtt::Protocol::V311, usize::MAX).ok()? {
                return Some(p);
            }
            let n = tokio::time::timeout(wait, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// A QoS 1 PUBLISH, answered by its PUBACK.
    pub async fn publish_qos1(&mut self, topic: &str, id: u16, payload: &[u8]) -> Option<()> {
        let p = super::mqtt::publish_packet(topic, mqtt::QoS::AtLeastOnce, id, payload);
        self.send(&mqtt::Packet::Publish(p)).await?;
        loop {
            if let mqtt::Packet::PubAck(a) = self.recv(WAIT).await? {
                if a.packet_id == id {
                    return Some(());
                }
            }
        }
    }

    /// SUBSCRIBE at QoS 1; `Some` once the SUBACK grants it.
    pub async fn subscribe_qos1(&mut self, filter: &str) -> Option<()> {
        self.send(&mqtt::Packet::Subscribe(mqtt::Subscribe {
            packet_id: 1,
            properties: mqtt::Properties::default(),
            subscriptions: vec![mqtt::Subscription {
                filter: filter.into(),
                options: mqtt::SubscriptionOptions {
                    qos: mqtt::QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
        }))
        .await?;
        loop {
            if let mqtt::Packet::SubAck(a) = self.recv(WAIT).await? {
                return (a.packet_id == 1 && a.codes.iter().all(|c| *c < 0x80)).then_some(());
            }
        }
    }

    pub async fn puback(&mut self, id: u16) -> Option<()> {
        self.send(&mqtt::Packet::PubAck(mqtt::PubResponse::new(id)))
            .await
    }
}

pub struct StompWire {
    stream: TcpStream,
    buf: BytesMut,
    decoder: stomp::Decoder,
}

impl StompWire {
    /// CONNECT as guest to vhost `/` with 1.2; `None` unless CONNECTED.
    pub async fn connect(addr: SocketAddr) -> Option<StompWire> {
        let mut w = StompWire {
            stream: tcp(addr).await?,
            buf: BytesMut::new(),
            decoder: stomp::Decoder::new(),
        };
        w.send(
            &stomp::Frame::new(stomp::Command::Connect)
                .with("accept-version", "1.2")
                .with("host", "/")
                .with("login", "guest")
                .with("passcode", "guest"),
        )
        .await?;
        (w.recv(WAIT).await?.command == stomp::Command::Connected).then_some(w)
    }

    pub async fn send(&mut self, f: &stomp::Frame) -> Option<()> {
        let mut out = BytesMut::new();
        stomp::encode(f, stomp::Version::V1_2, &mut out);
        tokio::time::timeout(WAIT, self.stream.write_all(&out))
            .await
            .ok()?
            .ok()
    }

    /// The next frame within `wait`; `None` on timeout, close or a bad frame.
    pub async fn recv(&mut self, wait: Duration) -> Option<stomp::Frame> {
        loop {
            stomp::skip_heartbeats(&mut self.buf);
            if let Some(f) = self
                .decoder
                .decode(
                    &mut self.buf,
                    stomp::Version::V1_2,
                    &stomp::Limits::default(),
                )
                .ok()?
            {
                return Some(f);
            }
            let n = tokio::time::timeout(wait, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Sends `f` with receipt `id` and waits for that RECEIPT; `None` on an ERROR.
    pub async fn request(&mut self, f: stomp::Frame, id: &str) -> Option<()> {
        self.send(&f.with("receipt", id)).await?;
        loop {
            let got = self.recv(WAIT).await?;
            match got.command {
                stomp::Command::Receipt if got.header("receipt-id") == Some(id) => return Some(()),
                stomp::Command::Error => return None,
                _ => {}
            }
        }
    }
}
