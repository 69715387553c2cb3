//! AMQP header values rendered as text, for protocols whose headers are strings (STOMP headers,
//! MQTT 5 user properties).
//!
//! RabbitMQ drops values that are not strings or integers (so `x-death` never reaches a STOMP
//! client). We render every type instead, in one documented form:
//!
//! - strings as they are (bytes that are not UTF-8: base64, as byte arrays);
//! - integers, timestamps (seconds since the epoch) and floats in decimal; decimals as `12.34`;
//! - booleans as `true` / `false`; void as the empty string; byte arrays as standard base64;
//! - arrays and tables as JSON, their elements rendered by the same rules as JSON values
//!   (numbers and booleans as JSON numbers and booleans, void as `null`, everything else as JSON
//!   strings), so `x-death` arrives as a JSON array of objects a script can parse.

use base64::Engine;
use serde_json::Value;
use std::borrow::Cow;
use switchboard_amqp::{Decimal, FieldValue};

/// The text form of one header value.
pub fn field_value_text(v: &FieldValue) -> Cow<'_, str> {
    match v {
        FieldValue::LongString(b) => match std::str::from_utf8(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(base64_text(b)),
        },
        FieldValue::Array(_) | FieldValue::Table(_) => Cow::Owned(json_value(v).to_string()),
        FieldValue::Void => Cow::Borrowed(""),
        FieldValue::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        FieldValue::ByteArray(b) => Cow::Owned(base64_text(b)),
        FieldValue::Decimal(d) => Cow::Owned(decimal_text(*d)),
        FieldValue::F32(f) => Cow::Owned(f.to_string()),
        FieldValue::F64(f) => Cow::Owned(f.to_string()),
        FieldValue::Timestamp(t) => Cow::Owned(t.to_string()),
        other => Cow::Owned(other.as_i64().map(|i| i.to_string()).unwrap_or_default()),
    }
}

fn base64_text(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn decimal_text(d: Decimal) -> String {
    let scale = usize::from(d.scale);
    let digits = format!("{:0>width$}", d.value, width = scale + 1);
    if scale == 0 {
        return digits;
    }
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{int}.{frac}")
}

fn json_value(v: &FieldValue) -> Value {
    match v {
        FieldValue::Array(items) => Value::Array(items.iter().map(json_value).collect()),
        FieldValue::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), json_value(v))).collect())
        }
        FieldValue::Void => Value::Null,
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::F32(f) => serde_json::Number::from_f64(f64::from(*f))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        FieldValue::F64(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        FieldValue::Timestamp(t) => Value::from(*t),
        FieldValue::U32(_)
        | FieldValue::I32(_)
        | FieldValue::I64(_)
        | FieldValue::I8(_)
        | FieldValue::U8(_)
        | FieldValue::I16(_)
        | FieldValue::U16(_) => v.as_i64().map(Value::from).unwrap_or(Value::Null),
        other => Value::String(field_value_text(other).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchboard_amqp::FieldTable;

    #[test]
    fn scalars() {
        assert_eq!(field_value_text(&FieldValue::string("hé")), "hé");
        assert_eq!(field_value_text(&FieldValue::I64(-5)), "-5");
        assert_eq!(field_value_text(&FieldValue::U8(7)), "7");
        assert_eq!(field_value_text(&FieldValue::Bool(true)), "true");
        assert_eq!(field_value_text(&FieldValue::Void), "");
        assert_eq!(
            field_value_text(&FieldValue::Timestamp(1_700_000_000)),
            "1700000000"
        );
        let d = |scale, value| FieldValue::Decimal(Decimal { scale, value });
        assert_eq!(field_value_text(&d(2, 1234)), "12.34");
        assert_eq!(field_value_text(&d(3, 5)), "0.005");
        assert_eq!(field_value_text(&d(0, 42)), "42");
        let bytes = FieldValue::ByteArray(Bytes::from_static(&[0, 255]));
        assert_eq!(field_value_text(&bytes), "AP8=");
        let not_utf8 = FieldValue::LongString(Bytes::from_static(&[0xff]));
        assert_eq!(field_value_text(&not_utf8), "/w==");
    }

    #[test]
    fn x_death_becomes_json() {
        let mut death = FieldTable::new();
        death.insert("count".into(), FieldValue::I64(2));
        death.insert("queue".into(), FieldValue::string("q"));
        death.insert("time".into(), FieldValue::Timestamp(10));
        death.insert(
            "routing-keys".into(),
            FieldValue::Array(vec![FieldValue::string("k")]),
        );
        let v = FieldValue::Array(vec![FieldValue::Table(death)]);
        assert_eq!(
            field_value_text(&v),
            r#"[{"count":2,"queue":"q","routing-keys":["k"],"time":10}]"#
        );
    }
}
