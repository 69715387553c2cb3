//! Hot-path codec benchmarks: decoding a PUBLISH (v3.1.1 bare, v5 with typical properties) and
//! encoding one for a subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard_mqtt::*;

fn publish(size: usize, v5: bool) -> Publish {
    let mut properties = Properties::default();
    if v5 {
        properties.content_type = Some("application/json".into());
        properties.message_expiry_interval = Some(60);
        properties
            .user_properties
            .push(("site".into(), "north".into()));
    }
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/k1/temperature".into(),
        packet_id: Some(42),
        properties,
        payload: Bytes::from(vec![0xA5u8; size]),
    }
}

fn wire(p: &Publish, v: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(&Packet::Publish(p.clone()), v, &mut out).expect("encode");
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mqtt_publish");
    g.throughput(Throughput::Elements(1));
    for (name, v) in [("v311", Protocol::V311), ("v5", Protocol::V5)] {
        for size in [16usize, 1024] {
            let p = publish(size, v.is_v5());
            let bytes = wire(&p, v);
            g.bench_function(format!("decode_{name}_{size}B"), |b| {
                b.iter_batched(
                    || bytes.clone(),
                    |mut buf| black_box(decode(&mut buf, v, usize::MAX)),
                    BatchSize::SmallInput,
                )
            });
            let packet = Packet::Publish(p);
            let mut out = BytesMut::with_capacity(4096);
            g.bench_function(format!("encode_{name}_{size}B"), |b| {
                b.iter(|| {
                    out.clear();
                    encode(black_box(&packet), v, &mut out).expect("encode");
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
