//! One set of definitions for the whole cluster.
//!
//! A node starts with its own: the configuration's seed users (`[[users]]`) with their
//! permissions on the seed vhosts, on a new data directory, or what it held before it became
//! a member (run-time policies, durable exchanges, queues and bindings too). Without this,
//! each node would keep them as local definitions that are not the cluster's: a `guest`
//! deleted through the cluster would be back on every node that joins later, from that
//! node's own seeds, and `/api/definitions` would differ from node to node.
//!
//! So the cluster's first leader makes its users, vhosts, permissions, topic permissions,
//! run-time policies, durable exchanges, durable classic queues and the bindings between them
//! the cluster's records, once, with a marker record ([`SEEDED`]), in one entry guarded by
//! the marker's absence, so that only the first such entry counts. A node that joins a
//! cluster that was there already gives up its own for the cluster's. Once it has applied
//! the marker and caught up, it removes, on itself only, those of its own that the cluster
//! has no record of, as RabbitMQ resets a node before it joins: the messages in a durable
//! queue it so removes are gone with the queue, and the queue's consumers are cancelled as
//! on any deletion. Definitions of the cluster's that the node lacked come with the records
//! anyway. A node that was a member already (a restart, a return after a partition) resets
//! nothing. A node of a cluster formed by an older release, which has no marker, resets
//! nothing until its leader has written one.

use super::definitions::{self, Change};
use super::membership::Cluster;
use super::{Command, Consensus};
use crate::core::exchange::{Destination, Exchange};
use crate::core::queue::args::is_quorum;
use crate::core::vhost::{ExchangeSpec, QueueSpec};
use crate::core::Broker;
use crate::core::Queue;
use std::sync::Arc;
use std::time::Duration;

/// The marker record: present once the cluster's users and vhosts are records. Not a
/// definition's kind, so no node applies it.
pub const SEEDED: &str = "cluster-seeded";

/// How often the leader looks for the marker until it is there.
const EVERY: Duration = Duration::from_millis(500);

/// Seeds the cluster while this node leads and the marker is absent, and resets this node's
/// own definitions once it has joined a cluster (see the module's comment).
pub fn watch(broker: &Arc<Broker>, cluster: &Arc<Cluster>) {
    let (broker, cluster) = (Arc::downgrade(broker), Arc::downgrade(cluster));
    tokio::spawn(async move {
        let mut joined = match cluster.upgrade() {
            Some(c) => c.joined(),
            None => return,
        };
        let mut reset_done = false;
        loop {
            let stop = {
                let (Some(b), Some(c)) = (broker.upgrade(), cluster.upgrade()) else {
                    return;
                };
                if *b.shutdown_signal().borrow() {
                    return;
                }
                let seeded = c.get(SEEDED).is_some();
                if !seeded && c.leading() {
                    seed(&b, &c).await;
                }
                if seeded && *joined.borrow_and_update() && !reset_done {
                    reset_done = reset(&b, c.as_ref()).await;
                }
                // A member from before this node joined has nothing more to do once seeded.
                seeded && (reset_done || !*joined.borrow())
            };
            if stop {
                // It may still join another cluster (`join_cluster`): then it resets again.
                if joined.changed().await.is_err() {
                    return;
                }
                reset_done = false;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = joined.changed() => {}
            }
        }
    });
}

/// What this node held before the cluster, as the changes that make it the cluster's: its
/// users, vhosts, permissions and policies ([`own`]), then its durable exchanges, its durable
/// classic queues (homed here, where their messages are) and the bindings between durable
/// ends. In that order, so that what a change names comes before it (reversed, what names
/// something goes before it).
fn own_with_topology(b: &Broker, c: &dyn Consensus) -> Vec<Change> {
    let mut out = own(b);
    for vh in b.vhosts() {
        for e in vh.exchanges() {
            if kept_exchange(&e) {
                let spec = ExchangeSpec {
                    name: e.name.clone(),
                    kind: e.type_name().to_owned(),
                    durable: true,
                    auto_delete: e.auto_delete,
                    internal: e.internal,
                    arguments: e.arguments.clone(),
                };
                out.push(definitions::exchange_record(&vh, &spec));
            }
        }
        for q in vh.queues() {
            if kept_queue(&q) {
                let spec = QueueSpec {
                    name: q.name.clone(),
                    durable: true,
                    exclusive: false,
                    auto_delete: q.auto_delete,
                    arguments: q.arguments.clone(),
                };
                out.push(definitions::new_queue_record(c, &vh, &spec));
            }
        }
        for (source, binding) in vh.bindings() {
            // Between durable ends, as a clustered node keeps them (`binding_changed`): those
            // made records above, and the `amq.*` exchanges every node has. The default
            // exchange's implicit bindings are no records.
            let (destination_type, kept) = match &binding.destination {
                Destination::Queue(q) => ("queue", kept_queue(q)),
                Destination::Exchange(x) => ("exchange", x.durable),
            };
            let source_kept = !source.is_empty() && vh.exchange(&source).is_some_and(|x| x.durable);
            if !(kept && source_kept) {
                continue;
            }
            let ends = (
                source.as_str(),
                destination_type,
                binding.destination.name(),
            );
            out.push(definitions::binding_record(
                &vh,
                ends,
                &binding.routing_key,
                &binding.arguments,
            ));
        }
    }
    out
}

