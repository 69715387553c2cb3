//! One quorum queue on one node: its Raft group member (on a member node), the proposals
//! waiting to go into the group's log, and the live queue while this node leads.
//!
//! Publishes, settlements and returns are gathered while a proposal is in flight and go in
//! one entry (one fsync round trip on a majority for many messages). A proposal is made on
//! the leader: here when this node leads, else sent to the leader (or, on a node that holds
//! no replica, to the members in turn). It is retried until it commits: a node cut off from a
//! majority sends no confirm, as RabbitMQ's publisher to a quorum queue without a quorum
//! waits. A retry after a lost answer may commit a message twice (at-least-once).

use super::codec::{self, Ops};
use super::machine::{Feed, Held, QueueMachine};
use crate::cluster::forward::Forward;
use crate::cluster::identity::node_id;
use crate::cluster::transport::{Auth, OpError, Peer, Request, Response};
use crate::cluster::{Command, NodeInfo, Raft};
use crate::core::message::Message;
use crate::core::queue::{Queue, RemoteHome, Replica, Ticket};
use crate::core::Broker;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The most message bytes one entry carries (the transport's frames are at most 16 MiB, and
/// openraft sends several entries in one).
const ENTRY_BYTES: usize = 1 << 20;

/// What is waiting to be proposed.
#[derive(Default)]
struct Pending {
    ops: Ops,
    /// One per message in `ops.enqueue`, in the same order.
    tickets: Vec<Ticket>,
}

/// What a group needs from the cluster around it.
pub struct Env {
    pub me: NodeInfo,
    pub auth: Arc<Auth>,
    pub timeout: Duration,
    /// The cluster's members, to find the nodes of a group's members.
    pub nodes: Box<dyn Fn() -> Vec<NodeInfo> + Send + Sync>,
    /// Proxies to a group's leader for consumers on other nodes (set once at start).
    pub forward: OnceLock<Weak<Forward>>,
}

pub struct Group {
    pub id: String,
    pub members: Vec<String>,
    queue: Arc<Queue>,
    broker: Weak<Broker>,
    env: Arc<Env>,
    /// This node's member of the group (None on a node that holds no replica).
    pub(super) member: OnceLock<(Raft, QueueMachine)>,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Set while this node leads and its live queue serves.
    live: AtomicBool,
    /// How often each message was returned, while live.
    counts: Mutex<HashMap<u64, u64>>,
    pub(super) stop: watch::Sender<bool>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// While another node leads: the proxy through which this node's consumers reach it.
    served_by: Mutex<Option<Arc<dyn RemoteHome>>>,
    /// The leader another node named, for a node holding no replica (it has no view).
    named_leader: Mutex<Option<String>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Group {
    pub fn new(
        id: String,
        members: Vec<String>,
        queue: Arc<Queue>,
        broker: &Arc<Broker>,
        env: Arc<Env>,
    ) -> Arc<Self> {
        Arc::new(Group {
            id,
            members,
            queue,
            broker: Arc::downgrade(broker),
            env,
            member: OnceLock::new(),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            live: AtomicBool::new(false),
            counts: Mutex::new(HashMap::new()),
            stop: watch::Sender::new(false),
            peers: Mutex::new(HashMap::new()),
            served_by: Mutex::new(None),
            named_leader: Mutex::new(None),
        })
    }

    /// The queue on this node.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    fn raft(&self) -> Option<&Raft> {
        self.member.get().map(|(r, _)| r)
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn peer(&self, node: &NodeInfo) -> Arc<Peer> {
        lock(&self.peers)
            .entry(node.addr.clone())
            .or_insert_with(|| {
                Arc::new(Peer::new(
                    node.addr.clone(),
                    Some(node.name.clone()),
                    self.env.auth.clone(),
                    self.env.timeout,
                ))
            })
            .clone()
    }

    /// Takes what is waiting, at most [`ENTRY_BYTES`] of messages.
    fn take_pending(&self) -> (Ops, Vec<Ticket>) {
        let mut p = lock(&self.pending);
        let mut bytes = 0;
        let n = p
            .ops
            .enqueue
            .iter()
            .take_while(|m| {
                bytes += m.0.len();
                bytes <= ENTRY_BYTES
            })
            .count()
            .max(1)
            .min(p.ops.enqueue.len());
        let enqueue: Vec<_> = p.ops.enqueue.drain(..n).collect();
        let tickets: Vec<_> = p.tickets.drain(..n).collect();
        let ops = Ops {
            enqueue,
            settle: std::mem::take(&mut p.ops.settle),
            returned: std::mem::take(&mut p.ops.returned),
        };
        (ops, tickets)
    }

    /// Proposes what is waiting, one entry at a time, until the group is stopped.
    pub async fn propose_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = crate::cluster::stopped(&mut stop) => break,
            }
            loop {
                let (ops, tickets) = self.take_pending();
                if ops.is_empty() {
                    break;
                }
                if !self.propose_until_committed(&ops).await {
                    tickets.iter().for_each(Ticket::fail);
                    break;
                }
                tickets.iter().for_each(Ticket::commit);
                if !tickets.is_empty() {
                    if let Some(store) = self.broker.upgrade().and_then(|b| b.store.clone()) {
                        store.log.nudge();
                    }
                }
            }
        }
        // Stopped (the queue was deleted, or the node stops): nothing more will commit.
        let mut p = lock(&self.pending);
        p.tickets.drain(..).for_each(|t| t.fail());
        p.ops = Ops::default();
    }

    /// False once the group is stopped before `ops` committed.
    async fn propose_until_committed(&self, ops: &Ops) -> bool {
        let mut delay = Duration::from_millis(20);
        let mut turn = 0usize;
        while !self.stopped() {
            match self.try_propose(ops, turn).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::debug!(group = %self.id, error = %e, "quorum queue: proposal not committed yet")
                }
            }
            turn += 1;
            let mut stop = self.stop.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::cluster::stopped(&mut stop) => return false,
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        false
    }

    async fn try_propose(&self, ops: &Ops, turn: usize) -> Result<(), String> {
        let command = Command::Queue(ops.clone());
        let me = node_id(&self.env.me.name);
        let target = match self.raft() {
            Some(raft) => {
                let m = raft.metrics().borrow().clone();
                match m.current_leader {
                    Some(l) if l == me => {
                        return match raft.client_write(command).await {
                            Ok(_) => Ok(()),
                            Err(e) => Err(e.to_string()),
                        };
                    }
                    Some(l) => m.membership_config.membership().get_node(&l).cloned(),
                    None => None,
                }
            }
            // No replica here: ask the members in turn (each passes it to its leader's Raft
            // only if it leads, so a wrong guess is refused, not forwarded again).
            None => {
                let nodes = (self.env.nodes)();
                let members: Vec<NodeInfo> = nodes
                    .into_iter()
                    .filter(|n| self.members.contains(&n.name))
                    .collect();
                members.get(turn % members.len().max(1)).cloned()
            }
        };
        let Some(node) = target else {
            return Err("no leader known".into());
        };
        let request = Request::Group {
            group: self.id.clone(),
            request: Box::new(Request::Propose(command)),
        };
        match self.peer(&node).call(&request, self.env.timeout).await {
            Ok(Response::Op(Ok(_))) => Ok(()),
            Ok(Response::Op(Err(e))) => Err(format!("{}: {e}", node.name)),
            Ok(_) => Err(format!("{}: answered with the wrong kind", node.name)),
            Err(e) => Err(format!("{}: {e}", node.name)),
        }
    }

    /// Commits `command` on this node's Raft, which must lead (a proposal sent here).
    pub async fn propose_here(&self, command: Command) -> Result<u64, OpError> {
        let Some(raft) = self.raft() else {
            return Err(OpError::NotLeader);
        };
        raft.client_write(command)
            .await
            .map(|r| r.log_id.index)
            .map_err(
                |e: RaftError<u64, ClientWriteError<u64, NodeInfo>>| match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => OpError::NotLeader,
                    other => OpError::Failed(other.to_string()),
                },
            )
    }

    /// Follows this node's role in the group: the live queue serves while it leads, from the
    /// messages the group holds once everything committed before is applied here.
    pub async fn lead_loop(self: Arc<Self>) {
        let Some((raft, machine)) = self.member.get() else {
            return;
        };
        let mut metrics = raft.metrics();
        let mut stop = self.stop.subscribe();
        let me = node_id(&self.env.me.name);
        loop {
            let leading = {
                let m = metrics.borrow_and_update();
                m.state == ServerState::Leader && m.current_leader == Some(me)
            };
            let live = self.live.load(Ordering::Acquire);
            if leading && !live {
                match raft.ensure_linearizable().await {
                    Ok(_) => self.go_live(machine),
                    Err(e) => {
                        tracing::debug!(group = %self.id, error = %e, "quorum queue: not leading after all")
                    }
                }
            } else if !leading && live {
                self.go_offline(machine);
            }
            if !leading && self.served_by_other_than(self.leader().as_deref()) {
                self.leader_moved();
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { break },
                _ = crate::cluster::stopped(&mut stop) => break,
            }
        }
        if self.live.load(Ordering::Acquire) {
            self.go_offline(machine);
        }
    }

    fn go_live(self: &Arc<Self>, machine: &QueueMachine) {
        self.leader_moved();
        let feed: Arc<dyn Feed> = self.clone();
        let counts = machine.go_live(feed);
        *lock(&self.counts) = counts.into_iter().collect();
        self.live.store(true, Ordering::Release);
        tracing::info!(group = %self.id, queue = %self.queue.name, node = %self.env.me.name, "quorum queue: this node leads it now");
    }

    fn go_offline(&self, machine: &QueueMachine) {
        self.live.store(false, Ordering::Release);
        machine.stop_live();
        lock(&self.counts).clear();
        for c in self.queue.clear_live() {
            c.sink.cancelled(&self.queue, &c.tag);
        }
        tracing::info!(group = %self.id, queue = %self.queue.name, "quorum queue: this node no longer leads it");
    }

    /// Whether this node's consumers reach a leader other than `leader` (None: unknown).
    fn served_by_other_than(&self, leader: Option<&str>) -> bool {
        lock(&self.served_by)
            .as_ref()
            .is_some_and(|p| Some(p.home()) != leader)
    }

    /// The lead moved away from the node this node's consumers reached: they are cancelled
    /// (`basic.cancel`), as on the node that lost the lead, and consume again from the new
    /// leader. Their unacknowledged deliveries are the new leader's to redeliver.
    fn leader_moved(&self) {
        let Some(old) = lock(&self.served_by).take() else {
            return;
        };
        for c in self.queue.clear_live() {
            old.consumer_removed(&self.queue, c.id);
            c.sink.cancelled(&self.queue, &c.tag);
        }
    }

    fn push(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut lock(&self.pending));
        self.wake.notify_one();
    }
}

