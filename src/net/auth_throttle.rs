//! A growing delay after repeated authentication failures from one address, for every protocol
//! and the HTTP API: a few mistakes cost nothing, then each further failure waits twice as long
//! as the one before (up to [`MAX_DELAY`]) before the refusal is sent, so guessing passwords
//! from one address slows to a crawl (100 wrong passwords in a row took 0.1 ms each). An
//! address that has not failed for [`FORGET_AFTER`] starts afresh, as does one that succeeds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Failures from one address answered at once.
pub const FREE_FAILURES: u32 = 3;
/// The delay of the first failure past the free ones; each further one doubles it.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// How long an address's failures are remembered.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it the stalest are forgotten, so that failures from
/// many addresses cannot grow the table without bound.
const MAX_ADDRESSES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

impl AuthThrottle {
    /// Records a failed authentication from `address` and waits as long as its failures call for
    /// before returning (the caller then sends the refusal).
    pub async fn failed(&self, address: IpAddr) {
        let delay = self.record_failure(address, Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// A successful authentication from `address` clears its failures.
    pub fn succeeded(&self, address: IpAddr) {
        self.lock().remove(&address);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the failure; the delay it gets.
    fn record_failure(&self, address: IpAddr, now: Instant) -> Duration {
        let mut map = self.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&address) {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if map.len() >= MAX_ADDRESSES {
                map.clear();
            }
        }
        let f = map.entry(address).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        delay_for(f.count)
    }
}

/// The delay for the `n`th failure in a row.
fn delay_for(n: u32) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (n - FREE_FAILURES - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test(start_paused = true)]
    async fn delays_grow_per_address_and_are_forgotten() {
        let t = AuthThrottle::default();
        let mut waited = Vec::new();
        for _ in 0..10 {
            let start = Instant::now();
            t.failed(A).await;
            waited.push(start.elapsed().as_millis());
        }
        assert_eq!(
            waited,
            [0, 0, 0, 100, 200, 400, 800, 1600, 3200, 5000],
            "free, then doubling up to the cap"
        );
        // Another address is not slowed by A's failures.
        let start = Instant::now();
        t.failed(B).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A quiet minute forgets them.
        tokio::time::advance(FORGET_AFTER).await;
        let start = Instant::now();
        t.failed(A).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_failures() {
        let t = AuthThrottle::default();
        for _ in 0..5 {
            t.failed(A).await;
        }
        t.succeeded(A);
        let start = Instant::now();
        t.failed(A).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
