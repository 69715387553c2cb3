//! Header escaping: which characters each version can carry in a header, and how.
//!
//! STOMP 1.2 escapes CR, LF, colon and backslash as `\r`, `\n`, `\c`, `\\`; 1.1 has no `\r`;
//! 1.0 escapes nothing, and CONNECT/STOMP/CONNECTED headers are never escaped. Any other
//! backslash sequence is an error on input (1.2 §"Value Encoding").

use crate::error::DecodeError;
use crate::frame::Version;
use bytes::{BufMut, BytesMut};
use std::borrow::Cow;

/// How header text is written and read in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    None,
    /// STOMP 1.1: no `\r`.
    NoCr,
    Full,
}

impl Escaping {
    pub(crate) fn of(version: Version, command_escapes: bool) -> Self {
        match version {
            _ if !command_escapes => Escaping::None,
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::NoCr,
            Version::V1_2 => Escaping::Full,
        }
    }
}

/// Decodes escape sequences.
pub(crate) fn unescape(raw: &str, escaping: Escaping) -> Result<Cow<'_, str>, DecodeError> {
    if escaping == Escaping::None || !raw.contains('\\') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if escaping == Escaping::Full => out.push('\r'),
            Some(other) => return Err(DecodeError::InvalidEscape(other)),
            None => return Err(DecodeError::InvalidEscape(' ')),
        }
    }
    Ok(Cow::Owned(out))
}

/// Whether `c` cannot be carried as is, nor escaped, in a header under `escaping`: such a
/// character would end the line (or, in a name, the name), so the encoder writes a space.
fn unrepresentable(c: char, escaping: Escaping, is_name: bool) -> bool {
    match escaping {
        Escaping::Full => false,
        Escaping::NoCr => c == '\r',
        Escaping::None => c == '\n' || c == '\r' || (is_name && c == ':'),
    }
}

/// Appends `s` escaped.
pub(crate) fn escape_into(out: &mut BytesMut, s: &str, escaping: Escaping, is_name: bool) {
    let needs_work = s.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b':'));
    if !needs_work {
        out.put_slice(s.as_bytes());
        return;
    }
    let mut tmp = [0u8; 4];
    for c in s.chars() {
        if unrepresentable(c, escaping, is_name) {
            out.put_u8(b' ');
            continue;
        }
        match (escaping, c) {
            (Escaping::None, _) => out.put_slice(c.encode_utf8(&mut tmp).as_bytes()),
            (_, '\\') => out.put_slice(b"\\\\"),
            (_, '\n') => out.put_slice(b"\\n"),
            (_, ':') => out.put_slice(b"\\c"),
            (Escaping::Full, '\r') => out.put_slice(b"\\r"),
            _ => out.put_slice(c.encode_utf8(&mut tmp).as_bytes()),
        }
    }
}

/// What `s` reads back as after [`escape_into`]: unrepresentable characters become spaces.
pub(crate) fn representable(s: &str, escaping: Escaping, is_name: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| unrepresentable(c, escaping, is_name)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if unrepresentable(c, escaping, is_name) {
                    ' '
                } else {
                    c
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_per_version() {
        let mut out = BytesMut::new();
        escape_into(&mut out, "a:b\\c\nd\re", Escaping::Full, false);
        assert_eq!(&out[..], b"a\\cb\\\\c\\nd\\re");
        out.clear();
        escape_into(&mut out, "a:b\r", Escaping::NoCr, false);
        assert_eq!(&out[..], b"a\\cb ");
        out.clear();
        escape_into(&mut out, "a:b\\n", Escaping::None, false);
        assert_eq!(&out[..], b"a:b\\n");
        out.clear();
        escape_into(&mut out, "a:b", Escaping::None, true);
        assert_eq!(&out[..], b"a b");
    }

    #[test]
    fn unescapes_and_refuses_undefined() {
        assert_eq!(
            unescape("a\\cb\\\\\\n\\r", Escaping::Full).unwrap(),
            "a:b\\\n\r"
        );
        assert_eq!(
            unescape("\\r", Escaping::NoCr),
            Err(DecodeError::InvalidEscape('r'))
        );
        assert_eq!(
            unescape("\\t", Escaping::Full),
            Err(DecodeError::InvalidEscape('t'))
        );
        assert!(unescape("trailing\\", Escaping::Full).is_err());
        assert_eq!(unescape("\\t", Escaping::None).unwrap(), "\\t");
    }
}
