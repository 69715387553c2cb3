//! Letting go of a session when its connection ends: a session that expires now goes with its
//! queue, one that persists leaves its queue collecting messages until it expires; then the
//! will, now or after its delay. Both delays run on the broker's clock.

use super::connection::{Connection, Ending};
use super::convert::filter_to_pattern;
use super::persist;
use super::publish::{InboundMessage, Publisher};
use super::registry::{lock, MqttState, SessionKey};
use super::session::is_shared;
use crate::core::{Broker, VHost};
use crate::net::driver::clock;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use switchboard_amqp::FieldTable;
use switchboard_mqtt::Will;

impl Connection {
    /// Lets go of the session: a session that expires now goes with its queue; one that
    /// persists keeps collecting messages offline until it expires (what was handed to the
    /// client and not yet acknowledged stays unsettled in the queue, and is resent when the
    /// client returns). Then the will, if due.
    pub(super) async fn finish(mut self: Box<Self>, ending: Ending) {
        self.link.close();
        self.vhost().remove_consumer(self.queue(), self.consumer_id);
        self.settle_dropped();
        let groups: Vec<String> = self.shared.keys().cloned().collect();
        for key in groups {
            self.leave_shared(&key);
        }
        let expiry = lock(&self.attached.session).expiry_interval;
        let key = self.attached.key.clone();
        let generation = self.attached.generation;
        if expiry == 0 && self.owns_session() {
            self.unbind_in_slices().await;
        }
        {
            let mut sessions = self.state.sessions();
            let ours = sessions
                .get(&key)
                .is_some_and(|s| s.owner.as_ref().is_some_and(|o| o.conn_id == self.entry.id));
            if ours && expiry == 0 {
                sessions.remove(&key);
                self.vhost().remove_queue(self.queue());
                persist::forget_session(&self.broker, &mut lock(&self.attached.session));
            } else if ours {
                {
                    let mut s = lock(&self.attached.session);
                    let now = self.broker.timer.now_system().duration_since(UNIX_EPOCH);
                    s.disconnected_at = Some(now.map_or(0, |d| d.as_secs()));
                    persist::write_session(&self.broker, &mut s);
                }
                if let Some(slot) = sessions.get_mut(&key) {
                    slot.owner = None;
                }
                if expiry != u32::MAX {
                    schedule_expiry(
                        self.broker.clone(),
                        self.state.clone(),
                        self.vhost().clone(),
                        key.clone(),
                        generation,
                        expiry,
                    );
                }
            }
        }
        self.attached.handover.release();
        let publish_will = match ending {
            Ending::Abnormal => true,
            Ending::Normal { publish_will } => publish_will,
        };
        if let (true, Some(will)) = (publish_will, self.will) {
            let delay = will.properties.will_delay_interval.unwrap_or(0).min(expiry);
            send_will(self.publisher, *will, delay, key, generation);
        }
    }
}

impl Connection {
    /// Whether the session's slot still names this connection as its owner.
    fn owns_session(&self) -> bool {
        self.state
            .sessions()
            .get(&self.attached.key)
            .is_some_and(|s| s.owner.as_ref().is_some_and(|o| o.conn_id == self.entry.id))
    }

    /// Unbinds the subscriptions of a session that ends now, [`UNBIND_SLICE`] at a time,
    /// giving the runtime back between slices: removing 100,000 bindings in one go kept a
    /// worker (and, under the registry's lock, every MQTT CONNECT) waiting for all of them.
    /// Until the handover is released no other connection can take the session or declare its
    /// queue again, so the queue found by name is still this session's unless an AMQP client
    /// deleted it (then its bindings went with it).
    async fn unbind_in_slices(&self) {
        let filters: Vec<String> = {
            let s = lock(&self.attached.session);
            if s.subscriptions.len() <= UNBIND_SLICE {
                // Few enough for the queue's removal to take in one go.
                return;
            }
            s.subscriptions
                .keys()
                .filter(|f| !is_shared(f))
                .cloned()
                .collect()
        };
        let exchange = &self.broker.config.mqtt.exchange;
        let (vhost, queue) = (self.vhost(), self.queue());
        for slice in filters.chunks(UNBIND_SLICE) {
            let ours = vhost
                .queue(&queue.name)
                .is_some_and(|q| Arc::ptr_eq(&q, queue));
            if !ours {
                return;
            }
            for filter in slice {
                let _ = vhost.unbind_queue(
                    &queue.name,
                    exchange,
                    &filter_to_pattern(filter),
                    &FieldTable::new(),
                    self.entry.id,
                );
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Subscriptions unbound between two yields to the runtime when a session ends.
const UNBIND_SLICE: usize = 1024;

/// Ends a disconnected session after `secs`, unless a client resumed it.
pub(super) fn schedule_expiry(
    broker: Arc<Broker>,
    state: Arc<MqttState>,
    vhost: Arc<VHost>,
    key: SessionKey,
    generation: u64,
    secs: impl Into<u64>,
) {
    let at = clock::now(&broker.timer) + Duration::from_secs(secs.into());
    tokio::spawn(async move {
        clock::sleep_until(&broker.timer, at).await;
        let expired = {
            let mut sessions = state.sessions();
            let due = sessions
                .get(&key)
                .is_some_and(|s| s.generation == generation && s.owner.is_none());
            if !due {
                return;
            }
            let Some(slot) = sessions.remove(&key) else {
                return;
            };
            let mut s = lock(&slot.session);
            // Looked up under the registry's lock (a CONNECT after it may declare the queue
            // anew), removed outside it: a session's bindings may be 100,000, and every CONNECT
            // waits for that lock.
            let q = vhost.queue(&s.queue);
            persist::forget_session(&broker, &mut s);
            q
        };
        if let Some(q) = expired {
            vhost.remove_queue(&q);
        }
        tracing::debug!(client = %key.client_id, "MQTT session expired");
    });
}

/// Publishes a will now, or after its delay unless the session was resumed meanwhile.
fn send_will(publisher: Publisher, will: Will, delay: u32, key: SessionKey, generation: u64) {
    let message = InboundMessage {
        topic: will.topic,
        qos: will.qos,
        retain: will.retain,
        dup: false,
        properties: will.properties,
        payload: will.payload,
    };
    if delay == 0 {
        publisher.route(message);
        return;
    }
    let timer = publisher.broker.timer.clone();
    let at = clock::now(&timer) + Duration::from_secs(u64::from(delay));
    tokio::spawn(async move {
        clock::sleep_until(&timer, at).await;
        let resumed = publisher
            .state
            .sessions()
            .get(&key)
            .is_some_and(|s| s.generation != generation);
        if !resumed {
            publisher.route(message);
        }
    });
}
