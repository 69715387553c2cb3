//! MQTT operations checked against access control as RabbitMQ's MQTT plugin checks them: a
//! publish needs `write` on the MQTT exchange and topic `write` on the topic in its AMQP form
//! (`a/b` → `a.b`); a subscription needs `configure`, `write` and `read` on its queue, `read`
//! on the exchange and topic `read` on the filter in its AMQP form (`a/+/#` → `a.*.#`); a
//! will needs what its publish will need, checked at CONNECT.

use super::connection::Connection;
use super::convert::{filter_to_pattern, topic_to_key};
use crate::core::access::permissions::{Perm, ResourceKind, TopicVars};
use crate::core::access::Refused;
use crate::core::Broker;

/// Whether `user` may publish to `topic` in `vhost` as client `client_id`.
pub(super) fn permit_publish(
    broker: &Broker,
    vhost: &str,
    user: &str,
    client_id: &str,
    topic: &str,
) -> Result<(), Refused> {
    let exchange = &broker.config.mqtt.exchange;
    broker
        .access
        .check(vhost, user, Perm::Write, ResourceKind::Exchange, exchange)?;
    let vars = TopicVars {
        username: user,
        vhost,
        client_id,
    };
    broker
        .access
        .check_topic(Perm::Write, exchange, &topic_to_key(topic), vars)
}

impl Connection {
    fn topic_vars(&self) -> TopicVars<'_> {
        TopicVars {
            username: &self.attached.user,
            vhost: &self.attached.vhost.name,
            client_id: &self.attached.key.client_id,
        }
    }

    /// Checks a client's publish, reusing the exchange verdict while nothing changed.
    pub(super) fn permit_publish(&mut self, topic: &str) -> Result<(), Refused> {
        let access = &self.broker.access;
        let exchange = &self.broker.config.mqtt.exchange;
        let restricted = self.publish_verdicts.check(
            access,
            &self.attached.vhost.name,
            &self.attached.user,
            exchange,
        )?;
        if !restricted {
            return Ok(());
        }
        access.check_topic(
            Perm::Write,
            exchange,
            &topic_to_key(topic),
            self.topic_vars(),
        )
    }

    /// Checks a subscription to `filter` through `queue`.
    pub(super) fn permit_subscribe(&self, queue: &str, filter: &str) -> Result<(), Refused> {
        let access = &self.broker.access;
        let (vhost, user) = (&self.attached.vhost.name, &self.attached.user);
        let exchange = &self.broker.config.mqtt.exchange;
        for perm in [Perm::Configure, Perm::Write, Perm::Read] {
            access.check(vhost, user, perm, ResourceKind::Queue, queue)?;
        }
        access.check(vhost, user, Perm::Read, ResourceKind::Exchange, exchange)?;
        access.check_topic(
            Perm::Read,
            exchange,
            &filter_to_pattern(filter),
            self.topic_vars(),
        )
    }
}
