//! Replicated definitions: the one place where a change to vhosts, users, permissions, topic
//! permissions, policies, durable exchanges, durable queues and their bindings is made. An unclustered broker applies a [`Change`] at once, as it
//! always has; a clustered one proposes it to the metadata group as a record under a key, and
//! every node (the proposer too) makes it live when it applies the committed entry, through
//! [`BrokerDefinitions`]. A node cut off from a majority refuses the change
//! ([`ClusterError::NoQuorum`]) and changes nothing.
//!
//! Keys are `<kind>/<JSON array of the key's fields>`, e.g. `permission/["/","guest"]`; a
//! record's value is the same JSON the broker's store keeps for it.
//!
//! Only definitions go through the cluster, never messages. A durable queue's definition is
//! on every node with its home, the node that declared it: only the home holds its messages,
//! and every other node holds a proxy that reaches it ([`super::forward`]). Exclusive, auto-delete and
//! transient queues, and bindings to them, stay on the node that declared them.

use super::adapter::{
    MqttClientRecord, MqttSessionRecord, MqttSubscriptionRecord, MqttWillRecord, RetainedRecord,
    MQTT_CLIENT, MQTT_RETAINED, MQTT_SESSION, MQTT_SUBSCRIPTION, MQTT_WILL,
};
use super::{Apply, BoxFuture, ClusterError, Command, Consensus};
use crate::core::access::permissions::Permissions;
use crate::core::access::records::{PermissionRecord, TopicPermissionRecord, UserRecord};
use crate::core::access::{Access, AccessError};
use crate::core::policy::RuntimePolicy;
use crate::core::queue::args;
use crate::core::vhost::{ExchangeSpec, QueueSpec};
use crate::core::{Broker, CoreError, VHost};
use crate::store::definitions::{table_text, text_table, BindingDef, ExchangeDef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Weak};
use switchboard_amqp::FieldTable;

/// The kinds of definition record, in the order a node applies them when it takes a whole
/// snapshot: what a record names (a vhost, a user) before the record; an MQTT session before
/// its subscriptions.
const KINDS: [&str; 13] = [
    VHOST,
    USER,
    PERMISSION,
    TOPIC_PERMISSION,
    POLICY,
    EXCHANGE,
    QUEUE,
    BINDING,
    MQTT_CLIENT,
    MQTT_SESSION,
    MQTT_SUBSCRIPTION,
    MQTT_RETAINED,
    MQTT_WILL,
];
const VHOST: &str = "vhost";
const USER: &str = "user";
const PERMISSION: &str = "permission";
const TOPIC_PERMISSION: &str = "topic-permission";
const POLICY: &str = "policy";
const EXCHANGE: &str = "exchange";
pub(crate) const QUEUE: &str = "queue";
const BINDING: &str = "binding";

/// A durable exchange as the cluster keeps it: the store's record, with its vhost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    pub vhost: String,
    #[serde(flatten)]
    pub def: ExchangeDef,
}

/// A queue as the cluster keeps it (its store id is each node's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub vhost: String,
    pub name: String,
    pub auto_delete: bool,
    /// False for a transient queue: it lives while its home node holds it (see
    /// [`QueueRecord::bound_to_home`]). Records written before transient queues were kept
    /// have none: they are all durable.
    #[serde(default = "durable_by_default", skip_serializing_if = "is_durable")]
    pub durable: bool,
    /// An exclusive queue: only its owner, a connection of the home node, uses it; other
    /// nodes route to it and refuse to consume from it (RESOURCE_LOCKED, as RabbitMQ).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
    /// Drawn when a transient queue is declared: a record of one incarnation of the queue
    /// never removes another's (a client that reconnects declares the same name again).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
    /// As the store encodes an argument table.
    pub arguments: String,
    /// The node that holds the queue's messages: the one that declared it. Other nodes hold
    /// a proxy. None in records written before homes were kept: every node then holds its
    /// own instance, as then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// A quorum queue's replicas: the node names chosen when it was declared, the first the
    /// one that starts its group (empty for a classic queue).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// A quorum queue's group id, drawn at declaration: a queue deleted and declared again
    /// gets a new group (and directory), never the old one's files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

fn durable_by_default() -> bool {
    true
}

fn is_durable(durable: &bool) -> bool {
    *durable
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl QueueRecord {
    /// Whether the queue exists only while its home node holds it (transient or exclusive):
    /// its home node makes it itself (with its owner), deletes the record when it goes, and
    /// deletes the records it finds of its own at start (it lost those queues with its
    /// memory); the other nodes hold a proxy.
    pub fn bound_to_home(&self) -> bool {
        lives_with_home(self.durable, self.exclusive)
    }
}

/// Whether a queue so declared lives only while its home node holds it: transient or
/// exclusive.
fn lives_with_home(durable: bool, exclusive: bool) -> bool {
    !durable || exclusive
}

/// A binding between durable ends as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingRecord {
    pub vhost: String,
    #[serde(flatten)]
    pub def: BindingDef,
}

impl BindingRecord {
    fn key(&self) -> String {
        let d = &self.def;
        key(
            BINDING,
            &[
                &self.vhost,
                &d.source,
                &d.destination_type,
                &d.destination,
                &d.routing_key,
                &d.arguments,
            ],
        )
    }
}

/// The key of the record of `kind` with `fields`.
pub fn key(kind: &str, fields: &[&str]) -> String {
    // A list of strings always serializes.
    format!(
        "{kind}/{}",
        serde_json::to_string(fields).unwrap_or_default()
    )
}

/// A key's kind and fields; `None` for a key that is not a definition's.
fn parse_key(key: &str) -> Option<(&str, Vec<String>)> {
    let (kind, fields) = key.split_once('/')?;
    let fields: Vec<String> = serde_json::from_str(fields).ok()?;
    Some((kind, fields))
}

