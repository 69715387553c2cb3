//! The MQTT 3.1 / 3.1.1 / 5.0 adapter: one listener for every version; sessions, QoS 0/1/2
//! flows, retained messages and wills on top of the routing core (DESIGN.md).
//!
//! - `connect`: CONNECT rules, auth, session takeover; `connection`: the steady-state loop and
//!   packet handlers; `delivery`: the consumer sinks and the sending side of a session;
//!   `publish`: the one place publishes enter the core and are acknowledged; `session`,
//!   `retained`, `registry`: the adapter's plain-data state; `convert`: MQTT ⇄ core mapping;
//!   `subscribe`: SUBSCRIBE/UNSUBSCRIBE and shared subscription groups; `release`: the end
//!   of a connection (offline session, expiry, will).

mod connect;
mod connection;
pub mod convert;
mod delivery;
mod error;
pub mod persist;
mod publish;
pub mod registry;
mod release;
pub mod retained;
pub mod session;
mod subscribe;

use crate::adapter::outbox::Outbox;
use crate::core::Broker;
use bytes::BytesMut;
use connection::{Connection, Ending};
use delivery::{ClientLimits, Link};
use error::Refusal;
use publish::Publisher;
use registry::{lock, MqttState, SessionKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_mqtt::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::timeout;

/// Time a client has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the writer gets to flush the last packets.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves a connection over any byte stream (TCP, TLS, WebSocket later).
pub async fn serve_stream<R, W>(mut rd: R, wr: W, peer: SocketAddr, broker: Arc<Broker>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let entry = broker.register_connection("mqtt", peer);
    let (outbox, writer) = Outbox::start(wr, &broker.memory);
    let mut buf = BytesMut::new();
    let max_connect = broker.config.mqtt.max_connect_size as usize;
    match timeout(CONNECT_TIMEOUT, read_first(&mut rd, &mut buf, max_connect)).await {
        Err(_) => tracing::info!(%peer, "no MQTT CONNECT in time"),
        Ok(Err(None)) => {}
        Ok(Err(Some(e))) => {
            tracing::info!(%peer, error = %e, "bad MQTT CONNECT");
            if let DecodeError::UnsupportedProtocolLevel(level) = e {
                // A newer client most likely reads a v5 CONNACK; older ones the 3.1.1 form.
                let (protocol, code) = if level > 5 {
                    (Protocol::V5, reason::UNSUPPORTED_PROTOCOL_VERSION)
                } else {
                    (Protocol::V311, reason::V3_UNACCEPTABLE_PROTOCOL_VERSION)
                };
                send_connack(&outbox, protocol, false, code, Properties::default());
            }
        }
        Ok(Ok(Packet::Connect(c))) => {
            handshake_and_run(*c, &mut rd, buf, &outbox, &entry, peer, &broker).await
        }
        Ok(Ok(other)) => {
            tracing::info!(%peer, packet = other.name(), "first MQTT packet is not CONNECT");
        }
    }
    outbox.close();
    let _ = timeout(CLOSE_TIMEOUT, writer).await;
    broker.unregister_connection(entry.id);
    tracing::debug!(%peer, "MQTT connection closed");
}

/// Reads until one packet is decoded. `Err(None)`: the peer closed or the socket failed.
async fn read_first<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Packet, Option<DecodeError>> {
    loop {
        // CONNECT decodes the same at every version; the version passed here does not matter.
        if let Some(p) = decode(buf, Protocol::V311, max).map_err(Some)? {
            return Ok(p);
        }
        if buf.first().is_some_and(|b| b >> 4 != 1) {
            // Not a CONNECT: no need to wait for the rest of it.
            tracing::info!("first MQTT packet is not CONNECT");
            return Err(None);
        }
        if buf.capacity() - buf.len() < 128 {
            buf.reserve(512);
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

fn send_connack(outbox: &Outbox, protocol: Protocol, present: bool, code: u8, props: Properties) {
    let packet = Packet::ConnAck(ConnAck {
        session_present: present,
        code,
        properties: props,
    });
    outbox.push(|out| {
        let _ = encode(&packet, protocol, out);
    });
}

async fn handshake_and_run<R: AsyncRead + Unpin>(
    c: Connect,
    rd: &mut R,
    buf: BytesMut,
    outbox: &Arc<Outbox>,
    entry: &Arc<crate::core::broker::ConnectionEntry>,
    peer: SocketAddr,
    broker: &Arc<Broker>,
) {
    let state = MqttState::for_broker(broker);
    let protocol = c.protocol;
    let attached = async {
        let (client_id, assigned) = connect::client_id(&c, broker)?;
        let (vhost, user) = connect::authenticate(broker, &c, peer)?;
        let key = SessionKey {
            vhost: vhost.name.clone(),
            client_id,
        };
        connect::attach(&state, vhost, user, key, assigned, c.clean_start, entry.id).await
    }
    .await;
    let attached = match attached {
        Ok(a) => a,
        Err(r) => {
            refuse(outbox, protocol, &r, peer);
            return;
        }
    };
    let cfg = &broker.config.mqtt;
    let v5 = protocol.is_v5();
    let requested_expiry = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = requested_expiry.min(cfg.max_session_expiry_interval);
    lock(&attached.session).expiry_interval = expiry;
    let keep_alive = if v5 && cfg.server_keep_alive > 0 {
        cfg.server_keep_alive
    } else {
        c.keep_alive
    };
    let limits = ClientLimits {
        protocol,
        max_packet_size: c
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        // Below 65535 so that a free packet id always exists.
        in_flight: usize::from(
            c.properties
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(cfg.max_inflight)
                .clamp(1, u16::MAX - 1),
        ),
        topic_alias_max: if v5 {
            c.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        pending: cfg.max_offline_messages,
    };
    let mut props = Properties::default();
    if v5 {
        if expiry != requested_expiry {
            props.session_expiry_interval = Some(expiry);
        }
        props.receive_maximum = Some(cfg.receive_maximum.max(1));
        props.maximum_packet_size = Some(cfg.max_packet_size.max(1));
        props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        if attached.assigned_id {
            props.assigned_client_identifier = Some(attached.key.client_id.clone());
        }
        if keep_alive != c.keep_alive {
            props.server_keep_alive = Some(keep_alive);
        }
    }
    // MQTT 3.1's CONNACK has no session-present flag (the byte is reserved).
    let session_present = attached.session_present && protocol != Protocol::V31;
    send_connack(outbox, protocol, session_present, reason::SUCCESS, props);
    if let Ok(mut s) = entry.session.lock() {
        *s = Some((attached.user.clone(), attached.vhost.name.clone()));
    }
    tracing::debug!(%peer, client = %attached.key.client_id, ?protocol, "MQTT connection opened");
    let link = Link::new(
        attached.session.clone(),
        outbox.clone(),
        attached.key.client_id.clone(),
        limits,
    );
    let publisher = Publisher {
        broker: broker.clone(),
        state: state.clone(),
        vhost: attached.vhost.clone(),
        client_id: attached.key.client_id.clone(),
    };
    let mut conn = Connection {
        broker: broker.clone(),
        state,
        entry: entry.clone(),
        outbox: outbox.clone(),
        protocol,
        publisher,
        link,
        consumer_id: broker.next_id(),
        will: c.will,
        keep_alive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
        inbound_aliases: HashMap::new(),
        problem_info: c.properties.request_problem_information != Some(0),
        published: false,
        shared: HashMap::new(),
        held_acks: Default::default(),
        attached,
    };
    conn.start_delivery();
    let ending: Ending = conn.run(rd, buf).await;
    conn.finish(ending);
}

fn refuse(outbox: &Outbox, protocol: Protocol, r: &Refusal, peer: SocketAddr) {
    tracing::info!(%peer, reason = %r, "MQTT CONNECT refused");
    let mut props = Properties::default();
    if protocol.is_v5() {
        props.reason_string = Some(r.text.clone());
    }
    send_connack(outbox, protocol, false, r.code(protocol), props);
}
