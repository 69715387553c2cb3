//! SUBSCRIBE and UNSUBSCRIBE: filter checks, bindings of the session queue, shared
//! subscription groups, and retained messages sent on subscribe.

use super::connection::Connection;
use super::convert::filter_to_pattern;
use super::error::Violation;
use super::persist;
use super::registry::lock;
use super::session::{is_shared, shared_queue_name, SubscriptionEntry};
use crate::core::vhost::QueueSpec;
use crate::core::Consumer;
use switchboard_amqp::FieldTable;
use switchboard_mqtt::topic::{check_filter, split_shared};
use switchboard_mqtt::*;

impl Connection {
    /// Joins the group of shared subscription `key` (`$share/<group>/<filter>`): its queue,
    /// bound with the filter, consumed by every member in turn. False if that failed.
    pub(super) fn join_shared(&mut self, key: &str) -> bool {
        if self.shared.contains_key(key) {
            return true;
        }
        let (Some(name), Ok(Some((_, filter)))) = (shared_queue_name(key), split_shared(key))
        else {
            return false;
        };
        let vhost = self.vhost().clone();
        let queue = match vhost.queue(&name) {
            Some(q) => q,
            None => {
                let spec = QueueSpec {
                    name,
                    ..Default::default()
                };
                match vhost.declare_queue(spec, false, self.entry.id) {
                    Ok(d) => d.queue,
                    Err(e) => {
                        tracing::warn!(error = %e, "shared subscription queue not declared");
                        return false;
                    }
                }
            }
        };
        let bound = vhost.bind_queue(
            &queue.name,
            &self.broker.config.mqtt.exchange,
            &filter_to_pattern(filter),
            &FieldTable::new(),
            self.entry.id,
        );
        if let Err(e) = bound {
            tracing::warn!(error = %e, "shared subscription not bound");
            return false;
        }
        let id = self.broker.next_id();
        let consumer = Consumer {
            id,
            tag: format!("mqtt-{}", self.attached.key.client_id),
            no_ack: true,
            exclusive: false,
            owner: self.entry.id,
            sink: self.link.clone(),
        };
        match queue.add_consumer(consumer) {
            Ok(effects) => self.vhost().apply(&queue, effects),
            Err(_) => return false,
        }
        self.shared.insert(key.to_owned(), (queue, id));
        true
    }

    /// Leaves a shared group; the last member out deletes the group's queue, so nothing
    /// piles up for a group nobody consumes.
    pub(super) fn leave_shared(&mut self, key: &str) {
        if let Some((queue, id)) = self.shared.remove(key) {
            self.vhost().remove_consumer(&queue, id);
            if queue.consumer_count() == 0 {
                self.vhost().remove_queue(&queue);
            }
        }
    }

    /// The SUBACK code for a filter the broker refuses, if it does.
    fn refuse_filter(&self, filter: &str) -> Option<u8> {
        let v5 = self.protocol.is_v5();
        let invalid = if v5 {
            reason::TOPIC_FILTER_INVALID
        } else {
            reason::V3_SUBACK_FAILURE
        };
        let inner = match split_shared(filter) {
            Ok(Some((_, inner))) => inner,
            Err(_) => return Some(invalid),
            Ok(None) => filter,
        };
        if check_filter(inner).is_err() || !self.check_topic_limits(inner) {
            return Some(invalid);
        }
        None
    }

