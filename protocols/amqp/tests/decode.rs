//! Decoder behaviour on known bytes and on bad input: bit packing, truncation, size limits,
//! unknown types and methods, hostile nesting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_amqp::*;

fn encoded(m: &Method) -> Vec<u8> {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    out.to_vec()
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

fn is_syntax<T: std::fmt::Debug>(r: Result<T, DecodeError>) -> bool {
    matches!(r, Err(DecodeError::Syntax(_)))
}

// ---- bit packing ----------------------------------------------------------------------------

#[test]
fn queue_declare_bits_pack_into_one_octet() {
    let m = Method::QueueDeclare(QueueDeclare {
        queue: "q".into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: true,
        no_wait: true,
        arguments: FieldTable::new(),
    });
    // class 50, method 10, ticket 0, "q", bits 0b0001_1010, empty table
    let expected = [0, 50, 0, 10, 0, 0, 1, b'q', 0b0001_1010, 0, 0, 0, 0];
    assert_eq!(encoded(&m), expected);
    assert_eq!(Method::decode(&expected), Ok(m));
}

#[test]
fn exchange_declare_all_bit_combinations() {
    for bits in 0u8..32 {
        let m = Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "x".into(),
            kind: "topic".into(),
            passive: bits & 1 != 0,
            durable: bits & 2 != 0,
            auto_delete: bits & 4 != 0,
            internal: bits & 8 != 0,
            no_wait: bits & 16 != 0,
            arguments: FieldTable::new(),
        });
        let bytes = encoded(&m);
        let mut expected = vec![0, 40, 0, 10, 0, 0, 1, b'x', 5];
        expected.extend_from_slice(b"topic");
        expected.push(bits);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(bytes, expected, "bits {bits:05b}");
        assert_eq!(Method::decode(&bytes), Ok(m));
    }
}

#[test]
fn basic_consume_and_nack_bits() {
    for bits in 0u8..16 {
        let m = Method::BasicConsume(BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            no_local: bits & 1 != 0,
            no_ack: bits & 2 != 0,
            exclusive: bits & 4 != 0,
            no_wait: bits & 8 != 0,
            arguments: FieldTable::new(),
        });
        let bytes = encoded(&m);
        assert_eq!(
            bytes,
            [0, 60, 0, 20, 0, 0, 1, b'q', 1, b'c', bits, 0, 0, 0, 0]
        );
        assert_eq!(Method::decode(&bytes), Ok(m));
    }
    for bits in 0u8..4 {
        let m = Method::BasicNack(BasicNack {
            delivery_tag: 9,
            multiple: bits & 1 != 0,
            requeue: bits & 2 != 0,
        });
        assert_eq!(encoded(&m), [0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 9, bits]);
    }
    // a bit followed by a non-bit argument gets its own octet (basic.deliver: redelivered)
    let m = Method::BasicDeliver(BasicDeliver {
        consumer_tag: "c".into(),
        delivery_tag: 1,
        redelivered: true,
        exchange: "e".into(),
        routing_key: "r".into(),
    });
    assert_eq!(
        encoded(&m),
        [0, 60, 0, 60, 1, b'c', 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, b'e', 1, b'r']
    );
    // queue.delete: three bits after a short string
    let m = Method::QueueDelete(QueueDelete {
        queue: "".into(),
        if_unused: true,
        if_empty: false,
        no_wait: true,
    });
    assert_eq!(encoded(&m), [0, 50, 0, 40, 0, 0, 0, 0b101]);
}