/// Where a record of this key comes when a node applies many at once (unknown keys last).
pub fn apply_order(key: &str) -> usize {
    let kind = key.split_once('/').map_or(key, |(k, _)| k);
    KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// What the change removes (or names) does not exist.
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl ChangeError {
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ChangeError::NotFound
                | ChangeError::Access(AccessError::NoSuchUser(_) | AccessError::NoSuchVHost(_))
        )
    }
}

/// One change to the definitions.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutVHost(String),
    /// With everything in it: queues, exchanges, permissions, policies.
    DeleteVHost(String),
    PutUser(UserRecord),
    /// With its permissions and topic permissions.
    DeleteUser(String),
    SetPermissions(PermissionRecord),
    ClearPermissions {
        vhost: String,
        user: String,
    },
    SetTopicPermissions(TopicPermissionRecord),
    /// On one exchange, or (None) on all of them.
    ClearTopicPermissions {
        vhost: String,
        user: String,
        exchange: Option<String>,
    },
    SetPolicy(RuntimePolicy),
    ClearPolicy {
        vhost: String,
        name: String,
    },
    DeclareExchange(ExchangeRecord),
    /// With the bindings from and to it.
    DeleteExchange {
        vhost: String,
        name: String,
    },
    DeclareQueue(QueueRecord),
    /// With the bindings to it.
    DeleteQueue {
        vhost: String,
        name: String,
    },
    /// Removes this incarnation of a transient queue, with the bindings to it, that its home
    /// node no longer holds (nothing if the record is another's by now).
    ForgetQueue(QueueRecord),
    Bind(BindingRecord),
    Unbind(BindingRecord),
    /// The connection holding an MQTT client id (see [`MqttClientRecord`]).
    SetMqttClient(MqttClientRecord),
    ClearMqttClient {
        vhost: String,
        client_id: String,
    },
    /// A connected client's will (see [`MqttWillRecord`]).
    PutMqttWill(MqttWillRecord),
    ClearMqttWill {
        vhost: String,
        client_id: String,
    },
    PutMqttSession(MqttSessionRecord),
    /// With its subscriptions' records (its queue and client record are changes of their own).
    DeleteMqttSession {
        vhost: String,
        client_id: String,
    },
    PutMqttSubscription(MqttSubscriptionRecord),
    DeleteMqttSubscription {
        vhost: String,
        client_id: String,
        filter: String,
    },
    PutRetained(RetainedRecord),
    DeleteRetained {
        vhost: String,
        topic: String,
    },
}

/// The change that replicates declaring `spec` in `vh`: when clustered, for a durable exchange
/// not declared yet (a redeclaration is only checked for equivalence, here).
pub fn exchange_declared(b: &Broker, vh: &VHost, spec: &ExchangeSpec) -> Option<Change> {
    (b.cluster.get().is_some() && spec.durable && vh.exchange(&spec.name).is_none())
        .then(|| exchange_record(vh, spec))
}

/// The change that makes `spec` in `vh` a record of the cluster.
pub(crate) fn exchange_record(vh: &VHost, spec: &ExchangeSpec) -> Change {
    Change::DeclareExchange(ExchangeRecord {
        vhost: vh.name.clone(),
        def: ExchangeDef {
            name: spec.name.clone(),
            kind: spec.kind.clone(),
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            arguments: table_text(&spec.arguments),
        },
    })
}

/// As [`exchange_declared`], for a named queue: durable ones and transient, exclusive and
/// auto-delete ones alike, so that every node routes to it (a transient one's record lives
/// while its home node holds it: [`QueueRecord::bound_to_home`]). A quorum
/// queue's replicas are chosen here: this node first, then the other members by name, as
/// many as `x-quorum-initial-group-size` (else `quorum_replicas`) asks, at most all of them.
pub fn queue_declared(b: &Broker, vh: &VHost, spec: &QueueSpec) -> Option<Change> {
    let cluster = b.cluster.get()?;
    (!spec.name.is_empty() && vh.queue(&spec.name).is_none())
        .then(|| new_queue_record(cluster.as_ref(), vh, spec))
}

/// The change that makes `spec` in `vh` a record of the cluster, homed at this node (a
/// quorum queue: replicated on this node and others).
pub(crate) fn new_queue_record(cluster: &dyn Consensus, vh: &VHost, spec: &QueueSpec) -> Change {
    let quorum = args::is_quorum(&spec.arguments).unwrap_or(false);
    let members = if quorum {
        let size = args::quorum_group_size(&spec.arguments)
            .ok()
            .flatten()
            .unwrap_or_else(|| cluster.quorum_replicas())
            .max(1);
        let me = cluster.node().name;
        let mut others: Vec<String> = cluster
            .nodes()
            .into_iter()
            .map(|n| n.name)
            .filter(|n| *n != me)
            .collect();
        others.sort();
        std::iter::once(me)
            .chain(others)
            .take(usize::try_from(size).unwrap_or(usize::MAX))
            .collect()
    } else {
        Vec::new()
    };
    Change::DeclareQueue(QueueRecord {
        vhost: vh.name.clone(),
        name: spec.name.clone(),
        auto_delete: spec.auto_delete,
        durable: spec.durable,
        exclusive: spec.exclusive,
        incarnation: if lives_with_home(spec.durable, spec.exclusive) {
            rand::random::<u64>().max(1)
        } else {
            0
        },
        arguments: table_text(&spec.arguments),
        // A quorum queue's messages live in its group, on its members; a classic one's on
        // the node that declared it.
        home: (!quorum).then(|| cluster.node().name),
        members,
        group: if quorum {
            format!("{:016x}", rand::random::<u64>())
        } else {
            String::new()
        },
    })
}