    pub(super) fn on_subscribe(&mut self, sub: Subscribe) -> Result<(), Violation> {
        if sub.properties.subscription_identifiers.len() > 1 {
            return Err(Violation::protocol("more than one subscription identifier"));
        }
        let identifier = sub.properties.subscription_identifiers.first().copied();
        let exchange = self.broker.config.mqtt.exchange.clone();
        let now = self.broker.timer.now_system();
        let mut codes = Vec::with_capacity(sub.subscriptions.len());
        let mut retained = Vec::new();
        let named: Vec<String> = sub.subscriptions.iter().map(|s| s.filter.clone()).collect();
        for s in sub.subscriptions {
            if let Some(code) = self.refuse_filter(&s.filter) {
                codes.push(code);
                continue;
            }
            let queue = match split_shared(&s.filter) {
                Ok(Some(_)) => shared_queue_name(&s.filter).unwrap_or_default(),
                _ => self.queue().name.clone(),
            };
            let filter = match split_shared(&s.filter) {
                Ok(Some((_, inner))) => inner,
                _ => &s.filter,
            };
            if let Err(refused) = self.permit_subscribe(&queue, filter) {
                tracing::info!(peer = %self.entry.peer, "{refused}");
                codes.push(if self.protocol.is_v5() {
                    reason::NOT_AUTHORIZED
                } else {
                    reason::V3_SUBACK_FAILURE
                });
                continue;
            }
            if is_shared(&s.filter) {
                // Retained messages are not sent for shared subscriptions (spec 4.8.2).
                let code = if self.join_shared(&s.filter) {
                    lock(&self.attached.session).subscriptions.insert(
                        s.filter.clone(),
                        SubscriptionEntry {
                            options: s.options,
                            identifier,
                        },
                    );
                    s.options.qos as u8
                } else if self.protocol.is_v5() {
                    reason::UNSPECIFIED_ERROR
                } else {
                    reason::V3_SUBACK_FAILURE
                };
                codes.push(code);
                continue;
            }
            let pattern = filter_to_pattern(&s.filter);
            if let Err(e) = self.vhost().bind_queue(
                &self.queue().name,
                &exchange,
                &pattern,
                &FieldTable::new(),
                self.entry.id,
            ) {
                tracing::warn!(error = %e, filter = %s.filter, "MQTT subscription not bound");
                codes.push(if self.protocol.is_v5() {
                    reason::UNSPECIFIED_ERROR
                } else {
                    reason::V3_SUBACK_FAILURE
                });
                continue;
            }
            let existed = lock(&self.attached.session)
                .subscriptions
                .insert(
                    s.filter.clone(),
                    SubscriptionEntry {
                        options: s.options,
                        identifier,
                    },
                )
                .is_some();
            let rh = s.options.retain_handling;
            if rh == 0 || (rh == 1 && !existed) {
                let found = self
                    .state
                    .retained()
                    .matching(&self.vhost().name, &s.filter, now);
                for mut m in found {
                    m.qos = m.qos.min(s.options.qos);
                    m.properties.subscription_identifiers = identifier.into_iter().collect();
                    retained.push(m);
                }
            }
            codes.push(s.options.qos as u8);
        }
        // A persistent session's SUBACK waits for the records of the filters it names.
        let lsn = persist::write_subscriptions(
            &self.broker,
            &mut lock(&self.attached.session),
            named.iter().map(String::as_str),
        );
        self.send_when_synced(
            lsn,
            Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                properties: Properties::default(),
                codes,
            }),
        );
        if !retained.is_empty() {
            let mut s = lock(&self.attached.session);
            for m in retained {
                self.link.offer(&mut s, m);
            }
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let exchange = self.broker.config.mqtt.exchange.clone();
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            // Removed from the session first: queued messages for it are no longer delivered.
            let removed = lock(&self.attached.session)
                .subscriptions
                .remove(f)
                .is_some();
            if removed && is_shared(f) {
                self.leave_shared(f);
            } else if removed {
                let _ = self.vhost().unbind_queue(
                    &self.queue().name,
                    &exchange,
                    &filter_to_pattern(f),
                    &FieldTable::new(),
                    self.entry.id,
                );
            }
            codes.push(if removed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        lock(&self.attached.session).drop_unmatched_pending();
        self.settle_dropped();
        let lsn = persist::write_subscriptions(
            &self.broker,
            &mut lock(&self.attached.session),
            u.filters.iter().map(String::as_str),
        );
        self.send_when_synced(
            lsn,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                codes,
            }),
        );
    }
}
