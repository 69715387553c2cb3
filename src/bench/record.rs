//! What a consumer records per message: latency into an HDR histogram and the sequence number
//! into a per-publisher bitmap, so loss and duplicates are counted exactly at the end.

use super::body::Stamp;
use super::live::Live;
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Latencies above this (µs) are recorded as this; a minute is far beyond any sane run.
pub(super) const MAX_LATENCY_US: u64 = 60_000_000;

/// Which sequence numbers of each publisher were seen, one bit each.
#[derive(Debug, Default, Clone)]
pub struct SeqBitmap {
    per_publisher: Vec<Vec<u64>>,
}

impl SeqBitmap {
    /// Marks `seq` of `publisher` seen; false if it already was (a duplicate).
    pub fn insert(&mut self, publisher: u16, seq: u32) -> bool {
        let p = usize::from(publisher);
        if self.per_publisher.len() <= p {
            self.per_publisher.resize_with(p + 1, Vec::new);
        }
        let words = &mut self.per_publisher[p];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if words.len() <= word {
            // Grow geometrically: sequence numbers arrive nearly in order.
            words.resize((word + 1).max(words.len() * 2), 0);
        }
        let fresh = words[word] & (1 << bit) == 0;
        words[word] |= 1 << bit;
        fresh
    }

    /// Adds `other`'s bits; returns how many were already set here (duplicates across the two).
    pub fn merge(&mut self, other: &SeqBitmap) -> u64 {
        let mut overlap = 0;
        if self.per_publisher.len() < other.per_publisher.len() {
            self.per_publisher
                .resize_with(other.per_publisher.len(), Vec::new);
        }
        for (mine, theirs) in self.per_publisher.iter_mut().zip(&other.per_publisher) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                overlap += u64::from((*m & *t).count_ones());
                *m |= *t;
            }
        }
        overlap
    }

    /// Distinct sequence numbers of `publisher` seen below `sent` (what it published).
    pub fn seen_below(&self, publisher: u16, sent: u64) -> u64 {
        let Some(words) = self.per_publisher.get(usize::from(publisher)) else {
            return 0;
        };
        let full = (sent / 64) as usize;
        let mut n: u64 = words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if let Some(w) = words.get(full) {
            let mask = (1u64 << (sent % 64)) - 1;
            n += u64::from((w & mask).count_ones());
        }
        n
    }
}

/// One consumer's record of what it received.
pub struct Recorder {
    /// Consumers in one group share the messages (competing consumers on one queue); each
    /// group must see every published message once.
    pub group: usize,
    pub latency_us: Histogram<u64>,
    pub seen: SeqBitmap,
    pub received: u64,
    pub duplicates: u64,
    /// Messages without our run's stamp (left over from another run, or not ours).
    pub foreign: u64,
    unflushed: u64,
    live: Arc<Live>,
    /// At most this many messages per second (a deliberately slow consumer).
    max_rate: Option<u64>,
}

impl Recorder {
    pub fn new(
        live: Arc<Live>,
        group: usize,
        max_rate: Option<u64>,
    ) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Recorder {
            group,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            seen: SeqBitmap::default(),
            received: 0,
            duplicates: 0,
            foreign: 0,
            unflushed: 0,
            live,
            max_rate,
        })
    }

    /// Records one message body.
    pub fn record(&mut self, body: &[u8]) {
        let Some(stamp) = Stamp::read(body).filter(|s| s.run == self.live.run) else {
            self.foreign += 1;
            return;
        };
        let now = self.live.now_ns();
        self.latency_us
            .saturating_record((now.saturating_sub(stamp.sent_ns) / 1000).max(1));
        self.received += 1;
        // Only a first sighting counts towards the drain: a redelivery after a failover must
        // not stand in for a message still on its way.
        if self.seen.insert(stamp.publisher, stamp.seq) {
            self.unflushed += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Publishes the count since the last flush to the live counters (once per read, not per
    /// message, so consumers do not contend on the counter), then, for a rate-limited
    /// consumer, waits until it is back under its rate: meanwhile it does not read the socket.
    pub async fn flush(&mut self) {
        self.live
            .consumed
            .fetch_add(self.unflushed, Ordering::Relaxed);
        self.unflushed = 0;
        if let Some(rate) = self.max_rate {
            let due = Duration::from_secs_f64(self.received as f64 / rate.max(1) as f64);
            let elapsed = self.live.start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bitmap_counts_duplicates_within_and_across_consumers() {
        let mut a = SeqBitmap::default();
        assert!(a.insert(0, 0));
        assert!(a.insert(0, 100));
        assert!(!a.insert(0, 100));
        assert!(a.insert(2, 5));
        let mut b = SeqBitmap::default();
        b.insert(0, 100);
        b.insert(0, 1);
        assert_eq!(a.merge(&b), 1);
        assert_eq!(a.seen_below(0, 101), 3);
        assert_eq!(a.seen_below(0, 100), 2);
        assert_eq!(a.seen_below(2, 6), 1);
        assert_eq!(a.seen_below(1, 10), 0);
    }

    #[tokio::test]
    async fn a_redelivery_does_not_count_towards_the_drain() {
        let live = Arc::new(Live::new(1, 1000));
        live.published.store(2, Ordering::Relaxed);
        let mut recorder = Recorder::new(live.clone(), 0, None).unwrap();
        let body = |seq| {
            let mut body = [0u8; super::super::body::STAMP_LEN];
            Stamp {
                run: live.run,
                publisher: 0,
                seq,
                sent_ns: 0,
            }
            .write(&mut body);
            body
        };
        recorder.record(&body(0));
        recorder.record(&body(0));
        recorder.flush().await;
        assert_eq!((recorder.received, recorder.duplicates), (2, 1));
        // The second message is still on its way, whatever the first one's redelivery.
        assert_eq!(live.in_flight(), 1);
        recorder.record(&body(1));
        recorder.flush().await;
        assert_eq!(live.in_flight(), 0);
    }
}
