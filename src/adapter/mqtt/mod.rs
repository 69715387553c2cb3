//! The MQTT 3.1 / 3.1.1 / 5.0 adapter: one listener for every version; sessions, QoS 0/1/2
//! flows, retained messages and wills on top of the routing core (DESIGN.md).
//!
//! - `connect`: CONNECT rules, auth, session takeover; `connection`: the steady-state loop and
//!   packet handlers; `delivery`: the consumer sinks and the sending side of a session;
//!   `publish`: the one place publishes enter the core and are acknowledged; `session`,
//!   `retained`, `registry`: the adapter's plain-data state; `convert`: MQTT ⇄ core mapping;
//!   `subscribe`: SUBSCRIBE/UNSUBSCRIBE and shared subscription groups; `release`: the end
//!   of a connection (offline session, expiry, will); `discard`: a going session's
//!   subscriptions removed a slice at a time.

mod cluster_will;
mod connect;
mod connection;
pub mod convert;
mod delivery;
mod discard;
mod error;
mod flow;
mod permit;
pub mod persist;
mod publish;
pub mod registry;
mod release;
pub mod replica;
pub mod retained;
pub mod session;
mod state_writer;
mod subscribe;

use crate::adapter::outbox::Outbox;
use crate::core::Broker;
use crate::net::driver::{Check, Driver, Liveness, ReadPolicy, WriteMode};
use bytes::BytesMut;
use connection::{Connection, Ending};
use delivery::{ClientLimits, Link};
use error::Refusal;
use publish::Publisher;
use registry::{Handover, MqttState, Owner, SessionKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_mqtt::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::timeout;

/// Time a client has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed connection's input is still read and discarded, at most (see
/// [`Driver::finish_lingering`]).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves a connection over any byte stream (TCP, TLS, WebSocket later).
///
/// The connection's task lives as long as the client stays connected, so its future is kept
/// small: the handshake (CONNECT, authentication, session takeover) runs in a boxed future that
/// is freed before the steady-state loop starts, and the connection's state is boxed too. An
/// idle connection then holds only what it needs (issue 7: memory per idle connection).
pub async fn serve_stream<R, W>(
    rd: R,
    wr: W,
    peer: SocketAddr,
    cert_name: Option<String>,
    broker: Arc<Broker>,
    state: Arc<MqttState>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // This task writes too (no writer task): one task per connection.
    let mut driver = Driver::new(
        "mqtt",
        rd,
        wr,
        peer,
        &broker,
        ReadPolicy::Lean {
            idle: connection::IDLE_READ_RESERVE,
            busy: connection::READ_RESERVE,
        },
        WriteMode::Inline,
    );
    let opened = Box::pin(open(
        &mut driver.reader,
        &mut driver.read.buf,
        &driver.outbox,
        &driver.entry,
        cert_name,
        &broker,
        state,
    ))
    .await;
    if let Some(mut conn) = opened {
        driver.run(&mut *conn).await;
        let ending: Ending = conn.ending;
        // Boxed: ending a session with many subscriptions yields, and its state would
        // otherwise grow every connection's future.
        Box::pin(conn.finish(ending)).await;
    }
    // Lingering close: a client may still be writing (PUBRELs for the PUBRECs it reads before
    // our DISCONNECT).
    driver.finish_lingering(LINGER_TIMEOUT).await;
    tracing::debug!(%peer, "MQTT connection closed");
}

/// Reads the CONNECT and answers it: the established connection and the bytes read past the
/// CONNECT, or `None` when the connection is refused or gone.
async fn open<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    outbox: &Arc<Outbox>,
    entry: &Arc<crate::core::broker::ConnectionEntry>,
    // Owned, so that it lives in the boxed handshake future only (see `serve_stream`).
    cert_name: Option<String>,
    broker: &Arc<Broker>,
    state: Arc<MqttState>,
) -> Option<Box<Connection>> {
    let peer = entry.peer;
    let max_connect = broker.config.mqtt.max_connect_size as usize;
    match timeout(CONNECT_TIMEOUT, read_first(rd, buf, max_connect)).await {
        Err(_) => tracing::info!(%peer, "no MQTT CONNECT in time"),
        Ok(Err(None)) => {}
        Ok(Err(Some(e))) => {
            tracing::info!(%peer, error = %e, "bad MQTT CONNECT");
            crate::net::websocket::closing_because(crate::net::websocket::Cause::ProtocolError);
            if let DecodeError::UnsupportedProtocolLevel(level) = e {
                // A newer client most likely reads a v5 CONNACK; older ones the 3.1.1 form.
                let (protocol, code) = if level > 5 {
                    (Protocol::V5, reason::UNSUPPORTED_PROTOCOL_VERSION)
                } else {
                    (Protocol::V311, reason::V3_UNACCEPTABLE_PROTOCOL_VERSION)
                };
                send_connack(outbox, protocol, false, code, Properties::default());
            }
        }
        Ok(Ok(Packet::Connect(c))) => {
            return handshake(*c, outbox, entry, peer, cert_name.as_deref(), broker, state).await;
        }
        Ok(Ok(other)) => {
            tracing::info!(%peer, packet = other.name(), "first MQTT packet is not CONNECT");
            crate::net::websocket::closing_because(crate::net::websocket::Cause::ProtocolError);
        }
    }
    None
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

/// Authenticates, attaches the session and sends the CONNACK: the established connection, or
/// `None` when refused.
async fn handshake(
    c: Connect,
    outbox: &Arc<Outbox>,
    entry: &Arc<crate::core::broker::ConnectionEntry>,
    peer: SocketAddr,
    cert_name: Option<&str>,
    broker: &Arc<Broker>,
    state: Arc<MqttState>,
) -> Option<Box<Connection>> {
    let protocol = c.protocol;
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
    let attached = async {
        let (client_id, assigned) = connect::client_id(&c, broker)?;
        let (vhost, user) = match connect::authenticate(broker, &c, peer, cert_name) {
            Ok(authenticated) => {
                broker.auth_throttle.succeeded(peer.ip());
                authenticated
            }
            Err(e) => {
                broker.auth_throttle.failed(peer.ip()).await;
                return Err(e);
            }
        };
        if let Some(will) = &c.will {
            // As RabbitMQ: a will the user could not publish is refused at CONNECT.
            permit::permit_publish(broker, &vhost.name, &user, &client_id, &will.topic)
                .map_err(|r| error::Refusal::not_authorized(r.0))?;
        }
        let key = SessionKey {
            vhost: vhost.name.clone(),
            client_id,
        };
        let me = Owner {
            conn_id: entry.id,
            handover: Arc::new(Handover::new(outbox.clone())),
        };
        let wanted = connect::Wanted {
            assigned_id: assigned,
            clean_start: c.clean_start,
            expiry,
            will: cluster_will::claimed(broker, &key, entry.id, c.will.as_ref(), expiry),
        };
        connect::attach(&state, broker, vhost, user, key, wanted, me).await
    }
    .await;
    let attached = match attached {
        Ok(a) => a,
        Err(r) => {
            refuse(outbox, protocol, &r, peer, cfg.refusal_reason);
            return None;
        }
    };
    let keep_alive = granted_keep_alive(v5, c.keep_alive, cfg);
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
    if let Ok(mut id) = entry.client_id.lock() {
        id.clone_from(&attached.key.client_id);
    }
    tracing::debug!(%peer, client = %attached.key.client_id, ?protocol, "MQTT connection opened");
    let link = Link::new(
        attached.session.clone(),
        outbox.clone(),
        attached.key.client_id.clone(),
        limits,
        expiry > 0,
        broker.timer.clone(),
    );
    let publisher = Publisher {
        broker: broker.clone(),
        state: state.clone(),
        vhost: attached.vhost.clone(),
        client_id: attached.key.client_id.as_str().into(),
        exchange: Default::default(),
    };
    let mut conn = Box::new(Connection {
        broker: broker.clone(),
        state,
        entry: entry.clone(),
        outbox: outbox.clone(),
        protocol,
        publisher,
        link,
        consumer_id: broker.next_id(),
        will: c.will.map(Box::new),
        // The keep alive is enforced at 1.5 times its value (MQTT 3.1.2.10).
        liveness: Liveness::new(
            None,
            (keep_alive > 0).then(|| {
                (
                    Check::AtExpiry,
                    Duration::from_millis(u64::from(keep_alive) * 1500),
                )
            }),
            crate::net::driver::now(&broker.timer),
        ),
        blocked: false,
        flow: flow::Flow::new(outbox.clone(), broker.config.mqtt.flow_backlog),
        ending: Ending::Abnormal,
        acks: BytesMut::new(),
        redispatch: false,
        inbound_aliases: HashMap::new(),
        problem_info: c.properties.request_problem_information != Some(0),
        published: false,
        shared: HashMap::new(),
        held: Default::default(),
        held_publishes: Default::default(),
        publish_verdicts: Default::default(),
        unfinished: None,
        // A session that ends with its connection has nothing for another node to resume.
        cluster_state: (expiry > 0)
            .then(|| state_writer::StateWriter::start(broker, &attached.key, entry.id, outbox))
            .flatten(),
        attached,
    });
    conn.start_delivery();
    Some(conn)
}

/// The keep alive a client gets: `server_keep_alive` imposed on v5 clients when set; else the
/// client's own, shortened to `max_keep_alive` for a v5 client that asked for a longer one (or
/// none), as Mosquitto's `max_keepalive` and Paho's test broker do. A v3 client cannot be told,
/// so it keeps its own.
fn granted_keep_alive(v5: bool, asked: u16, cfg: &crate::config::MqttConfig) -> u16 {
    if !v5 {
        asked
    } else if cfg.server_keep_alive > 0 {
        cfg.server_keep_alive
    } else if cfg.max_keep_alive > 0 && (asked == 0 || asked > cfg.max_keep_alive) {
        cfg.max_keep_alive
    } else {
        asked
    }
}

fn refuse(
    outbox: &Outbox,
    protocol: Protocol,
    r: &Refusal,
    peer: SocketAddr,
    how: crate::config::RefusalReason,
) {
    tracing::info!(%peer, reason = %r, "MQTT CONNECT refused");
    // v3's return codes are v5's reasons under other numbers. A refusal is by policy unless
    // its reason says otherwise.
    use crate::net::websocket::{closing_because, Cause};
    match connection::ws_cause(r.code(Protocol::V5)) {
        Cause::Normal => closing_because(Cause::Policy),
        cause => closing_because(cause),
    }
    let (code, text) = r.answer(protocol, how);
    let props = PropertyValues {
        reason_string: text,
        ..Default::default()
    };
    send_connack(outbox, protocol, false, code, props.into());
}

#[cfg(test)]
mod tests {
    use super::granted_keep_alive;
    use crate::config::MqttConfig;

    #[test]
    fn keep_alive_is_capped_or_imposed_for_v5_only() {
        let capped = MqttConfig {
            max_keep_alive: 60,
            ..MqttConfig::default()
        };
        assert_eq!(granted_keep_alive(true, 120, &capped), 60);
        assert_eq!(granted_keep_alive(true, 0, &capped), 60, "none is longer");
        assert_eq!(granted_keep_alive(true, 5, &capped), 5);
        assert_eq!(granted_keep_alive(false, 120, &capped), 120);
        let imposed = MqttConfig {
            server_keep_alive: 30,
            ..capped
        };
        assert_eq!(granted_keep_alive(true, 5, &imposed), 30);
        assert_eq!(granted_keep_alive(true, 7, &MqttConfig::default()), 7);
    }

    /// Every connected client holds one of these futures for as long as it stays connected
    /// (issue 7: an idle connection's memory). The handshake's state (a decoded CONNECT is
    /// 840 bytes) must not stay in it: it made the future 4.7 KB before it was boxed apart.
    /// The bound has room for the driver's read slicing (a capped read buffer and the bytes
    /// read since the last yield, 24 bytes), which every connection needs, and for what
    /// session 7's merge added together (1,376 bytes measured): the driver's deadline on the
    /// broker's clock, the ingress's publish outcome and the boxed, yielding session end.
    #[test]
    fn the_connection_future_stays_small() {
        let broker = crate::core::Broker::new(
            crate::config::Config::load(None).expect("the embedded default parses"),
        );
        let peer: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        let state = std::sync::Arc::new(super::MqttState::new(
            &broker.config.mqtt,
            broker.memory.clone(),
        ));
        let connection = super::serve_stream(
            tokio::io::empty(),
            tokio::io::sink(),
            peer,
            None,
            broker,
            state,
        );
        let size = std::mem::size_of_val(&connection);
        assert!(size <= 1384, "MQTT connection future is {size} bytes");
    }
}
