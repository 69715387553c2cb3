//! MQTT ⇄ core translation (DESIGN.md "Cross-protocol mapping"): topics and filters to routing
//! keys and binding patterns, MQTT publishes to core messages, core messages to MQTT publishes.

use super::session::OutboundMessage;
use crate::adapter::header_text::field_value_text;
use crate::core::message::Protocol;
use crate::core::Message;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_amqp::{BasicProperties, FieldTable, FieldValue};
use switchboard_mqtt::{Properties, PropertyValues, QoS};

/// QoS the message was published with (RabbitMQ's header name).
pub const HEADER_QOS: &str = "x-mqtt-publish-qos";
/// Client id of the MQTT publisher, for No Local.
pub const HEADER_CLIENT_ID: &str = "x-mqtt-client-id";
/// The publisher set the retain flag (kept for Retain As Published).
pub const HEADER_RETAIN: &str = "x-mqtt-retain";
/// v5 Payload Format Indicator 1 (UTF-8 payload), forwarded unaltered as the spec asks.
pub const HEADER_PAYLOAD_FORMAT: &str = "x-mqtt-payload-format-indicator";
/// v5 Response Topic (DESIGN.md).
pub const HEADER_REPLY_TO_TOPIC: &str = "x-reply-to-topic";
/// v5 Correlation Data that is not a valid AMQP short string (DESIGN.md).
pub const HEADER_CORRELATION: &str = "x-correlation-id";
/// The publish's DUP flag (RabbitMQ's header name).
pub const HEADER_DUP: &str = "x-mqtt-dup";

/// A message's metadata as MQTT subscribers get it (before the per-subscriber QoS, retain,
/// subscription identifiers, topic alias and remaining expiry): for a message published over
/// MQTT, the publisher's properties exactly (their order, repeated user properties); for
/// others, the translation of the core's properties, made once per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttForm {
    pub properties: Properties,
    /// Topic, QoS and retain flag: given at arrival for an MQTT publish, else worked out from
    /// the routing key and headers when the form is translated, once for every subscriber.
    meta: FormMeta,
}

/// The fixed-header side of a message as MQTT subscribers get it, and who published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormMeta {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    /// The publish's DUP flag.
    pub dup: bool,
    /// The MQTT client that published it, for No Local (none for other protocols).
    pub publisher: Option<Arc<str>>,
}

impl FormMeta {
    /// The topic, QoS and flags of a core message, from its routing key and headers.
    pub fn of(msg: &Message) -> Self {
        let p = msg.properties();
        FormMeta {
            topic: key_to_topic(&msg.routing_key),
            qos: message_qos(p),
            retain: published_retained(p),
            dup: header(p, HEADER_DUP).and_then(FieldValue::as_bool) == Some(true),
            publisher: published_by(p).map(Arc::from),
        }
    }
}

impl MqttForm {
    /// The arrival form of a publish under its topic and flags: what is per hop (topic alias,
    /// subscription identifiers) goes, the expiry interval is recounted when sent.
    pub fn arrived(mut properties: Properties, meta: FormMeta) -> Self {
        if let Some(v) = properties.present_mut() {
            v.topic_alias = None;
            v.subscription_identifiers.clear();
            v.message_expiry_interval = None;
        }
        MqttForm { properties, meta }
    }

    /// A message the adapter keeps itself (retained, restored): `properties` exactly as given,
    /// under `topic`.
    pub fn kept(properties: Properties, topic: String, qos: QoS, retain: bool) -> Self {
        MqttForm {
            properties,
            meta: FormMeta {
                topic,
                qos,
                retain,
                dup: false,
                publisher: None,
            },
        }
    }

    /// The form of a message that did not arrive over MQTT, translated from its properties.
    pub fn translated(msg: &Message) -> Self {
        MqttForm {
            properties: outbound_properties(msg.properties()),
            meta: FormMeta::of(msg),
        }
    }

