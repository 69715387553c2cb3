//! MQTT test clients: a hand-driven one over a plain socket (built on our codec, for exact
//! packets and misbehaviour) and rumqttc 3.1.1 / 5 clients whose events arrive on a channel.

use super::bounded;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use switchboard_mqtt::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Over TCP by default; any byte stream (in-memory, TLS) with [`RawMqtt::over`].
pub struct RawMqtt<S = TcpStream> {
    pub stream: S,
    pub protocol: Protocol,
    buf: BytesMut,
}

impl RawMqtt {
    pub async fn tcp(addr: SocketAddr, protocol: Protocol) -> Self {
        let stream = bounded(TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        RawMqtt::over(stream, protocol)
    }

    /// Connects and sends CONNECT built from `connect`, returning the CONNACK.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Self, ConnAck) {
        let c = Self::tcp(addr, connect.protocol).await;
        c.handshake(connect).await
    }

    /// Connects as guest and expects success.
    pub async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        clean: bool,
    ) -> Self {
        let (c, ack) = Self::connect_with(addr, connect_packet(protocol, client_id, clean)).await;
        assert_eq!(ack.code, 0, "CONNACK {ack:?}");
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawMqtt<S> {
    /// A client on `stream` that has sent nothing yet.
    pub fn over(stream: S, protocol: Protocol) -> Self {
        RawMqtt {
            stream,
            protocol,
            buf: BytesMut::new(),
        }
    }

    /// Sends CONNECT built from `connect`, returning the CONNACK.
    pub async fn handshake(mut self, connect: Connect) -> (Self, ConnAck) {
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Some(Packet::ConnAck(a)) => (self, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, self.protocol, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        bounded(self.stream.write_all(b)).await.expect("write");
    }

    /// The next packet, or None once the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.protocol, usize::MAX)
                .expect("broker sent a valid packet")
            {
                return Some(p);
            }
            let n = bounded(self.stream.read_buf(&mut self.buf))
                .await
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Waits until the broker closes the connection, skipping packets; returns the last one.
    pub async fn closed(&mut self) -> Option<Packet> {
        let mut last = None;
        while let Some(p) = self.recv().await {
            last = Some(p);
        }
        last
    }

    pub async fn publish(&mut self, topic: &str, qos: QoS, id: u16, payload: &[u8]) {
        self.send(&Packet::Publish(publish_packet(topic, qos, id, payload)))
            .await;
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(
            1,
            vec![Subscription {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            Properties::default(),
        )
        .await
    }

    pub async fn subscribe_with(
        &mut self,
        packet_id: u16,
        subscriptions: Vec<Subscription>,
        properties: Properties,
    ) -> SubAck {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            subscriptions,
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next PUBLISH (other packets are a test failure).
    pub async fn next_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Proves nothing more arrives: a PINGREQ is answered by the PINGRESP alone.
    pub async fn expect_nothing_pending(&mut self) {
        self.send(&Packet::PingReq).await;
        match self.recv().await {
            Some(Packet::PingResp) => {}
            other => panic!("expected only PINGRESP, got {other:?}"),
        }
    }
}

pub fn connect_packet(protocol: Protocol, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: Some("guest".into()),
        password: Some(Bytes::from_static(b"guest")),
        properties: Properties::default(),
    }
}

pub fn publish_packet(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A rumqttc 3.1.1 client; incoming packets arrive on `rx` until the connection ends.
pub struct V3Client {
    pub client: rumqttc::AsyncClient,
    pub rx: mpsc::UnboundedReceiver<rumqttc::Packet>,
}

impl V3Client {
    pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Self {
        let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_clean_session(clean);
        o.set_credentials("guest", "guest");
        o.set_keep_alive(Duration::from_secs(30));
        Self::connect_opts(o).await
    }

    pub async fn connect_opts(o: rumqttc::MqttOptions) -> Self {
        let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // No reconnects: the first error ends the client.
            while let Ok(ev) = el.poll().await {
                if let rumqttc::Event::Incoming(p) = ev {
                    if tx.send(p).is_err() {
                        break;
                    }
                }
            }
        });
        match bounded(rx.recv()).await {
            Some(rumqttc::Packet::ConnAck(a)) => {
                assert_eq!(a.code, rumqttc::ConnectReturnCode::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        V3Client { client, rx }
    }

    pub async fn next(&mut self) -> Option<rumqttc::Packet> {
        bounded(self.rx.recv()).await
    }

    /// The next PUBLISH, skipping acks.
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.next().await {
                Some(rumqttc::Packet::Publish(p)) => return p,
                Some(_) => continue,
                None => panic!("connection ended before a PUBLISH"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        loop {
            match self.next().await {
                Some(rumqttc::Packet::SubAck(_)) => return,
                Some(_) => continue,
                None => panic!("connection ended before SUBACK"),
            }
        }
    }
}

pub use rumqttc::v5::mqttbytes::v5 as v5p;

/// A rumqttc MQTT 5 client.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    pub rx: mpsc::UnboundedReceiver<v5p::Packet>,
    pub connack: v5p::ConnAck,
    /// The error that ended the event loop (a server DISCONNECT arrives as one).
    pub ended: tokio::sync::oneshot::Receiver<rumqttc::v5::ConnectionError>,
}

impl V5Client {
    pub fn options(addr: SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_credentials("guest", "guest");
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(addr: SocketAddr, id: &str) -> Self {
        Self::connect_opts(Self::options(addr, id)).await
    }

    pub async fn connect_opts(o: rumqttc::v5::MqttOptions) -> Self {
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (end_tx, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = end_tx.send(e);
                        break;
                    }
                }
            }
        });
        let connack = match bounded(rx.recv()).await {
            Some(v5p::Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        assert_eq!(connack.code, v5p::ConnectReturnCode::Success);
        V5Client {
            client,
            rx,
            connack,
            ended,
        }
    }

    pub async fn next(&mut self) -> Option<v5p::Packet> {
        bounded(self.rx.recv()).await
    }

    pub async fn next_publish(&mut self) -> v5p::Publish {
        loop {
            match self.next().await {
                Some(v5p::Packet::Publish(p)) => return p,
                Some(_) => continue,
                None => panic!("connection ended before a PUBLISH"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.wait_suback().await;
    }

    pub async fn wait_suback(&mut self) -> v5p::SubAck {
        loop {
            match self.next().await {
                Some(v5p::Packet::SubAck(a)) => return a,
                Some(_) => continue,
                None => panic!("connection ended before SUBACK"),
            }
        }
    }
}

/// One SUBSCRIBE (or UNSUBSCRIBE) packet carries this many filters.
const PER_PACKET: usize = 500;

/// Connects a clean MQTT session, subscribes `n` filters, unsubscribes half, disconnects, and
/// waits for its queue to be gone; how long the broker took.
pub async fn session_with_subscriptions(
    addr: SocketAddr,
    broker: &switchboard::core::Broker,
    n: usize,
) -> Duration {
    let t = std::time::Instant::now();
    let c = RawMqtt::tcp(addr, Protocol::V311).await;
    let (c, queue) = subscribed_session(c, n).await;
    leave_session(c, broker, &queue).await;
    t.elapsed()
}

/// A QoS 1 subscription to each of `filters`, for a SUBSCRIBE.
pub fn qos1_subscriptions(filters: &[String]) -> Vec<Subscription> {
    filters
        .iter()
        .map(|f| Subscription {
            filter: f.clone(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        })
        .collect()
}

/// Sends CONNECT for a new clean session on `c`, subscribes `n` filters (`dev/<i>/+/temp`),
/// unsubscribes half of them again; the client and the name of the session's queue.
pub async fn subscribed_session<S: AsyncRead + AsyncWrite + Unpin>(
    c: RawMqtt<S>,
    n: usize,
) -> (RawMqtt<S>, String) {
    let id = super::unique("many-subs");
    let (mut c, ack) = c.handshake(connect_packet(Protocol::V311, &id, true)).await;
    assert_eq!(ack.code, 0, "CONNACK {ack:?}");
    let filters: Vec<String> = (0..n).map(|i| format!("dev/{i}/+/temp")).collect();
    for (p, chunk) in filters.chunks(PER_PACKET).enumerate() {
        let ack = c
            .subscribe_with(
                p as u16 + 1,
                qos1_subscriptions(chunk),
                Properties::default(),
            )
            .await;
        assert!(ack.codes.iter().all(|&code| code == 1), "all granted");
    }
    for (p, chunk) in filters.chunks(PER_PACKET).step_by(2).enumerate() {
        c.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: p as u16 + 1,
            properties: Properties::default(),
            filters: chunk.to_vec(),
        }))
        .await;
        assert!(matches!(c.recv().await, Some(Packet::UnsubAck(_))));
    }
    (c, format!("mqtt-subscription-{id}qos1"))
}

/// Sends DISCONNECT, waits for the broker to close the connection and to delete `queue`.
pub async fn leave_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut c: RawMqtt<S>,
    broker: &switchboard::core::Broker,
    queue: &str,
) {
    c.send(&Packet::Disconnect(Disconnect {
        reason: 0,
        properties: Properties::default(),
    }))
    .await;
    assert!(c.closed().await.is_none());
    let vh = broker.vhost("/").expect("vhost /");
    super::wait_until("the session's queue deleted", || vh.queue(queue).is_none()).await;
}
