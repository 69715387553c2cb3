//! What can be wrong with STOMP input.

/// A decoding failure. After one the stream cannot be resynchronised: the peer gets an ERROR
/// frame and the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header line longer than {limit} bytes")]
    HeaderLineTooLong { limit: usize },
    #[error("more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("frame larger than {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    #[error("header line without a colon: '{0}'")]
    MalformedHeader(String),
    #[error("undefined escape sequence '\\{0}' in a header")]
    InvalidEscape(char),
    #[error("header is not valid UTF-8")]
    NotUtf8,
    #[error("invalid content-length '{0}'")]
    InvalidContentLength(String),
    #[error("frame body of content-length {0} is not followed by a NUL byte")]
    MissingNul(usize),
}
