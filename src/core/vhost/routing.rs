//! The one ingress into the core, and routing. A publish from any protocol (and from the
//! broker itself: dead letters, delayed messages now due, MQTT sessions restored) goes in
//! through [`VHost::publish`] and one [`PublishOutcome`] comes out; the adapters only translate
//! their frames into a [`Publish`] and the outcome into their replies (basic.return and
//! confirms, PUBACK/PUBREC reason codes, STOMP receipts and ERRORs).

use super::*;

/// Where a publish goes.
#[derive(Debug, Clone, Copy)]
pub enum PublishTo<'a> {
    /// Through an exchange's bindings; a delayed exchange holds a message that asks for a
    /// delay instead.
    Exchange(&'a Arc<Exchange>),
    /// Into one queue, routed by nothing: a message put back where it was (an MQTT session's
    /// snapshot imported) or the aliveness test's own.
    Queue(&'a Arc<Queue>),
}

/// One publish into the core.
#[derive(Debug)]
pub struct Publish<'a> {
    pub to: PublishTo<'a>,
    /// Shared by every queue it reaches.
    pub message: &'a Arc<Message>,
    /// The publisher can be held back by flow control (an MQTT QoS 1/2 publisher): only then
    /// is [`PublishOutcome::congested`] worked out.
    pub holdable: bool,
}

/// What a publish did.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// The queues it was routed to now (a queue that refused it included): 0 is unroutable,
    /// which an AMQP `mandatory` publish is returned for and MQTT 5 acknowledges with 0x10.
    pub queues: usize,
    /// A delayed exchange holds it, to route it when due (`queues` is 0).
    pub held: bool,
    /// The log sequence number to wait for before acknowledging (0: nothing was written).
    pub lsn: u64,
    /// The full queues that refused it (`x-overflow` `reject-publish`): an AMQP confirm is a
    /// nack, an MQTT 5 acknowledgement says quota exceeded, a STOMP receipt becomes an ERROR.
    /// Empty (allocating nothing) unless a queue refused.
    pub refused_by: Vec<String>,
    /// A queue it reached whose backlog is now over the vhost's flow bound
    /// ([`VHost::set_flow_backlog`]): a publisher that can be held back waits for it to drain
    /// ([`Queue::hold_publisher`]).
    pub congested: Option<Arc<Queue>>,
    /// Quorum queues it was handed to: an acknowledgement also waits until each is committed
    /// (empty, allocating nothing, for other queues).
    pub tickets: Vec<crate::core::queue::Ticket>,
    /// The flow bound `congested` is worked out against for this publish (0: it is not).
    flow_bound: usize,
}

impl PublishOutcome {
    /// Whether a queue refused the message.
    pub fn refused(&self) -> bool {
        !self.refused_by.is_empty()
    }
}

impl VHost {
    /// Sets the backlog past which a publish names the queue as congested (0: never).
    pub fn set_flow_backlog(&self, bound: usize) {
        self.flow_backlog.store(bound, Ordering::Relaxed);
    }

    /// The ingress: routes `publish` to its queues (or holds it for a delay) and enqueues it.
    /// `queues` is the caller's buffer, kept across publishes and left empty, for the queues
    /// past the first: a publish allocates nothing here when it reaches one queue (whatever
    /// the buffer's capacity), nor when the buffer is kept, unless exchanges are bound to
    /// exchanges. Routing checks are the
    /// caller's to make first ([`VHost::check_routing_key`], permissions, `internal`), in its
    /// protocol's terms.
    pub fn publish(&self, publish: Publish<'_>, queues: &mut Vec<Arc<Queue>>) -> PublishOutcome {
        let Publish {
            to,
            message,
            holdable,
        } = publish;
        let mut outcome = PublishOutcome {
            flow_bound: if holdable {
                self.flow_backlog.load(Ordering::Relaxed)
            } else {
                0
            },
            ..PublishOutcome::default()
        };
        match to {
            PublishTo::Queue(q) => {
                outcome.queues = 1;
                self.enqueue(q, message, &mut outcome);
            }
            PublishTo::Exchange(exchange) => {
                // A delayed message is accepted now (and acknowledged once stored); as with
                // RabbitMQ's delayed-message plugin, `mandatory` cannot apply to a routing
                // that happens later.
                if let Some(lsn) = self.hold_if_delayed(exchange, message) {
                    outcome.held = true;
                    outcome.lsn = lsn;
                    return outcome;
                }
                self.route_and_enqueue(exchange, message, queues, |_| false, &mut outcome);
            }
        }
        outcome
    }

