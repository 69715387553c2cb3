use super::*;
use crate::core::memory::MemoryCharge;
use bytes::Bytes;
use std::sync::atomic::{AtomicU32, Ordering};

/// A consumer that records deliveries and has a fixed prefetch.
struct TestSink {
    prefetch: u32,
    in_flight: AtomicU32,
    got: Mutex<Vec<Delivery>>,
}

impl TestSink {
    fn new(prefetch: u32) -> Arc<Self> {
        Arc::new(TestSink {
            prefetch,
            in_flight: AtomicU32::new(0),
            got: Mutex::new(vec![]),
        })
    }
    fn bodies(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
            .collect()
    }
}

impl ConsumerSink for TestSink {
    fn try_reserve(&self, needs_ack: bool) -> bool {
        if !needs_ack || self.prefetch == 0 {
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.prefetch).then_some(n + 1)
            })
            .is_ok()
    }
    fn deliver(&self, _q: &Arc<Queue>, d: Delivery) {
        self.got.lock().unwrap().push(d);
    }
    fn cancelled(&self, _q: &Queue, _tag: &str) {}
}

fn msg(body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        String::new(),
        "q".into(),
        Default::default(),
        None,
        Bytes::from(body.to_owned()),
        MemoryCharge::default(),
    ))
}

fn queue() -> Arc<Queue> {
    Arc::new(Queue::new(
        "q".into(),
        "/".into(),
        false,
        false,
        None,
        FieldTable::new(),
    ))
}

fn consumer(id: u64, sink: &Arc<TestSink>, no_ack: bool) -> Consumer {
    Consumer {
        id,
        tag: format!("c{id}"),
        no_ack,
        exclusive: false,
        owner: 1,
        sink: sink.clone(),
    }
}

#[test]
fn round_robin_between_consumers() {
    let q = queue();
    let (a, b) = (TestSink::new(0), TestSink::new(0));
    apply(&q, q.add_consumer(consumer(1, &a, true)).unwrap());
    apply(&q, q.add_consumer(consumer(2, &b, true)).unwrap());
    for i in 0..4 {
        publish(&q, msg(&i.to_string()));
    }
    assert_eq!(a.bodies(), vec!["0", "2"]);
    assert_eq!(b.bodies(), vec!["1", "3"]);
}

#[test]
fn prefetch_limits_and_requeue_keeps_order() {
    let q = queue();
    let a = TestSink::new(2);
    for i in 0..5 {
        publish(&q, msg(&i.to_string()));
    }
    apply(&q, q.add_consumer(consumer(1, &a, false)).unwrap());
    assert_eq!(a.bodies(), vec!["0", "1"]);
    assert_eq!(
        q.stats(),
        QueueStats {
            ready: 3,
            unacked: 2,
            consumers: 1,
            ready_bytes: 3,
            counters: crate::core::stats::QueueCounters {
                publish: 5,
                deliver: 2,
                ..Default::default()
            },
        }
    );
    // The consumer goes away without acking: both come back first, redelivered.
    remove_consumer(&q, 1);
    let ids: Vec<u64> = a.got.lock().unwrap().iter().map(|d| d.id).collect();
    apply(&q, q.requeue(&ids));
    let (d, left) = get(&q, true).unwrap();
    assert_eq!(
        (&d.message.body[..], d.redelivered, left),
        (&b"0"[..], true, 4)
    );
    let (d, _) = get(&q, true).unwrap();
    assert_eq!((&d.message.body[..], d.redelivered), (&b"1"[..], true));
    let (d, _) = get(&q, true).unwrap();
    assert_eq!((&d.message.body[..], d.redelivered), (&b"2"[..], false));
    let c = q.stats().counters;
    assert_eq!((c.get_no_ack, c.redeliver, c.ack), (3, 2, 0));
}

#[test]
fn exclusive_consumer_rules() {
    let q = queue();
    let a = TestSink::new(0);
    let mut ex = consumer(1, &a, true);
    ex.exclusive = true;
    apply(&q, q.add_consumer(ex).unwrap());
    assert!(matches!(
        q.add_consumer(consumer(2, &a, true)),
        Err(ConsumeError::ExclusiveConsumerPresent(_))
    ));
    remove_consumer(&q, 1);
    apply(&q, q.add_consumer(consumer(2, &a, true)).unwrap());
    let mut ex = consumer(3, &a, true);
    ex.exclusive = true;
    assert!(matches!(
        q.add_consumer(ex),
        Err(ConsumeError::QueueInUse(_))
    ));
}

