//! Decoder edge cases: limits, flags, lengths, UTF-8, topics, CONNECT rules, short forms.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::{BufMut, BytesMut};
use switchboard_mqtt::*;

const MAX: usize = 1 << 20;

fn dec(bytes: &[u8], v: Protocol) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), v, MAX)
}

fn connect_bytes(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&[0, 60]);
    body.extend_from_slice(rest);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

#[test]
fn incomplete_input_consumes_nothing() {
    let full = [0x30, 5, 0, 1, b'a', b'h', b'i'];
    for n in 0..full.len() {
        let mut b = BytesMut::from(&full[..n]);
        assert_eq!(decode(&mut b, Protocol::V311, MAX), Ok(None), "prefix {n}");
        assert_eq!(b.len(), n);
    }
    let p = dec(&full, Protocol::V311).unwrap().unwrap();
    let Packet::Publish(p) = p else { panic!() };
    assert_eq!(p.topic, "a");
    assert_eq!(&p.payload[..], b"hi");
}

#[test]
fn two_packets_in_one_buffer() {
    let mut b = BytesMut::from(&[0xc0, 0, 0xd0, 0][..]);
    assert_eq!(
        decode(&mut b, Protocol::V311, MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(
        decode(&mut b, Protocol::V311, MAX),
        Ok(Some(Packet::PingResp))
    );
    assert_eq!(decode(&mut b, Protocol::V311, MAX), Ok(None));
}

#[test]
fn packet_size_checked_from_the_fixed_header() {
    // Announces 200 bytes with only the header present: refused at once.
    let mut b = BytesMut::from(&[0x30, 0xc8, 0x01][..]);
    let e = decode(&mut b, Protocol::V5, 100).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
    // Exactly at the limit is fine.
    let mut b = BytesMut::from(&[0x30, 3, 0, 1, b'a'][..]);
    assert!(decode(&mut b, Protocol::V311, 5).unwrap().is_some());
}

#[test]
fn remaining_length_limits() {
    // Five length bytes.
    let e = dec(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], Protocol::V311).unwrap_err();
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
    // Four continuation bytes with no end yet is already too long.
    assert!(dec(&[0x30, 0xff, 0xff, 0xff, 0xff], Protocol::V311).is_err());
    // Non-minimal encoding of 0.
    assert!(dec(&[0xc0, 0x80, 0x00], Protocol::V311).is_err());
    // The largest value is accepted (and then too large for a 1 MiB limit).
    let e = dec(&[0x30, 0xff, 0xff, 0xff, 0x7f], Protocol::V311).unwrap_err();
    assert!(matches!(e, DecodeError::PacketTooLarge { .. }));
}

#[test]
fn reserved_flags_and_types() {
    assert!(dec(&[0xc1, 0], Protocol::V311).is_err()); // PINGREQ with a flag
                                                       // Refused at the first byte, without waiting for the rest.
    assert!(dec(&[0xc1], Protocol::V311).is_err());
    assert!(dec(&[0x47, 0x45, 0x54], Protocol::V311).is_err()); // "GET"
    assert!(dec(&[0x60, 2, 0, 1], Protocol::V311).is_err()); // PUBREL without 0b0010
    assert!(dec(&[0x62, 2, 0, 1], Protocol::V311).is_ok());
    assert!(dec(&[0x00, 0], Protocol::V311).is_err()); // type 0
    assert!(dec(&[0xf0, 0], Protocol::V311).is_err()); // AUTH is v5 only
    assert_eq!(
        dec(&[0xf0, 0], Protocol::V5),
        Ok(Some(Packet::Auth(Auth::default())))
    );
    // QoS 3 and DUP on QoS 0.
    assert!(dec(&[0x36, 3, 0, 1, b'a'], Protocol::V311).is_err());
    assert!(dec(&[0x38, 3, 0, 1, b'a'], Protocol::V311).is_err());
}

#[test]
fn trailing_bytes_are_malformed() {
    assert!(dec(&[0x40, 3, 0, 1, 0], Protocol::V311).is_err());
    assert!(dec(&[0xc0, 1, 0], Protocol::V311).is_err());
}

#[test]
fn utf8_rules() {
    // U+0000 in a topic.
    let e = dec(&[0x30, 4, 0, 2, b'a', 0], Protocol::V311).unwrap_err();
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
    // An encoded surrogate (U+D800 = ED A0 80).
    assert!(dec(&[0x30, 5, 0, 3, 0xed, 0xa0, 0x80], Protocol::V311).is_err());
    // Overlong encoding of '/'.
    assert!(dec(&[0x30, 4, 0, 2, 0xc0, 0xaf], Protocol::V311).is_err());
    // Control characters and non-characters are accepted (documented decision).
    assert!(dec(&[0x30, 3, 0, 1, 0x01], Protocol::V311)
        .unwrap()
        .is_some());
    assert!(dec(&[0x30, 5, 0, 3, 0xef, 0xbf, 0xbf], Protocol::V311)
        .unwrap()
        .is_some());
}

#[test]
fn publish_topic_rules() {
    let e = dec(&[0x30, 3, 0, 1, b'+'], Protocol::V311).unwrap_err();
    assert_eq!(e.reason_code(), reason::TOPIC_NAME_INVALID);
    assert!(dec(&[0x30, 5, 0, 3, b'a', b'/', b'#'], Protocol::V5).is_err());
    // Empty topic: invalid in v3, allowed in v5 (with a topic alias, checked by the broker).
    assert!(dec(&[0x30, 2, 0, 0], Protocol::V311).is_err());
    assert!(dec(&[0x30, 3, 0, 0, 0], Protocol::V5).unwrap().is_some());
    // Packet id 0 on QoS 1.
    assert!(dec(&[0x32, 5, 0, 1, b'a', 0, 0], Protocol::V311).is_err());
}

#[test]
fn v5_properties() {
    // PUBLISH with a duplicated content type: protocol error.
    let body = [0, 1, b'a', 8, 3, 0, 1, b'x', 3, 0, 1, b'y'];
    let mut b = vec![0x30, body.len() as u8];
    b.extend(body);
    assert_eq!(
        dec(&b, Protocol::V5).unwrap_err().reason_code(),
        reason::PROTOCOL_ERROR
    );
    // Unknown property id.
    let body = [0, 1, b'a', 2, 0x7f, 0];
    let mut b = vec![0x30, body.len() as u8];
    b.extend(body);
    assert_eq!(
        dec(&b, Protocol::V5).unwrap_err().reason_code(),
        reason::MALFORMED_PACKET
    );
    // Property length beyond the packet.
    assert!(dec(&[0x30, 4, 0, 1, b'a', 9], Protocol::V5).is_err());
    // Two user properties with the same key and two subscription ids are fine.
    let body = [
        0, 1, b'a', 15, 0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 0, 0x0b, 5,
    ];
    let mut b = vec![0x30, body.len() as u8];
    b.extend(body);
    let Some(Packet::Publish(p)) = dec(&b, Protocol::V5).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(p.properties.subscription_identifiers, vec![5]);
}

#[test]
fn short_forms_of_acks_and_disconnect() {
    let Some(Packet::PubAck(a)) = dec(&[0x40, 2, 0, 7], Protocol::V5).unwrap() else {
        panic!()
    };
    assert_eq!((a.packet_id, a.reason), (7, 0));
    let Some(Packet::PubAck(a)) = dec(&[0x40, 3, 0, 7, 0x10], Protocol::V5).unwrap() else {
        panic!()
    };
    assert_eq!(a.reason, 0x10);
    assert_eq!(
        dec(&[0xe0, 0], Protocol::V5),
        Ok(Some(Packet::Disconnect(Disconnect::default())))
    );
    let Some(Packet::Disconnect(d)) = dec(&[0xe0, 1, 4], Protocol::V5).unwrap() else {
        panic!()
    };
    assert_eq!(d.reason, reason::DISCONNECT_WITH_WILL);
}

#[test]
fn connect_versions_and_levels() {
    for (name, level, want) in [
        (&b"MQIsdp"[..], 3, Protocol::V31),
        (b"MQTT", 4, Protocol::V311),
    ] {
        let b = connect_bytes(name, level, 0b10, &[0, 1, b'c']);
        let Some(Packet::Connect(c)) = dec(&b, Protocol::V5).unwrap() else {
            panic!()
        };
        assert_eq!(c.protocol, want);
        assert!(c.clean_start);
        assert_eq!(c.client_id, "c");
    }
    let b = connect_bytes(b"MQTT", 5, 0, &[0, 0, 1, b'c']);
    let Some(Packet::Connect(c)) = dec(&b, Protocol::V311).unwrap() else {
        panic!()
    };
    assert_eq!(c.protocol, Protocol::V5);

    let e = dec(&connect_bytes(b"MQTT", 6, 0, &[0, 0]), Protocol::V311).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedProtocolLevel(6));
    assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(
        e.v3_connack_code(),
        Some(reason::V3_UNACCEPTABLE_PROTOCOL_VERSION)
    );
    let e = dec(&connect_bytes(b"HTTP", 4, 0, &[0, 0]), Protocol::V311).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedProtocolName);
}

