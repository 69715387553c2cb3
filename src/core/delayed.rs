//! Delayed delivery: the exchange type `x-delayed-message` of RabbitMQ's delayed-message plugin.
//! A message published with an `x-delay` header (milliseconds) is held by the exchange's
//! [`DelayedHold`] and routed, by the exchange's `x-delayed-type`, when it is due.
//!
//! Due times sit in a heap served by the broker's timer task; when they come, the hold hands
//! the messages now due to its vhost (which the timer passes in) to route, and keeps no pointer
//! to it. A durable exchange keeps its
//! persistent held messages in the message log under a store id of its own (listed in the
//! definitions as a queue named `amq.delayed-message.<exchange>`, which is never a real queue),
//! with the due time in a header, so they are armed again after a restart.

use super::memory::MemoryCharge;
use super::message::Message;
use super::queue::read_back;
use super::timer::{OwnerId, Timed, Timer};
use super::vhost::VHost;
use crate::store::log::RecordPos;
use crate::store::record::Entry;
use crate::store::recovery::RecoveredQueue;
use crate::store::MessageLog;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use switchboard_amqp::{BasicProperties, FieldValue};

/// The exchange type.
pub const DELAYED_TYPE: &str = "x-delayed-message";
/// The exchange argument naming the type that routes once a message is due.
pub const DELAYED_TYPE_ARG: &str = "x-delayed-type";
/// The message header asking for a delay, in milliseconds.
pub const DELAY_HEADER: &str = "x-delay";
/// Name prefix of a hold's entry among the durable queue definitions.
pub const HOLD_PREFIX: &str = "amq.delayed-message.";
/// Header carrying the due time (ms since the epoch) of a held message in the log; removed
/// before the message is routed.
const DUE_HEADER: &str = "x-switchboard-delayed-until";

/// The delay a message asks for: a positive `x-delay` header (an integer, or a decimal string
/// as STOMP and MQTT user properties carry it). None: route at once.
pub fn delay_of(message: &Message) -> Option<u64> {
    let v = message.properties().headers.as_ref()?.get(DELAY_HEADER)?;
    let ms = match v.as_i64() {
        Some(i) => i,
        None => v.as_str()?.trim().parse().ok()?,
    };
    u64::try_from(ms).ok().filter(|&d| d > 0)
}

/// Where a durable hold writes its persistent messages.
#[derive(Debug, Clone)]
pub struct HoldStore {
    pub log: Arc<MessageLog>,
    /// The hold's id in log records.
    pub id: u64,
}

/// A held message: in memory when transient; only its log position when persisted, so a
/// million pending persistent messages cost little memory (read back when due).
#[derive(Debug)]
enum Held {
    InMemory(Arc<Message>),
    Stored(RecordPos),
}

#[derive(Debug, Default)]
struct HoldState {
    /// (due, seq), earliest first.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    held: HashMap<u64, Held>,
    next_seq: u64,
    /// The earliest deadline the timer was asked for.
    armed: Option<u64>,
    deleted: bool,
}

/// The messages [`DelayedHold::take_due`] found due, for the vhost to route.
#[derive(Debug, Default)]
pub struct DueMessages {
    held: Vec<(u64, Held)>,
}

