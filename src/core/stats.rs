//! Message statistics, RabbitMQ's `message_stats`: counters kept where the work already happens
//! (off the per-message hot path: a queue counts under the lock it holds anyway, an exchange and
//! a connection with relaxed atomics), and a sampler that turns them into rates every
//! `http.stats_interval_ms` (RabbitMQ's `collect_statistics_interval`, 5 s).
//!
//! Counters of an object that goes away (a deleted queue, a closed connection) are folded into
//! its vhost's (or protocol's) retired totals by the next sample, so vhost, overview and
//! Prometheus totals never go backwards; what it did after the last sample is not counted.

use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

/// One counter of `message_stats`, under RabbitMQ's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// Messages published (into a queue, by a connection, in a vhost).
    Publish,
    /// Messages published into an exchange.
    PublishIn,
    /// Messages routed out of an exchange, once per queue reached.
    PublishOut,
    /// Publishes confirmed to the publisher (AMQP confirms, MQTT PUBACK/PUBREC, STOMP receipts).
    Confirm,
    /// Delivered to consumers that acknowledge.
    Deliver,
    /// Delivered to consumers that do not acknowledge.
    DeliverNoAck,
    /// Fetched with `basic.get` to acknowledge.
    Get,
    /// Fetched with `basic.get` without acknowledgement.
    GetNoAck,
    /// `basic.get` that found the queue empty.
    GetEmpty,
    Ack,
    /// Deliveries of messages delivered before.
    Redeliver,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::Publish,
        Field::PublishIn,
        Field::PublishOut,
        Field::Confirm,
        Field::Deliver,
        Field::DeliverNoAck,
        Field::Get,
        Field::GetNoAck,
        Field::GetEmpty,
        Field::Ack,
        Field::Redeliver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Publish => "publish",
            Field::PublishIn => "publish_in",
            Field::PublishOut => "publish_out",
            Field::Confirm => "confirm",
            Field::Deliver => "deliver",
            Field::DeliverNoAck => "deliver_no_ack",
            Field::Get => "get",
            Field::GetNoAck => "get_no_ack",
            Field::GetEmpty => "get_empty",
            Field::Ack => "ack",
            Field::Redeliver => "redeliver",
        }
    }
}

/// A value per [`Field`]: counts ([`Counts`]) or rates ([`Rates`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerField<T>([T; Field::ALL.len()]);

/// Totals of every [`Field`], as read at one moment.
pub type Counts = PerField<u64>;
/// Rates per second of every [`Field`] over the last sample interval.
pub type Rates = PerField<f64>;

impl<T: Copy + Default> Default for PerField<T> {
    fn default() -> Self {
        PerField([T::default(); Field::ALL.len()])
    }
}

impl<T: Copy + Default + std::ops::AddAssign> PerField<T> {
    pub fn get(&self, f: Field) -> T {
        self.0[f as usize]
    }

    pub fn set(&mut self, f: Field, v: T) {
        self.0[f as usize] = v;
    }

    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// RabbitMQ's `deliver_get`: every message handed out, by consume or get, either ack mode.
    pub fn deliver_get(&self) -> T {
        let mut sum = self.get(Field::Deliver);
        sum += self.get(Field::DeliverNoAck);
        sum += self.get(Field::Get);
        sum += self.get(Field::GetNoAck);
        sum
    }
}

impl Rates {
    fn between(before: &Counts, after: &Counts, seconds: f64) -> Rates {
        let mut r = Rates::default();
        if seconds > 0.0 {
            for (i, rate) in r.0.iter_mut().enumerate() {
                // Counts only grow; a smaller one (an object replaced) gives no negative rate.
                *rate = after.0[i].saturating_sub(before.0[i]) as f64 / seconds;
            }
        }
        r
    }
}

/// What an object's counters add to its vhost's `message_stats`: a vhost's `publish` is what
/// was published into its exchanges (a queue's `publish` counts a fanned-out message once per
/// queue), its deliveries and acks are its queues', its confirms its connections'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Queue,
    Exchange,
    Connection,
}