#[test]
fn reserved_arguments_are_discarded_and_written_empty() {
    // connection.open "/" with a non-empty capabilities and insist=1, as old clients send
    let bytes = [0, 10, 0, 40, 1, b'/', 3, b'a', b'b', b'c', 1];
    let m = Method::decode(&bytes).unwrap();
    assert_eq!(
        m,
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "/".into()
        })
    );
    assert_eq!(encoded(&m), [0, 10, 0, 40, 1, b'/', 0, 0]);
    // channel.open with out-of-band ""
    assert_eq!(
        Method::decode(&[0, 20, 0, 10, 0]),
        Ok(Method::ChannelOpen(ChannelOpen {}))
    );
    assert_eq!(
        encoded(&Method::ChannelOpenOk(ChannelOpenOk {})),
        [0, 20, 0, 11, 0, 0, 0, 0]
    );
    assert_eq!(
        encoded(&Method::ConnectionOpenOk(ConnectionOpenOk {})),
        [0, 10, 0, 41, 0]
    );
    // a ticket is accepted whatever its value
    let m = Method::decode(&[0, 60, 0, 70, 0x12, 0x34, 1, b'q', 1]).unwrap();
    assert_eq!(
        m,
        Method::BasicGet(BasicGet {
            queue: "q".into(),
            no_ack: true
        })
    );
}

// ---- known client bytes ---------------------------------------------------------------------

/// basic.publish to exchange "" with routing key "hello", mandatory, then a content header with
/// content-type and delivery-mode and a 5-byte body, built from the spec by hand.
fn hand_made_publish() -> Vec<u8> {
    let mut wire = Vec::new();
    wire.extend_from_slice(&[1, 0, 1, 0, 0, 0, 14]); // method frame, channel 1, size 14
    wire.extend_from_slice(&[0, 60, 0, 40]); // basic.publish
    wire.extend_from_slice(&[0, 0]); // ticket
    wire.extend_from_slice(&[0]); // exchange ""
    wire.extend_from_slice(&[5, b'h', b'e', b'l', b'l', b'o']); // routing key
    wire.extend_from_slice(&[0b01]); // mandatory=1 immediate=0
    wire.push(0xCE);
    wire.extend_from_slice(&[2, 0, 1, 0, 0, 0, 26]); // header frame, channel 1, size 26
    wire.extend_from_slice(&[0, 60, 0, 0]); // class basic, weight 0
    wire.extend_from_slice(&5u64.to_be_bytes()); // body size
    wire.extend_from_slice(&[0x90, 0x00]); // flags: content-type | delivery-mode
    wire.push(10);
    wire.extend_from_slice(b"text/plain");
    wire.push(2); // persistent
    wire.push(0xCE);
    wire.extend_from_slice(&[3, 0, 1, 0, 0, 0, 5]);
    wire.extend_from_slice(b"world");
    wire.push(0xCE);
    wire
}

