//! Elects a new leader as soon as openraft lets an election succeed when the leader's node is
//! known to be gone, instead of after the leader's lease and an election timeout.
//!
//! openraft makes the top of the election-timeout range the leader's lease: no voter grants
//! a vote until that long after it last heard the leader, and a follower stands only once
//! lease and its own timeout have passed. Where the leader's address refuses connections
//! (its process is gone, the host is up: a crash or a kill on a machine that stays), waiting
//! out the second timeout is needless, so one follower (the lowest-numbered voter but the
//! leader, so that two do not split the vote) stands right after the lease has run out on
//! every voter. A leader that is cut off rather than gone (connects time out, or a proxy
//! answers for it) is left to the timers, as before.

use super::Raft;
use openraft::ServerState;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// When this node's member of a group last heard from a leader (an AppendEntries, which
/// heartbeats are too).
#[derive(Debug)]
pub struct LastHeard(Mutex<Instant>);

impl Default for LastHeard {
    fn default() -> Self {
        LastHeard(Mutex::new(Instant::now()))
    }
}

impl LastHeard {
    pub fn heard(&self) {
        *self.lock() = Instant::now();
    }

    fn at(&self) -> Instant {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Timings of the group's Raft, from the cluster's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub heartbeat: Duration,
    /// The leader's lease (openraft: the top of the election timeout range).
    pub lease: Duration,
}

/// Watches this node's member of a group (id `me`; `current` gives it, none once gone) until
/// `stop` turns true, standing for election once a vanished leader's lease is over (see the
/// module's comment).
pub fn watch(
    current: impl Fn() -> Option<Raft> + Send + 'static,
    me: u64,
    heard: Arc<LastHeard>,
    timings: Timings,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        // The term this node last stood in on its own: once per vanished leader.
        let mut stood_in = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(timings.heartbeat) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(raft) = current() else { return };
            let Some((term, addr)) = vanished_candidate(&raft, me) else {
                continue;
            };
            let silent_since = heard.at();
            if stood_in == Some(term) || silent_since.elapsed() < timings.heartbeat * 2 {
                continue;
            }
            if !refuses(&addr, timings.heartbeat).await {
                continue;
            }
            // Every voter heard the last heartbeat at about the same moment: half a
            // heartbeat after this node's lease ends, theirs have ended too.
            let at = silent_since + timings.lease + timings.heartbeat / 2;
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if heard.at() != silent_since
                || vanished_candidate(&raft, me).map(|c| c.0) != Some(term)
            {
                continue;
            }
            stood_in = Some(term);
            tracing::info!(term, leader = %addr, "cluster: the leader's node refuses connections; standing for election");
            if let Err(e) = raft.trigger().elect().await {
                tracing::debug!(error = %e, "cluster: could not stand for election");
            }
        }
    });
}

/// When this node follows a leader on another node and is the voter that stands if that
/// leader goes: the term and the leader's address.
fn vanished_candidate(raft: &Raft, me: u64) -> Option<(u64, String)> {
    let m = raft.metrics();
    let m = m.borrow();
    if m.state != ServerState::Follower {
        return None;
    }
    let leader = m.current_leader.filter(|l| *l != me)?;
    let membership = m.membership_config.membership();
    let first_other = membership.voter_ids().filter(|v| *v != leader).min()?;
    if first_other != me {
        return None;
    }
    let addr = membership.get_node(&leader)?.addr.clone();
    Some((m.current_term, addr))
}

/// Whether a TCP connect to `addr` is refused (nothing listens there) within `within`.
pub(super) async fn refuses(addr: &str, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_refuses_and_a_listening_one_does_not() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listening.local_addr().unwrap().to_string();
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(refuses(&closed, Duration::from_secs(5)).await);
        assert!(!refuses(&open, Duration::from_secs(5)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn last_heard_moves_on_each_heartbeat() {
        let heard = LastHeard::default();
        let first = heard.at();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(heard.at(), first);
        heard.heard();
        assert_eq!(heard.at(), first + Duration::from_millis(300));
    }
}