/// Refuses a quorum queue declaration RabbitMQ refuses (exclusive, auto-delete or transient,
/// in its words), and any on a node that is not clustered: a quorum queue is replicated by a
/// Raft group, which a single node cannot give it, and calling a classic queue "quorum" would
/// promise what it does not do.
pub fn check_queue_type(b: &Broker, vh: &VHost, spec: &QueueSpec) -> Result<(), CoreError> {
    let quorum =
        args::is_quorum(&spec.arguments).map_err(|e| CoreError::precondition(e.to_string()))?;
    if !quorum {
        return Ok(());
    }
    args::quorum_group_size(&spec.arguments).map_err(|e| CoreError::precondition(e.to_string()))?;
    let property = if spec.exclusive {
        Some("exclusive")
    } else if spec.auto_delete {
        Some("auto-delete")
    } else if !spec.durable {
        Some("non-durable")
    } else {
        None
    };
    if let Some(p) = property {
        return Err(CoreError::precondition(format!(
            "invalid property '{p}' for queue '{}' in vhost '{}'",
            spec.name, vh.name
        )));
    }
    if b.cluster.get().is_none() {
        return Err(CoreError::precondition(format!(
            "cannot declare quorum queue '{}' in vhost '{}': this node is not clustered ([cluster] listen is empty)",
            spec.name, vh.name
        )));
    }
    Ok(())
}

/// The change that replicates deleting exchange `name`: when clustered and it is durable.
pub fn exchange_deleted(b: &Broker, vh: &VHost, name: &str) -> Option<Change> {
    let durable = vh.exchange(name).is_some_and(|x| x.durable);
    (b.cluster.get().is_some() && durable).then(|| Change::DeleteExchange {
        vhost: vh.name.clone(),
        name: name.to_owned(),
    })
}

/// Whether the cluster keeps queue `name`'s definition.
fn queue_kept(b: &Broker, vh: &VHost, name: &str) -> bool {
    b.cluster
        .get()
        .is_some_and(|c| c.get(&key(QUEUE, &[&vh.name, name])).is_some())
}

/// The cluster's record of queue `name`, if it keeps one.
pub fn queue_record(b: &Broker, vhost: &str, name: &str) -> Option<QueueRecord> {
    let value = b.cluster.get()?.get(&key(QUEUE, &[vhost, name]))?;
    serde_json::from_value(value).ok()
}

/// The change that replicates deleting queue `name`: when clustered and the cluster keeps it.
pub fn queue_deleted(b: &Broker, vh: &VHost, name: &str) -> Option<Change> {
    queue_kept(b, vh, name).then(|| Change::DeleteQueue {
        vhost: vh.name.clone(),
        name: name.to_owned(),
    })
}

/// A binding the cluster keeps: from a durable exchange to one, or to a queue it keeps.
/// `destination_type` is "queue" or "exchange". `bind`: binding, else unbinding.
pub fn binding_changed(
    b: &Broker,
    vh: &VHost,
    bind: bool,
    (source, destination_type, destination): (&str, &str, &str),
    routing_key: &str,
    arguments: &FieldTable,
) -> Option<Change> {
    b.cluster.get()?;
    let source_durable = vh.exchange(source).is_some_and(|x| x.durable);
    let destination_kept = match destination_type {
        "queue" => queue_kept(b, vh, destination),
        _ => vh.exchange(destination).is_some_and(|x| x.durable),
    };
    if !(source_durable && destination_kept) {
        return None;
    }
    let bound = binding_record(
        vh,
        (source, destination_type, destination),
        routing_key,
        arguments,
    );
    Some(match bound {
        Change::Bind(record) if !bind => Change::Unbind(record),
        bound => bound,
    })
}

/// The change that makes a binding in `vh` a record of the cluster.
pub(crate) fn binding_record(
    vh: &VHost,
    (source, destination_type, destination): (&str, &str, &str),
    routing_key: &str,
    arguments: &FieldTable,
) -> Change {
    Change::Bind(BindingRecord {
        vhost: vh.name.clone(),
        def: BindingDef {
            source: source.to_owned(),
            destination_type: destination_type.to_owned(),
            destination: destination.to_owned(),
            routing_key: routing_key.to_owned(),
            arguments: table_text(arguments),
        },
    })
}

/// Declares `spec` on every node ([`queue_declared`], [`commit_blocking`]). A transient or
/// exclusive queue the cluster cannot commit (a minority) is made on this node alone, as
/// before clustering: it lives with this node, so there is nothing to diverge on, and other
/// nodes do not route to it.
pub fn declare_queue_everywhere(
    b: &Broker,
    vh: &VHost,
    spec: &QueueSpec,
) -> Result<(), ChangeError> {
    if needs_catching_up(b, vh, spec) {
        block_on_runtime(caught_up(b))??;
    }
    let Some(change) = queue_declared(b, vh, spec) else {
        return Ok(());
    };
    match commit_blocking(b, change) {
        Err(ChangeError::Cluster(e)) if lives_with_home(spec.durable, spec.exclusive) => {
            tracing::info!(queue = %spec.name, error = %e, "cluster: a transient queue kept on this node only");
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// [`commit`] from synchronous code running on a runtime worker (the AMQP channel's
/// methods): the worker is handed over while the change commits (tokio's `block_in_place`),
/// which needs the multi-threaded runtime the broker runs on.
pub fn commit_blocking(b: &Broker, change: Change) -> Result<u64, ChangeError> {
    block_on_runtime(commit(b, change))?
}

fn block_on_runtime<T>(work: impl std::future::Future<Output = T>) -> Result<T, ChangeError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle = Handle::try_current().map_err(|e| ChangeError::Invalid(e.to_string()))?;
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err(ChangeError::Invalid(
            "a clustered broker needs the multi-threaded runtime to declare".into(),
        ));
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(work)))
}

/// Resolves once this node has applied every change the cluster committed before the call
/// ([`Consensus::caught_up`], a read index: no entry is written); refused, like a change, in
/// a minority.
/// What a node answers from its own state after it (a queue it has is declared already, one
/// it lacks cannot be deleted) is then no older than any change confirmed elsewhere: a node
/// cut off in a minority would otherwise confirm a declaration of a queue the majority has
/// deleted meanwhile. RabbitMQ's metadata store likewise runs every declaration as a
/// transaction of the majority.
pub async fn caught_up(b: &Broker) -> Result<(), ChangeError> {
    if let Some(cluster) = b.cluster.get() {
        cluster.caught_up().await?;
    }
    Ok(())
}

