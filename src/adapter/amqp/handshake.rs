//! The connection handshake: protocol header, start/start-ok (SASL PLAIN or AMQPLAIN),
//! tune/tune-ok and open/open-ok.

use super::error::*;
use crate::adapter::outbox::Outbox;
use crate::core::access::{tag, AuthError};
use crate::core::{Broker, VHost};
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use switchboard_amqp::*;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the handshake settled.
#[derive(Debug)]
pub struct Negotiated {
    pub user: String,
    /// The user may set `user_id` to another user's name (RabbitMQ's `impersonator` tag).
    pub impersonator: bool,
    pub vhost: Arc<VHost>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

/// Why a handshake ended without an open connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client sent an unsupported protocol header {0:?}")]
    BadHeader(Vec<u8>),
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(AmqpError),
    #[error("authentication failed: {0}")]
    Auth(AuthError),
}

impl From<AmqpError> for HandshakeError {
    fn from(e: AmqpError) -> Self {
        HandshakeError::Protocol(e)
    }
}

/// Reads frames during the handshake.
pub struct FrameReader<'a, R> {
    pub socket: &'a mut R,
    pub buf: &'a mut BytesMut,
    pub frame_max: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<'_, R> {
    async fn next_method(&mut self) -> Result<Method, HandshakeError> {
        loop {
            match decode_frame(self.buf, self.frame_max).map_err(AmqpError::from)? {
                Some(Frame::Method { channel: 0, method }) => return Ok(method),
                Some(Frame::Heartbeat { .. }) => continue,
                Some(other) => {
                    return Err(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        format!(
                            "expected a connection method on channel 0 during the handshake, got \
                             a frame on channel {}",
                            other.channel()
                        ),
                    )
                    .into())
                }
                None => {
                    if self.socket.read_buf(self.buf).await? == 0 {
                        return Err(HandshakeError::Closed);
                    }
                }
            }
        }
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap.into(), FieldValue::Bool(true));
    }
    let mut props = FieldTable::new();
    props.insert("capabilities".into(), FieldValue::Table(caps));
    props.insert("product".into(), FieldValue::string("Switchboard"));
    props.insert(
        "version".into(),
        FieldValue::string(env!("CARGO_PKG_VERSION")),
    );
    props.insert("platform".into(), FieldValue::string("Rust"));
    props.insert("cluster_name".into(), FieldValue::string("switchboard"));
    props.insert(
        "information".into(),
        FieldValue::string("Switchboard message broker: AMQP 0-9-1, MQTT, STOMP"),
    );
    props.insert(
        "copyright".into(),
        FieldValue::string("The Switchboard authors"),
    );
    props
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.get("capabilities") {
        Some(FieldValue::Table(caps)) => caps.get(name).and_then(|v| v.as_bool()) == Some(true),
        _ => false,
    }
}

/// Parses a SASL response into (user, password).
fn credentials(mechanism: &str, response: &[u8]) -> Result<(String, String), AmqpError> {
    let bad = |why: &str| AmqpError::connection(ACCESS_REFUSED, why);
    match mechanism {
        // PLAIN: [authzid] NUL authcid NUL passwd
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let (_authz, user, pass) = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(u), Some(p)) => (a, u, p),
                _ => return Err(bad("malformed PLAIN response")),
            };
            Ok((
                String::from_utf8_lossy(user).into_owned(),
                String::from_utf8_lossy(pass).into_owned(),
            ))
        }
        // AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD.
        "AMQPLAIN" => {
            let mut framed = BytesMut::with_capacity(response.len() + 4);
            framed.extend_from_slice(
                &u32::try_from(response.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            framed.extend_from_slice(response);
            let mut slice: &[u8] = &framed;
            let table = decode_table(&mut slice).map_err(|_| bad("malformed AMQPLAIN response"))?;
            let text = |k: &str| {
                table
                    .get(k)
                    .and_then(|v| match v {
                        FieldValue::LongString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                        _ => None,
                    })
                    .ok_or_else(|| bad("AMQPLAIN response lacks LOGIN or PASSWORD"))
            };
            Ok((text("LOGIN")?, text("PASSWORD")?))
        }
        other => Err(AmqpError::connection(
            ACCESS_REFUSED,
            format!("unsupported authentication mechanism '{other}'; use PLAIN or AMQPLAIN"),
        )),
    }
}

fn expect<T>(
    got: Method,
    want: &str,
    pick: impl FnOnce(Method) -> Option<T>,
) -> Result<T, HandshakeError> {
    let name = got.name();
    pick(got).ok_or_else(|| {
        AmqpError::connection(
            COMMAND_INVALID,
            format!("expected {want} during the handshake, got {name}"),
        )
        .into()
    })
}

