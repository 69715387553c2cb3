//! Frames: splitting a byte stream into method, content-header, body and heartbeat frames, and
//! writing them.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::method::{BasicDeliver, Method};
use crate::properties::{BasicProperties, Properties};
use crate::wire::{get_u16, get_u64, Sink, Sizer, Writer};
use crate::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD};

/// The basic class, the only one that carries content.
const CLASS_BASIC: u16 = 60;

/// Size of the frame header: type, channel, payload size.
const HEADER_LEN: usize = 7;

/// Content-header payload bytes before the property flags: class id, weight, body size.
const CONTENT_HEADER_FIXED: usize = 12;

/// One decoded frame.
///
/// The decoded properties of a `Header` are behind a pointer ([`Properties`]): unboxed they
/// made every frame (method and body frames too) over 300 bytes, and a frame is moved several
/// times between decoding and the channel that handles it; null when none is set, so that a
/// message without properties allocates nothing for them.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method {
        channel: u16,
        method: Method,
    },
    /// content header. `raw_properties` is the property-flags+property-list bytes exactly as
    /// received (a zero-copy slice), so the broker can forward them unchanged to AMQP consumers.
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Properties,
        raw_properties: Bytes,
    },
    /// A content body frame; `payload` is a zero-copy slice of the input buffer.
    Body {
        channel: u16,
        payload: Bytes,
    },
    /// A heartbeat (any payload is ignored; the broker checks that the channel is 0).
    Heartbeat {
        channel: u16,
    },
}

impl Frame {
    /// The channel the frame was sent on.
    pub fn channel(&self) -> u16 {
        match *self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => channel,
        }
    }
}

/// Decode one frame from the front of `buf` if it is complete. Checks in this order without
/// allocating: need 7 header bytes (else `Ok(None)`); frame type known (else
/// `UnknownFrameType`); size + 8 <= frame_max (when frame_max != 0; else `FrameTooLarge` —
/// checked BEFORE waiting for the payload to arrive, so a peer can't make us buffer an absurd
/// size); whole frame present (else `Ok(None)`); frame-end octet 0xCE (else `BadFrameEnd`).
/// Then the frame is taken off `buf`: Body payloads and `raw_properties` are zero-copy slices
/// (`split_to(..).freeze()`); method frames are decoded in place and `buf` is advanced.
///
/// On error `buf` is left as it was.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let [kind, c0, c1, s0, s1, s2, s3] = *head;
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(DecodeError::UnknownFrameType(kind));
    }
    let channel = u16::from_be_bytes([c0, c1]);
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    let total = u64::from(size) + FRAME_OVERHEAD as u64;
    if frame_max != 0 && total > u64::from(frame_max) {
        return Err(DecodeError::FrameTooLarge {
            size: total,
            max: frame_max,
        });
    }
    // On a 16-bit target a frame this large could not be buffered anyway.
    let Ok(total) = usize::try_from(total) else {
        return Err(DecodeError::FrameTooLarge {
            size: total,
            max: frame_max,
        });
    };
    if buf.len() < total {
        return Ok(None);
    }
    let size = total - FRAME_OVERHEAD;
    let (Some(&end), Some(payload)) = (buf.get(total - 1), buf.get(HEADER_LEN..HEADER_LEN + size))
    else {
        return Ok(None); // unreachable: buf.len() >= total was checked
    };
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd(end));
    }

    let frame = match kind {
        FRAME_METHOD => {
            let method = Method::decode(payload)?;
            buf.advance(total);
            Frame::Method { channel, method }
        }
        FRAME_HEADER => {
            let mut p = payload;
            let class_id = get_u16(&mut p).map_err(|e| e.context("content header"))?;
            if class_id != CLASS_BASIC {
                return Err(DecodeError::BadContentClass(class_id));
            }
            let _weight = get_u16(&mut p).map_err(|e| e.context("content header"))?;
            let body_size = get_u64(&mut p).map_err(|e| e.context("content header"))?;
            let properties = Properties::decode(p)?;
            buf.advance(HEADER_LEN + CONTENT_HEADER_FIXED);
            let raw_properties = buf.split_to(size - CONTENT_HEADER_FIXED).freeze();
            buf.advance(1);
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
                raw_properties,
            }
        }
        FRAME_BODY => {
            buf.advance(HEADER_LEN);
            let payload = buf.split_to(size).freeze();
            buf.advance(1);
            Frame::Body { channel, payload }
        }
        _ => {
            buf.advance(total);
            Frame::Heartbeat { channel }
        }
    };
    Ok(Some(frame))
}