impl Feed for Group {
    fn committed(&self, id: u64, held: &Held, redelivered: bool) {
        let Some(b) = self.broker.upgrade() else {
            return;
        };
        match codec::decode(&held.message, |size| b.memory.charge(size)) {
            Ok(m) => {
                let effects =
                    self.queue
                        .enqueue_committed(id, Arc::new(m), redelivered || held.returns > 0);
                if let Some(vh) = b.vhost(&self.queue.vhost) {
                    vh.apply(&self.queue, effects);
                }
            }
            Err(e) => {
                tracing::error!(group = %self.id, id, "quorum queue: undecodable message dropped: {e}")
            }
        }
    }
}

impl Replica for Group {
    fn propose(&self, message: &Arc<Message>) -> Ticket {
        let ticket = Ticket::pending();
        if self.stopped() {
            ticket.fail();
            return ticket;
        }
        let encoded = codec::encode(message);
        self.push(|p| {
            p.ops.enqueue.push(encoded);
            p.tickets.push(ticket.clone());
        });
        ticket
    }

    fn settled(&self, ids: &[u64]) {
        {
            let mut counts = lock(&self.counts);
            for id in ids {
                counts.remove(id);
            }
        }
        self.push(|p| p.ops.settle.extend_from_slice(ids));
    }

