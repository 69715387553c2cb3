//! STOMP headers ⇄ AMQP basic properties (DESIGN.md): the property headers map to properties,
//! every other header to an AMQP string header; going out, every AMQP header value is rendered
//! as text by [`crate::adapter::header_text`], so nothing is dropped (RabbitMQ drops `x-death`).

use super::destination::reply_to_header;
use super::error::{StompError, StompResult};
use crate::adapter::header_text::field_value_text;
use crate::core::Message;
use switchboard_amqp::{BasicProperties, FieldTable, FieldValue};
use switchboard_stomp::Frame;

/// Headers of the STOMP protocol itself on SEND: not message metadata.
const FRAME_HEADERS: &[&str] = &["destination", "transaction", "receipt", "content-length"];

/// Headers that become basic properties.
const PROPERTY_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "persistent",
    "priority",
    "correlation-id",
    "reply-to",
    "expiration",
    "amqp-message-id",
    "timestamp",
    "type",
    "user-id",
    "app-id",
];

/// The properties of a SEND. `reply-to` is taken as written; the caller resolves
/// `/temp-queue/…`.
pub fn properties_from_send(frame: &Frame) -> StompResult<BasicProperties> {
    let text = |name: &str| frame.header(name).map(str::to_owned);
    let mut props = BasicProperties {
        content_type: text("content-type"),
        content_encoding: text("content-encoding"),
        correlation_id: text("correlation-id"),
        reply_to: text("reply-to"),
        expiration: text("expiration"),
        message_id: text("amqp-message-id"),
        kind: text("type"),
        user_id: text("user-id"),
        app_id: text("app-id"),
        ..Default::default()
    };
    if let Some(p) = frame.header("persistent") {
        props.delivery_mode = match p.trim() {
            "true" => Some(2),
            "false" => Some(1),
            _ => {
                return Err(StompError::invalid_header(
                    "persistent",
                    p,
                    "expected true or false",
                ))
            }
        };
    }
    if let Some(p) = frame.header("priority") {
        let n = p
            .trim()
            .parse::<u8>()
            .map_err(|_| StompError::invalid_header("priority", p, "expected 0 to 255"))?;
        props.priority = Some(n);
    }
    if let Some(t) = frame.header("timestamp") {
        let n = t.trim().parse::<u64>().map_err(|_| {
            StompError::invalid_header("timestamp", t, "expected seconds since the epoch")
        })?;
        props.timestamp = Some(n);
    }
    let mut headers = FieldTable::new();
    for (name, value) in &frame.headers {
        if FRAME_HEADERS.contains(&name.as_str())
            || PROPERTY_HEADERS.contains(&name.as_str())
            || headers.contains_key(name)
        {
            continue;
        }
        headers.insert(name.clone(), FieldValue::string(value.clone()));
    }
    if !headers.is_empty() {
        props.headers = Some(headers);
    }
    Ok(props)
}

/// Appends a message's properties and AMQP headers as STOMP headers (after the MESSAGE frame's
/// own headers, which therefore win over an AMQP header of the same name).
pub fn message_headers(message: &Message, out: &mut Vec<(String, String)>) {
    let p = message.properties();
    let mut put = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            out.push((name.to_owned(), v));
        }
    };
    put("content-type", p.content_type.clone());
    put("content-encoding", p.content_encoding.clone());
    put(
        "persistent",
        (p.delivery_mode == Some(2)).then(|| "true".to_owned()),
    );
    put("priority", p.priority.map(|n| n.to_string()));
    put("correlation-id", p.correlation_id.clone());
    put("reply-to", p.reply_to.as_deref().map(reply_to_header));
    put("expiration", p.expiration.clone());
    put("amqp-message-id", p.message_id.clone());
    put("timestamp", p.timestamp.map(|t| t.to_string()));
    put("type", p.kind.clone());
    put("user-id", p.user_id.clone());
    put("app-id", p.app_id.clone());
    if let Some(table) = &p.headers {
        for (name, value) in table {
            out.push((name.clone(), field_value_text(value).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::memory::MemoryCharge;
    use bytes::Bytes;
    use switchboard_stomp::Command;

    #[test]
    fn send_headers_become_properties_and_headers() {
        let f = Frame::new(Command::Send)
            .with("destination", "/queue/q")
            .with("receipt", "r")
            .with("content-type", "text/plain")
            .with("persistent", "true")
            .with("priority", "5")
            .with("timestamp", "1700000000")
            .with("type", "t")
            .with("amqp-message-id", "m1")
            .with("custom", "a")
            .with("custom", "b");
        let p = properties_from_send(&f).unwrap();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(5));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert_eq!(p.kind.as_deref(), Some("t"));
        assert_eq!(p.message_id.as_deref(), Some("m1"));
        let h = p.headers.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("custom").and_then(|v| v.as_str()), Some("a"));
        let bad = Frame::new(Command::Send).with("priority", "high");
        assert!(properties_from_send(&bad).is_err());
    }

    #[test]
    fn every_header_type_goes_out_as_text() {
        let mut table = FieldTable::new();
        table.insert("n".into(), FieldValue::I32(-3));
        table.insert("b".into(), FieldValue::Bool(true));
        table.insert(
            "x-death".into(),
            FieldValue::Array(vec![FieldValue::string("q")]),
        );
        let props = BasicProperties {
            headers: Some(table),
            reply_to: Some("amq.gen-abc".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let m = Message::new(
            String::new(),
            "q".into(),
            props,
            None,
            Bytes::new(),
            MemoryCharge::default(),
        );
        let mut out = Vec::new();
        message_headers(&m, &mut out);
        let get = |n: &str| out.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("persistent"), Some("true"));
        assert_eq!(get("reply-to"), Some("/reply-queue/amq.gen-abc"));
        assert_eq!(get("n"), Some("-3"));
        assert_eq!(get("b"), Some("true"));
        assert_eq!(get("x-death"), Some(r#"["q"]"#));
    }
}
