//! Wire primitives: variable byte integers, two-byte integers, UTF-8 strings and binary data,
//! read from one packet's body (already known to be complete) and written to an output buffer.

use crate::error::{DecodeError, EncodeError};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest value a variable byte integer holds (four bytes of seven bits).
pub const VAR_INT_MAX: u32 = 268_435_455;

/// Outcome of reading a variable byte integer from the front of a buffer that may be incomplete.
pub(crate) enum VarInt {
    /// The value and how many bytes encoded it.
    Complete(u32, usize),
    Incomplete,
}

/// Reads a variable byte integer from `bytes` without consuming. More than four bytes, or a
/// non-minimal encoding (spec 1.5.5: "MUST use the minimum number of bytes"), is malformed.
pub(crate) fn peek_var_int(bytes: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError::Malformed(
                "variable byte integer longer than 4 bytes",
            ));
        }
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer not minimally encoded",
                ));
            }
            return Ok(VarInt::Complete(value, i + 1));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ));
    }
    Ok(VarInt::Incomplete)
}

pub(crate) fn var_int_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_var_int(out: &mut BytesMut, mut value: u32) -> Result<(), EncodeError> {
    if value > VAR_INT_MAX {
        return Err(EncodeError::VarIntTooLarge(value));
    }
    loop {
        let mut b = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if value == 0 {
            return Ok(());
        }
    }
}

/// Checks a decoded UTF-8 string against the spec's rules (1.5.4). Invalid UTF-8 and encoded
/// surrogates are refused by `str::from_utf8`; U+0000 is refused here. Control characters
/// (U+0001..U+001F, U+007F..U+009F) and non-characters are accepted: the spec says senders
/// SHOULD NOT use them and receivers MAY refuse them; we accept them because they are valid
/// Unicode and refusing them would break clients that put tabs or newlines in user properties.
pub fn check_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8("not valid UTF-8"))?;
    // A byte scan: no byte of a multi-byte UTF-8 sequence is 0, and `str::contains` over a
    // char is a searcher set up per call.
    if bytes.contains(&0) {
        return Err(DecodeError::Utf8("contains U+0000"));
    }
    Ok(s)
}

/// A cursor over one packet's body. Every read checks the remaining length first.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        match peek_var_int(&self.buf)? {
            VarInt::Complete(v, n) => {
                self.buf.advance(n);
                Ok(v)
            }
            VarInt::Incomplete => Err(DecodeError::Malformed("truncated variable byte integer")),
        }
    }

    /// `n` bytes as a zero-copy slice.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Everything left, zero-copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A UTF-8 string (spec 1.5.4), copied out of the buffer without taking a reference to
    /// it first.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u16()?);
        self.need(n)?;
        let s = check_utf8(&self.buf[..n])?.to_owned();
        self.buf.advance(n);
        Ok(s)
    }
}

pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(b.len()))?;
    out.put_u16(n);
    out.put_slice(b);
    Ok(())
}

pub(crate) fn put_string(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}
