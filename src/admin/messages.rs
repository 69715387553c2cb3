//! Messages through the management API, in RabbitMQ's JSON: AMQP basic properties as an object
//! of the fields that are set, payloads as text or base64 (`payload_encoding`).

use super::json::{field_table_to_json, json_to_field_table};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use switchboard_amqp::BasicProperties;

/// The properties that are set, under RabbitMQ's names.
pub(super) fn properties_to_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut text = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), json!(v));
        }
    };
    text("content_type", &p.content_type);
    text("content_encoding", &p.content_encoding);
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("expiration", &p.expiration);
    text("message_id", &p.message_id);
    text("type", &p.kind);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    text("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        m.insert("headers".into(), field_table_to_json(h));
    }
    if let Some(d) = p.delivery_mode {
        m.insert("delivery_mode".into(), json!(d));
    }
    if let Some(pr) = p.priority {
        m.insert("priority".into(), json!(pr));
    }
    if let Some(t) = p.timestamp {
        m.insert("timestamp".into(), json!(t));
    }
    Value::Object(m)
}

/// A small unsigned integer given as a number or as text (rabbitmqadmin sends `"2"`).
fn small_uint(key: &str, v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("property {key} must be an unsigned integer, not {v}"))
}

/// RabbitMQ's property object as basic properties; unknown keys are refused as RabbitMQ does.
pub(super) fn properties_from_json(v: Option<&Value>) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let Some(v) = v else {
        return Ok(p);
    };
    let Value::Object(m) = v else {
        return Err("properties must be a JSON object".into());
    };
    for (k, v) in m {
        let text = || match v {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            _ => Err(format!("property {k} must be a string")),
        };
        match k.as_str() {
            "content_type" => p.content_type = text()?,
            "content_encoding" => p.content_encoding = text()?,
            "correlation_id" => p.correlation_id = text()?,
            "reply_to" => p.reply_to = text()?,
            "expiration" => p.expiration = text()?,
            "message_id" => p.message_id = text()?,
            "type" => p.kind = text()?,
            "user_id" => p.user_id = text()?,
            "app_id" => p.app_id = text()?,
            "cluster_id" => p.cluster_id = text()?,
            "headers" => p.headers = Some(json_to_field_table(Some(v))?),
            "delivery_mode" => {
                p.delivery_mode = Some(
                    u8::try_from(small_uint(k, v)?).map_err(|_| "delivery_mode out of range")?,
                )
            }
            "priority" => {
                p.priority =
                    Some(u8::try_from(small_uint(k, v)?).map_err(|_| "priority out of range")?)
            }
            "timestamp" => p.timestamp = Some(small_uint(k, v)?),
            other => return Err(format!("unknown property '{other}'")),
        }
    }
    Ok(p)
}

/// The bytes of a published payload in `encoding` (`string` or `base64`).
pub(super) fn decode_payload(payload: &str, encoding: &str) -> Result<Bytes, String> {
    match encoding {
        "string" => Ok(Bytes::copy_from_slice(payload.as_bytes())),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map(Bytes::from)
            .map_err(|e| format!("payload is not valid base64: {e}")),
        other => Err(format!(
            "payload_encoding must be \"string\" or \"base64\", not \"{other}\""
        )),
    }
}

/// A body for `/get`: `auto` gives text when the (truncated) body is UTF-8, else base64;
/// `base64` always base64. Returns (payload, payload_encoding).
pub(super) fn encode_payload(
    body: &[u8],
    encoding: &str,
    truncate: Option<usize>,
) -> (String, &'static str) {
    let body = match truncate {
        Some(n) if n < body.len() => &body[..n],
        _ => body,
    };
    if encoding != "base64" {
        if let Ok(text) = std::str::from_utf8(body) {
            return (text.to_owned(), "string");
        }
    }
    (
        base64::engine::general_purpose::STANDARD.encode(body),
        "base64",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_json() {
        let v = json!({"delivery_mode": 2, "headers": {"a": 1, "b": "x"}, "type": "t",
                       "priority": "5", "content_type": "text/plain"});
        let p = properties_from_json(Some(&v)).unwrap();
        assert_eq!(p.priority, Some(5));
        assert_eq!(p.kind.as_deref(), Some("t"));
        let back = properties_to_json(&p);
        assert_eq!(back["delivery_mode"], 2);
        assert_eq!(back["headers"], json!({"a": 1, "b": "x"}));
        assert_eq!(back["priority"], 5);
        assert!(properties_from_json(Some(&json!({"colour": "red"}))).is_err());
    }

    #[test]
    fn payloads_by_encoding() {
        assert_eq!(decode_payload("aGk=", "base64").unwrap(), Bytes::from("hi"));
        assert!(decode_payload("x", "hex").is_err());
        assert_eq!(
            encode_payload(b"hello", "auto", Some(4)),
            ("hell".into(), "string")
        );
        assert_eq!(encode_payload(&[0xff, 0], "auto", None).1, "base64");
        assert_eq!(
            encode_payload(b"hi", "base64", None),
            ("aGk=".into(), "base64")
        );
    }
}
