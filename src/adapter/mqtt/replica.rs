//! The MQTT adapter in a cluster: which connection holds a client id, persistent sessions with
//! their subscriptions, and retained messages are records of the metadata Raft group
//! (`cluster::adapter`), changed through `definitions::Change` as every definition is, and
//! made live on every node by [`Replica`]. A persistent session's queue is a replicated
//! durable queue and its subscriptions' bindings replicated bindings, so the session, its
//! queue and its bindings are on every node, and a client resumes it wherever it connects.
//!
//! The client-id record is what moves a session: a CONNECT commits "this client id is held by
//! connection C of node B" before it attaches; every other node, applying it, closes its own
//! connection with that client id (MQTT 5 DISCONNECT 0x8E, as a local takeover) and stops its
//! expiry timer for the session. The session's state needs no handing over: what a client
//! changes (its subscriptions) is committed before it is acknowledged, so the node taking over
//! has it already (log order). Raft rather than a broadcast: a broadcast to a node that misses
//! it leaves two connections with one client id, and a minority must refuse rather than
//! diverge, which a majority commit gives for free (RabbitMQ 3.x tracked client ids in Ra).
//!
//! Nothing here runs on an unclustered node: the callers ask `Broker::cluster` first.

use super::connect::{queue_name, session_queue_spec};
use super::convert::filter_to_pattern;
use super::error::Refusal;
use super::persist;
use super::registry::{lock, MqttState, SessionKey, SessionSlot};
use super::retained::RetainedFull;
use super::session::{is_shared, OutboundMessage, Session, SubscriptionEntry};
use crate::cluster::adapter::{
    AdapterRecords, MqttClientRecord, MqttSessionRecord, MqttSubscriptionRecord, RetainedRecord,
    MQTT_CLIENT, MQTT_RETAINED, MQTT_SESSION, MQTT_SUBSCRIPTION, MQTT_WILL, NO_CONNECTION,
};
use crate::cluster::definitions::{self, Change, ChangeError};
use crate::core::vhost::QueueSpec;
use crate::core::{Broker, VHost};
use base64::Engine;
use bytes::Bytes;
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_amqp::FieldTable;
use switchboard_mqtt::{QoS, SubscriptionOptions};

/// Applies the MQTT records on this node. Holds the broker and the adapter state weakly: the
/// broker holds this.
#[derive(Debug)]
pub struct Replica {
    broker: Weak<Broker>,
    state: Weak<MqttState>,
    /// This node's name, as client-id records name it.
    node: String,
}

/// On a clustered broker, hands [`Replica`] to the cluster and takes the records it applied
/// before the adapter started (from its log and snapshot).
pub fn register(broker: &Arc<Broker>, state: &Arc<MqttState>) {
    let Some(cluster) = broker.cluster.get() else {
        return;
    };
    let replica = Arc::new(Replica {
        broker: Arc::downgrade(broker),
        state: Arc::downgrade(state),
        node: cluster.node().name,
    });
    if broker.adapter_records.set(replica.clone()).is_err() {
        return;
    }
    // Set first, then read: a record committed in between is applied twice, which is harmless.
    for kind in [
        MQTT_SESSION,
        MQTT_SUBSCRIPTION,
        MQTT_RETAINED,
        MQTT_CLIENT,
        MQTT_WILL,
    ] {
        for (key, value) in cluster.list(&format!("{kind}/")) {
            let change = match Change::from_record(&key, Some(&value)) {
                // Only the sessions this node holds to expire: the others' records are
                // looked at when a session here would expire or be resumed.
                Ok(Some(Change::SetMqttClient(r))) if r.conn != NO_CONNECTION => continue,
                Ok(Some(change)) => change,
                _ => continue,
            };
            replica.apply(&change);
        }
    }
}

fn session_key(vhost: &str, client_id: &str) -> SessionKey {
    SessionKey {
        vhost: vhost.to_owned(),
        client_id: client_id.to_owned(),
    }
}