    /// [`VHost::publish`] through `exchange` for a message the broker makes, leaving out the
    /// queues `skip` names (a dead letter's cycles).
    pub(super) fn publish_skipping(
        &self,
        exchange: &Arc<Exchange>,
        message: &Arc<Message>,
        queues: &mut Vec<Arc<Queue>>,
        skip: impl Fn(&Queue) -> bool,
    ) {
        if self.hold_if_delayed(exchange, message).is_some() {
            return;
        }
        self.route_and_enqueue(
            exchange,
            message,
            queues,
            skip,
            &mut PublishOutcome::default(),
        );
    }

    /// Applies a delayed exchange's effect: `held` is due, and is routed through exchange
    /// `name` (gone: dropped) without its due-time header, delayed or not.
    pub(crate) fn release_held(&self, name: &str, held: &Message) {
        let Some(exchange) = self.exchange(name) else {
            return;
        };
        let message = Arc::new(delayed::without_due_header(
            held,
            self.charge(held.body.len()),
        ));
        let mut outcome = PublishOutcome::default();
        self.route_and_enqueue(
            &exchange,
            &message,
            &mut Vec::new(),
            |_| false,
            &mut outcome,
        );
    }

    /// Holds `msg` if `exchange` is a delayed exchange and the message asks for a delay;
    /// returns the log sequence number a publisher confirm must wait for (0: nothing was
    /// written). None: route it now.
    fn hold_if_delayed(&self, exchange: &Exchange, msg: &Message) -> Option<u64> {
        let hold = exchange.delayed.as_ref()?;
        let delay = delayed::delay_of(msg)?;
        Some(hold.hold(msg, delay, self.charge(msg.body.len())))
    }

    /// Routes `message` through `exchange` now and enqueues it on each queue reached that
    /// `skip` does not name, applying what the queues return.
    fn route_and_enqueue(
        &self,
        exchange: &Arc<Exchange>,
        message: &Arc<Message>,
        queues: &mut Vec<Arc<Queue>>,
        skip: impl Fn(&Queue) -> bool,
        outcome: &mut PublishOutcome,
    ) {
        queues.clear();
        let first = self.route_into(exchange, message, queues);
        outcome.queues += usize::from(first.is_some()) + queues.len();
        for q in first.into_iter().chain(queues.drain(..)) {
            if !skip(&q) {
                self.enqueue(&q, message, outcome);
            }
        }
    }

    /// Enqueues `message` on `q`, noting the outcome and applying the queue's effects.
    fn enqueue(&self, q: &Arc<Queue>, message: &Arc<Message>, outcome: &mut PublishOutcome) {
        // A queue another node holds: the message goes there (the one branch an unclustered
        // publish pays).
        let enqueued = match q.remote() {
            None => q.enqueue(message.clone()),
            Some(home) => home.enqueue(q, message),
        };
        outcome.lsn = outcome.lsn.max(enqueued.lsn);
        if outcome.flow_bound > 0
            && enqueued.backlog > outcome.flow_bound
            && outcome.congested.is_none()
        {
            outcome.congested = Some(q.clone());
        }
        // As RabbitMQ: one refusing queue makes the publish refused.
        if enqueued.refused {
            outcome.refused_by.push(q.name.clone());
        }
        if let Some(t) = enqueued.ticket {
            outcome.tickets.push(t);
        }
        self.apply(q, enqueued.effects);
    }

