//! Wire primitives shared by the method, table and property codecs.
//!
//! Decoding works on a `&mut &[u8]` cursor: every read checks the remaining length first and
//! returns a [`DecodeError::Syntax`] when the input is short, so no peer byte sequence can make
//! these functions panic, and nothing is allocated for a length before that many bytes are known
//! to be present.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::types::{decode_table, encode_table, table_encoded_len, FieldTable};

pub(crate) type Result<T> = std::result::Result<T, DecodeError>;

#[cold]
#[inline(never)]
pub(crate) fn truncated(what: &str) -> DecodeError {
    DecodeError::Syntax(format!("truncated {what}"))
}

#[inline]
pub(crate) fn get_u8(buf: &mut &[u8]) -> Result<u8> {
    match buf.split_first() {
        Some((&b, rest)) => {
            *buf = rest;
            Ok(b)
        }
        None => Err(truncated("octet")),
    }
}

#[inline]
fn get_array<const N: usize>(buf: &mut &[u8], what: &str) -> Result<[u8; N]> {
    match buf.split_first_chunk::<N>() {
        Some((a, rest)) => {
            *buf = rest;
            Ok(*a)
        }
        None => Err(truncated(what)),
    }
}

#[inline]
pub(crate) fn get_u16(buf: &mut &[u8]) -> Result<u16> {
    get_array(buf, "short").map(u16::from_be_bytes)
}

#[inline]
pub(crate) fn get_u32(buf: &mut &[u8]) -> Result<u32> {
    get_array(buf, "long").map(u32::from_be_bytes)
}

#[inline]
pub(crate) fn get_u64(buf: &mut &[u8]) -> Result<u64> {
    get_array(buf, "longlong").map(u64::from_be_bytes)
}

/// Take `n` bytes off the front, after checking they are there.
#[inline]
pub(crate) fn get_bytes<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8]> {
    if buf.len() < n {
        return Err(truncated(what));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

#[inline]
fn shortstr_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = get_u8(buf)? as usize;
    get_bytes(buf, n, "short string")
}

#[inline]
pub(crate) fn get_shortstr(buf: &mut &[u8]) -> Result<String> {
    let raw = shortstr_bytes(buf)?;
    match std::str::from_utf8(raw) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(DecodeError::syntax("invalid UTF-8 in short string")),
    }
}

#[inline]
fn longstr_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = get_u32(buf)? as usize;
    get_bytes(buf, n, "long string")
}

#[inline]
pub(crate) fn get_longstr(buf: &mut &[u8]) -> Result<Bytes> {
    longstr_bytes(buf).map(Bytes::copy_from_slice)
}

/// The longest prefix of `s` that fits a short string (255 bytes), cut on a char boundary.
/// Encoders never emit a malformed short string; callers should validate lengths beforehand.
#[inline]
pub(crate) fn short_prefix(s: &str) -> &str {
    if s.len() <= 255 {
        return s;
    }
    let mut n = 255;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.get(..n).unwrap_or_default()
}