/// Whether declaring `spec` here is answered from this node's state (the queue exists), so
/// that it needs [`caught_up`] first when clustered. A transient queue's state lives with
/// the node that declared it: not for those.
pub fn needs_catching_up(b: &Broker, vh: &VHost, spec: &QueueSpec) -> bool {
    b.cluster.get().is_some()
        && !spec.name.is_empty()
        && !lives_with_home(spec.durable, spec.exclusive)
        && vh.queue(&spec.name).is_some()
}

fn vhost_of(b: &Broker, name: &str) -> Result<Arc<VHost>, ChangeError> {
    b.vhost(name).ok_or(ChangeError::NotFound)
}

fn table(text: &str) -> Result<FieldTable, ChangeError> {
    text_table(text).map_err(ChangeError::Invalid)
}

/// Makes `change`: here when unclustered, else through the cluster (refused with
/// [`ClusterError::NoQuorum`] in a minority). Returns the store's LSN to wait for before
/// answering (0 when clustered: the change is durable here once committed and applied).
/// A new quorum queue's declaration is answered once the queue serves from this node, as
/// RabbitMQ answers it once the queue's leader is up.
pub async fn commit(b: &Broker, change: Change) -> Result<u64, ChangeError> {
    match b.cluster.get() {
        None => change.apply(b),
        Some(cluster) => {
            match change.check(b) {
                // Not here may only mean not applied here yet.
                Err(ChangeError::NotFound) => {
                    caught_up(b).await?;
                    change.check(b)?;
                }
                checked => checked?,
            }
            let new_quorum = new_quorum_queue(b, &change);
            cluster.propose(change.command(b, cluster.as_ref())).await?;
            declare_again_if_lost(b, cluster.as_ref(), std::slice::from_ref(&change)).await?;
            if let Some((vhost, name)) = new_quorum {
                until_serving(b, &vhost, &name).await;
            }
            Ok(0)
        }
    }
}

/// Proposes again a transient queue's declaration that found its name held by a record of
/// this node's lost incarnation, which went in between (see [`transient_declared`]).
async fn declare_again_if_lost(
    b: &Broker,
    cluster: &dyn Consensus,
    changes: &[Change],
) -> Result<(), ChangeError> {
    for c in changes {
        if let Change::DeclareQueue(r) = c {
            if r.bound_to_home() && queue_record(b, &r.vhost, &r.name).is_none() {
                cluster.propose(c.command(b, cluster)).await?;
            }
        }
    }
    Ok(())
}

/// The vhost and name of the quorum queue `change` declares, when it does not exist yet.
fn new_quorum_queue(b: &Broker, change: &Change) -> Option<(String, String)> {
    match change {
        Change::DeclareQueue(r) if !r.members.is_empty() => b
            .vhost(&r.vhost)
            .is_some_and(|vh| vh.queue(&r.name).is_none())
            .then(|| (r.vhost.clone(), r.name.clone())),
        _ => None,
    }
}

/// Waits (within the cluster's operation timeout) until the quorum queue `name` serves from
/// this node. A queue still electing past it is answered anyway: a consume is then refused
/// with the reason and may be tried again.
async fn until_serving(b: &Broker, vhost: &str, name: &str) {
    let Some(q) = b.vhost(vhost).and_then(|vh| vh.queue(name)) else {
        return;
    };
    if let Some(r) = q.replica() {
        if !r.until_serving().await {
            tracing::warn!(
                vhost,
                queue = name,
                "cluster: a new quorum queue has no leader yet; declared anyway"
            );
        }
    }
}

/// Makes `changes` as one: here, in order, when unclustered; else as one entry of the cluster
/// (all of them or, refused, none). The store's LSN to wait for (0 when clustered).
pub async fn commit_all(b: &Broker, changes: Vec<Change>) -> Result<u64, ChangeError> {
    match b.cluster.get() {
        None => changes
            .iter()
            .try_fold(0, |lsn, c| Ok(lsn.max(c.apply(b)?))),
        Some(cluster) => {
            for c in &changes {
                c.check(b)?;
            }
            let new_quorum: Vec<_> = changes
                .iter()
                .filter_map(|c| new_quorum_queue(b, c))
                .collect();
            let commands = changes
                .iter()
                .map(|c| c.command(b, cluster.as_ref()))
                .collect();
            cluster.propose(Command::Batch(commands)).await?;
            declare_again_if_lost(b, cluster.as_ref(), &changes).await?;
            for (vhost, name) in new_quorum {
                until_serving(b, &vhost, &name).await;
            }
            Ok(0)
        }
    }
}

/// Commits a persistent MQTT session's record while the client-id record is `holder`
/// (else nothing changes: another connection holds the session now, and its records are
/// what count). Clustered only; resolves once this node has applied it.
pub async fn commit_held_mqtt_session(
    b: &Broker,
    holder: &MqttClientRecord,
    record: MqttSessionRecord,
) -> Result<(), ChangeError> {
    let Some(cluster) = b.cluster.get() else {
        return Ok(());
    };
    let expected = serde_json::to_value(holder).map_err(|e| ChangeError::Invalid(e.to_string()))?;
    let put = put(
        key(MQTT_SESSION, &[&record.vhost, &record.client_id]),
        &record,
    )?;
    cluster
        .propose(Command::Guarded {
            key: key(MQTT_CLIENT, &[&holder.vhost, &holder.client_id]),
            expected: Some(expected),
            then: vec![put],
        })
        .await?;
    Ok(())
}

/// [`commit_all`] from synchronous code, as [`commit_blocking`].
pub fn commit_all_blocking(b: &Broker, changes: Vec<Change>) -> Result<u64, ChangeError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle = Handle::try_current().map_err(|e| ChangeError::Invalid(e.to_string()))?;
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err(ChangeError::Invalid(
            "a clustered broker needs the multi-threaded runtime to replicate".into(),
        ));
    }
    tokio::task::block_in_place(|| handle.block_on(commit_all(b, changes)))
}

