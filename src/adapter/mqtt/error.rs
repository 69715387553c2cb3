//! Why an MQTT connection is refused or closed, each mapped to its wire answer in one place.

use switchboard_mqtt::{reason, DecodeError, Protocol};

/// A CONNECT the broker refuses: CONNACK with this code, then close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub(super) struct Refusal {
    pub v3_code: u8,
    pub v5_code: u8,
    pub text: String,
}

impl Refusal {
    pub(super) fn new(v3_code: u8, v5_code: u8, text: impl Into<String>) -> Self {
        Refusal {
            v3_code,
            v5_code,
            text: text.into(),
        }
    }

    pub(super) fn code(&self, protocol: Protocol) -> u8 {
        if protocol.is_v5() {
            self.v5_code
        } else {
            self.v3_code
        }
    }

    pub(super) fn bad_credentials(text: impl Into<String>) -> Self {
        Refusal::new(
            reason::V3_BAD_USER_NAME_OR_PASSWORD,
            reason::BAD_USER_NAME_OR_PASSWORD,
            text,
        )
    }

    pub(super) fn not_authorized(text: impl Into<String>) -> Self {
        Refusal::new(reason::V3_NOT_AUTHORIZED, reason::NOT_AUTHORIZED, text)
    }

    pub(super) fn identifier_rejected(text: impl Into<String>) -> Self {
        Refusal::new(
            reason::V3_IDENTIFIER_REJECTED,
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            text,
        )
    }

    pub(super) fn unavailable(text: impl Into<String>) -> Self {
        Refusal::new(
            reason::V3_SERVER_UNAVAILABLE,
            reason::SERVER_UNAVAILABLE,
            text,
        )
    }
}

/// A reason to close an established connection: a v5 client gets DISCONNECT with `reason`
/// (and the text as Reason String); a v3 client is simply disconnected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text} (reason {reason:#04x})")]
pub(super) struct Violation {
    pub reason: u8,
    pub text: String,
}

impl Violation {
    pub(super) fn new(reason: u8, text: impl Into<String>) -> Self {
        Violation {
            reason,
            text: text.into(),
        }
    }

    pub(super) fn protocol(text: impl Into<String>) -> Self {
        Violation::new(reason::PROTOCOL_ERROR, text)
    }
}

impl From<DecodeError> for Violation {
    fn from(e: DecodeError) -> Self {
        Violation::new(e.reason_code(), e.to_string())
    }
}
