//! Memory accounting for message bodies, and the resource alarm that blocks publishers: set
//! above the memory high watermark, or while the disk is short of space (the store's disk
//! monitor sets that half).
//!
//! Every [`Message`](super::message::Message) holds a [`MemoryCharge`] for its size; the charge is
//! released when the last reference to the message goes. So the total is what messages really
//! occupy, however many queues share them. MQTT sessions charge the copies they keep, and
//! connections their outbound buffers.
//!
//! Counted bytes cannot see the broker's fixed footprint or what the allocator keeps after a
//! free, so the process's resident set is a second input (RabbitMQ alarms on its whole process
//! memory): while messages hold at least half the watermark, the resident set is read each time
//! the count grows by another [`RESIDENT_PROBE_STEP`], and the alarm goes off when it is within
//! [`RESIDENT_HEADROOM_DIVISOR`]th of the watermark. The alarm still clears on counted bytes
//! (below 90% of what was counted when it went off), so memory the allocator keeps after the
//! backlog is gone cannot hold publishers back for ever; and when it clears, the allocator is
//! asked to return its free pages, so that the next probes see what is in use.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Reads the process's resident set in bytes (`None` when it cannot be read).
pub type ResidentProbe = fn() -> Option<usize>;

/// The resident set is read each time the counted bytes grow past another multiple of this.
pub const RESIDENT_PROBE_STEP: usize = 1 << 20;

/// The resident-set alarm goes off within 1/20 (5%) of the watermark: room for what publishers
/// already sent when it goes off and for growth between two probes.
pub const RESIDENT_HEADROOM_DIVISOR: usize = 20;

/// The resident set is compared to the watermark only when the watermark is at least this many
/// times the resident set at start. Below that the watermark is smaller than the broker's own
/// footprint (or the broker shares its process, as in the integration tests), and only counted
/// bytes mean anything.
const RESIDENT_MIN_WATERMARK_FACTOR: usize = 4;

/// Counts bytes held by messages and raises an alarm above the high watermark.
#[derive(Debug)]
pub struct MemoryMonitor {
    used: AtomicUsize,
    high_watermark: usize,
    /// The count at which the alarm went off because of the resident set; it clears below
    /// 90% of this. `usize::MAX` while the resident set has not set the alarm.
    resident_limit: AtomicUsize,
    /// Reads the resident set; `None` when it is not an input (see
    /// [`RESIDENT_MIN_WATERMARK_FACTOR`]).
    resident: Option<ResidentProbe>,
    memory_alarm: AtomicBool,
    disk_alarm: AtomicBool,
    /// The combined alarm as last published; updates are serialised so it never goes stale.
    alarm_tx: watch::Sender<bool>,
    publish: std::sync::Mutex<()>,
}

impl MemoryMonitor {
    /// A monitor whose alarm goes off above `high_watermark` bytes (0 = never), counted or
    /// resident (see the module's documentation).
    pub fn new(high_watermark: usize) -> Arc<Self> {
        Self::with_resident_probe(high_watermark, super::process_memory::resident_bytes)
    }

    /// As [`new`](Self::new), reading the resident set with `probe`.
    pub fn with_resident_probe(high_watermark: usize, probe: ResidentProbe) -> Arc<Self> {
        let at_start = probe();
        let resident = at_start
            .filter(|&r| {
                high_watermark > 0
                    && r.saturating_mul(RESIDENT_MIN_WATERMARK_FACTOR) <= high_watermark
            })
            .map(|_| probe);
        let (alarm_tx, _) = watch::channel(false);
        Arc::new(MemoryMonitor {
            used: AtomicUsize::new(0),
            high_watermark,
            resident_limit: AtomicUsize::new(usize::MAX),
            resident,
            memory_alarm: AtomicBool::new(false),
            disk_alarm: AtomicBool::new(false),
            alarm_tx,
            publish: std::sync::Mutex::new(()),
        })
    }

    /// Whether the resident set is an input to the alarm.
    pub fn watches_resident_set(&self) -> bool {
        self.resident.is_some()
    }