/// The connection a replicated declaration is made for: none of this node's (an exclusive
/// queue's proxy is then owned by no connection here, which refuses every one of them).
const NO_CONNECTION: crate::core::queue::ConnectionId = 0;

fn put<T: serde::Serialize>(key: String, record: &T) -> Result<Command, ChangeError> {
    let value = serde_json::to_value(record).map_err(|e| ChangeError::Invalid(e.to_string()))?;
    Ok(Command::Put { key, value })
}

/// Deletes queue `name`'s record and the records of the bindings to it.
fn queue_deletes(cluster: &dyn Consensus, vhost: &str, name: &str) -> Vec<Command> {
    let mut all = vec![Command::Delete {
        key: key(QUEUE, &[vhost, name]),
    }];
    all.extend(deletes_of(cluster, BINDING, |f| {
        f.first().map(String::as_str) == Some(vhost)
            && f.get(2).map(String::as_str) == Some("queue")
            && f.get(3).map(String::as_str) == Some(name)
    }));
    all
}

/// Declares transient queue `r` once: made only while no node's record holds the name (two
/// nodes declaring it at once, two members of a shared MQTT group say, must not move its
/// home), or in place of a record of this node's for a queue it no longer holds (a lost
/// incarnation, whose bindings go with it).
fn transient_declared(
    b: &Broker,
    cluster: &dyn Consensus,
    r: &QueueRecord,
) -> Result<Command, ChangeError> {
    let k = key(QUEUE, &[&r.vhost, &r.name]);
    let me = cluster.node().name;
    let lost = cluster.get(&k).filter(|v| {
        let held_here = b
            .vhost(&r.vhost)
            .is_some_and(|vh| vh.queue(&r.name).is_some());
        v.get("home").and_then(|h| h.as_str()) == Some(me.as_str()) && !held_here
    });
    let mut then = Vec::new();
    if lost.is_some() {
        then.extend(queue_deletes(cluster, &r.vhost, &r.name));
    }
    then.push(put(k.clone(), r)?);
    Ok(Command::Guarded {
        key: k,
        expected: lost,
        then,
    })
}

/// Deletes of every record of `kind` whose fields `which` selects.
fn deletes_of(
    cluster: &dyn Consensus,
    kind: &str,
    which: impl Fn(&[String]) -> bool,
) -> Vec<Command> {
    cluster
        .list(&format!("{kind}/"))
        .into_iter()
        .filter(|(k, _)| parse_key(k).is_some_and(|(_, f)| which(&f)))
        .map(|(key, _)| Command::Delete { key })
        .collect()
}

impl Change {
    /// Applies the change to this broker's live state and its store; returns the LSN that
    /// makes it durable. The only place a definition is changed, clustered or not.
    pub fn apply(&self, b: &Broker) -> Result<u64, ChangeError> {
        Ok(match self {
            Change::PutVHost(name) => b.add_vhost(name),
            Change::DeleteVHost(name) => b.delete_vhost(name).ok_or(ChangeError::NotFound)?,
            Change::PutUser(r) => {
                let hash = r.hash().map_err(AccessError::from)?;
                b.access.put_user(&r.name, hash, &r.tags)
            }
            Change::DeleteUser(name) => b.delete_user(name)?,
            Change::SetPermissions(r) => {
                if b.vhost(&r.vhost).is_none() {
                    return Err(ChangeError::NotFound);
                }
                b.access.set_permissions(&r.vhost, &r.user, &r.spec)?
            }
            Change::ClearPermissions { vhost, user } => b
                .access
                .clear_permissions(vhost, user)
                .ok_or(ChangeError::NotFound)?,
            Change::SetTopicPermissions(r) => {
                if b.vhost(&r.vhost).is_none() {
                    return Err(ChangeError::NotFound);
                }
                b.access.set_topic_permissions(&r.vhost, &r.user, &r.spec)?
            }
            Change::ClearTopicPermissions {
                vhost,
                user,
                exchange,
            } => b
                .access
                .clear_topic_permissions(vhost, user, exchange.as_deref())
                .ok_or(ChangeError::NotFound)?,
            Change::SetPolicy(r) => b.set_policy(r).map_err(ChangeError::Invalid)?.1,
            Change::ClearPolicy { vhost, name } => {
                b.clear_policy(vhost, name).ok_or(ChangeError::NotFound)?
            }
            Change::DeclareExchange(r) => {
                let vh = vhost_of(b, &r.vhost)?;
                let spec = ExchangeSpec {
                    name: r.def.name.clone(),
                    kind: r.def.kind.clone(),
                    durable: true,
                    auto_delete: r.def.auto_delete,
                    internal: r.def.internal,
                    arguments: table(&r.def.arguments)?,
                };
                vh.declare_exchange(spec, false)?;
                vh.definitions_lsn()
            }
            Change::DeleteExchange { vhost, name } => {
                let vh = vhost_of(b, vhost)?;
                vh.exchange(name).ok_or(ChangeError::NotFound)?;
                vh.delete_exchange(name, false)?;
                vh.definitions_lsn()
            }
            Change::DeclareQueue(r) => {
                let vh = vhost_of(b, &r.vhost)?;
                let home_here = b
                    .cluster
                    .get()
                    .is_some_and(|c| r.home.as_deref() == Some(c.node().name.as_str()));
                if r.bound_to_home() && (home_here || vh.queue(&r.name).is_some()) {
                    // Its home makes it (with its owner). A record re-applied at start, before
                    // the node knows its name, makes a local queue that
                    // `cluster::transient::forget_homed_at` removes with the record.
                    return Ok(0);
                }
                let spec = QueueSpec {
                    name: r.name.clone(),
                    durable: r.durable,
                    exclusive: r.exclusive,
                    auto_delete: r.auto_delete,
                    arguments: table(&r.arguments)?,
                };
                if r.name.starts_with("amq.") {
                    // Server-named where it was declared (the prefix was checked there).
                    vh.declare_server_named_queue(spec, NO_CONNECTION)?;
                } else {
                    vh.declare_queue(spec, false, NO_CONNECTION)?;
                }
                if !r.members.is_empty() {
                    if let Some(groups) = b.cluster.get().and_then(|c| c.quorum()) {
                        groups.declared(r);
                    }
                }
                vh.definitions_lsn()
            }
            Change::DeleteQueue { vhost, name }
            | Change::ForgetQueue(QueueRecord { vhost, name, .. }) => {
                let vh = vhost_of(b, vhost)?;
                vh.queue(name).ok_or(ChangeError::NotFound)?;
                vh.delete_queue(name, false, false, NO_CONNECTION)?;
                if let Some(groups) = b.cluster.get().and_then(|c| c.quorum()) {
                    groups.deleted(vhost, name);
                }
                vh.definitions_lsn()
            }
            Change::Bind(r) | Change::Unbind(r) => {
                let vh = vhost_of(b, &r.vhost)?;
                let d = &r.def;
                let arguments = table(&d.arguments)?;
                let (rk, src, dst) = (&d.routing_key, &d.source, &d.destination);
                match (
                    matches!(self, Change::Bind(_)),
                    d.destination_type == "queue",
                ) {
                    (true, true) => vh.bind_queue(dst, src, rk, &arguments, NO_CONNECTION)?,
                    (true, false) => vh.bind_exchange(dst, src, rk, &arguments)?,
                    (false, true) => vh.unbind_queue(dst, src, rk, &arguments, NO_CONNECTION)?,
                    (false, false) => vh.unbind_exchange(dst, src, rk, &arguments)?,
                }
                vh.definitions_lsn()
            }
            // The adapter's own state; a node whose adapter has not started yet takes the
            // records when it does (it reads them all then).
            Change::SetMqttClient(_)
            | Change::ClearMqttClient { .. }
            | Change::PutMqttWill(_)
            | Change::ClearMqttWill { .. }
            | Change::PutMqttSession(_)
            | Change::DeleteMqttSession { .. }
            | Change::PutMqttSubscription(_)
            | Change::DeleteMqttSubscription { .. }
            | Change::PutRetained(_)
            | Change::DeleteRetained { .. } => b.adapter_records.get().map_or(0, |a| a.apply(self)),
        })
    }