#[test]
fn settle_purge_delete_counts() {
    let q = queue();
    for i in 0..3 {
        publish(&q, msg(&i.to_string()));
    }
    let (d, _) = get(&q, false).unwrap();
    assert_eq!(q.stats().unacked, 1);
    q.settle(&[d.id]);
    assert_eq!(q.stats().unacked, 0);
    assert_eq!(q.purge(), 2);
    publish(&q, msg("x"));
    let del = q.delete();
    assert_eq!(del.messages, 1);
    assert!(!publish(&q, msg("y")), "deleted queue refuses");
}

// ---- queue features: priorities, TTL, expiry, dead-lettering, limits, consumer choice ----

use crate::core::clock::ManualClock;
use crate::core::timer::Timer;
use crate::core::vhost::{ExchangeSpec, QueueSpec, VHost};
use switchboard_amqp::{BasicProperties, FieldValue};

thread_local! {
    /// The vhost of the test's [`Fixture`], which applies what queue operations return; none
    /// for a queue on its own, whose effects are dropped.
    static VHOST: std::cell::RefCell<Option<Arc<VHost>>> = const { std::cell::RefCell::new(None) };
}

/// Hands a queue operation's effects to the test's vhost.
fn apply(q: &Arc<Queue>, effects: QueueEffects) {
    VHOST.with(|v| {
        if let Some(vh) = v.borrow().as_ref() {
            vh.apply(q, effects);
        }
    });
}

fn publish_tracked(q: &Arc<Queue>, m: Arc<Message>) -> Enqueued {
    let mut e = q.enqueue(m);
    apply(q, std::mem::take(&mut e.effects));
    e
}

fn publish(q: &Arc<Queue>, m: Arc<Message>) -> bool {
    publish_tracked(q, m).accepted
}

fn get(q: &Arc<Queue>, no_ack: bool) -> Option<(Delivery, u32)> {
    let (got, effects) = q.get(no_ack);
    apply(q, effects);
    got
}

fn remove_consumer(q: &Arc<Queue>, id: u64) {
    if let Some(r) = q.remove_consumer(id) {
        apply(q, r.effects);
    }
}

/// A vhost on a manual clock, with the timer that clock drives.
struct Fixture {
    vh: Arc<VHost>,
    clock: Arc<ManualClock>,
    timer: Arc<Timer>,
}

impl Fixture {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let timer = Timer::new(clock.clone());
        let vh = VHost::with_timer("/", timer.clone());
        VHOST.with(|v| *v.borrow_mut() = Some(vh.clone()));
        Fixture { vh, clock, timer }
    }

    fn queue(&self, name: &str, args: &[(&str, FieldValue)]) -> Arc<Queue> {
        let spec = QueueSpec {
            name: name.into(),
            arguments: args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..Default::default()
        };
        self.vh.declare_queue(spec, false, 1).unwrap().queue
    }

    fn fanout(&self, name: &str, to: &str) {
        let spec = ExchangeSpec {
            name: name.into(),
            kind: "fanout".into(),
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        };
        self.vh.declare_exchange(spec, false).unwrap();
        self.vh
            .bind_queue(to, name, "", &FieldTable::new(), 1)
            .unwrap();
    }

    /// Moves the clock and lets the timer do what is due.
    fn advance(&self, ms: u64) {
        self.clock.advance(ms);
        self.timer.fire_due();
    }
}

fn msg_with(body: &str, properties: BasicProperties) -> Arc<Message> {
    Arc::new(Message::new(
        "ex".into(),
        "key".into(),
        properties,
        None,
        Bytes::from(body.to_owned()),
        MemoryCharge::default(),
    ))
}

fn prio(body: &str, priority: Option<u8>) -> Arc<Message> {
    msg_with(
        body,
        BasicProperties {
            priority,
            ..Default::default()
        },
    )
}

fn expiring(body: &str, expiration: &str) -> Arc<Message> {
    msg_with(
        body,
        BasicProperties {
            expiration: Some(expiration.into()),
            ..Default::default()
        },
    )
}

fn get_body(q: &Arc<Queue>) -> Option<String> {
    get(q, true).map(|(d, _)| String::from_utf8_lossy(&d.message.body).into_owned())
}

