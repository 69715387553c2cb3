//! The streaming decoder.
//!
//! A frame is found in two passes over the buffered bytes, both bounded by the limits: first
//! the header block (command line, header lines, blank line), then the body (`content-length`
//! bytes and a NUL, or everything up to the first NUL). Only once the whole frame is buffered
//! are headers parsed and unescaped; the frame is then split off the buffer and its body is a
//! slice of it, not a copy.
//!
//! A [`Decoder`] remembers how far it has looked, so bytes arriving in many small reads are
//! scanned once, not once per read: a 16 MB body without `content-length` costs one pass.

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

/// Decodes one frame from the front of `buf` without remembering progress (each call scans
/// from the start). Connections should keep a [`Decoder`] instead.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Frame>, DecodeError> {
    Decoder::new().decode(buf, version, limits)
}

/// A line of the header block: its bounds in the buffer, without the line end.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
}

/// The header block once complete.
#[derive(Debug)]
struct HeaderBlock {
    command: Command,
    body_start: usize,
    content_length: Option<usize>,
}

/// A streaming decoder for one connection's input. Between calls the caller may only append
/// to the buffer; the decoder resets itself after each frame and after an error.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Complete lines of the header block seen so far.
    lines: Vec<Line>,
    /// Where the next header line starts.
    next_line: usize,
    block: Option<HeaderBlock>,
    /// Body bytes already known to hold no NUL (bodies without `content-length`).
    body_scanned: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one frame from the front of `buf`, skipping heart-beat EOLs before it.
    ///
    /// `Ok(None)`: more input is needed (and nothing seen so far exceeds a limit). On
    /// `Ok(Some)` the frame's bytes are removed from `buf`. After an error `buf` is in an
    /// unspecified state and the stream cannot be resynchronised.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        version: Version,
        limits: &Limits,
    ) -> Result<Option<Frame>, DecodeError> {
        let result = self.try_decode(buf, version, limits);
        if !matches!(result, Ok(None)) {
            *self = Decoder::default();
        }
        result
    }

    fn try_decode(
        &mut self,
        buf: &mut BytesMut,
        version: Version,
        limits: &Limits,
    ) -> Result<Option<Frame>, DecodeError> {
        if self.next_line == 0 {
            skip_heartbeats(buf);
            if buf.is_empty() {
                return Ok(None);
            }
        }
        if self.block.is_none() && !self.scan_header_lines(buf, limits)? {
            return Ok(None);
        }
        let Some(body_end) = self.find_body_end(buf, limits)? else {
            return Ok(None);
        };
        let Some(block) = self.block.take() else {
            return Ok(None);
        };
        let escaping = Escaping::of(version, block.command.escapes_headers());
        let mut headers = Vec::with_capacity(self.lines.len() - 1);
        for line in &self.lines[1..] {
            headers.push(parse_header(&buf[line.start..line.end], escaping)?);
        }
        let frame_bytes = buf.split_to(body_end + 1).freeze();
        Ok(Some(Frame {
            command: block.command,
            headers,
            body: frame_bytes.slice(block.body_start..body_end),
        }))
    }

    /// Scans header lines from where the last call stopped, refusing a line, a header count or
    /// a block over the limits as soon as the buffered bytes show it. True once the blank line
    /// ending the block is found (and `self.block` is set).
    fn scan_header_lines(&mut self, buf: &[u8], limits: &Limits) -> Result<bool, DecodeError> {
        loop {
            let pos = self.next_line;
            let rest = &buf[pos..];
            // A line may not be longer than the limit, plus one byte for a CR before its LF.
            let window = &rest[..rest.len().min(limits.max_header_line + 2)];
            let Some(nl) = memchr::memchr(b'\n', window) else {
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
                return Ok(false);
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
            self.next_line = next;
            if self.lines.is_empty() {
                // The command is checked as soon as its line is complete.
                let line = &buf[pos..end];
                if Command::parse(line).is_none() {
                    return Err(DecodeError::UnknownCommand(
                        String::from_utf8_lossy(line).into_owned(),
                    ));
                }
            } else if end == pos {
                let command = Command::parse(&buf[self.lines[0].start..self.lines[0].end])
                    .ok_or_else(|| DecodeError::UnknownCommand(String::new()))?;
                self.block = Some(HeaderBlock {
                    command,
                    body_start: next,
                    content_length: content_length(buf, &self.lines[1..])?,
                });
                return Ok(true);
            }
            self.lines.push(Line { start: pos, end });
            if self.lines.len() > limits.max_headers + 1 {
                return Err(DecodeError::TooManyHeaders {
                    limit: limits.max_headers,
                });
            }
        }
    }

    /// Where the body ends (the index of its terminating NUL), if it is all buffered.
    fn find_body_end(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<usize>, DecodeError> {
        let Some(block) = &self.block else {
            return Ok(None);
        };
        let start = block.body_start;
        let too_large = || DecodeError::FrameTooLarge {
            limit: limits.max_frame_size,
        };
        if let Some(len) = block.content_length {
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
        let from = start + self.body_scanned;
        match memchr::memchr(0, &buf[from.min(window_end)..window_end]) {
            Some(i) if from + i + 1 > limits.max_frame_size => Err(too_large()),
            Some(i) => Ok(Some(from + i)),
            None if buf.len() - start > limits.max_body_size => Err(DecodeError::BodyTooLarge {
                limit: limits.max_body_size,
            }),
            None if buf.len() > limits.max_frame_size => Err(too_large()),
            None => {
                self.body_scanned = window_end - start;
                Ok(None)
            }
        }
    }
}

/// The first `content-length` header's value, before unescaping (its name and digits have
/// nothing to escape).
fn content_length(buf: &[u8], header_lines: &[Line]) -> Result<Option<usize>, DecodeError> {
    for line in header_lines {
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
