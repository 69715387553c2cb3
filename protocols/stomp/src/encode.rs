//! The encoder.

use crate::command::Command;
use crate::escape::{self, escape_into, Escaping};
use crate::frame::{Frame, Version};
use bytes::{BufMut, BytesMut};
use std::borrow::Cow;

/// Appends `frame`, escaping headers as `version` requires. A `content-length` header in
/// `frame.headers` is ignored: the encoder writes the true one.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    encode_parts(
        out,
        version,
        frame.command,
        frame.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        &frame.body,
    );
}

/// Appends a frame from its parts, without building a [`Frame`] (for MESSAGE deliveries).
/// `content-length` is written for every frame with a body and for SEND, MESSAGE and ERROR,
/// so that bodies may contain NUL bytes.
pub fn encode_parts<'a>(
    out: &mut BytesMut,
    version: Version,
    command: Command,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) {
    let escaping = Escaping::of(version, command.escapes_headers());
    out.put_slice(command.as_str().as_bytes());
    out.put_u8(b'\n');
    for (name, value) in headers {
        if name == "content-length" {
            continue;
        }
        escape_into(out, name, escaping, true);
        out.put_u8(b':');
        escape_into(out, value, escaping, false);
        out.put_u8(b'\n');
    }
    if !body.is_empty() || matches!(command, Command::Send | Command::Message | Command::Error) {
        out.put_slice(b"content-length:");
        out.put_slice(body.len().to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(body);
    out.put_u8(0);
}

/// What a header name (`is_name`) or value reads back as after encoding it in a `command`
/// frame under `version`: characters that version can neither carry nor escape (line ends in
/// 1.0 and in CONNECT/CONNECTED, CR in 1.1, a colon in a 1.0 name) become spaces.
pub fn representable(version: Version, command: Command, s: &str, is_name: bool) -> Cow<'_, str> {
    escape::representable(s, Escaping::of(version, command.escapes_headers()), is_name)
}
