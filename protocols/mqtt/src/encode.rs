//! Writing packets. Each packet's variable header is built first (it is small), then the fixed
//! header with the exact remaining length, then the payload: a PUBLISH payload is copied once,
//! straight into the output buffer.

use crate::error::EncodeError;
use crate::packet::*;
use crate::properties::Properties;
use crate::wire::{put_binary, put_string, put_var_int, var_int_len, VAR_INT_MAX};
use bytes::{BufMut, BytesMut};

/// Appends `packet` encoded for `version` to `out`. On error nothing is appended.
pub fn encode(packet: &Packet, version: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    let mut head = BytesMut::new();
    let first = match packet {
        Packet::Connect(c) => {
            encode_connect(c, &mut head)?;
            kind::CONNECT << 4
        }
        Packet::ConnAck(a) => {
            head.put_u8(u8::from(a.session_present));
            head.put_u8(a.code);
            props(&a.properties, v5, &mut head)?;
            kind::CONNACK << 4
        }
        Packet::Publish(p) => {
            encode_publish(&PublishOut::of(p), version, usize::MAX, out)?;
            return Ok(());
        }
        Packet::PubAck(a) => pub_response(a, v5, &mut head, kind::PUBACK << 4)?,
        Packet::PubRec(a) => pub_response(a, v5, &mut head, kind::PUBREC << 4)?,
        Packet::PubRel(a) => pub_response(a, v5, &mut head, (kind::PUBREL << 4) | 0b0010)?,
        Packet::PubComp(a) => pub_response(a, v5, &mut head, kind::PUBCOMP << 4)?,
        Packet::Subscribe(s) => {
            head.put_u16(s.packet_id);
            props(&s.properties, v5, &mut head)?;
            for sub in &s.subscriptions {
                put_string(&mut head, &sub.filter)?;
                let o = &sub.options;
                let mut b = o.qos as u8;
                if v5 {
                    b |= (u8::from(o.no_local) << 2)
                        | (u8::from(o.retain_as_published) << 3)
                        | ((o.retain_handling & 0b11) << 4);
                }
                head.put_u8(b);
            }
            (kind::SUBSCRIBE << 4) | 0b0010
        }
        Packet::SubAck(s) => {
            head.put_u16(s.packet_id);
            props(&s.properties, v5, &mut head)?;
            head.put_slice(&s.codes);
            kind::SUBACK << 4
        }
        Packet::Unsubscribe(u) => {
            head.put_u16(u.packet_id);
            props(&u.properties, v5, &mut head)?;
            for f in &u.filters {
                put_string(&mut head, f)?;
            }
            (kind::UNSUBSCRIBE << 4) | 0b0010
        }
        Packet::UnsubAck(u) => {
            head.put_u16(u.packet_id);
            if v5 {
                props(&u.properties, v5, &mut head)?;
                head.put_slice(&u.codes);
            }
            kind::UNSUBACK << 4
        }
        Packet::PingReq => kind::PINGREQ << 4,
        Packet::PingResp => kind::PINGRESP << 4,
        Packet::Disconnect(d) => {
            if v5 {
                reason_and_props(d.reason, &d.properties, &mut head)?;
            }
            kind::DISCONNECT << 4
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInVersion("AUTH"));
            }
            reason_and_props(a.reason, &a.properties, &mut head)?;
            kind::AUTH << 4
        }
    };
    let remaining = head.len();
    let Some(remaining32) = u32::try_from(remaining).ok().filter(|&n| n <= VAR_INT_MAX) else {
        return Err(EncodeError::PacketTooLarge(remaining));
    };
    out.reserve(1 + var_int_len(remaining32) + remaining);
    out.put_u8(first);
    put_var_int(out, remaining32)?;
    out.put_slice(&head);
    Ok(())
}

/// A PUBLISH to write, borrowing its parts: the sending side writes one per delivery without
/// building an owned [`Publish`] (topic and properties copies) or an intermediate buffer.
#[derive(Debug, Clone, Copy)]
pub struct PublishOut<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in v5 when a Topic Alias names the topic.
    pub topic: &'a str,
    /// Present exactly when `qos` > 0.
    pub packet_id: Option<u16>,
    /// Written for v5 only.
    pub properties: &'a Properties,
    pub payload: &'a [u8],
}

impl<'a> PublishOut<'a> {
    pub fn of(p: &'a Publish) -> Self {
        PublishOut {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: &p.properties,
            payload: &p.payload,
        }
    }
}

