//! Routing hot paths: topic matching against 10k bindings, the worst cases a client can bind
//! (`#` repeated 20 times, 128-word keys), and a publish routed through a topic exchange into a
//! queue.
//!
//! Run: `cargo bench --bench routing`
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use switchboard::core::memory::MemoryCharge;
use switchboard::core::topic::TopicTrie;
use switchboard::core::vhost::{ExchangeSpec, QueueSpec};
use switchboard::core::{Message, Publish, PublishTo, VHost};
use switchboard_amqp::FieldTable;

/// 10,000 patterns shaped like IoT subscriptions: `site.<s>.device.<d>.<metric>`, with a share
/// of `*` and `#` wildcards.
fn patterns() -> Vec<String> {
    (0..10_000)
        .map(|i| match i % 10 {
            0 => format!("site.{}.#", i % 100),
            1 => format!("site.*.device.{}.temp", i),
            2 => format!("*.{}.device.*.humidity", i % 100),
            _ => format!("site.{}.device.{}.temp", i % 100, i),
        })
        .collect()
}

fn topic_matching(c: &mut Criterion) {
    let mut trie = TopicTrie::new();
    for (i, p) in patterns().iter().enumerate() {
        trie.insert(p, i);
    }
    let mut g = c.benchmark_group("topic_match_10k_bindings");
    for key in [
        "site.42.device.4242.temp",
        "site.7.device.99999.pressure",
        "other.key",
    ] {
        g.bench_function(key, |b| {
            b.iter(|| {
                let mut n = 0usize;
                trie.for_each_match(black_box(key), |_| n += 1);
                n
            })
        });
    }
    g.finish();
}

/// Patterns that make a backtracking matcher exponential, against keys at the 128-word limit:
/// each match must take microseconds.
fn topic_matching_worst_cases(c: &mut Criterion) {
    let hashes = ["#"; 20].join(".");
    let cases = [
        ("hash_x20", vec![hashes.clone()]),
        ("hash_x20_then_z", vec![format!("{hashes}.z")]),
        (
            "hash_word_x20_then_z",
            vec![format!("{}.z", ["#.a"; 20].join("."))],
        ),
        (
            "star_hash_x20_then_z",
            vec![format!("{}.#.z", ["*.#"; 20].join("."))],
        ),
        // All of them, and 128-word patterns, sharing one trie.
        (
            "all_and_128_word_patterns",
            vec![
                hashes.clone(),
                format!("{hashes}.z"),
                format!("{}.z", ["#.a"; 20].join(".")),
                format!("{}.#.z", ["*.#"; 20].join(".")),
                vec!["a"; 128].join("."),
                vec!["*"; 128].join("."),
                format!("{}.#", vec!["#.a"; 63].join(".")),
            ],
        ),
    ];
    let key = vec!["a"; 128].join(".");
    let key_z = format!("{}.z", vec!["a"; 127].join("."));
    let mut g = c.benchmark_group("topic_match_worst_case_128_words");
    for (name, patterns) in &cases {
        let mut trie = TopicTrie::new();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, i);
        }
        for (suffix, k) in [("no_z", &key), ("z", &key_z)] {
            g.bench_function(format!("{name}/{suffix}"), |b| {
                b.iter(|| {
                    let mut n = 0usize;
                    trie.for_each_match(black_box(k), |_| n += 1);
                    n
                })
            });
        }
    }
    g.finish();
}

fn message(routing_key: &str, body: &Bytes) -> Message {
    Message::new(
        "bench".into(),
        routing_key.into(),
        Default::default(),
        None,
        body.clone(),
        MemoryCharge::default(),
    )
}

fn route_and_enqueue(c: &mut Criterion) {
    let vh = VHost::new("/");
    vh.declare_exchange(
        ExchangeSpec {
            name: "bench".into(),
            kind: "topic".into(),
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        },
        false,
    )
    .unwrap();
    let q = vh
        .declare_queue(
            QueueSpec {
                name: "q".into(),
                ..Default::default()
            },
            false,
            1,
        )
        .unwrap()
        .queue;
    for p in patterns().iter().take(1000) {
        vh.bind_queue("q", "bench", p, &FieldTable::new(), 1)
            .unwrap();
    }
    let ex = vh.exchange("bench").unwrap();
    let body = Bytes::from_static(&[0u8; 16]);
    let mut queues = Vec::new();
    c.bench_function("route_topic_1k_bindings_and_enqueue_16B", |b| {
        b.iter(|| {
            let m = Arc::new(message("site.42.device.42.temp", &body));
            let to = PublishTo::Exchange(&ex);
            vh.publish(
                Publish {
                    to,
                    message: &m,
                    holdable: false,
                },
                &mut queues,
            );
            // Keep the queue from growing across iterations.
            if q.message_count() > 10_000 {
                q.purge();
            }
        })
    });
}

criterion_group!(
    benches,
    topic_matching,
    topic_matching_worst_cases,
    route_and_enqueue
);
criterion_main!(benches);
