//! A member that stops answering goes with its transient queues.
//!
//! A transient or exclusive queue lives only while its home node holds it
//! ([`super::transient`]); while that node is down its record would keep the name taken on
//! every other node, so a client reconnecting elsewhere could not declare its queue again.
//! RabbitMQ deletes such queues when it sees their node go. Here the metadata group's leader
//! watches when each member last answered its AppendEntries (heartbeats included). One silent
//! for longer than `[cluster] node_down_after_ms` is down, and so is one silent for two
//! heartbeats whose address refuses connections (its process is gone). The leader then
//! removes the records of the queues homed there, each of one incarnation
//! ([`Change::ForgetQueue`]), so a queue declared again meanwhile stays. Only the leader
//! decides, from what it sees, and only it
//! proposes the removal (never passed on to a later leader): a leader cut off in a minority
//! finds everyone silent, but commits nothing. A node that was only cut off and comes back
//! applies the removal too, and its queues go there as well (their consumers are cancelled).
//!
//! The MQTT client ids held at the down node move to the leader with it
//! ([`super::adapter::adopt_sessions_of`]): a persistent session whose client was on that
//! node would otherwise never expire, since only the node holding a session ends it.

use super::definitions::Change;
use super::identity::node_id;
use super::membership::Cluster;
use super::Command;
use crate::core::Broker;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When each member (by id) last answered an AppendEntries of this node's.
#[derive(Debug, Default)]
pub struct Reached(Mutex<HashMap<u64, Instant>>);

impl Reached {
    pub fn reached(&self, id: u64) {
        self.lock().insert(id, Instant::now());
    }

    fn at(&self, id: u64) -> Option<Instant> {
        self.lock().get(&id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Watches the members while this node leads the metadata group (see the module's comment),
/// until the broker stops. Does nothing when `node_down_after_ms` is 0.
pub fn watch(broker: &Arc<Broker>, cluster: &Arc<Cluster>) {
    let after = Duration::from_millis(cluster.config().node_down_after_ms);
    if after.is_zero() {
        return;
    }
    let every = Duration::from_millis(cluster.config().heartbeat_ms.max(1)).max(after / 20);
    let (broker, cluster) = (Arc::downgrade(broker), Arc::downgrade(cluster));
    tokio::spawn(async move {
        let mut down = HashMap::new();
        let mut leading_since = None;
        loop {
            tokio::time::sleep(every).await;
            let (Some(b), Some(c)) = (broker.upgrade(), cluster.upgrade()) else {
                return;
            };
            if *b.shutdown_signal().borrow() {
                return;
            }
            if !c.leading() {
                leading_since = None;
                down.clear();
                continue;
            }
            // A new leader gives every member the whole time from its election on.
            let since = *leading_since.get_or_insert_with(Instant::now);
            check(&b, &c, since, after, &mut down).await;
        }
    });
}

/// One look at the members: those silent for longer than `after` are down (logged once), and
/// the records of the queues homed there are removed; `down` tells, for each, whether that is
/// done (a node that is down commits nothing, so none are added to look for after that).
async fn check(
    b: &Arc<Broker>,
    c: &Arc<Cluster>,
    leading_since: Instant,
    after: Duration,
    down: &mut HashMap<String, bool>,
) {
    let me = c.me().name.clone();
    for node in c.nodes().into_iter().filter(|n| n.name != me) {
        let last = c
            .reached()
            .at(node_id(&node.name))
            .map_or(leading_since, |at| at.max(leading_since));
        let silent = last.elapsed();
        // Its process is gone when its address refuses connections (the host is up): down
        // at once, as RabbitMQ sees a crashed node go, rather than after `after`. One that is
        // cut off (connects time out) waits out `after`.
        let heartbeat = Duration::from_millis(c.config().heartbeat_ms.max(1));
        let is_down = silent > after
            || (silent > heartbeat * 2
                && (down.contains_key(&node.name)
                    || super::failover::refuses(&node.addr, heartbeat).await));
        if !is_down {
            if down.remove(&node.name).is_some() {
                tracing::info!(node = %node.name, "cluster: a member answers again");
            }
            continue;
        }
        let cleared = down.entry(node.name.clone()).or_insert_with(|| {
            tracing::warn!(node = %node.name, silent_ms = silent.as_millis() as u64, "cluster: a member does not answer (or its address refuses connections); it is down, and its transient and exclusive queues are deleted");
            false
        });
        if *cleared {
            continue;
        }
        let lost = super::transient::homed_at(c.as_ref(), &node.name);
        let sessions = super::adapter::adopt_sessions_of(c.as_ref(), &node.name, &me);
        if lost.is_empty() && sessions.is_empty() {
            *cleared = true;
            continue;
        }
        let (n, m) = (lost.len(), sessions.len());
        let forget: Vec<Command> = lost
            .into_iter()
            .map(|r| Change::ForgetQueue(r).command(b, c.as_ref()))
            .chain(sessions)
            .collect();
        match c.propose_as_leader(Command::Batch(forget)).await {
            Ok(()) => {
                *cleared = true;
                tracing::info!(node = %node.name, queues = n, mqtt_clients = m, "cluster: the transient queues of a node that is down were deleted and its MQTT sessions taken over to expire here")
            }
            // Looked at again on the next round, while this node still leads.
            Err(e) => {
                tracing::debug!(node = %node.name, error = %e, "cluster: a down node's transient queues not deleted yet")
            }
        }
    }
}
