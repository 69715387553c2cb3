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

/// A message's content properties behind a pointer that is null when none is set: reads go
/// through to [`BasicProperties`] ([`BasicProperties::EMPTY`] when there are none), a write
/// through `DerefMut` allocates them if there were none. Most publishers set none (a flags
/// word of 0), and then a message allocates, initialises and frees nothing for them.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<BasicProperties>>);

/// What an empty [`Properties`] reads as.
static NONE: BasicProperties = BasicProperties::EMPTY;

impl Properties {
    /// Decodes a content header's property-flags word and property list, as
    /// [`BasicProperties::decode`], allocating only when a property is set.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf == [0, 0] {
            return Ok(Properties(None));
        }
        BasicProperties::decode_boxed(buf).map(|b| Properties(Some(b)))
    }

    /// The properties set; None when none is (a write through `DerefMut` may have left a set
    /// with none, so None is not the only empty case).
    pub fn present(&self) -> Option<&BasicProperties> {
        self.0.as_deref()
    }
}

impl std::ops::Deref for Properties {
    type Target = BasicProperties;
    fn deref(&self) -> &BasicProperties {
        self.0.as_deref().unwrap_or(&NONE)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut BasicProperties {
        self.0.get_or_insert_with(Default::default)
    }
}

impl From<BasicProperties> for Properties {
    fn from(values: BasicProperties) -> Self {
        if values == NONE {
            Properties(None)
        } else {
            Properties(Some(Box::new(values)))
        }
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
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

            /// No property set: what an empty [`Properties`] reads as.
            pub const EMPTY: BasicProperties = BasicProperties {
                $($field: None,)*
            };

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_property_set_allocates_nothing_and_reads_as_empty() {
        let none = Properties::decode(&[0, 0]).expect("an empty flags word decodes");
        assert!(none.present().is_none());
        assert_eq!(*none, BasicProperties::EMPTY);
        assert!(Properties::from(BasicProperties::default())
            .present()
            .is_none());
    }

    #[test]
    fn properties_set_are_kept_and_a_write_allocates() {
        let set = BasicProperties {
            delivery_mode: Some(2),
            reply_to: Some("r".into()),
            ..BasicProperties::default()
        };
        let mut out = BytesMut::new();
        set.encode(&mut out);
        let decoded = Properties::decode(&out).expect("decodes");
        assert_eq!(decoded.present(), Some(&set));
        assert_eq!(decoded, Properties::from(set.clone()));

        let mut written = Properties::default();
        let values: &mut BasicProperties = &mut written;
        values.priority = Some(3);
        assert_eq!(written.present().map(|p| p.priority), Some(Some(3)));
    }

    #[test]
    fn a_malformed_property_list_is_refused_as_before() {
        assert!(Properties::decode(&[0]).is_err());
        assert!(Properties::decode(&[0, 0, 1]).is_err());
        assert!(
            Properties::decode(&[0x10, 0]).is_err(),
            "delivery mode missing"
        );
    }
}
