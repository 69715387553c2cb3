//! Background compaction of the message log.
//!
//! Segments are deleted from the head only (see log.rs), so one old message that stays in a
//! queue would pin every segment after it. When the head segment holds little that is live, its
//! live records are rewritten at the end of the log; the head then holds nothing live, and it
//! and the settled segments behind it are deleted by the writer.

use crate::core::Broker;
use std::sync::Arc;
use std::time::Duration;

/// How often the log is checked.
const INTERVAL: Duration = Duration::from_millis(500);
/// Compact only when there are more segments than this (the head, the one being written and
/// some slack).
const MIN_SEGMENTS: usize = 3;

/// Runs until the broker shuts down.
pub async fn run(broker: Arc<Broker>) {
    let Some(store) = broker.store.clone() else {
        return;
    };
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        while let Some(head) = store.log.compaction_candidate(MIN_SEGMENTS) {
            let mut moved = store.log.relocate_keyed(head);
            for vh in broker.vhosts() {
                moved += vh.relocate(head);
            }
            tracing::debug!(
                segment = head,
                moved,
                "compacted the head of the message log"
            );
            if moved == 0 {
                // Nothing of ours was live there (the counts will settle); try again later.
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