#[inline]
pub(crate) fn put_shortstr(out: &mut BytesMut, s: &str) {
    let s = short_prefix(s);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

#[inline]
pub(crate) fn shortstr_len(s: &str) -> usize {
    1 + short_prefix(s).len()
}

/// A long string's bytes as encoded: at most `u32::MAX` of them.
#[inline]
pub(crate) fn long_prefix(b: &[u8]) -> &[u8] {
    b.get(..u32::MAX as usize).unwrap_or(b)
}

#[inline]
pub(crate) fn put_longstr(out: &mut BytesMut, b: &[u8]) {
    let b = long_prefix(b);
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

#[inline]
pub(crate) fn longstr_len(b: &[u8]) -> usize {
    4 + long_prefix(b).len()
}

/// Method argument reader: the primitives plus AMQP's bit packing (consecutive `bit` arguments
/// share octets, least significant bit first; any other argument type ends the run).
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    bits: u8,
    /// Bits of `bits` already consumed; 8 means "no octet loaded".
    used: u8,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            bits: 0,
            used: 8,
        }
    }

    #[inline]
    pub(crate) fn octet(&mut self) -> Result<u8> {
        self.used = 8;
        get_u8(&mut self.buf)
    }
    #[inline]
    pub(crate) fn short(&mut self) -> Result<u16> {
        self.used = 8;
        get_u16(&mut self.buf)
    }
    #[inline]
    pub(crate) fn long(&mut self) -> Result<u32> {
        self.used = 8;
        get_u32(&mut self.buf)
    }
    #[inline]
    pub(crate) fn longlong(&mut self) -> Result<u64> {
        self.used = 8;
        get_u64(&mut self.buf)
    }
    #[inline]
    pub(crate) fn shortstr(&mut self) -> Result<String> {
        self.used = 8;
        get_shortstr(&mut self.buf)
    }
    #[inline]
    pub(crate) fn longstr(&mut self) -> Result<Bytes> {
        self.used = 8;
        get_longstr(&mut self.buf)
    }
    #[inline]
    pub(crate) fn table(&mut self) -> Result<FieldTable> {
        self.used = 8;
        decode_table(&mut self.buf)
    }
    #[inline]
    pub(crate) fn bit(&mut self) -> Result<bool> {
        if self.used >= 8 {
            self.bits = get_u8(&mut self.buf)?;
            self.used = 0;
        }
        let v = (self.bits >> self.used) & 1 != 0;
        self.used += 1;
        Ok(v)
    }
    #[inline]
    pub(crate) fn reserved_short(&mut self) -> Result<()> {
        self.short().map(drop)
    }
    #[inline]
    pub(crate) fn reserved_shortstr(&mut self) -> Result<()> {
        self.used = 8;
        shortstr_bytes(&mut self.buf).map(drop)
    }
    #[inline]
    pub(crate) fn reserved_longstr(&mut self) -> Result<()> {
        self.used = 8;
        longstr_bytes(&mut self.buf).map(drop)
    }
    #[inline]
    pub(crate) fn reserved_bit(&mut self) -> Result<()> {
        self.bit().map(drop)
    }
}

/// Where method arguments go: a [`Writer`] appends them, a [`Sizer`] measures them. One
/// argument-walking function per method serves both, so the size used to `reserve` always
/// matches what is written.
pub(crate) trait Sink {
    fn octet(&mut self, v: &u8);
    fn short(&mut self, v: &u16);
    fn long(&mut self, v: &u32);
    fn longlong(&mut self, v: &u64);
    fn shortstr(&mut self, v: &str);
    fn longstr(&mut self, v: &[u8]);
    fn table(&mut self, v: &FieldTable);
    fn bit(&mut self, v: &bool);
    /// Flush a pending bit octet; call once after the last argument.
    fn finish(&mut self);

    #[inline]
    fn reserved_short(&mut self) {
        self.short(&0)
    }
    #[inline]
    fn reserved_shortstr(&mut self) {
        self.shortstr("")
    }
    #[inline]
    fn reserved_longstr(&mut self) {
        self.longstr(&[])
    }
    #[inline]
    fn reserved_bit(&mut self) {
        self.bit(&false)
    }
}

pub(crate) struct Writer<'a> {
    out: &'a mut BytesMut,
    bits: u8,
    /// Bits packed into `bits` and not yet written.
    pending: u8,
}

impl<'a> Writer<'a> {
    #[inline]
    pub(crate) fn new(out: &'a mut BytesMut) -> Self {
        Writer {
            out,
            bits: 0,
            pending: 0,
        }
    }
    #[inline]
    fn flush(&mut self) {
        if self.pending > 0 {
            self.out.put_u8(self.bits);
            self.bits = 0;
            self.pending = 0;
        }
    }
}

