//! Property tests: every method, every property subset and nested field tables survive
//! encode → decode; whole messages survive encode_content → decode_frame.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::{Bytes, BytesMut};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::strategy::Union;
use switchboard_amqp::*;

// ---- field values and tables ----------------------------------------------------------------

fn shortstr() -> BoxedStrategy<String> {
    // at most 63 chars of at most 4 bytes: always fits a short string (255 bytes)
    prop::string::string_regex("(?s).{0,63}").unwrap().boxed()
}

fn longstr() -> BoxedStrategy<Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from).boxed()
}

fn leaf_value() -> BoxedStrategy<FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<f32>().prop_map(|f| FieldValue::F32(if f.is_nan() { 0.5 } else { f })),
        any::<f64>().prop_map(|f| FieldValue::F64(if f.is_nan() { 0.25 } else { f })),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| FieldValue::Decimal(Decimal { scale, value })),
        longstr().prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        longstr().prop_map(FieldValue::ByteArray),
    ]
    .boxed()
}

fn value() -> BoxedStrategy<FieldValue> {
    leaf_value()
        .prop_recursive(5, 96, 8, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..8).prop_map(FieldValue::Array),
                btree_map(shortstr(), inner, 0..8).prop_map(FieldValue::Table),
            ]
        })
        .boxed()
}

fn table() -> BoxedStrategy<FieldTable> {
    btree_map(shortstr(), value(), 0..6).boxed()
}

// ---- methods --------------------------------------------------------------------------------

/// A strategy for each argument type.
trait Gen: Sized + std::fmt::Debug + Clone + 'static {
    fn gen() -> BoxedStrategy<Self>;
}
impl Gen for bool {
    fn gen() -> BoxedStrategy<Self> {
        any::<bool>().boxed()
    }
}
impl Gen for u8 {
    fn gen() -> BoxedStrategy<Self> {
        any::<u8>().boxed()
    }
}
impl Gen for u16 {
    fn gen() -> BoxedStrategy<Self> {
        any::<u16>().boxed()
    }
}
impl Gen for u32 {
    fn gen() -> BoxedStrategy<Self> {
        any::<u32>().boxed()
    }
}
impl Gen for u64 {
    fn gen() -> BoxedStrategy<Self> {
        any::<u64>().boxed()
    }
}
impl Gen for String {
    fn gen() -> BoxedStrategy<Self> {
        shortstr()
    }
}
impl Gen for Bytes {
    fn gen() -> BoxedStrategy<Self> {
        longstr()
    }
}
impl Gen for FieldTable {
    fn gen() -> BoxedStrategy<Self> {
        table()
    }
}

/// The strategy for one struct field, its type taken from the field accessor.
fn field<S, T: Gen>(_: fn(&S) -> &T) -> BoxedStrategy<T> {
    T::gen()
}

/// `arb!(Name { field, … })`: a strategy for `Method::Name` with every field random.
macro_rules! arb {
    ($name:ident {}) => {
        Just(Method::$name($name {})).boxed()
    };
    ($name:ident { $($f:ident),+ }) => {
        ($(field(|x: &$name| &x.$f),)+)
            .prop_map(|($($f,)+)| Method::$name($name { $($f),+ }))
            .boxed()
    };
}

