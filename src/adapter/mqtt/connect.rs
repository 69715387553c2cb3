//! CONNECT: client id rules, authentication, taking over or creating the session, and the
//! CONNACK that answers it.

use super::discard::{discard, Discard};
use super::error::Refusal;
use super::registry::{lock, Handover, MqttState, Owner, SessionKey, SessionSlot};
use super::session::Session;
use crate::cluster::definitions::Change;
use crate::core::access::AuthError;
use crate::core::vhost::QueueSpec;
use crate::core::{Broker, Queue, VHost};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_amqp::{FieldTable, FieldValue};
use switchboard_mqtt::{Connect, Protocol};

/// How long a CONNECT waits for the connection it takes a session over from to let go.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A session held by a connection.
pub(super) struct Attached {
    pub vhost: Arc<VHost>,
    pub user: String,
    pub key: SessionKey,
    pub session: Arc<Mutex<Session>>,
    pub session_present: bool,
    pub generation: u64,
    /// The client id was assigned by the broker (v5 Assigned Client Identifier).
    pub assigned_id: bool,
    pub queue: Arc<Queue>,
    /// The queue was declared by this CONNECT (it has no bindings yet).
    pub queue_created: bool,
    pub handover: Arc<Handover>,
}

impl Drop for Attached {
    /// However the connection ends (even by a panic), a takeover waiting for it goes on.
    fn drop(&mut self) {
        self.handover.release();
    }
}

/// The vhost and user a CONNECT authenticates as. User names may be `vhost:user` (RabbitMQ's
/// form); without one the configured default vhost is used. No user name means the configured
/// anonymous user, from loopback only unless the configuration allows more.
/// The CONNECT's user name and password; without a user name, the TLS client certificate's
/// common name (`cert_name`) with `mqtt.ssl_cert_login`, else the anonymous user.
pub(super) fn authenticate(
    broker: &Broker,
    connect: &Connect,
    peer: SocketAddr,
    cert_name: Option<&str>,
) -> Result<(Arc<VHost>, String), Refusal> {
    let cfg = &broker.config.mqtt;
    if let Some(method) = &connect.properties.authentication_method {
        // Enhanced authentication (v5 AUTH exchanges) is not offered.
        return Err(Refusal::new(
            switchboard_mqtt::reason::V3_NOT_AUTHORIZED,
            switchboard_mqtt::reason::BAD_AUTHENTICATION_METHOD,
            format!("authentication method '{method}' is not supported"),
        ));
    }
    let (vhost, user, password) = match &connect.username {
        Some(name) => {
            let (vhost, user) = match name.split_once(':') {
                Some((v, u)) if !v.is_empty() => (v.to_owned(), u.to_owned()),
                _ => (cfg.default_vhost.clone(), name.clone()),
            };
            let password = connect
                .password
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            (vhost, user, Some(password))
        }
        // The certificate was verified against the CA: it stands for the password (RabbitMQ's
        // ssl_cert_login).
        None if cfg.ssl_cert_login && cert_name.is_some() => (
            cfg.default_vhost.clone(),
            cert_name.unwrap_or_default().to_owned(),
            None,
        ),
        None => {
            let Some(anon) = &cfg.anonymous_user else {
                return Err(Refusal::not_authorized(
                    "anonymous connections are not allowed",
                ));
            };
            if cfg.anonymous_loopback_only && !crate::core::access::is_loopback(peer.ip()) {
                return Err(Refusal::not_authorized(
                    "anonymous connections are allowed from loopback only",
                ));
            }
            // Acts as the configured user, with exactly its permissions (no password).
            (cfg.default_vhost.clone(), anon.clone(), None)
        }
    };
    let authenticated = match &password {
        Some(p) => broker.access.authenticate(&user, p, peer.ip()),
        None => broker.access.trusted(&user, peer.ip()),
    };
    match authenticated {
        Ok(_) => {}
        Err(AuthError::InvalidCredentials(_)) if password.is_none() => {
            return Err(Refusal::not_authorized("the anonymous user does not exist"))
        }
        Err(AuthError::InvalidCredentials(_)) => {
            return Err(Refusal::bad_credentials(format!(
                "user '{user}' - invalid credentials"
            )))
        }
        Err(e) => return Err(Refusal::not_authorized(e.to_string())),
    }
    let Some(vh) = broker.vhost(&vhost) else {
        return Err(Refusal::not_authorized(format!("no vhost '{vhost}'")));
    };
    // No permissions in the vhost: CONNACK 0x05 (3.1.1) / 0x87 (5), as RabbitMQ.
    broker
        .access
        .check_vhost(&vh.name, &user)
        .map_err(|r| Refusal::not_authorized(r.0))?;
    Ok((vh, user))
}