    /// The queues `msg` reaches from `exchange` now, each once, in the order first reached,
    /// following exchange-to-exchange bindings (each exchange visited once, so binding cycles
    /// terminate): the first returned, the others appended to `queues` (empty). Counted in
    /// the exchange's statistics.
    fn route_into(
        &self,
        exchange: &Arc<Exchange>,
        msg: &Message,
        queues: &mut Vec<Arc<Queue>>,
    ) -> Option<Arc<Queue>> {
        let mut reached = ReachedQueues::default();
        self.route_through(exchange, msg, &mut reached, queues);
        exchange
            .stats
            .routed(usize::from(reached.first.is_some()) + queues.len());
        reached.first
    }

    /// Routing proper for [`VHost::route_into`], which counts what it did.
    fn route_through(
        &self,
        exchange: &Arc<Exchange>,
        msg: &Message,
        reached: &mut ReachedQueues,
        queues: &mut Vec<Arc<Queue>>,
    ) {
        if exchange.name.is_empty() {
            reached.first = self.queue(&msg.routing_key);
            return;
        }
        // Exchanges reached through exchange-to-exchange bindings, still to route through, and
        // those already routed through (bindings may form cycles).
        let mut pending: Vec<Arc<Exchange>> = Vec::new();
        let mut visited: Vec<*const Exchange> = Vec::new();
        let mut through: Option<Arc<Exchange>> = None;
        let max_words = self.topic_max_words.load(Ordering::Relaxed);
        let too_long_for_topic = topic::more_words_than(&msg.routing_key, max_words);
        loop {
            let source = through.as_ref().unwrap_or(exchange);
            if too_long_for_topic && source.kind == ExchangeKind::Topic {
                match pending.pop() {
                    Some(next) => through = Some(next),
                    None => return,
                }
                continue;
            }
            source.for_each_destination(msg, |d| match d {
                Destination::Queue(q) => reached.push_new(queues, q),
                Destination::Exchange(e) => {
                    let at = Arc::as_ptr(e);
                    if at != Arc::as_ptr(exchange) && !visited.contains(&at) {
                        visited.push(at);
                        pending.push(e.clone());
                    }
                }
            });
            match pending.pop() {
                Some(next) => through = Some(next),
                None => return,
            }
        }
    }
}

/// Which queues one publish has reached, so that each is added once: the first kept here
/// (the usual publish reaches one, and then needs no list), the others in the caller's list.
/// A scan of the list is cheapest for the usual handful; past that a set keeps fan-out to N
/// queues linear in N (the scan made a publish to 100,000 queues take 2.6 s).
#[derive(Default)]
struct ReachedQueues {
    first: Option<Arc<Queue>>,
    set: Option<std::collections::HashSet<*const Queue, crate::core::hash::FastHasher>>,
}

impl ReachedQueues {
    const SCAN_UP_TO: usize = 16;

    /// Keeps `q` as the first, or appends it to `queues`, unless it was reached already.
    fn push_new(&mut self, queues: &mut Vec<Arc<Queue>>, q: &Arc<Queue>) {
        let Some(first) = &self.first else {
            self.first = Some(q.clone());
            return;
        };
        if Arc::ptr_eq(first, q) {
            return;
        }
        let new = match &mut self.set {
            Some(set) => set.insert(Arc::as_ptr(q)),
            None if queues.len() < Self::SCAN_UP_TO => !queues.iter().any(|x| Arc::ptr_eq(x, q)),
            None => {
                let seen = queues.iter().map(Arc::as_ptr);
                let set = self.set.insert(seen.chain([Arc::as_ptr(first)]).collect());
                set.insert(Arc::as_ptr(q))
            }
        };
        if new {
            queues.push(q.clone());
        }
    }
}
