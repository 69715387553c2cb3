//! Big numbers: adding or removing one binding, subscription or queue costs the same whether
//! there are a thousand or ten thousand, and a publish reaching N queues costs O(N). Each case
//! times the work at n and at 10·n (best of three, and in the test thread's own CPU time where
//! the work runs on it, so a busy machine does not decide) and asserts the ratio is far from the
//! 100× a quadratic cost gives.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::mqtt::{leave_session, session_with_subscriptions, subscribed_session, RawMqtt};
use common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::core::memory::MemoryCharge;
use switchboard::core::vhost::QueueSpec;
use switchboard::core::{Consumer, ConsumerSink, Delivery, Destination, Exchange, ExchangeKind};
use switchboard::core::{Message, Publish, PublishTo, Queue, VHost};
use switchboard::sys::thread_cpu_time;
use switchboard_amqp::FieldTable;

/// Linear work at 10× the size takes about 10× the time; quadratic, 100×.
const MAX_RATIO: f64 = 45.0;

/// The best of three timings of `work(n)`.
fn best_of_three(n: usize, work: &mut impl FnMut(usize) -> Duration) -> Duration {
    (0..3).map(|_| work(n)).min().unwrap_or_default()
}

/// Asserts that `work` scales (close to) linearly from `n` to `10 n`.
fn assert_linear(what: &str, n: usize, mut work: impl FnMut(usize) -> Duration) {
    let small = best_of_three(n, &mut work);
    let large = best_of_three(10 * n, &mut work);
    assert_tenfold(what, n, small, large);
}

/// Asserts that `large`, the time taken at `10 n`, is (close to) ten times `small`, at `n`.
fn assert_tenfold(what: &str, n: usize, small: Duration, large: Duration) {
    // A floor keeps timer resolution out of the ratio.
    let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-4);
    eprintln!(
        "{what}: {n}: {small:?}, {}: {large:?}, ratio {ratio:.1}",
        10 * n
    );
    assert!(
        ratio < MAX_RATIO,
        "{what}: {n} took {small:?}, {} took {large:?} (ratio {ratio:.1})",
        10 * n
    );
}

fn queue(name: String) -> Arc<Queue> {
    Arc::new(Queue::new(
        name,
        "/".into(),
        false,
        false,
        None,
        FieldTable::new(),
    ))
}

fn exchange(kind: ExchangeKind) -> Exchange {
    Exchange::new("x".into(), kind, false, false, false, FieldTable::new())
}

#[test]
fn many_bindings_of_one_queue_bind_and_unbind_in_linear_time() {
    for kind in [ExchangeKind::Topic, ExchangeKind::Direct] {
        assert_linear(&format!("{kind:?}: one queue, n keys"), 2_000, |n| {
            let ex = exchange(kind);
            let q = Destination::Queue(queue("q".into()));
            let none = FieldTable::new();
            let t = thread_cpu_time();
            for i in 0..n {
                ex.bind(q.clone(), &format!("k.{i}.*"), &none).unwrap();
            }
            for i in (0..n).step_by(2) {
                assert!(ex.unbind(&q, &format!("k.{i}.*"), &none));
            }
            assert_eq!(ex.unbind_destination(&q).len(), n / 2);
            thread_cpu_time() - t
        });
    }
}

#[test]
fn many_queues_under_one_key_bind_unbind_and_route_in_linear_time() {
    for kind in [
        ExchangeKind::Topic,
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
    ] {
        assert_linear(&format!("{kind:?}: n queues, one key"), 2_000, |n| {
            let ex = exchange(kind);
            let qs: Vec<Destination> = (0..n)
                .map(|i| Destination::Queue(queue(format!("q{i}"))))
                .collect();
            let none = FieldTable::new();
            let t = thread_cpu_time();
            for q in &qs {
                ex.bind(q.clone(), "k", &none).unwrap();
            }
            let msg = Message::new(
                "x".into(),
                "k".into(),
                Default::default(),
                None,
                bytes::Bytes::new(),
                MemoryCharge::default(),
            );
            let mut reached = 0;
            ex.for_each_destination(&msg, |_| reached += 1);
            assert_eq!(reached, n);
            for q in qs.iter().rev() {
                assert!(ex.unbind(q, "k", &none));
            }
            thread_cpu_time() - t
        });
    }
}