#[test]
fn decodes_hand_made_publish() {
    let wire = hand_made_publish();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        decode_frame(&mut buf, 131_072).unwrap(),
        Some(Frame::Method {
            channel: 1,
            method: Method::BasicPublish(BasicPublish {
                exchange: "".into(),
                routing_key: "hello".into(),
                mandatory: true,
                immediate: false,
            }),
        })
    );
    let props = BasicProperties {
        content_type: Some("text/plain".into()),
        delivery_mode: Some(2),
        ..Default::default()
    };
    match decode_frame(&mut buf, 131_072).unwrap() {
        Some(Frame::Header {
            channel,
            class_id,
            body_size,
            properties,
            raw_properties,
        }) => {
            assert_eq!((channel, class_id, body_size), (1, 60, 5));
            assert_eq!(*properties, props);
            assert_eq!(&raw_properties[..], &wire[41..55]);
            // re-encoding from the decoded properties gives the same bytes as the raw slice
            let mut re = BytesMut::new();
            props.encode(&mut re);
            assert_eq!(&re[..], &raw_properties[..]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decode_frame(&mut buf, 131_072).unwrap(),
        Some(Frame::Body {
            channel: 1,
            payload: Bytes::from_static(b"world")
        })
    );
    assert_eq!(decode_frame(&mut buf, 131_072).unwrap(), None);
    assert!(buf.is_empty());
}

#[test]
fn body_and_raw_properties_are_zero_copy() {
    let wire = hand_made_publish();
    let mut buf = BytesMut::from(&wire[..]);
    let base = buf.as_ptr() as usize;
    let range = base..base + wire.len();
    decode_frame(&mut buf, 0).unwrap();
    let Some(Frame::Header { raw_properties, .. }) = decode_frame(&mut buf, 0).unwrap() else {
        panic!()
    };
    assert!(range.contains(&(raw_properties.as_ptr() as usize)));
    let Some(Frame::Body { payload, .. }) = decode_frame(&mut buf, 0).unwrap() else {
        panic!()
    };
    assert!(range.contains(&(payload.as_ptr() as usize)));
}

#[test]
fn decodes_connection_start_ok_like_a_client_sends() {
    // client-properties {capabilities: {publisher_confirms: true}, product: "pika"} (key order, so
    // the re-encoding is byte-identical),
    // mechanism PLAIN, response "\0guest\0guest", locale en_US
    let mut args = Vec::new();
    let mut caps = Vec::new();
    caps.push(18);
    caps.extend_from_slice(b"publisher_confirms");
    caps.extend_from_slice(&[b't', 1]);
    let mut table = Vec::new();
    table.push(12);
    table.extend_from_slice(b"capabilities");
    table.push(b'F');
    table.extend_from_slice(&(caps.len() as u32).to_be_bytes());
    table.extend_from_slice(&caps);
    table.push(7);
    table.extend_from_slice(b"product");
    table.push(b'S');
    table.extend_from_slice(&4u32.to_be_bytes());
    table.extend_from_slice(b"pika");
    args.extend_from_slice(&[0, 10, 0, 11]);
    args.extend_from_slice(&(table.len() as u32).to_be_bytes());
    args.extend_from_slice(&table);
    args.push(5);
    args.extend_from_slice(b"PLAIN");
    args.extend_from_slice(&12u32.to_be_bytes());
    args.extend_from_slice(b"\0guest\0guest");
    args.push(5);
    args.extend_from_slice(b"en_US");

    let Method::ConnectionStartOk(m) = Method::decode(&args).unwrap() else {
        panic!()
    };
    assert_eq!(m.mechanism, "PLAIN");
    assert_eq!(&m.response[..], b"\0guest\0guest");
    assert_eq!(m.locale, "en_US");
    assert_eq!(m.client_properties["product"].as_str(), Some("pika"));
    let FieldValue::Table(caps) = &m.client_properties["capabilities"] else {
        panic!()
    };
    assert_eq!(caps["publisher_confirms"], FieldValue::Bool(true));
    assert_eq!(encoded(&Method::ConnectionStartOk(m)), args);
}

#[test]
fn method_metadata() {
    let m: Method = BasicPublish::default().into();
    assert_eq!(
        (m.class_id(), m.method_id(), m.name()),
        (60, 40, "basic.publish")
    );
    assert!(m.has_content());
    let m: Method = QueueDeclareOk::default().into();
    assert_eq!(
        (m.class_id(), m.method_id(), m.name()),
        (50, 11, "queue.declare-ok")
    );
    assert!(!m.has_content());
    for m in [
        Method::from(BasicReturn::default()),
        BasicDeliver::default().into(),
        BasicGetOk::default().into(),
    ] {
        assert!(m.has_content(), "{}", m.name());
    }
    assert_eq!(
        Method::from(ConfirmSelect::default()).name(),
        "confirm.select"
    );
    assert_eq!(
        Method::from(ConnectionUpdateSecretOk::default()).name(),
        "connection.update-secret-ok"
    );
    assert_eq!(Method::name_of(40, 51), Some("exchange.unbind-ok"));
    assert_eq!(Method::name_of(30, 10), None);
}

// ---- truncation -----------------------------------------------------------------------------

#[test]
fn truncated_frames_are_incomplete_not_errors() {
    let wire = hand_made_publish();
    // every prefix of the first frame (and of the whole stream up to each frame boundary)
    for len in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..len]);
        let mut n = 0;
        while let Some(_f) = decode_frame(&mut buf, 4096).unwrap() {
            n += 1;
        }
        let expected = [22usize, 56, 69].iter().filter(|&&end| end <= len).count();
        assert_eq!(n, expected, "prefix of {len} bytes");
    }
}

