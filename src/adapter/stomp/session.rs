//! A connected STOMP session: frame dispatch, SEND, ACK/NACK, transactions, receipts and the
//! end of the session. Owned by the connection task; SUBSCRIBE/UNSUBSCRIBE are in
//! [`super::subscribe`], the delivery side shared with queues in [`super::subscription`].

use super::destination::Destination;
use super::error::{StompError, StompResult};
use super::headers::properties_from_send;
use super::subscription::{SessionDeliveries, StompSubscription};
use crate::adapter::outbox::Outbox;
use crate::adapter::settle::{self, Settle};
use crate::core::queue::ConnectionId;
use crate::core::queue::{all_decided, Ticket};
use crate::core::{Broker, CoreError, Exchange, Message, Publish, PublishTo, Queue, VHost};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use switchboard_amqp::FieldTable;
use switchboard_stomp::{encode, Command, Frame, Version};

/// What the connection does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// DISCONNECT: its receipt is queued; flush and close.
    Disconnect,
}

/// An operation held back until COMMIT.
#[derive(Debug)]
enum TxOp {
    Send {
        exchange: Arc<Exchange>,
        message: Arc<Message>,
    },
    Settle {
        delivery: u64,
        how: Settle,
    },
}

#[derive(Debug)]
pub(super) struct Subscription {
    pub(super) sink: Arc<StompSubscription>,
    pub(super) queue: Arc<Queue>,
    /// A durable `/topic` or `/exchange` subscription: its queue outlives the connection.
    pub(super) durable: bool,
}

/// Everything a session needs from its connection.
#[derive(Debug)]
pub struct SessionCtx {
    pub broker: Arc<Broker>,
    pub vhost: Arc<VHost>,
    pub conn_id: ConnectionId,
    pub user: String,
    /// May send with another user's `user-id` (the `impersonator` tag).
    pub impersonator: bool,
    pub outbox: Arc<Outbox>,
    pub version: Version,
    /// The connection's message counters (`message_stats`).
    pub counters: Arc<crate::core::stats::ConnectionCounters>,
}

#[derive(Debug)]
pub struct Session {
    pub(super) ctx: SessionCtx,
    pub(super) deliveries: Arc<SessionDeliveries>,
    pub(super) subscriptions: HashMap<String, Subscription>,
    transactions: HashMap<String, Vec<TxOp>>,
    /// `/temp-queue/<name>` → the private queue behind it.
    pub(super) temp_queues: HashMap<String, Arc<Queue>>,
    /// A SEND was handled since the connection last looked (memory alarm).
    pub published: bool,
    /// RECEIPTs waiting for the message log to be durable up to an LSN, in the order asked
    /// (a receipt for a later frame never overtakes one for an earlier SEND).
    /// Each with the quorum-queue commits it waits for as well.
    receipts: VecDeque<(u64, Vec<Ticket>, String)>,
    /// The quorum-queue commits of the SENDs routed in the frame being handled.
    routed_tickets: Vec<Ticket>,
    /// SEND permission verdicts per exchange (see [`super::permit`]).
    pub(super) publish_verdicts: crate::core::access::PublishVerdicts,
    last_exchange: crate::core::vhost::LastExchange,
}

impl Session {
    pub fn new(ctx: SessionCtx, session_id: String) -> Self {
        let deliveries = SessionDeliveries::new(ctx.outbox.clone(), ctx.version, session_id);
        Session {
            ctx,
            deliveries,
            subscriptions: HashMap::new(),
            transactions: HashMap::new(),
            temp_queues: HashMap::new(),
            published: false,
            receipts: VecDeque::new(),
            routed_tickets: Vec::new(),
            last_exchange: Default::default(),
            publish_verdicts: Default::default(),
        }
    }

    pub fn version(&self) -> Version {
        self.ctx.version
    }

