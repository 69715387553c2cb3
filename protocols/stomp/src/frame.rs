//! A STOMP frame, the protocol versions and the decoder's limits.

use crate::command::Command;
use bytes::Bytes;

/// A STOMP protocol version; it decides how header values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// No escaping at all.
    V1_0,
    /// `\n`, `\c` and `\\`.
    V1_1,
    /// `\r`, `\n`, `\c` and `\\`.
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Version::ALL.into_iter().find(|v| v.as_str() == s.trim())
    }
}

/// Bounds on what the decoder accepts. Each is checked as soon as the bytes read so far exceed
/// it, so a peer cannot make the decoder buffer more than about `max_frame_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Command, headers and body together, in bytes.
    pub max_frame_size: usize,
    /// Headers in one frame.
    pub max_headers: usize,
    /// One header line (or the command line), in bytes, without its line end.
    pub max_header_line: usize,
    /// The body, in bytes.
    pub max_body_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 * 1024 * 1024 + 64 * 1024,
            max_headers: 256,
            max_header_line: 16 * 1024,
            max_body_size: 16 * 1024 * 1024,
        }
    }
}

/// One frame. Headers keep their order and repeats; the first of a repeated header counts
/// (STOMP 1.2 §"Repeated Header Entries"), which [`Frame::header`] implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
