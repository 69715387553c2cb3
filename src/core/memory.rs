//! Memory accounting for message bodies, and the resource alarm that blocks publishers: set
//! above the memory high watermark, or while the disk is short of space (the store's disk
//! monitor sets that half).
//!
//! Every [`Message`](super::message::Message) holds a [`MemoryCharge`] for its size; the charge is
//! released when the last reference to the message goes. So the total is what messages really
//! occupy, however many queues share them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Counts bytes held by messages and raises an alarm above the high watermark.
#[derive(Debug)]
pub struct MemoryMonitor {
    used: AtomicUsize,
    high_watermark: usize,
    memory_alarm: AtomicBool,
    disk_alarm: AtomicBool,
    /// The combined alarm as last published; updates are serialised so it never goes stale.
    alarm_tx: watch::Sender<bool>,
    publish: std::sync::Mutex<()>,
}

impl MemoryMonitor {
    /// A monitor whose alarm goes off above `high_watermark` bytes (0 = never).
    pub fn new(high_watermark: usize) -> Arc<Self> {
        let (alarm_tx, _) = watch::channel(false);
        Arc::new(MemoryMonitor {
            used: AtomicUsize::new(0),
            high_watermark,
            memory_alarm: AtomicBool::new(false),
            disk_alarm: AtomicBool::new(false),
            alarm_tx,
            publish: std::sync::Mutex::new(()),
        })
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
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if self.high_watermark > 0
            && now > self.high_watermark
            && !self.memory_alarm.load(Ordering::Relaxed)
        {
            self.set_alarm(true);
        }
        MemoryCharge {
            monitor: Some(self.clone()),
            bytes,
        }
    }

    fn release(&self, bytes: usize) {
        let now = self.used.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        // Clear below 90% so that a queue hovering at the mark does not flap the alarm.
        if self.memory_alarm.load(Ordering::Relaxed) && now <= self.high_watermark / 10 * 9 {
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

    #[test]
    fn zero_watermark_never_alarms() {
        let m = MemoryMonitor::new(0);
        let _a = m.charge(usize::MAX / 4);
        assert!(!m.alarm());
    }
}
