//! Taking packets off the front of a connection's read buffer.

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties::Properties;
use crate::topic::check_topic_name;
use crate::wire::{peek_var_int, Reader, VarInt};
use bytes::{Buf, BytesMut};

/// Decodes one packet from the front of `buf`, if a whole one is there.
///
/// `version` is the connection's protocol (from its CONNECT); CONNECT itself is decoded the same
/// way whatever is passed, since it names its own level. The size announced by the fixed header
/// is checked against `max_packet_size` before anything more is buffered or parsed, so a peer
/// cannot make the broker hold a packet larger than the limit. On `Ok(None)` nothing is
/// consumed; on an error the connection must be closed (the buffer state is unspecified).
pub fn decode(
    buf: &mut BytesMut,
    version: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // The type and flags are checked before waiting for the rest, so garbage is refused at
    // its first byte.
    check_fixed_header(first >> 4, first & 0x0f, version)?;
    let (remaining, len_bytes) = match peek_var_int(&buf[1..])? {
        VarInt::Complete(v, n) => (v as usize, n),
        VarInt::Incomplete => return Ok(None),
    };
    let size = 1 + len_bytes + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        // Reserve only up to the announced size, which is within the limit.
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    buf.advance(1 + len_bytes);
    let body = buf.split_to(remaining).freeze();
    let mut r = Reader::new(body);
    // PUBLISH, the packet that comes by the million, without the general match: the
    // packet can then be built where the caller gets it instead of being copied out of
    // `decode_body`'s result (a packet is some hundreds of bytes).
    let packet = if first >> 4 == kind::PUBLISH {
        Packet::Publish(decode_publish(first & 0x0f, &mut r, version)?)
    } else {
        decode_body(first >> 4, first & 0x0f, &mut r, version)?
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed("bytes after the end of the packet"));
    }
    Ok(Some(packet))
}

fn decode_body(
    kind: u8,
    flags: u8,
    r: &mut Reader,
    version: Protocol,
) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    // Spec 2.1.3: every packet but PUBLISH has fixed flags.
    let expected_flags = match kind {
        kind::PUBLISH => flags,
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(DecodeError::Malformed(
            "reserved flag bits in the fixed header",
        ));
    }
    Ok(match kind {
        kind::CONNECT => Packet::Connect(Box::new(decode_connect(r)?)),
        kind::CONNACK => {
            let ack_flags = r.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(DecodeError::Malformed("reserved CONNACK flag bits"));
            }
            let code = r.u8()?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties: props(r, v5)?,
            })
        }
        kind::PUBLISH => Packet::Publish(decode_publish(flags, r, version)?),
        kind::PUBACK => Packet::PubAck(decode_pub_response(r, v5)?),
        kind::PUBREC => Packet::PubRec(decode_pub_response(r, v5)?),
        kind::PUBREL => Packet::PubRel(decode_pub_response(r, v5)?),
        kind::PUBCOMP => Packet::PubComp(decode_pub_response(r, v5)?),
        kind::SUBSCRIBE => Packet::Subscribe(decode_subscribe(r, v5)?),
        kind::SUBACK => {
            let packet_id = r.u16()?;
            let properties = props(r, v5)?;
            let codes = r.rest().to_vec();
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                codes,
            })
        }
        kind::UNSUBSCRIBE => {
            let packet_id = nonzero_id(r)?;
            let properties = props(r, v5)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE with no topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        }
        kind::UNSUBACK => {
            let packet_id = r.u16()?;
            let properties = props(r, v5)?;
            let codes = if v5 { r.rest().to_vec() } else { Vec::new() };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                codes,
            })
        }
        kind::PINGREQ => Packet::PingReq,
        kind::PINGRESP => Packet::PingResp,
        kind::DISCONNECT => {
            let (reason, properties) = reason_and_props(r, v5)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        kind::AUTH if v5 => {
            let (reason, properties) = reason_and_props(r, v5)?;
            Packet::Auth(Auth { reason, properties })
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    })
}

/// Packet type and fixed-header flags (spec 2.1.2, 2.1.3): every packet but PUBLISH has fixed
/// flags; type 0 is reserved, and type 15 (AUTH) exists only in v5.
fn check_fixed_header(kind: u8, flags: u8, version: Protocol) -> Result<(), DecodeError> {
    if kind == 0 || (kind == kind::AUTH && !version.is_v5()) {
        return Err(DecodeError::Malformed("reserved packet type"));
    }
    let expected_flags = match kind {
        kind::PUBLISH => flags,
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(DecodeError::Malformed(
            "reserved flag bits in the fixed header",
        ));
    }
    Ok(())
}

fn props(r: &mut Reader, v5: bool) -> Result<Properties, DecodeError> {
    if v5 {
        Properties::decode(r)
    } else {
        Ok(Properties::default())
    }
}

/// DISCONNECT and AUTH: a v5 remaining length of 0 means reason 0 and no properties; a reason
/// byte alone means no properties (spec 3.14.2.1, 3.15.2.1).
fn reason_and_props(r: &mut Reader, v5: bool) -> Result<(u8, Properties), DecodeError> {
    if !v5 || r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let reason = r.u8()?;
    if r.is_empty() {
        return Ok((reason, Properties::default()));
    }
    Ok((reason, Properties::decode(r)?))
}

fn nonzero_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("packet identifier 0")),
        id => Ok(id),
    }
}

fn decode_pub_response(r: &mut Reader, v5: bool) -> Result<PubResponse, DecodeError> {
    let packet_id = nonzero_id(r)?;
    let (reason, properties) = reason_and_props(r, v5)?;
    Ok(PubResponse {
        packet_id,
        reason,
        properties,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, version: Protocol) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    let Some(qos) = QoS::from_u8((flags >> 1) & 0b11) else {
        return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
    };
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    check_topic_name(&topic)?;
    if topic.is_empty() && !version.is_v5() {
        return Err(DecodeError::TopicName("empty topic name"));
    }
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(nonzero_id(r)?),
    };
    let properties = props(r, version.is_v5())?;
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = nonzero_id(r)?;
    let properties = props(r, v5)?;
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let o = r.u8()?;
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if o & reserved != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits"));
        }
        let Some(qos) = QoS::from_u8(o & 0b11) else {
            return Err(DecodeError::Malformed("subscription with QoS 3"));
        };
        let retain_handling = (o >> 4) & 0b11;
        if retain_handling == 3 {
            return Err(DecodeError::Protocol("retain handling 3"));
        }
        subscriptions.push(Subscription {
            filter,
            options: SubscriptionOptions {
                qos,
                no_local: o & 0b0100 != 0,
                retain_as_published: o & 0b1000 != 0,
                retain_handling,
            },
        });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE with no topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        subscriptions,
    })
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQTT" | b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolLevel(l)),
        _ => return Err(DecodeError::UnsupportedProtocolName),
    };
    let flags = r.u8()?;
    if flags & 0b1 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0b10 != 0;
    let will_flag = flags & 0b100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b10_0000 != 0;
    let has_password = flags & 0b100_0000 != 0;
    let has_username = flags & 0b1000_0000 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(DecodeError::Malformed("will QoS 3"));
    };
    if has_password && !has_username && protocol != Protocol::V5 {
        return Err(DecodeError::Malformed("password without a user name"));
    }
    let keep_alive = r.u16()?;
    let v5 = protocol.is_v5();
    let properties = props(r, v5)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5)?;
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(DecodeError::TopicName("empty will topic"));
        }
        check_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = has_username.then(|| r.string()).transpose()?;
    let password = has_password.then(|| r.binary()).transpose()?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}