impl AdapterRecords for Replica {
    fn apply(&self, change: &Change) -> u64 {
        let (Some(broker), Some(state)) = (self.broker.upgrade(), self.state.upgrade()) else {
            return 0;
        };
        match change {
            Change::SetMqttClient(r) => {
                let key = session_key(&r.vhost, &r.client_id);
                if r.node != self.node {
                    moved_away(&broker, &state, &key);
                } else if r.conn == NO_CONNECTION {
                    adopt(&broker, &state, &key);
                }
                0
            }
            Change::PutMqttWill(r) => {
                super::cluster_will::due(&broker, &state, r);
                0
            }
            Change::PutMqttSession(r) => {
                put_session(&broker, &state, r);
                0
            }
            Change::DeleteMqttSession { vhost, client_id } => {
                let key = session_key(vhost, client_id);
                let mut sessions = state.sessions();
                // A connection or an expiry of this node holding it removes it itself.
                if sessions.get(&key).is_some_and(|s| s.owner.is_none()) {
                    if let Some(slot) = sessions.remove(&key) {
                        let mut s = lock(&slot.session);
                        if s.recorded {
                            return persist::forget_session(&broker, &mut s);
                        }
                    }
                }
                0
            }
            Change::PutMqttSubscription(r) => {
                with_idle_session(&state, &r.vhost, &r.client_id, |s| {
                    s.subscriptions.insert(r.filter.clone(), entry(r));
                    s.subscriptions.charge_to(&broker.memory);
                });
                0
            }
            Change::DeleteMqttSubscription {
                vhost,
                client_id,
                filter,
            } => {
                with_idle_session(&state, vhost, client_id, |s| {
                    s.subscriptions.remove(filter);
                });
                0
            }
            Change::PutRetained(r) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(&r.message)
                    .ok()
                    .and_then(|bytes| persist::retained_message(&bytes));
                let Some(m) = decoded else {
                    tracing::warn!(vhost = %r.vhost, topic = %r.topic, "cluster: ignoring an undecodable retained message");
                    return 0;
                };
                keep_retained(&broker, &state, &r.vhost, m)
            }
            Change::DeleteRetained { vhost, topic } => {
                keep_retained(&broker, &state, vhost, cleared(topic))
            }
            _ => 0,
        }
    }
}

/// Another node's connection holds the client id now: this node's connection with it is
/// closed, and what this node had armed for the session (its expiry, a delayed will) is
/// disarmed by a new generation. The session stays, kept up to date by the records, for
/// when the client comes back here.
fn moved_away(broker: &Broker, state: &MqttState, key: &SessionKey) {
    let idle = {
        let mut sessions = state.sessions();
        let Some(slot) = sessions.get_mut(key) else {
            return;
        };
        slot.generation += 1;
        match &slot.owner {
            Some(owner) => {
                tracing::debug!(client = %key.client_id, "session taken over by another node");
                // The connection gives its messages back as it ends (`release`).
                owner.handover.kick();
                None
            }
            None => Some(slot.session.clone()),
        }
    };
    if let Some(session) = idle {
        give_back_in_flight(broker, &mut lock(&session));
    }
}

/// The cluster found the node holding this session down and gave it to this node, to expire
/// it: armed as if its client had left now (it left at most `node_down_after_ms` before).
fn adopt(broker: &Arc<Broker>, state: &Arc<MqttState>, key: &SessionKey) {
    let (generation, expiry) = {
        let mut sessions = state.sessions();
        let Some(slot) = sessions.get_mut(key).filter(|s| s.owner.is_none()) else {
            return;
        };
        slot.generation += 1;
        let mut s = lock(&slot.session);
        s.disconnected_at = Some(unix(broker.timer.now_system()));
        (slot.generation, s.expiry_interval)
    };
    tracing::info!(client = %key.client_id, "MQTT session of a node that is down taken over to expire here");
    if expiry == u32::MAX {
        return;
    }
    if let Some(vhost) = broker.vhost(&key.vhost) {
        super::release::schedule_expiry(
            broker.clone(),
            state.clone(),
            vhost,
            key.clone(),
            generation,
            expiry,
        );
    }
}

/// Puts the messages this node sent the session and the client did not acknowledge back
/// in the session's queue, for the node the client is connected to now: they are still
/// unacknowledged deliveries of this node's, which no other node would send again. A QoS 2
/// one keeps its packet id there (the session's record has it).
pub(super) fn give_back_in_flight(broker: &Broker, s: &mut Session) {
    let ids: Vec<u64> = std::mem::take(&mut s.in_flight)
        .into_values()
        .filter_map(|f| f.message.delivery)
        .collect();
    if ids.is_empty() {
        return;
    }
    let Some(vhost) = broker.vhost(&s.vhost) else {
        return;
    };
    if let Some(q) = vhost.queue(&s.queue) {
        tracing::debug!(client = %s.client_id, messages = ids.len(), "messages in flight given back to the session's queue");
        let effects = q.requeue(&ids);
        vhost.apply(&q, effects);
    }
}

