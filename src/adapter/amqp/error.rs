//! AMQP errors: which scope they close (channel or connection), with the reply code and text
//! the spec prescribes. Core errors are mapped here, in one place.

use crate::core::{CoreError, ErrorKind};
use switchboard_amqp::DecodeError;

pub const CONNECTION_FORCED: u16 = 320;
pub const NO_ROUTE: u16 = 312;
pub const ACCESS_REFUSED: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

/// The spec's name for a reply code, as RabbitMQ prefixes its reply texts.
pub fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Channel,
    Connection,
}

/// An error that closes a channel or the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {code}: {text}", if *scope == Scope::Channel { "channel" } else { "connection" })]
pub struct AmqpError {
    pub scope: Scope,
    pub code: u16,
    /// Full reply text, `NAME - what was wrong`.
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    fn new(scope: Scope, code: u16, message: &str) -> Self {
        AmqpError {
            scope,
            code,
            text: format!("{} - {message}", code_name(code)),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn channel(code: u16, message: impl AsRef<str>) -> Self {
        Self::new(Scope::Channel, code, message.as_ref())
    }

    pub fn connection(code: u16, message: impl AsRef<str>) -> Self {
        Self::new(Scope::Connection, code, message.as_ref())
    }

    /// Records the method that caused the error (reported in the close).
    pub fn during(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }
}

impl From<CoreError> for AmqpError {
    fn from(e: CoreError) -> Self {
        let (scope, code) = match e.kind {
            ErrorKind::AccessRefused => (Scope::Channel, ACCESS_REFUSED),
            ErrorKind::NotFound => (Scope::Channel, NOT_FOUND),
            ErrorKind::ResourceLocked => (Scope::Channel, RESOURCE_LOCKED),
            ErrorKind::PreconditionFailed => (Scope::Channel, PRECONDITION_FAILED),
            ErrorKind::CommandInvalid => (Scope::Connection, COMMAND_INVALID),
            ErrorKind::NotAllowed => (Scope::Connection, NOT_ALLOWED),
            ErrorKind::NotImplemented => (Scope::Connection, NOT_IMPLEMENTED),
        };
        AmqpError::new(scope, code, &e.message)
    }
}

impl From<DecodeError> for AmqpError {
    fn from(e: DecodeError) -> Self {
        AmqpError::connection(e.reply_code(), e.to_string())
    }
}

pub type AmqpResult<T> = Result<T, AmqpError>;
