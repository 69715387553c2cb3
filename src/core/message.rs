//! The protocol-neutral message that moves through exchanges and queues.
//!
//! AMQP's basic properties are the canonical superset of every protocol's metadata (DESIGN.md), so
//! the core uses the codec's property and field-table types as its model. A message keeps the
//! encoded property block it arrived with (`raw_properties`) so AMQP consumers get it forwarded
//! byte for byte with no re-encoding; code that changes the properties must drop it.

use super::memory::MemoryCharge;
use bytes::Bytes;
use switchboard_amqp::BasicProperties;

/// Fixed per-message overhead charged on top of the body: the struct, its `Arc` and the heap
/// blocks of its strings and property bytes. Keeps the memory alarm and the queues' memory
/// budgets honest for floods of tiny messages (measured: ~600 bytes for a 16-byte message).
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 160;

#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    /// The content-header property bytes as received from an AMQP publisher, if unchanged.
    pub raw_properties: Option<Bytes>,
    pub body: Bytes,
    _charge: MemoryCharge,
}

impl Message {
    pub fn new(
        exchange: String,
        routing_key: String,
        properties: BasicProperties,
        raw_properties: Option<Bytes>,
        body: Bytes,
        charge: MemoryCharge,
    ) -> Self {
        Message {
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
            _charge: charge,
        }
    }

    /// Bytes to charge to the memory monitor for a message of this body size.
    pub fn charge_size(body_len: usize) -> usize {
        body_len + MESSAGE_OVERHEAD
    }

    /// Delivery mode 2: the publisher asked for the message to survive a restart.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }
}
