//! Transient and exclusive queues across nodes. Every node routes to them, so their records
//! are in the metadata group like a durable queue's, with the node that declared them as
//! their home; but they live only while that node holds them (RabbitMQ's transient queues
//! go with their node too). The home node removes a queue's record when it lets the queue go,
//! whatever made it go (a deletion, its exclusive owner closing, auto-delete, `x-expires`, an
//! MQTT session ending), and at start removes the records of the queues it lost with its
//! memory. Each removal is of one incarnation ([`Change::ForgetQueue`]), so a client that
//! declares the same name again meanwhile keeps its new queue.

use super::definitions::{self, Change, ChangeError, QueueRecord};
use super::{ClusterError, Consensus};
use crate::core::{Broker, Queue};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a removal that found no majority waits before it is proposed again.
const RETRY: Duration = Duration::from_secs(1);

/// Has this node remove the record of each transient queue of its own it lets go.
pub fn watch(broker: &Arc<Broker>, me: String) {
    let weak = Arc::downgrade(broker);
    broker.queue_removals.watch(Box::new(move |q: &Arc<Queue>| {
        let Some(b) = weak.upgrade() else {
            return;
        };
        if let Some(r) = lost_here(&b, &me, &q.vhost, &q.name) {
            forget(&weak, r);
        }
    }));
}

/// Removes the records of the transient queues homed at `node`: this node's own at start
/// (lost with its memory; a local queue made for one while the log was re-applied, before
/// the node knew its name, goes too), or a node's the cluster forgot (`forget_cluster_node`),
/// which nobody else would.
pub fn forget_homed_at(broker: &Arc<Broker>, node: &str) {
    let Some(cluster) = broker.cluster.get() else {
        return;
    };
    let weak = Arc::downgrade(broker);
    let here = cluster.node().name == node;
    for r in homed_at(cluster.as_ref(), node) {
        let local = broker
            .vhost(&r.vhost)
            .and_then(|vh| vh.queue(&r.name).map(|q| (vh, q)))
            .filter(|_| here);
        match local {
            // Removing it has `watch` forget the record.
            Some((vh, q)) => {
                vh.remove_queue(&q);
            }
            None => forget(&weak, r),
        }
    }
}

/// The records of the transient and exclusive queues whose home is `node`.
pub fn homed_at(cluster: &dyn Consensus, node: &str) -> Vec<QueueRecord> {
    cluster
        .list(&format!("{}/", definitions::QUEUE))
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_value::<QueueRecord>(value).ok())
        .filter(|r| r.bound_to_home() && r.home.as_deref() == Some(node))
        .collect()
}

/// The record of transient queue `name` when it names this node as its home and this node
/// holds no queue of that name.
fn lost_here(b: &Broker, me: &str, vhost: &str, name: &str) -> Option<QueueRecord> {
    let r = definitions::queue_record(b, vhost, name)?;
    let held = b.vhost(vhost).is_some_and(|vh| vh.queue(name).is_some());
    (r.bound_to_home() && r.home.as_deref() == Some(me) && !held).then_some(r)
}

/// Removes record `r` from the cluster, proposing it again while there is no majority, until
/// it is gone, is another incarnation's, or the broker stops.
fn forget(broker: &Weak<Broker>, r: QueueRecord) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let broker = broker.clone();
    runtime.spawn(async move {
        loop {
            let Some(b) = broker.upgrade() else {
                return;
            };
            if *b.shutdown_signal().borrow() {
                return;
            }
            match definitions::commit(&b, Change::ForgetQueue(r.clone())).await {
                Ok(_) => return,
                Err(ChangeError::Cluster(ClusterError::NoQuorum(_) | ClusterError::Raft(_))) => {}
                Err(e) if e.is_not_found() => return,
                Err(e) => {
                    tracing::warn!(queue = %r.name, error = %e, "cluster: a transient queue's record was not removed");
                    return;
                }
            }
            drop(b);
            tokio::time::sleep(RETRY).await;
        }
    });
}
