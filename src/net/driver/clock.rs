//! The driver's time is the broker's injected clock (`Broker::timer`), so that heart-beats,
//! keep-alives, will delays and session expiry follow a test's manual clock instead of sleeping.
//! Sessions compute with tokio `Instant`s and durations; the broker's milliseconds map to
//! instants through one anchor taken from the wall clock, and deadlines are armed on the
//! broker's timer, which wakes an [`Alarm`].

use crate::core::clock::{Clock, SystemClock};
use crate::core::timer::Timer;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// An instant and the wall clock's milliseconds at it. The broker's clock is the wall clock
/// (or a manual clock started at it), so its instants stay close to tokio's.
fn anchor() -> (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    *ANCHOR.get_or_init(|| (Instant::now(), SystemClock.now_ms()))
}

/// The instant of `ms` (milliseconds since the epoch on the broker's clock).
pub fn instant_at(ms: u64) -> Instant {
    let (at, anchor_ms) = anchor();
    if ms >= anchor_ms {
        at + Duration::from_millis(ms - anchor_ms)
    } else {
        // Before the anchor (a manual clock set in the past): as far back as instants go.
        let back = Duration::from_millis(anchor_ms - ms);
        at.checked_sub(back).unwrap_or(at)
    }
}

/// The broker-clock millisecond at or after which `at` has come.
pub fn ms_at(at: Instant) -> u64 {
    let (anchor_at, anchor_ms) = anchor();
    if at >= anchor_at {
        let d = at - anchor_at;
        let whole = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let rounded_up =
            whole.saturating_add(u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)));
        anchor_ms.saturating_add(rounded_up)
    } else {
        let d = anchor_at - at;
        anchor_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Now on the broker's clock.
pub fn now(timer: &Timer) -> Instant {
    instant_at(timer.now_ms())
}

/// A wake-up from the broker's timer. It keeps no deadline of its own: each
/// [`arm`](Alarm::arm) adds one, and every one that comes rings it, so the owner checks the
/// time when it rings.
#[derive(Debug, Default)]
pub struct Alarm(Arc<Notify>);

impl Alarm {
    pub fn arm(&self, timer: &Timer, at: Instant) {
        timer.wake_at(ms_at(at), Arc::downgrade(&self.0));
    }

    pub async fn rung(&self) {
        self.0.notified().await;
    }
}

/// Waits until `at` on the broker's clock. Take `at` from [`now`] before spawning the task that
/// waits, so that time moved meanwhile counts.
pub async fn sleep_until(timer: &Timer, at: Instant) {
    let alarm = Arc::new(Alarm::default());
    while now(timer) < at {
        alarm.arm(timer, at);
        alarm.rung().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    #[test]
    fn milliseconds_and_instants_round_trip() {
        let ms = SystemClock.now_ms() + 1234;
        assert_eq!(ms_at(instant_at(ms)), ms);
        let at = instant_at(ms) + Duration::from_micros(1);
        assert_eq!(
            ms_at(at),
            ms + 1,
            "a deadline between two milliseconds is the later one"
        );
        assert!(instant_at(ms_at(at)) >= at);
    }

    #[tokio::test]
    async fn sleep_ends_when_the_manual_clock_passes_the_delay() {
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let timer = Timer::new(clock.clone());
        let t = timer.clone();
        let at = now(&timer) + Duration::from_secs(30);
        let slept = tokio::spawn(async move { sleep_until(&t, at).await });
        tokio::task::yield_now().await;
        clock.advance(29_999);
        timer.fire_due();
        tokio::task::yield_now().await;
        assert!(!slept.is_finished(), "woke before its time");
        clock.advance(1);
        timer.fire_due();
        tokio::time::timeout(Duration::from_secs(10), slept)
            .await
            .expect("woken")
            .expect("sleep task");
    }
}
