//! STOMP frames checked against access control where RabbitMQ's STOMP plugin checks them:
//! a `/queue/` destination is declared (`configure` on the queue); SEND needs `write` on its
//! exchange (the default exchange for queues, `amq.topic` for `/topic/`) and topic `write` on
//! the routing key of a topic exchange; SUBSCRIBE needs `read` on the queue it consumes, and a
//! `/topic/` or `/exchange/` subscription also `configure` and `write` on its queue, `read` on
//! the exchange and topic `read` on the binding key. A refusal is a STOMP ERROR.

use super::error::StompResult;
use super::session::Session;
use crate::core::access::permissions::{Perm, ResourceKind, TopicVars};
use crate::core::access::Refused;
use crate::core::{CoreError, ExchangeKind};

fn refused(r: Refused) -> super::error::StompError {
    CoreError::access_refused(r.0).into()
}

impl Session {
    fn topic_vars(&self) -> TopicVars<'_> {
        TopicVars {
            username: &self.ctx.user,
            vhost: &self.ctx.vhost.name,
            client_id: "",
        }
    }

    /// Checks `perm` on a queue or exchange in the session's vhost.
    pub(super) fn permit(&self, perm: Perm, kind: ResourceKind, name: &str) -> StompResult<()> {
        self.ctx
            .broker
            .access
            .check(&self.ctx.vhost.name, &self.ctx.user, perm, kind, name)
            .map_err(refused)
    }

    /// Checks a topic permission on `key`, for topic exchanges only.
    pub(super) fn permit_topic(&self, perm: Perm, exchange: &str, key: &str) -> StompResult<()> {
        let is_topic = self
            .ctx
            .vhost
            .exchange(exchange)
            .is_some_and(|e| e.kind == ExchangeKind::Topic);
        if !is_topic {
            return Ok(());
        }
        self.ctx
            .broker
            .access
            .check_topic(perm, exchange, key, self.topic_vars())
            .map_err(refused)
    }

    /// A SEND's permissions: `write` on the exchange (cached per exchange until access
    /// control changes), then topic `write` on the routing key where topic permissions apply.
    pub(super) fn permit_send(&mut self, exchange: &str, routing_key: &str) -> StompResult<()> {
        let restricted = self
            .publish_verdicts
            .check(
                &self.ctx.broker.access,
                &self.ctx.vhost.name,
                &self.ctx.user,
                exchange,
            )
            .map_err(refused)?;
        if restricted {
            self.permit_topic(Perm::Write, exchange, routing_key)?;
        }
        Ok(())
    }

    /// A `/topic/` or `/exchange/` subscription's queue and binding.
    pub(super) fn permit_subscription(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> StompResult<()> {
        for perm in [Perm::Configure, Perm::Write, Perm::Read] {
            self.permit(perm, ResourceKind::Queue, queue)?;
        }
        self.permit(Perm::Read, ResourceKind::Exchange, exchange)?;
        self.permit_topic(Perm::Read, exchange, key)
    }
}
