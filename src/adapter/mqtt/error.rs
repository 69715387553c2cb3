//! Why an MQTT connection is refused or closed, each mapped to its wire answer in one place.

use crate::config::RefusalReason;
use switchboard_mqtt::{reason, DecodeError, Protocol};

/// The MQTT 5 reason code for a refusal for want of permission: 0x87 Not authorized, or 0x80
/// Unspecified error when `mqtt.refusal_reason` says not to tell why.
pub(super) fn not_authorized(how: RefusalReason) -> u8 {
    match how {
        RefusalReason::Specific => reason::NOT_AUTHORIZED,
        RefusalReason::Unspecified => reason::UNSPECIFIED_ERROR,
    }
}

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

    /// The CONNACK code and the v5 Reason String for this refusal: a v5 "not authorized"
    /// follows `mqtt.refusal_reason`, and says nothing more when it is `unspecified`.
    pub(super) fn answer(&self, protocol: Protocol, how: RefusalReason) -> (u8, Option<String>) {
        if !protocol.is_v5() {
            (self.v3_code, None)
        } else if self.v5_code == reason::NOT_AUTHORIZED {
            let code = not_authorized(how);
            let text = (code == reason::NOT_AUTHORIZED).then(|| self.text.clone());
            (code, text)
        } else {
            (self.v5_code, Some(self.text.clone()))
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
/// (and the text as Reason String, if it asked for problem information and the text may be
/// told); a v3 client is simply disconnected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text} (reason {reason:#04x})")]
pub(super) struct Violation {
    pub reason: u8,
    pub text: String,
    /// False when the text is for the log only (`mqtt.refusal_reason = "unspecified"`).
    pub tell: bool,
}

impl Violation {
    pub(super) fn new(reason: u8, text: impl Into<String>) -> Self {
        Violation {
            reason,
            text: text.into(),
            tell: true,
        }
    }

    /// Closing for want of permission, answered as `mqtt.refusal_reason` says.
    pub(super) fn not_authorized(how: RefusalReason, text: impl Into<String>) -> Self {
        let reason = not_authorized(how);
        Violation {
            reason,
            text: text.into(),
            tell: reason == reason::NOT_AUTHORIZED,
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