/// Runs the handshake from the protocol header to `connection.open-ok`. `cert_name`: the
/// common name of the client's verified TLS certificate, which SASL EXTERNAL logs in as.
pub async fn handshake<R: AsyncRead + Unpin>(
    socket: &mut R,
    buf: &mut BytesMut,
    outbox: &Outbox,
    broker: &Broker,
    peer: SocketAddr,
    cert_name: Option<&str>,
) -> Result<Negotiated, HandshakeError> {
    while buf.len() < PROTOCOL_HEADER.len() {
        if socket.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
    if &buf[..8] != PROTOCOL_HEADER {
        let got = buf[..8].to_vec();
        outbox.push(|out| out.extend_from_slice(PROTOCOL_HEADER));
        return Err(HandshakeError::BadHeader(got));
    }
    buf.advance(8);
    let config = &broker.config.amqp;
    let start = ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties: server_properties(),
        // EXTERNAL (the certificate's common name, as RabbitMQ's rabbitmq_auth_mechanism_ssl)
        // only where there is a verified client certificate.
        mechanisms: if cert_name.is_some() {
            "PLAIN AMQPLAIN EXTERNAL".into()
        } else {
            "PLAIN AMQPLAIN".into()
        },
        locales: "en_US".into(),
    };
    outbox.push(|out| encode_method(out, 0, &start.into()));

    let mut reader = FrameReader {
        socket,
        buf,
        frame_max: config.frame_max,
    };
    let start_ok = expect(
        reader.next_method().await?,
        "connection.start-ok",
        |m| match m {
            Method::ConnectionStartOk(s) => Some(s),
            _ => None,
        },
    )?;
    let auth_failure_close =
        client_capability(&start_ok.client_properties, "authentication_failure_close");
    let authenticated = match (start_ok.mechanism.as_str(), cert_name) {
        ("EXTERNAL", Some(cn)) => broker.access.trusted(cn, peer.ip()),
        _ => {
            let (user, password) = credentials(&start_ok.mechanism, &start_ok.response)?;
            broker.access.authenticate(&user, &password, peer.ip())
        }
    };
    let user = match authenticated {
        Ok(u) => {
            broker.auth_throttle.succeeded(peer.ip());
            u
        }
        Err(e) => {
            broker.auth_throttle.failed(peer.ip()).await;
            if auth_failure_close {
                let close = ConnectionClose {
                    reply_code: ACCESS_REFUSED,
                    reply_text: format!(
                        "ACCESS_REFUSED - Login was refused using authentication mechanism {}. {e}",
                        start_ok.mechanism
                    ),
                    class_id: 10,
                    method_id: 11,
                };
                outbox.push(|out| encode_method(out, 0, &close.into()));
            }
            return Err(HandshakeError::Auth(e));
        }
    };

    let tune = ConnectionTune {
        channel_max: config.channel_max,
        frame_max: config.frame_max,
        heartbeat: broker.config.amqp.heartbeat,
    };
    outbox.push(|out| encode_method(out, 0, &tune.into()));
    let tune_ok = expect(
        reader.next_method().await?,
        "connection.tune-ok",
        |m| match m {
            Method::ConnectionTuneOk(t) => Some(t),
            _ => None,
        },
    )?;
    let frame_max = match (tune_ok.frame_max, config.frame_max) {
        (0, s) => s,
        (c, 0) => c,
        (c, s) => c.min(s),
    };
    if frame_max != 0 && frame_max < FRAME_MIN_SIZE {
        return Err(AmqpError::connection(
            NOT_ALLOWED,
            format!("frame_max={frame_max} < {FRAME_MIN_SIZE} min size"),
        )
        .into());
    }
    if config.frame_max != 0 && tune_ok.frame_max > config.frame_max {
        return Err(AmqpError::connection(
            NOT_ALLOWED,
            format!(
                "frame_max={} > {} max size",
                tune_ok.frame_max, config.frame_max
            ),
        )
        .into());
    }
    let channel_max = match tune_ok.channel_max {
        0 => config.channel_max,
        c => c.min(config.channel_max.max(1)),
    };
    reader.frame_max = frame_max;

    let open = expect(
        reader.next_method().await?,
        "connection.open",
        |m| match m {
            Method::ConnectionOpen(o) => Some(o),
            _ => None,
        },
    )?;
    let Some(vhost) = broker.vhost(&open.virtual_host) else {
        return Err(AmqpError::connection(
            NOT_ALLOWED,
            // RabbitMQ's text, unquoted.
            format!("vhost {} not found", open.virtual_host),
        )
        .during(10, 40)
        .into());
    };
    if let Err(refused) = broker.access.check_vhost(&vhost.name, &user.name) {
        return Err(AmqpError::connection(NOT_ALLOWED, refused.0)
            .during(10, 40)
            .into());
    }
    outbox.push(|out| encode_method(out, 0, &ConnectionOpenOk {}.into()));
    Ok(Negotiated {
        impersonator: user.has_tag(tag::IMPERSONATOR),
        user: user.name,
        vhost,
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        consumer_cancel_notify: client_capability(
            &start_ok.client_properties,
            "consumer_cancel_notify",
        ),
        connection_blocked: client_capability(&start_ok.client_properties, "connection.blocked"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_credentials() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret").unwrap(),
            ("guest".into(), "secret".into())
        );
        assert!(credentials("PLAIN", b"guest").is_err());
        let mut t = FieldTable::new();
        t.insert("LOGIN".into(), FieldValue::string("u"));
        t.insert("PASSWORD".into(), FieldValue::string("p"));
        let mut enc = BytesMut::new();
        encode_table(&mut enc, &t);
        assert_eq!(
            credentials("AMQPLAIN", &enc[4..]).unwrap(),
            ("u".into(), "p".into())
        );
        assert_eq!(
            credentials("EXTERNAL", b"").unwrap_err().code,
            ACCESS_REFUSED
        );
    }
}
