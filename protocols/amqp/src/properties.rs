//! The basic class's content properties: the canonical message properties of the broker.

use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::types::{decode_table, encode_table, table_encoded_len, FieldTable};
use crate::wire::{get_shortstr, get_u16, get_u64, get_u8, put_shortstr, shortstr_len};

/// Basic content-header properties, in wire order (flag bit 15 first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    /// The `type` property.
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Wire codec: a 16-bit property-flags word (bit 15 = content-type … bit 2 = cluster-id; bit 0
// would announce a further flags word, which basic never needs), then the present properties.

/// Generates the flag constants, `flags`, `decode`, `encode` and `encoded_len` from one list of
/// (field, wire type, flag bit) in wire order.
macro_rules! basic_properties {
    ($($field:ident: $ty:ident = $bit:literal,)*) => {
        #[allow(non_upper_case_globals)]
        mod flag {
            $(pub(super) const $field: u16 = 1 << $bit;)*
        }

        /// Flag bits that name a property basic has (bits 15..=2).
        const KNOWN_FLAGS: u16 = 0 $(| flag::$field)*;

        impl BasicProperties {
            /// The property-flags word for the properties that are present.
            pub fn flags(&self) -> u16 {
                0 $(| if self.$field.is_some() { flag::$field } else { 0 })*
            }

            /// Decode a property-flags word and the property list (the tail of a content-header
            /// payload after class id, weight and body size). A flags word with the continuation
            /// bit or any unknown bit set, a truncated property, or trailing bytes is a syntax
            /// error.
            pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
                let mut props = BasicProperties::default();
                props.decode_present(buf)?;
                Ok(props)
            }

            /// [`BasicProperties::decode`] straight into a new box: each property is written
            /// in place instead of the whole struct (over 300 bytes) being built on the stack
            /// and copied to the heap.
            pub fn decode_boxed(buf: &[u8]) -> Result<Box<Self>, DecodeError> {
                let mut props = Box::<BasicProperties>::default();
                props.decode_present(buf)?;
                Ok(props)
            }

            /// Sets the properties `buf` has; `self` has none set yet.
            #[inline]
            fn decode_present(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
                let mut b = buf;
                let flags = get_u16(&mut b).map_err(|e| e.context("content header"))?;
                if flags & !KNOWN_FLAGS != 0 {
                    return Err(DecodeError::Syntax(format!(
                        "content header: unsupported property flags {flags:#06x}"
                    )));
                }
                $(if flags & flag::$field != 0 {
                    self.$field = Some(prop_decode!($ty, &mut b)
                        .map_err(|e| e.context(concat!("content header property ", stringify!($field))))?);
                })*
                if !b.is_empty() {
                    return Err(DecodeError::Syntax(format!(
                        "content header: {} trailing bytes after the properties",
                        b.len()
                    )));
                }
                Ok(())
            }

            /// Append the property-flags word and the present properties.
            pub fn encode(&self, out: &mut BytesMut) {
                out.reserve(self.encoded_len());
                self.encode_unreserved(out);
            }

            /// [`BasicProperties::encode`] for callers that already reserved room.
            pub(crate) fn encode_unreserved(&self, out: &mut BytesMut) {
                out.put_u16(self.flags());
                $(if let Some(v) = &self.$field {
                    prop_encode!($ty, out, v);
                })*
            }

            /// The encoded size of the flags word and the present properties.
            pub fn encoded_len(&self) -> usize {
                2 $(+ self.$field.as_ref().map_or(0, |v| prop_len!($ty, v)))*
            }
        }
    };
}

macro_rules! prop_decode {
    (shortstr, $b:expr) => {
        get_shortstr($b)
    };
    (octet, $b:expr) => {
        get_u8($b)
    };
    (timestamp, $b:expr) => {
        get_u64($b)
    };
    (table, $b:expr) => {
        decode_table($b)
    };
}

macro_rules! prop_encode {
    (shortstr, $out:expr, $v:expr) => {
        put_shortstr($out, $v)
    };
    (octet, $out:expr, $v:expr) => {
        $out.put_u8(*$v)
    };
    (timestamp, $out:expr, $v:expr) => {
        $out.put_u64(*$v)
    };
    (table, $out:expr, $v:expr) => {
        encode_table($out, $v)
    };
}

macro_rules! prop_len {
    (shortstr, $v:expr) => {
        shortstr_len($v)
    };
    (octet, $v:expr) => {{
        let _ = $v;
        1
    }};
    (timestamp, $v:expr) => {{
        let _ = $v;
        8
    }};
    (table, $v:expr) => {
        table_encoded_len($v)
    };
}

basic_properties! {
    content_type: shortstr = 15,
    content_encoding: shortstr = 14,
    headers: table = 13,
    delivery_mode: octet = 12,
    priority: octet = 11,
    correlation_id: shortstr = 10,
    reply_to: shortstr = 9,
    expiration: shortstr = 8,
    message_id: shortstr = 7,
    timestamp: timestamp = 6,
    kind: shortstr = 5,
    user_id: shortstr = 4,
    app_id: shortstr = 3,
    cluster_id: shortstr = 2,
}
