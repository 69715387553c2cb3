//! The STOMP 1.0/1.1/1.2 adapter: frames ⇄ core, with RabbitMQ's destination and header
//! conventions (DESIGN.md).

pub mod connection;
pub mod destination;
pub mod error;
pub mod handshake;
pub mod headers;
mod permit;
pub mod session;
pub mod subscribe;
pub mod subscription;

pub use connection::serve_stream;