/// The client id to use: the client's, or one assigned when it sent none and may have one.
pub(super) fn client_id(connect: &Connect, broker: &Broker) -> Result<(String, bool), Refusal> {
    if !connect.client_id.is_empty() {
        return Ok((connect.client_id.clone(), false));
    }
    match connect.protocol {
        Protocol::V31 => Err(Refusal::identifier_rejected(
            "MQTT 3.1 requires a client identifier",
        )),
        Protocol::V311 if !connect.clean_start => Err(Refusal::identifier_rejected(
            "a persistent session needs a client identifier",
        )),
        _ => Ok((format!("switchboard-{}", broker.next_id()), true)),
    }
}

/// Queue name for a session's subscriptions.
pub(super) fn queue_name(client_id: &str) -> String {
    format!("mqtt-subscription-{client_id}")
}

/// The queue of a session: durable for a persistent session, so that what waits for its client
/// is in the message log, with `mqtt.max_offline_messages` as its length limit (oldest
/// dropped). A session that ends with its connection has no limit: its backlog is bounded by
/// flow control while it is connected, and a limit there would drop messages from a
/// subscriber that is merely slower than its publisher.
pub(super) fn session_queue_spec(broker: &Broker, client_id: &str, persistent: bool) -> QueueSpec {
    let mut arguments = FieldTable::new();
    if persistent {
        let limit = i64::try_from(broker.config.mqtt.max_offline_messages).unwrap_or(i64::MAX);
        arguments.insert("x-max-length".into(), FieldValue::I64(limit));
    }
    QueueSpec {
        name: queue_name(client_id),
        durable: persistent,
        arguments,
        ..Default::default()
    }
}

/// What a CONNECT asks of its session.
pub(super) struct Wanted {
    pub assigned_id: bool,
    pub clean_start: bool,
    /// The Session Expiry Interval granted (0: the session ends with the connection).
    pub expiry: u32,
    /// Clustered: what the claim of the client id commits for the connection's will.
    pub will: Option<Change>,
}

