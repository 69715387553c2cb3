//! Sans-IO MQTT 3.1 / 3.1.1 / 5.0 codec for the Switchboard broker: every packet of the three
//! versions (v5 AUTH included) and every v5 property, decoded with the broker's limits enforced
//! before anything is buffered or allocated. No I/O, no async runtime: bytes in, values out.
//! See README.md for why this replaces `mqttbytes`.

mod decode;
mod encode;
pub mod error;
mod packet;
mod properties;
pub mod reason;
pub mod topic;
mod wire;

pub use decode::decode;
pub use encode::{encode, encode_publish, encoded_len, PublishOut};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::{Properties, PropertyValues};
pub use wire::{check_utf8, VAR_INT_MAX};