impl Sink for Writer<'_> {
    #[inline]
    fn octet(&mut self, v: &u8) {
        self.flush();
        self.out.put_u8(*v);
    }
    #[inline]
    fn short(&mut self, v: &u16) {
        self.flush();
        self.out.put_u16(*v);
    }
    #[inline]
    fn long(&mut self, v: &u32) {
        self.flush();
        self.out.put_u32(*v);
    }
    #[inline]
    fn longlong(&mut self, v: &u64) {
        self.flush();
        self.out.put_u64(*v);
    }
    #[inline]
    fn shortstr(&mut self, v: &str) {
        self.flush();
        put_shortstr(self.out, v);
    }
    #[inline]
    fn longstr(&mut self, v: &[u8]) {
        self.flush();
        put_longstr(self.out, v);
    }
    #[inline]
    fn table(&mut self, v: &FieldTable) {
        self.flush();
        encode_table(self.out, v);
    }
    #[inline]
    fn bit(&mut self, v: &bool) {
        if self.pending == 8 {
            self.flush();
        }
        self.bits |= u8::from(*v) << self.pending;
        self.pending += 1;
    }
    #[inline]
    fn finish(&mut self) {
        self.flush();
    }
}

#[derive(Default)]
pub(crate) struct Sizer {
    pub(crate) len: usize,
    pending: u8,
}

impl Sizer {
    #[inline]
    fn flush(&mut self) {
        if self.pending > 0 {
            self.len += 1;
            self.pending = 0;
        }
    }
}

impl Sink for Sizer {
    #[inline]
    fn octet(&mut self, _: &u8) {
        self.flush();
        self.len += 1;
    }
    #[inline]
    fn short(&mut self, _: &u16) {
        self.flush();
        self.len += 2;
    }
    #[inline]
    fn long(&mut self, _: &u32) {
        self.flush();
        self.len += 4;
    }
    #[inline]
    fn longlong(&mut self, _: &u64) {
        self.flush();
        self.len += 8;
    }
    #[inline]
    fn shortstr(&mut self, v: &str) {
        self.flush();
        self.len += shortstr_len(v);
    }
    #[inline]
    fn longstr(&mut self, v: &[u8]) {
        self.flush();
        self.len += longstr_len(v);
    }
    #[inline]
    fn table(&mut self, v: &FieldTable) {
        self.flush();
        self.len += table_encoded_len(v);
    }
    #[inline]
    fn bit(&mut self, _: &bool) {
        if self.pending == 8 {
            self.flush();
        }
        self.pending += 1;
    }
    #[inline]
    fn finish(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_eight_bits_spill_into_a_second_octet() {
        let bits = [
            true, false, true, true, false, false, false, true, true, false,
        ];
        let mut out = BytesMut::new();
        let mut w = Writer::new(&mut out);
        let mut s = Sizer::default();
        for b in &bits {
            w.bit(b);
            s.bit(b);
        }
        w.short(&0x0102);
        s.short(&0x0102);
        w.bit(&true);
        s.bit(&true);
        w.finish();
        s.finish();
        assert_eq!(&out[..], &[0b1000_1101, 0b01, 1, 2, 1]);
        assert_eq!(s.len, out.len());

        let mut r = Reader::new(&out);
        for b in bits {
            assert_eq!(r.bit(), Ok(b));
        }
        assert_eq!(r.short(), Ok(0x0102));
        assert_eq!(r.bit(), Ok(true));
        assert!(r.buf.is_empty());
        assert_eq!(r.bit(), Ok(false)); // rest of the loaded octet
        assert!(r.short().is_err());
    }

    #[test]
    fn short_prefix_cuts_on_char_boundary() {
        assert_eq!(short_prefix("abc"), "abc");
        let s = "a".repeat(254) + "é"; // 256 bytes, 'é' straddles byte 255
        assert_eq!(short_prefix(&s).len(), 254);
        let s = "a".repeat(300);
        assert_eq!(short_prefix(&s).len(), 255);
    }

    #[test]
    fn primitives_reject_short_input() {
        assert!(get_u8(&mut &[][..]).is_err());
        assert!(get_u16(&mut &[1][..]).is_err());
        assert!(get_u32(&mut &[1, 2, 3][..]).is_err());
        assert!(get_u64(&mut &[1, 2, 3, 4, 5, 6, 7][..]).is_err());
        assert!(get_shortstr(&mut &[3, b'a', b'b'][..]).is_err());
        assert!(get_longstr(&mut &[0, 0, 0, 3, b'a', b'b'][..]).is_err());
        let mut b = &[0, 0, 0, 2, b'a', b'b', 9][..];
        assert_eq!(get_longstr(&mut b).as_deref(), Ok(&b"ab"[..]));
        assert_eq!(b, &[9]);
    }
}
