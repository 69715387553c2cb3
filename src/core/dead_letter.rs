//! Dead-lettering as RabbitMQ does it: the `x-death` history a message carries, the
//! `x-first-death-*` / `x-last-death-*` headers, and the cycle rule that drops a message going
//! round the same queues with no rejection in between.

use super::memory::MemoryCharge;
use super::message::Message;
use std::sync::Arc;
use switchboard_amqp::{FieldTable, FieldValue};

/// Why a message left its queue for the dead-letter exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Rejected or nacked with requeue=false.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// Dropped or refused by a length limit.
    Maxlen,
    /// Returned more often than a quorum queue's `x-delivery-limit`.
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message that left a queue and may be republished to its dead-letter exchange.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: Reason,
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The queue the message died in.
    pub queue: &'a str,
    pub exchange: &'a str,
    /// None: the message's own routing key.
    pub routing_key: Option<&'a str>,
}

/// The message as republished to the dead-letter exchange: `x-death` updated, the death
/// headers set, the `expiration` property removed (so it does not expire again in the next
/// queue), routed with the dead-letter routing key if the queue has one.
pub fn dead_lettered(
    dead: &DeadLetter,
    to: Target<'_>,
    now_ms: u64,
    charge: MemoryCharge,
) -> Message {
    let m = &dead.message;
    let mut properties = m.properties().clone();
    let mut headers = properties.headers.take().unwrap_or_default();
    let mut routing_keys = vec![FieldValue::string(m.routing_key.clone())];
    if let Some(FieldValue::Array(cc)) = headers.get("CC") {
        routing_keys.extend(cc.iter().filter(|v| v.as_str().is_some()).cloned());
    }
    let reason = FieldValue::string(dead.reason.as_str());
    let mut deaths: Vec<FieldValue> = match headers.remove("x-death") {
        Some(FieldValue::Array(a)) => a,
        _ => Vec::new(),
    };
    let same = |d: &FieldValue| match d {
        FieldValue::Table(t) => {
            t.get("queue").and_then(FieldValue::as_str) == Some(to.queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(dead.reason.as_str())
        }
        _ => false,
    };
    // One entry per queue and reason: the first is kept (counted up), any duplicate a peer
    // may have sent is dropped.
    let previous = deaths.iter().position(same).map(|i| deaths.remove(i));
    deaths.retain(|d| !same(d));
    let entry = match previous {
        Some(FieldValue::Table(mut t)) => {
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            t.insert(
                "count".into(),
                FieldValue::I64(count.max(0).saturating_add(1)),
            );
            t
        }
        _ => {
            let mut t = FieldTable::new();
            t.insert("count".into(), FieldValue::I64(1));
            t.insert("reason".into(), reason.clone());
            t.insert("queue".into(), FieldValue::string(to.queue));
            t.insert("time".into(), FieldValue::Timestamp(now_ms / 1000));
            t.insert("exchange".into(), FieldValue::string(m.exchange.clone()));
            t.insert("routing-keys".into(), FieldValue::Array(routing_keys));
            if let Some(exp) = &properties.expiration {
                t.insert(
                    "original-expiration".into(),
                    FieldValue::string(exp.clone()),
                );
            }
            t
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death".into(), FieldValue::Array(deaths));
    for (suffix, value) in [
        ("reason", reason),
        ("queue", FieldValue::string(to.queue)),
        ("exchange", FieldValue::string(m.exchange.clone())),
    ] {
        headers
            .entry(format!("x-first-death-{suffix}"))
            .or_insert_with(|| value.clone());
        headers.insert(format!("x-last-death-{suffix}"), value);
    }
    properties.headers = Some(headers);
    properties.expiration = None;
    Message::new(
        to.exchange.to_owned(),
        to.routing_key.unwrap_or(&m.routing_key).to_owned(),
        properties,
        None,
        m.body.clone(),
        charge,
    )
}

/// Whether delivering a dead-lettered message to `queue` would close a cycle RabbitMQ breaks:
/// the message already died in `queue`, and no death since then (that one included) was a
/// rejection. A rejection means a client decided, so a retry loop through it is legitimate.
pub fn is_cycle(message: &Message, queue: &str) -> bool {
    let Some(FieldValue::Array(deaths)) = message
        .properties()
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    let field = |d: &FieldValue, key: &str| match d {
        FieldValue::Table(t) => t.get(key).and_then(FieldValue::as_str).map(str::to_owned),
        _ => None,
    };
    let Some(end) = deaths
        .iter()
        .position(|d| field(d, "queue").as_deref() == Some(queue))
    else {
        return false;
    };
    deaths[..=end]
        .iter()
        .all(|d| field(d, "reason").as_deref() != Some("rejected"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(exchange: &str, key: &str, expiration: Option<&str>) -> Arc<Message> {
        let properties = switchboard_amqp::BasicProperties {
            expiration: expiration.map(str::to_owned),
            ..Default::default()
        };
        Arc::new(Message::new(
            exchange.into(),
            key.into(),
            properties,
            None,
            Bytes::from_static(b"body"),
            MemoryCharge::default(),
        ))
    }

    fn die(m: &Arc<Message>, queue: &str, reason: Reason, dlx: &str) -> Arc<Message> {
        let dead = DeadLetter {
            message: m.clone(),
            reason,
        };
        let to = Target {
            queue,
            exchange: dlx,
            routing_key: None,
        };
        Arc::new(dead_lettered(
            &dead,
            to,
            1_700_000_000_123,
            MemoryCharge::default(),
        ))
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m
            .properties()
            .headers
            .as_ref()
            .and_then(|h| h.get("x-death"))
        {
            Some(FieldValue::Array(a)) => a
                .iter()
                .filter_map(|d| match d {
                    FieldValue::Table(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    fn x_death_entry_as_rabbitmq_writes_it() {
        let m = message("orders", "new", Some("5000"));
        let d = die(&m, "work", Reason::Expired, "dlx");
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str()),
            ("dlx", "new")
        );
        assert_eq!(d.properties().expiration, None);
        let x = deaths(&d);
        assert_eq!(x.len(), 1);
        let e = &x[0];
        assert_eq!(e["count"], FieldValue::I64(1));
        assert_eq!(e["reason"], FieldValue::string("expired"));
        assert_eq!(e["queue"], FieldValue::string("work"));
        assert_eq!(e["time"], FieldValue::Timestamp(1_700_000_000));
        assert_eq!(e["exchange"], FieldValue::string("orders"));
        assert_eq!(
            e["routing-keys"],
            FieldValue::Array(vec![FieldValue::string("new")])
        );
        assert_eq!(e["original-expiration"], FieldValue::string("5000"));
        let h = d.properties().headers.as_ref().unwrap();
        assert_eq!(h["x-first-death-reason"], FieldValue::string("expired"));
        assert_eq!(h["x-first-death-queue"], FieldValue::string("work"));
        assert_eq!(h["x-first-death-exchange"], FieldValue::string("orders"));
        assert_eq!(h["x-last-death-queue"], FieldValue::string("work"));
    }

    #[test]
    fn same_queue_and_reason_counts_up_and_moves_first() {
        let m = message("", "work", None);
        let a = die(&m, "work", Reason::Rejected, "dlx");
        let b = die(&a, "retry", Reason::Expired, "");
        let c = die(&b, "work", Reason::Rejected, "dlx");
        let x = deaths(&c);
        assert_eq!(x.len(), 2);
        assert_eq!(x[0]["queue"], FieldValue::string("work"));
        assert_eq!(x[0]["count"], FieldValue::I64(2));
        assert_eq!(x[1]["queue"], FieldValue::string("retry"));
        let h = c.properties().headers.as_ref().unwrap();
        assert_eq!(h["x-first-death-queue"], FieldValue::string("work"));
        assert_eq!(h["x-last-death-reason"], FieldValue::string("rejected"));
        assert_eq!(h["x-first-death-exchange"], FieldValue::string(""));
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = FieldValue> {
        use proptest::prelude::*;
        let words = || {
            proptest::sample::select(vec![
                "q", "other", "rejected", "expired", "maxlen", "count", "",
            ])
        };
        let leaf = prop_oneof![
            any::<i64>().prop_map(FieldValue::I64),
            any::<u64>().prop_map(FieldValue::Timestamp),
            any::<bool>().prop_map(FieldValue::Bool),
            words().prop_map(FieldValue::string),
            Just(FieldValue::Void),
        ];
        leaf.prop_recursive(3, 24, 6, move |inner| {
            let keys = proptest::sample::select(vec![
                "count",
                "reason",
                "queue",
                "time",
                "exchange",
                "routing-keys",
            ]);
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(FieldValue::Array),
                proptest::collection::btree_map(keys.prop_map(str::to_owned), inner, 0..6)
                    .prop_map(FieldValue::Table),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a peer put in `x-death` (or `CC`), dead-lettering neither panics nor loses
        /// track: the entry for this queue and reason is first, once, with a positive count.
        #[test]
        fn any_x_death_header_is_handled(x_death in arb_value(), cc in arb_value()) {
            let mut headers = FieldTable::new();
            headers.insert("x-death".into(), x_death);
            headers.insert("CC".into(), cc);
            let m = Arc::new(Message::new(
                "ex".into(),
                "k".into(),
                switchboard_amqp::BasicProperties {
                    headers: Some(headers.clone()),
                    ..Default::default()
                },
                None,
                Bytes::new(),
                MemoryCharge::default(),
            ));
            let _ = is_cycle(&m, "q");
            let d = die(&m, "q", Reason::Expired, "dlx");
            let x = deaths(&d);
            let mine = |t: &FieldTable| {
                t.get("queue").and_then(FieldValue::as_str) == Some("q")
                    && t.get("reason").and_then(FieldValue::as_str) == Some("expired")
            };
            proptest::prop_assert!(mine(&x[0]));
            proptest::prop_assert_eq!(x.iter().filter(|t| mine(t)).count(), 1);
            proptest::prop_assert!(x[0]["count"].as_i64().is_some_and(|c| c >= 1));
            let _ = is_cycle(&d, "q");
            // The same values as queue arguments: refused or accepted, never a panic.
            let args: FieldTable = headers
                .values()
                .flat_map(|v| {
                    super::super::queue::args::QUEUE_ARGUMENTS
                        .iter()
                        .map(move |k| ((*k).to_owned(), v.clone()))
                })
                .collect();
            let _ = super::super::queue::args::QueueArgs::parse(&args, Some(&headers));
        }
    }

    #[test]
    fn cycles_without_a_rejection_are_detected() {
        let m = message("", "q", None);
        let expired_in_q = die(&m, "q", Reason::Expired, "dlx");
        assert!(is_cycle(&expired_in_q, "q"));
        assert!(!is_cycle(&expired_in_q, "other"));
        // Retry loop: rejected in work, expired in retry, back to work: no cycle.
        let rejected = die(&m, "work", Reason::Rejected, "dlx");
        let expired = die(&rejected, "retry", Reason::Expired, "");
        assert!(!is_cycle(&expired, "work"));
        assert!(!is_cycle(&m, "q"));
    }
}