    /// Handles one frame; the RECEIPT it asks for is sent once it is done.
    pub fn handle(&mut self, frame: Frame) -> StompResult<Next> {
        let receipt = frame.header("receipt").map(str::to_owned);
        self.routed_tickets.clear();
        match frame.command {
            Command::Send => {
                let lsn = self.send(frame)?;
                self.receipt_for_send(receipt.as_deref(), lsn)?;
                return Ok(Next::Continue);
            }
            Command::Subscribe | Command::Unsubscribe => {
                if frame.command == Command::Subscribe {
                    self.subscribe(&frame)?;
                } else {
                    self.unsubscribe(&frame)?;
                }
                // A durable subscription's queue and binding are on disk before its receipt.
                if let Some(r) = &receipt {
                    self.queue_receipt(r, self.ctx.vhost.definitions_lsn())?;
                }
                return Ok(Next::Continue);
            }
            Command::Ack => self.ack_or_nack(&frame, Settle::Ack)?,
            Command::Nack => {
                let how = match frame.header("requeue").map(str::trim) {
                    None | Some("true") => Settle::Requeue,
                    Some("false") => Settle::Discard,
                    Some(other) => {
                        return Err(StompError::invalid_header(
                            "requeue",
                            other,
                            "expected true or false",
                        ))
                    }
                };
                self.ack_or_nack(&frame, how)?
            }
            Command::Begin => {
                let tx = required(&frame, "transaction")?;
                if self.transactions.contains_key(tx) {
                    return Err(StompError::new(
                        "Transaction already started",
                        format!("Transaction '{tx}' was already begun on this connection."),
                    ));
                }
                self.transactions.insert(tx.to_owned(), Vec::new());
            }
            Command::Commit => {
                let ops = self.take_transaction(&frame)?;
                let lsn = self.commit(ops)?;
                // The COMMIT's receipt confirms the persistent SENDs it routed.
                if let Some(r) = &receipt {
                    self.queue_receipt(r, lsn)?;
                }
                return Ok(Next::Continue);
            }
            Command::Abort => {
                self.take_transaction(&frame)?;
            }
            Command::Disconnect => {
                if let Some(r) = &receipt {
                    self.queue_receipt(r, 0)?;
                }
                return Ok(Next::Disconnect);
            }
            Command::Connect | Command::Stomp => {
                return Err(StompError::new(
                    "Already connected",
                    "CONNECT is only valid as the first frame of a connection.",
                ))
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                return Err(StompError::new(
                    "Invalid command",
                    format!(
                        "{} is a server frame; clients may not send it.",
                        frame.command
                    ),
                ))
            }
        }
        if let Some(r) = &receipt {
            self.queue_receipt(r, 0)?;
        }
        Ok(Next::Continue)
    }

    fn send_receipt(&self, receipt: &str) {
        let frame = Frame::new(Command::Receipt).with("receipt-id", receipt);
        let version = self.ctx.version;
        self.ctx.outbox.push(|out| encode(&frame, version, out));
    }

    /// The highest LSN the message log has made durable (everything, without a store).
    fn synced(&self) -> u64 {
        self.ctx
            .broker
            .store
            .as_ref()
            .map_or(u64::MAX, |s| s.log.synced())
    }

    /// Sends a RECEIPT once the log is durable up to `lsn` (0: nothing to wait for) and every
    /// earlier receipt has gone.
    /// A quorum queue that refused the message as full makes it an error (ERROR instead of
    /// the RECEIPT), as a full classic queue does.
    fn queue_receipt(&mut self, receipt: &str, lsn: u64) -> StompResult<()> {
        let tickets = std::mem::take(&mut self.routed_tickets);
        if self.receipts.is_empty() && lsn <= self.synced() && all_decided(&tickets) {
            check_taken(&tickets)?;
            self.send_receipt(receipt);
        } else {
            self.receipts.push_back((lsn, tickets, receipt.to_owned()));
        }
        Ok(())
    }

    /// Sends the receipts whose records are now durable; true while some still wait. A
    /// receipt for a message a quorum queue refused is an error instead: the connection
    /// closes with it (the receipt id given for its ERROR's `receipt-id`).
    pub fn flush_receipts(&mut self) -> Result<bool, (StompError, String)> {
        let synced = self.synced();
        while let Some((lsn, tickets, _)) = self.receipts.front() {
            if *lsn > synced || !all_decided(tickets) {
                break;
            }
            if let Some((_, tickets, r)) = self.receipts.pop_front() {
                check_taken(&tickets).map_err(|e| (e, r.clone()))?;
                self.send_receipt(&r);
            }
        }
        Ok(!self.receipts.is_empty())
    }

