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
use crate::cluster::membership::{add_voter, leads, membership_of, removal, write_error};
use crate::cluster::transport::{Auth, OpError, OpOk, Peer, Request, Response};
use crate::cluster::{Command, NodeInfo, Raft};
use crate::core::message::Message;
use crate::core::queue::{ConsumeError, Queue, RemoteHome, Replica, ServingFuture, Ticket};
use crate::core::Broker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The most message bytes one entry carries (the transport's frames are at most 16 MiB, and
/// openraft sends several entries in one).
const ENTRY_BYTES: usize = 1 << 20;

/// How soon consumers kept when the lead moved are offered to the new leader again, while it
/// does not serve yet.
const REATTACH_RETRY: Duration = Duration::from_millis(100);
/// The longest pause between tries of a node holding no replica to reach a new leader.
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(1);

/// What is waiting to be proposed.
#[derive(Default)]
struct Pending {
    ops: Ops,
    /// One per message in `ops.enqueue`, in the same order.
    tickets: Vec<Ticket>,
}

/// Where an operation for a group's leader is sent.
enum Target {
    Here(Raft),
    Node(NodeInfo),
    Unknown,
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
    /// Where each member is now (see [`crate::cluster::network::Addresses`]).
    pub addresses: Arc<crate::cluster::network::Addresses>,
}

pub struct Group {
    pub id: String,
    /// The nodes holding a replica, as the queue's definition record names them.
    members: Mutex<Vec<String>>,
    queue: Arc<Queue>,
    broker: Weak<Broker>,
    env: Arc<Env>,
    /// This node's member of the group (None on a node that holds no replica).
    member: Mutex<Option<(Raft, QueueMachine)>>,
    /// Bumped when this node's replica is taken out (its lead loop ends).
    member_epoch: watch::Sender<u64>,
    /// Held while this node's replica is opened or removed.
    pub(super) changing: tokio::sync::Mutex<()>,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Set while this node leads and its live queue serves.
    live: AtomicBool,
    /// Told when this node's replica opens or its live queue starts serving.
    role: Notify,
    /// This node's consumers wait to be attached to the leader (the lead moved).
    reattach: AtomicBool,
    /// How often each message was returned, while live.
    counts: Mutex<HashMap<u64, u64>>,
    pub(super) stop: watch::Sender<bool>,
    /// When this replica last heard the group's leader (see [`crate::cluster::failover`]).
    pub(super) heard: Arc<crate::cluster::failover::LastHeard>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// While another node leads: the proxy through which this node's consumers reach it.
    served_by: Mutex<Option<Arc<dyn RemoteHome>>>,
    /// The leader another node named, for a node holding no replica (it has no view).
    named_leader: Mutex<Option<String>>,
    /// Which member a node holding no replica tries next when none is named.
    turn: AtomicUsize,
    /// Wakes the lead loop: this node's consumers lost the node that served them.
    moved: Notify,
    /// A node holding no replica runs its consumers' attaching to the next leader
    /// ([`Group::follow_loop`]).
    following: AtomicBool,
    me: Weak<Group>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .field("members", &*lock(&self.members))
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
        Arc::new_cyclic(|me| Group {
            id,
            members: Mutex::new(members),
            queue,
            broker: Arc::downgrade(broker),
            env,
            member: Mutex::new(None),
            member_epoch: watch::Sender::new(0),
            changing: tokio::sync::Mutex::new(()),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            live: AtomicBool::new(false),
            role: Notify::new(),
            reattach: AtomicBool::new(false),
            counts: Mutex::new(HashMap::new()),
            stop: watch::Sender::new(false),
            peers: Mutex::new(HashMap::new()),
            served_by: Mutex::new(None),
            named_leader: Mutex::new(None),
            heard: Arc::default(),
            turn: AtomicUsize::new(0),
            moved: Notify::new(),
            following: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    /// The queue on this node.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    fn raft(&self) -> Option<Raft> {
        lock(&self.member).as_ref().map(|(r, _)| r.clone())
    }

    /// This node's replica: its Raft and state machine.
    pub(super) fn member(&self) -> Option<(Raft, QueueMachine)> {
        lock(&self.member).clone()
    }

    /// This node's replica is open.
    pub(super) fn set_member(&self, raft: Raft, machine: QueueMachine) {
        *lock(&self.member) = Some((raft, machine));
        self.role.notify_waiters();
    }

    /// Takes this node's replica out (it is no longer a member); its lead loop ends.
    pub(super) fn take_member(&self) -> Option<(Raft, QueueMachine)> {
        let taken = lock(&self.member).take();
        self.member_epoch.send_modify(|e| *e += 1);
        taken
    }

    /// The member nodes' names.
    pub fn member_names(&self) -> Vec<String> {
        lock(&self.members).clone()
    }

    pub(super) fn set_member_names(&self, members: Vec<String>) {
        *lock(&self.members) = members;
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn peer(&self, node: &NodeInfo) -> Arc<Peer> {
        // Where the member is now, if it moved since it joined the group.
        let addr = self
            .env
            .addresses
            .of(&node.name)
            .unwrap_or(node.addr.clone());
        lock(&self.peers)
            .entry(addr.clone())
            .or_insert_with(|| {
                Arc::new(Peer::new(
                    addr,
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
            at: 0,
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
                let Some(refused) = self.propose_until_committed(&ops).await else {
                    tickets.iter().for_each(Ticket::fail);
                    break;
                };
                // Each ticket is decided once: an acknowledgement may go the moment it is.
                for (position, t) in (0u32..).zip(&tickets) {
                    if refused.contains(&position) {
                        t.refuse();
                    } else {
                        t.commit();
                    }
                }
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

    /// The positions of the messages the leader's queue refused once `ops` committed; None
    /// once the group is stopped before it did.
    async fn propose_until_committed(&self, ops: &Ops) -> Option<Vec<u32>> {
        let mut delay = Duration::from_millis(20);
        let mut turn = 0usize;
        while !self.stopped() {
            match self.try_propose(ops, turn).await {
                Ok(refused) => return Some(refused),
                Err(e) => {
                    tracing::debug!(group = %self.id, error = %e, "quorum queue: proposal not committed yet")
                }
            }
            turn += 1;
            let mut stop = self.stop.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::cluster::stopped(&mut stop) => return None,
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        None
    }

    /// Where an operation for the group's leader goes on attempt `turn`: this node's Raft
    /// when it leads, the leader it knows of, or (no replica here, or one that has not heard
    /// of a leader yet) the other members in turn, each of which runs it only if it leads.
    fn target(&self, turn: usize) -> Target {
        let me = node_id(&self.env.me.name);
        if let Some(raft) = self.raft() {
            let m = raft.metrics().borrow().clone();
            match m.current_leader {
                Some(l) if l == me => return Target::Here(raft),
                Some(l) => {
                    if let Some(node) = m.membership_config.membership().get_node(&l) {
                        return Target::Node(node.clone());
                    }
                }
                None => {}
            }
        }
        let members = self.member_names();
        let others: Vec<NodeInfo> = (self.env.nodes)()
            .into_iter()
            .filter(|n| n.name != self.env.me.name && members.contains(&n.name))
            .collect();
        match others.get(turn % others.len().max(1)) {
            Some(node) => Target::Node(node.clone()),
            None => Target::Unknown,
        }
    }

    /// Sends `request` for this group to `node`, within `within`.
    pub(super) async fn send(
        &self,
        node: &NodeInfo,
        request: Request,
        within: Duration,
    ) -> Result<OpOk, OpError> {
        let request = Request::Group {
            group: self.id.clone(),
            request: Box::new(request),
        };
        match self.peer(node).call(&request, within).await {
            Ok(Response::Op(r)) => r,
            Ok(_) => Err(OpError::Failed(format!(
                "{}: answered with the wrong kind",
                node.name
            ))),
            Err(e) => Err(OpError::Failed(format!("{}: {e}", node.name))),
        }
    }

    /// `command` as the leader proposes it: a queue entry stamped with the time its
    /// messages' TTL counts from.
    fn stamped(&self, command: Command) -> Command {
        match command {
            Command::Queue(mut ops) => {
                ops.at = self.queue.clock_ms();
                Command::Queue(ops)
            }
            other => other,
        }
    }

    /// Proposes `ops` once, where attempt `turn` goes; the positions of the messages the
    /// leader's queue refused.
    async fn try_propose(&self, ops: &Ops, turn: usize) -> Result<Vec<u32>, String> {
        let command = Command::Queue(ops.clone());
        match self.target(turn) {
            Target::Here(raft) => match raft.client_write(self.stamped(command)).await {
                Ok(r) => Ok(r.data.refused),
                Err(e) => Err(e.to_string()),
            },
            Target::Node(node) => {
                let ok = self
                    .send(&node, Request::Propose(command), self.env.timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                // Only the leader commits a proposal: a node holding no replica knows where
                // the lead is from then on (for its listing and its consumers' proxy).
                self.leader_named(&node.name);
                Ok(ok.result.refused)
            }
            Target::Unknown => Err("no leader known".into()),
        }
    }

    /// Makes membership change `op` (a [`Request::Join`] of a node or a [`Request::Forget`]
    /// of one) on the group's leader, wherever it is, trying again until `within` passes.
    pub async fn change_members(&self, op: Request, within: Duration) -> Result<(), OpError> {
        let deadline = Instant::now() + within;
        let mut turn = 0usize;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OpError::Failed(format!(
                    "the membership of quorum queue '{}' could not be changed within {} ms (no leader reached, or the change did not commit)",
                    self.queue.name,
                    within.as_millis()
                )));
            }
            let attempt = match self.target(turn) {
                Target::Here(raft) => tokio::time::timeout(left, self.change_here(&raft, &op))
                    .await
                    .unwrap_or(Err(OpError::NotLeader)),
                Target::Node(node) => self.send(&node, op.clone(), left).await.map(|ok| ok.index),
                Target::Unknown => Err(OpError::NotLeader),
            };
            match attempt {
                Ok(_) => return Ok(()),
                Err(OpError::UnknownNode(n)) => return Err(OpError::UnknownNode(n)),
                Err(e) => {
                    tracing::debug!(group = %self.id, error = %e, "quorum queue: membership change not made yet")
                }
            }
            turn += 1;
            tokio::time::sleep(Duration::from_millis(50).min(left)).await;
        }
    }

    /// Makes this node, a member, lead the group (`ctl rebalance`; openraft has no transfer
    /// of leadership): the members other than this one and the leader hold their elections,
    /// the leader takes itself out of the group (a leader leaving hands the lead on, here to
    /// the one node standing), this node waits until it leads, the others may stand again,
    /// and the old leader is taken back in as a voter (it catches up first), whatever failed
    /// before. Each step is bounded by `within`.
    pub async fn take_lead(&self, within: Duration) -> Result<(), OpError> {
        let Some(raft) = self.raft() else {
            return Err(OpError::Failed(format!(
                "{} holds no replica of quorum queue '{}'",
                self.env.me.name, self.queue.name
            )));
        };
        let me = node_id(&self.env.me.name);
        let m = raft.metrics().borrow().clone();
        if m.current_leader == Some(me) {
            return Ok(());
        }
        let membership = m.membership_config.membership();
        let Some(leader) = m
            .current_leader
            .and_then(|l| membership.get_node(&l).cloned())
        else {
            return Err(OpError::NotLeader);
        };
        let others: Vec<NodeInfo> = membership
            .voter_ids()
            .filter(|v| *v != me && *v != node_id(&leader.name))
            .filter_map(|v| membership.get_node(&v).cloned())
            .collect();
        let hold = u64::try_from((within * 3).as_millis()).unwrap_or(u64::MAX);
        for other in &others {
            self.send(other, Request::HoldElections(hold), within)
                .await?;
        }
        let moved = async {
            self.change_members(Request::Forget(leader.name.clone()), within)
                .await?;
            raft.wait(Some(within))
                .current_leader(me, "this node to lead")
                .await
                .map(|_| ())
                .map_err(|e| OpError::Failed(e.to_string()))
        }
        .await;
        for other in &others {
            // Their hold runs out by itself too, should this not reach them.
            let _ = self.send(other, Request::HoldElections(0), within).await;
        }
        let back = self.change_members(Request::Join(leader), within).await;
        moved.and(back)
    }

    /// Runs membership change `op` on this node's Raft, which must lead (else
    /// [`OpError::NotLeader`]); the log index it committed at. Idempotent: a node already a
    /// voter is not added again, one already gone not removed again.
    pub async fn change_here(&self, raft: &Raft, op: &Request) -> Result<u64, OpError> {
        match op {
            Request::Join(node) => Ok(add_voter(raft, node).await?.unwrap_or(0)),
            Request::Forget(name) => {
                let id = node_id(name);
                let known = membership_of(raft);
                if known.get_node(&id).is_none() {
                    return Ok(0);
                }
                raft.change_membership(removal(&known, id), false)
                    .await
                    .map(|r| r.log_id.index)
                    .map_err(write_error)
            }
            _ => Err(OpError::Failed("not a membership change".into())),
        }
    }

    /// Commits `command` on this node's Raft, which must lead (a proposal sent here): its
    /// log index and what applying it did.
    pub async fn propose_here(&self, command: Command) -> Result<OpOk, OpError> {
        let Some(raft) = self.raft() else {
            return Err(OpError::NotLeader);
        };
        raft.client_write(self.stamped(command))
            .await
            .map(|r| OpOk {
                index: r.log_id.index,
                result: r.data,
            })
            .map_err(write_error)
    }

    /// Follows this node's role in the group: the live queue serves while it leads, from the
    /// messages the group holds once everything committed before is applied here.
    pub async fn lead_loop(self: Arc<Self>) {
        let Some((raft, machine)) = self.member() else {
            return;
        };
        let (raft, machine) = (&raft, &machine);
        let mut metrics = raft.metrics();
        let mut stop = self.stop.subscribe();
        let mut epoch = self.member_epoch.subscribe();
        epoch.mark_unchanged();
        let me = node_id(&self.env.me.name);
        loop {
            let leading = leads(&metrics.borrow_and_update(), me);
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
            let attached = self.reattach();
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { break },
                _ = crate::cluster::stopped(&mut stop) => break,
                _ = epoch.changed() => break,
                _ = self.moved.notified() => {}
                // The new leader does not serve yet (it catches up first): again shortly.
                _ = tokio::time::sleep(REATTACH_RETRY), if !attached => {}
            }
        }
        if self.live.load(Ordering::Acquire) {
            self.go_offline(machine);
        }
        if self.stopped() {
            self.cancel_kept();
        } else if self.reattach.load(Ordering::Acquire) {
            // No longer a member: the consumers kept follow the lead as any node's without a
            // replica.
            self.follow();
        }
    }

    /// The consumers kept to follow the lead are cancelled (the queue or this node stops)
    /// and their clients consume again.
    fn cancel_kept(&self) {
        if self.reattach.swap(false, Ordering::AcqRel) {
            for c in self.queue.clear_live() {
                c.sink.cancelled(&self.queue, &c.tag);
            }
        }
    }

    /// Has this node's consumers, kept to follow the lead, attached to the node leading now:
    /// by the lead loop on a member, else by [`Group::follow_loop`].
    fn follow(&self) {
        if self.raft().is_some() {
            self.moved.notify_one();
            return;
        }
        if self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.me.upgrade() {
            Some(me) => {
                tokio::spawn(me.follow_loop());
            }
            None => self.following.store(false, Ordering::Release),
        }
    }

    /// On a node holding no replica: tries the members (the one named leader first) until
    /// one leads and serves this node's consumers, the pause between tries doubling from
    /// 100 ms to a second, until they are attached, the node becomes a member (its lead loop
    /// takes over), or the group stops (they are cancelled).
    async fn follow_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut pause = REATTACH_RETRY;
        loop {
            if self.raft().is_some() {
                self.following.store(false, Ordering::Release);
                self.moved.notify_one();
                return;
            }
            if self.reattach() {
                self.following.store(false, Ordering::Release);
                // A move between the attaching and the flag found this loop still running.
                if !self.reattach.load(Ordering::Acquire)
                    || self.following.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = crate::cluster::stopped(&mut stop) => {
                    self.following.store(false, Ordering::Release);
                    self.cancel_kept();
                    return;
                }
            }
            pause = (pause * 2).min(FOLLOW_RETRY_MAX);
        }
    }

    fn go_live(self: &Arc<Self>, machine: &QueueMachine) {
        // This node's consumers stay, and the live queue serves them from now on.
        self.leader_moved();
        let feed: Arc<dyn Feed> = self.clone();
        let counts = machine.go_live(feed);
        *lock(&self.counts) = counts.into_iter().collect();
        self.live.store(true, Ordering::Release);
        self.reattach.store(false, Ordering::Release);
        self.role.notify_waiters();
        tracing::info!(group = %self.id, queue = %self.queue.name, node = %self.env.me.name, "quorum queue: this node leads it now");
    }

    fn go_offline(&self, machine: &QueueMachine) {
        self.live.store(false, Ordering::Release);
        machine.stop_live();
        lock(&self.counts).clear();
        // This node's consumers stay, to be attached to the new leader; those of other
        // nodes are let go (members' nodes follow the lead themselves).
        self.queue.leave_live(&self.member_names());
        self.reattach.store(true, Ordering::Release);
        tracing::info!(group = %self.id, queue = %self.queue.name, "quorum queue: this node no longer leads it");
    }

    /// Whether this node's consumers reach a leader other than `leader` (None: unknown).
    fn served_by_other_than(&self, leader: Option<&str>) -> bool {
        lock(&self.served_by)
            .as_ref()
            .is_some_and(|p| Some(p.home()) != leader)
    }

    /// The lead moved away from the node this node's consumers reached: they leave it, stay
    /// registered here, and are attached to the new leader ([`Group::reattach`]), as RabbitMQ
    /// moves them. Their unacknowledged deliveries are the new leader's to redeliver.
    fn leader_moved(&self) {
        let Some(old) = lock(&self.served_by).take() else {
            return;
        };
        for (c, _) in self.queue.consumers() {
            old.consumer_removed(&self.queue, c.id);
        }
        self.keep_following();
    }

    /// This node's consumers stay registered, to be attached to the node leading now.
    fn keep_following(&self) {
        self.reattach.store(true, Ordering::Release);
        self.follow();
    }

    /// Attaches this node's consumers, kept when the lead moved, to the node that leads now;
    /// false while none serves yet (tried again). A consumer the new leader refuses for good
    /// (an exclusive consumer there meanwhile) is cancelled.
    fn reattach(&self) -> bool {
        if !self.reattach.load(Ordering::Acquire) {
            return true;
        }
        if self.live.load(Ordering::Acquire) {
            self.reattach.store(false, Ordering::Release);
            return true;
        }
        let Some(home) = self.leader_home() else {
            return false;
        };
        let mut attached = Vec::new();
        for (c, priority) in self.queue.consumers() {
            match home.consumer_added(&self.queue, &c, priority) {
                Ok(()) => attached.push(c.id),
                Err(ConsumeError::ExclusiveConsumerPresent(_) | ConsumeError::QueueInUse(_)) => {
                    let _ = self.queue.remove_consumer(c.id);
                    c.sink.cancelled(&self.queue, &c.tag);
                }
                Err(e) => {
                    // Not serving yet, or unreachable: none stays half attached.
                    tracing::debug!(group = %self.id, error = %e, "quorum queue: consumers not attached to the new leader yet");
                    for id in attached {
                        home.consumer_removed(&self.queue, id);
                    }
                    if self.raft().is_none() {
                        self.try_next(&home, e);
                    }
                    return false;
                }
            }
        }
        self.reattach.store(false, Ordering::Release);
        if !attached.is_empty() {
            tracing::info!(group = %self.id, queue = %self.queue.name, leader = %home.home(), consumers = attached.len(), "quorum queue: consumers moved to the new leader");
        }
        true
    }

    /// A node holding no replica found `tried` not serving (`refused`): the next try goes to
    /// the leader it named, or to the next member.
    fn try_next(&self, tried: &Arc<dyn RemoteHome>, refused: ConsumeError) {
        lock(&self.served_by).take();
        let named = match refused {
            ConsumeError::NotLeader {
                leader: Some(l), ..
            } if l != tried.home() && l != self.env.me.name => Some(l),
            _ => None,
        };
        if named.is_none() {
            self.turn.fetch_add(1, Ordering::Relaxed);
        }
        *lock(&self.named_leader) = named;
    }

    fn push(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut lock(&self.pending));
        self.wake.notify_one();
    }
}

impl Feed for Group {
    fn committed(&self, id: u64, held: &Held, redelivered: bool) -> bool {
        let Some(b) = self.broker.upgrade() else {
            return true;
        };
        match codec::decode(&held.message, |size| b.memory.charge(size)) {
            Ok(m) => {
                let committed = self.queue.enqueue_committed(
                    id,
                    Arc::new(m),
                    redelivered || held.returns > 0,
                    held.at,
                );
                if let Some(vh) = b.vhost(&self.queue.vhost) {
                    vh.apply(&self.queue, committed.effects);
                }
                !committed.refused
            }
            Err(e) => {
                tracing::error!(group = %self.id, id, "quorum queue: undecodable message dropped: {e}");
                true
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
        let Some(raft) = self.raft() else {
            return lock(&self.named_leader).clone();
        };
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
            None => lock(&self.named_leader).clone().or_else(|| {
                let members = lock(&self.members);
                let turn = self.turn.load(Ordering::Relaxed);
                members.get(turn % members.len().max(1)).cloned()
            })?,
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

    fn consumers_let_go(&self) -> bool {
        if self.stopped() {
            return false;
        }
        lock(&self.served_by).take();
        if self.raft().is_none() {
            // The node that let go may be the one named: the members are asked afresh.
            *lock(&self.named_leader) = None;
        }
        self.keep_following();
        true
    }

    fn members(&self) -> Vec<String> {
        self.member_names()
    }

    fn messages(&self) -> Option<u64> {
        lock(&self.member).as_ref().map(|(_, m)| m.held() as u64)
    }

    fn until_serving(&self) -> ServingFuture<'_> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + self.env.timeout;
            let serving = || self.is_leader() || self.leader_home().is_some();
            loop {
                let role = self.role.notified();
                tokio::pin!(role);
                role.as_mut().enable();
                if serving() {
                    return true;
                }
                let mut metrics = self.raft().map(|r| r.metrics());
                let metrics_changed = async {
                    match metrics.as_mut() {
                        Some(m) => m.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = role => {}
                    open = metrics_changed => if !open { return serving() },
                    _ = tokio::time::sleep_until(deadline) => return serving(),
                }
            }
        })
    }
}
