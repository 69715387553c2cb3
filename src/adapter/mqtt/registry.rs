//! The MQTT adapter's broker-wide state: sessions by (vhost, client id) and retained messages
//! by vhost. One per broker, made when the broker starts (`net::start`) and handed to every
//! MQTT connection and to recovery: nothing lives in statics, so several brokers can share a
//! process (the tests start many).

use super::retained::{RetainedLimits, RetainedStore};
use super::session::Session;
use crate::adapter::outbox::Outbox;
use crate::core::memory::MemoryMonitor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub vhost: String,
    pub client_id: String,
}

/// The live connection that holds a session.
#[derive(Debug, Clone)]
pub struct Owner {
    pub conn_id: u64,
    pub handover: Arc<Handover>,
}

/// How the connection holding a session is asked to let go of it (takeover), and says it has.
///
/// Flags and one `Notify` rather than a `watch` channel, and the owner woken through its
/// outbox's notification rather than one of its own: every connection holds one of these for its
/// whole life, and a watch channel's shared state is about 350 bytes (issue 7: memory per idle
/// connection).
#[derive(Debug)]
pub struct Handover {
    /// The owner's outbox: waking it wakes the owner's connection task. None for a session
    /// held while it goes (an expired one, see `release::schedule_expiry`): there is nobody to
    /// ask, a takeover waits for the end.
    owner: Option<Arc<Outbox>>,
    kicked: AtomicBool,
    released: AtomicBool,
    on_release: Notify,
}

impl Handover {
    pub fn new(owner: Arc<Outbox>) -> Self {
        Self::held_by(Some(owner))
    }

    /// The handover of a session no connection holds, held while it is being discarded.
    pub fn ending() -> Self {
        Self::held_by(None)
    }

    fn held_by(owner: Option<Arc<Outbox>>) -> Self {
        Handover {
            owner,
            kicked: AtomicBool::new(false),
            released: AtomicBool::new(false),
            on_release: Notify::new(),
        }
    }

    /// Tells the owner another connection took the session over.
    pub fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        if let Some(owner) = &self.owner {
            owner.wake();
        }
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// The owner has let go of the session (or its connection is gone).
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.on_release.notify_waiters();
    }

    /// Waits until [`release`](Self::release) has been called.
    pub async fn released(&self) {
        loop {
            let notified = self.on_release.notified();
            tokio::pin!(notified);
            // Registered before the flag is checked, so a release in between is not missed.
            notified.as_mut().enable();
            if self.released.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
pub struct SessionSlot {
    pub session: Arc<Mutex<Session>>,
    pub owner: Option<Owner>,
    /// Bumped each time a connection takes the session; a delayed will or an expiry timer
    /// armed for an older generation does nothing.
    pub generation: u64,
}

#[derive(Debug)]
pub struct MqttState {
    sessions: Mutex<HashMap<SessionKey, SessionSlot>>,
    retained: Mutex<RetainedStore>,
}

/// Poison-tolerant lock: a panic in one connection must not wedge every other one.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MqttState {
    /// The state of one broker: its retained messages limited by `mqtt`'s retained limits and
    /// charged to `memory`.
    pub fn new(mqtt: &crate::config::MqttConfig, memory: Arc<MemoryMonitor>) -> Self {
        let limits = RetainedLimits {
            max_messages: mqtt.retained_max_messages,
            max_bytes: mqtt.retained_max_bytes,
        };
        MqttState {
            sessions: Mutex::default(),
            retained: Mutex::new(RetainedStore::new(limits, Some(memory))),
        }
    }

    pub fn sessions(&self) -> MutexGuard<'_, HashMap<SessionKey, SessionSlot>> {
        lock(&self.sessions)
    }

    /// The retained messages of every vhost.
    pub fn retained(&self) -> MutexGuard<'_, RetainedStore> {
        lock(&self.retained)
    }
}

/// One MQTT session as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub client_id: String,
    pub vhost: String,
    pub queue: String,
    pub connected: bool,
    pub subscriptions: usize,
    pub in_flight: usize,
    pub pending: usize,
    pub expiry_interval: u32,
}

impl MqttState {
    /// Every session, connected or waiting for its client, sorted by vhost and client id.
    pub fn session_summaries(&self) -> Vec<SessionSummary> {
        let mut out: Vec<SessionSummary> = self
            .sessions()
            .values()
            .map(|slot| {
                let s = lock(&slot.session);
                SessionSummary {
                    client_id: s.client_id.clone(),
                    vhost: s.vhost.clone(),
                    queue: s.queue.clone(),
                    connected: slot.owner.is_some(),
                    subscriptions: s.subscriptions.len(),
                    in_flight: s.in_flight.len(),
                    pending: s.pending.len(),
                    expiry_interval: s.expiry_interval,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.vhost, &a.client_id).cmp(&(&b.vhost, &b.client_id)));
        out
    }

    /// Retained messages over every vhost.
    pub fn retained_count(&self) -> usize {
        lock(&self.retained).len()
    }
}
