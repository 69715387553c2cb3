//! Hot-path codec benchmarks: decoding a published message (method + header + body frames) and
//! encoding a delivery with `encode_content`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard_amqp::*;

const FRAME_MAX: u32 = 131_072;

fn properties() -> BasicProperties {
    BasicProperties {
        content_type: Some("application/json".into()),
        delivery_mode: Some(2),
        message_id: Some("7c9e6679-7425-40de-944b-e07fc1f90ae7".into()),
        timestamp: Some(1_700_000_000),
        ..Default::default()
    }
}

fn published(body: &[u8]) -> BytesMut {
    let method = Method::BasicPublish(BasicPublish {
        exchange: "amq.topic".into(),
        routing_key: "orders.eu.created".into(),
        mandatory: false,
        immediate: false,
    });
    let mut out = BytesMut::new();
    encode_content(&mut out, 1, &method, &properties(), None, body, FRAME_MAX);
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_publish");
    for size in [16usize, 1024] {
        let body = vec![0xA5u8; size];
        let wire = published(&body);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| {
                    while let Some(frame) = decode_frame(&mut buf, FRAME_MAX).unwrap() {
                        black_box(frame);
                    }
                    buf
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_deliver");
    let method = Method::BasicDeliver(BasicDeliver {
        consumer_tag: "amq.ctag-3Fq9cB2Ldw1pXHk0sY7zRg".into(),
        delivery_tag: 123_456,
        redelivered: false,
        exchange: "amq.topic".into(),
        routing_key: "orders.eu.created".into(),
    });
    let props = properties();
    let mut raw = BytesMut::new();
    props.encode(&mut raw);
    for size in [16usize, 1024] {
        let body = vec![0xA5u8; size];
        let mut out = BytesMut::with_capacity(4096);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                out.clear();
                encode_content(
                    &mut out,
                    1,
                    black_box(&method),
                    &props,
                    None,
                    black_box(&body),
                    FRAME_MAX,
                );
                black_box(out.len())
            })
        });
        // What the broker did per delivery before `DeliverArgs`: build the method from the
        // consumer's tag and the message's names (three `String` clones), then encode it.
        g.bench_function(format!("{size}B_built_method_raw_properties"), |b| {
            let Method::BasicDeliver(template) = &method else {
                unreachable!("a basic.deliver")
            };
            b.iter(|| {
                out.clear();
                let built = Method::BasicDeliver(BasicDeliver {
                    consumer_tag: black_box(&template.consumer_tag).clone(),
                    delivery_tag: 123_456,
                    redelivered: false,
                    exchange: black_box(&template.exchange).clone(),
                    routing_key: black_box(&template.routing_key).clone(),
                });
                encode_content(
                    &mut out,
                    1,
                    &built,
                    &props,
                    Some(&raw),
                    black_box(&body),
                    FRAME_MAX,
                );
                black_box(out.len())
            })
        });
        g.bench_function(format!("{size}B_deliver_args_raw_properties"), |b| {
            let args = DeliverArgs {
                consumer_tag: "amq.ctag-3Fq9cB2Ldw1pXHk0sY7zRg",
                delivery_tag: 123_456,
                redelivered: false,
                exchange: "amq.topic",
                routing_key: "orders.eu.created",
            };
            b.iter(|| {
                out.clear();
                encode_content(
                    &mut out,
                    1,
                    black_box(&args),
                    &props,
                    Some(&raw),
                    black_box(&body),
                    FRAME_MAX,
                );
                black_box(out.len())
            })
        });
        g.bench_function(format!("{size}B_raw_properties"), |b| {
            b.iter(|| {
                out.clear();
                encode_content(
                    &mut out,
                    1,
                    black_box(&method),
                    &props,
                    Some(&raw),
                    black_box(&body),
                    FRAME_MAX,
                );
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
