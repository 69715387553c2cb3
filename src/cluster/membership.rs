//! [`Cluster`]: one node's Raft group member, its peer listener, forming and joining the
//! cluster, and membership changes (always made on the leader; other nodes forward them).

use super::config::ClusterConfig;
use super::identity::node_id;
use super::log_store::LogStore;
use super::network::{Addresses, Network};
use super::read_index::SharedRounds;
use super::state_machine::StateMachine;
use super::tls::NodeTls;
use super::transport::{self, Auth, Handler, OpError, OpOk, Peer, Request, Response};
use super::{
    Apply, BoxFuture, ClusterError, ClusterStatus, Command, CommandResult, Consensus, MemberStatus,
    NodeInfo, Raft, Role,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// Raft's parts, replaced whole when the node resets to join another cluster.
#[derive(Clone)]
struct Member {
    raft: Raft,
    state: StateMachine,
}

pub struct Cluster {
    id: u64,
    me: NodeInfo,
    config: ClusterConfig,
    auth: Arc<Auth>,
    dir: PathBuf,
    /// Makes applied metadata live in the broker (None: the records are only kept).
    apply: Option<Arc<dyn Apply>>,
    member: RwLock<Member>,
    /// Turns true when this node's part stops; the peer listener and its connections follow.
    stop: watch::Sender<bool>,
    listener: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// One membership change at a time on the leader: openraft refuses a second while the
    /// first is in progress.
    changing: tokio::sync::Mutex<()>,
    /// Serves other nodes' requests for queues held here, once started.
    forward: std::sync::OnceLock<Arc<super::forward::Forward>>,
    /// The quorum queue groups this node runs, once they are set up (see [`super::quorum`]).
    groups: std::sync::OnceLock<Arc<super::quorum::Registry>>,
    /// When the metadata group's leader was last heard (see [`super::failover`]).
    heard: Arc<super::failover::LastHeard>,
    /// Read indexes this node asks for ([`Consensus::caught_up`]), and those it finds as the
    /// leader for other nodes, each shared among concurrent callers.
    reads: SharedRounds<Arc<ClusterError>>,
    served_reads: SharedRounds<OpError>,
    /// When each member last answered this node's AppendEntries (see [`super::node_down`]).
    reached: Arc<super::node_down::Reached>,
    /// Turns true once this node joined a cluster that was already there, to give up its own
    /// users and vhosts for the cluster's (see [`super::seeding`]).
    joined: watch::Sender<bool>,
    /// Where each member is now, for every group's connections (see [`Addresses`]).
    addresses: Arc<Addresses>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("cluster", &self.config.name)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// `e` once more, for another caller that shared the round that failed with it.
fn again(e: &ClusterError) -> ClusterError {
    match e {
        ClusterError::NoQuorum(ms) => ClusterError::NoQuorum(*ms),
        other => ClusterError::Refused(other.to_string()),
    }
}

fn raft_err<E: std::fmt::Display>(e: E) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

fn storage_err(dir: &Path) -> impl Fn(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Storage {
        path: dir.to_owned(),
        source,
    }
}

impl Cluster {
    /// Binds the peer listener, opens the Raft log and state machine in
    /// `<data_dir>/cluster`, and forms the cluster: a node without seeds that has never been
    /// a member starts a one-node cluster; one with seeds asks them to take it in. Runs until
    /// `shutdown` turns true.
    pub async fn start(
        config: &ClusterConfig,
        data_dir: &Path,
        apply: Option<Arc<dyn Apply>>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        config.validate()?;
        let cookie = config.read_cookie()?;
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ClusterError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ClusterError::Bind { addr, source })?;
        let name = config.node_name();
        let me = NodeInfo {
            name: name.clone(),
            addr: if config.advertise.is_empty() {
                bound.to_string()
            } else {
                config.advertise.clone()
            },
        };
        let auth = Arc::new(Auth {
            cluster: config.name.clone(),
            node: name.clone(),
            cookie,
            tls: NodeTls::from_config(config)?,
        });
        let dir = data_dir.join("cluster");
        let id = node_id(&name);
        let reached = Arc::new(super::node_down::Reached::default());
        let addresses = Arc::new(Addresses::default());
        let member = Self::open_member(
            id,
            config,
            &auth,
            &dir,
            apply.clone(),
            (&reached, &addresses),
        )
        .await?;
        let cluster = Arc::new(Cluster {
            id,
            me,
            config: config.clone(),
            auth: auth.clone(),
            dir,
            apply,
            member: RwLock::new(member),
            stop: watch::Sender::new(false),
            listener: tokio::sync::Mutex::new(None),
            changing: tokio::sync::Mutex::new(()),
            forward: std::sync::OnceLock::new(),
            groups: std::sync::OnceLock::new(),
            heard: Arc::default(),
            reads: SharedRounds::new(),
            served_reads: SharedRounds::new(),
            reached,
            joined: watch::Sender::new(false),
            addresses,
        });
        let members: Arc<dyn super::forward::Members> = cluster.clone();
        cluster.addresses.set(Arc::downgrade(&members));
        let weak = Arc::downgrade(&cluster);
        super::failover::watch(
            move || weak.upgrade().map(|c| c.raft()),
            id,
            cluster.heard.clone(),
            config.failover_timings(),
            cluster.stop.subscribe(),
        );
        tracing::info!(node = %cluster.me, cluster = %config.name, "cluster listener started");
        let handler: Arc<dyn Handler> = cluster.clone();
        let serving = tokio::spawn(transport::serve(
            listener,
            auth,
            handler,
            cluster.timeout(),
            cluster.stop.subscribe(),
        ));
        *cluster.listener.lock().await = Some(serving);
        cluster.form().await?;
        let stopping = cluster.clone();
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            super::stopped(&mut shutdown).await;
            stopping.shutdown().await;
        });
        Ok(cluster)
    }

    async fn open_member(
        id: u64,
        config: &ClusterConfig,
        auth: &Arc<Auth>,
        dir: &Path,
        apply: Option<Arc<dyn Apply>>,
        (reached, addresses): (&Arc<super::node_down::Reached>, &Arc<Addresses>),
    ) -> Result<Member, ClusterError> {
        let log = LogStore::open(dir).map_err(storage_err(dir))?;
        let state = StateMachine::open(dir, apply).map_err(storage_err(dir))?;
        let raft_config = openraft::Config {
            cluster_name: config.name.clone(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_max_ms(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(raft_err)?;
        let network = Network {
            auth: auth.clone(),
            connect_timeout: Duration::from_millis(config.operation_timeout_ms),
            group: None,
            reached: Some(reached.clone()),
            addresses: addresses.clone(),
        };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, state.clone())
            .await
            .map_err(raft_err)?;
        Ok(Member { raft, state })
    }

    fn member(&self) -> Member {
        self.member
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn raft(&self) -> Raft {
        self.member().raft
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.operation_timeout_ms)
    }

    /// This node's name and inter-node address.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// The operation timeout of every inter-node call.
    pub fn operation_timeout(&self) -> Duration {
        self.timeout()
    }

    /// Starts answering other nodes' requests for queues held here (once).
    pub fn serve_forward(&self, forward: Arc<super::forward::Forward>) {
        let _ = self.forward.set(forward);
    }

    /// Hands the quorum queue groups' RPCs to `groups` (set once, at start).
    pub fn set_groups(&self, groups: Arc<super::quorum::Registry>) {
        let _ = self.groups.set(groups);
    }

    /// The members of the cluster, as this node knows them.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        membership_of(&self.raft())
            .nodes()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The auth every inter-node connection proves itself with.
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// The cluster's configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Follows the index of the last entry applied on this node.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.member().state.applied()
    }

    /// Starts a one-node cluster, or (with seeds) keeps asking them to take this node in.
    async fn form(self: &Arc<Self>) -> Result<(), ClusterError> {
        let raft = self.raft();
        if raft.is_initialized().await.map_err(raft_err)? {
            tracing::info!(node = %self.me.name, "cluster: rejoining with the log on disk");
            self.announce_if_moved();
            return Ok(());
        }
        if self.config.seeds.is_empty() {
            let mut members = BTreeMap::new();
            members.insert(self.id, self.me.clone());
            raft.initialize(members).await.map_err(raft_err)?;
            tracing::info!(node = %self.me.name, "cluster: formed a new one-node cluster");
            return Ok(());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            while !*this.stop.borrow() {
                if let Some(seed) = this
                    .ask_to_join_one_of(&this.config.seeds, "seed did not take this node in yet")
                    .await
                {
                    tracing::info!(node = %this.me.name, %seed, "cluster: joined");
                    this.joined.send_replace(true);
                    return;
                }
                if this.raft().is_initialized().await.unwrap_or(true) {
                    return;
                }
                delay = Self::pause(delay).await;
            }
        });
        Ok(())
    }

    /// When the membership has this node at another address than the one it listens on now
    /// (it came back on another address), keeps asking the other members to move it, as a
    /// join does, until one passes that to the leader: else the leader would go on sending
    /// its entries to the old address.
    fn announce_if_moved(self: &Arc<Self>) {
        let known = membership_of(&self.raft());
        if known
            .get_node(&self.id)
            .is_none_or(|n| n.addr == self.me.addr)
        {
            return;
        }
        let others: Vec<String> = known
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, n)| n.addr.clone())
            .collect();
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            while !*this.stop.borrow() {
                if this
                    .ask_to_join_one_of(&others, "the new address not taken yet")
                    .await
                    .is_some()
                {
                    tracing::info!(node = %this.me.name, addr = %this.me.addr, "cluster: the membership has this node's new address");
                    return;
                }
                delay = Self::pause(delay).await;
            }
        });
    }

    /// Asks each of `addrs` in turn to take this node in; the first that did, if any.
    async fn ask_to_join_one_of(&self, addrs: &[String], not_yet: &str) -> Option<String> {
        for addr in addrs {
            match self.ask_to_join(addr).await {
                Ok(()) => return Some(addr.clone()),
                Err(e) => tracing::info!(%addr, error = %e, "cluster: {not_yet}"),
            }
        }
        None
    }

    /// Waits `delay` between rounds of asking; the next round's delay, doubled up to 5 s.
    async fn pause(delay: Duration) -> Duration {
        tokio::time::sleep(delay).await;
        (delay * 2).min(Duration::from_secs(5))
    }

    /// Sends this node's join request to `seed`, which passes it to the leader.
    async fn ask_to_join(&self, seed: &str) -> Result<(), ClusterError> {
        let peer = Peer::new(seed.to_owned(), None, self.auth.clone(), self.timeout());
        // Catching up and the two membership changes take up to a few operation timeouts.
        let limit = self.timeout() * 4;
        match peer.call(&Request::Join(self.me.clone()), limit).await {
            Ok(Response::Op(Ok(_))) => Ok(()),
            Ok(Response::Op(Err(e))) => Err(ClusterError::Refused(e.to_string())),
            Ok(_) => Err(ClusterError::Peer {
                addr: seed.to_owned(),
                reason: "answered with the wrong kind of response".into(),
            }),
            Err(e) => Err(ClusterError::Peer {
                addr: seed.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Runs a membership change or proposal on the leader: here when this node leads, else
    /// forwarded to the leader it knows; retried as leadership settles, until the operation
    /// timeout, after which it is refused as [`ClusterError::NoQuorum`].
    async fn on_leader(&self, op: Request) -> Result<OpOk, ClusterError> {
        // A join waits for the new node to catch up as well as for two commits.
        let within = match op {
            Request::Join(_) => self.timeout() * 3,
            _ => self.timeout(),
        };
        let deadline = Instant::now() + within;
        let mut metrics = self.raft().metrics();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClusterError::NoQuorum(within.as_millis() as u64));
            }
            let (leader, leader_node) = {
                let m = metrics.borrow_and_update();
                let leader = m.current_leader;
                let node =
                    leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
                (leader, node)
            };
            let attempt = match (leader, leader_node) {
                (Some(l), _) if l == self.id => {
                    match tokio::time::timeout(deadline - now, self.execute(&op)).await {
                        Err(_) => Err(OpError::NotLeader),
                        Ok(r) => r,
                    }
                }
                (Some(_), Some(node)) => {
                    let peer = Peer::new(
                        node.addr,
                        Some(node.name),
                        self.auth.clone(),
                        self.timeout(),
                    );
                    let forwarded = Request::Forwarded(Box::new(op.clone()));
                    match peer.call(&forwarded, deadline - now).await {
                        Ok(Response::Op(r)) => r,
                        _ => Err(OpError::NotLeader),
                    }
                }
                _ => Err(OpError::NotLeader),
            };
            match attempt {
                Ok(r) => return Ok(r),
                Err(OpError::NotLeader) => {
                    // Wait for news of a leader (or a moment), then try again.
                    let pause =
                        Duration::from_millis(50).min(deadline - Instant::now().min(deadline));
                    let _ = tokio::time::timeout(pause, metrics.changed()).await;
                }
                Err(OpError::UnknownNode(name)) => return Err(ClusterError::UnknownNode(name)),
                Err(OpError::Failed(reason)) => return Err(ClusterError::Refused(reason)),
            }
        }
    }

    /// Runs `op` on this node's Raft, which must be the leader.
    async fn execute(&self, op: &Request) -> Result<OpOk, OpError> {
        let raft = self.raft();
        match op {
            Request::Propose(command) => raft
                .client_write(command.clone())
                .await
                .map(|r| OpOk {
                    result: r.data,
                    index: r.log_id.index,
                })
                .map_err(write_error),
            Request::ReadIndex => raft
                .get_read_log_id()
                .await
                .map(|(read, _applied)| OpOk {
                    result: CommandResult::default(),
                    index: read.map_or(0, |l| l.index),
                })
                .map_err(|e| match e {
                    RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)) => {
                        OpError::NotLeader
                    }
                    other => OpError::Failed(other.to_string()),
                }),
            Request::Join(node) => {
                let _one = self.changing.lock().await;
                let id = node_id(&node.name);
                let known = membership_of(&raft);
                if let Some(member) = known.get_node(&id).filter(|n| n.addr != node.addr) {
                    // A member that came back at another address moves there, unless it
                    // still answers at the old one (two nodes with one name).
                    let old = Peer::new(
                        member.addr.clone(),
                        Some(node.name.clone()),
                        self.auth.clone(),
                        self.timeout(),
                    );
                    if Self::ping(old, self.timeout()).await {
                        return Err(OpError::Failed(format!(
                            "{} answers at {}; forget_cluster_node it before it joins from {}",
                            node.name, member.addr, node.addr
                        )));
                    }
                    let moved = ChangeMembers::SetNodes(BTreeMap::from([(id, node.clone())]));
                    let r = raft
                        .change_membership(moved, false)
                        .await
                        .map_err(write_error)?;
                    tracing::info!(node = %node, from = %member.addr, "cluster: member moved to a new address");
                    return Ok(OpOk {
                        result: CommandResult::default(),
                        index: r.log_id.index,
                    });
                }
                let Some(index) = add_voter(&raft, node).await? else {
                    return Ok(OpOk::default());
                };
                tracing::info!(node = %node, "cluster: member added");
                Ok(OpOk {
                    result: CommandResult::default(),
                    index,
                })
            }
            Request::Forget(name) => {
                let _one = self.changing.lock().await;
                let id = node_id(name);
                let known = membership_of(&raft);
                if known.get_node(&id).is_none() {
                    return Err(OpError::UnknownNode(name.clone()));
                }
                if known.voter_ids().eq([id]) {
                    return Err(OpError::Failed(
                        ClusterError::LastVoter(name.clone()).to_string(),
                    ));
                }
                let r = raft
                    .change_membership(removal(&known, id), false)
                    .await
                    .map_err(write_error)?;
                tracing::info!(node = %name, "cluster: member removed");
                Ok(OpOk {
                    result: CommandResult::default(),
                    index: r.log_id.index,
                })
            }
            _ => Err(OpError::Failed("not a leader operation".into())),
        }
    }

    /// Whether this node leads the metadata group, as its Raft last knows.
    pub(super) fn leading(&self) -> bool {
        leads(&self.raft().metrics().borrow(), self.id)
    }

    /// Proposes `command` only here, while this node leads (never passed on to another
    /// leader), waiting at most the operation timeout for its commit: for a change this
    /// leader decided on from what it alone sees, which a leader of a later term must not
    /// make on its behalf.
    pub(super) async fn propose_as_leader(&self, command: Command) -> Result<(), ClusterError> {
        if !self.leading() {
            return Err(ClusterError::Refused("not the leader".into()));
        }
        let within = self.timeout();
        match tokio::time::timeout(within, self.execute(&Request::Propose(command))).await {
            Err(_) => Err(ClusterError::NoQuorum(within.as_millis() as u64)),
            Ok(Err(e)) => Err(ClusterError::Refused(e.to_string())),
            Ok(Ok(done)) => {
                self.wait_applied(done.index).await;
                Ok(())
            }
        }
    }

    /// Where each member is now, for the quorum groups' connections.
    pub(super) fn addresses(&self) -> &Arc<Addresses> {
        &self.addresses
    }

    /// Turns true once this node joined a cluster that was already there.
    pub(super) fn joined(&self) -> watch::Receiver<bool> {
        self.joined.subscribe()
    }

    /// When each member last answered this node's AppendEntries.
    pub(super) fn reached(&self) -> &Arc<super::node_down::Reached> {
        &self.reached
    }

    /// Whether this node's cluster is only itself (it may reset to join another).
    fn alone(&self) -> bool {
        let known = membership_of(&self.raft());
        let ids: Vec<u64> = known.nodes().map(|(id, _)| *id).collect();
        ids.is_empty() || ids == [self.id]
    }

    /// Drops this node's one-node cluster (its log, vote and metadata) to start afresh.
    async fn reset(&self) -> Result<(), ClusterError> {
        let old = self.member();
        old.raft.shutdown().await.map_err(raft_err)?;
        for file in ["log", "vote", "committed", "purged", "snapshot"] {
            match std::fs::remove_file(self.dir.join(file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(storage_err(&self.dir)(e)),
            }
        }
        let fresh = Self::open_member(
            self.id,
            &self.config,
            &self.auth,
            &self.dir,
            self.apply.clone(),
            (&self.reached, &self.addresses),
        )
        .await?;
        *self.member.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        tracing::info!(node = %self.me.name, "cluster: reset to join another cluster");
        Ok(())
    }

    /// Waits (at most the operation timeout) until this node has applied entry `index`.
    async fn wait_applied(&self, index: u64) {
        let mut applied = self.applied();
        let _ = tokio::time::timeout(self.timeout(), applied.wait_for(|i| *i >= index)).await;
    }

    async fn ping(peer: Peer, limit: Duration) -> bool {
        matches!(peer.call(&Request::Ping, limit).await, Ok(Response::Pong))
    }
}

