//! The AMQP 0-9-1 adapter: connection and channel state machines translating frames into calls
//! on the core.

pub mod channel;
pub mod connection;
pub mod delivery;
pub mod error;
pub mod handshake;

pub use connection::serve_stream;
