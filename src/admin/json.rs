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

pub fn field_value_to_json(v: &FieldValue) -> Value {
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