#[test]
fn connect_flag_rules() {
    // Reserved bit.
    assert!(dec(&connect_bytes(b"MQTT", 4, 0b1, &[0, 0]), Protocol::V311).is_err());
    // Will QoS without will flag.
    assert!(dec(&connect_bytes(b"MQTT", 4, 0b1000, &[0, 0]), Protocol::V311).is_err());
    // Will QoS 3.
    assert!(dec(&connect_bytes(b"MQTT", 4, 0b11100, &[0, 0]), Protocol::V311).is_err());
    // Password without user name: refused in 3.1.1, allowed in 5.
    assert!(dec(
        &connect_bytes(b"MQTT", 4, 0b100_0000, &[0, 0, 0, 1, b'p']),
        Protocol::V311
    )
    .is_err());
    let Some(Packet::Connect(c)) = dec(
        &connect_bytes(b"MQTT", 5, 0b100_0000, &[0, 0, 0, 0, 1, b'p']),
        Protocol::V5,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
    // Will with a wildcard topic.
    let rest = [0, 0, 0, 1, b'#', 0, 0];
    assert!(dec(&connect_bytes(b"MQTT", 4, 0b100, &rest), Protocol::V311).is_err());
}

#[test]
fn subscribe_rules() {
    // No filters.
    assert!(dec(&[0x82, 2, 0, 1], Protocol::V311).is_err());
    // Reserved option bits in v3 (no_local is v5 only).
    assert!(dec(&[0x82, 6, 0, 1, 0, 1, b'a', 0b100], Protocol::V311).is_err());
    // Retain handling 3 in v5.
    assert!(dec(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0b11_0000], Protocol::V5).is_err());
    let Some(Packet::Subscribe(s)) =
        dec(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0b10_1110], Protocol::V5).unwrap()
    else {
        panic!()
    };
    let o = s.subscriptions[0].options;
    assert_eq!(o.qos, QoS::ExactlyOnce);
    assert!(o.no_local && o.retain_as_published);
    assert_eq!(o.retain_handling, 2);
    // Filter syntax is not the decoder's business (SUBACK failure instead).
    assert!(dec(&[0x82, 7, 0, 1, 0, 2, b'a', b'#', 0], Protocol::V311)
        .unwrap()
        .is_some());
}

#[test]
fn encode_refuses_what_does_not_fit() {
    let mut out = BytesMut::new();
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Default::default(),
    });
    assert!(encode(&p, Protocol::V311, &mut out).is_err());
    assert!(encode(&Packet::Auth(Auth::default()), Protocol::V311, &mut out).is_err());
    let long = "x".repeat(70_000);
    let p = Packet::Unsubscribe(Unsubscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![long],
    });
    assert!(encode(&p, Protocol::V311, &mut out).is_err());
    assert!(out.is_empty());
    out.put_u8(0);
}

#[test]
fn encoded_len_matches_encode() {
    let mut props = Properties::default();
    props.user_properties.push(("k".into(), "v".into()));
    let p = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(9),
        properties: props,
        payload: vec![7u8; 300].into(),
    });
    for v in [Protocol::V311, Protocol::V5] {
        let mut out = BytesMut::new();
        encode(&p, v, &mut out).unwrap();
        assert_eq!(encoded_len(&p, v).unwrap(), out.len());
    }
}
