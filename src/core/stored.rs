//! Where the core meets the store: the store (src/store) knows nothing of core types, so this
//! turns messages into record fields and runs the store's background tasks against the broker.

use super::message::Message;
use super::Broker;
use crate::store::log::{Appended, MessageLog};
use crate::store::record::Entry;
use bytes::BytesMut;
use std::sync::Arc;

/// Appends the record of `message` making `entry` in a durable queue (or delayed hold): a
/// reference to the record it was already written to for another queue (a fan-out writes the
/// body once), else the whole message.
pub fn append_message(log: &MessageLog, entry: Entry, message: &Message) -> Appended {
    if let Some(&body) = message.stored.get() {
        if let Some(a) = log.append_reference(entry, body) {
            return a;
        }
    }
    let a = append_whole_message(log, entry, message);
    // The first record written stays the one referenced (a racing second writer keeps its own).
    let _ = message.stored.set(a.at);
    a
}

/// Appends an enqueue record holding the whole of `message` (for compaction, which must not
/// point back into the segment it empties). The property block is the one the message arrived
/// with when it has one (no re-encoding on the hot path).
pub fn append_whole_message(log: &MessageLog, entry: Entry, message: &Message) -> Appended {
    let encoded;
    let props: &[u8] = match &message.raw_properties {
        Some(raw) => raw,
        None => {
            let mut b = BytesMut::with_capacity(message.properties().encoded_len());
            message.properties().encode(&mut b);
            encoded = b;
            &encoded
        }
    };
    log.append_enqueue(
        entry,
        &message.exchange,
        &message.routing_key,
        props,
        &message.body,
    )
}

/// Compacts the log until the broker shuts down (see `store::compaction`): the vhosts' queues
/// and delayed exchanges move their own message records.
pub async fn compact(broker: Arc<Broker>) {
    let Some(store) = broker.store.clone() else {
        return;
    };
    let shutdown = broker.shutdown_signal();
    let relocate = |segment| broker.vhosts().iter().map(|v| v.relocate(segment)).sum();
    crate::store::compaction::run(store.log.clone(), shutdown, relocate).await;
}

/// Raises and clears the disk alarm until the broker shuts down (see `store::disk`).
pub async fn watch_disk(broker: Arc<Broker>) {
    let limit = broker.config.server.disk_free_limit_bytes;
    if limit == 0 || broker.store.is_none() {
        return;
    }
    let dir = broker.config.server.data_dir.clone();
    let memory = broker.memory.clone();
    let set_alarm = move |low| memory.set_disk_alarm(low);
    crate::store::disk::run(dir, limit, broker.shutdown_signal(), set_alarm).await;
}