    /// The topic, QoS and flags.
    pub fn meta(&self) -> &FormMeta {
        &self.meta
    }
}

/// Swaps `/` and `.`: MQTT `a/b.c` is routing key `a.b/c` and back. The swap is its own
/// inverse, so topics survive the round trip exactly. Copies the runs between separators
/// whole (a topic is translated for every publish), found by a plain byte scan: both are
/// ASCII, so every index found is a char boundary, and `str::find` with two chars cost
/// about 470 instructions per publish.
pub fn swap_separators(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let swapped = match b {
            b'/' => '.',
            b'.' => '/',
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push(swapped);
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out
}

pub fn topic_to_key(topic: &str) -> String {
    swap_separators(topic)
}

pub fn key_to_topic(key: &str) -> String {
    swap_separators(key)
}

/// An MQTT filter as an AMQP topic binding pattern: `+` becomes `*`, `#` stays.
pub fn filter_to_pattern(filter: &str) -> String {
    filter
        .chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            '+' => '*',
            c => c,
        })
        .collect()
}

fn now_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Core properties for an MQTT publish, headers included ([`publish_headers`]).
pub fn publish_properties(
    publish: PublishFlags,
    client_id: &str,
    props: &Properties,
    now: SystemTime,
) -> BasicProperties {
    let mut p = BasicProperties {
        headers: Some(publish_headers(publish, client_id, props)),
        ..BasicProperties::default()
    };
    set_publish_properties_but_headers(&mut p, publish.qos, props, now);
    p
}

/// Core properties for an MQTT publish but its headers, which [`arrival_headers`] makes when
/// something reads them. The timestamp records when the broker took the message, so the
/// Message Expiry Interval can be counted down on delivery.
pub fn publish_properties_but_headers(
    qos: QoS,
    props: &Properties,
    now: SystemTime,
) -> switchboard_amqp::Properties {
    let mut p = switchboard_amqp::Properties::default();
    // Written in place: the properties are allocated once and not built and then moved.
    set_publish_properties_but_headers(&mut p, qos, props, now);
    p
}

/// Sets what [`publish_properties_but_headers`] makes on `p`, which has none of it set.
fn set_publish_properties_but_headers(
    p: &mut BasicProperties,
    qos: QoS,
    props: &Properties,
    now: SystemTime,
) {
    p.content_type = props.content_type.clone();
    p.delivery_mode = Some(if qos == QoS::AtMostOnce { 1 } else { 2 });
    p.correlation_id = props
        .correlation_data
        .as_ref()
        .and_then(|c| short_string(c))
        .map(str::to_owned);
    p.expiration = props
        .message_expiry_interval
        .map(|s| (u64::from(s) * 1000).to_string());
    p.timestamp = Some(now_secs(now));
}

/// Correlation data that fits an AMQP short string (else it travels in a header).
fn short_string(c: &[u8]) -> Option<&str> {
    std::str::from_utf8(c).ok().filter(|s| s.len() <= 255)
}

/// The headers of a message published over MQTT, made from its arrival form (see
/// [`crate::core::Message::with_derived_headers`]); empty for any other message.
pub fn arrival_headers(msg: &Message) -> FieldTable {
    let Some(form) = msg.arrival::<MqttForm>(Protocol::Mqtt) else {
        return FieldTable::new();
    };
    let meta = &form.meta;
    let flags = PublishFlags {
        qos: meta.qos,
        retain: meta.retain,
        dup: meta.dup,
    };
    publish_headers(
        flags,
        meta.publisher.as_deref().unwrap_or_default(),
        &form.properties,
    )
}