    pub fn receipts_pending(&self) -> bool {
        !self.receipts.is_empty()
    }

    /// Forgets waiting receipts (the connection is closing with an ERROR).
    pub fn drop_receipts(&mut self) {
        self.receipts.clear();
    }

    /// The RECEIPT for a SEND, sent once the message is routed to its queues and, when it was
    /// written to the message log (persistent, durable queue), once that record is durable.
    fn receipt_for_send(&mut self, receipt: Option<&str>, lsn: u64) -> StompResult<()> {
        match receipt {
            Some(r) => {
                self.ctx.counters.confirmed(1);
                self.queue_receipt(r, lsn)
            }
            None => Ok(()),
        }
    }

    // ---- SEND ----

    /// Publishes a SEND (or holds it in its transaction). Returns the LSN its receipt must wait
    /// for (0 when nothing was written to the message log).
    fn send(&mut self, frame: Frame) -> StompResult<u64> {
        let dest_text = required(&frame, "destination")?;
        let dest = Destination::parse(dest_text)?;
        let Some((exchange_name, routing_key)) = dest.publish_target() else {
            return Err(StompError::new(
                "Invalid destination",
                format!("'{dest_text}' can only be used in a reply-to header."),
            ));
        };
        if let Destination::Queue(q) = &dest {
            self.ensure_queue(q, FieldTable::new())?;
        }
        let (exchange_name, routing_key) = (exchange_name.to_owned(), routing_key.to_owned());
        self.permit_send(&exchange_name, &routing_key)?;
        let exchange_name = exchange_name.as_str();
        let vhost = &self.ctx.vhost;
        let exchange = self
            .last_exchange
            .get(vhost, exchange_name)
            .ok_or_else(|| CoreError::not_found("exchange", exchange_name, &vhost.name))?;
        if exchange.internal {
            return Err(CoreError::access_refused(format!(
                "cannot publish to internal exchange '{exchange_name}' in vhost '{}'",
                vhost.name
            ))
            .into());
        }
        vhost.check_routing_key(&exchange, &routing_key)?;
        let mut properties = properties_from_send(&frame)?;
        if let Some(uid) = &properties.user_id {
            if *uid != self.ctx.user && !self.ctx.impersonator {
                return Err(CoreError::precondition(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    self.ctx.user
                ))
                .into());
            }
        }
        if let Some(name) = properties
            .reply_to
            .as_deref()
            .and_then(|r| r.strip_prefix("/temp-queue/"))
        {
            let name = name.to_owned();
            properties.reply_to = Some(self.temp_queue(&name)?.name.clone());
        }
        let (exchange_name, routing_key) = (exchange_name.to_owned(), routing_key.to_owned());
        let charge = self
            .ctx
            .broker
            .memory
            .charge(Message::charge_size(frame.body.len()));
        let message = Arc::new(Message::new(
            exchange_name,
            routing_key,
            properties,
            None,
            frame.body.clone(),
            charge,
        ));
        self.published = true;
        if let Some(tx) = frame.header("transaction") {
            self.transaction(tx)?.push(TxOp::Send { exchange, message });
            Ok(0)
        } else {
            self.route(&exchange, message)
        }
    }

    /// Routes a message to its queues: the one place where a SEND reaches the core. Returns
    /// the LSN of the log records written for it (0 when none).
    /// A queue that refuses the message because it is full (`x-overflow` `reject-publish`)
    /// makes it an error: the client gets an ERROR instead of its RECEIPT.
    fn route(&mut self, exchange: &Arc<Exchange>, message: Arc<Message>) -> StompResult<u64> {
        self.ctx.counters.published();
        // A delayed message is accepted now (its receipt waits until it is stored); it is routed
        // when due.
        let publish = Publish {
            to: PublishTo::Exchange(exchange),
            message: &message,
            holdable: false,
        };
        let outcome = self.ctx.vhost.publish(publish, &mut Vec::new());
        if outcome.refused() {
            return Err(StompError::new(
                "Message rejected",
                format!(
                    "The message was refused by full queue(s) {} (x-overflow reject-publish).",
                    outcome.refused_by.join(", ")
                ),
            ));
        }
        self.routed_tickets.extend(outcome.tickets);
        Ok(outcome.lsn)
    }

    // ---- ACK / NACK ----

    fn ack_or_nack(&mut self, frame: &Frame, how: Settle) -> StompResult<()> {
        // 1.2 names the delivery by `id` (the MESSAGE's `ack`); 1.0 and 1.1 by `message-id`.
        let (first, second) = if self.ctx.version == Version::V1_2 {
            ("id", "message-id")
        } else {
            ("message-id", "id")
        };
        let Some(id) = frame.header(first).or_else(|| frame.header(second)) else {
            return Err(StompError::missing_header(first, frame.command.as_str()));
        };
        let delivery = SessionDeliveries::parse_ack_id(id).ok_or_else(|| {
            StompError::invalid_header(first, id, "not a message id of this server")
        })?;
        match frame.header("transaction") {
            Some(tx) => self.transaction(tx)?.push(TxOp::Settle { delivery, how }),
            None => self.settle(delivery, how),
        }
        Ok(())
    }

    /// Settles what an ACK/NACK of `delivery` covers. Acking what is not (or no longer)
    /// unacknowledged is ignored, as a repeated ACK is harmless.
    fn settle(&mut self, delivery: u64, how: Settle) {
        let taken = self.deliveries.take(delivery);
        if taken.is_empty() {
            tracing::debug!(
                delivery,
                "ACK/NACK of an unknown or settled message ignored"
            );
            return;
        }
        let taken = taken.into_iter().map(|u| (u.queue, u.message_id));
        settle::apply(&self.ctx.vhost, taken, how);
        self.wake_subscriptions();
    }

    // ---- transactions ----

    fn transaction(&mut self, tx: &str) -> StompResult<&mut Vec<TxOp>> {
        self.transactions
            .get_mut(tx)
            .ok_or_else(|| unknown_transaction(tx))
    }

    fn take_transaction(&mut self, frame: &Frame) -> StompResult<Vec<TxOp>> {
        let tx = required(frame, "transaction")?;
        self.transactions
            .remove(tx)
            .ok_or_else(|| unknown_transaction(tx))
    }

    /// Applies a transaction; returns the LSN its persistent SENDs need.
    fn commit(&mut self, ops: Vec<TxOp>) -> StompResult<u64> {
        let mut lsn = 0;
        for op in ops {
            match op {
                TxOp::Send { exchange, message } => lsn = lsn.max(self.route(&exchange, message)?),
                TxOp::Settle { delivery, how } => self.settle(delivery, how),
            }
        }
        Ok(lsn)
    }

    // ---- lifecycle ----

    /// Lets the subscriptions' queues deliver again (credit or outbox room came back).
    pub fn wake_subscriptions(&mut self) {
        // A subscription whose queue was deleted stays in the map until the client
        // unsubscribes, so that its UNSUBSCRIBE is not an error.
        let mut woken: Vec<&Arc<Queue>> = Vec::with_capacity(self.subscriptions.len());
        for s in self
            .subscriptions
            .values()
            .filter(|s| !s.sink.is_cancelled())
        {
            if !woken.iter().any(|q| Arc::ptr_eq(q, &s.queue)) {
                woken.push(&s.queue);
                self.ctx.vhost.dispatch(&s.queue);
            }
        }
    }

    /// Ends the session: subscriptions go (and their auto-delete queues with them), temp
    /// queues are deleted, uncommitted transactions are dropped and unacknowledged messages
    /// return to their queues, marked redelivered.
    pub fn cleanup(&mut self) {
        self.deliveries.close();
        self.transactions.clear();
        for (_, s) in self.subscriptions.drain() {
            self.ctx.vhost.remove_consumer(&s.queue, s.sink.consumer_id);
            self.ctx.vhost.consumer_gone(&s.queue);
        }
        for (_, q) in self.temp_queues.drain() {
            self.ctx.vhost.remove_queue(&q);
        }
        settle::apply(
            &self.ctx.vhost,
            self.deliveries
                .take_all()
                .into_iter()
                .map(|u| (u.queue, u.message_id)),
            Settle::Requeue,
        );
    }
}

