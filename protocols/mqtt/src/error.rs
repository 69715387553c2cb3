//! Decoding and encoding errors, each mapped to the MQTT 5 reason code the broker disconnects
//! (or refuses the CONNECT) with. MQTT 3 has no reason codes on DISCONNECT: the connection is
//! simply closed, except for CONNECT refusals, which map to a 3.1.1 CONNACK return code.

/// Why a peer's bytes could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The fixed header announced a packet larger than the receiver's maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// Bytes that do not form a valid packet: truncated fields, bad lengths, bad flags.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A well-formed packet that breaks a protocol rule (duplicate property, zero receive
    /// maximum, packet type not allowed in this version, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A UTF-8 string field that is not valid UTF-8 or holds U+0000.
    #[error("invalid UTF-8 string: {0}")]
    Utf8(&'static str),
    /// A PUBLISH topic name holding a wildcard or otherwise invalid.
    #[error("invalid topic name: {0}")]
    TopicName(&'static str),
    /// CONNECT named a protocol level this codec does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// CONNECT named a protocol other than MQTT / MQIsdp.
    #[error("unsupported protocol name")]
    UnsupportedProtocolName,
}

impl DecodeError {
    /// The MQTT 5 reason code to send in DISCONNECT or CONNACK for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => crate::reason::PACKET_TOO_LARGE,
            DecodeError::Malformed(_) | DecodeError::Utf8(_) => crate::reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => crate::reason::PROTOCOL_ERROR,
            DecodeError::TopicName(_) => crate::reason::TOPIC_NAME_INVALID,
            DecodeError::UnsupportedProtocolLevel(_) | DecodeError::UnsupportedProtocolName => {
                crate::reason::UNSUPPORTED_PROTOCOL_VERSION
            }
        }
    }

    /// The MQTT 3.1/3.1.1 CONNACK return code when this error is found in a CONNECT, if the
    /// spec asks for one (only the protocol level has one: 0x01); otherwise the connection is
    /// closed without a CONNACK.
    pub fn v3_connack_code(&self) -> Option<u8> {
        match self {
            DecodeError::UnsupportedProtocolLevel(_) | DecodeError::UnsupportedProtocolName => {
                Some(crate::reason::V3_UNACCEPTABLE_PROTOCOL_VERSION)
            }
            _ => None,
        }
    }
}

/// Why a packet could not be encoded. Encoding never panics: fields that do not fit the wire
/// format are refused and nothing is appended.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("string or binary field of {0} bytes exceeds 65535")]
    FieldTooLong(usize),
    #[error("packet of {0} bytes exceeds the largest MQTT packet")]
    PacketTooLarge(usize),
    #[error("value {0} does not fit a variable byte integer")]
    VarIntTooLarge(u32),
    #[error("packet {0} does not exist in this protocol version")]
    NotInVersion(&'static str),
    #[error("QoS {0} PUBLISH needs a packet identifier")]
    MissingPacketId(u8),
}