/// A persistent session another node made or changed: set up here as disconnected (its queue
/// and bindings come as definitions of their own), with no expiry armed: the node its client
/// was last connected to ends it for every node.
fn put_session(broker: &Broker, state: &MqttState, r: &MqttSessionRecord) {
    let key = session_key(&r.vhost, &r.client_id);
    let mut sessions = state.sessions();
    match sessions.get(&key) {
        Some(slot) if slot.owner.is_none() => {
            let mut s = lock(&slot.session);
            s.expiry_interval = r.expiry_interval;
            persist::restore_qos2(&mut s, &r.qos2);
        }
        Some(_) => {}
        None => {
            let mut s = Session::new(
                r.client_id.clone(),
                r.vhost.clone(),
                queue_name(&r.client_id),
            );
            s.expiry_interval = r.expiry_interval;
            persist::restore_qos2(&mut s, &r.qos2);
            s.disconnected_at = Some(unix(broker.timer.now_system()));
            sessions.insert(
                key,
                SessionSlot {
                    session: Arc::new(Mutex::new(s)),
                    owner: None,
                    generation: 1,
                },
            );
        }
    }
}

/// Runs `f` on the session of `client_id` unless a connection of this node holds it (that
/// connection made the change itself).
fn with_idle_session(
    state: &MqttState,
    vhost: &str,
    client_id: &str,
    f: impl FnOnce(&mut Session),
) {
    let sessions = state.sessions();
    if let Some(slot) = sessions.get(&session_key(vhost, client_id)) {
        if slot.owner.is_none() {
            f(&mut lock(&slot.session));
        }
    }
}

