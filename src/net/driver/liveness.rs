//! Heart-beats and keep-alives as deadlines: when to send a beat, and when a silent peer
//! counts as gone. Plain data driven by `now`, so every protocol's rules are tested without
//! a socket or a sleep.

use std::time::Duration;
use tokio::time::Instant;

/// When the peer's silence is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// At a fixed interval (AMQP: every half heartbeat; STOMP: every half the expected beat).
    Every(Duration),
    /// Exactly when the silence would reach its limit (MQTT's keep alive).
    AtExpiry,
}

/// What is due at a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    pub send_beat: bool,
    pub peer_silent: bool,
}

#[derive(Debug, Clone)]
pub struct Liveness {
    send_every: Option<Duration>,
    /// How often silence is checked, and how long it may last.
    silence: Option<(Check, Duration)>,
    next_send: Option<Instant>,
    next_check: Option<Instant>,
    last_heard: Instant,
}

impl Liveness {
    /// Beats sent every `send_every`; a peer silent for longer than `limit` (checked as
    /// `check` says) is gone.
    pub fn new(
        send_every: Option<Duration>,
        silence: Option<(Check, Duration)>,
        now: Instant,
    ) -> Self {
        let next_check = silence.map(|(check, limit)| match check {
            Check::Every(every) => now + every,
            Check::AtExpiry => now + limit,
        });
        Liveness {
            send_every,
            silence,
            next_send: send_every.map(|e| now + e),
            next_check,
            last_heard: now,
        }
    }

    /// Neither beats nor checks.
    pub fn none(now: Instant) -> Self {
        Self::new(None, None, now)
    }

    /// The peer sent something at `now`. Moves no deadline (a busy connection does not
    /// re-arm its timer on every read).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    pub fn deadline(&self) -> Option<Instant> {
        match (self.next_send, self.next_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What is due at `now`, and the deadlines moved past it. `blocked`: the connection is not
    /// read (memory alarm), so its silence proves nothing.
    pub fn poll(&mut self, now: Instant, blocked: bool) -> Due {
        let mut due = Due::default();
        if let (Some(at), Some(every)) = (self.next_send, self.send_every) {
            if at <= now {
                due.send_beat = true;
                self.next_send = Some(now + every);
            }
        }
        if let (Some(at), Some((check, limit))) = (self.next_check, self.silence) {
            if at <= now {
                let silent_for = now.saturating_duration_since(self.last_heard);
                // MQTT's keep alive is gone at its limit; a heart-beat check is gone past it.
                let gone = match check {
                    Check::Every(_) => silent_for > limit,
                    Check::AtExpiry => silent_for >= limit,
                };
                due.peer_silent = gone && !blocked;
                self.next_check = Some(match check {
                    Check::Every(every) => now + every,
                    // Heard meanwhile: when the limit would be reached. Blocked: a limit later.
                    Check::AtExpiry if blocked => now + limit,
                    Check::AtExpiry => self.last_heard + limit,
                });
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn amqp_beats_at_half_the_interval_and_drops_after_two_silent_intervals() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(S / 2), Some((Check::Every(S / 2), 2 * S)), t0);
        assert_eq!(l.deadline(), Some(t0 + S / 2));
        let mut beats = 0;
        let at = loop {
            let at = l.deadline().unwrap();
            let due = l.poll(at, false);
            beats += usize::from(due.send_beat);
            if due.peer_silent {
                break at;
            }
            assert!(at - t0 <= 3 * S, "still not dropped at {:?}", at - t0);
        };
        assert_eq!(
            at - t0,
            S * 5 / 2,
            "first check past two intervals of silence"
        );
        assert_eq!(beats, 5);
    }

    #[test]
    fn a_peer_that_is_heard_stays_and_a_blocked_one_is_never_dropped() {
        let t0 = Instant::now();
        let mut l = Liveness::new(None, Some((Check::Every(S / 2), 2 * S)), t0);
        for i in 1..20 {
            let at = t0 + S / 2 * i;
            l.heard(at);
            assert!(!l.poll(at, false).peer_silent);
        }
        let mut blocked = Liveness::new(None, Some((Check::Every(S / 2), 2 * S)), t0);
        for i in 1..20 {
            assert!(!blocked.poll(t0 + S / 2 * i, true).peer_silent);
        }
    }

    #[test]
    fn mqtt_keep_alive_expires_exactly_at_its_limit_after_the_last_packet() {
        let t0 = Instant::now();
        let limit = S * 3 / 2;
        let mut l = Liveness::new(None, Some((Check::AtExpiry, limit)), t0);
        assert_eq!(l.deadline(), Some(t0 + limit));
        // A packet at 1 s: the first deadline finds the peer alive and moves to 1 s + limit.
        l.heard(t0 + S);
        assert!(!l.poll(t0 + limit, false).peer_silent);
        assert_eq!(l.deadline(), Some(t0 + S + limit));
        assert!(l.poll(t0 + S + limit, false).peer_silent);
    }
}
