//! Letting go of a session when its connection ends: a session that expires now goes with its
//! queue, one that persists leaves its queue collecting messages until it expires; then the
//! will, now or after its delay. Both delays run on the broker's clock.

use super::connection::{Connection, Ending};
use super::discard::{discard, Discard};
use super::persist;
use super::publish::Publisher;
use super::registry::{lock, Handover, MqttState, Owner, SessionKey};
use crate::core::{Broker, VHost};
use crate::net::driver::clock;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
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
            // Until the handover is released no other connection can take the session or
            // declare its queue again.
            let what = Discard {
                queue: Some(self.queue()),
                entries: true,
            };
            discard(
                &self.broker,
                self.vhost(),
                &self.attached.session,
                what,
                self.entry.id,
            )
            .await;
            super::replica::ended(&self.broker, self.vhost(), &key, self.entry.id).await;
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
        if let Some(w) = &self.cluster_state {
            // The next connection, here or on another node, resumes what the cluster holds.
            w.flush().await;
            if expiry > 0 && super::replica::held_elsewhere(&self.broker, &key) {
                super::replica::give_back_in_flight(
                    &self.broker,
                    &mut lock(&self.attached.session),
                );
            }
        }
        self.attached.handover.release();
        let publish_will = match ending {
            Ending::Abnormal => true,
            Ending::Normal { publish_will } => publish_will,
        };
        // Whether published or discarded, the will is this node's to settle, not the
        // cluster's to publish should this node go.
        super::cluster_will::ended(&self.broker, &key, self.entry.id);
        if let (true, Some(will)) = (publish_will, self.will) {
            let delay = super::cluster_will::delay_of(&will, expiry);
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
}

/// Seconds before an expiry the cluster did not confirm is tried again.
const RETRY_SECS: u64 = 5;

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
        // The session stays in the registry, held, while it goes: a CONNECT with its client
        // id waits for the end as for a takeover, so none resumes it half gone, declares its
        // queue again or writes records under its keys meanwhile. The work itself (a session's
        // subscriptions may be 100,000) is done outside the registry's lock, which every
        // CONNECT takes.
        let ender = Owner {
            conn_id: broker.next_id(),
            handover: Arc::new(Handover::ending()),
        };
        let session = {
            let mut sessions = state.sessions();
            let Some(slot) = sessions
                .get_mut(&key)
                .filter(|s| s.generation == generation && s.owner.is_none())
            else {
                return;
            };
            if super::replica::held_elsewhere(&broker, &key) {
                return;
            }
            slot.owner = Some(ender.clone());
            slot.session.clone()
        };
        // Clustered: gone from every node first (its queue here too); a minority keeps it
        // and tries again later rather than diverge.
        let client = super::replica::clear_client(&broker, &key, None);
        if let Err(e) = super::replica::forget(&broker, &vhost, &key, client).await {
            tracing::info!(client = %key.client_id, error = %e, "MQTT session expiry not confirmed by the cluster; retrying");
            if let Some(slot) = state.sessions().get_mut(&key) {
                slot.owner = None;
            }
            ender.handover.release();
            schedule_expiry(
                broker.clone(),
                state.clone(),
                vhost,
                key,
                generation,
                RETRY_SECS,
            );
            return;
        }
        let queue = vhost.queue(&lock(&session).queue);
        let what = Discard {
            queue: queue.as_ref(),
            entries: true,
        };
        discard(&broker, &vhost, &session, what, 0).await;
        persist::forget_session(&broker, &mut lock(&session));
        if let Some(q) = queue {
            vhost.remove_queue(&q);
        }
        state.sessions().remove(&key);
        ender.handover.release();
        tracing::debug!(client = %key.client_id, "MQTT session expired");
    });
}

/// Publishes a will now, or after its delay unless the session was resumed meanwhile.
fn send_will(mut publisher: Publisher, will: Will, delay: u32, key: SessionKey, generation: u64) {
    let message = super::cluster_will::will_message(will);
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
