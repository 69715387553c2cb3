//! Why an MQTT connection is refused or closed, each mapped to its wire answer in one place.

use switchboard_mqtt::{reason, DecodeError, Protocol};

/// A CONNECT the broker refuses: CONNACK with this code, then close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct Refusal {
    pub v3_code: u8,
    pub v5_code: u8,
    pub text: String,
}

impl Refusal {
    pub fn new(v3_code: u8, v5_code: u8, text: impl Into<String>) -> Self {
        Refusal {
            v3_code,
            v5_code,
            text: text.into(),
        }
    }

    pub fn code(&self, protocol: Protocol) -> u8 {
        if protocol.is_v5() {
            self.v5_code
        } else {
            self.v3_code
        }
    }

    pub fn bad_credentials(text: impl Into<String>) -> Self {
        Refusal::new(
            reason::V3_BAD_USER_NAME_OR_PASSWORD,
            reason::BAD_USER_NAME_OR_PASSWORD,
            text,
        )
    }

    pub fn not_authorized(text: impl Into<String>) -> Self {
        Refusal::new(reason::V3_NOT_AUTHORIZED, reason::NOT_AUTHORIZED, text)
    }

    pub fn identifier_rejected(text: impl Into<String>) -> Self {
        Refusal::new(
            reason::V3_IDENTIFIER_REJECTED,
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            text,
        )
    }

    pub fn unavailable(text: impl Into<String>) -> Self {
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
pub struct Violation {
    pub reason: u8,
    pub text: String,
}

impl Violation {
    pub fn new(reason: u8, text: impl Into<String>) -> Self {
        Violation {
            reason,
            text: text.into(),
        }
    }

    pub fn protocol(text: impl Into<String>) -> Self {
        Violation::new(reason::PROTOCOL_ERROR, text)
    }
}

impl From<DecodeError> for Violation {
    fn from(e: DecodeError) -> Self {
        Violation::new(e.reason_code(), e.to_string())
    }
}
