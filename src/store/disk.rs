//! The disk-free alarm: publishers are blocked while the data directory's file system has less
//! free space than `server.disk_free_limit_bytes`, so the store never has to fail a write for
//! lack of space in normal operation (and if it does, it retries without corrupting anything).

use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// How often free space is checked.
const INTERVAL: Duration = Duration::from_millis(500);

/// Checks the free space of `dir`'s file system until `shutdown` turns true, telling
/// `set_alarm` each time whether it is below `limit` bytes.
pub async fn run(
    dir: PathBuf,
    limit: u64,
    mut shutdown: watch::Receiver<bool>,
    set_alarm: impl Fn(bool),
) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match crate::sys::free_disk_bytes(&dir) {
            Ok(free) => set_alarm(free < limit),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot read free disk space")
            }
        }
    }
}
