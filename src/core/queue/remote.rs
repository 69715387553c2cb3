//! A queue whose messages another node holds: this node keeps the queue (its definition,
//! bindings and local consumers) as a proxy, and every message operation goes to the node
//! that holds it through a [`RemoteHome`], which the cluster implements. A queue without one
//! (every queue of an unclustered broker) pays one `OnceLock` read per operation.

use super::{ConsumeError, Consumer, Delivery, Enqueued, Queue, QueueStats};
use crate::core::message::Message;
use std::sync::Arc;

/// Where a proxy queue's messages are: the node holding them, reached over the cluster.
/// Every call is made with no queue lock held.
pub trait RemoteHome: Send + Sync + std::fmt::Debug {
    /// The name of the node holding the queue's messages.
    fn home(&self) -> &str;
    /// Sends `message` to the home node. A persistent message is refused (`refused`) when the
    /// home node is unreachable or did not take it; `accepted` once it has it durable.
    fn enqueue(&self, queue: &Arc<Queue>, message: &Arc<Message>) -> Enqueued;
    /// A consumer was registered on the proxy: the home node gets a consumer for it (or
    /// refuses it, and the proxy lets it go again).
    fn consumer_added(
        &self,
        queue: &Arc<Queue>,
        consumer: &Consumer,
        priority: i32,
    ) -> Result<(), ConsumeError>;
    /// The consumer left the proxy: its consumer on the home node goes too (its deliveries
    /// not yet handed to the client are requeued there).
    fn consumer_removed(&self, queue: &Arc<Queue>, consumer_id: u64);
    /// `basic.get` on the home node.
    fn get(&self, queue: &Arc<Queue>, no_ack: bool) -> Option<(Delivery, u32)>;
    /// Acknowledges deliveries (ids are the home node's).
    fn settle(&self, ids: &[u64]);
    /// Rejects deliveries without requeue.
    fn reject(&self, ids: &[u64]);
    /// Puts deliveries back on the home node, marked redelivered.
    fn requeue(&self, ids: &[u64]);
    /// Local consumers may have credit again: hand them what came from the home node.
    fn dispatch(&self, queue: &Arc<Queue>);
    /// Purges the queue on the home node.
    fn purge(&self) -> u32;
    /// The queue's figures on the home node (the last known ones when it cannot be asked).
    fn stats(&self) -> Option<QueueStats>;
    /// The last known figures without waiting, asked again in the background when they are
    /// older than a second: for listings, metrics and the sampler, which would otherwise
    /// make one call per such queue each time (and wait out every unreachable home).
    fn stats_recent(&self) -> Option<QueueStats>;
    /// The proxy was deleted: its consumers on the home node go.
    fn deleted(&self);
}

impl Queue {
    /// Makes this queue a proxy for one held on another node (once; false if it already was).
    pub fn set_remote(&self, home: Arc<dyn RemoteHome>) -> bool {
        self.remote.set(home).is_ok()
    }

    /// The node holding this queue's messages when another one does.
    pub fn remote(&self) -> Option<&Arc<dyn RemoteHome>> {
        self.remote.get()
    }

    /// The name of the node holding the queue's messages, when it is not this one.
    pub fn home_node(&self) -> Option<&str> {
        self.remote.get().map(|r| r.home())
    }

    /// Where this queue's consumers, gets and settlements are served when not here: the
    /// home node of a proxy, or the leader of a quorum queue this node does not lead.
    pub(super) fn served_elsewhere(&self) -> Option<Arc<dyn RemoteHome>> {
        if let Some(r) = self.remote.get() {
            return Some(r.clone());
        }
        self.replica.get()?.leader_home()
    }
}