    /// Refuses here, before proposing, what [`Change::apply`] would refuse, so that a
    /// committed change applies on every node.
    fn check(&self, b: &Broker) -> Result<(), ChangeError> {
        let found = |yes: bool| {
            if yes {
                Ok(())
            } else {
                Err(ChangeError::NotFound)
            }
        };
        match self {
            Change::PutVHost(_) => Ok(()),
            Change::DeleteVHost(name) => found(b.vhost(name).is_some()),
            Change::PutUser(r) => r
                .hash()
                .map(|_| ())
                .map_err(|e| AccessError::from(e).into()),
            Change::DeleteUser(name) => found(b.access.user(name).is_some()),
            Change::SetPermissions(r) => {
                found(b.vhost(&r.vhost).is_some())?;
                found(b.access.user(&r.user).is_some())?;
                Permissions::new(&r.spec).map_err(AccessError::from)?;
                Ok(())
            }
            Change::ClearPermissions { vhost, user } => {
                found(b.access.permissions_of(vhost, user).is_some())
            }
            Change::SetTopicPermissions(r) => {
                found(b.vhost(&r.vhost).is_some())?;
                found(b.access.user(&r.user).is_some())?;
                Ok(Access::check_topic_spec(&r.spec)?)
            }
            Change::ClearTopicPermissions {
                vhost,
                user,
                exchange,
            } => found(match exchange {
                Some(x) => b.access.has_topic_permissions(vhost, user, x),
                None => b.access.has_any_topic_permissions(vhost, user),
            }),
            Change::SetPolicy(r) => {
                found(b.vhost(&r.vhost).is_some())?;
                r.compile()
                    .map(|_| ())
                    .map_err(|e| ChangeError::Invalid(e.to_string()))
            }
            Change::ClearPolicy { vhost, name } => found(b.policy_set().has_runtime(vhost, name)),
            // Declared, deleted and bound here again once committed, which answers the
            // caller with the broker's own error if the change cannot apply.
            Change::DeclareExchange(ExchangeRecord { vhost, .. })
            | Change::DeclareQueue(QueueRecord { vhost, .. })
            | Change::DeleteExchange { vhost, .. }
            | Change::DeleteQueue { vhost, .. }
            | Change::ForgetQueue(QueueRecord { vhost, .. })
            | Change::Bind(BindingRecord { vhost, .. })
            | Change::Unbind(BindingRecord { vhost, .. })
            | Change::SetMqttClient(MqttClientRecord { vhost, .. })
            | Change::ClearMqttClient { vhost, .. }
            | Change::PutMqttWill(MqttWillRecord { vhost, .. })
            | Change::ClearMqttWill { vhost, .. }
            | Change::PutMqttSession(MqttSessionRecord { vhost, .. })
            | Change::DeleteMqttSession { vhost, .. }
            | Change::PutMqttSubscription(MqttSubscriptionRecord { vhost, .. })
            | Change::DeleteMqttSubscription { vhost, .. }
            | Change::PutRetained(RetainedRecord { vhost, .. })
            | Change::DeleteRetained { vhost, .. } => found(b.vhost(vhost).is_some()),
        }
    }

