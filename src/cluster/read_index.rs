//! Shares rounds of Raft's read index among the callers waiting for one.
//!
//! A read index tells a reader which log index to wait for to see everything committed
//! before it asked; finding one costs the leader a heartbeat round with a majority. Callers
//! arriving while a round is out wait for it to end and share the next one, which starts after
//! all of them asked and so answers each: under load, one round per round trip serves every
//! caller that came during the one before.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// The rounds of one node's read index (see the module's comment); `E` is what a failed round
/// gives, handed to each caller that shared it.
#[derive(Debug, Default)]
pub struct SharedRounds<E> {
    /// Rounds begun so far.
    started: AtomicU64,
    /// The last round that ended: its number and what it found.
    last: tokio::sync::Mutex<Option<(u64, Result<u64, E>)>>,
}

impl<E: Clone> SharedRounds<E> {
    pub fn new() -> Self {
        SharedRounds {
            started: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The read index of a round begun after this call, by `round` here or shared with
    /// another caller's.
    pub async fn read<F>(&self, round: impl FnOnce() -> F) -> Result<u64, E>
    where
        F: Future<Output = Result<u64, E>>,
    {
        let asked_after = self.started.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if let Some((n, found)) = last.as_ref() {
            if *n > asked_after {
                return found.clone();
            }
        }
        let n = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let found = round().await;
        *last = Some((n, found.clone()));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_caller_never_takes_a_round_begun_before_it_asked() {
        let rounds: SharedRounds<()> = SharedRounds::new();
        assert_eq!(rounds.read(|| async { Ok(5) }).await, Ok(5));
        // The round that found 5 ended before this call: a round of its own.
        assert_eq!(rounds.read(|| async { Ok(7) }).await, Ok(7));
    }

    #[tokio::test]
    async fn callers_arriving_during_a_round_share_the_next_one() {
        let rounds: Arc<SharedRounds<()>> = Arc::new(SharedRounds::new());
        let ran = Arc::new(AtomicU64::new(0));
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (rounds, ran) = (rounds.clone(), ran.clone());
            tokio::spawn(async move {
                rounds
                    .read(|| async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                        let _ = hold.await;
                        Ok(1)
                    })
                    .await
            })
        };
        // The first round is out once it has counted itself.
        while ran.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (0..4)
            .map(|_| {
                let (rounds, ran) = (rounds.clone(), ran.clone());
                tokio::spawn(async move {
                    rounds
                        .read(|| async move { Ok(10 + ran.fetch_add(1, Ordering::SeqCst)) })
                        .await
                })
            })
            .collect();
        // Each later caller has read `started` before the first round is let go.
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        let _ = release.send(());
        assert_eq!(first.await.ok(), Some(Ok(1)));
        let mut found = Vec::new();
        for l in later {
            found.push(l.await.ok());
        }
        // One more round (the second, numbered 11 by its count) answered all four.
        assert_eq!(found, vec![Some(Ok(11)); 4]);
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_round_fails_those_who_shared_it() {
        let rounds: SharedRounds<&'static str> = SharedRounds::new();
        assert_eq!(
            rounds.read(|| async { Err("no quorum") }).await,
            Err("no quorum")
        );
        assert_eq!(rounds.read(|| async { Ok(3) }).await, Ok(3));
    }
}