/// Appends the PUBLISH `p` encoded for `version` to `out`, straight into it, and returns its
/// size. A packet over `max_len` bytes (a client's Maximum Packet Size) is
/// [`EncodeError::PacketTooLarge`]; on any error nothing is appended.
pub fn encode_publish(
    p: &PublishOut<'_>,
    version: Protocol,
    max_len: usize,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let topic_len =
        u16::try_from(p.topic.len()).map_err(|_| EncodeError::FieldTooLong(p.topic.len()))?;
    let id = match p.qos {
        QoS::AtMostOnce => None,
        _ => Some(
            p.packet_id
                .ok_or(EncodeError::MissingPacketId(p.qos as u8))?,
        ),
    };
    // v5 properties are encoded apart first: their length prefix needs their size.
    let mut props = BytesMut::new();
    let mut props_len = 0;
    if version.is_v5() {
        p.properties.encode_body(&mut props)?;
        let n = u32::try_from(props.len()).map_err(|_| EncodeError::PacketTooLarge(props.len()))?;
        props_len = var_int_len(n) + props.len();
    }
    let remaining =
        2 + p.topic.len() + if id.is_some() { 2 } else { 0 } + props_len + p.payload.len();
    let Some(remaining32) = u32::try_from(remaining).ok().filter(|&n| n <= VAR_INT_MAX) else {
        return Err(EncodeError::PacketTooLarge(remaining));
    };
    let total = 1 + var_int_len(remaining32) + remaining;
    if total > max_len {
        return Err(EncodeError::PacketTooLarge(total));
    }
    out.reserve(total);
    out.put_u8(
        (kind::PUBLISH << 4) | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain),
    );
    put_var_int(out, remaining32)?;
    out.put_u16(topic_len);
    out.put_slice(p.topic.as_bytes());
    if let Some(id) = id {
        out.put_u16(id);
    }
    if version.is_v5() {
        // Fits: checked as part of `remaining` above.
        put_var_int(out, props.len() as u32)?;
        out.put_slice(&props);
    }
    out.put_slice(p.payload);
    Ok(total)
}

/// The encoded size of `packet`, for checking a peer's Maximum Packet Size before sending.
pub fn encoded_len(packet: &Packet, version: Protocol) -> Result<usize, EncodeError> {
    if let Packet::Publish(p) = packet {
        // Avoid building the payload: everything but it is small.
        let mut head = 2 + p.topic.len();
        if p.qos != QoS::AtMostOnce {
            head += 2;
        }
        if version.is_v5() {
            head += p.properties.encoded_len()?;
        }
        let remaining = head + p.payload.len();
        let r32 = u32::try_from(remaining).map_err(|_| EncodeError::PacketTooLarge(remaining))?;
        return Ok(1 + var_int_len(r32) + remaining);
    }
    let mut out = BytesMut::new();
    encode(packet, version, &mut out)?;
    Ok(out.len())
}

fn props(p: &Properties, v5: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    if v5 {
        p.encode(out)?;
    }
    Ok(())
}

/// The short forms: nothing for reason 0 without properties, the reason byte alone without
/// properties.
fn reason_and_props(reason: u8, p: &Properties, out: &mut BytesMut) -> Result<(), EncodeError> {
    if p.is_empty() {
        if reason != 0 {
            out.put_u8(reason);
        }
        return Ok(());
    }
    out.put_u8(reason);
    p.encode(out)
}

fn pub_response(
    a: &PubResponse,
    v5: bool,
    out: &mut BytesMut,
    first: u8,
) -> Result<u8, EncodeError> {
    out.put_u16(a.packet_id);
    if v5 {
        reason_and_props(a.reason, &a.properties, out)?;
    }
    Ok(first)
}

fn encode_connect(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    put_string(out, c.protocol.name())?;
    out.put_u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0b10;
    }
    if let Some(w) = &c.will {
        flags |= 0b100 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0b10_0000;
        }
    }
    if c.password.is_some() {
        flags |= 0b100_0000;
    }
    if c.username.is_some() {
        flags |= 0b1000_0000;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    let v5 = c.protocol.is_v5();
    props(&c.properties, v5, out)?;
    put_string(out, &c.client_id)?;
    if let Some(w) = &c.will {
        props(&w.properties, v5, out)?;
        put_string(out, &w.topic)?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_string(out, u)?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p)?;
    }
    Ok(())
}