impl super::forward::Members for Cluster {
    fn address_of(&self, node: &str) -> Option<String> {
        membership_of(&self.raft())
            .nodes()
            .find(|(_, n)| n.name == node)
            .map(|(_, n)| n.addr.clone())
    }
}

/// The membership as `raft` last knows it.
/// A leader write's failure: [`OpError::NotLeader`] when another node leads, else why.
pub(super) fn write_error(e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> OpError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => OpError::NotLeader,
        other => OpError::Failed(other.to_string()),
    }
}

/// Makes `node` a voter of the group `raft` leads (the metadata group or a quorum queue's):
/// a learner first, blocking until it has caught up, so that it counts towards a majority
/// only once it holds what the others hold. The log index of the change; None when it
/// votes already.
pub(super) async fn add_voter(raft: &Raft, node: &NodeInfo) -> Result<Option<u64>, OpError> {
    let id = node_id(&node.name);
    if membership_of(raft).voter_ids().any(|v| v == id) {
        return Ok(None);
    }
    raft.add_learner(id, node.clone(), true)
        .await
        .map_err(write_error)?;
    let r = raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(write_error)?;
    Ok(Some(r.log_id.index))
}

/// Whether these metrics are of member `id` leading its group.
pub(super) fn leads(m: &openraft::RaftMetrics<u64, NodeInfo>, id: u64) -> bool {
    m.state == ServerState::Leader && m.current_leader == Some(id)
}

