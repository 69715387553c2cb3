//! The streaming decoder.
//!
//! A frame is found in two passes over the buffered bytes, both bounded by the limits: first
//! the header block (command line, header lines, blank line), then the body (`content-length`
//! bytes and a NUL, or everything up to the first NUL). Only once the whole frame is buffered
//! are headers parsed and unescaped; the frame is then split off the buffer and its body is a
//! slice of it, not a copy.

use crate::command::Command;
use crate::error::DecodeError;
use crate::escape::{unescape, Escaping};
use crate::frame::{Frame, Limits, Version};
use bytes::{Buf, BytesMut};
use nom::bytes::complete::{tag, take_till};
use nom::combinator::rest;
use nom::sequence::separated_pair;
use nom::{IResult, Parser};

/// Removes heart-beat EOLs (`\n` or `\r\n`) from the front of `buf`; returns how many.
pub fn skip_heartbeats(buf: &mut BytesMut) -> usize {
    let mut n = 0;
    loop {
        if buf.first() == Some(&b'\n') {
            buf.advance(1);
        } else if buf.starts_with(b"\r\n") {
            buf.advance(2);
        } else {
            return n;
        }
        n += 1;
    }
}

/// A line of the header block: its bounds in the buffer, without the line end.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
}

/// The header block once complete: its lines and where the body starts.
struct HeaderBlock {
    lines: Vec<Line>,
    body_start: usize,
}

/// Decodes one frame from the front of `buf`, skipping heart-beat EOLs before it.
///
/// `Ok(None)`: more input is needed (and nothing seen so far exceeds a limit). On `Ok(Some)`
/// the frame's bytes are removed from `buf`. After an error `buf` is in an unspecified state.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Frame>, DecodeError> {
    skip_heartbeats(buf);
    if buf.is_empty() {
        return Ok(None);
    }
    let Some(block) = find_header_block(buf, limits)? else {
        return Ok(None);
    };
    let command_line = block.lines[0];
    let command = Command::parse(&buf[command_line.start..command_line.end]).ok_or_else(|| {
        DecodeError::UnknownCommand(
            String::from_utf8_lossy(&buf[command_line.start..command_line.end]).into_owned(),
        )
    })?;
    let Some(body_end) = find_body_end(buf, &block, limits)? else {
        return Ok(None);
    };
    let escaping = Escaping::of(version, command.escapes_headers());
    let mut headers = Vec::with_capacity(block.lines.len() - 1);
    for line in &block.lines[1..] {
        headers.push(parse_header(&buf[line.start..line.end], escaping)?);
    }
    let frame_bytes = buf.split_to(body_end + 1).freeze();
    Ok(Some(Frame {
        command,
        headers,
        body: frame_bytes.slice(block.body_start..body_end),
    }))
}

/// Finds the lines of the header block, refusing a line, a header count or a block over the
/// limits as soon as the buffered bytes show it.
fn find_header_block(buf: &[u8], limits: &Limits) -> Result<Option<HeaderBlock>, DecodeError> {
    let mut lines = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // One more byte for a CR that may precede the LF still to come.
            if rest.len() > limits.max_header_line + 1 {
                return Err(DecodeError::HeaderLineTooLong {
                    limit: limits.max_header_line,
                });
            }
            if buf.len() > limits.max_frame_size {
                return Err(DecodeError::FrameTooLarge {
                    limit: limits.max_frame_size,
                });
            }
            return Ok(None);
        };
        let mut end = pos + nl;
        if end > pos && buf[end - 1] == b'\r' {
            end -= 1;
        }
        let next = pos + nl + 1;
        if next > limits.max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                limit: limits.max_frame_size,
            });
        }
        if end - pos > limits.max_header_line {
            return Err(DecodeError::HeaderLineTooLong {
                limit: limits.max_header_line,
            });
        }
        if end == pos && !lines.is_empty() {
            return Ok(Some(HeaderBlock {
                lines,
                body_start: next,
            }));
        }
        lines.push(Line { start: pos, end });
        if lines.len() > limits.max_headers + 1 {
            return Err(DecodeError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        pos = next;
    }
}

/// The first `content-length` header's value, before unescaping (its name and digits have
/// nothing to escape).
fn content_length(buf: &[u8], block: &HeaderBlock) -> Result<Option<usize>, DecodeError> {
    for line in &block.lines[1..] {
        let Ok((_, (name, value))) = header_parts(&buf[line.start..line.end]) else {
            continue;
        };
        if name == b"content-length" {
            let text = String::from_utf8_lossy(value);
            let trimmed = text.trim();
            if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
                return Err(DecodeError::InvalidContentLength(text.into_owned()));
            }
            return trimmed
                .parse()
                .map(Some)
                .map_err(|_| DecodeError::InvalidContentLength(text.into_owned()));
        }
    }
    Ok(None)
}

/// Where the body ends (the index of its terminating NUL), if it is all buffered.
fn find_body_end(
    buf: &mut BytesMut,
    block: &HeaderBlock,
    limits: &Limits,
) -> Result<Option<usize>, DecodeError> {
    let start = block.body_start;
    let too_large = || DecodeError::FrameTooLarge {
        limit: limits.max_frame_size,
    };
    if let Some(len) = content_length(buf, block)? {
        if len > limits.max_body_size {
            return Err(DecodeError::BodyTooLarge {
                limit: limits.max_body_size,
            });
        }
        let end = start.checked_add(len).ok_or_else(too_large)?;
        if end + 1 > limits.max_frame_size {
            return Err(too_large());
        }
        if buf.len() <= end {
            // The size is known and within limits: make room for it in one go.
            buf.reserve(end + 1 - buf.len());
            return Ok(None);
        }
        if buf[end] != 0 {
            return Err(DecodeError::MissingNul(len));
        }
        return Ok(Some(end));
    }
    let window_end = buf.len().min(start + limits.max_body_size + 1);
    match buf[start..window_end].iter().position(|&b| b == 0) {
        Some(i) if start + i + 1 > limits.max_frame_size => Err(too_large()),
        Some(i) => Ok(Some(start + i)),
        None if buf.len() - start > limits.max_body_size => Err(DecodeError::BodyTooLarge {
            limit: limits.max_body_size,
        }),
        None if buf.len() > limits.max_frame_size => Err(too_large()),
        None => Ok(None),
    }
}

/// `name:value`, split at the first colon.
fn header_parts(line: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    separated_pair(take_till(|b| b == b':'), tag(&b":"[..]), rest).parse_complete(line)
}

fn parse_header(line: &[u8], escaping: Escaping) -> Result<(String, String), DecodeError> {
    let (_, (name, value)) = header_parts(line)
        .map_err(|_| DecodeError::MalformedHeader(String::from_utf8_lossy(line).into_owned()))?;
    let name = std::str::from_utf8(name).map_err(|_| DecodeError::NotUtf8)?;
    let value = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
    Ok((
        unescape(name, escaping)?.into_owned(),
        unescape(value, escaping)?.into_owned(),
    ))
}