impl DueMessages {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The messages a delayed exchange holds until they are due.
#[derive(Debug)]
pub struct DelayedHold {
    /// The exchange's name, to route through when due.
    pub exchange: String,
    store: OnceLock<HoldStore>,
    /// Wakes the hold when its next message is due, under its vhost's owner id.
    timer: Arc<Timer>,
    owner: OwnerId,
    me: Weak<DelayedHold>,
    state: Mutex<HoldState>,
}

impl DelayedHold {
    /// The hold of delayed exchange `exchange`, woken by `timer` under its vhost's `owner` id.
    pub fn new(exchange: String, timer: Arc<Timer>, owner: OwnerId) -> Arc<Self> {
        Arc::new_cyclic(|me| DelayedHold {
            exchange,
            store: OnceLock::new(),
            timer,
            owner,
            me: me.clone(),
            state: Mutex::new(HoldState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HoldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the hold persist persistent messages (once; later calls are ignored).
    pub fn set_store(&self, store: HoldStore) {
        let _ = self.store.set(store);
    }

    pub fn store_id(&self) -> Option<u64> {
        self.store.get().map(|s| s.id)
    }

    fn now(&self) -> u64 {
        self.timer.now_ms()
    }

    /// Holds `message` for `delay_ms`. Returns the log sequence number a publisher confirm must
    /// wait for (0 when nothing was written).
    pub fn hold(&self, message: &Message, delay_ms: u64, charge: MemoryCharge) -> u64 {
        let due = self.now().saturating_add(delay_ms);
        let mut properties = message.properties().clone();
        properties
            .headers
            .get_or_insert_with(Default::default)
            .insert(DUE_HEADER.into(), FieldValue::I64(clamp_i64(due)));
        let held = Arc::new(Message::new(
            message.exchange.clone(),
            message.routing_key.clone(),
            properties,
            None,
            message.body.clone(),
            charge,
        ));
        let mut st = self.lock();
        if st.deleted {
            return 0;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let (entry, lsn) = match self.store.get() {
            Some(store) if held.is_persistent() => {
                let place = Entry::new(store.id, seq);
                let a = crate::core::stored::append_message(&store.log, place, &held);
                (Held::Stored(a.at), a.lsn)
            }
            _ => (Held::InMemory(held), 0),
        };
        st.held.insert(seq, entry);
        st.due.push(Reverse((due, seq)));
        self.rearm(&mut st);
        lsn
    }

    /// Loads the held messages recovered from the log, with their due times, and arms the
    /// timer for them.
    pub fn recover(&self, recovered: RecoveredQueue) {
        let now = self.now();
        let mut st = self.lock();
        for (seq, m) in recovered.messages {
            let Ok(properties) = BasicProperties::decode(&m.properties) else {
                tracing::warn!(exchange = %self.exchange, "unreadable delayed message properties; dropping it");
                continue;
            };
            let due = properties
                .headers
                .as_ref()
                .and_then(|h| h.get(DUE_HEADER))
                .and_then(FieldValue::as_i64)
                .and_then(|d| u64::try_from(d).ok())
                .unwrap_or(now);
            st.held.insert(seq, Held::Stored(m.at));
            st.due.push(Reverse((due, seq)));
        }
        st.next_seq = st.next_seq.max(recovered.max_seq + 1);
        self.rearm(&mut st);
    }

    fn rearm(&self, st: &mut HoldState) {
        let Some(Reverse((due, _))) = st.due.peek() else {
            return;
        };
        if st.armed.is_none_or(|a| *due < a) {
            st.armed = Some(*due);
            let me: Weak<dyn Timed> = self.me.clone();
            self.timer.arm(*due, self.owner, me);
        }
    }

    /// Takes every message that is due out of the hold, for the vhost to route; then
    /// [`DelayedHold::released`] records that they left.
    pub fn take_due(&self) -> DueMessages {
        let now = self.now();
        let mut st = self.lock();
        if st.armed.is_some_and(|a| a <= now) {
            st.armed = None;
        }
        let mut due = Vec::new();
        while let Some(&Reverse((at, seq))) = st.due.peek() {
            if at > now {
                break;
            }
            st.due.pop();
            if let Some(h) = st.held.remove(&seq) {
                due.push((seq, h));
            }
        }
        self.rearm(&mut st);
        DueMessages { held: due }
    }

    /// Each due message as the vhost routes it (read back from the log if stored there).
    pub fn due_messages<'a>(
        &'a self,
        due: &'a DueMessages,
    ) -> impl Iterator<Item = Arc<Message>> + 'a {
        due.held.iter().filter_map(|(_, h)| self.message_of(h))
    }

    /// Records in the log that the due messages, routed by now, left the hold (a crash before
    /// this delivers one twice rather than never).
    pub fn released(&self, due: DueMessages) {
        if let Some(store) = self.store.get() {
            let settled: Vec<(u64, RecordPos)> = due
                .held
                .iter()
                .filter_map(|(seq, h)| match h {
                    Held::Stored(pos) => Some((*seq, *pos)),
                    Held::InMemory(_) => None,
                })
                .collect();
            if !settled.is_empty() {
                store.log.append_settle(store.id, &settled);
            }
        }
    }

    /// A held message, read back from the log if it is stored there. None (logged) if the
    /// record cannot be read.
    fn message_of(&self, held: &Held) -> Option<Arc<Message>> {
        let pos = match held {
            Held::InMemory(m) => return Some(m.clone()),
            Held::Stored(pos) => *pos,
        };
        let log = &self.store.get()?.log;
        match read_back(log, pos, |_| MemoryCharge::default()) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::error!(exchange = %self.exchange, segment = pos.segment, offset = pos.offset, "cannot read a delayed message back; dropping it: {e}");
                None
            }
        }
    }

    /// How many messages are waiting.
    pub fn pending(&self) -> usize {
        self.lock().held.len()
    }

    /// Rewrites held records in log segment `segment` at the end of the log (compaction).
    pub fn relocate(&self, segment: u64) -> usize {
        let Some(store) = self.store.get() else {
            return 0;
        };
        let sharing = store.log.references_into(segment);
        let mut st = self.lock();
        let mut moved = Vec::new();
        for (seq, h) in st.held.iter_mut() {
            let Held::Stored(old) = *h else {
                continue;
            };
            if old.segment != segment && !sharing.contains(&old) {
                continue;
            }
            let Some(message) = self.message_of(h) else {
                continue;
            };
            // Whole: a reference would point back into the segment being emptied.
            let place = Entry::new(store.id, *seq);
            let a = crate::core::stored::append_whole_message(&store.log, place, &message);
            *h = Held::Stored(a.at);
            moved.push(old);
        }
        let n = moved.len();
        store.log.forget(moved);
        n
    }

    /// The exchange was deleted: its held messages go with it.
    pub fn delete(&self) {
        let mut st = self.lock();
        st.deleted = true;
        if let Some(store) = self.store.get() {
            // The hold leaves the definitions, so recovery ignores its records.
            store.log.forget(st.held.values().filter_map(|h| match h {
                Held::Stored(pos) => Some(*pos),
                Held::InMemory(_) => None,
            }));
        }
        st.held.clear();
        st.due.clear();
    }
}

impl Timed for DelayedHold {
    /// Hands the messages now due to `vhost` to route, then records that they left.
    fn on_timer(self: Arc<Self>, vhost: &VHost) {
        let due = self.take_due();
        if due.is_empty() {
            return;
        }
        for message in self.due_messages(&due) {
            vhost.release_held(&self.exchange, &message);
        }
        self.released(due);
    }
}

/// The held message as it is routed: without the due-time header.
pub fn without_due_header(m: &Message, charge: MemoryCharge) -> Message {
    let mut properties = m.properties().clone();
    if let Some(h) = properties.headers.as_mut() {
        h.remove(DUE_HEADER);
    }
    Message::new(
        m.exchange.clone(),
        m.routing_key.clone(),
        properties,
        None,
        m.body.clone(),
        charge,
    )
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use crate::core::vhost::{ExchangeSpec, Publish, PublishTo, QueueSpec};
    use switchboard_amqp::FieldTable;

    fn delayed_message(body: &str, delay: Option<FieldValue>) -> Message {
        let mut headers = FieldTable::new();
        if let Some(d) = delay {
            headers.insert(DELAY_HEADER.into(), d);
        }
        Message::new(
            "delayed".into(),
            "k".into(),
            BasicProperties {
                headers: Some(headers),
                ..Default::default()
            },
            None,
            bytes::Bytes::from(body.to_owned()),
            Default::default(),
        )
    }

    #[test]
    fn delay_header_as_integer_or_decimal_string() {
        let d = |v| delay_of(&delayed_message("", Some(v)));
        assert_eq!(d(FieldValue::I32(1500)), Some(1500));
        assert_eq!(d(FieldValue::string("250")), Some(250));
        assert_eq!(d(FieldValue::I32(-5)), None, "negative: route now");
        assert_eq!(d(FieldValue::I32(0)), None);
        assert_eq!(d(FieldValue::string("soon")), None);
        assert_eq!(delay_of(&delayed_message("", None)), None);
    }

    #[test]
    fn held_until_due_then_routed_by_the_delayed_type_without_the_due_header() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let timer = Timer::new(clock.clone());
        let vh = VHost::with_timer("/", timer.clone());
        let mut arguments = FieldTable::new();
        arguments.insert(DELAYED_TYPE_ARG.into(), FieldValue::string("direct"));
        let ex = vh
            .declare_exchange(
                ExchangeSpec {
                    name: "delayed".into(),
                    kind: DELAYED_TYPE.into(),
                    durable: false,
                    auto_delete: false,
                    internal: false,
                    arguments,
                },
                false,
            )
            .unwrap();
        assert_eq!(ex.type_name(), DELAYED_TYPE);
        let spec = QueueSpec {
            name: "q".into(),
            ..Default::default()
        };
        let q = vh.declare_queue(spec, false, 1).unwrap().queue;
        vh.bind_queue("q", "delayed", "k", &FieldTable::new(), 1)
            .unwrap();
        let publish = |m: Message| {
            let message = Arc::new(m);
            let to = PublishTo::Exchange(&ex);
            vh.publish(
                Publish {
                    to,
                    message: &message,
                    holdable: false,
                },
                &mut Vec::new(),
            )
        };
        for (body, delay) in [("late", 100), ("early", 50)] {
            let m = delayed_message(body, Some(FieldValue::I64(delay)));
            let outcome = publish(m);
            assert!(outcome.held && outcome.queues == 0, "held, not routed");
        }
        let outcome = publish(delayed_message("now", None));
        assert_eq!(outcome.queues, 1, "no x-delay: routed at once");
        assert_eq!(&q.get(true).0.unwrap().0.message.body[..], b"now");
        assert_eq!(ex.delayed.as_ref().unwrap().pending(), 2);
        clock.advance(49);
        timer.fire_due();
        assert_eq!(q.stats().ready, 0);
        clock.advance(1);
        timer.fire_due();
        let (d, _) = q.get(true).0.unwrap();
        assert_eq!(&d.message.body[..], b"early");
        let headers = d.message.properties().headers.as_ref().unwrap();
        assert!(headers.get(DUE_HEADER).is_none());
        assert_eq!(headers.get(DELAY_HEADER), Some(&FieldValue::I64(50)));
        clock.advance(50);
        timer.fire_due();
        assert_eq!(&q.get(true).0.unwrap().0.message.body[..], b"late");
        assert_eq!(ex.delayed.as_ref().unwrap().pending(), 0);
    }

