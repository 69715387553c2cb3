//! MQTT 5 properties (spec 2.2.2): one struct with a typed optional field per property and the
//! repeatable ones (user properties, subscription identifiers) as vectors, kept behind a
//! pointer that is null when there are none. MQTT 3 packets have none, nor do most v5 ones:
//! such a packet allocates nothing for them, and moving it copies a pointer, not the ~400
//! bytes of the fields.

use crate::error::{DecodeError, EncodeError};
use crate::wire::{put_binary, put_string, put_var_int, var_int_len, Reader};
use bytes::{BufMut, Bytes, BytesMut};

/// A packet's MQTT 5 properties: reads go through to [`PropertyValues`] (an empty set when
/// there are none); a write through `DerefMut` allocates the set if there was none, so code
/// on a hot path checks before it clears.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

/// What an empty [`Properties`] reads as.
static NONE: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl std::ops::Deref for Properties {
    type Target = PropertyValues;
    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NONE)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Default::default)
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Self {
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

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Every MQTT 5 property. Which ones a packet may carry is the spec's business; the decoder
/// keeps whatever was sent and the broker reads the ones that matter for each packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyValues {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Repeated only in PUBLISH (one per matching subscription); at most one elsewhere.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

mod id {
    pub(super) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(super) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(super) const CONTENT_TYPE: u8 = 0x03;
    pub(super) const RESPONSE_TOPIC: u8 = 0x08;
    pub(super) const CORRELATION_DATA: u8 = 0x09;
    pub(super) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(super) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(super) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(super) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(super) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(super) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(super) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(super) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(super) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(super) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(super) const SERVER_REFERENCE: u8 = 0x1C;
    pub(super) const REASON_STRING: u8 = 0x1F;
    pub(super) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(super) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(super) const TOPIC_ALIAS: u8 = 0x23;
    pub(super) const MAXIMUM_QOS: u8 = 0x24;
    pub(super) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(super) const USER_PROPERTY: u8 = 0x26;
    pub(super) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(super) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(super) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(super) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Stores a property that may appear once; a second occurrence is a protocol error (3.1.2.11).
fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property included more than once"));
    }
    *slot = Some(v);
    Ok(())
}

/// A byte property that may only be 0 or 1.
fn flag(r: &mut Reader) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol("boolean property not 0 or 1")),
    }
}

