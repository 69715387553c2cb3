//! AMQP field values and tables, with RabbitMQ's type letters (its errata to the 0-9-1 spec).

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

use crate::error::DecodeError;
use crate::wire::{
    get_bytes, get_shortstr, get_u16, get_u32, get_u64, get_u8, long_prefix, put_shortstr,
    shortstr_len,
};

/// A field table. Keys are short strings; a `BTreeMap` gives a deterministic encoding order and
/// cheap lookups for argument checks. (A table that repeats a key keeps the last value.)
pub type FieldTable = BTreeMap<String, FieldValue>;

/// A fixed-point decimal: `value / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    pub scale: u8,
    pub value: u32,
}

/// One field value. The letter after each variant is its type tag on the wire (RabbitMQ errata).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s`
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`
    Decimal(Decimal),
    /// `S` — a long string; bytes, since AMQP does not promise UTF-8.
    LongString(Bytes),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T` — seconds since the epoch.
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
    /// `x`
    ByteArray(Bytes),
}

impl FieldValue {
    /// A long-string value from text.
    pub fn string(s: impl Into<String>) -> Self {
        FieldValue::LongString(Bytes::from(s.into()))
    }

    /// The value as text when it is a (UTF-8) string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer when it is any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// The value as a boolean when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire codec for field tables and values (RabbitMQ's type letters).

/// How many field tables and arrays may nest inside each other (the outermost table counts as
/// one). Deeper input is a syntax error, so a hostile peer cannot exhaust the stack.
pub const MAX_NESTING: usize = 64;

#[cold]
fn too_deep() -> DecodeError {
    DecodeError::syntax("field table or array nested too deeply")
}

/// Decode a field table (its `long` byte length, then name/value pairs) from the front of `buf`,
/// advancing it past the table.
pub fn decode_table(buf: &mut &[u8]) -> Result<FieldTable, DecodeError> {
    decode_table_at(buf, 1)
}

/// Append a field table: its `long` byte length, then name/value pairs in key order.
pub fn encode_table(out: &mut BytesMut, t: &FieldTable) {
    let start = out.len();
    out.put_u32(0);
    for (k, v) in t {
        put_shortstr(out, k);
        v.encode(out);
    }
    patch_len(out, start);
}

/// The encoded size of a field table, including its 4-byte length prefix.
pub fn table_encoded_len(t: &FieldTable) -> usize {
    4 + t
        .iter()
        .map(|(k, v)| shortstr_len(k) + v.encoded_len())
        .sum::<usize>()
}

/// Write the byte count of everything after the 4-byte prefix at `start` into that prefix.
fn patch_len(out: &mut BytesMut, start: usize) {
    let n = (out.len() - start - 4) as u32;
    if let Some(prefix) = out.get_mut(start..start + 4) {
        prefix.copy_from_slice(&n.to_be_bytes());
    }
}

fn decode_table_at(buf: &mut &[u8], depth: usize) -> Result<FieldTable, DecodeError> {
    if depth > MAX_NESTING {
        return Err(too_deep());
    }
    let n = get_u32(buf)? as usize;
    let mut body = get_bytes(buf, n, "field table")?;
    let mut t = FieldTable::new();
    while !body.is_empty() {
        let k = get_shortstr(&mut body)?;
        let v = decode_value_at(&mut body, depth)?;
        t.insert(k, v);
    }
    Ok(t)
}

fn decode_array_at(buf: &mut &[u8], depth: usize) -> Result<Vec<FieldValue>, DecodeError> {
    if depth > MAX_NESTING {
        return Err(too_deep());
    }
    let n = get_u32(buf)? as usize;
    let mut body = get_bytes(buf, n, "field array")?;
    let mut a = Vec::new();
    while !body.is_empty() {
        a.push(decode_value_at(&mut body, depth)?);
    }
    Ok(a)
}

/// Decode a type letter and value; `depth` is the number of containers around it.
fn decode_value_at(buf: &mut &[u8], depth: usize) -> Result<FieldValue, DecodeError> {
    let tag = get_u8(buf)?;
    Ok(match tag {
        b't' => FieldValue::Bool(get_u8(buf)? != 0),
        b'b' => FieldValue::I8(get_u8(buf)? as i8),
        b'B' => FieldValue::U8(get_u8(buf)?),
        b's' => FieldValue::I16(get_u16(buf)? as i16),
        b'u' => FieldValue::U16(get_u16(buf)?),
        b'I' => FieldValue::I32(get_u32(buf)? as i32),
        b'i' => FieldValue::U32(get_u32(buf)?),
        b'l' => FieldValue::I64(get_u64(buf)? as i64),
        b'f' => FieldValue::F32(f32::from_bits(get_u32(buf)?)),
        b'd' => FieldValue::F64(f64::from_bits(get_u64(buf)?)),
        b'D' => FieldValue::Decimal(Decimal {
            scale: get_u8(buf)?,
            value: get_u32(buf)?,
        }),
        b'S' => {
            let n = get_u32(buf)? as usize;
            FieldValue::LongString(Bytes::copy_from_slice(get_bytes(buf, n, "long string")?))
        }
        b'A' => FieldValue::Array(decode_array_at(buf, depth + 1)?),
        b'T' => FieldValue::Timestamp(get_u64(buf)?),
        b'F' => FieldValue::Table(decode_table_at(buf, depth + 1)?),
        b'V' => FieldValue::Void,
        b'x' => {
            let n = get_u32(buf)? as usize;
            FieldValue::ByteArray(Bytes::copy_from_slice(get_bytes(buf, n, "byte array")?))
        }
        other => {
            return Err(DecodeError::Syntax(format!(
                "unknown field value type {:?} ({other:#04x})",
                other as char
            )))
        }
    })
}

impl FieldValue {
    /// The value's type letter on the wire.
    pub fn type_tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::ByteArray(_) => b'x',
        }
    }

    /// Decode a type letter and its value from the front of `buf`, advancing it.
    pub fn decode(buf: &mut &[u8]) -> Result<FieldValue, DecodeError> {
        decode_value_at(buf, 0)
    }

    /// Append the type letter and the value.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.type_tag());
        match self {
            FieldValue::Bool(v) => out.put_u8(u8::from(*v)),
            FieldValue::I8(v) => out.put_i8(*v),
            FieldValue::U8(v) => out.put_u8(*v),
            FieldValue::I16(v) => out.put_i16(*v),
            FieldValue::U16(v) => out.put_u16(*v),
            FieldValue::I32(v) => out.put_i32(*v),
            FieldValue::U32(v) => out.put_u32(*v),
            FieldValue::I64(v) => out.put_i64(*v),
            FieldValue::F32(v) => out.put_u32(v.to_bits()),
            FieldValue::F64(v) => out.put_u64(v.to_bits()),
            FieldValue::Decimal(d) => {
                out.put_u8(d.scale);
                out.put_u32(d.value);
            }
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
                let b = long_prefix(b);
                out.put_u32(b.len() as u32);
                out.put_slice(b);
            }
            FieldValue::Array(a) => {
                let start = out.len();
                out.put_u32(0);
                for v in a {
                    v.encode(out);
                }
                patch_len(out, start);
            }
            FieldValue::Timestamp(v) => out.put_u64(*v),
            FieldValue::Table(t) => encode_table(out, t),
            FieldValue::Void => {}
        }
    }

    /// The encoded size, type letter included.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            FieldValue::Void => 0,
            FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
            FieldValue::I16(_) | FieldValue::U16(_) => 2,
            FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
            FieldValue::Decimal(_) => 5,
            FieldValue::I64(_) | FieldValue::F64(_) | FieldValue::Timestamp(_) => 8,
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => 4 + long_prefix(b).len(),
            FieldValue::Array(a) => 4 + a.iter().map(FieldValue::encoded_len).sum::<usize>(),
            FieldValue::Table(t) => table_encoded_len(t),
        }
    }
}