fn all_methods() -> Vec<BoxedStrategy<Method>> {
    vec![
        arb!(ConnectionStart {
            version_major,
            version_minor,
            server_properties,
            mechanisms,
            locales
        }),
        arb!(ConnectionStartOk {
            client_properties,
            mechanism,
            response,
            locale
        }),
        arb!(ConnectionSecure { challenge }),
        arb!(ConnectionSecureOk { response }),
        arb!(ConnectionTune {
            channel_max,
            frame_max,
            heartbeat
        }),
        arb!(ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat
        }),
        arb!(ConnectionOpen { virtual_host }),
        arb!(ConnectionOpenOk {}),
        arb!(ConnectionClose {
            reply_code,
            reply_text,
            class_id,
            method_id
        }),
        arb!(ConnectionCloseOk {}),
        arb!(ConnectionBlocked { reason }),
        arb!(ConnectionUnblocked {}),
        arb!(ConnectionUpdateSecret { new_secret, reason }),
        arb!(ConnectionUpdateSecretOk {}),
        arb!(ChannelOpen {}),
        arb!(ChannelOpenOk {}),
        arb!(ChannelFlow { active }),
        arb!(ChannelFlowOk { active }),
        arb!(ChannelClose {
            reply_code,
            reply_text,
            class_id,
            method_id
        }),
        arb!(ChannelCloseOk {}),
        arb!(ExchangeDeclare {
            exchange,
            kind,
            passive,
            durable,
            auto_delete,
            internal,
            no_wait,
            arguments
        }),
        arb!(ExchangeDeclareOk {}),
        arb!(ExchangeDelete {
            exchange,
            if_unused,
            no_wait
        }),
        arb!(ExchangeDeleteOk {}),
        arb!(ExchangeBind {
            destination,
            source,
            routing_key,
            no_wait,
            arguments
        }),
        arb!(ExchangeBindOk {}),
        arb!(ExchangeUnbind {
            destination,
            source,
            routing_key,
            no_wait,
            arguments
        }),
        arb!(ExchangeUnbindOk {}),
        arb!(QueueDeclare {
            queue,
            passive,
            durable,
            exclusive,
            auto_delete,
            no_wait,
            arguments
        }),
        arb!(QueueDeclareOk {
            queue,
            message_count,
            consumer_count
        }),
        arb!(QueueBind {
            queue,
            exchange,
            routing_key,
            no_wait,
            arguments
        }),
        arb!(QueueBindOk {}),
        arb!(QueuePurge { queue, no_wait }),
        arb!(QueuePurgeOk { message_count }),
        arb!(QueueDelete {
            queue,
            if_unused,
            if_empty,
            no_wait
        }),
        arb!(QueueDeleteOk { message_count }),
        arb!(QueueUnbind {
            queue,
            exchange,
            routing_key,
            arguments
        }),
        arb!(QueueUnbindOk {}),
        arb!(BasicQos {
            prefetch_size,
            prefetch_count,
            global
        }),
        arb!(BasicQosOk {}),
        arb!(BasicConsume {
            queue,
            consumer_tag,
            no_local,
            no_ack,
            exclusive,
            no_wait,
            arguments
        }),
        arb!(BasicConsumeOk { consumer_tag }),
        arb!(BasicCancel {
            consumer_tag,
            no_wait
        }),
        arb!(BasicCancelOk { consumer_tag }),
        arb!(BasicPublish {
            exchange,
            routing_key,
            mandatory,
            immediate
        }),
        arb!(BasicReturn {
            reply_code,
            reply_text,
            exchange,
            routing_key
        }),
        arb!(BasicDeliver {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key
        }),
        arb!(BasicGet { queue, no_ack }),
        arb!(BasicGetOk {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count
        }),
        arb!(BasicGetEmpty { cluster_id }),
        arb!(BasicAck {
            delivery_tag,
            multiple
        }),
        arb!(BasicReject {
            delivery_tag,
            requeue
        }),
        arb!(BasicRecoverAsync { requeue }),
        arb!(BasicRecover { requeue }),
        arb!(BasicRecoverOk {}),
        arb!(BasicNack {
            delivery_tag,
            multiple,
            requeue
        }),
        arb!(ConfirmSelect { no_wait }),
        arb!(ConfirmSelectOk {}),
        arb!(TxSelect {}),
        arb!(TxSelectOk {}),
        arb!(TxCommit {}),
        arb!(TxCommitOk {}),
        arb!(TxRollback {}),
        arb!(TxRollbackOk {}),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    Union::new(all_methods())
}

#[test]
fn strategy_covers_every_method() {
    // Draw from each per-method strategy once; every (class, method) pair and name is distinct.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut ids = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    for s in all_methods() {
        let m = s.new_tree(&mut runner).unwrap().current();
        assert!(ids.insert((m.class_id(), m.method_id())), "{m:?}");
        assert!(names.insert(m.name()));
    }
    assert_eq!(ids.len(), 64);
}

// ---- properties -----------------------------------------------------------------------------