fn entry(r: &MqttSubscriptionRecord) -> SubscriptionEntry {
    SubscriptionEntry {
        options: SubscriptionOptions {
            qos: QoS::from_u8(r.qos).unwrap_or(QoS::AtMostOnce),
            no_local: r.no_local,
            retain_as_published: r.retain_as_published,
            retain_handling: r.retain_handling,
        },
        identifier: r.identifier,
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The retained "message" that clears `topic` (an empty payload).
fn cleared(topic: &str) -> OutboundMessage {
    OutboundMessage::new(
        topic.to_owned(),
        Bytes::new(),
        QoS::AtMostOnce,
        true,
        Default::default(),
        None,
    )
}

/// Makes a committed retained change live here and in this node's store. Whatever the limits:
/// the proposer checked them, and every node must hold the same.
fn keep_retained(broker: &Broker, state: &MqttState, vhost: &str, m: OutboundMessage) -> u64 {
    let lsn = persist::write_retained(broker, vhost, &m);
    state.retained().restore(vhost, m);
    lsn
}

// ---- proposing, from the adapter's connections ----

/// Why a replicated change was not made, as a CONNACK refusal: 0x88 Server unavailable (v5) /
/// 0x03 (3.1.1), the code MQTT gives for "the server cannot take this now".
fn unavailable(e: ChangeError) -> Refusal {
    Refusal::unavailable(format!("the cluster did not confirm the session: {e}"))
}

/// Claims `key`'s client id for connection `conn` of this node: every other node closes its
/// connection with that client id. A node that cannot commit (a minority) refuses a
/// persistent session; a clean one goes on here alone (it has nothing to diverge on).
pub(super) async fn claim(
    broker: &Broker,
    key: &SessionKey,
    conn: u64,
    persistent: bool,
    will: Option<Change>,
) -> Result<(), Refusal> {
    let Some(cluster) = broker.cluster.get() else {
        return Ok(());
    };
    let client = Change::SetMqttClient(MqttClientRecord {
        vhost: key.vhost.clone(),
        client_id: key.client_id.clone(),
        node: cluster.node().name,
        conn,
    });
    let changes = std::iter::once(client).chain(will).collect();
    match definitions::commit_all(broker, changes).await {
        Ok(_) => Ok(()),
        Err(e) if persistent => Err(unavailable(e)),
        Err(e) => {
            tracing::info!(client = %key.client_id, error = %e, "clean MQTT session kept on this node only");
            Ok(())
        }
    }
}

/// Whether the cluster holds a session record for `key`.
pub(super) fn replicated(broker: &Broker, key: &SessionKey) -> bool {
    broker.cluster.get().is_some_and(|c| {
        c.get(&definitions::key(
            MQTT_SESSION,
            &[&key.vhost, &key.client_id],
        ))
        .is_some()
    })
}

/// The cluster's record of the persistent session `s`.
pub(super) fn session_record(s: &Session) -> MqttSessionRecord {
    MqttSessionRecord {
        vhost: s.vhost.clone(),
        client_id: s.client_id.clone(),
        expiry_interval: s.expiry_interval,
        qos2: persist::qos2_state(s),
    }
}

/// Makes the persistent session `key` (its cluster `record`) a record of the cluster, with
/// its durable queue, unless the cluster holds exactly that already.
pub(super) async fn put(
    broker: &Broker,
    vhost: &VHost,
    key: &SessionKey,
    record: MqttSessionRecord,
) -> Result<(), Refusal> {
    let Some(cluster) = broker.cluster.get() else {
        return Ok(());
    };
    let spec = session_queue_spec(broker, &key.client_id, true);
    let queue = definitions::queue_declared(broker, vhost, &spec);
    let held = cluster
        .get(&definitions::key(
            MQTT_SESSION,
            &[&key.vhost, &key.client_id],
        ))
        .and_then(|v| serde_json::from_value::<MqttSessionRecord>(v).ok());
    if queue.is_none() && held.as_ref() == Some(&record) {
        return Ok(());
    }
    let changes = queue
        .into_iter()
        .chain([Change::PutMqttSession(record)])
        .collect();
    definitions::commit_all(broker, changes)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Removes the session `key` from the cluster: its record, its subscriptions', its queue with
/// its bindings, and `client` with them (see [`clear_client`]).
pub(super) async fn forget(
    broker: &Broker,
    vhost: &VHost,
    key: &SessionKey,
    client: Option<Change>,
) -> Result<(), ChangeError> {
    if broker.cluster.get().is_none() {
        return Ok(());
    }
    let mut changes = vec![Change::DeleteMqttSession {
        vhost: key.vhost.clone(),
        client_id: key.client_id.clone(),
    }];
    changes.extend(definitions::queue_deleted(
        broker,
        vhost,
        &queue_name(&key.client_id),
    ));
    changes.extend(client);
    definitions::commit_all(broker, changes).await.map(|_| ())
}

/// Whether the cluster's client-id record for `key` names another node: that node holds the
/// session now and ends it (a session this node restored from its own store after a restart,
/// say, is not this node's to expire).
pub(super) fn held_elsewhere(broker: &Broker, key: &SessionKey) -> bool {
    let Some(cluster) = broker.cluster.get() else {
        return false;
    };
    cluster
        .get(&definitions::key(
            MQTT_CLIENT,
            &[&key.vhost, &key.client_id],
        ))
        .and_then(|v| serde_json::from_value::<MqttClientRecord>(v).ok())
        .is_some_and(|r| r.node != cluster.node().name)
}

/// The change that removes `key`'s client-id record while it names this node (and connection
/// `conn`, if given): else another connection holds the client id now.
pub(super) fn clear_client(broker: &Broker, key: &SessionKey, conn: Option<u64>) -> Option<Change> {
    let cluster = broker.cluster.get()?;
    let held = cluster.get(&definitions::key(
        MQTT_CLIENT,
        &[&key.vhost, &key.client_id],
    ))?;
    let r: MqttClientRecord = serde_json::from_value(held).ok()?;
    let ours = r.node == cluster.node().name && conn.is_none_or(|c| c == r.conn);
    ours.then(|| Change::ClearMqttClient {
        vhost: key.vhost.clone(),
        client_id: key.client_id.clone(),
    })
}

/// A session that ends with connection `conn` of this node (clean, or expiry 0): its records
/// leave the cluster, and the client-id record if it still names `conn`. Not confirmed (a
/// minority), they stay until the client id is claimed again or the session ends elsewhere.
pub(super) async fn ended(broker: &Broker, vhost: &VHost, key: &SessionKey, conn: u64) {
    if broker.cluster.get().is_none() {
        return;
    }
    let client = clear_client(broker, key, Some(conn));
    let done = if replicated(broker, key) {
        forget(broker, vhost, key, client).await
    } else if let Some(change) = client {
        definitions::commit(broker, change).await.map(|_| ())
    } else {
        Ok(())
    };
    if let Err(e) = done {
        tracing::info!(client = %key.client_id, error = %e, "MQTT session end not confirmed by the cluster");
    }
}

/// The changes that replicate subscribing (`Some`) or unsubscribing (`None`) `filter` for
/// session `s`: a persistent session's subscription record, and the binding of the session's
/// queue (a shared filter's is its group's, which [`shared_group_joined`] makes).
pub(super) fn subscription_changes(
    broker: &Broker,
    vhost: &VHost,
    s: &Session,
    filter: &str,
    entry: Option<&SubscriptionEntry>,
) -> Vec<Change> {
    let mut out = Vec::new();
    if s.expiry_interval > 0 {
        out.push(match entry {
            Some(e) => Change::PutMqttSubscription(MqttSubscriptionRecord {
                vhost: s.vhost.clone(),
                client_id: s.client_id.clone(),
                filter: filter.to_owned(),
                qos: e.options.qos as u8,
                no_local: e.options.no_local,
                retain_as_published: e.options.retain_as_published,
                retain_handling: e.options.retain_handling,
                identifier: e.identifier,
            }),
            None => Change::DeleteMqttSubscription {
                vhost: s.vhost.clone(),
                client_id: s.client_id.clone(),
                filter: filter.to_owned(),
            },
        });
    }
    if !is_shared(filter) {
        out.extend(definitions::binding_changed(
            broker,
            vhost,
            entry.is_some(),
            (&broker.config.mqtt.exchange, "queue", &s.queue),
            &filter_to_pattern(filter),
            &FieldTable::new(),
        ));
    }
    out
}

/// Clustered, a clean session's queue is known to every node, which routes to it (its record
/// goes with the queue: `cluster::transient`). Not confirmed (a minority), the session goes
/// on with its queue on this node alone, as the claim of its client id does.
pub(super) async fn clean_queue_declared(broker: &Broker, vhost: &VHost, spec: &QueueSpec) {
    let Some(change) = definitions::queue_declared(broker, vhost, spec) else {
        return;
    };
    if let Err(e) = definitions::commit(broker, change).await {
        tracing::info!(queue = %spec.name, error = %e, "clean MQTT session's queue kept on this node only");
    }
}

/// Clustered, removes from every node the queue `name` of a clean session this client id
/// had, on whichever node (a takeover from another node: that node removes it too, as it
/// ends its connection, but this one declares the name again before then). Not confirmed
/// (a minority), the new session's queue is this node's alone.
pub(super) async fn discard_clean_queue(broker: &Broker, vhost: &VHost, name: &str) {
    let Some(r) = definitions::queue_record(broker, &vhost.name, name) else {
        return;
    };
    if !r.bound_to_home() {
        return;
    }
    if let Err(e) = definitions::commit(broker, Change::ForgetQueue(r)).await {
        tracing::info!(queue = %name, error = %e, "the old clean session's queue not removed from the cluster");
    }
}

/// Clustered, the group queue `name` of a shared subscription and its binding with
/// `filter`, on every node: the first member's node is its home, where every member, on any
/// node, consumes. The queue, or None when the cluster did not confirm it.
pub(super) fn shared_group_joined(
    broker: &Broker,
    vhost: &VHost,
    spec: &QueueSpec,
    filter: &str,
) -> Result<Option<Arc<crate::core::Queue>>, ChangeError> {
    if vhost.queue(&spec.name).is_none() {
        if let Some(change) = definitions::queue_declared(broker, vhost, spec) {
            definitions::commit_all_blocking(broker, vec![change])?;
        }
    }
    let bind = definitions::binding_changed(
        broker,
        vhost,
        true,
        (&broker.config.mqtt.exchange, "queue", &spec.name),
        &filter_to_pattern(filter),
        &FieldTable::new(),
    );
    if let Some(change) = bind {
        definitions::commit_all_blocking(broker, vec![change])?;
    }
    Ok(vhost.queue(&spec.name))
}

/// Makes `m` the topic's retained message (an empty payload clears it) on every node, once
/// the retained store here has room for it (the limits hold on the proposer: every node
/// holds what the cluster holds). Waits for the commit.
pub(super) fn retain(
    broker: &Broker,
    state: &MqttState,
    vhost: &str,
    m: OutboundMessage,
    now: SystemTime,
) -> Result<u64, RetainedFull> {
    let change = if m.payload.is_empty() {
        Change::DeleteRetained {
            vhost: vhost.to_owned(),
            topic: m.topic().to_owned(),
        }
    } else {
        state.retained().admits(vhost, &m, now)?;
        let Some(bytes) = persist::retained_value(&m) else {
            return Err(RetainedFull::Unavailable("cannot encode it".into()));
        };
        Change::PutRetained(RetainedRecord {
            vhost: vhost.to_owned(),
            topic: m.topic().to_owned(),
            message: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    };
    definitions::commit_all_blocking(broker, vec![change])
        .map_err(|e| RetainedFull::Unavailable(e.to_string()))
}