/// The AMQP headers of an MQTT publish. User properties become headers (RabbitMQ's mapping);
/// a name given more than once becomes one header whose value is the array of its values in
/// order, so none is lost.
pub fn publish_headers(publish: PublishFlags, client_id: &str, props: &Properties) -> FieldTable {
    let PublishFlags { qos, retain, dup } = publish;
    let mut headers = FieldTable::new();
    for (k, v) in &props.user_properties {
        let value = FieldValue::string(v.clone());
        match headers.get_mut(k) {
            None => {
                headers.insert(k.clone(), value);
            }
            Some(FieldValue::Array(values)) => values.push(value),
            Some(first) => {
                let first = std::mem::replace(first, FieldValue::Void);
                headers.insert(k.clone(), FieldValue::Array(vec![first, value]));
            }
        }
    }
    headers.insert(HEADER_QOS.into(), FieldValue::U8(qos as u8));
    headers.insert(HEADER_DUP.into(), FieldValue::Bool(dup));
    headers.insert(HEADER_CLIENT_ID.into(), FieldValue::string(client_id));
    if retain {
        headers.insert(HEADER_RETAIN.into(), FieldValue::Bool(true));
    }
    if props.payload_format_indicator == Some(1) {
        headers.insert(HEADER_PAYLOAD_FORMAT.into(), FieldValue::U8(1));
    }
    if let Some(t) = &props.response_topic {
        headers.insert(HEADER_REPLY_TO_TOPIC.into(), FieldValue::string(t.clone()));
    }
    if let Some(c) = &props.correlation_data {
        if short_string(c).is_none() {
            headers.insert(HEADER_CORRELATION.into(), FieldValue::ByteArray(c.clone()));
        }
    }
    headers
}

/// The fixed-header flags of a publish that the core keeps.
#[derive(Debug, Clone, Copy)]
pub struct PublishFlags {
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
}

/// The QoS a core message was published with: the MQTT header, else persistent = 1.
pub fn message_qos(p: &BasicProperties) -> QoS {
    let from_header = p
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_QOS))
        .and_then(FieldValue::as_i64)
        .and_then(|q| u8::try_from(q).ok())
        .and_then(QoS::from_u8);
    from_header.unwrap_or(if p.delivery_mode == Some(2) {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    })
}

fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a FieldValue> {
    p.headers.as_ref().and_then(|h| h.get(name))
}

pub fn published_by(p: &BasicProperties) -> Option<&str> {
    header(p, HEADER_CLIENT_ID).and_then(FieldValue::as_str)
}

pub fn published_retained(p: &BasicProperties) -> bool {
    header(p, HEADER_RETAIN).and_then(FieldValue::as_bool) == Some(true)
}

/// When a core message expires: its `expiration` (ms) counted from its timestamp (seconds),
/// or from now when it has none.
pub fn expires_at(p: &BasicProperties, now: SystemTime) -> Option<SystemTime> {
    let ms: u64 = p.expiration.as_deref()?.parse().ok()?;
    let start = p
        .timestamp
        .map_or(now, |t| UNIX_EPOCH + Duration::from_secs(t));
    start.checked_add(Duration::from_millis(ms))
}

/// A core message as the MQTT message a subscriber gets (before QoS and retain are chosen).
/// AMQP properties become v5 properties as DESIGN.md maps them; every other header becomes a
/// user property in the text form of `header_text`.
pub fn outbound_from_core(
    routing_key: &str,
    body: &Bytes,
    p: &BasicProperties,
    now: SystemTime,
) -> OutboundMessage {
    outbound(routing_key, body, p, outbound_properties(p), now)
}

/// A core message's [`MqttForm`]: the arrival one, or translated once for every MQTT
/// subscriber.
pub fn mqtt_form(msg: &Message) -> Arc<MqttForm> {
    msg.form(Protocol::Mqtt, MqttForm::translated)
}

/// A core message as an MQTT message, sharing its [`MqttForm`] (topic and properties are not
/// copied). `now` is read only when the message has an expiration to count from it.
pub fn outbound_from_form(
    msg: &Message,
    form: Arc<MqttForm>,
    now: impl FnOnce() -> SystemTime,
) -> OutboundMessage {
    let meta = form.meta();
    let (qos, retain) = (meta.qos, meta.retain);
    let expires_at = msg
        .routing_properties()
        .expiration
        .as_ref()
        .and_then(|_| expires_at(msg.routing_properties(), now()));
    OutboundMessage::of_form(form, msg.body.clone(), qos, retain, expires_at)
}