pub(super) fn required<'a>(frame: &'a Frame, name: &str) -> StompResult<&'a str> {
    frame
        .header(name)
        .ok_or_else(|| StompError::missing_header(name, frame.command.as_str()))
}

fn unknown_transaction(tx: &str) -> StompError {
    StompError::new(
        "Invalid transaction",
        format!("Transaction '{tx}' was not begun on this connection (or already ended)."),
    )
}

/// Refuses what a quorum queue refused among the decided `tickets` (full, `x-overflow`
/// `reject-publish`): the same error a full classic queue gives at once.
fn check_taken(tickets: &[Ticket]) -> StompResult<()> {
    if tickets.iter().any(Ticket::refused) {
        return Err(StompError::new(
            "Message rejected",
            "The message was refused by a full quorum queue (x-overflow reject-publish).",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The session driven frame by frame with no socket: frames in, the outbox's bytes out.
    use super::*;
    use crate::config::{Config, DEFAULT_CONFIG};
    use bytes::BytesMut;
    use switchboard_stomp::{Decoder, Limits};

    fn session(broker: &Arc<Broker>) -> (Session, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new());
        let ctx = SessionCtx {
            broker: broker.clone(),
            vhost: broker.vhost("/").expect("default vhost"),
            conn_id: broker.next_id(),
            user: "guest".into(),
            impersonator: false,
            outbox: outbox.clone(),
            version: Version::V1_2,
            counters: Default::default(),
        };
        (Session::new(ctx, "session-test".into()), outbox)
    }

    /// Everything the session wrote, as frames.
    async fn written(outbox: &Outbox) -> Vec<Frame> {
        outbox.close();
        let mut bytes: Vec<u8> = Vec::new();
        outbox.run_writer(&mut bytes).await;
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        while let Some(f) = decoder
            .decode(&mut buf, Version::V1_2, &Limits::default())
            .expect("our own frames decode")
        {
            frames.push(f);
        }
        frames
    }

    fn sub(id: &str, dest: &str) -> Frame {
        Frame::new(Command::Subscribe)
            .with("id", id)
            .with("destination", dest)
            .with("ack", "client")
    }

    fn send(dest: &str, body: &'static str) -> Frame {
        Frame::new(Command::Send)
            .with("destination", dest)
            .with_body(body.as_bytes())
    }

    #[tokio::test]
    async fn cumulative_ack_covers_only_its_own_subscription() {
        let broker = Broker::new(Config::parse(DEFAULT_CONFIG).expect("default config"));
        let (mut s, outbox) = session(&broker);
        for f in [
            sub("a", "/queue/sess-a"),
            sub("b", "/queue/sess-b"),
            send("/queue/sess-a", "a1"),
            send("/queue/sess-b", "b1"),
            send("/queue/sess-a", "a2"),
        ] {
            assert_eq!(s.handle(f), Ok(Next::Continue));
        }
        // Find a2's ack id without closing the outbox: deliveries are numbered in wire order
        // a1=1, b1=2, a2=3.
        let ack = Frame::new(Command::Ack).with("id", "T_a@@session-test@@3");
        assert_eq!(s.handle(ack), Ok(Next::Continue));
        let vh = broker.vhost("/").expect("vhost");
        let stats = |q: &str| vh.queue(q).expect("queue").stats().unacked;
        assert_eq!(
            (stats("sess-a"), stats("sess-b")),
            (0, 1),
            "a1 and a2 acked, b1 not"
        );
        let frames = written(&outbox).await;
        let ids: Vec<&str> = frames
            .iter()
            .filter_map(|f| f.header("message-id"))
            .collect();
        assert_eq!(
            ids,
            [
                "T_a@@session-test@@1",
                "T_b@@session-test@@2",
                "T_a@@session-test@@3"
            ]
        );
        s.cleanup();
        assert_eq!(stats("sess-b"), 0, "b1 requeued at cleanup");
        assert_eq!(vh.queue("sess-b").expect("queue").stats().ready, 1);
    }

    #[tokio::test]
    async fn disconnect_sends_its_receipt_and_ends() {
        let broker = Broker::new(Config::parse(DEFAULT_CONFIG).expect("default config"));
        let (mut s, outbox) = session(&broker);
        let f = Frame::new(Command::Disconnect).with("receipt", "bye");
        assert_eq!(s.handle(f), Ok(Next::Disconnect));
        let frames = written(&outbox).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].command, Command::Receipt);
        assert_eq!(frames[0].header("receipt-id"), Some("bye"));
    }
}
