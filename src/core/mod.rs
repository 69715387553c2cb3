//! The routing core: exchanges, bindings, queues and consumers. It knows no wire protocol;
//! adapters translate their frames into calls here.

pub mod access;
pub mod broker;
pub mod channel_info;
pub mod clock;
pub mod dead_letter;
pub mod delayed;
pub mod error;
pub mod exchange;
pub mod hash;
pub mod headers;
pub mod memory;
pub mod message;
pub mod policy;
pub mod process_memory;
pub mod queue;
pub mod sampler;
pub mod stats;
pub mod stored;
pub mod timer;
pub mod topic;
pub mod vhost;

pub use broker::Broker;
pub use error::{CoreError, CoreResult, ErrorKind};
pub use exchange::{Destination, Exchange, ExchangeKind};
pub use message::Message;
pub use queue::{
    ConnectionId, Consumer, ConsumerSink, Delivery, Enqueued, Queue, QueueEffects, QueueStore,
};
pub use vhost::{Publish, PublishOutcome, PublishTo, VHost};
