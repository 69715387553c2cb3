//! Decoding errors, each mapped to the AMQP reply code the broker closes the connection with.

/// Why a peer's bytes could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    /// The declared frame size (payload + 8 bytes of overhead) exceeds the negotiated frame_max.
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    FrameTooLarge { size: u64, max: u32 },
    /// The octet after the payload was not `FRAME_END`.
    #[error("frame end octet was {0:#04x}, expected 0xce")]
    BadFrameEnd(u8),
    /// A frame type other than method, header, body or heartbeat.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// Malformed or truncated method arguments, content header, field table or string.
    #[error("method frame too short or malformed: {0}")]
    Syntax(String),
    /// A class/method id pair this codec does not know.
    #[error("unknown method {class_id}.{method_id}")]
    UnknownMethod { class_id: u16, method_id: u16 },
    /// A content header for a class other than basic.
    #[error("content header for class {0}, only basic (60) carries content")]
    BadContentClass(u16),
}

impl DecodeError {
    /// The AMQP reply code for closing the connection over this error:
    /// 501 FRAME_ERROR, 502 SYNTAX_ERROR, 540 NOT_IMPLEMENTED, 505 UNEXPECTED_FRAME.
    pub fn reply_code(&self) -> u16 {
        match self {
            DecodeError::FrameTooLarge { .. }
            | DecodeError::BadFrameEnd(_)
            | DecodeError::UnknownFrameType(_) => 501,
            DecodeError::Syntax(_) => 502,
            DecodeError::UnknownMethod { .. } => 540,
            DecodeError::BadContentClass(_) => 505,
        }
    }

    pub(crate) fn syntax(msg: &str) -> Self {
        DecodeError::Syntax(msg.to_owned())
    }

    /// Prefix a syntax error's message with where it happened (only runs on the error path).
    pub(crate) fn context(self, what: &str) -> Self {
        match self {
            DecodeError::Syntax(m) => DecodeError::Syntax(format!("{what}: {m}")),
            other => other,
        }
    }
}
