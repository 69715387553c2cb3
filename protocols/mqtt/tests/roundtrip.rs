//! Property test: every packet type, encoded for v3.1.1 and v5 (and CONNECT for 3.1), decodes
//! back to the same value.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use switchboard_mqtt::*;

/// MQTT strings: any Unicode but U+0000, short enough for the test to stay fast.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[^\u{0}+#]{1,12}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0u8..=1)
}

fn properties() -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        of(any::<u32>()),
        of(text()),
        of(text()),
        of(binary()),
        vec(1u32..=VAR_INT_MAX, 0..3),
        of(any::<u32>()),
        of(text()),
        of(any::<u16>()),
        of(text()),
        of(binary()),
        flag(),
    );
    let b = (
        of(any::<u32>()),
        flag(),
        of(text()),
        of(text()),
        of(text()),
        of(1u16..),
        of(any::<u16>()),
        of(any::<u16>()),
        flag(),
        flag(),
        vec((text(), text()), 0..3),
        of(1u32..),
    );
    let c = (flag(), flag(), flag());
    (a, b, c).prop_map(|(a, b, c)| {
        Properties::from(PropertyValues {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: a.9,
            authentication_data: a.10,
            request_problem_information: a.11,
            will_delay_interval: b.0,
            request_response_information: b.1,
            response_information: b.2,
            server_reference: b.3,
            reason_string: b.4,
            receive_maximum: b.5,
            topic_alias_maximum: b.6,
            topic_alias: b.7,
            maximum_qos: b.8,
            retain_available: b.9,
            user_properties: b.10,
            maximum_packet_size: b.11,
            wildcard_subscription_available: c.0,
            subscription_identifier_available: c.1,
            shared_subscription_available: c.2,
        })
    })
}

/// Properties for `version`: none before v5.
fn props_for(v: Protocol) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        properties().boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn reason_for(v: Protocol) -> BoxedStrategy<u8> {
    if v.is_v5() {
        any::<u8>().boxed()
    } else {
        Just(0).boxed()
    }
}

fn pub_response(v: Protocol) -> impl Strategy<Value = PubResponse> {
    (1u16.., reason_for(v), props_for(v)).prop_map(|(packet_id, reason, properties)| PubResponse {
        packet_id,
        reason,
        properties,
    })
}

fn connect(v: Protocol) -> impl Strategy<Value = Connect> {
    let will = (topic_name(), binary(), qos(), any::<bool>(), props_for(v)).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    );
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will),
        of(text()),
        of(binary()),
        props_for(v),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // v3 forbids a password without a user name.
                let password = if v.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn publish(v: Protocol) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        1u16..,
        props_for(v),
        binary(),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: (!qos0).then_some(id),
                properties,
                payload,
            }
        })
}

fn subscribe(v: Protocol) -> impl Strategy<Value = Subscribe> {
    let v5 = v.is_v5();
    let sub = (text(), qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(
        move |(filter, qos, no_local, rap, rh)| Subscription {
            filter,
            options: SubscriptionOptions {
                qos,
                no_local: no_local && v5,
                retain_as_published: rap && v5,
                retain_handling: if v5 { rh } else { 0 },
            },
        },
    );
    (1u16.., props_for(v), vec(sub, 1..4)).prop_map(|(packet_id, properties, subscriptions)| {
        Subscribe {
            packet_id,
            properties,
            subscriptions,
        }
    })
}

fn packet(v: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    let codes = move || {
        if v5 {
            vec(any::<u8>(), 0..4).boxed()
        } else {
            Just(Vec::new()).boxed()
        }
    };
    let mut options = vec![
        connect(v)
            .prop_map(|c| Packet::Connect(Box::new(c)))
            .boxed(),
        (any::<bool>(), any::<u8>(), props_for(v))
            .prop_map(|(session_present, code, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present,
                    code,
                    properties,
                })
            })
            .boxed(),
        publish(v).prop_map(Packet::Publish).boxed(),
        pub_response(v).prop_map(Packet::PubAck).boxed(),
        pub_response(v).prop_map(Packet::PubRec).boxed(),
        pub_response(v).prop_map(Packet::PubRel).boxed(),
        pub_response(v).prop_map(Packet::PubComp).boxed(),
        subscribe(v).prop_map(Packet::Subscribe).boxed(),
        (any::<u16>(), props_for(v), vec(any::<u8>(), 1..4))
            .prop_map(|(packet_id, properties, codes)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    codes,
                })
            })
            .boxed(),
        (1u16.., props_for(v), vec(text(), 1..4))
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (any::<u16>(), props_for(v), codes())
            .prop_map(|(packet_id, properties, codes)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    codes,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (reason_for(v), props_for(v))
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed(),
    ];
    if v5 {
        options.push(
            (any::<u8>(), properties())
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options)
}

fn round_trip(p: &Packet, v: Protocol) -> Result<(), TestCaseError> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(encoded_len(p, v).ok(), Some(out.len()));
    let decoded =
        decode(&mut out, v, usize::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(decoded.as_ref(), Some(p));
    prop_assert!(out.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn v311_round_trip(p in packet(Protocol::V311)) {
        round_trip(&p, Protocol::V311)?;
    }

    #[test]
    fn v5_round_trip(p in packet(Protocol::V5)) {
        round_trip(&p, Protocol::V5)?;
    }

    #[test]
    fn v31_connect_round_trip(c in connect(Protocol::V31)) {
        round_trip(&Packet::Connect(Box::new(c)), Protocol::V311)?;
    }
}
