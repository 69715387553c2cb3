//! Sans-IO STOMP 1.0/1.1/1.2 codec: frames, header escaping per version, `content-length` and
//! NUL-terminated bodies, heart-beat EOLs, and limits enforced before more input is buffered.
//!
//! No sockets, no clock: [`decode`] takes what has been read so far and either returns a
//! complete frame (removing it from the buffer, its body a zero-copy slice of the input), asks
//! for more input, or names what is wrong with the input. [`encode`] appends a frame.

mod command;
mod decode;
mod encode;
mod error;
mod escape;
mod frame;

pub use command::Command;
pub use decode::{decode, skip_heartbeats, Decoder};
pub use encode::{encode, encode_parts, representable};
pub use error::DecodeError;
pub use frame::{Frame, Limits, Version};