/// Write a frame header whose size is patched by [`end_frame`].
#[inline]
fn begin_frame(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

#[inline]
fn end_frame(out: &mut BytesMut, size_at: usize) {
    let size = (out.len() - size_at - 4) as u32;
    if let Some(slot) = out.get_mut(size_at..size_at + 4) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    out.put_u8(FRAME_END);
}

/// Append a method frame.
pub fn encode_method(out: &mut BytesMut, channel: u16, method: &Method) {
    out.reserve(FRAME_OVERHEAD + method.encoded_len());
    put_method(out, channel, method);
}

fn put_method(out: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    method.encode_unreserved(out);
    end_frame(out, at);
}

/// Append a content header frame (class 60, weight 0) with properties encoded from `properties`.
pub fn encode_header(
    out: &mut BytesMut,
    channel: u16,
    body_size: u64,
    properties: &BasicProperties,
) {
    out.reserve(FRAME_OVERHEAD + CONTENT_HEADER_FIXED + properties.encoded_len());
    let at = begin_header(out, channel, body_size);
    properties.encode_unreserved(out);
    end_frame(out, at);
}

/// Append a content header frame (class 60, weight 0) whose property flags and list are
/// `raw_properties` verbatim (as received in [`Frame::Header::raw_properties`]).
pub fn encode_raw_header(out: &mut BytesMut, channel: u16, body_size: u64, raw_properties: &[u8]) {
    out.reserve(FRAME_OVERHEAD + CONTENT_HEADER_FIXED + raw_properties.len());
    let at = begin_header(out, channel, body_size);
    out.put_slice(raw_properties);
    end_frame(out, at);
}

#[inline]
fn begin_header(out: &mut BytesMut, channel: u16, body_size: u64) -> usize {
    let at = begin_frame(out, FRAME_HEADER, channel);
    out.put_u16(CLASS_BASIC);
    out.put_u16(0);
    out.put_u64(body_size);
    at
}

/// Append one body frame carrying `payload` (the caller keeps it within frame_max - 8).
pub fn encode_body(out: &mut BytesMut, channel: u16, payload: &[u8]) {
    out.reserve(FRAME_OVERHEAD + payload.len());
    put_body(out, channel, payload);
}

#[inline]
fn put_body(out: &mut BytesMut, channel: u16, payload: &[u8]) {
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.put_u8(FRAME_END);
}

/// Append a heartbeat frame (channel 0, empty payload).
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// The method frame that opens a content-carrying message: a whole [`Method`], or borrowed
/// [`DeliverArgs`] for the broker's per-message `basic.deliver`.
pub trait ContentMethod {
    /// The exact size of the method frame payload (class id, method id, arguments).
    fn encoded_len(&self) -> usize;
    /// Appends the method frame payload; the caller reserved [`ContentMethod::encoded_len`].
    fn encode_payload(&self, out: &mut BytesMut);
}

impl ContentMethod for Method {
    #[inline]
    fn encoded_len(&self) -> usize {
        Method::encoded_len(self)
    }

    #[inline]
    fn encode_payload(&self, out: &mut BytesMut) {
        self.encode_unreserved(out);
    }
}

/// `basic.deliver`'s arguments borrowed from the consumer and the message. A broker encodes one
/// per delivered message; building a [`BasicDeliver`] instead would allocate its three strings
/// (consumer tag, exchange, routing key) every time only to copy them into the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverArgs<'a> {
    pub consumer_tag: &'a str,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

impl DeliverArgs<'_> {
    /// Walks the arguments in [`BasicDeliver`]'s wire order (its generated `write_args`).
    #[inline]
    fn write<S: Sink>(&self, s: &mut S) {
        s.short(&BasicDeliver::CLASS_ID);
        s.short(&BasicDeliver::METHOD_ID);
        s.shortstr(self.consumer_tag);
        s.longlong(&self.delivery_tag);
        s.bit(&self.redelivered);
        s.shortstr(self.exchange);
        s.shortstr(self.routing_key);
        s.finish();
    }
}

impl ContentMethod for DeliverArgs<'_> {
    #[inline]
    fn encoded_len(&self) -> usize {
        let mut s = Sizer::default();
        self.write(&mut s);
        s.len
    }

    #[inline]
    fn encode_payload(&self, out: &mut BytesMut) {
        self.write(&mut Writer::new(out));
    }
}

/// Encode a whole message delivery/return/get-ok: the method frame, the content header (raw if
/// Some, else from properties), then the body split into body frames of at most frame_max - 8
/// bytes (frame_max 0 = unlimited; no body frame when the body is empty). Appends everything to
/// `out` (copies the body — fine; the caller decides about huge bodies). Reserves once.
pub fn encode_content<M: ContentMethod + ?Sized>(
    out: &mut BytesMut,
    channel: u16,
    method: &M,
    properties: &BasicProperties,
    raw_properties: Option<&[u8]>,
    body: &[u8],
    frame_max: u32,
) {
    let chunk = body_chunk_size(frame_max);
    let body_frames = body.len().div_ceil(chunk);
    let props_len = raw_properties.map_or_else(|| properties.encoded_len(), <[u8]>::len);
    out.reserve(
        (2 + body_frames) * FRAME_OVERHEAD
            + method.encoded_len()
            + CONTENT_HEADER_FIXED
            + props_len
            + body.len(),
    );
    let at = begin_frame(out, FRAME_METHOD, channel);
    method.encode_payload(out);
    end_frame(out, at);
    let at = begin_header(out, channel, body.len() as u64);
    match raw_properties {
        Some(raw) => out.put_slice(raw),
        None => properties.encode_unreserved(out),
    }
    end_frame(out, at);
    for piece in body.chunks(chunk) {
        put_body(out, channel, piece);
    }
}

/// The largest body-frame payload for `frame_max` (0 = unlimited: one frame, up to 4 GiB).
#[inline]
fn body_chunk_size(frame_max: u32) -> usize {
    let max = if frame_max == 0 {
        u32::MAX as usize
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD)
    };
    max.max(1)
}