impl Share {
    pub fn of<T: Copy + Default + std::ops::AddAssign>(self, v: &PerField<T>) -> PerField<T> {
        let mut out = *v;
        match self {
            Share::Queue => out.set(Field::Publish, T::default()),
            Share::Exchange => {
                out = PerField::default();
                out.set(Field::Publish, v.get(Field::PublishIn));
            }
            Share::Connection => {
                out = PerField::default();
                out.set(Field::Confirm, v.get(Field::Confirm));
            }
        }
        out
    }
}

/// RabbitMQ's `message_stats` object for `fields`: each count with its `_details.rate`, and
/// `deliver_get` when deliveries are among them.
pub fn message_stats_json(counts: &Counts, rates: &Rates, fields: &[Field]) -> Value {
    let mut m = Map::new();
    let mut put = |name: &str, n: u64, rate: f64| {
        m.insert(name.to_owned(), json!(n));
        m.insert(
            format!("{name}_details"),
            json!({ "rate": round_rate(rate) }),
        );
    };
    for &f in fields {
        put(f.name(), counts.get(f), rates.get(f));
    }
    if fields.contains(&Field::Deliver) {
        put("deliver_get", counts.deliver_get(), rates.deliver_get());
    }
    Value::Object(m)
}

/// Rates to one decimal place, as RabbitMQ's UI shows them.
fn round_rate(r: f64) -> f64 {
    (r * 10.0).round() / 10.0
}

/// The fields a queue's `message_stats` has.
pub const QUEUE_FIELDS: &[Field] = &[
    Field::Publish,
    Field::Deliver,
    Field::DeliverNoAck,
    Field::Get,
    Field::GetNoAck,
    Field::GetEmpty,
    Field::Ack,
    Field::Redeliver,
];
/// The fields an exchange's `message_stats` has.
pub const EXCHANGE_FIELDS: &[Field] = &[Field::PublishIn, Field::PublishOut];
/// The fields a connection's `message_stats` has (ours: RabbitMQ has them on channels).
pub const CONNECTION_FIELDS: &[Field] = &[Field::Publish, Field::Confirm];
/// The fields a vhost's and the overview's `message_stats` have.
pub const VHOST_FIELDS: &[Field] = &[
    Field::Publish,
    Field::Confirm,
    Field::Deliver,
    Field::DeliverNoAck,
    Field::Get,
    Field::GetNoAck,
    Field::GetEmpty,
    Field::Ack,
    Field::Redeliver,
];

/// A queue's counters. Plain numbers: the queue changes them only under its own lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    pub publish: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub ack: u64,
    pub redeliver: u64,
}

impl QueueCounters {
    /// A message handed to a consumer.
    pub fn delivered(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.deliver_no_ack += 1;
        } else {
            self.deliver += 1;
        }
        self.redeliver += u64::from(redelivered);
    }

    /// A message taken by `basic.get`.
    pub fn got(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.get_no_ack += 1;
        } else {
            self.get += 1;
        }
        self.redeliver += u64::from(redelivered);
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        c.set(Field::Publish, self.publish);
        c.set(Field::Deliver, self.deliver);
        c.set(Field::DeliverNoAck, self.deliver_no_ack);
        c.set(Field::Get, self.get);
        c.set(Field::GetNoAck, self.get_no_ack);
        c.set(Field::GetEmpty, self.get_empty);
        c.set(Field::Ack, self.ack);
        c.set(Field::Redeliver, self.redeliver);
        c
    }
}

/// An exchange's counters, bumped by whoever routes through it.
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    publish_in: AtomicU64,
    publish_out: AtomicU64,
}

