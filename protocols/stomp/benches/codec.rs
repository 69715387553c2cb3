//! Hot-path codec benchmarks: decoding a SEND (content-length body and NUL-terminated body) and
//! encoding a MESSAGE from borrowed parts, as the adapter does for every delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard_stomp::*;

fn send(body: &[u8], with_length: bool) -> BytesMut {
    let mut out = BytesMut::new();
    if with_length {
        let f = Frame::new(Command::Send)
            .with("destination", "/topic/orders.eu.created")
            .with("content-type", "application/json")
            .with("persistent", "true")
            .with("receipt", "42")
            .with_body(body.to_vec());
        encode(&f, Version::V1_2, &mut out);
    } else {
        out.extend_from_slice(
            b"SEND\ndestination:/topic/orders.eu.created\ncontent-type:application/json\n\
              persistent:true\nreceipt:42\n\n",
        );
        out.extend_from_slice(body);
        out.extend_from_slice(b"\0");
    }
    out
}

fn decode_send(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_send");
    let limits = Limits::default();
    for size in [16usize, 1024] {
        let body = vec![b'a'; size];
        for (name, with_length) in [("content-length", true), ("nul", false)] {
            let wire = send(&body, with_length);
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{size}B/{name}"), |b| {
                b.iter_batched(
                    || wire.clone(),
                    |mut buf| black_box(decode(&mut buf, Version::V1_2, &limits)),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn encode_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_message");
    for size in [16usize, 1024] {
        let body = vec![b'a'; size];
        let headers = [
            ("subscription", "sub-0"),
            ("destination", "/topic/orders.eu.created"),
            (
                "message-id",
                "T_sub-0@@session-abcdefghijklmnopqrstuv@@123456",
            ),
            ("redelivered", "false"),
            ("ack", "T_sub-0@@session-abcdefghijklmnopqrstuv@@123456"),
            ("content-type", "application/json"),
            ("persistent", "true"),
        ];
        let mut out = BytesMut::with_capacity(64 * 1024);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                out.clear();
                encode_parts(&mut out, Version::V1_2, Command::Message, headers, &body);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode_send, encode_message);
criterion_main!(benches);
