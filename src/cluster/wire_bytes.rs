//! Byte strings in what nodes send each other and in old JSON log entries: a standard base64
//! string in a human-readable format (JSON: an array of numbers took about 3.6 bytes per
//! byte, base64 takes 1.33), the bytes as they are in a binary one (the transport's
//! MessagePack, see [`super::transport`]). For `#[serde(with = "...")]` on a `Vec<u8>`.

use base64::Engine;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    } else {
        s.serialize_bytes(v)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_str(BytesVisitor)
    } else {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// Takes bytes, or base64 text.
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bytes, or a base64 string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(E::custom)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Carrier {
        #[serde(with = "super")]
        body: Vec<u8>,
    }

    #[test]
    fn bytes_are_base64_in_json_and_as_they_are_in_messagepack() {
        let c = Carrier {
            body: (0u8..=255).collect(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("AAECAwQF"), "{json}");
        assert_eq!(serde_json::from_str::<Carrier>(&json).unwrap(), c);
        let packed = rmp_serde::to_vec_named(&c).unwrap();
        // The 256 bytes, a bin 16 header, and the field's name: no base64.
        assert!(packed.len() < 256 + 16, "{}", packed.len());
        assert_eq!(rmp_serde::from_slice::<Carrier>(&packed).unwrap(), c);
    }
}
