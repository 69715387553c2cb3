//! Accepting connections under the limits: a refused connection is closed at once, and running
//! out of file descriptors (EMFILE, ENFILE) or kernel memory makes the listener back off briefly
//! instead of spinning, while connections already open carry on. Each kind of trouble is logged
//! once per burst, not once per attempt (the log had 470 `accept failed` lines in a few seconds).

use super::limits::{Admitted, ConnectionLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The first and the longest pause after an accept failed for lack of resources.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Logs the first event of a burst, then at most once per [`BurstLog::QUIET`], with how many
/// were not logged.
#[derive(Debug, Default)]
pub struct BurstLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl BurstLog {
    const QUIET: Duration = Duration::from_secs(10);

    /// Whether to log this event now; `Some(n)`: `n` events since the last one logged.
    pub fn should_log(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Self::QUIET => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// Whether an accept error means the process or system is out of something (descriptors,
/// buffers): retrying at once would fail the same way.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One listener's accepting state.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
    protocol: &'static str,
    backoff: Duration,
    failures: BurstLog,
    refusals: BurstLog,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        limits: Arc<ConnectionLimits>,
        protocol: &'static str,
    ) -> Self {
        Acceptor {
            listener,
            limits,
            protocol,
            backoff: BACKOFF_FIRST,
            failures: BurstLog::default(),
            refusals: BurstLog::default(),
        }
    }

    /// The next connection within the limits (others are closed as they come).
    pub async fn next(&mut self) -> (TcpStream, SocketAddr, Admitted) {
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) if out_of_resources(&e) => {
                    if let Some(unlogged) = self.failures.should_log() {
                        tracing::warn!(
                            protocol = self.protocol,
                            error = %e,
                            unlogged,
                            "accept failed; pausing accepts (raise the fd limit or lower server.max_connections)"
                        );
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                // The peer went away before it was accepted, and the like.
                Err(e) => {
                    tracing::debug!(protocol = self.protocol, error = %e, "accept failed");
                    continue;
                }
            };
            self.backoff = BACKOFF_FIRST;
            match self.limits.admit(peer.ip()) {
                Ok(admitted) => return (socket, peer, admitted),
                Err(refused) => {
                    if let Some(unlogged) = self.refusals.should_log() {
                        tracing::warn!(protocol = self.protocol, %peer, unlogged, "connection refused: {refused}");
                    }
                    drop(socket);
                }
            }
        }
    }
}