/// The change that takes member `id` out of `known`: its vote, or (a learner) its place.
pub(super) fn removal(
    known: &openraft::Membership<u64, NodeInfo>,
    id: u64,
) -> ChangeMembers<u64, NodeInfo> {
    if known.voter_ids().any(|v| v == id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    }
}

pub(super) fn membership_of(raft: &Raft) -> openraft::Membership<u64, NodeInfo> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}

impl Handler for Cluster {
    fn handle(&self, request: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            let raft = self.raft();
            match request {
                Request::AppendEntries(r) => {
                    self.heard.heard();
                    Response::AppendEntries(raft.append_entries(r).await)
                }
                Request::Vote(r) => Response::Vote(raft.vote(r).await),
                Request::InstallSnapshot(r) => {
                    Response::InstallSnapshot(raft.install_snapshot(r).await)
                }
                Request::Ping => Response::Pong,
                Request::Forward(call) => Response::Forward(match self.forward.get() {
                    Some(f) => f.handle(call).await,
                    None => super::forward::wire::Reply::Unavailable,
                }),
                Request::Group { group, request } => match self.groups.get() {
                    Some(groups) => groups.handle(&group, *request).await,
                    None => Response::Op(Err(OpError::Failed(format!(
                        "no quorum queue group {group} on this node"
                    )))),
                },
                Request::Forwarded(op) if matches!(*op, Request::ReadIndex) => {
                    let index = self
                        .served_reads
                        .read(|| async { self.execute(&op).await.map(|r| r.index) })
                        .await;
                    Response::Op(index.map(|index| OpOk {
                        result: CommandResult::default(),
                        index,
                    }))
                }
                Request::Forwarded(op) => Response::Op(self.execute(&op).await),
                Request::HoldElections(_) | Request::TakeLead => {
                    Response::Op(Err(OpError::Failed(
                        "a quorum queue group's request, sent without its group".into(),
                    )))
                }
                op @ (Request::Join(_)
                | Request::Forget(_)
                | Request::Propose(_)
                | Request::ReadIndex) => {
                    Response::Op(self.on_leader(op).await.map_err(|e| match e {
                        ClusterError::NoQuorum(_) => OpError::NotLeader,
                        ClusterError::UnknownNode(name) => OpError::UnknownNode(name),
                        other => OpError::Failed(other.to_string()),
                    }))
                }
            }
        })
    }
}