    /// Bytes currently held by messages.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn high_watermark(&self) -> usize {
        self.high_watermark
    }

    /// Whether publishers should be blocked now (memory or disk).
    pub fn alarm(&self) -> bool {
        self.memory_alarm.load(Ordering::Relaxed) || self.disk_alarm.load(Ordering::Relaxed)
    }

    /// Which alarms are in effect, as (memory, disk), for the health checks and the nodes API.
    pub fn alarms(&self) -> (bool, bool) {
        (
            self.memory_alarm.load(Ordering::Relaxed),
            self.disk_alarm.load(Ordering::Relaxed),
        )
    }

    /// Sets or clears the disk half of the alarm.
    pub fn set_disk_alarm(&self, on: bool) {
        if self.disk_alarm.swap(on, Ordering::Relaxed) != on {
            if on {
                tracing::warn!(
                    "disk alarm set: free disk space below the limit; blocking publishers"
                );
            } else {
                tracing::info!("disk alarm cleared");
            }
            self.publish_alarm();
        }
    }

    fn publish_alarm(&self) {
        let _guard = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let on = self.alarm();
        self.alarm_tx
            .send_if_modified(|v| std::mem::replace(v, on) != on);
    }

    /// Watch the alarm state (true = publishers blocked).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm_tx.subscribe()
    }

    /// Charge `bytes` to this monitor until the returned guard drops.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> MemoryCharge {
        self.add(bytes);
        MemoryCharge {
            monitor: Some(self.clone()),
            bytes,
        }
    }

    fn add(&self, bytes: usize) {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        let now = before + bytes;
        if self.high_watermark == 0 || self.memory_alarm.load(Ordering::Relaxed) {
            return;
        }
        if now > self.high_watermark {
            self.set_alarm(true);
        } else if now / RESIDENT_PROBE_STEP != before / RESIDENT_PROBE_STEP {
            self.check_resident(now);
        }
    }

    /// Sets the alarm when the resident set is near the watermark while messages hold at least
    /// half of it (below that, a large resident set is memory the allocator keeps for reuse,
    /// and blocking publishers would not shrink it).
    fn check_resident(&self, counted: usize) {
        let Some(probe) = self.resident else {
            return;
        };
        if counted < self.high_watermark / 2 {
            return;
        }
        let limit = self.high_watermark - self.high_watermark / RESIDENT_HEADROOM_DIVISOR;
        if let Some(rss) = probe().filter(|&rss| rss > limit) {
            self.resident_limit.store(counted, Ordering::Relaxed);
            tracing::warn!(
                resident = rss,
                counted,
                "resident memory near the high watermark"
            );
            self.set_alarm(true);
        }
    }

    fn release(&self, bytes: usize) {
        let now = self.used.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        // Clear below 90% so that a queue hovering at the mark does not flap the alarm.
        let limit = self
            .high_watermark
            .min(self.resident_limit.load(Ordering::Relaxed));
        if self.memory_alarm.load(Ordering::Relaxed) && now <= limit / 10 * 9 {
            self.resident_limit.store(usize::MAX, Ordering::Relaxed);
            self.set_alarm(false);
        }
    }

    fn set_alarm(&self, on: bool) {
        if self.memory_alarm.swap(on, Ordering::Relaxed) != on {
            if on {
                tracing::warn!(
                    used = self.used(),
                    high_watermark = self.high_watermark,
                    "memory alarm set: blocking publishers"
                );
            } else {
                tracing::info!(used = self.used(), "memory alarm cleared");
                // What the backlog held goes back to the operating system (and the next
                // resident-set probes see the memory in use, not the peak).
                super::process_memory::return_free_memory();
            }
            self.publish_alarm();
        }
    }
}

/// Bytes charged to a [`MemoryMonitor`], released on drop.
#[derive(Debug, Default)]
pub struct MemoryCharge {
    monitor: Option<Arc<MemoryMonitor>>,
    bytes: usize,
}

impl MemoryCharge {
    /// Charges `bytes` more to the same monitor (nothing when the charge has none).
    pub fn grow(&mut self, bytes: usize) {
        if let Some(m) = &self.monitor {
            m.add(bytes);
            self.bytes += bytes;
        }
    }