fn drain_bodies(q: &Arc<Queue>) -> Vec<String> {
    std::iter::from_fn(|| get_body(q)).collect()
}

/// A clock that counts how often it is read.
#[derive(Debug, Default)]
struct CountingClock {
    reads: AtomicU32,
}

impl crate::core::clock::Clock for CountingClock {
    fn now_ms(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst);
        1_700_000_000_000
    }
}

#[test]
fn the_clock_is_read_only_when_a_message_can_expire() {
    let clock = Arc::new(CountingClock::default());
    let vh = VHost::with_timer("/", Timer::new(clock.clone()));
    VHOST.with(|v| *v.borrow_mut() = Some(vh.clone()));
    let spec = QueueSpec {
        name: "q".into(),
        ..Default::default()
    };
    let q = vh.declare_queue(spec, false, 1).unwrap().queue;
    let sink = TestSink::new(1);
    apply(&q, q.add_consumer(consumer(1, &sink, false)).unwrap());
    let reads = || clock.reads.load(Ordering::SeqCst);

    let before = reads();
    for body in ["a", "b", "c"] {
        assert!(publish(&q, msg(body)));
    }
    apply(&q, q.dispatch());
    assert_eq!(
        reads(),
        before,
        "no TTL anywhere: publish and dispatch skip the clock"
    );
    assert_eq!(sink.bodies(), ["a"], "prefetch 1 holds the rest ready");

    assert!(publish(&q, expiring("d", "60000")));
    let after_expiring = reads();
    assert!(
        after_expiring > before,
        "a message with an expiration needs the time"
    );
    apply(&q, q.dispatch());
    assert!(
        reads() > after_expiring,
        "a ready message can expire: dispatch reads the clock"
    );
}

