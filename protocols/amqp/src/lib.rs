//! Sans-IO AMQP 0-9-1 codec for the Switchboard broker: frames, methods (with RabbitMQ's
//! extensions), field tables and basic content properties.
//!
//! Decoding never panics and never allocates for a peer-declared length before that many bytes
//! are present; every malformed input is a [`DecodeError`] carrying its AMQP reply code.

pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod types;
mod wire;

pub use error::*;
pub use frame::*;
pub use method::*;
pub use properties::{BasicProperties, Properties};
pub use types::*;

/// The protocol header a client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
pub const FRAME_MIN_SIZE: u32 = 4096;
/// bytes of frame overhead: 7-byte header + frame-end octet
pub const FRAME_OVERHEAD: usize = 8;
