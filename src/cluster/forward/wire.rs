//! What nodes send each other to reach a queue held on another node: the requests of a node
//! that holds a proxy, the answers of the node holding the queue. Bodies and property blocks
//! travel as bytes ([`crate::cluster::wire_bytes`]).

use crate::core::memory::MemoryCharge;
use crate::core::Message;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use switchboard_amqp::BasicProperties;

/// A message on its way between nodes: as the message log stores one (exchange, routing
/// key, the AMQP property block, the body).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMessage {
    pub exchange: String,
    pub routing_key: String,
    #[serde(with = "crate::cluster::wire_bytes")]
    pub properties: Vec<u8>,
    #[serde(with = "crate::cluster::wire_bytes")]
    pub body: Vec<u8>,
}

impl WireMessage {
    pub fn of(m: &Message) -> Self {
        let properties = match &m.raw_properties {
            Some(raw) => raw.to_vec(),
            None => {
                let mut b = BytesMut::with_capacity(m.properties().encoded_len());
                m.properties().encode(&mut b);
                b.to_vec()
            }
        };
        WireMessage {
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.clone(),
            properties,
            body: m.body.to_vec(),
        }
    }

    /// The message again, its memory charged with `charge` (given the size to charge).
    pub fn into_message(
        self,
        charge: impl FnOnce(usize) -> MemoryCharge,
    ) -> Result<Message, String> {
        let props = BasicProperties::decode(&self.properties).map_err(|e| e.to_string())?;
        let charge = charge(Message::charge_size(self.body.len()));
        Ok(Message::new(
            self.exchange,
            self.routing_key,
            props,
            Some(Bytes::from(self.properties)),
            Bytes::from(self.body),
            charge,
        ))
    }
}

/// The node a request comes from, and its incarnation: a node started again is a new
/// session, and the old one's deliveries are requeued when its lease runs out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: u64,
    pub node: String,
}

/// One message for a queue held on the node asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    pub vhost: String,
    pub queue: String,
    pub message: WireMessage,
}

/// What settling deliveries does with them on the home node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum How {
    Ack,
    Reject,
    Requeue,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Call {
    /// Enqueue these, in order; answered once those that are persistent are durable.
    Publish(Vec<Publish>),
    /// Register a consumer for the proxy's consumer `consumer` (the asking node's id).
    Consume {
        session: Session,
        vhost: String,
        queue: String,
        consumer: u64,
        tag: String,
        no_ack: bool,
        exclusive: bool,
        priority: i32,
        /// How many deliveries may be on their way to the asking node at once.
        window: u32,
    },
    Cancel {
        session: u64,
        consumer: u64,
    },
    Get {
        session: Session,
        vhost: String,
        queue: String,
        no_ack: bool,
    },
    Settle {
        session: u64,
        vhost: String,
        queue: String,
        how: How,
        ids: Vec<u64>,
    },
    /// Deliveries waiting for the session's consumers, after returning `credits` (per
    /// consumer: deliveries handed on since the last fetch); waits up to `wait_ms` for one.
    /// Also the session's lease: a session not fetching for the lease is closed.
    /// `received` is the number of the last answer that arrived (0: none): an answer lost
    /// on the way is sent again, so no delivery is stranded on the home node.
    Fetch {
        session: u64,
        credits: Vec<(u64, u32)>,
        wait_ms: u64,
        received: u64,
    },
    Purge {
        vhost: String,
        queue: String,
    },
    Stats {
        vhost: String,
        queue: String,
    },
}

/// A delivery to one of the session's consumers (`consumer` is the asking node's id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireDelivery {
    pub consumer: u64,
    pub vhost: String,
    pub queue: String,
    pub id: u64,
    pub redelivered: bool,
    pub message: WireMessage,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct WireStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub ready_bytes: u64,
}

/// Why a consumer was refused, as the core says it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Refusal {
    ExclusiveConsumerPresent,
    QueueInUse,
    Deleted,
    /// A quorum queue this node does not lead (the leader it knows of).
    NotLeader(Option<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Per message of a [`Call::Publish`]: taken (durable when persistent).
    Published(Vec<bool>),
    Consumed(Result<(), Refusal>),
    /// A [`Call::Get`]'s message with the count left ready.
    Got(Option<(WireDelivery, u32)>),
    /// A [`Call::Fetch`]'s answer: deliveries, and the session's consumers this node
    /// cancelled since the last fetch (their quorum queue's lead moved away, or the queue
    /// was deleted), which the asking node cancels for its clients.
    /// `batch` numbers it; the same number again is an answer sent once more.
    Fetched {
        batch: u64,
        deliveries: Vec<WireDelivery>,
        cancelled: Vec<u64>,
    },
    /// The session is not known here (this node restarted, or its lease ran out).
    UnknownSession,
    Purged(u32),
    Stats(Option<WireStats>),
    Done,
    /// The node does not forward (not started yet).
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_with_every_byte_value() {
        let body: Vec<u8> = (0..=255u8).collect();
        let props = BasicProperties {
            delivery_mode: Some(2),
            content_type: Some("application/octet-stream".into()),
            ..BasicProperties::default()
        };
        let m = Message::new(
            "ex".into(),
            "rk".into(),
            props,
            None,
            Bytes::from(body.clone()),
            MemoryCharge::default(),
        );
        let wire = WireMessage::of(&m);
        let json = serde_json::to_vec(&Call::Publish(vec![Publish {
            vhost: "/".into(),
            queue: "q".into(),
            message: wire,
        }]))
        .unwrap();
        // Base64, not a JSON array of numbers: well under twice the body.
        assert!(json.len() < 2 * body.len(), "{} bytes", json.len());
        let Call::Publish(mut batch) = serde_json::from_slice(&json).unwrap() else {
            panic!("not a publish");
        };
        let back = batch
            .remove(0)
            .message
            .into_message(|_| MemoryCharge::default())
            .unwrap();
        assert_eq!(&back.body[..], &body[..]);
        assert_eq!(back.exchange, "ex");
        assert_eq!(back.routing_key, "rk");
        assert!(back.is_persistent());
        assert_eq!(
            back.properties().content_type.as_deref(),
            Some("application/octet-stream")
        );
    }
}