#[test]
fn fan_out_to_n_queues_is_linear_in_n() {
    assert_linear("route to n queues", 2_000, |n| {
        let vh = VHost::new("/");
        for i in 0..n {
            let name = format!("q{i}");
            vh.declare_queue(
                QueueSpec {
                    name: name.clone(),
                    ..Default::default()
                },
                false,
                1,
            )
            .unwrap();
            // Two bindings each, so that de-duplication has work to do.
            for key in ["a.*", "#"] {
                vh.bind_queue(&name, "amq.topic", key, &FieldTable::new(), 1)
                    .unwrap();
            }
        }
        let ex = vh.exchange("amq.topic").unwrap();
        let msg = Arc::new(Message::new(
            "amq.topic".into(),
            "a.b".into(),
            Default::default(),
            None,
            bytes::Bytes::new(),
            MemoryCharge::default(),
        ));
        let mut queues = Vec::new();
        let t = thread_cpu_time();
        for _ in 0..5 {
            let to = PublishTo::Exchange(&ex);
            let outcome = vh.publish(
                Publish {
                    to,
                    message: &msg,
                    holdable: false,
                },
                &mut queues,
            );
            assert_eq!(outcome.queues, n);
        }
        thread_cpu_time() - t
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_session_with_many_subscriptions_connects_and_disconnects_in_linear_time() {
    let b = TestBroker::start().await;
    let mut times = Vec::new();
    for n in [1_000, 10_000] {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            best = best.min(session_with_subscriptions(b.mqtt, b.broker(), n).await);
        }
        times.push(best);
    }
    assert_tenfold("MQTT session, subscriptions", 1_000, times[0], times[1]);
    b.stop().await;
}

/// The same session on a broker served over in-memory streams on this one thread, so that the
/// thread's CPU time is the broker's work (and the client's) and nothing else: subscribing
/// 20,000 filters, unsubscribing half and ending the session costs about ten times what 2,000
/// do, and every subscription is unbound at the end.
#[tokio::test(flavor = "current_thread")]
async fn an_mqtt_session_with_many_subscriptions_costs_cpu_linear_in_them() {
    let b = common::in_memory::broker(|_| {});
    let mut times = Vec::new();
    for n in [2_000, 20_000] {
        let mut best = Duration::MAX;
        for _ in 0..2 {
            let t = thread_cpu_time();
            let c = RawMqtt::over(
                common::in_memory::connect(&b, common::in_memory::Protocol::Mqtt),
                switchboard_mqtt::Protocol::V311,
            );
            let (c, queue) = subscribed_session(c, n).await;
            leave_session(c, &b.broker, &queue).await;
            best = best.min(thread_cpu_time() - t);
        }
        times.push(best);
    }
    assert_tenfold(
        "MQTT session, CPU, subscriptions",
        2_000,
        times[0],
        times[1],
    );
    let topic = b.vhost("/").and_then(|v| v.exchange("amq.topic")).unwrap();
    assert_eq!(topic.binding_count(), 0, "every subscription unbound");
}

/// A consumer that counts what it is given and how often its credit is asked for.
#[derive(Default)]
struct CountingSink {
    delivered: std::sync::atomic::AtomicU32,
    asked: std::sync::atomic::AtomicU32,
}

impl ConsumerSink for CountingSink {
    fn try_reserve(&self, _needs_ack: bool) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed);
        true
    }
    fn deliver(&self, _queue: &Arc<Queue>, _delivery: Delivery) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    fn cancelled(&self, _queue: &Queue, _consumer_tag: &str) {}
}

/// Consumers of one queue: `SWITCHBOARD_SOAK=1` for the 100,000 of the README's figures.
fn consumer_count() -> usize {
    if std::env::var_os("SWITCHBOARD_SOAK").is_some() {
        100_000
    } else {
        20_000
    }
}

/// Many consumers on one queue: each is added and removed without a scan of the others
/// (timings printed, not asserted), round-robin stays exact through removals in the middle,
/// and each delivery asks one consumer for credit, not all of them.
#[test]
fn many_consumers_of_one_queue_come_and_go_and_share_messages_round_robin() {
    let n = consumer_count();
    let q = queue("many-consumers".into());
    let sinks: Vec<Arc<CountingSink>> = (0..n).map(|_| Arc::default()).collect();
    let message = || {
        Arc::new(Message::new(
            String::new(),
            "many-consumers".into(),
            Default::default(),
            None,
            bytes::Bytes::from_static(b"m"),
            MemoryCharge::default(),
        ))
    };
    let t = Instant::now();
    for (i, sink) in sinks.iter().enumerate() {
        let effects = q
            .add_consumer(Consumer {
                id: i as u64,
                tag: format!("c{i}"),
                no_ack: true,
                exclusive: false,
                owner: 1,
                sink: sink.clone(),
            })
            .expect("consumer added");
        assert!(effects.is_empty(), "nothing to dead-letter");
    }
    let added = t.elapsed();
    let t = Instant::now();
    for _ in 0..n {
        assert!(q.enqueue(message()).accepted);
    }
    let delivered = t.elapsed();
    let count = |s: &CountingSink| s.delivered.load(Ordering::Relaxed);
    assert!(sinks.iter().all(|s| count(s) == 1), "one message each");
    let asked: u32 = sinks.iter().map(|s| s.asked.load(Ordering::Relaxed)).sum();
    assert_eq!(asked as usize, n, "one credit check per delivery");
    // Every other consumer goes, from the middle out.
    let t = Instant::now();
    let (low, high) = (0..n).step_by(2).partition::<Vec<_>, _>(|&i| i < n / 2);
    for i in low.into_iter().rev().chain(high) {
        assert!(q.remove_consumer(i as u64).is_some());
    }
    let removed = t.elapsed();
    assert_eq!(q.consumer_count() as usize, n / 2);
    for _ in 0..n / 2 {
        assert!(q.enqueue(message()).accepted);
    }
    for (i, s) in sinks.iter().enumerate() {
        let expected = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(count(s), expected, "consumer {i}");
    }
    let t = Instant::now();
    for i in (1..n).step_by(2) {
        assert!(q.remove_consumer(i as u64).is_some());
    }
    let removed_rest = t.elapsed();
    assert_eq!(q.consumer_count(), 0);
    eprintln!(
        "{n} consumers of one queue: added in {added:?}, {n} deliveries in {delivered:?}, \
         half removed in {removed:?}, the rest in {removed_rest:?}"
    );
}
