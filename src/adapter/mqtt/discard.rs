//! Discarding a session's subscriptions a slice at a time. When a session ends with its
//! connection, expires or is replaced by a clean start, each of its subscriptions has a binding
//! of the session queue, a record in the log (a persistent session) and an entry in the
//! session: removing 100,000 of them in one go kept a runtime worker busy for all of it, and,
//! under the session registry's lock, every MQTT CONNECT too. Here they go [`SLICE`] at a time
//! with the runtime given back between slices, outside the registry's lock, while the caller
//! holds the session's slot: no other connection can take the session, declare its queue again
//! or write records under its keys until the caller lets go.

use super::convert::filter_to_pattern;
use super::persist;
use super::registry::lock;
use super::session::{is_shared, Session};
use crate::core::{Broker, Queue, VHost};
use std::sync::{Arc, Mutex};
use switchboard_amqp::FieldTable;

/// Subscriptions handled between two yields to the runtime (about a millisecond of bindings
/// in a release build).
pub(super) const SLICE: usize = 1024;

/// What goes of each subscription of a session being discarded.
pub(super) struct Discard<'a> {
    /// The session queue its bindings are removed from, while it is still the vhost's queue
    /// of that name (an AMQP client may have deleted it, and its bindings with it).
    pub queue: Option<&'a Arc<Queue>>,
    /// The subscription leaves the session too (the session goes). Else the session keeps its
    /// subscriptions and only their records go (it ends with its connection from now on).
    pub entries: bool,
}

/// Removes the bindings and records (and, with `entries`, the entries) of a session's
/// subscriptions a slice at a time; after the records, the session's own record. Does nothing
/// for a session of [`SLICE`] subscriptions or fewer: the caller's one-go removal (the
/// queue's, `persist::forget_session`) is as short as a slice. `owner` is the connection id the
/// bindings were made under.
pub(super) async fn discard(
    broker: &Broker,
    vhost: &VHost,
    session: &Mutex<Session>,
    what: Discard<'_>,
    owner: u64,
) {
    if lock(session).subscriptions.len() <= SLICE {
        return;
    }
    let exchange = &broker.config.mqtt.exchange;
    let mut after: Option<String> = None;
    loop {
        let slice = lock(session)
            .subscriptions
            .keys_after(after.as_deref(), SLICE);
        let ours = what.queue.filter(|q| {
            vhost
                .queue(&q.name)
                .is_some_and(|found| Arc::ptr_eq(&found, q))
        });
        if let Some(q) = ours {
            // A shared subscription's binding is its group queue's, left by the last member.
            for filter in slice.iter().filter(|f| !is_shared(f)) {
                let _ = vhost.unbind_queue(
                    &q.name,
                    exchange,
                    &filter_to_pattern(filter),
                    &FieldTable::new(),
                    owner,
                );
            }
        }
        {
            let mut s = lock(session);
            persist::forget_subscriptions_named(broker, &s, &slice);
            if what.entries {
                for filter in &slice {
                    s.subscriptions.remove(filter);
                }
            }
        }
        if slice.len() < SLICE {
            break;
        }
        after = slice.last().cloned();
        tokio::task::yield_now().await;
    }
    let mut s = lock(session);
    if s.recorded {
        persist::forget_session_record(broker, &mut s);
    }
}
