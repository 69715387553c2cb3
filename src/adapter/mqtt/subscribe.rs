//! SUBSCRIBE and UNSUBSCRIBE: filter checks, bindings of the session queue, shared
//! subscription groups, and retained messages sent on subscribe.

use super::connection::Connection;
use super::convert::filter_to_pattern;
use super::discard::SLICE;
use super::error::Violation;
use super::persist;
use super::registry::lock;
use super::session::{is_shared, shared_queue_name, OutboundMessage, SubscriptionEntry};
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
        // Auto-delete: the group's queue goes with its last member, on whichever node.
        let spec = QueueSpec {
            name,
            auto_delete: true,
            ..Default::default()
        };
        let replicated = if self.broker.cluster.get().is_some() {
            match super::replica::shared_group_joined(&self.broker, &vhost, &spec, filter) {
                Ok(q) => q,
                Err(e) => {
                    tracing::info!(error = %e, "shared subscription not confirmed by the cluster");
                    return false;
                }
            }
        } else {
            None
        };
        let queue = match replicated.or_else(|| vhost.queue(&spec.name)) {
            Some(q) => q,
            None => match vhost.declare_queue(spec, false, self.entry.id) {
                Ok(d) => d.queue,
                Err(e) => {
                    tracing::warn!(error = %e, "shared subscription queue not declared");
                    return false;
                }
            },
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

    /// Leaves a shared group; the last member out, on any node, has the group's (auto-delete)
    /// queue deleted, so nothing piles up for a group nobody consumes.
    pub(super) fn leave_shared(&mut self, key: &str) {
        if let Some((queue, id)) = self.shared.remove(key) {
            self.vhost().remove_consumer(&queue, id);
            self.vhost().consumer_gone(&queue);
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

    /// Takes a SUBSCRIBE on, to be handled a slice at a time (see
    /// [`continue_unfinished`](Self::continue_unfinished)).
    pub(super) fn on_subscribe(&mut self, sub: Subscribe) -> Result<(), Violation> {
        if sub.properties.subscription_identifiers.len() > 1 {
            return Err(Violation::protocol("more than one subscription identifier"));
        }
        let held = sub
            .subscriptions
            .iter()
            .map(|s| held_bytes(&s.filter))
            .sum();
        self.unfinished = Some(Box::new(Unfinished::Subscribe(SubscribeWork {
            packet_id: sub.packet_id,
            identifier: sub.properties.subscription_identifiers.first().copied(),
            codes: Vec::with_capacity(sub.subscriptions.len()),
            left: sub.subscriptions.into_iter(),
            retained: Vec::new(),
            lsn: 0,
            held,
        })));
        Ok(())
    }

    /// Takes an UNSUBSCRIBE on, to be handled a slice at a time (see
    /// [`continue_unfinished`](Self::continue_unfinished)).
    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let held = u.filters.iter().map(|f| held_bytes(f)).sum();
        self.unfinished = Some(Box::new(Unfinished::Unsubscribe(UnsubscribeWork {
            packet_id: u.packet_id,
            codes: Vec::with_capacity(u.filters.len()),
            left: u.filters.into_iter(),
            lsn: 0,
            held,
        })));
    }

    /// Handles the next [`SLICE`] filters of the SUBSCRIBE or UNSUBSCRIBE under way, and
    /// answers it once none is left; true when nothing is left under way. One packet may name
    /// about a million filters (up to `mqtt.max_packet_size`): handled in one go they kept a
    /// runtime worker from every other connection for seconds, so the connection driver gives
    /// the runtime back between slices (see `unfinished` in the driver's `Session`) and the
    /// packets behind it wait their turn.
    pub(super) fn continue_unfinished(&mut self) -> bool {
        let Some(mut work) = self.unfinished.take() else {
            return true;
        };
        let done = match &mut *work {
            Unfinished::Subscribe(w) => self.subscribe_slice(w),
            Unfinished::Unsubscribe(w) => self.unsubscribe_slice(w),
        };
        if !done {
            self.unfinished = Some(work);
            return false;
        }
        match *work {
            Unfinished::Subscribe(w) => self.answer_subscribe(w),
            Unfinished::Unsubscribe(w) => self.answer_unsubscribe(w),
        }
        true
    }

    /// Bytes of the SUBSCRIBE or UNSUBSCRIBE under way that are still to be handled (the
    /// decoded filters left), charged with the read buffer as unfinished input.
    pub(super) fn unfinished_bytes(&self) -> usize {
        self.unfinished.as_ref().map_or(0, |w| match &**w {
            Unfinished::Subscribe(w) => w.held,
            Unfinished::Unsubscribe(w) => w.held,
        })
    }

    /// The next slice of a SUBSCRIBE; true when it named no more.
    fn subscribe_slice(&mut self, w: &mut SubscribeWork) -> bool {
        let exchange = self.broker.config.mqtt.exchange.clone();
        let now = self.broker.timer.now_system();
        let mut named = Vec::with_capacity(SLICE.min(w.left.len()));
        let (first, retained_before) = (w.codes.len(), w.retained.len());
        for s in w.left.by_ref().take(SLICE) {
            w.held = w.held.saturating_sub(held_bytes(&s.filter));
            named.push(s.filter.clone());
            let code = self.subscribe_one(s, w.identifier, &exchange, now, &mut w.retained);
            w.codes.push(code);
        }
        if !self.replicate_subscriptions(&named, &w.codes[first..], true) {
            // Not on every node: refused as a whole (a minority), undone here.
            let failure = if self.protocol.is_v5() {
                reason::UNSPECIFIED_ERROR
            } else {
                reason::V3_SUBACK_FAILURE
            };
            for (filter, code) in named.iter().zip(&mut w.codes[first..]) {
                if *code >= 0x80 {
                    continue;
                }
                *code = failure;
                lock(&self.attached.session).subscriptions.remove(filter);
                if is_shared(filter) {
                    self.leave_shared(filter);
                } else {
                    let _ = self.vhost().unbind_queue(
                        &self.queue().name,
                        &exchange,
                        &filter_to_pattern(filter),
                        &FieldTable::new(),
                        self.entry.id,
                    );
                }
            }
            w.retained.truncate(retained_before);
        }
        // A persistent session's SUBACK waits for the records of the filters it names.
        let mut s = lock(&self.attached.session);
        w.lsn = w.lsn.max(persist::write_subscriptions(
            &self.broker,
            &mut s,
            named.iter().map(String::as_str),
        ));
        s.subscriptions.charge_to(&self.broker.memory);
        w.left.len() == 0
    }

    /// One filter of a SUBSCRIBE: its SUBACK code.
    fn subscribe_one(
        &mut self,
        s: Subscription,
        identifier: Option<u32>,
        exchange: &str,
        now: std::time::SystemTime,
        retained: &mut Vec<OutboundMessage>,
    ) -> u8 {
        if let Some(code) = self.refuse_filter(&s.filter) {
            return code;
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
            return if self.protocol.is_v5() {
                super::error::not_authorized(self.broker.config.mqtt.refusal_reason)
            } else {
                reason::V3_SUBACK_FAILURE
            };
        }
        if is_shared(&s.filter) {
            // Retained messages are not sent for shared subscriptions (spec 4.8.2).
            return if self.join_shared(&s.filter) {
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
        }
        let pattern = filter_to_pattern(&s.filter);
        if let Err(e) = self.vhost().bind_queue(
            &self.queue().name,
            exchange,
            &pattern,
            &FieldTable::new(),
            self.entry.id,
        ) {
            tracing::warn!(error = %e, filter = %s.filter, "MQTT subscription not bound");
            return if self.protocol.is_v5() {
                reason::UNSPECIFIED_ERROR
            } else {
                reason::V3_SUBACK_FAILURE
            };
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
                m.identifiers = identifier.into_iter().collect();
                retained.push(m);
            }
        }
        s.options.qos as u8
    }

    /// Clustered, the subscriptions (`subscribe`) or their removal, for the `filters` whose
    /// `codes` say they were made here, committed on every node before the SUBACK or
    /// UNSUBACK: the bindings of the session's queue, and a persistent session's records.
    /// False when the cluster did not confirm them.
    fn replicate_subscriptions(&self, filters: &[String], codes: &[u8], subscribe: bool) -> bool {
        if self.broker.cluster.get().is_none() {
            return true;
        }
        let changes: Vec<_> = {
            let s = lock(&self.attached.session);
            filters
                .iter()
                .zip(codes)
                .filter(|(_, code)| {
                    if subscribe {
                        **code < 0x80
                    } else {
                        **code == reason::SUCCESS
                    }
                })
                .flat_map(|(f, _)| {
                    let entry = if subscribe {
                        s.subscriptions.get(f)
                    } else {
                        None
                    };
                    super::replica::subscription_changes(&self.broker, self.vhost(), &s, f, entry)
                })
                .collect()
        };
        if changes.is_empty() {
            return true;
        }
        match crate::cluster::definitions::commit_all_blocking(&self.broker, changes) {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(client = %self.attached.key.client_id, error = %e, "MQTT subscriptions not confirmed by the cluster");
                false
            }
        }
    }

    fn answer_subscribe(&mut self, w: SubscribeWork) {
        self.send_when_synced(
            w.lsn,
            Packet::SubAck(SubAck {
                packet_id: w.packet_id,
                properties: Properties::default(),
                codes: w.codes,
            }),
        );
        if !w.retained.is_empty() {
            let mut s = lock(&self.attached.session);
            for m in w.retained {
                self.link.offer(&mut s, m);
            }
        }
    }

    /// The next slice of an UNSUBSCRIBE; true when it named no more.
    fn unsubscribe_slice(&mut self, w: &mut UnsubscribeWork) -> bool {
        let exchange = self.broker.config.mqtt.exchange.clone();
        let mut named = Vec::with_capacity(SLICE.min(w.left.len()));
        for f in w.left.by_ref().take(SLICE) {
            w.held = w.held.saturating_sub(held_bytes(&f));
            // Removed from the session first: queued messages for it are no longer delivered.
            let removed = lock(&self.attached.session)
                .subscriptions
                .remove(&f)
                .is_some();
            if removed && is_shared(&f) {
                self.leave_shared(&f);
            } else if removed {
                let _ = self.vhost().unbind_queue(
                    &self.queue().name,
                    &exchange,
                    &filter_to_pattern(&f),
                    &FieldTable::new(),
                    self.entry.id,
                );
            }
            w.codes.push(if removed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
            named.push(f);
        }
        let first = w.codes.len() - named.len();
        if !self.replicate_subscriptions(&named, &w.codes[first..], false) {
            tracing::warn!(client = %self.attached.key.client_id, "UNSUBSCRIBE not confirmed by the cluster: other nodes keep the subscriptions");
        }
        w.lsn = w.lsn.max(persist::write_subscriptions(
            &self.broker,
            &mut lock(&self.attached.session),
            named.iter().map(String::as_str),
        ));
        w.left.len() == 0
    }

    fn answer_unsubscribe(&mut self, w: UnsubscribeWork) {
        lock(&self.attached.session).drop_unmatched_pending();
        self.settle_dropped();
        self.send_when_synced(
            w.lsn,
            Packet::UnsubAck(UnsubAck {
                packet_id: w.packet_id,
                properties: Properties::default(),
                codes: w.codes,
            }),
        );
    }
}

/// A SUBSCRIBE or UNSUBSCRIBE handled part way (see [`Connection::continue_unfinished`]).
pub(super) enum Unfinished {
    Subscribe(SubscribeWork),
    Unsubscribe(UnsubscribeWork),
}

pub(super) struct SubscribeWork {
    packet_id: u16,
    identifier: Option<u32>,
    left: std::vec::IntoIter<Subscription>,
    /// SUBACK codes of the filters handled, in the packet's order.
    codes: Vec<u8>,
    /// Retained messages for the filters handled, sent after the SUBACK.
    retained: Vec<OutboundMessage>,
    /// The records the SUBACK waits for.
    lsn: u64,
    /// See [`Connection::unfinished_bytes`].
    held: usize,
}

pub(super) struct UnsubscribeWork {
    packet_id: u16,
    left: std::vec::IntoIter<String>,
    codes: Vec<u8>,
    lsn: u64,
    held: usize,
}

/// Bytes a decoded filter waiting in a packet under way holds.
fn held_bytes(filter: &str) -> usize {
    std::mem::size_of::<Subscription>() + filter.len()
}
