//! Retained messages of one vhost, by topic: plain data, so the storage layer can persist it.

use super::session::OutboundMessage;
use std::collections::HashMap;
use std::time::SystemTime;
use switchboard_mqtt::topic::matches;

#[derive(Debug, Default)]
pub struct RetainedStore {
    by_topic: HashMap<String, OutboundMessage>,
}

impl RetainedStore {
    /// Stores `message` as the topic's retained message; an empty payload clears it.
    pub fn set(&mut self, message: OutboundMessage) {
        if message.payload.is_empty() {
            self.by_topic.remove(&message.topic);
        } else {
            self.by_topic.insert(message.topic.clone(), message);
        }
    }

    /// The unexpired retained messages matching `filter`, expired ones dropped on the way.
    pub fn matching(&mut self, filter: &str, now: SystemTime) -> Vec<OutboundMessage> {
        self.by_topic.retain(|_, m| !m.is_expired(now));
        let mut found: Vec<OutboundMessage> = self
            .by_topic
            .values()
            .filter(|m| matches(filter, &m.topic))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.topic.cmp(&b.topic));
        found
    }

    /// Every retained message (for persistence), in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &OutboundMessage> {
        self.by_topic.values()
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::memory::MemoryCharge;
    use bytes::Bytes;
    use std::time::Duration;
    use switchboard_mqtt::{Properties, QoS};

    fn msg(topic: &str, payload: &'static [u8], expires_at: Option<SystemTime>) -> OutboundMessage {
        OutboundMessage {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
            expires_at,
            charge: MemoryCharge::default(),
            delivery: None,
        }
    }

    #[test]
    fn set_match_clear_and_expire() {
        let now = SystemTime::now();
        let mut s = RetainedStore::default();
        s.set(msg("a/b", b"1", None));
        s.set(msg("a/c", b"2", Some(now - Duration::from_secs(1))));
        s.set(msg("$SYS/x", b"3", None));
        let got = s.matching("a/#", now);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"1");
        assert!(s.matching("#", now).iter().all(|m| m.topic != "$SYS/x"));
        assert_eq!(s.matching("$SYS/+", now).len(), 1);
        s.set(msg("a/b", b"", None));
        assert!(s.matching("a/b", now).is_empty());
        assert_eq!(s.len(), 1);
    }
}
