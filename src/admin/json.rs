//! AMQP field values as JSON, the way RabbitMQ's management API shows them.

use serde_json::{json, Value};
use switchboard_amqp::{FieldTable, FieldValue};

pub fn field_table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.iter()
            .map(|(k, v)| (k.clone(), field_value_to_json(v)))
            .collect(),
    )
}

pub(super) fn field_value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::F32(f) => json!(f),
        FieldValue::F64(f) => json!(f),
        FieldValue::Decimal(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            json!(String::from_utf8_lossy(b))
        }
        FieldValue::Array(a) => Value::Array(a.iter().map(field_value_to_json).collect()),
        FieldValue::Table(t) => field_table_to_json(t),
        FieldValue::Void => Value::Null,
        other => other.as_i64().map_or(Value::Null, |i| json!(i)),
    }
}

/// A JSON value as the AMQP field value RabbitMQ's management API makes of it: integers as
/// signed 64-bit, other numbers as doubles, objects as tables, `null` as void.
pub(super) fn json_to_field_value(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::string(s.clone()),
        Value::Array(a) => FieldValue::Array(a.iter().map(json_to_field_value).collect()),
        Value::Object(m) => FieldValue::Table(
            m.iter()
                .map(|(k, v)| (k.clone(), json_to_field_value(v)))
                .collect(),
        ),
    }
}

/// A JSON object (or nothing, or `null`) as a field table; anything else is refused.
pub(super) fn json_to_field_table(v: Option<&Value>) -> Result<FieldTable, String> {
    match v {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(Value::Object(m)) => Ok(m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_field_value(v)))
            .collect()),
        Some(other) => Err(format!("arguments must be a JSON object, not {other}")),
    }
}