fn x_death(m: &Message) -> Vec<FieldTable> {
    match m
        .properties()
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    {
        Some(FieldValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                FieldValue::Table(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

#[test]
fn priority_levels_highest_first_fifo_within_and_requeue_in_place() {
    let f = Fixture::new();
    let q = f.queue("p", &[("x-max-priority", FieldValue::U8(5))]);
    for (body, p) in [
        ("a", Some(0)),
        ("b", Some(5)),
        ("c", Some(3)),
        ("d", Some(9)),
        ("e", None),
        ("f", Some(3)),
    ] {
        publish(&q, prio(body, p));
    }
    let (d, _) = get(&q, false).unwrap();
    assert_eq!(&d.message.body[..], b"b");
    apply(&q, q.requeue(&[d.id]));
    assert_eq!(drain_bodies(&q), vec!["b", "d", "c", "f", "a", "e"]);
    // Without x-max-priority message priorities are ignored.
    let plain = f.queue("plain", &[]);
    publish(&plain, prio("1", Some(0)));
    publish(&plain, prio("2", Some(9)));
    assert_eq!(drain_bodies(&plain), vec!["1", "2"]);
}

#[test]
fn message_ttl_expires_from_the_head_by_timer_and_the_lower_ttl_wins() {
    let f = Fixture::new();
    let q = f.queue("t", &[("x-message-ttl", FieldValue::I32(1000))]);
    publish(&q, msg("a"));
    publish(&q, expiring("b", "100"));
    publish(&q, expiring("c", "5000"));
    assert_eq!(f.timer.pending(), 1);
    f.advance(999);
    assert_eq!(q.stats().ready, 3, "nothing is due before 1000 ms");
    f.advance(1);
    assert_eq!(q.stats().ready, 0);
    assert_eq!(q.expired_count(), 3);
    // Per-message TTL alone; it is removed from the head without anyone asking.
    let p = f.queue("per-message", &[]);
    publish(&p, expiring("x", "50"));
    publish(&p, msg("y"));
    f.advance(50);
    assert_eq!(p.stats().ready, 1);
    assert_eq!(drain_bodies(&p), vec!["y"]);
}

#[test]
fn expired_messages_are_never_delivered_even_before_the_timer_runs() {
    let f = Fixture::new();
    let q = f.queue("t", &[]);
    publish(&q, expiring("old", "10"));
    publish(&q, msg("new"));
    f.clock.advance(10);
    assert_eq!(get_body(&q).as_deref(), Some("new"));
    let a = TestSink::new(0);
    publish(&q, expiring("late", "10"));
    f.clock.advance(10);
    apply(&q, q.add_consumer(consumer(1, &a, true)).unwrap());
    assert!(a.bodies().is_empty());
    assert_eq!(q.expired_count(), 2);
}

#[test]
fn ttl_zero_delivers_now_or_expires() {
    let f = Fixture::new();
    let q = f.queue("z", &[("x-message-ttl", FieldValue::I32(0))]);
    publish(&q, msg("nobody"));
    assert_eq!(q.stats().ready, 0);
    let a = TestSink::new(1);
    apply(&q, q.add_consumer(consumer(1, &a, false)).unwrap());
    publish(&q, msg("taken"));
    publish(&q, msg("no credit"));
    assert_eq!(a.bodies(), vec!["taken"]);
    assert_eq!(q.stats().ready, 0);
    assert_eq!(q.expired_count(), 2);
}

#[test]
fn unused_queue_expires_and_use_postpones_it() {
    let f = Fixture::new();
    let args = [("x-expires", FieldValue::I32(500))];
    let q = f.queue("idle", &args);
    f.advance(400);
    f.queue("idle", &args); // a redeclaration is a use
    f.advance(400);
    assert!(f.vh.queue("idle").is_some());
    get(&q, true); // so is basic.get
    f.advance(499);
    assert!(f.vh.queue("idle").is_some());
    let a = TestSink::new(0);
    apply(&q, q.add_consumer(consumer(1, &a, true)).unwrap());
    f.advance(10_000);
    assert!(f.vh.queue("idle").is_some(), "a consumer keeps it");
    remove_consumer(&q, 1);
    f.advance(499);
    assert!(f.vh.queue("idle").is_some());
    f.advance(1);
    assert!(f.vh.queue("idle").is_none());
    assert!(q.is_deleted());
}

#[test]
fn rejected_expired_and_dropped_messages_are_dead_lettered_with_x_death() {
    let f = Fixture::new();
    let dead = f.queue("dead", &[]);
    f.fanout("dlx", "dead");
    let q = f.queue(
        "work",
        &[
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ("x-message-ttl", FieldValue::I32(100)),
            ("x-max-length", FieldValue::I32(2)),
        ],
    );
    publish(&q, msg("rejected"));
    let (d, _) = get(&q, false).unwrap();
    apply(&q, q.reject(&[d.id]));
    publish(&q, msg("one"));
    publish(&q, msg("two"));
    publish(&q, msg("three")); // drops "one" from the head
    f.advance(100); // "two" and "three" expire
    let reasons: Vec<(String, FieldValue, FieldValue)> = std::iter::from_fn(|| get(&dead, true))
        .map(|(d, _)| {
            let x = x_death(&d.message);
            assert_eq!(x.len(), 1);
            assert_eq!(x[0]["queue"], FieldValue::string("work"));
            assert_eq!(x[0]["count"], FieldValue::I64(1));
            assert_eq!(d.message.exchange, "dlx");
            assert_eq!(d.message.routing_key, "q", "the message's own key");
            (
                String::from_utf8_lossy(&d.message.body).into_owned(),
                x[0]["reason"].clone(),
                d.message.properties().headers.as_ref().unwrap()["x-first-death-reason"].clone(),
            )
        })
        .collect();
    let expect = |b: &str, r: &str| (b.to_owned(), FieldValue::string(r), FieldValue::string(r));
    assert_eq!(
        reasons,
        vec![
            expect("rejected", "rejected"),
            expect("one", "maxlen"),
            expect("two", "expired"),
            expect("three", "expired"),
        ]
    );
}

#[test]
fn retry_with_back_off_goes_round_and_a_cycle_without_rejection_is_dropped() {
    let f = Fixture::new();
    let work = f.queue(
        "work",
        &[
            ("x-dead-letter-exchange", FieldValue::string("")),
            ("x-dead-letter-routing-key", FieldValue::string("retry")),
        ],
    );
    f.queue(
        "retry",
        &[
            ("x-message-ttl", FieldValue::I32(200)),
            ("x-dead-letter-exchange", FieldValue::string("")),
            ("x-dead-letter-routing-key", FieldValue::string("work")),
        ],
    );
    publish(&work, msg("job"));
    for round in 1..=3i64 {
        let (d, _) = get(&work, false).unwrap();
        apply(&work, work.reject(&[d.id]));
        assert!(get(&work, true).is_none());
        f.advance(199);
        assert!(get(&work, true).is_none(), "still backing off");
        f.advance(1);
        let (d, _) = get(&work, false).unwrap();
        let x = x_death(&d.message);
        assert_eq!(x.len(), 2);
        assert_eq!(x[0]["queue"], FieldValue::string("retry"));
        assert_eq!(x[0]["reason"], FieldValue::string("expired"));
        assert_eq!(x[0]["count"], FieldValue::I64(round));
        assert_eq!(x[1]["queue"], FieldValue::string("work"));
        assert_eq!(x[1]["count"], FieldValue::I64(round));
        apply(&work, work.requeue(&[d.id]));
    }
    // A queue that dead-letters expired messages into itself drops them instead of looping.
    let selfish = f.queue(
        "selfish",
        &[
            ("x-message-ttl", FieldValue::I32(10)),
            ("x-dead-letter-exchange", FieldValue::string("")),
        ],
    );
    publish(
        &selfish,
        Arc::new(Message::new(
            String::new(),
            "selfish".into(),
            Default::default(),
            None,
            Bytes::from_static(b"x"),
            MemoryCharge::default(),
        )),
    );
    f.advance(10);
    assert_eq!(selfish.stats().ready, 0, "the cycle is broken at once");
    assert_eq!(selfish.expired_count(), 1);
}

#[test]
fn length_limits_drop_head_or_refuse() {
    let f = Fixture::new();
    let bytes = f.queue("bytes", &[("x-max-length-bytes", FieldValue::I32(5))]);
    for b in ["aa", "bb", "cc"] {
        assert!(publish(&bytes, msg(b)));
    }
    assert_eq!(drain_bodies(&bytes), vec!["bb", "cc"]);
    let dead = f.queue("dead", &[]);
    f.fanout("dlx", "dead");
    let reject = f.queue(
        "reject",
        &[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", FieldValue::string("reject-publish")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
        ],
    );
    assert!(!publish_tracked(&reject, msg("1")).refused);
    let e = publish_tracked(&reject, msg("2"));
    assert!(e.refused && !e.accepted);
    assert_eq!(drain_bodies(&reject), vec!["1"]);
    assert!(
        get(&dead, true).is_none(),
        "reject-publish does not dead-letter"
    );
    let dlx = f.queue(
        "reject-dlx",
        &[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", FieldValue::string("reject-publish-dlx")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
        ],
    );
    publish(&dlx, msg("kept"));
    assert!(publish_tracked(&dlx, msg("refused")).refused);
    let (d, _) = get(&dead, true).unwrap();
    assert_eq!(&d.message.body[..], b"refused");
    assert_eq!(
        x_death(&d.message)[0]["reason"],
        FieldValue::string("maxlen")
    );
}

#[test]
fn consumer_priorities_and_single_active_consumer() {
    let f = Fixture::new();
    let q = f.queue("cp", &[]);
    let (high, low) = (TestSink::new(1), TestSink::new(0));
    apply(
        &q,
        q.add_consumer_with_priority(consumer(1, &low, false), 0)
            .unwrap(),
    );
    apply(
        &q,
        q.add_consumer_with_priority(consumer(2, &high, false), 10)
            .unwrap(),
    );
    for i in 0..3 {
        publish(&q, msg(&i.to_string()));
    }
    assert_eq!(high.bodies(), vec!["0"]);
    assert_eq!(
        low.bodies(),
        vec!["1", "2"],
        "low gets what high has no credit for"
    );

    let sac = f.queue(
        "sac",
        &[("x-single-active-consumer", FieldValue::Bool(true))],
    );
    let (first, second) = (TestSink::new(2), TestSink::new(0));
    apply(&sac, sac.add_consumer(consumer(3, &first, false)).unwrap());
    apply(&sac, sac.add_consumer(consumer(4, &second, false)).unwrap());
    for i in 0..4 {
        publish(&sac, msg(&i.to_string()));
    }
    assert_eq!(first.bodies(), vec!["0", "1"]);
    assert!(
        second.bodies().is_empty(),
        "only the active consumer receives"
    );
    remove_consumer(&sac, 3);
    assert_eq!(second.bodies(), vec!["2", "3"], "the next one takes over");
}
