//! Quorum queues (`x-queue-type: quorum`): each is its own Raft group (openraft, the same
//! entry and node types as the metadata group) over the store's enqueue records, on the
//! member nodes chosen when it was declared, which the queue's definition record names.
//!
//! Every node that knows the definition has the queue: on a member node a [`Group`] with its
//! Raft log, vote and snapshot under `<data_dir>/cluster/queues/<group id>/`; on another node
//! a group without a replica that passes its proposals to the members. The inter-node
//! transport carries a group's RPCs as [`Request::Group`]. The leader runs the live queue
//! (consumers, prefetch, acknowledgements) as a core queue fed by the applied log; a consumer
//! on another node is served by the leader through forwarding's proxy (see
//! [`Group::leader_home`](crate::core::queue::Replica::leader_home)), as a classic queue's
//! consumer on a node that is not its home.

pub mod codec;
pub mod group;
pub mod machine;

pub use group::Group;

use super::definitions::QueueRecord;
use super::forward::Forward;
use super::identity::node_id;
use super::log_store::LogStore;
use super::network::Network;
use super::transport::{OpError, OpOk, Request, Response};
use super::{Cluster, NodeInfo, Raft};
use crate::core::Broker;
use group::Env;
use machine::QueueMachine;
use openraft::SnapshotPolicy;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Where a queue lives, for a proxy of consumers or publishes from another node (the
/// `forward` work wires one to this).
pub trait LeaderOf: Send + Sync {
    /// The node leading quorum queue `queue` in `vhost`, when it is one and a leader is known.
    fn leader_of(&self, vhost: &str, queue: &str) -> Option<String>;
}

/// The quorum queue groups of one node.
pub struct Registry {
    broker: Weak<Broker>,
    cluster: Weak<Cluster>,
    dir: PathBuf,
    env: Arc<Env>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
}

impl Registry {
    /// The registry of `cluster`'s node, handed its groups' RPCs, with the groups of every
    /// quorum queue the metadata already holds started.
    pub fn start(broker: &Arc<Broker>, cluster: &Arc<Cluster>) -> Arc<Self> {
        let weak = Arc::downgrade(cluster);
        let env = Arc::new(Env {
            me: cluster.me().clone(),
            auth: cluster.auth().clone(),
            timeout: std::time::Duration::from_millis(cluster.config().operation_timeout_ms),
            nodes: Box::new(move || weak.upgrade().map(|c| c.nodes()).unwrap_or_default()),
            forward: std::sync::OnceLock::new(),
        });
        let registry = Arc::new(Registry {
            broker: Arc::downgrade(broker),
            cluster: Arc::downgrade(cluster),
            dir: broker.config.server.data_dir.join("cluster").join("queues"),
            env,
            groups: Mutex::new(HashMap::new()),
        });
        cluster.set_groups(registry.clone());
        use super::Consensus;
        for (_, value) in cluster.list("queue/") {
            if let Ok(r) = serde_json::from_value::<QueueRecord>(value) {
                if !r.members.is_empty() {
                    registry.declared(&r);
                }
            }
        }
        registry
    }

    /// Consumers of a quorum queue on a node that does not lead it reach the leader through
    /// `forward` (set once, at start, after forwarding is made).
    pub fn forward_with(&self, forward: &Arc<Forward>) {
        let _ = self.env.forward.set(Arc::downgrade(forward));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Group>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The quorum queue `record` defines is replicated on its members: its group starts here
    /// (idempotent), and the queue hands its publishes to it from now on.
    pub fn declared(self: &Arc<Self>, record: &QueueRecord) {
        let (vhost, name, members) = (&record.vhost, &record.name, &record.members);
        let id = if record.group.is_empty() {
            format!("{:016x}", node_id(&format!("{vhost}\u{0}{name}")))
        } else {
            record.group.clone()
        };
        let (Some(b), Some(cluster)) = (self.broker.upgrade(), self.cluster.upgrade()) else {
            return;
        };
        let Some(queue) = b.vhost(vhost).and_then(|vh| vh.queue(name)) else {
            return;
        };
        let group = {
            let mut groups = self.lock();
            if groups.contains_key(&id) {
                return;
            }
            let g = Group::new(
                id.clone(),
                members.to_vec(),
                queue.clone(),
                &b,
                self.env.clone(),
            );
            groups.insert(id.clone(), g.clone());
            g
        };
        queue.set_replica(group.clone());
        let member = members.contains(&self.env.me.name);
        let registry = self.clone();
        tokio::spawn(async move {
            if member {
                match registry.open_member(&group, &cluster).await {
                    Ok(()) => {
                        tokio::spawn(group.clone().lead_loop());
                    }
                    Err(e) => {
                        tracing::error!(group = %group.id, error = %e, "quorum queue: cannot start its Raft group here")
                    }
                }
            }
            group.propose_loop().await;
        });
    }

    async fn open_member(&self, group: &Arc<Group>, cluster: &Cluster) -> Result<(), String> {
        let dir = self.dir.join(&group.id);
        let log = LogStore::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let machine = QueueMachine::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let c = cluster.config();
        let config = openraft::Config {
            cluster_name: format!("{}/{}", c.name, group.id),
            heartbeat_interval: c.heartbeat_ms,
            election_timeout_min: c.election_timeout_ms,
            election_timeout_max: c.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(2000),
            max_in_snapshot_log_to_keep: 200,
            // Entries carry up to a MiB of messages; a frame holds 16.
            max_payload_entries: 8,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let network = Network {
            auth: self.env.auth.clone(),
            connect_timeout: self.env.timeout,
            group: Some(group.id.clone()),
        };
        let me = node_id(&self.env.me.name);
        let raft = Raft::new(me, Arc::new(config), network, log, machine.clone())
            .await
            .map_err(|e| e.to_string())?;
        // The first member named starts the group with every member; the others join it
        // by its votes and entries.
        let first = group.members.first() == Some(&self.env.me.name);
        if first && !raft.is_initialized().await.map_err(|e| e.to_string())? {
            let nodes = cluster.nodes();
            let members: BTreeMap<u64, NodeInfo> = nodes
                .into_iter()
                .filter(|n| group.members.contains(&n.name))
                .map(|n| (node_id(&n.name), n))
                .collect();
            raft.initialize(members).await.map_err(|e| e.to_string())?;
        }
        let _ = group.member.set((raft, machine));
        Ok(())
    }

    /// Quorum queue `name` in `vhost` is deleted: its group stops here and its files go.
    pub fn deleted(&self, vhost: &str, name: &str) {
        let Some(group) = self.of_queue(vhost, name) else {
            return;
        };
        let id = group.id.clone();
        self.lock().remove(&id);
        let dir = self.dir.join(&id);
        tokio::spawn(async move {
            group.stop.send_replace(true);
            if let Some((raft, _)) = group.member.get() {
                if let Err(e) = raft.shutdown().await {
                    tracing::warn!(group = %group.id, error = %e, "quorum queue: raft did not stop cleanly");
                }
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "quorum queue: cannot remove its files")
                }
            }
        });
    }

    /// Stops every group (the node stops).
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<Group>> = self.lock().drain().map(|(_, g)| g).collect();
        for g in groups {
            g.stop.send_replace(true);
            if let Some((raft, _)) = g.member.get() {
                let _ = raft.shutdown().await;
            }
        }
    }

    fn group(&self, id: &str) -> Option<Arc<Group>> {
        self.lock().get(id).cloned()
    }

    /// The group of quorum queue `name` in `vhost`.
    fn of_queue(&self, vhost: &str, name: &str) -> Option<Arc<Group>> {
        self.lock()
            .values()
            .find(|g| g.queue().vhost == vhost && g.queue().name == name)
            .cloned()
    }

    /// Answers an RPC or proposal for group `id`.
    pub async fn handle(&self, id: &str, request: Request) -> Response {
        let group = self.group(id);
        let Some(raft) = group
            .as_ref()
            .and_then(|g| g.member.get())
            .map(|(r, _)| r.clone())
        else {
            return Response::Op(Err(OpError::Failed(format!(
                "no replica of quorum queue group {id} on this node"
            ))));
        };
        match request {
            Request::AppendEntries(r) => Response::AppendEntries(raft.append_entries(r).await),
            Request::Vote(r) => Response::Vote(raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Response::InstallSnapshot(raft.install_snapshot(r).await)
            }
            Request::Propose(command) => {
                let Some(g) = group else {
                    return Response::Op(Err(OpError::NotLeader));
                };
                Response::Op(g.propose_here(command).await.map(|index| OpOk {
                    result: Default::default(),
                    index,
                }))
            }
            _ => Response::Op(Err(OpError::Failed(
                "not a quorum queue group request".into(),
            ))),
        }
    }
}

impl LeaderOf for Registry {
    fn leader_of(&self, vhost: &str, queue: &str) -> Option<String> {
        use crate::core::queue::Replica;
        self.of_queue(vhost, queue)?.leader()
    }
}