#[test]
fn truncated_method_payloads_are_syntax_errors() {
    let samples: Vec<Method> = vec![
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: [("product".to_string(), FieldValue::string("switchboard"))]
                .into_iter()
                .collect(),
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
            locales: Bytes::from_static(b"en_US"),
        }
        .into(),
        ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        }
        .into(),
        ConnectionOpen {
            virtual_host: "/".into(),
        }
        .into(),
        ConnectionClose {
            reply_code: 320,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
        ChannelOpen {}.into(),
        ChannelOpenOk {}.into(),
        ExchangeDeclare {
            exchange: "logs".into(),
            kind: "fanout".into(),
            durable: true,
            arguments: [("alternate-exchange".to_string(), FieldValue::string("ae"))]
                .into_iter()
                .collect(),
            ..Default::default()
        }
        .into(),
        QueueDeclare {
            queue: "q".into(),
            durable: true,
            ..Default::default()
        }
        .into(),
        BasicPublish {
            exchange: "x".into(),
            routing_key: "rk".into(),
            mandatory: true,
            immediate: false,
        }
        .into(),
        BasicDeliver {
            consumer_tag: "c".into(),
            delivery_tag: 5,
            redelivered: false,
            exchange: "x".into(),
            routing_key: "k".into(),
        }
        .into(),
        BasicAck {
            delivery_tag: 5,
            multiple: true,
        }
        .into(),
        BasicNack {
            delivery_tag: 5,
            multiple: true,
            requeue: false,
        }
        .into(),
        BasicQos {
            prefetch_size: 0,
            prefetch_count: 10,
            global: false,
        }
        .into(),
        TxCommit {}.into(),
    ];
    for m in samples {
        let bytes = encoded(&m);
        assert_eq!(Method::decode(&bytes).as_ref(), Ok(&m));
        for len in 0..bytes.len() {
            let r = Method::decode(&bytes[..len]);
            assert!(
                is_syntax(r.clone()),
                "{} truncated to {len}: {r:?}",
                m.name()
            );
        }
        // and one trailing byte is too many
        let mut long = bytes.clone();
        long.push(0);
        assert!(
            is_syntax(Method::decode(&long)),
            "{} with a trailing byte",
            m.name()
        );
    }
}

#[test]
fn truncated_properties_are_syntax_errors() {
    let p = BasicProperties {
        content_type: Some("text/plain".into()),
        headers: Some(
            [("a".to_string(), FieldValue::I64(-1))]
                .into_iter()
                .collect(),
        ),
        priority: Some(3),
        timestamp: Some(1_700_000_000),
        app_id: Some("app".into()),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    p.encode(&mut out);
    for len in 0..out.len() {
        assert!(is_syntax(BasicProperties::decode(&out[..len])), "{len}");
    }
    assert_eq!(BasicProperties::decode(&out), Ok(p));
}

// ---- frame-level errors ---------------------------------------------------------------------

#[test]
fn oversized_frame_is_rejected_from_its_header_alone() {
    // only the 7 header bytes have arrived, declaring 1 GiB
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0x40, 0, 0, 0][..]);
    assert_eq!(
        decode_frame(&mut buf, 131_072),
        Err(DecodeError::FrameTooLarge {
            size: 0x4000_0008,
            max: 131_072
        })
    );
    assert_eq!(buf.len(), 7, "buffer untouched");
    // the limit is inclusive of the 8 bytes of overhead
    let ok = frame(3, 1, &vec![0; 4088]);
    assert!(matches!(
        decode_frame(&mut BytesMut::from(&ok[..]), 4096),
        Ok(Some(Frame::Body { .. }))
    ));
    let too_big = frame(3, 1, &vec![0; 4089]);
    assert_eq!(
        decode_frame(&mut BytesMut::from(&too_big[..7]), 4096),
        Err(DecodeError::FrameTooLarge {
            size: 4097,
            max: 4096
        })
    );
    // frame_max 0: no limit, so a huge declared size is just incomplete
    assert_eq!(
        decode_frame(
            &mut BytesMut::from(&[3u8, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]),
            0
        ),
        Ok(None)
    );
    assert_eq!(
        DecodeError::FrameTooLarge { size: 1, max: 0 }.reply_code(),
        501
    );
}

