//! The MQTT adapter's broker-wide state: sessions by (vhost, client id) and retained messages
//! by vhost. One per broker; several brokers may live in one process (the tests start many),
//! so the state is found by the broker it belongs to rather than held in a plain global.

use super::retained::RetainedStore;
use super::session::Session;
use crate::core::Broker;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub vhost: String,
    pub client_id: String,
}

/// The live connection that holds a session.
#[derive(Debug, Clone)]
pub struct Owner {
    pub conn_id: u64,
    /// Tells the owner another connection took the session over.
    pub kick: Arc<Notify>,
    /// Becomes true (or its sender drops) once the owner has let go of the session.
    pub released: watch::Receiver<bool>,
}

#[derive(Debug)]
pub struct SessionSlot {
    pub session: Arc<Mutex<Session>>,
    pub owner: Option<Owner>,
    /// Bumped each time a connection takes the session; a delayed will or an expiry timer
    /// armed for an older generation does nothing.
    pub generation: u64,
    /// While no connection holds the session: the consumer keeping its queued messages.
    pub offline_consumer: Option<u64>,
}

#[derive(Debug, Default)]
pub struct MqttState {
    sessions: Mutex<HashMap<SessionKey, SessionSlot>>,
    retained: Mutex<HashMap<String, RetainedStore>>,
}

/// Poison-tolerant lock: a panic in one connection must not wedge every other one.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MqttState {
    /// The state belonging to `broker`, created on first use.
    pub fn for_broker(broker: &Arc<Broker>) -> Arc<MqttState> {
        static STATES: Mutex<Vec<(Weak<Broker>, Arc<MqttState>)>> = Mutex::new(Vec::new());
        let mut states = lock(&STATES);
        states.retain(|(b, _)| b.strong_count() > 0);
        if let Some((_, s)) = states
            .iter()
            .find(|(b, _)| std::ptr::eq(b.as_ptr(), Arc::as_ptr(broker)))
        {
            return s.clone();
        }
        let s = Arc::new(MqttState::default());
        states.push((Arc::downgrade(broker), s.clone()));
        s
    }

    pub fn sessions(&self) -> MutexGuard<'_, HashMap<SessionKey, SessionSlot>> {
        lock(&self.sessions)
    }

    /// Runs `f` on the retained store of `vhost`.
    pub fn with_retained<R>(&self, vhost: &str, f: impl FnOnce(&mut RetainedStore) -> R) -> R {
        let mut all = lock(&self.retained);
        f(all.entry(vhost.to_owned()).or_default())
    }
}