    /// Makes the charge `bytes`, growing or shrinking it.
    pub fn resize(&mut self, bytes: usize) {
        match bytes.checked_sub(self.bytes) {
            Some(more) => self.grow(more),
            None => {
                if let Some(m) = &self.monitor {
                    m.release(self.bytes - bytes);
                    self.bytes = bytes;
                }
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A new charge of `bytes` to the same monitor (none when this one has none).
    pub fn sibling(&self, bytes: usize) -> MemoryCharge {
        match &self.monitor {
            Some(m) => m.charge(bytes),
            None => MemoryCharge::default(),
        }
    }
}

/// A clone is a copy of what was charged, so it is charged again.
impl Clone for MemoryCharge {
    fn clone(&self) -> Self {
        self.sibling(self.bytes)
    }
}

/// Accounting is not part of a value's identity: any two charges compare equal, so that the
/// values holding them compare by content.
impl PartialEq for MemoryCharge {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for MemoryCharge {}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        if let Some(m) = self.monitor.take() {
            m.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_sets_above_mark_and_clears_below_ninety_percent() {
        let m = MemoryMonitor::new(1000);
        let a = m.charge(600);
        assert!(!m.alarm());
        let b = m.charge(600);
        assert!(m.alarm());
        assert!(*m.subscribe().borrow());
        drop(a);
        assert!(!m.alarm(), "600 <= 900 clears");
        drop(b);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn disk_and_memory_alarms_combine() {
        let m = MemoryMonitor::new(1000);
        let rx = m.subscribe();
        m.set_disk_alarm(true);
        assert!(m.alarm() && *rx.borrow());
        let a = m.charge(2000);
        m.set_disk_alarm(false);
        assert!(m.alarm() && *rx.borrow(), "memory still over the mark");
        drop(a);
        assert!(!m.alarm() && !*rx.borrow());
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn resident_set_near_the_watermark_sets_the_alarm_and_counted_bytes_clear_it() {
        static RESIDENT: AtomicUsize = AtomicUsize::new(MIB);
        let m = MemoryMonitor::with_resident_probe(100 * MIB, || {
            Some(RESIDENT.load(Ordering::Relaxed))
        });
        assert!(m.watches_resident_set());
        RESIDENT.store(99 * MIB, Ordering::Relaxed);
        let below_half = m.charge(40 * MIB);
        assert!(
            !m.alarm(),
            "messages hold less than half: the resident set is not read"
        );
        let more = m.charge(20 * MIB);
        assert!(m.alarm(), "resident 99 MiB is within 5% of 100 MiB");
        assert!(*m.subscribe().borrow());
        // The resident set stays high (the allocator keeps freed memory); the alarm clears
        // once the count is below 90% of the 60 MiB it went off at.
        drop(more);
        assert!(!m.alarm(), "40 MiB <= 54 MiB clears");
        drop(below_half);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn resident_set_far_from_the_watermark_changes_nothing() {
        static RESIDENT: AtomicUsize = AtomicUsize::new(MIB);
        let m = MemoryMonitor::with_resident_probe(100 * MIB, || {
            Some(RESIDENT.load(Ordering::Relaxed))
        });
        RESIDENT.store(80 * MIB, Ordering::Relaxed);
        let a = m.charge(90 * MIB);
        assert!(!m.alarm());
        let b = m.charge(11 * MIB);
        assert!(m.alarm(), "counted bytes over the watermark still set it");
        drop((a, b));
        assert!(!m.alarm());
    }

    #[test]
    fn a_watermark_near_the_resident_set_at_start_ignores_the_resident_set() {
        let m = MemoryMonitor::with_resident_probe(3 * MIB, || Some(MIB));
        assert!(!m.watches_resident_set());
        let _a = m.charge(2 * MIB);
        assert!(!m.alarm(), "only counted bytes count, and 2 MiB < 3 MiB");
        assert!(!MemoryMonitor::with_resident_probe(100 * MIB, || None).watches_resident_set());
    }

    #[test]
    fn a_charge_grows_and_shrinks() {
        let m = MemoryMonitor::new(1000);
        let mut c = m.charge(100);
        c.grow(950);
        assert!(m.alarm());
        assert_eq!((c.bytes(), m.used()), (1050, 1050));
        c.resize(300);
        assert!(!m.alarm());
        assert_eq!(m.used(), 300);
        c.resize(400);
        assert_eq!(m.used(), 400);
        drop(c);
        assert_eq!(m.used(), 0);
        let mut unmonitored = MemoryCharge::default();
        unmonitored.grow(10);
        assert_eq!(unmonitored.bytes(), 0);
    }

    #[test]
    fn zero_watermark_never_alarms() {
        let m = MemoryMonitor::new(0);
        let _a = m.charge(usize::MAX / 4);
        assert!(!m.alarm());
    }
}