    #[test]
    fn a_delayed_exchange_needs_an_existing_delayed_type() {
        let vh = VHost::new("/");
        let mut arguments = FieldTable::new();
        arguments.insert(
            DELAYED_TYPE_ARG.into(),
            FieldValue::string("x-delayed-message"),
        );
        let spec = ExchangeSpec {
            name: "d".into(),
            kind: DELAYED_TYPE.into(),
            durable: false,
            auto_delete: false,
            internal: false,
            arguments,
        };
        let err = vh.declare_exchange(spec, false).unwrap_err();
        assert_eq!(
            err.message,
            "Invalid argument, 'x-delayed-type' must be an existing exchange type"
        );
    }
}

#[cfg(test)]
mod scale {
    use super::*;
    use crate::core::clock::ManualClock;
    use switchboard_amqp::FieldTable;

    fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// A million pending delayed messages: held, then released in due order. Prints time and
    /// memory; run with `cargo test --lib million -- --ignored --nocapture` (slow in debug).
    #[test]
    #[ignore = "measurement: a million messages, slow in a debug build"]
    fn a_million_pending_are_released_in_due_order() {
        let clock = Arc::new(ManualClock::new(0));
        let timer = Timer::new(clock.clone());
        let vh = VHost::with_timer("/", timer.clone());
        let hold = DelayedHold::new("delayed".into(), timer.clone(), vh.owner_id());
        let n: u64 = 1_000_000;
        let before = rss_kb();
        let started = std::time::Instant::now();
        for i in 0..n {
            let message = Message::new(
                "delayed".into(),
                "k".into(),
                BasicProperties {
                    headers: Some(FieldTable::new()),
                    ..Default::default()
                },
                None,
                bytes::Bytes::from_static(b"0123456789abcdef"),
                Default::default(),
            );
            // Spread over ~17 minutes, out of order.
            hold.hold(&message, 1 + (i * 7919) % n, Default::default());
        }
        let held_for = started.elapsed();
        let grown = rss_kb().saturating_sub(before);
        assert_eq!(hold.pending(), n as usize);
        let started = std::time::Instant::now();
        clock.advance(n / 2);
        timer.fire_due();
        assert_eq!(hold.pending(), (n / 2) as usize);
        clock.advance(n);
        timer.fire_due();
        assert_eq!(hold.pending(), 0);
        println!(
            "{n} delayed messages: held in {held_for:?} ({} bytes each in RSS), released in {:?}",
            grown * 1024 / n,
            started.elapsed()
        );
    }
}