impl Properties {
    /// The values when there are any, for clearing some without allocating an empty set.
    pub fn present_mut(&mut self) -> Option<&mut PropertyValues> {
        self.0.as_deref_mut()
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|v| *v == NONE)
    }

    /// Reads the property length and the properties that follow it.
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let len = r.var_int()? as usize;
        if len > r.remaining() {
            return Err(DecodeError::Malformed("property length beyond the packet"));
        }
        if len == 0 {
            return Ok(Properties(None));
        }
        let mut r = Reader::new(r.take(len)?);
        let mut p = PropertyValues::default();
        while !r.is_empty() {
            // Identifiers are variable byte integers, but every defined one fits in one byte;
            // a multi-byte identifier is unknown and therefore malformed.
            let ident = r.var_int()?;
            let Ok(ident) = u8::try_from(ident) else {
                return Err(DecodeError::Malformed("unknown property identifier"));
            };
            match ident {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    once(&mut p.payload_format_indicator, flag(&mut r)?)?
                }
                id::MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?)?,
                id::CONTENT_TYPE => once(&mut p.content_type, r.string()?)?,
                id::RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?)?,
                id::CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = r.var_int()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    p.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?)?,
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    once(&mut p.assigned_client_identifier, r.string()?)?
                }
                id::SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16()?)?,
                id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?)?,
                id::AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?)?,
                id::REQUEST_PROBLEM_INFORMATION => {
                    once(&mut p.request_problem_information, flag(&mut r)?)?
                }
                id::WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32()?)?,
                id::REQUEST_RESPONSE_INFORMATION => {
                    once(&mut p.request_response_information, flag(&mut r)?)?
                }
                id::RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?)?,
                id::SERVER_REFERENCE => once(&mut p.server_reference, r.string()?)?,
                id::REASON_STRING => once(&mut p.reason_string, r.string()?)?,
                id::RECEIVE_MAXIMUM => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    once(&mut p.receive_maximum, v)?
                }
                id::TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?)?,
                id::TOPIC_ALIAS => once(&mut p.topic_alias, r.u16()?)?,
                id::MAXIMUM_QOS => once(&mut p.maximum_qos, flag(&mut r)?)?,
                id::RETAIN_AVAILABLE => once(&mut p.retain_available, flag(&mut r)?)?,
                id::USER_PROPERTY => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    once(&mut p.maximum_packet_size, v)?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    once(&mut p.wildcard_subscription_available, flag(&mut r)?)?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    once(&mut p.subscription_identifier_available, flag(&mut r)?)?
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    once(&mut p.shared_subscription_available, flag(&mut r)?)?
                }
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        Ok(Properties::from(p))
    }

    /// Writes the property length followed by the properties.
    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        if self.0.is_none() {
            out.put_u8(0);
            return Ok(());
        }
        let mut body = BytesMut::new();
        self.encode_body(&mut body)?;
        let len = u32::try_from(body.len()).map_err(|_| EncodeError::PacketTooLarge(body.len()))?;
        put_var_int(out, len)?;
        out.put_slice(&body);
        Ok(())
    }

    /// Encoded size including the length prefix (for sizing a packet before writing it).
    pub(crate) fn encoded_len(&self) -> Result<usize, EncodeError> {
        if self.0.is_none() {
            return Ok(1);
        }
        let mut body = BytesMut::new();
        self.encode_body(&mut body)?;
        let len = u32::try_from(body.len()).map_err(|_| EncodeError::PacketTooLarge(body.len()))?;
        Ok(var_int_len(len) + body.len())
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        fn byte(out: &mut BytesMut, ident: u8, v: Option<u8>) {
            if let Some(v) = v {
                out.put_u8(ident);
                out.put_u8(v);
            }
        }
        fn two(out: &mut BytesMut, ident: u8, v: Option<u16>) {
            if let Some(v) = v {
                out.put_u8(ident);
                out.put_u16(v);
            }
        }
        fn four(out: &mut BytesMut, ident: u8, v: Option<u32>) {
            if let Some(v) = v {
                out.put_u8(ident);
                out.put_u32(v);
            }
        }
        fn string(out: &mut BytesMut, ident: u8, v: &Option<String>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(ident);
                put_string(out, v)?;
            }
            Ok(())
        }
        fn binary(out: &mut BytesMut, ident: u8, v: &Option<Bytes>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(ident);
                put_binary(out, v)?;
            }
            Ok(())
        }
        byte(
            out,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        four(
            out,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        string(out, id::CONTENT_TYPE, &self.content_type)?;
        string(out, id::RESPONSE_TOPIC, &self.response_topic)?;
        binary(out, id::CORRELATION_DATA, &self.correlation_data)?;
        for &v in &self.subscription_identifiers {
            out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_var_int(out, v)?;
        }
        four(
            out,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        string(
            out,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        )?;
        two(out, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        string(out, id::AUTHENTICATION_METHOD, &self.authentication_method)?;
        binary(out, id::AUTHENTICATION_DATA, &self.authentication_data)?;
        byte(
            out,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        four(out, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        byte(
            out,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        string(out, id::RESPONSE_INFORMATION, &self.response_information)?;
        string(out, id::SERVER_REFERENCE, &self.server_reference)?;
        string(out, id::REASON_STRING, &self.reason_string)?;
        two(out, id::RECEIVE_MAXIMUM, self.receive_maximum);
        two(out, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        two(out, id::TOPIC_ALIAS, self.topic_alias);
        byte(out, id::MAXIMUM_QOS, self.maximum_qos);
        byte(out, id::RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(id::USER_PROPERTY);
            put_string(out, k)?;
            put_string(out, v)?;
        }
        four(out, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        byte(
            out,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        byte(
            out,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        byte(
            out,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        Ok(())
    }
}
