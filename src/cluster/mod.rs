//! The cluster: node membership and a Raft group for the metadata, on `openraft`.
//!
//! The rest of the broker sees only [`Consensus`]: propose a command and await its commit,
//! add or remove a member, and the membership as it stands. Nothing outside this module names
//! an openraft type. An unclustered node (`[cluster] listen` empty) starts none of it.

pub mod adapter;
pub mod config;
pub mod definitions;
pub mod failover;
pub mod forward;
pub mod identity;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node_down;
pub mod quorum;
pub mod read_index;
pub mod seeding;
pub mod state_machine;
pub mod tls;
pub mod transient;
pub mod transport;
pub mod wire_bytes;

pub use config::ClusterConfig;
pub use membership::Cluster;

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// A node as the Raft membership records it: its name and the address other nodes dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// A change to the replicated metadata: one record put or removed, under a key such as
/// `queue/<vhost>/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: serde_json::Value,
    },
    Delete {
        key: String,
    },
    /// `then`, made only while `key` holds `expected` (None: no record); `existed` tells
    /// whether `key` held a record before. What makes a transient queue's record and removes
    /// it: a record of one incarnation of the queue never removes or overwrites another's.
    Guarded {
        key: String,
        expected: Option<serde_json::Value>,
        then: Vec<Command>,
    },
    /// Several changes committed as one entry (a deletion with what goes with it).
    Batch(Vec<Command>),
    /// Messages, settlements and returns of one quorum queue, in that queue's own group
    /// (never in the metadata group).
    Queue(quorum::codec::Ops),
}

/// What a node does with the metadata records it applies: [`definitions::BrokerDefinitions`]
/// makes each one live in the broker and writes it to the broker's store. Called in log order
/// on every node, the proposer included, and again for entries re-applied after a restart, so
/// applying must be idempotent.
pub trait Apply: Send + Sync {
    /// Applies the record under `key` (`None`: removed); returns the store's LSN to wait for.
    fn apply(&self, key: &str, value: Option<&serde_json::Value>) -> u64;
    /// Resolves once the store is durable up to `lsn`.
    fn durable(&self, lsn: u64) -> BoxFuture<'_, ()>;
}

/// What applying a [`Command`] did: whether the key held a record before; for a quorum
/// queue's entry, which of its messages (by position) the leader's queue refused as full.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub existed: bool,
    /// A [`Command::Guarded`] found its record as expected and applied what it guards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guard_held: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<u32>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// A node's part in the group as its members see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    /// Not (yet) a member of any cluster.
    Unjoined,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Unjoined => "unjoined",
        }
    }
}

/// One member of the cluster, as seen from the node asked.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub addr: String,
    /// Counts in elections and commits (a learner does not).
    pub voter: bool,
    /// Answered a ping just now (this node always does).
    pub running: bool,
    pub role: Role,
    pub is_leader: bool,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster_name: String,
    pub node_name: String,
    pub role: Role,
    pub leader: Option<String>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Config(#[from] config::ClusterConfigError),
    #[error("inter-node TLS: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("cluster storage in {path}: {source}")]
    Storage {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for cluster peers on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    /// No leader could commit the change in time: this node is cut off from a majority.
    #[error("no quorum: the change could not be committed by a majority of the cluster within {0} ms (this node may be in a minority)")]
    NoQuorum(u64),
    #[error("refused: {0}")]
    Refused(String),
    #[error("unknown cluster node '{0}'")]
    UnknownNode(String),
    #[error("cannot remove {0}: it is the last voter of the cluster")]
    LastVoter(String),
    #[error("cannot reach {addr}: {reason}")]
    Peer { addr: String, reason: String },
    #[error("this node is not clustered ([cluster] listen is empty)")]
    NotClustered,
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Consensus as the broker uses it; [`Cluster`] implements it on openraft.
pub trait Consensus: Send + Sync + std::fmt::Debug {
    /// Proposes `command` and resolves once a majority has committed it and this node's state
    /// machine has applied it (or with [`ClusterError::NoQuorum`]).
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<CommandResult, ClusterError>>;
    /// Resolves once this node has applied everything the cluster committed before the call
    /// (Raft's read index: the leader confirms with a majority that it still leads, and
    /// nothing is written), or with [`ClusterError::NoQuorum`] in a minority.
    fn caught_up(&self) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// Adds `node` as a learner, waits for it to catch up, then makes it a voter.
    fn add_member(&self, node: NodeInfo) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// Removes the member named `name` from the membership.
    fn remove_member(&self, name: String) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// Membership, leader and roles, with every member pinged.
    fn status(&self) -> BoxFuture<'_, ClusterStatus>;
    /// The metadata record under `key`, as this node has applied it.
    fn get(&self, key: &str) -> Option<serde_json::Value>;
    /// Every record whose key starts with `prefix`, as this node has applied them.
    fn list(&self, prefix: &str) -> Vec<(String, serde_json::Value)>;
    /// Asks the node at `seed` (an inter-node address) to take this node in.
    fn join(&self, seed: String) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// This node's name and the address other nodes reach it at.
    fn node(&self) -> NodeInfo;
    /// The members of the cluster, as this node knows them.
    fn nodes(&self) -> Vec<NodeInfo>;
    /// The quorum queue groups of this node, once they are set up.
    fn quorum(&self) -> Option<std::sync::Arc<quorum::Registry>>;
    /// How many nodes a quorum queue is replicated on by default (`quorum_replicas`).
    fn quorum_replicas(&self) -> u64;
    /// Stops this node's part: closes the peer listener and stops Raft (also done when the
    /// broker shuts down). Resolves once both are stopped.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Starts `broker`'s cluster membership when `[cluster] listen` is set (a single node pays
/// nothing otherwise), stopping with the broker.
pub async fn start_for(broker: &std::sync::Arc<crate::core::Broker>) -> Result<(), ClusterError> {
    let config = &broker.config.cluster;
    if !config.enabled() {
        return Ok(());
    }
    let defs = std::sync::Arc::new(definitions::BrokerDefinitions::new(broker));
    let apply: std::sync::Arc<dyn Apply> = defs.clone();
    let cluster = Cluster::start(
        config,
        &broker.config.server.data_dir,
        Some(apply),
        broker.shutdown_signal(),
    )
    .await?;
    let quorum = quorum::Registry::start(broker, &cluster);
    let consensus: std::sync::Arc<dyn Consensus> = cluster.clone();
    let members: std::sync::Arc<dyn forward::Members> = cluster.clone();
    let forward = forward::Forward::new(
        broker,
        &consensus,
        &members,
        cluster.auth().clone(),
        cluster.operation_timeout(),
    );
    // Proxies for what the records applied so far name another home for, then for those
    // applied from now on.
    defs.forward_with(forward.clone());
    quorum.forward_with(&forward);
    forward.attach_all();
    cluster.serve_forward(forward);
    let me = consensus.node().name;
    // Set once, here, at start.
    let _ = broker.cluster.set(consensus);
    transient::watch(broker, me.clone());
    transient::forget_homed_at(broker, &me);
    node_down::watch(broker, &cluster);
    seeding::watch(broker, &cluster);
    Ok(())
}