#[test]
fn bad_frame_end() {
    let mut wire = frame(8, 0, &[]);
    *wire.last_mut().unwrap() = 0xCD;
    let e = decode_frame(&mut BytesMut::from(&wire[..]), 4096).unwrap_err();
    assert_eq!(e, DecodeError::BadFrameEnd(0xCD));
    assert_eq!(e.reply_code(), 501);
    assert_eq!(e.to_string(), "frame end octet was 0xcd, expected 0xce");
}

#[test]
fn unknown_frame_type() {
    for kind in [0u8, 4, 5, 7, 9, b'A', 0xCE, 0xFF] {
        let wire = frame(kind, 0, &[]);
        // known from the first 7 bytes
        let e = decode_frame(&mut BytesMut::from(&wire[..7]), 4096).unwrap_err();
        assert_eq!(e, DecodeError::UnknownFrameType(kind));
        assert_eq!(e.reply_code(), 501);
    }
    // a client that sends a protocol header again mid-stream
    let e = decode_frame(&mut BytesMut::from(&PROTOCOL_HEADER[..]), 4096).unwrap_err();
    assert_eq!(e, DecodeError::UnknownFrameType(b'A'));
}

#[test]
fn unknown_method() {
    for (c, m) in [(60u16, 41u16), (30, 10), (0, 0), (90, 40), (85, 20)] {
        let mut payload = c.to_be_bytes().to_vec();
        payload.extend_from_slice(&m.to_be_bytes());
        let e = Method::decode(&payload).unwrap_err();
        assert_eq!(
            e,
            DecodeError::UnknownMethod {
                class_id: c,
                method_id: m
            }
        );
        assert_eq!(e.reply_code(), 540);
        let mut buf = BytesMut::from(&frame(1, 1, &payload)[..]);
        assert_eq!(decode_frame(&mut buf, 4096), Err(e));
    }
}

#[test]
fn content_header_errors() {
    // class 50 content header
    let mut payload = vec![0, 50, 0, 0];
    payload.extend_from_slice(&0u64.to_be_bytes());
    payload.extend_from_slice(&[0, 0]);
    let e = decode_frame(&mut BytesMut::from(&frame(2, 1, &payload)[..]), 4096).unwrap_err();
    assert_eq!(e, DecodeError::BadContentClass(50));
    assert_eq!(e.reply_code(), 505);
    // too short for class, weight, body size and flags
    for n in 0..14 {
        let mut p = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p.truncate(n);
        let r = decode_frame(&mut BytesMut::from(&frame(2, 1, &p)[..]), 4096);
        assert!(is_syntax(r), "{n}");
    }
    // continuation bit and the unused 15th flag are rejected
    for flags in [0x0001u16, 0x0002] {
        let mut p = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(&flags.to_be_bytes());
        let r = decode_frame(&mut BytesMut::from(&frame(2, 1, &p)[..]), 4096);
        assert!(is_syntax(r), "{flags:#x}");
    }
    // an empty property list is fine
    let p = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0];
    let f = decode_frame(&mut BytesMut::from(&frame(2, 1, &p)[..]), 4096).unwrap();
    assert!(matches!(f, Some(Frame::Header { body_size: 9, .. })));
}

// ---- field tables ---------------------------------------------------------------------------