fn properties() -> impl Strategy<Value = BasicProperties> {
    let s = || proptest::option::of(shortstr());
    (
        (
            s(),
            s(),
            proptest::option::of(table()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
            s(),
            s(),
        ),
        (
            s(),
            s(),
            proptest::option::of(any::<u64>()),
            s(),
            s(),
            s(),
            s(),
        ),
    )
        .prop_map(
            |(
                (
                    content_type,
                    content_encoding,
                    headers,
                    delivery_mode,
                    priority,
                    correlation_id,
                    reply_to,
                ),
                (expiration, message_id, timestamp, kind, user_id, app_id, cluster_id),
            )| BasicProperties {
                content_type,
                content_encoding,
                headers,
                delivery_mode,
                priority,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                timestamp,
                kind,
                user_id,
                app_id,
                cluster_id,
            },
        )
}

/// Feed `bytes` to decode_frame in chunks of `chunk` bytes, collecting every frame.
fn decode_all(bytes: &[u8], chunk: usize, frame_max: u32) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(f) = decode_frame(&mut buf, frame_max).unwrap() {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

/// Encode a delivery with `encode_content`, decode it frame by frame, and check it reassembles.
fn check_content(props: &BasicProperties, raw: bool, body: &[u8], frame_max: u32, chunk: usize) {
    let method = Method::BasicDeliver(BasicDeliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 42,
        redelivered: true,
        exchange: "ex".into(),
        routing_key: "rk".into(),
    });
    let mut raw_props = BytesMut::new();
    props.encode(&mut raw_props);
    let mut out = BytesMut::new();
    let raw_arg = if raw { Some(&raw_props[..]) } else { None };
    encode_content(&mut out, 7, &method, props, raw_arg, body, frame_max);
    // one exact reservation: no reallocation happened and nothing was over-reserved
    assert_eq!(out.capacity(), out.len());

    let frames = decode_all(&out, chunk, frame_max);
    let mut it = frames.into_iter();
    assert_eq!(it.next(), Some(Frame::Method { channel: 7, method }));
    match it.next() {
        Some(Frame::Header {
            channel,
            class_id,
            body_size,
            properties,
            raw_properties,
        }) => {
            assert_eq!((channel, class_id, body_size), (7, 60, body.len() as u64));
            assert_eq!(&*properties, props);
            assert_eq!(raw_properties, raw_props.freeze());
        }
        other => panic!("expected a header, got {other:?}"),
    }
    let limit = if frame_max == 0 {
        usize::MAX
    } else {
        frame_max as usize - FRAME_OVERHEAD
    };
    let mut got = Vec::new();
    let mut n = 0;
    for f in it {
        match f {
            Frame::Body {
                channel: 7,
                payload,
            } => {
                assert!(!payload.is_empty() && payload.len() <= limit);
                got.extend_from_slice(&payload);
                n += 1;
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert_eq!(got, body);
    let expected_frames = if frame_max == 0 {
        usize::from(!body.is_empty())
    } else {
        body.len().div_ceil(limit)
    };
    assert_eq!(n, expected_frames);
}

#[test]
fn content_round_trip_fixed_sizes() {
    let props = BasicProperties {
        content_type: Some("application/json".into()),
        delivery_mode: Some(2),
        headers: Some(
            [("x-retries".to_string(), FieldValue::I32(3))]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    for frame_max in [4096u32, 131_072, 0] {
        let fm = if frame_max == 0 {
            4096
        } else {
            frame_max as usize
        };
        for len in [
            0,
            1,
            16,
            1024,
            fm - 9,
            fm - 8,
            fm - 7,
            3 * (fm - 8),
            3 * (fm - 8) + 1,
            5 * fm,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for raw in [false, true] {
                check_content(&props, raw, &body, frame_max, usize::MAX);
                check_content(&props, raw, &body, frame_max, 997);
            }
        }
    }
}

#[test]
fn heartbeat_round_trip() {
    let mut out = BytesMut::new();
    encode_heartbeat(&mut out);
    assert_eq!(&out[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
    assert_eq!(
        decode_frame(&mut out, 4096),
        Ok(Some(Frame::Heartbeat { channel: 0 }))
    );
    assert!(out.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

    #[test]
    fn method_round_trip(m in method()) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        prop_assert_eq!(out.len(), m.encoded_len());
        let back = Method::decode(&out).unwrap();
        prop_assert_eq!(&back, &m);

        // and as a frame
        let mut frame = BytesMut::new();
        encode_method(&mut frame, 3, &m);
        prop_assert_eq!(frame.capacity(), frame.len());
        prop_assert_eq!(decode_frame(&mut frame, 0).unwrap(), Some(Frame::Method { channel: 3, method: m }));
        prop_assert!(frame.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, .. ProptestConfig::default() })]

    #[test]
    fn properties_round_trip(p in properties()) {
        let mut out = BytesMut::new();
        p.encode(&mut out);
        prop_assert_eq!(out.len(), p.encoded_len());
        prop_assert_eq!(&BasicProperties::decode(&out).unwrap(), &p);

        let mut header = BytesMut::new();
        encode_header(&mut header, 2, 99, &p);
        prop_assert_eq!(header.capacity(), header.len());
        let mut raw = BytesMut::new();
        encode_raw_header(&mut raw, 2, 99, &out);
        prop_assert_eq!(&raw, &header);
        match decode_frame(&mut header, 0).unwrap() {
            Some(Frame::Header { channel: 2, class_id: 60, body_size: 99, properties, raw_properties }) => {
                prop_assert_eq!(&*properties, &p);
                prop_assert_eq!(&raw_properties[..], &out[..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn table_round_trip(t in table()) {
        let mut out = BytesMut::new();
        encode_table(&mut out, &t);
        prop_assert_eq!(out.len(), table_encoded_len(&t));
        let mut cursor = &out[..];
        prop_assert_eq!(decode_table(&mut cursor).unwrap(), t);
        prop_assert!(cursor.is_empty());
    }

    #[test]
    fn value_round_trip(v in value()) {
        let mut out = BytesMut::new();
        v.encode(&mut out);
        prop_assert_eq!(out.len(), v.encoded_len());
        let mut cursor = &out[..];
        prop_assert_eq!(FieldValue::decode(&mut cursor).unwrap(), v);
        prop_assert!(cursor.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn content_round_trip(
        p in properties(),
        raw in any::<bool>(),
        len in prop_oneof![0usize..64, 4000usize..4200, 0usize..20_000],
        frame_max in prop_oneof![Just(4096u32), Just(0u32), 4096u32..9000],
        chunk in prop_oneof![Just(usize::MAX), 1usize..3000],
    ) {
        // a content header must fit in one frame (random header tables can be large)
        let header_frame = FRAME_OVERHEAD + 12 + p.encoded_len();
        prop_assume!(frame_max == 0 || header_frame <= frame_max as usize);
        let body: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
        check_content(&p, raw, &body, frame_max, chunk);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, .. ProptestConfig::default() })]

    /// The borrowed `DeliverArgs` the broker encodes deliveries with writes exactly the bytes of
    /// the generated `BasicDeliver`, including a string longer than a short string allows.
    #[test]
    fn deliver_args_encode_as_basic_deliver(
        consumer_tag in shortstr(),
        delivery_tag in any::<u64>(),
        redelivered in any::<bool>(),
        exchange in prop_oneof![shortstr(), Just("x".repeat(300))],
        routing_key in shortstr(),
        body in vec(any::<u8>(), 0..64),
    ) {
        let props = BasicProperties { delivery_mode: Some(1), ..Default::default() };
        let args = DeliverArgs {
            consumer_tag: &consumer_tag,
            delivery_tag,
            redelivered,
            exchange: &exchange,
            routing_key: &routing_key,
        };
        let method = Method::BasicDeliver(BasicDeliver {
            consumer_tag: consumer_tag.clone(),
            delivery_tag,
            redelivered,
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
        });
        let mut borrowed = BytesMut::new();
        encode_content(&mut borrowed, 5, &args, &props, None, &body, 4096);
        prop_assert_eq!(borrowed.capacity(), borrowed.len());
        let mut owned = BytesMut::new();
        encode_content(&mut owned, 5, &method, &props, None, &body, 4096);
        prop_assert_eq!(&borrowed, &owned);
    }
}
