//! STOMP errors: each becomes one ERROR frame (a short `message` header, an explaining body),
//! after which the connection closes, as the spec requires.

use crate::core::{CoreError, ErrorKind};
use switchboard_stomp::DecodeError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}: {detail}")]
pub struct StompError {
    /// The ERROR frame's `message` header: a short summary.
    pub message: String,
    /// The ERROR frame's body: what was wrong, in full.
    pub detail: String,
    /// More headers for the ERROR frame (such as `version` after a failed negotiation).
    pub extra_headers: Vec<(&'static str, String)>,
}

pub type StompResult<T> = Result<T, StompError>;

impl StompError {
    pub fn new(message: impl Into<String>, detail: impl Into<String>) -> Self {
        StompError {
            message: message.into(),
            detail: detail.into(),
            extra_headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra_headers.push((name, value.into()));
        self
    }

    /// A required header is absent.
    pub fn missing_header(name: &str, command: &str) -> Self {
        Self::new(
            format!("Missing {name} header"),
            format!("{command} frames must have a '{name}' header."),
        )
    }

    /// A header's value cannot be used.
    pub fn invalid_header(name: &str, value: &str, why: &str) -> Self {
        Self::new(
            format!("Invalid {name} header"),
            format!("'{value}' is not a valid value for '{name}': {why}."),
        )
    }
}

impl StompError {
    /// The WebSocket close code that goes with this ERROR frame.
    pub fn ws_cause(&self) -> crate::net::websocket::Cause {
        use crate::net::websocket::Cause;
        match self.message.as_str() {
            MALFORMED => Cause::ProtocolError,
            super::handshake::ACCESS_REFUSED | "access_refused" => Cause::Policy,
            _ => Cause::Normal,
        }
    }
}

/// The `message` of an ERROR for a frame that does not decode.
pub const MALFORMED: &str = "Malformed frame";

impl From<DecodeError> for StompError {
    fn from(e: DecodeError) -> Self {
        StompError::new(MALFORMED, e.to_string())
    }
}

/// Core errors keep RabbitMQ's wording, prefixed with the AMQP code name as RabbitMQ's STOMP
/// plugin shows them (`message:not_found`, body `NOT_FOUND - no queue 'q' in vhost '/'`).
impl From<CoreError> for StompError {
    fn from(e: CoreError) -> Self {
        let (short, code) = match e.kind {
            ErrorKind::AccessRefused => ("access_refused", "ACCESS_REFUSED"),
            ErrorKind::NotFound => ("not_found", "NOT_FOUND"),
            ErrorKind::ResourceLocked => ("resource_locked", "RESOURCE_LOCKED"),
            ErrorKind::PreconditionFailed => ("precondition_failed", "PRECONDITION_FAILED"),
            ErrorKind::CommandInvalid => ("command_invalid", "COMMAND_INVALID"),
            ErrorKind::NotAllowed => ("not_allowed", "NOT_ALLOWED"),
            ErrorKind::NotImplemented => ("not_implemented", "NOT_IMPLEMENTED"),
        };
        StompError::new(short, format!("{code} - {}", e.message))
    }
}
