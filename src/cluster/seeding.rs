//! One set of users, vhosts and permissions for the whole cluster.
//!
//! A node starts with its own: the configuration's seed users (`[[users]]`) with their
//! permissions on the seed vhosts, on a new data directory, or what it held before it became
//! a member. Without this, each node would keep its seeds as local definitions that are not
//! the cluster's: a `guest` deleted through the cluster would be back on every node that
//! joins later, from that node's own seeds.
//!
//! So the cluster's first leader makes its users, vhosts, permissions and topic permissions
//! the cluster's records, once, with a marker record ([`SEEDED`]), in one entry guarded by the
//! marker's absence, so that only the first such entry counts. A node that joins a cluster
//! that was there already gives up its own for the cluster's. Once it has applied the
//! marker, it removes those of its own that the cluster has no record of, as RabbitMQ
//! resets a node before it joins. Definitions of the cluster's that the node lacked come
//! with the records anyway. A node of a cluster formed by an older release, which has no
//! marker, resets nothing until its leader has written one.

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
/// users, vhosts and permissions ([`own`]), then its durable exchanges, its durable classic
/// queues (homed here, where their messages are) and the bindings between durable ends.
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
            // Between the durable ends made records above.
            let (destination_type, kept) = match &binding.destination {
                Destination::Queue(q) => ("queue", kept_queue(q)),
                Destination::Exchange(x) => ("exchange", kept_exchange(x)),
            };
            let source_kept = vh.exchange(&source).is_some_and(|x| kept_exchange(&x));
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

/// This node's users, vhosts, permissions and topic permissions, as the changes that put
/// them (vhosts and users before the permissions that name them).
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
                "cluster: this node's users, vhosts and permissions are the cluster's"
            )
        }
        Err(e) => tracing::debug!(error = %e, "cluster: seeding not committed yet"),
    }
}

/// Removes this node's own users, vhosts, permissions and topic permissions that the cluster
/// has no record of, once this node has applied what the cluster committed; whether it did.
async fn reset(b: &Broker, c: &dyn Consensus) -> bool {
    if let Err(e) = c.caught_up().await {
        tracing::debug!(error = %e, "cluster: not caught up yet to give up this node's own users");
        return false;
    }
    let mut gone: Vec<Change> = own(b)
        .into_iter()
        .filter(|change| key_of(&change.command(b, c)).is_some_and(|k| c.get(k).is_none()))
        .filter_map(|change| undo(&change))
        .collect();
    // Permissions before the users and vhosts they name.
    gone.reverse();
    for change in &gone {
        if let Err(e) = change.apply(b) {
            tracing::warn!(?change, error = %e, "cluster: could not give up a definition of this node's own");
        }
    }
    if !gone.is_empty() {
        tracing::info!(definitions = gone.len(), "cluster: this node's own users, vhosts and permissions the cluster does not have are gone");
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
        _ => return None,
    })
}
