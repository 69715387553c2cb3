//! Errors of core operations, by kind. Each protocol maps a kind to its own answer (an AMQP reply
//! code, a STOMP ERROR frame, an MQTT reason code); the message says what was wrong in RabbitMQ's
//! words so that people searching for an error text find the same explanations.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 403 ACCESS_REFUSED
    AccessRefused,
    /// 404 NOT_FOUND
    NotFound,
    /// 405 RESOURCE_LOCKED
    ResourceLocked,
    /// 406 PRECONDITION_FAILED
    PreconditionFailed,
    /// 503 COMMAND_INVALID (connection-level in AMQP)
    CommandInvalid,
    /// 530 NOT_ALLOWED (connection-level in AMQP)
    NotAllowed,
    /// 540 NOT_IMPLEMENTED
    NotImplemented,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(what: &str, name: &str, vhost: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("no {what} '{name}' in vhost '{vhost}'"),
        )
    }

    pub fn access_refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AccessRefused, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PreconditionFailed, message)
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