impl Consensus for Cluster {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<CommandResult, ClusterError>> {
        Box::pin(async move {
            let done = self.on_leader(Request::Propose(command)).await?;
            // Committed on a majority; wait until this node has applied it too, so that what
            // the caller reads next here includes it.
            self.wait_applied(done.index).await;
            Ok(done.result)
        })
    }

    fn caught_up(&self) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let index = self
                .reads
                .read(|| async {
                    self.on_leader(Request::ReadIndex)
                        .await
                        .map(|r| r.index)
                        .map_err(Arc::new)
                })
                .await
                .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|shared| again(&shared)))?;
            self.wait_applied(index).await;
            Ok(())
        })
    }

    fn add_member(&self, node: NodeInfo) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let done = self.on_leader(Request::Join(node)).await?;
            self.wait_applied(done.index).await;
            Ok(())
        })
    }

    fn remove_member(&self, name: String) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let done = self.on_leader(Request::Forget(name)).await?;
            self.wait_applied(done.index).await;
            Ok(())
        })
    }

    fn join(&self, seed: String) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            if !self.alone() {
                return Err(ClusterError::Refused(
                    "this node is already a member of a cluster of several nodes; forget it there first".into(),
                ));
            }
            self.reset().await?;
            self.ask_to_join(&seed).await?;
            self.joined.send_replace(true);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, ClusterStatus> {
        Box::pin(async move {
            let raft = self.raft();
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership().clone();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let own_role = match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Unjoined,
            };
            let limit = self.timeout().min(Duration::from_secs(1));
            let mut pings = tokio::task::JoinSet::new();
            for (id, node) in membership.nodes() {
                if *id != self.id {
                    let peer = Peer::new(
                        node.addr.clone(),
                        Some(node.name.clone()),
                        self.auth.clone(),
                        limit,
                    );
                    let id = *id;
                    pings.spawn(async move { (id, Self::ping(peer, limit).await) });
                }
            }
            let mut running = BTreeMap::new();
            while let Some(done) = pings.join_next().await {
                if let Ok((id, up)) = done {
                    running.insert(id, up);
                }
            }
            let mut members: Vec<MemberStatus> = membership
                .nodes()
                .map(|(id, node)| {
                    let is_leader = m.current_leader == Some(*id);
                    let role = if *id == self.id {
                        own_role
                    } else if is_leader {
                        Role::Leader
                    } else if voters.contains(id) {
                        Role::Follower
                    } else {
                        Role::Learner
                    };
                    MemberStatus {
                        name: node.name.clone(),
                        addr: node.addr.clone(),
                        voter: voters.contains(id),
                        running: *id == self.id || running.get(id).copied().unwrap_or(false),
                        role,
                        is_leader,
                    }
                })
                .collect();
            if members.is_empty() {
                members.push(MemberStatus {
                    name: self.me.name.clone(),
                    addr: self.me.addr.clone(),
                    voter: false,
                    running: true,
                    role: Role::Unjoined,
                    is_leader: false,
                });
            }
            members.sort_by(|a, b| a.name.cmp(&b.name));
            let leader = m
                .current_leader
                .and_then(|l| membership.get_node(&l).map(|n| n.name.clone()));
            ClusterStatus {
                cluster_name: self.config.name.clone(),
                node_name: self.me.name.clone(),
                role: if members
                    .iter()
                    .any(|x| x.name == self.me.name && x.role != Role::Unjoined)
                {
                    own_role
                } else {
                    Role::Unjoined
                },
                leader,
                term: m.current_term,
                last_applied: m.last_applied.map(|l| l.index),
                members,
            }
        })
    }

    fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.member().state.get(key)
    }

    fn list(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        self.member().state.list(prefix)
    }

    fn node(&self) -> NodeInfo {
        self.me.clone()
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        Cluster::nodes(self)
    }

    fn quorum(&self) -> Option<Arc<super::quorum::Registry>> {
        self.groups.get().cloned()
    }

    fn quorum_replicas(&self) -> u64 {
        self.config.quorum_replicas
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.send_replace(true);
            if let Some(groups) = self.groups.get() {
                groups.shutdown().await;
            }
            if let Some(serving) = self.listener.lock().await.take() {
                let _ = serving.await;
            }
            if let Err(e) = self.raft().shutdown().await {
                tracing::warn!(error = %e, "cluster: raft did not stop cleanly");
            }
        })
    }
}