fn outbound(
    routing_key: &str,
    body: &Bytes,
    p: &BasicProperties,
    properties: Properties,
    now: SystemTime,
) -> OutboundMessage {
    OutboundMessage::new(
        key_to_topic(routing_key),
        body.clone(),
        message_qos(p),
        published_retained(p),
        properties,
        expires_at(p, now),
    )
}

/// The core's properties as v5 properties. An array of strings (how a repeated user property
/// crosses AMQP) becomes that user property repeated; other values take the text form of
/// `header_text`.
fn outbound_properties(p: &BasicProperties) -> Properties {
    let mut props = PropertyValues {
        content_type: p.content_type.clone(),
        ..Default::default()
    };
    if let Some(c) = &p.correlation_id {
        props.correlation_data = Some(Bytes::from(c.clone().into_bytes()));
    }
    if let Some(h) = &p.headers {
        for (k, v) in h {
            match k.as_str() {
                HEADER_QOS | HEADER_CLIENT_ID | HEADER_RETAIN | HEADER_DUP => {}
                HEADER_PAYLOAD_FORMAT => props.payload_format_indicator = Some(1),
                HEADER_REPLY_TO_TOPIC => {
                    props.response_topic = v.as_str().map(str::to_owned);
                }
                HEADER_CORRELATION if props.correlation_data.is_none() => {
                    if let FieldValue::ByteArray(b) | FieldValue::LongString(b) = v {
                        props.correlation_data = Some(b.clone());
                    }
                }
                _ => match v {
                    FieldValue::Array(items) if items.iter().all(|i| i.as_str().is_some()) => {
                        for item in items {
                            let text = item.as_str().unwrap_or_default().to_owned();
                            props.user_properties.push((k.clone(), text));
                        }
                    }
                    _ => props
                        .user_properties
                        .push((k.clone(), field_value_text(v).into_owned())),
                },
            }
        }
    }
    Properties::from(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(qos: QoS, retain: bool) -> PublishFlags {
        PublishFlags {
            qos,
            retain,
            dup: false,
        }
    }

    #[test]
    fn repeated_user_properties_cross_amqp_as_an_array_and_come_back_repeated() {
        let props: Properties = PropertyValues {
            user_properties: vec![
                ("region".into(), "eu".into()),
                ("trace".into(), "abc".into()),
                ("region".into(), "dup".into()),
                ("region".into(), "third".into()),
            ],
            ..Default::default()
        }
        .into();
        let now = SystemTime::now();
        let p = publish_properties(flags(QoS::AtLeastOnce, false), "me", &props, now);
        let h = p.headers.as_ref().unwrap();
        assert_eq!(
            h.get("region"),
            Some(&FieldValue::Array(vec![
                FieldValue::string("eu"),
                FieldValue::string("dup"),
                FieldValue::string("third"),
            ]))
        );
        assert_eq!(h.get("trace"), Some(&FieldValue::string("abc")));
        assert_eq!(h.get(HEADER_DUP), Some(&FieldValue::Bool(false)));
        // Without the arrival form (an AMQP republish, a restart) every value comes back, in
        // order per name.
        let out = outbound_from_core("t", &Bytes::new(), &p, now);
        let region: Vec<&str> = out
            .properties()
            .user_properties
            .iter()
            .filter(|(k, _)| k == "region")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(region, ["eu", "dup", "third"]);
        assert!(!out
            .properties()
            .user_properties
            .iter()
            .any(|(k, _)| k.starts_with("x-mqtt")));
    }

    #[test]
    fn topics_and_filters() {
        assert_eq!(topic_to_key("a/b.c/d"), "a.b/c.d");
        assert_eq!(topic_to_key("/é.ü/"), ".é/ü.");
        assert_eq!(topic_to_key(""), "");
        assert_eq!(key_to_topic(&topic_to_key("a/b.c//d")), "a/b.c//d");
        assert_eq!(filter_to_pattern("sport/+/x/#"), "sport.*.x.#");
    }

    #[test]
    fn headers_derived_from_the_arrival_form_are_those_made_at_once() {
        let props: Properties = PropertyValues {
            correlation_data: Some(Bytes::from_static(&[0xff, 0])),
            response_topic: Some("reply/here".into()),
            payload_format_indicator: Some(1),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            ..Default::default()
        }
        .into();
        let now = SystemTime::now();
        let flags = PublishFlags {
            qos: QoS::AtLeastOnce,
            retain: true,
            dup: true,
        };
        let eager = publish_properties(flags, "me", &props, now);
        let arrived = MqttForm::arrived(
            props.clone(),
            FormMeta {
                topic: "a/b".into(),
                qos: flags.qos,
                retain: flags.retain,
                dup: flags.dup,
                publisher: Some("me".into()),
            },
        );
        let m = Message::with_properties(
            "amq.topic".into(),
            "a.b".into(),
            publish_properties_but_headers(flags.qos, &props, now),
            None,
            Bytes::new(),
            crate::core::memory::MemoryCharge::default(),
        )
        .with_arrival(Protocol::Mqtt, arrived)
        .with_derived_headers(arrival_headers);
        assert!(m.routing_properties().headers.is_none());
        assert_eq!(*m.properties(), eager);
        // A form translated from those headers (as after a restart) names the same publisher.
        let meta = FormMeta::of(&m);
        assert_eq!(meta.publisher.as_deref(), Some("me"));
        assert!(meta.dup && meta.retain);
    }

    #[test]
    fn properties_round_trip_through_core() {
        let now = SystemTime::now();
        let props: Properties = PropertyValues {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"abc")),
            response_topic: Some("reply/here".into()),
            message_expiry_interval: Some(60),
            payload_format_indicator: Some(1),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        }
        .into();
        let p = publish_properties(flags(QoS::ExactlyOnce, true), "me", &props, now);
        assert_eq!(p.correlation_id.as_deref(), Some("abc"));
        assert_eq!(p.expiration.as_deref(), Some("60000"));
        assert_eq!(published_by(&p), Some("me"));
        let out = outbound_from_core("a.b", &Bytes::from_static(b"x"), &p, now);
        assert_eq!(out.topic(), "a/b");
        assert_eq!(out.qos, QoS::ExactlyOnce);
        assert!(out.retain);
        assert_eq!(out.properties().content_type, props.content_type);
        assert_eq!(out.properties().correlation_data, props.correlation_data);
        assert_eq!(out.properties().response_topic, props.response_topic);
        assert_eq!(out.properties().payload_format_indicator, Some(1));
        assert_eq!(out.properties().user_properties, props.user_properties);
        let left = out.remaining_expiry(now).unwrap();
        assert!((59..=60).contains(&left), "{left}");
    }

    #[test]
    fn binary_correlation_data_goes_to_a_header() {
        let props: Properties = PropertyValues {
            correlation_data: Some(Bytes::from_static(&[0xff, 0])),
            ..Default::default()
        }
        .into();
        let now = SystemTime::now();
        let p = publish_properties(flags(QoS::AtMostOnce, false), "me", &props, now);
        assert!(p.correlation_id.is_none());
        let out = outbound_from_core("t", &Bytes::new(), &p, now);
        assert_eq!(out.properties().correlation_data, props.correlation_data);
        assert_eq!(out.qos, QoS::AtMostOnce);
    }

    #[test]
    fn amqp_messages_map_qos_from_delivery_mode() {
        let p = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        assert_eq!(message_qos(&p), QoS::AtLeastOnce);
        assert_eq!(message_qos(&BasicProperties::default()), QoS::AtMostOnce);
    }
}