    /// The command that replicates the change. A deletion also removes the records of what
    /// goes with it (a user's permissions, a vhost's contents), so that the records stay what
    /// every node holds.
    pub(crate) fn command(&self, b: &Broker, cluster: &dyn Consensus) -> Command {
        let built = match self {
            Change::PutVHost(name) => put(key(VHOST, &[name]), &serde_json::json!({"name": name})),
            Change::DeleteVHost(name) => {
                let mut all = vec![Command::Delete {
                    key: key(VHOST, &[name]),
                }];
                for kind in &KINDS[2..] {
                    all.extend(deletes_of(cluster, kind, |f| f.first() == Some(name)));
                }
                Ok(Command::Batch(all))
            }
            Change::PutUser(r) => put(key(USER, &[&r.name]), r),
            Change::DeleteUser(name) => {
                let mut all = vec![Command::Delete {
                    key: key(USER, &[name]),
                }];
                for kind in [PERMISSION, TOPIC_PERMISSION] {
                    all.extend(deletes_of(cluster, kind, |f| f.get(1) == Some(name)));
                }
                Ok(Command::Batch(all))
            }
            Change::SetPermissions(r) => put(key(PERMISSION, &[&r.vhost, &r.user]), r),
            Change::ClearPermissions { vhost, user } => Ok(Command::Delete {
                key: key(PERMISSION, &[vhost, user]),
            }),
            Change::SetTopicPermissions(r) => put(
                key(TOPIC_PERMISSION, &[&r.vhost, &r.user, &r.spec.exchange]),
                r,
            ),
            Change::ClearTopicPermissions {
                vhost,
                user,
                exchange,
            } => {
                // All of them: those this node holds, as every node holds the same.
                let exchanges: Vec<String> = match exchange {
                    Some(x) => vec![x.clone()],
                    None => b
                        .access
                        .topic_permissions()
                        .into_iter()
                        .filter(|t| t.vhost == *vhost && t.user == *user)
                        .map(|t| t.spec.exchange)
                        .collect(),
                };
                Ok(Command::Batch(
                    exchanges
                        .iter()
                        .map(|x| Command::Delete {
                            key: key(TOPIC_PERMISSION, &[vhost, user, x]),
                        })
                        .collect(),
                ))
            }
            Change::SetPolicy(r) => put(key(POLICY, &[&r.vhost, &r.name]), r),
            Change::ClearPolicy { vhost, name } => Ok(Command::Delete {
                key: key(POLICY, &[vhost, name]),
            }),
            Change::DeclareExchange(r) => put(key(EXCHANGE, &[&r.vhost, &r.def.name]), r),
            Change::DeleteExchange { vhost, name } => {
                let mut all = vec![Command::Delete {
                    key: key(EXCHANGE, &[vhost, name]),
                }];
                all.extend(deletes_of(cluster, BINDING, |f| {
                    f.first() == Some(vhost)
                        && (f.get(1) == Some(name)
                            || (f.get(2).map(String::as_str) == Some("exchange")
                                && f.get(3) == Some(name)))
                }));
                Ok(Command::Batch(all))
            }
            // A transient queue is declared once: a second node declaring the same name at
            // once (two members of a shared MQTT group) must not move its home.
            Change::DeclareQueue(r) if r.bound_to_home() => transient_declared(b, cluster, r),
            Change::DeclareQueue(r) => put(key(QUEUE, &[&r.vhost, &r.name]), r),
            Change::DeleteQueue { vhost, name } => {
                Ok(Command::Batch(queue_deletes(cluster, vhost, name)))
            }
            Change::ForgetQueue(r) => serde_json::to_value(r)
                .map_err(|e| ChangeError::Invalid(e.to_string()))
                .map(|expected| Command::Guarded {
                    key: key(QUEUE, &[&r.vhost, &r.name]),
                    expected: Some(expected),
                    then: queue_deletes(cluster, &r.vhost, &r.name),
                }),
            Change::Bind(r) => put(r.key(), r),
            Change::Unbind(r) => Ok(Command::Delete { key: r.key() }),
            Change::SetMqttClient(r) => put(key(MQTT_CLIENT, &[&r.vhost, &r.client_id]), r),
            Change::ClearMqttClient { vhost, client_id } => Ok(Command::Delete {
                key: key(MQTT_CLIENT, &[vhost, client_id]),
            }),
            Change::PutMqttWill(r) => put(key(MQTT_WILL, &[&r.vhost, &r.client_id]), r),
            Change::ClearMqttWill { vhost, client_id } => Ok(Command::Delete {
                key: key(MQTT_WILL, &[vhost, client_id]),
            }),
            Change::PutMqttSession(r) => put(key(MQTT_SESSION, &[&r.vhost, &r.client_id]), r),
            Change::DeleteMqttSession { vhost, client_id } => {
                let mut all = vec![Command::Delete {
                    key: key(MQTT_SESSION, &[vhost, client_id]),
                }];
                // Keys of one session's subscriptions share the prefix of its fields.
                let own = key(MQTT_SUBSCRIPTION, &[vhost, client_id]);
                let prefix = format!("{},", own.trim_end_matches(']'));
                all.extend(
                    cluster
                        .list(&prefix)
                        .into_iter()
                        .map(|(key, _)| Command::Delete { key }),
                );
                Ok(Command::Batch(all))
            }
            Change::PutMqttSubscription(r) => put(
                key(MQTT_SUBSCRIPTION, &[&r.vhost, &r.client_id, &r.filter]),
                r,
            ),
            Change::DeleteMqttSubscription {
                vhost,
                client_id,
                filter,
            } => Ok(Command::Delete {
                key: key(MQTT_SUBSCRIPTION, &[vhost, client_id, filter]),
            }),
            Change::PutRetained(r) => put(key(MQTT_RETAINED, &[&r.vhost, &r.topic]), r),
            Change::DeleteRetained { vhost, topic } => Ok(Command::Delete {
                key: key(MQTT_RETAINED, &[vhost, topic]),
            }),
        };
        // The records serialize: they came from JSON or from the broker's own state.
        built.unwrap_or(Command::Batch(Vec::new()))
    }

