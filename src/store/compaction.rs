//! Background compaction of the message log.
//!
//! Segments are deleted from the head only (see log.rs), so one old message that stays in a
//! queue would pin every segment after it. When the head segment holds little that is live, its
//! live records are rewritten at the end of the log; the head then holds nothing live, and it
//! and the settled segments behind it are deleted by the writer.
//!
//! The log moves its keyed records itself; messages are moved by their owners (the queues
//! that know which records are theirs), through `relocate_messages`.

use super::log::MessageLog;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the log is checked.
const INTERVAL: Duration = Duration::from_millis(500);
/// Compact only when there are more segments than this (the head, the one being written and
/// some slack).
const MIN_SEGMENTS: usize = 3;

/// Runs until `shutdown` turns true. `relocate_messages(segment)` rewrites the live message
/// records of `segment` at the end of the log and returns how many it moved.
pub async fn run(
    log: Arc<MessageLog>,
    mut shutdown: watch::Receiver<bool>,
    relocate_messages: impl Fn(u64) -> usize,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        while let Some(head) = log.compaction_candidate(MIN_SEGMENTS) {
            let moved = log.relocate_keyed(head) + relocate_messages(head);
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