impl ExchangeCounters {
    /// A message published into the exchange that reached `queues` queues.
    pub fn routed(&self, queues: usize) {
        self.publish_in.fetch_add(1, Ordering::Relaxed);
        self.publish_out.fetch_add(queues as u64, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        c.set(Field::PublishIn, self.publish_in.load(Ordering::Relaxed));
        c.set(Field::PublishOut, self.publish_out.load(Ordering::Relaxed));
        c
    }
}

/// A connection's counters, bumped by its own task (so the cache line stays on one core).
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    publish: AtomicU64,
    confirm: AtomicU64,
    recv_oct: AtomicU64,
    send_oct: AtomicU64,
    /// Its counts were folded into the retired totals (the connection closed): the sampler
    /// must not count them again. Read and set under the rate table's lock.
    retired: std::sync::atomic::AtomicBool,
}

impl ConnectionCounters {
    /// A message the client published.
    pub fn published(&self) {
        self.publish.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` publishes confirmed to the client.
    pub fn confirmed(&self, n: u64) {
        self.confirm.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes read from the client's socket.
    pub fn received(&self, bytes: usize) {
        self.recv_oct.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes written to the client's socket.
    pub fn sent(&self, bytes: usize) {
        self.send_oct.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        c.set(Field::Publish, self.publish.load(Ordering::Relaxed));
        c.set(Field::Confirm, self.confirm.load(Ordering::Relaxed));
        c
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// (received, sent) bytes.
    pub fn octets(&self) -> (u64, u64) {
        (
            self.recv_oct.load(Ordering::Relaxed),
            self.send_oct.load(Ordering::Relaxed),
        )
    }
}

/// What the sampler last saw of one object.
#[derive(Debug)]
struct Seen {
    counts: Counts,
    rates: Rates,
    /// Byte counters of a connection (received, sent) and their rates.
    octets: (u64, u64),
    octet_rates: (f64, f64),
    /// Where its counts go when it is gone, and which share of them (None: all).
    retire_to: Vec<(Arc<str>, Option<Share>)>,
    /// Keeps the allocation behind the key's address alive, so no other object can take the
    /// address while this entry exists.
    _alive: Weak<dyn std::any::Any + Send + Sync>,
    /// The sample pass that last saw it.
    pass: u64,
}

/// One object in a sample pass: its address (the key), its counts and where its totals go
/// when it is gone (its vhost; for a connection also its protocol, see [`protocol_owner`]).
pub struct Observed<'a> {
    pub key: usize,
    pub alive: Weak<dyn std::any::Any + Send + Sync>,
    pub retire_to: &'a [(&'a str, Option<Share>)],
    pub counts: Counts,
    pub octets: (u64, u64),
}

/// The retired-totals owner of a protocol's closed connections.
pub fn protocol_owner(protocol: &str) -> String {
    format!("protocol:{protocol}")
}

/// The rates the sampler computed, and the totals of objects that are gone.
#[derive(Debug, Default)]
pub struct RateTable {
    objects: HashMap<usize, Seen>,
    /// Counts of gone objects by vhost (their [`Share`]) and of closed connections by
    /// [`protocol_owner`].
    retired: HashMap<Arc<str>, Counts>,
    /// Rates of whole vhosts (by name) as of the last pass.
    vhost_rates: HashMap<String, Rates>,
    last: Option<Instant>,
    pass: u64,
}

impl RateTable {
    /// The rates of the object at `key` (zero before it was sampled twice).
    pub fn rates(&self, key: usize) -> Rates {
        self.objects.get(&key).map(|s| s.rates).unwrap_or_default()
    }

    /// Byte rates (received, sent per second) of the connection at `key`.
    pub fn octet_rates(&self, key: usize) -> (f64, f64) {
        self.objects
            .get(&key)
            .map(|s| s.octet_rates)
            .unwrap_or_default()
    }

    /// Counts of the gone objects owned by `owner` (a vhost name or a protocol).
    pub fn retired(&self, owner: &str) -> Counts {
        self.retired.get(owner).copied().unwrap_or_default()
    }

    /// A vhost's rates as of the last pass.
    pub fn vhost_rates(&self, vhost: &str) -> Rates {
        self.vhost_rates.get(vhost).copied().unwrap_or_default()
    }

    /// Starts a pass at `now`: returns the seconds since the last one (None for the first).
    pub fn begin(&mut self, now: Instant) -> Option<f64> {
        self.pass += 1;
        let elapsed = self.last.map(|t| now.duration_since(t).as_secs_f64());
        self.last = Some(now);
        elapsed
    }

    /// Records one object seen in this pass and computes its rates over `elapsed` seconds.
    pub fn observe(&mut self, o: Observed<'_>, elapsed: Option<f64>) {
        let pass = self.pass;
        match self.objects.get_mut(&o.key) {
            Some(seen) => {
                if let Some(dt) = elapsed.filter(|&dt| dt > 0.0) {
                    seen.rates = Rates::between(&seen.counts, &o.counts, dt);
                    seen.octet_rates = (
                        o.octets.0.saturating_sub(seen.octets.0) as f64 / dt,
                        o.octets.1.saturating_sub(seen.octets.1) as f64 / dt,
                    );
                }
                seen.counts = o.counts;
                seen.octets = o.octets;
                seen.pass = pass;
            }
            None => {
                // First seen now: its counts so far happened since the last pass (or are
                // all it ever did before sampling began), so they make its first rate.
                let rates = match elapsed {
                    Some(dt) if dt > 0.0 => Rates::between(&Counts::default(), &o.counts, dt),
                    _ => Rates::default(),
                };
                self.objects.insert(
                    o.key,
                    Seen {
                        counts: o.counts,
                        rates,
                        octets: o.octets,
                        octet_rates: (0.0, 0.0),
                        retire_to: o
                            .retire_to
                            .iter()
                            .map(|&(owner, share)| (Arc::from(owner), share))
                            .collect(),
                        _alive: o.alive,
                        pass,
                    },
                );
            }
        }
    }

    /// Folds a closed connection's final counts into the retired totals of `retire_to` now (not
    /// at the next pass, which would miss what it did since the last one), and forgets it.
    pub fn retire_connection(
        &mut self,
        key: usize,
        counters: &ConnectionCounters,
        retire_to: &[(&str, Option<Share>)],
    ) {
        if counters.retired.swap(true, Ordering::Relaxed) {
            return;
        }
        self.objects.remove(&key);
        let counts = counters.counts();
        for &(owner, share) in retire_to {
            let c = share.map_or(counts, |s| s.of(&counts));
            match self.retired.get_mut(owner) {
                Some(total) => total.add(&c),
                None => {
                    self.retired.insert(Arc::from(owner), c);
                }
            }
        }
    }

    /// Ends a pass: objects not seen in it are gone, their counts retired to their owner.
    /// `vhost_rates` are the rates of each vhost's live objects summed by the caller.
    pub fn end(&mut self, vhost_rates: HashMap<String, Rates>) {
        let pass = self.pass;
        let retired = &mut self.retired;
        self.objects.retain(|_, seen| {
            if seen.pass == pass {
                return true;
            }
            for (owner, share) in &seen.retire_to {
                let counts = share.map_or(seen.counts, |s| s.of(&seen.counts));
                retired.entry(owner.clone()).or_default().add(&counts);
            }
            false
        });
        self.vhost_rates = vhost_rates;
    }
}

/// The broker's statistics: the rate table the sampler fills.
#[derive(Debug, Default)]
pub struct Stats {
    table: Mutex<RateTable>,
}

impl Stats {
    pub fn table(&self) -> MutexGuard<'_, RateTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The key of an object in the rate table: the address of its allocation.
pub fn key_of<T>(object: &Arc<T>) -> usize {
    Arc::as_ptr(object) as *const u8 as usize
}

/// A handle that keeps `object`'s allocation (not the object) alive, for [`Observed::alive`].
pub fn alive_of<T: Send + Sync + 'static>(
    object: &Arc<T>,
) -> Weak<dyn std::any::Any + Send + Sync> {
    let any: Arc<dyn std::any::Any + Send + Sync> = object.clone();
    Arc::downgrade(&any)
}

/// Adds rates into `into[name]`.
pub fn add_rates(into: &mut HashMap<String, Rates>, name: &str, rates: &Rates) {
    match into.get_mut(name) {
        Some(r) => r.add(rates),
        None => {
            into.insert(name.to_owned(), *rates);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn observed(key: usize, alive: &Arc<u8>, owner: &str, publish: u64) -> Observed<'static> {
        let mut counts = Counts::default();
        counts.set(Field::Publish, publish);
        let owner: &'static str = Box::leak(owner.to_owned().into_boxed_str());
        Observed {
            key,
            alive: alive_of(alive),
            retire_to: Box::leak(Box::new([(owner, None)])),
            counts,
            octets: (publish * 10, 0),
        }
    }

    #[test]
    fn rates_are_the_growth_over_the_interval() {
        let mut t = RateTable::default();
        let obj = Arc::new(0u8);
        let t0 = Instant::now();
        let dt = t.begin(t0);
        t.observe(observed(1, &obj, "/", 100), dt);
        t.end(HashMap::new());
        assert_eq!(
            t.rates(1).get(Field::Publish),
            0.0,
            "one sample gives no rate"
        );
        let dt = t.begin(t0 + Duration::from_secs(5));
        t.observe(observed(1, &obj, "/", 600), dt);
        t.end(HashMap::new());
        assert_eq!(t.rates(1).get(Field::Publish), 100.0);
        assert_eq!(t.octet_rates(1).0, 1000.0);
    }

    #[test]
    fn a_gone_object_is_retired_to_its_owner() {
        let mut t = RateTable::default();
        let a = Arc::new(0u8);
        let b = Arc::new(0u8);
        let t0 = Instant::now();
        let dt = t.begin(t0);
        t.observe(observed(1, &a, "v", 7), dt);
        t.observe(observed(2, &b, "v", 3), dt);
        t.end(HashMap::new());
        let dt = t.begin(t0 + Duration::from_secs(1));
        t.observe(observed(2, &b, "v", 4), dt);
        t.end(HashMap::new());
        assert_eq!(t.retired("v").get(Field::Publish), 7);
        assert_eq!(t.rates(1), Rates::default(), "forgotten");
        assert_eq!(t.retired("other"), Counts::default());
    }

    #[test]
    fn a_vhost_publish_is_what_entered_its_exchanges() {
        let q = QueueCounters {
            publish: 3,
            ack: 2,
            ..Default::default()
        };
        let shared = Share::Queue.of(&q.counts());
        assert_eq!((shared.get(Field::Publish), shared.get(Field::Ack)), (0, 2));
        let e = ExchangeCounters::default();
        e.routed(3);
        let shared = Share::Exchange.of(&e.counts());
        assert_eq!(shared.get(Field::Publish), 1);
        assert_eq!(shared.get(Field::PublishOut), 0);
    }

    #[test]
    fn queue_counters_split_by_ack_mode() {
        let mut q = QueueCounters::default();
        q.delivered(false, false);
        q.delivered(true, true);
        q.got(false, true);
        let c = q.counts();
        assert_eq!((c.get(Field::Deliver), c.get(Field::DeliverNoAck)), (1, 1));
        assert_eq!(c.get(Field::Redeliver), 2);
        assert_eq!(c.deliver_get(), 3);
    }

    #[test]
    fn message_stats_has_counts_rates_and_deliver_get() {
        let mut q = QueueCounters {
            publish: 4,
            ..Default::default()
        };
        q.delivered(false, false);
        let v = message_stats_json(&q.counts(), &Rates::default(), QUEUE_FIELDS);
        assert_eq!(v["publish"], 4);
        assert_eq!(v["publish_details"]["rate"], 0.0);
        assert_eq!(v["deliver_get"], 1);
        assert!(v.get("publish_in").is_none());
    }
}
