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

use super::definitions::{self, Change, ChangeError, QueueRecord};
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

/// The quorum queue a membership change is for.
struct Target {
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    /// Its definition as the cluster holds it.
    record: QueueRecord,
    group: Arc<Group>,
}

/// Why a quorum queue's membership was not changed.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("queue '{queue}' in vhost '{vhost}' was not found")]
    NotFound { vhost: String, queue: String },
    #[error("queue '{queue}' in vhost '{vhost}' is not a quorum queue")]
    NotQuorum { vhost: String, queue: String },
    #[error("unknown cluster node '{0}'")]
    UnknownNode(String),
    #[error("{node} is the last member of quorum queue '{queue}'; delete the queue instead")]
    LastMember { node: String, queue: String },
    #[error("{node} holds no replica of quorum queue '{queue}'")]
    NotMember { node: String, queue: String },
    #[error("the node is stopping")]
    Stopping,
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error("{0}")]
    Failed(String),
}

impl From<OpError> for MemberError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::UnknownNode(n) => MemberError::UnknownNode(n),
            other => MemberError::Failed(other.to_string()),
        }
    }
}

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
            addresses: cluster.addresses().clone(),
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
            if let Some(g) = groups.get(&id).cloned() {
                drop(groups);
                self.members_changed(&g, members, &cluster);
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
                registry.reconcile(&group, &cluster, true).await;
            } else {
                // Removed from the group while it was down: what it held is not a replica.
                remove_files(&registry.dir.join(&group.id));
            }
            group.propose_loop().await;
        });
    }

    /// The definition of `group`'s queue names `members` now (`ctl add_member`,
    /// `delete_member`): a node added opens its replica, which the leader fills before it
    /// counts as a voter; a node removed, after the leader took it out of the group, stops its
    /// replica and deletes its files, and reaches the members from then on as any other node.
    fn members_changed(
        self: &Arc<Self>,
        group: &Arc<Group>,
        members: &[String],
        cluster: &Arc<Cluster>,
    ) {
        if group.member_names() == members {
            return;
        }
        group.set_member_names(members.to_vec());
        let (registry, group, cluster) = (self.clone(), group.clone(), cluster.clone());
        tokio::spawn(async move { registry.reconcile(&group, &cluster, false).await });
    }

    /// Brings this node's replica of `group` in line with its members: opened when this node
    /// is one, removed when it is not. `first_start`: the queue was just declared or the node
    /// started, when the first member named may start the group; a replica added later never
    /// does (the group exists; the leader takes it in).
    async fn reconcile(&self, group: &Arc<Group>, cluster: &Cluster, first_start: bool) {
        let _one = group.changing.lock().await;
        let wanted = group.member_names().contains(&self.env.me.name);
        match (wanted, group.member().is_some()) {
            (true, false) => match self.open_member(group, cluster, first_start).await {
                Ok(()) => {
                    tokio::spawn(group.clone().lead_loop());
                }
                Err(e) => {
                    tracing::error!(group = %group.id, error = %e, "quorum queue: cannot start its Raft group here")
                }
            },
            (false, true) => {
                if let Some((raft, _)) = group.take_member() {
                    if let Err(e) = raft.shutdown().await {
                        tracing::warn!(group = %group.id, error = %e, "quorum queue: raft did not stop cleanly");
                    }
                }
                remove_files(&self.dir.join(&group.id));
                tracing::info!(group = %group.id, queue = %group.queue().name, "quorum queue: this node no longer holds a replica");
            }
            _ => {}
        }
    }

    async fn open_member(
        &self,
        group: &Arc<Group>,
        cluster: &Cluster,
        first_start: bool,
    ) -> Result<(), String> {
        let dir = self.dir.join(&group.id);
        let log = LogStore::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let machine = QueueMachine::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let c = cluster.config();
        let config = openraft::Config {
            cluster_name: format!("{}/{}", c.name, group.id),
            heartbeat_interval: c.heartbeat_ms,
            election_timeout_min: c.election_timeout_ms,
            election_timeout_max: c.election_timeout_max_ms(),
            // Entries carry from one message to a MiB of them: the machine asks for
            // snapshots by bytes applied too (`snapshot_wanted` below).
            snapshot_policy: SnapshotPolicy::LogsSinceLast(2000),
            // What a follower a little behind catches up from without a snapshot; each
            // kept entry may hold a MiB, in memory and rewritten at every purge.
            max_in_snapshot_log_to_keep: 16,
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
            reached: None,
            addresses: self.env.addresses.clone(),
        };
        let me = node_id(&self.env.me.name);
        let raft = Raft::new(me, Arc::new(config), network, log, machine.clone())
            .await
            .map_err(|e| e.to_string())?;
        // The first member named starts the group with every member; the others join it
        // by its votes and entries.
        let names = group.member_names();
        let first = first_start && names.first() == Some(&self.env.me.name);
        if first && !raft.is_initialized().await.map_err(|e| e.to_string())? {
            let nodes = cluster.nodes();
            let members: BTreeMap<u64, NodeInfo> = nodes
                .into_iter()
                .filter(|n| names.contains(&n.name))
                .map(|n| (node_id(&n.name), n))
                .collect();
            raft.initialize(members).await.map_err(|e| e.to_string())?;
        }
        let wanted = machine.snapshot_wanted();
        group.set_member(raft, machine);
        let weak = Arc::downgrade(group);
        let mut stop = group.stop.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = wanted.notified() => {}
                    _ = crate::cluster::stopped(&mut stop) => break,
                }
                let Some((raft, _)) = weak.upgrade().and_then(|g| g.member()) else {
                    break;
                };
                // Fails once this Raft is shut down (the replica is removed).
                if raft.trigger().snapshot().await.is_err() {
                    break;
                }
            }
        });
        let weak = Arc::downgrade(group);
        crate::cluster::failover::watch(
            move || {
                weak.upgrade()
                    .and_then(|g| g.member())
                    .map(|(raft, _)| raft)
            },
            me,
            group.heard.clone(),
            c.failover_timings(),
            group.stop.subscribe(),
        );
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
            let _one = group.changing.lock().await;
            if let Some((raft, _)) = group.take_member() {
                if let Err(e) = raft.shutdown().await {
                    tracing::warn!(group = %group.id, error = %e, "quorum queue: raft did not stop cleanly");
                }
            }
            remove_files(&dir);
        });
    }

    /// Adds `node` to quorum queue `name`'s replicas (`ctl add_member`): the definition
    /// names it first, so that it opens its replica, then the group's leader takes it in as
    /// a learner, waits for it to catch up, and makes it a voter. Running it again finishes
    /// what an interrupted run began.
    pub async fn add_member(&self, vhost: &str, name: &str, node: &str) -> Result<(), MemberError> {
        let Target {
            broker: b,
            cluster,
            mut record,
            group,
        } = self.quorum_queue(vhost, name)?;
        let info = cluster
            .nodes()
            .into_iter()
            .find(|n| n.name == node)
            .ok_or_else(|| MemberError::UnknownNode(node.to_owned()))?;
        if !record.members.iter().any(|m| m == node) {
            record.members.push(node.to_owned());
            definitions::commit(&b, Change::DeclareQueue(record)).await?;
        }
        group
            .change_members(Request::Join(info), self.env.timeout * 3)
            .await
            .map_err(MemberError::from)
    }

    /// Removes `node` from quorum queue `name`'s replicas (`ctl delete_member`): the group's
    /// leader takes it out first (a leader leaving hands the lead on), then the definition
    /// stops naming it, and that node deletes its replica. The last member stays.
    pub async fn delete_member(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), MemberError> {
        let Target {
            broker: b,
            mut record,
            group,
            ..
        } = self.quorum_queue(vhost, name)?;
        if record.members.iter().all(|m| m == node) {
            return Err(MemberError::LastMember {
                node: node.to_owned(),
                queue: name.to_owned(),
            });
        }
        group
            .change_members(Request::Forget(node.to_owned()), self.env.timeout * 3)
            .await?;
        if record.members.iter().any(|m| m == node) {
            record.members.retain(|m| m != node);
            definitions::commit(&b, Change::DeclareQueue(record)).await?;
        }
        Ok(())
    }

    /// Moves the lead of quorum queue `name` to its member `to` (`ctl rebalance`): that node
    /// takes it ([`Group::take_lead`]). Nothing to do when it leads already.
    pub async fn move_leader(&self, vhost: &str, name: &str, to: &str) -> Result<(), MemberError> {
        let Target {
            cluster,
            record,
            group,
            ..
        } = self.quorum_queue(vhost, name)?;
        if !record.members.iter().any(|m| m == to) {
            return Err(MemberError::NotMember {
                node: to.to_owned(),
                queue: name.to_owned(),
            });
        }
        let info = cluster
            .nodes()
            .into_iter()
            .find(|n| n.name == to)
            .ok_or_else(|| MemberError::UnknownNode(to.to_owned()))?;
        // Holding, leaving, electing and taking back in: each bounded by three timeouts.
        group
            .send(&info, Request::TakeLead, self.env.timeout * 10)
            .await
            .map(|_| ())
            .map_err(MemberError::from)
    }

    /// Quorum queue `name`'s definition record and group on this node.
    fn quorum_queue(&self, vhost: &str, name: &str) -> Result<Target, MemberError> {
        use super::Consensus;
        let (Some(b), Some(cluster)) = (self.broker.upgrade(), self.cluster.upgrade()) else {
            return Err(MemberError::Stopping);
        };
        let not_found = || MemberError::NotFound {
            vhost: vhost.to_owned(),
            queue: name.to_owned(),
        };
        let value = cluster
            .get(&definitions::key("queue", &[vhost, name]))
            .ok_or_else(not_found)?;
        let record: QueueRecord =
            serde_json::from_value(value).map_err(|e| MemberError::Failed(e.to_string()))?;
        if record.members.is_empty() {
            return Err(MemberError::NotQuorum {
                vhost: vhost.to_owned(),
                queue: name.to_owned(),
            });
        }
        let group = self.of_queue(vhost, name).ok_or_else(not_found)?;
        Ok(Target {
            broker: b,
            cluster,
            record,
            group,
        })
    }

    /// Stops every group (the node stops).
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<Group>> = self.lock().drain().map(|(_, g)| g).collect();
        for g in groups {
            g.stop.send_replace(true);
            if let Some((raft, _)) = g.member() {
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
        let Some(raft) = group.as_ref().and_then(|g| g.member()).map(|(r, _)| r) else {
            return Response::Op(Err(OpError::Failed(format!(
                "no replica of quorum queue group {id} on this node"
            ))));
        };
        match request {
            Request::AppendEntries(r) => {
                if let Some(g) = &group {
                    g.heard.heard();
                }
                Response::AppendEntries(raft.append_entries(r).await)
            }
            Request::Vote(r) => Response::Vote(raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Response::InstallSnapshot(raft.install_snapshot(r).await)
            }
            Request::Join(_) | Request::Forget(_) => match group {
                Some(g) => Response::Op(g.change_here(&raft, &request).await.map(|index| OpOk {
                    result: Default::default(),
                    index,
                })),
                None => Response::Op(Err(OpError::NotLeader)),
            },
            Request::HoldElections(ms) => {
                raft.runtime_config().elect(ms == 0);
                if ms > 0 {
                    let raft = raft.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        raft.runtime_config().elect(true);
                    });
                }
                Response::Op(Ok(OpOk::default()))
            }
            Request::TakeLead => match group {
                Some(g) => Response::Op(
                    g.take_lead(self.env.timeout * 3)
                        .await
                        .map(|()| OpOk::default()),
                ),
                None => Response::Op(Err(OpError::NotLeader)),
            },
            Request::Propose(command) => {
                let Some(g) = group else {
                    return Response::Op(Err(OpError::NotLeader));
                };
                Response::Op(g.propose_here(command).await)
            }
            _ => Response::Op(Err(OpError::Failed(
                "not a quorum queue group request".into(),
            ))),
        }
    }
}

/// Removes a replica's directory (gone already is fine).
fn remove_files(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "quorum queue: cannot remove its files")
        }
    }
}

impl LeaderOf for Registry {
    fn leader_of(&self, vhost: &str, queue: &str) -> Option<String> {
        use crate::core::queue::Replica;
        self.of_queue(vhost, queue)?.leader()
    }
}