#[test]
fn every_field_type_letter() {
    let mut t = BytesMut::new();
    let entries: Vec<(&str, Vec<u8>, FieldValue)> = vec![
        ("t", vec![b't', 1], FieldValue::Bool(true)),
        ("b", vec![b'b', 0xFF], FieldValue::I8(-1)),
        ("B", vec![b'B', 0xFF], FieldValue::U8(255)),
        ("s", vec![b's', 0xFF, 0xFE], FieldValue::I16(-2)),
        ("u", vec![b'u', 0xFF, 0xFE], FieldValue::U16(0xFFFE)),
        ("I", vec![b'I', 0xFF, 0xFF, 0xFF, 0xFD], FieldValue::I32(-3)),
        (
            "i",
            vec![b'i', 0xFF, 0xFF, 0xFF, 0xFD],
            FieldValue::U32(0xFFFF_FFFD),
        ),
        (
            "l",
            [vec![b'l'], (-4i64).to_be_bytes().to_vec()].concat(),
            FieldValue::I64(-4),
        ),
        (
            "f",
            [vec![b'f'], 1.5f32.to_be_bytes().to_vec()].concat(),
            FieldValue::F32(1.5),
        ),
        (
            "d",
            [vec![b'd'], (-2.25f64).to_be_bytes().to_vec()].concat(),
            FieldValue::F64(-2.25),
        ),
        (
            "D",
            vec![b'D', 2, 0, 0, 0x30, 0x39],
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: 12345,
            }),
        ),
        (
            "S",
            vec![b'S', 0, 0, 0, 2, b'h', b'i'],
            FieldValue::string("hi"),
        ),
        (
            "A",
            vec![b'A', 0, 0, 0, 4, b'b', 1, b'V', b'V'],
            FieldValue::Array(vec![FieldValue::I8(1), FieldValue::Void, FieldValue::Void]),
        ),
        (
            "T",
            [vec![b'T'], 1_700_000_000u64.to_be_bytes().to_vec()].concat(),
            FieldValue::Timestamp(1_700_000_000),
        ),
        (
            "F",
            vec![b'F', 0, 0, 0, 3, 1, b'k', b'V'],
            FieldValue::Table([("k".to_string(), FieldValue::Void)].into_iter().collect()),
        ),
        ("V", vec![b'V'], FieldValue::Void),
        (
            "x",
            vec![b'x', 0, 0, 0, 2, 0, 0xFF],
            FieldValue::ByteArray(Bytes::from_static(&[0, 0xFF])),
        ),
    ];
    let mut body = Vec::new();
    let mut expected = FieldTable::new();
    for (k, bytes, v) in entries {
        let mut one = &bytes[..];
        assert_eq!(FieldValue::decode(&mut one).as_ref(), Ok(&v), "{k}");
        assert!(one.is_empty());
        let mut re = BytesMut::new();
        v.encode(&mut re);
        assert_eq!(&re[..], &bytes[..], "{k}");
        body.push(k.len() as u8);
        body.extend_from_slice(k.as_bytes());
        body.extend_from_slice(&bytes);
        expected.insert(k.to_string(), v);
    }
    t.put_u32(body.len() as u32);
    t.extend_from_slice(&body);
    let mut cursor = &t[..];
    assert_eq!(decode_table(&mut cursor), Ok(expected));
    assert!(cursor.is_empty());
}