/// A durable exchange a client declared (every vhost has the default and `amq.*` ones).
fn kept_exchange(e: &Exchange) -> bool {
    e.durable && !e.name.is_empty() && !e.name.starts_with("amq.")
}

/// A durable classic queue whose messages are here.
fn kept_queue(q: &Queue) -> bool {
    q.durable
        && q.exclusive_owner.is_none()
        && q.home_node().is_none()
        && !is_quorum(&q.arguments).unwrap_or(false)
}

/// This node's users, vhosts, permissions, topic permissions and run-time policies, as the
/// changes that put them (vhosts and users before the permissions and policies that name
/// them). Configured policies are every node's own configuration's, never records.
fn own(b: &Broker) -> Vec<Change> {
    let mut out: Vec<Change> = b
        .vhosts()
        .iter()
        .map(|v| Change::PutVHost(v.name.clone()))
        .collect();
    out.extend(b.access.users().into_iter().map(Change::PutUser));
    out.extend(
        b.access
            .permissions()
            .into_iter()
            .map(Change::SetPermissions),
    );
    out.extend(
        b.access
            .topic_permissions()
            .into_iter()
            .map(Change::SetTopicPermissions),
    );
    out.extend(
        b.policy_set()
            .runtime()
            .iter()
            .filter_map(|p| p.runtime_record())
            .map(Change::SetPolicy),
    );
    out
}

/// The key of the record a put change writes.
fn key_of(command: &Command) -> Option<&str> {
    match command {
        Command::Put { key, .. } => Some(key),
        _ => None,
    }
}

/// Makes what this node held the cluster's records, with the marker, unless a marker is
/// there by the time the entry applies.
async fn seed(b: &Broker, c: &Cluster) {
    let mut then: Vec<Command> = own_with_topology(b, c)
        .iter()
        .map(|change| change.command(b, c))
        .filter(|command| key_of(command).is_some_and(|k| c.get(k).is_none()))
        .collect();
    let n = then.len();
    then.push(Command::Put {
        key: SEEDED.to_owned(),
        value: serde_json::json!({ "by": c.me().name }),
    });
    let entry = Command::Guarded {
        key: SEEDED.to_owned(),
        expected: None,
        then,
    };
    match c.propose_as_leader(entry).await {
        Ok(()) => {
            tracing::info!(
                definitions = n,
                "cluster: this node's definitions are the cluster's"
            )
        }
        Err(e) => tracing::debug!(error = %e, "cluster: seeding not committed yet"),
    }
}

/// Removes, here only, this node's own definitions ([`own_with_topology`]) that the cluster
/// has no record of, once this node has applied what the cluster committed; whether it did.
/// Never a proposal: the cluster's records are what stays.
async fn reset(b: &Broker, c: &dyn Consensus) -> bool {
    if let Err(e) = c.caught_up().await {
        tracing::debug!(error = %e, "cluster: not caught up yet to give up this node's own definitions");
        return false;
    }
    let mut gone: Vec<Change> = own_with_topology(b, c)
        .into_iter()
        .filter(|change| key_of(&change.command(b, c)).is_some_and(|k| c.get(k).is_none()))
        .filter_map(|change| undo(&change))
        .collect();
    // Bindings before their queues and exchanges, and everything before the users and
    // vhosts it names.
    gone.reverse();
    for change in &gone {
        match change.apply(b) {
            // Gone with what went before it (a queue's bindings with the queue).
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(?change, error = %e, "cluster: could not give up a definition of this node's own")
            }
            Ok(_) => {}
        }
    }
    if !gone.is_empty() {
        tracing::info!(
            definitions = gone.len(),
            "cluster: this node's own definitions the cluster does not have are gone"
        );
    }
    true
}

/// The change that removes what `change` put.
fn undo(change: &Change) -> Option<Change> {
    Some(match change {
        Change::PutVHost(name) => Change::DeleteVHost(name.clone()),
        Change::PutUser(r) => Change::DeleteUser(r.name.clone()),
        Change::SetPermissions(r) => Change::ClearPermissions {
            vhost: r.vhost.clone(),
            user: r.user.clone(),
        },
        Change::SetTopicPermissions(r) => Change::ClearTopicPermissions {
            vhost: r.vhost.clone(),
            user: r.user.clone(),
            exchange: Some(r.spec.exchange.clone()),
        },
        Change::SetPolicy(r) => Change::ClearPolicy {
            vhost: r.vhost.clone(),
            name: r.name.clone(),
        },
        Change::DeclareExchange(r) => Change::DeleteExchange {
            vhost: r.vhost.clone(),
            name: r.def.name.clone(),
        },
        // A durable classic queue homed here: deleted as any deletion does, with its
        // messages, its bindings and its consumers cancelled.
        Change::DeclareQueue(r) => Change::DeleteQueue {
            vhost: r.vhost.clone(),
            name: r.name.clone(),
        },
        Change::Bind(r) => Change::Unbind(r.clone()),
        _ => return None,
    })
}