    /// The change a committed record (`None`: removed) under `key` makes; `None` when the key
    /// is not a definition's.
    pub fn from_record(key: &str, value: Option<&Value>) -> Result<Option<Change>, String> {
        let Some((kind, fields)) = parse_key(key) else {
            return Ok(None);
        };
        fn record<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
            T::deserialize(v).map_err(|e| e.to_string())
        }
        let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
        Ok(Some(match (kind, value) {
            (VHOST, Some(_)) => Change::PutVHost(field(0)),
            (VHOST, None) => Change::DeleteVHost(field(0)),
            (USER, Some(v)) => Change::PutUser(record(v)?),
            (USER, None) => Change::DeleteUser(field(0)),
            (PERMISSION, Some(v)) => Change::SetPermissions(record(v)?),
            (PERMISSION, None) => Change::ClearPermissions {
                vhost: field(0),
                user: field(1),
            },
            (TOPIC_PERMISSION, Some(v)) => Change::SetTopicPermissions(record(v)?),
            (TOPIC_PERMISSION, None) => Change::ClearTopicPermissions {
                vhost: field(0),
                user: field(1),
                exchange: Some(field(2)),
            },
            (POLICY, Some(v)) => Change::SetPolicy(record(v)?),
            (POLICY, None) => Change::ClearPolicy {
                vhost: field(0),
                name: field(1),
            },
            (EXCHANGE, Some(v)) => Change::DeclareExchange(record(v)?),
            (EXCHANGE, None) => Change::DeleteExchange {
                vhost: field(0),
                name: field(1),
            },
            (QUEUE, Some(v)) => Change::DeclareQueue(record(v)?),
            (QUEUE, None) => Change::DeleteQueue {
                vhost: field(0),
                name: field(1),
            },
            (BINDING, Some(v)) => Change::Bind(record(v)?),
            (BINDING, None) => Change::Unbind(BindingRecord {
                vhost: field(0),
                def: BindingDef {
                    source: field(1),
                    destination_type: field(2),
                    destination: field(3),
                    routing_key: field(4),
                    arguments: field(5),
                },
            }),
            (MQTT_CLIENT, Some(v)) => Change::SetMqttClient(record(v)?),
            (MQTT_CLIENT, None) => Change::ClearMqttClient {
                vhost: field(0),
                client_id: field(1),
            },
            (MQTT_WILL, Some(v)) => Change::PutMqttWill(record(v)?),
            (MQTT_WILL, None) => Change::ClearMqttWill {
                vhost: field(0),
                client_id: field(1),
            },
            (MQTT_SESSION, Some(v)) => Change::PutMqttSession(record(v)?),
            (MQTT_SESSION, None) => Change::DeleteMqttSession {
                vhost: field(0),
                client_id: field(1),
            },
            (MQTT_SUBSCRIPTION, Some(v)) => Change::PutMqttSubscription(record(v)?),
            (MQTT_SUBSCRIPTION, None) => Change::DeleteMqttSubscription {
                vhost: field(0),
                client_id: field(1),
                filter: field(2),
            },
            (MQTT_RETAINED, Some(v)) => Change::PutRetained(record(v)?),
            (MQTT_RETAINED, None) => Change::DeleteRetained {
                vhost: field(0),
                topic: field(1),
            },
            _ => return Ok(None),
        }))
    }
}

/// Applies committed definition records to a broker. Holds it weakly: the broker holds the
/// cluster, which holds this.
pub struct BrokerDefinitions {
    broker: Weak<Broker>,
    /// Makes a queue homed on another node a proxy when its record is applied (set once
    /// the node's forwarding has started).
    forward: std::sync::OnceLock<Arc<super::forward::Forward>>,
}

impl BrokerDefinitions {
    pub fn new(broker: &Arc<Broker>) -> Self {
        BrokerDefinitions {
            broker: Arc::downgrade(broker),
            forward: std::sync::OnceLock::new(),
        }
    }

    /// Queues applied from now on whose home is another node become proxies through
    /// `forward`.
    pub fn forward_with(&self, forward: Arc<super::forward::Forward>) {
        let _ = self.forward.set(forward);
    }
}

impl Apply for BrokerDefinitions {
    fn apply(&self, key: &str, value: Option<&Value>) -> u64 {
        let Some(b) = self.broker.upgrade() else {
            return 0;
        };
        let change = match Change::from_record(key, value) {
            Ok(Some(change)) => change,
            Ok(None) => return 0,
            Err(e) => {
                tracing::warn!(key, error = %e, "cluster: ignoring a definition record");
                return 0;
            }
        };
        let applied = change.apply(&b);
        if let (Change::DeclareQueue(r), Some(forward)) = (&change, self.forward.get()) {
            if let Some(q) = b.vhost(&r.vhost).and_then(|vh| vh.queue(&r.name)) {
                forward.attach(&q);
            }
        }
        match applied {
            Ok(lsn) => lsn,
            // Already gone (a deletion applied again, or one that went with another).
            Err(e) if e.is_not_found() => 0,
            Err(e) => {
                tracing::warn!(key, error = %e, "cluster: a definition did not apply here");
                0
            }
        }
    }

    fn durable(&self, lsn: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(b) = self.broker.upgrade() {
                b.access.durable(lsn).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_slashes_in_names() {
        let k = key(PERMISSION, &["/", "a/b"]);
        assert_eq!(k, r#"permission/["/","a/b"]"#);
        let (kind, fields) = parse_key(&k).unwrap();
        assert_eq!(kind, PERMISSION);
        assert_eq!(fields, ["/", "a/b"]);
        assert_eq!(
            Change::from_record(&k, None).unwrap(),
            Some(Change::ClearPermissions {
                vhost: "/".into(),
                user: "a/b".into()
            })
        );
    }

    #[test]
    fn vhosts_apply_before_what_lives_in_them_and_other_keys_are_not_definitions() {
        assert!(apply_order(&key(VHOST, &["v"])) < apply_order(&key(PERMISSION, &["v", "u"])));
        assert!(apply_order(&key(USER, &["u"])) < apply_order(&key(POLICY, &["v", "p"])));
        assert_eq!(Change::from_record("k/1", None).unwrap(), None);
        assert_eq!(Change::from_record("before", None).unwrap(), None);
    }
}