#[test]
fn unknown_field_type_letter_is_syntax_error() {
    for letter in [b'U', b'L', b'Z', b'c', 0u8, 0xFF] {
        let body = [1, b'k', letter, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut t = (body.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&body);
        let r = decode_table(&mut &t[..]);
        assert!(is_syntax(r.clone()), "{letter}: {r:?}");
        assert_eq!(r.unwrap_err().reply_code(), 502);
    }
}

#[test]
fn invalid_utf8_short_string_is_syntax_error() {
    // basic.consume-ok with consumer tag 0xFF 0xFE
    assert!(is_syntax(Method::decode(&[0, 60, 0, 21, 2, 0xFF, 0xFE])));
    // table key
    let t = [0, 0, 0, 3, 1, 0xC3, b'V'];
    assert!(is_syntax(decode_table(&mut &t[..])));
}

#[test]
fn oversized_inner_lengths_are_syntax_errors() {
    // long string claiming 4 GiB inside a 9-byte table
    let t = [0, 0, 0, 9, 1, b'k', b'S', 0xFF, 0xFF, 0xFF, 0xFF, 0, 0];
    assert!(is_syntax(decode_table(&mut &t[..])));
    // table length beyond the input
    assert!(is_syntax(decode_table(
        &mut &[0xFF, 0xFF, 0xFF, 0xFF, 0][..]
    )));
    // array length beyond its table
    let t = [0, 0, 0, 8, 1, b'a', b'A', 0, 0, 0, 9, b'V'];
    assert!(is_syntax(decode_table(&mut &t[..])));
}

/// A table holding `depth - 1` nested tables, `depth` tables in all, each `{"n": <next>}`.
fn nested_tables(depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 7);
    for i in 0..depth - 1 {
        // body: key "n", type 'F', then the next table (4-byte length + its body)
        out.extend_from_slice(&((7 * (depth - 1 - i)) as u32).to_be_bytes());
        out.extend_from_slice(&[1, b'n', b'F']);
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// A table `{"a": [[[…]]]}` holding `depth - 1` nested arrays, `depth` containers in all.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let arrays = depth - 1;
    let body = |j: usize| (5 * (arrays - 1 - j)) as u32; // array j's body length
    let mut out = Vec::with_capacity(depth * 5 + 7);
    out.extend_from_slice(&(7 + body(0)).to_be_bytes());
    out.extend_from_slice(&[1, b'a', b'A']);
    for j in 0..arrays {
        out.extend_from_slice(&body(j).to_be_bytes());
        if j + 1 < arrays {
            out.push(b'A');
        }
    }
    out
}

#[test]
fn nesting_is_bounded() {
    assert_eq!(MAX_NESTING, 64);
    assert!(decode_table(&mut &nested_tables(MAX_NESTING)[..]).is_ok());
    assert!(is_syntax(decode_table(
        &mut &nested_tables(MAX_NESTING + 1)[..]
    )));
    assert!(decode_table(&mut &nested_arrays(MAX_NESTING)[..]).is_ok());
    assert!(is_syntax(decode_table(
        &mut &nested_arrays(MAX_NESTING + 1)[..]
    )));
}

#[test]
fn deeply_nested_table_is_syntax_error_not_stack_overflow() {
    for bytes in [nested_tables(200_000), nested_arrays(200_000)] {
        assert!(is_syntax(decode_table(&mut &bytes[..])));
        // and inside a queue.declare frame
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        payload.extend_from_slice(&bytes);
        let mut buf = BytesMut::from(&frame(1, 1, &payload)[..]);
        let e = decode_frame(&mut buf, 0).unwrap_err();
        assert!(matches!(e, DecodeError::Syntax(_)), "{e:?}");
    }
}

#[test]
fn syntax_errors_name_the_method() {
    let e = Method::decode(&[0, 60, 0, 40, 0]).unwrap_err();
    assert_eq!(e.reply_code(), 502);
    assert!(e.to_string().contains("basic.publish"), "{e}");
}

#[test]
fn over_long_short_strings_are_cut_on_a_char_boundary() {
    let long = "é".repeat(200); // 400 bytes
    let m = Method::from(BasicConsumeOk {
        consumer_tag: long.clone(),
    });
    let bytes = encoded(&m);
    assert_eq!(bytes.len(), m.encoded_len());
    let Method::BasicConsumeOk(back) = Method::decode(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!(back.consumer_tag.len(), 254);
    assert!(long.starts_with(&back.consumer_tag));
}