/// Takes the session for `key`: closes a connection that holds it (takeover), then resumes
/// it, or starts a new one when asked for a clean start or none exists.
pub(super) async fn attach(
    state: &Arc<MqttState>,
    broker: &Broker,
    vhost: Arc<VHost>,
    user: String,
    key: SessionKey,
    wanted: Wanted,
    me: Owner,
) -> Result<Attached, Refusal> {
    let Wanted {
        assigned_id,
        clean_start,
        expiry,
        will,
    } = wanted;
    // Clustered: the client id is claimed first, which closes a connection holding it on
    // another node.
    let persistent = !clean_start || expiry > 0;
    super::replica::claim(broker, &key, me.conn_id, persistent, will).await?;
    let deadline = tokio::time::Instant::now() + TAKEOVER_TIMEOUT;
    loop {
        let held = {
            let sessions = state.sessions();
            sessions.get(&key).and_then(|s| s.owner.clone())
        };
        let Some(owner) = held else {
            break;
        };
        tracing::debug!(client = %key.client_id, "session taken over from connection {}", owner.conn_id);
        owner.handover.kick();
        if tokio::time::timeout_at(deadline, owner.handover.released())
            .await
            .is_err()
        {
            return Err(Refusal::unavailable(
                "the connection holding this session did not close",
            ));
        }
        // The owner normally lets go of the slot before it says so; one that ended abruptly
        // did not, and the session is free.
        if let Some(slot) = state.sessions().get_mut(&key) {
            if slot
                .owner
                .as_ref()
                .is_some_and(|o| o.conn_id == owner.conn_id)
            {
                slot.owner = None;
            }
        }
    }
    let handover = me.handover.clone();
    let conn_id = me.conn_id;
    let queue_name = queue_name(&key.client_id);
    let (session, session_present, generation, discarded) = {
        let mut sessions = state.sessions();
        // Checked again under the lock: another CONNECT may have won the race meanwhile.
        if sessions.get(&key).is_some_and(|s| s.owner.is_some()) {
            return Err(Refusal::unavailable(
                "session taken by a concurrent connection",
            ));
        }
        let existing = sessions.remove(&key);
        let (session, session_present, generation, discarded) = match existing {
            Some(slot) if !clean_start => (slot.session, true, slot.generation + 1, None),
            old => {
                let s = Session::new(key.client_id.clone(), key.vhost.clone(), queue_name.clone());
                let generation = old.as_ref().map_or(1, |s| s.generation + 1);
                (
                    Arc::new(Mutex::new(s)),
                    false,
                    generation,
                    Some(old.map(|s| s.session)),
                )
            }
        };
        // Held from here on: a CONNECT with the same client id waits for this one (a takeover),
        // so the old session's queue and records are this one's to remove, outside the lock.
        sessions.insert(
            key.clone(),
            SessionSlot {
                session: session.clone(),
                owner: Some(me),
                generation,
            },
        );
        (session, session_present, generation, discarded)
    };
    if let Some(old) = discarded {
        // A clean start discards the old session with its queue (one may be left by a crash,
        // too) and its subscriptions' records (the new session writes its own); clustered,
        // on every node first (which deletes the queue here too).
        if super::replica::replicated(broker, &key) {
            if let Err(e) = super::replica::forget(broker, &vhost, &key, None).await {
                handover.release();
                return Err(Refusal::unavailable(format!(
                    "the cluster did not confirm discarding the session: {e}"
                )));
            }
        }
        super::replica::discard_clean_queue(broker, &vhost, &queue_name).await;
        let old_queue = vhost.queue(&queue_name);
        if let Some(old) = &old {
            let what = Discard {
                queue: old_queue.as_ref(),
                entries: true,
            };
            Box::pin(discard(broker, &vhost, old, what, 0)).await;
            super::persist::forget_session(broker, &mut lock(old));
        }
        if let Some(q) = old_queue {
            vhost.remove_queue(&q);
        }
    } else if expiry == 0 {
        // A persistent session resumed to end with its connection: its records go (the
        // session keeps its subscriptions).
        let what = Discard {
            queue: None,
            entries: false,
        };
        Box::pin(discard(broker, &vhost, &session, what, 0)).await;
    }
    if expiry > 0 {
        // Clustered: the session and its durable queue on every node (declared here too).
        let record = crate::cluster::adapter::MqttSessionRecord {
            expiry_interval: expiry,
            ..super::replica::session_record(&lock(&session))
        };
        if let Err(e) = super::replica::put(broker, &vhost, &key, record).await {
            handover.release();
            return Err(e);
        }
    }
    let (queue, queue_created) = match vhost.queue(&queue_name) {
        Some(q) => (q, false),
        None => {
            let spec = session_queue_spec(broker, &key.client_id, expiry > 0);
            if expiry == 0 {
                super::replica::clean_queue_declared(broker, &vhost, &spec).await;
            }
            match vhost.declare_queue(spec, false, conn_id) {
                Ok(d) => (d.queue, true),
                Err(e) => {
                    // Let go of the slot: a later CONNECT takes the session on.
                    handover.release();
                    return Err(Refusal::unavailable(e.to_string()));
                }
            }
        }
    };
    {
        // A resumed session's subscriptions are bound already; a fresh one has none.
        let mut s = lock(&session);
        s.queue = queue_name;
        s.expiry_interval = expiry;
        s.disconnected_at = None;
        // Written (or, for a session that now ends with its connection, removed) before the
        // CONNACK; what depends on it (SUBACK, PUBREC) waits for a later record.
        super::persist::write_session(broker, &mut s);
    }
    Ok(Attached {
        vhost,
        user,
        key,
        session,
        session_present,
        generation,
        assigned_id,
        queue,
        queue_created,
        handover,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, UserConfig, DEFAULT_CONFIG};
    use bytes::Bytes;
    use switchboard_mqtt::{reason, Properties};

    fn connect(username: Option<&str>, password: &str) -> Connect {
        Connect {
            protocol: Protocol::V311,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: username.map(str::to_owned),
            password: username.map(|_| Bytes::copy_from_slice(password.as_bytes())),
            properties: Properties::default(),
        }
    }

    fn broker(tweak: impl FnOnce(&mut Config)) -> Arc<Broker> {
        let mut config = Config::parse(DEFAULT_CONFIG).expect("default config");
        config.users.push(UserConfig {
            name: "device".into(),
            password: "pw".into(),
            tags: vec![],
        });
        tweak(&mut config);
        Broker::new(config)
    }

    #[test]
    fn anonymous_is_loopback_only_unless_configured() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let b = broker(|_| {});
        assert!(authenticate(&b, &connect(None, ""), local, None).is_ok());
        let e = authenticate(&b, &connect(None, ""), remote, None).unwrap_err();
        assert_eq!(e.v3_code, reason::V3_NOT_AUTHORIZED);
        let b = broker(|c| {
            c.mqtt.anonymous_user = Some("device".into());
            c.mqtt.anonymous_loopback_only = false;
        });
        let (vhost, user) = authenticate(&b, &connect(None, ""), remote, None).unwrap();
        assert_eq!((vhost.name.as_str(), user.as_str()), ("/", "device"));
        // guest stays loopback-only by name, whatever the MQTT settings.
        let e = authenticate(&b, &connect(Some("guest"), "guest"), remote, None).unwrap_err();
        assert_eq!(e.v5_code, reason::NOT_AUTHORIZED);
        let e = authenticate(&b, &connect(Some("device"), "bad"), remote, None).unwrap_err();
        assert_eq!(e.v5_code, reason::BAD_USER_NAME_OR_PASSWORD);
    }

    #[test]
    fn client_id_assignment_rules() {
        let b = broker(|_| {});
        let mut c = connect(None, "");
        c.client_id.clear();
        assert!(client_id(&c, &b).unwrap().1);
        c.clean_start = false;
        assert!(client_id(&c, &b).is_err());
        c.protocol = Protocol::V5;
        assert!(client_id(&c, &b).unwrap().1);
    }
}