    fn returned(&self, ids: &[u64]) -> Vec<u64> {
        let out: Vec<u64> = {
            let mut counts = lock(&self.counts);
            ids.iter()
                .map(|id| {
                    let c = counts.entry(*id).or_insert(0);
                    *c += 1;
                    *c
                })
                .collect()
        };
        if !ids.is_empty() {
            self.push(|p| p.ops.returned.extend_from_slice(ids));
        }
        out
    }

    fn is_leader(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn leader(&self) -> Option<String> {
        let raft = self.raft()?;
        let m = raft.metrics().borrow().clone();
        let l = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.name.clone())
    }

    fn leader_home(&self) -> Option<Arc<dyn RemoteHome>> {
        if self.live.load(Ordering::Acquire) {
            return None;
        }
        let leader = match self.raft() {
            Some(_) => self.leader()?,
            None => lock(&self.named_leader)
                .clone()
                .or_else(|| self.members.first().cloned())?,
        };
        if leader == self.env.me.name {
            // Elected here, not serving yet (catching up on what was committed before).
            return None;
        }
        let mut served = lock(&self.served_by);
        match served.as_ref() {
            Some(p) if p.home() == leader => return Some(p.clone()),
            // The lead moved; until the consumers that reached the old leader are cancelled
            // (`leader_moved`, never under a queue operation's lock) nothing is served here.
            Some(_) => return None,
            None => {}
        }
        let forward = self.env.forward.get()?.upgrade()?;
        let proxy: Arc<dyn RemoteHome> =
            forward.proxy_on(&leader, &self.queue.vhost, &self.queue.name)?;
        *served = Some(proxy.clone());
        Some(proxy)
    }

    fn leader_named(&self, node: &str) {
        if self.raft().is_some() {
            // A member follows its own Raft's view (its lead loop moves its consumers).
            return;
        }
        *lock(&self.named_leader) = Some(node.to_owned());
        if self.served_by_other_than(Some(node)) {
            self.leader_moved();
        }
    }

    fn members(&self) -> Vec<String> {
        self.members.clone()
    }

    fn messages(&self) -> Option<u64> {
        self.member.get().map(|(_, m)| m.held() as u64)
    }
}
