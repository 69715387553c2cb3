//! Letting go of a session when its connection ends: a session that expires now goes with its
//! queue, one that persists collects messages offline until it expires; then the will, now or
//! after its delay.

use super::connection::{Connection, Ending};
use super::delivery::OfflineSink;
use super::publish::{InboundMessage, Publisher};
use super::registry::{lock, MqttState, SessionKey};
use crate::core::{Consumer, VHost};
use std::sync::Arc;
use std::time::Duration;
use switchboard_mqtt::Will;

impl Connection {
    /// Lets go of the session: a session that expires now goes with its queue; one that
    /// persists keeps collecting messages offline until it expires. Then the will, if due.
    pub fn finish(mut self, ending: Ending) {
        self.link.close();
        self.queue().remove_consumer(self.consumer_id);
        let groups: Vec<String> = self.shared.keys().cloned().collect();
        for key in groups {
            self.leave_shared(&key);
        }
        let expiry = lock(&self.attached.session).expiry_interval;
        let key = self.attached.key.clone();
        let generation = self.attached.generation;
        {
            let mut sessions = self.state.sessions();
            let ours = sessions
                .get(&key)
                .is_some_and(|s| s.owner.as_ref().is_some_and(|o| o.conn_id == self.entry.id));
            if ours && expiry == 0 {
                sessions.remove(&key);
                self.vhost().remove_queue(self.queue());
            } else if ours {
                let id = self.broker.next_id();
                let sink = Arc::new(OfflineSink {
                    session: self.attached.session.clone(),
                    client_id: key.client_id.clone(),
                    limit: self.broker.config.mqtt.max_offline_messages,
                });
                let consumer = Consumer {
                    id,
                    tag: format!("mqtt-offline-{}", key.client_id),
                    no_ack: true,
                    exclusive: false,
                    owner: self.entry.id,
                    sink,
                };
                let attached = self.queue().add_consumer(consumer).is_ok();
                if let Some(slot) = sessions.get_mut(&key) {
                    slot.owner = None;
                    slot.offline_consumer = attached.then_some(id);
                }
                if expiry != u32::MAX {
                    schedule_expiry(
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

/// Ends a disconnected session after its expiry interval, unless a client resumed it.
pub(super) fn schedule_expiry(
    state: Arc<MqttState>,
    vhost: Arc<VHost>,
    key: SessionKey,
    generation: u64,
    secs: u32,
) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
        let mut sessions = state.sessions();
        let due = sessions
            .get(&key)
            .is_some_and(|s| s.generation == generation && s.owner.is_none());
        if !due {
            return;
        }
        if let Some(slot) = sessions.remove(&key) {
            let queue = lock(&slot.session).queue.clone();
            if let Some(q) = vhost.queue(&queue) {
                if let Some(id) = slot.offline_consumer {
                    q.remove_consumer(id);
                }
                vhost.remove_queue(&q);
            }
            tracing::debug!(client = %key.client_id, "MQTT session expired");
        }
    });
}

/// Publishes a will now, or after its delay unless the session was resumed meanwhile.
fn send_will(publisher: Publisher, will: Will, delay: u32, key: SessionKey, generation: u64) {
    let message = InboundMessage {
        topic: will.topic,
        qos: will.qos,
        retain: will.retain,
        properties: will.properties,
        payload: will.payload,
    };
    if delay == 0 {
        publisher.route(message);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
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
