//! Retained messages of every vhost, by topic, with their own limit (count and bytes over all
//! vhosts) and each message charged to the memory monitor while it is kept: plain data, so the
//! storage layer can persist it.
//!
//! Nothing here runs on its own: the store is touched only by a retained publish, a subscribe
//! and the restore at start, so an idle broker spends no CPU on it however many it keeps.

use super::session::OutboundMessage;
use crate::core::memory::{MemoryCharge, MemoryMonitor};
use crate::core::message::string_heap_size;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use switchboard_mqtt::topic::matches;

/// Most retained messages kept, over all vhosts; 0 in a field means no limit of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// Why a retained message was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetainedFull {
    #[error("retained message limit reached: {0} messages kept (mqtt.retained_max_messages)")]
    Messages(usize),
    #[error("retained message limit reached: {0} bytes kept (mqtt.retained_max_bytes)")]
    Bytes(usize),
    /// Clustered: the cluster did not confirm the change (this node may be in a minority).
    #[error("retained message not stored: {0}")]
    Unavailable(String),
}

impl RetainedFull {
    /// The v5 reason code that refuses the publish: 0x97 Quota exceeded for a full store,
    /// 0x83 Implementation specific error when the cluster could not take it (a valid
    /// PUBLISH the server cannot accept now; 0x88 is for CONNACK only).
    pub fn reason(&self) -> u8 {
        match self {
            RetainedFull::Unavailable(_) => switchboard_mqtt::reason::IMPLEMENTATION_SPECIFIC_ERROR,
            _ => switchboard_mqtt::reason::QUOTA_EXCEEDED,
        }
    }
}

/// One kept message and the bytes it counts for.
#[derive(Debug)]
struct Kept {
    message: OutboundMessage,
    bytes: usize,
}

/// The topics of one vhost's retained messages as a tree of levels, so that a filter visits
/// only the topics it can match: a literal level follows one branch, `+` every branch of its
/// level, and `#` everything under its node (so `#` at the root visits every topic).
#[derive(Debug, Default)]
struct Levels {
    children: HashMap<Box<str>, Levels>,
    /// A retained message's topic ends here.
    topic: bool,
}

impl Levels {
    fn insert(&mut self, topic: &str) {
        let mut node = self;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.topic = true;
    }

    fn remove(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        Self::remove_at(self, &levels);
    }

    /// Whether the node is now empty (and can go).
    fn remove_at(node: &mut Levels, levels: &[&str]) -> bool {
        match levels.split_first() {
            None => node.topic = false,
            Some((level, rest)) => {
                if let Some(child) = node.children.get_mut(*level) {
                    if Self::remove_at(child, rest) {
                        node.children.remove(*level);
                    }
                }
            }
        }
        !node.topic && node.children.is_empty()
    }

    /// Calls `f` with every topic under `self` that `filter`'s levels may match (MQTT's
    /// matcher decides: this knows no `$` rule). `path` is the node's topic with a `/` before
    /// each level (the root's is empty).
    fn candidates(&self, filter: &[&str], path: &mut String, f: &mut impl FnMut(&str)) {
        let Some((level, rest)) = filter.split_first() else {
            if self.topic {
                f(path.get(1..).unwrap_or(""));
            }
            return;
        };
        match *level {
            "#" => self.all(path, f),
            "+" => {
                for (name, child) in &self.children {
                    child.descend(name, rest, path, f);
                }
            }
            literal => {
                if let Some(child) = self.children.get(literal) {
                    child.descend(literal, rest, path, f);
                }
            }
        }
    }

    fn descend(&self, name: &str, rest: &[&str], path: &mut String, f: &mut impl FnMut(&str)) {
        let len = path.len();
        path.push('/');
        path.push_str(name);
        self.candidates(rest, path, f);
        path.truncate(len);
    }

    /// Every topic at or under this node (`a/#` matches `a` too).
    fn all(&self, path: &mut String, f: &mut impl FnMut(&str)) {
        if self.topic {
            f(path.get(1..).unwrap_or(""));
        }
        for (name, child) in &self.children {
            let len = path.len();
            path.push('/');
            path.push_str(name);
            child.all(path, f);
            path.truncate(len);
        }
    }
}

/// One vhost's retained messages, by topic, and their topics by level.
#[derive(Debug, Default)]
struct VHostRetained {
    topics: HashMap<String, Kept>,
    levels: Levels,
}

#[derive(Debug)]
pub struct RetainedStore {
    by_vhost: HashMap<String, VHostRetained>,
    limits: RetainedLimits,
    memory: Option<Arc<MemoryMonitor>>,
    messages: usize,
    bytes: usize,
}

/// Bytes a retained message holds in the store: the message as a session would keep it, plus
/// its topic again as the map's key and the map's slot.
pub fn retained_footprint(m: &OutboundMessage) -> usize {
    m.footprint()
        + string_heap_size(m.topic())
        + std::mem::size_of::<(String, Kept)>()
        + std::mem::size_of::<u64>()
}

impl RetainedStore {
    /// An empty store with `limits`, charging what it keeps to `memory` (none: uncharged).
    pub fn new(limits: RetainedLimits, memory: Option<Arc<MemoryMonitor>>) -> Self {
        RetainedStore {
            by_vhost: HashMap::new(),
            limits,
            memory,
            messages: 0,
            bytes: 0,
        }
    }

    /// Makes `message` the topic's retained message in `vhost` (an empty payload clears it),
    /// unless that would take the store over its limits; replacing a topic's message counts
    /// only the difference, and a clear is always accepted. Expired messages are dropped first
    /// when the store is full. `record` is called with the accepted change while the store is
    /// still locked (so records keep the order of the changes); its result is returned.
    pub fn set(
        &mut self,
        vhost: &str,
        message: OutboundMessage,
        now: SystemTime,
        record: impl FnOnce(&OutboundMessage) -> u64,
    ) -> Result<u64, RetainedFull> {
        self.admits(vhost, &message, now)?;
        let lsn = record(&message);
        self.put(vhost, message);
        Ok(lsn)
    }

    /// Whether [`set`](Self::set) would take `message` (dropping expired messages to make
    /// room), without storing it: a clustered node checks here before proposing it.
    pub fn admits(
        &mut self,
        vhost: &str,
        message: &OutboundMessage,
        now: SystemTime,
    ) -> Result<(), RetainedFull> {
        if message.payload.is_empty() {
            return Ok(());
        }
        if let Err(full) = self.check(vhost, message) {
            self.drop_expired(now);
            self.check(vhost, message).map_err(|_| full)?;
        }
        Ok(())
    }

    /// Stores `message` whatever the limits (a restored message was acknowledged once).
    pub fn restore(&mut self, vhost: &str, message: OutboundMessage) {
        self.put(vhost, message);
    }

    fn check(&self, vhost: &str, message: &OutboundMessage) -> Result<(), RetainedFull> {
        let replaced = self
            .by_vhost
            .get(vhost)
            .and_then(|v| v.topics.get(message.topic()))
            .map(|k| k.bytes);
        let messages = self.messages + usize::from(replaced.is_none());
        let bytes = self.bytes - replaced.unwrap_or(0) + retained_footprint(message);
        let RetainedLimits {
            max_messages,
            max_bytes,
        } = self.limits;
        if max_messages > 0 && messages > max_messages {
            return Err(RetainedFull::Messages(self.messages));
        }
        if max_bytes > 0 && bytes > max_bytes {
            return Err(RetainedFull::Bytes(self.bytes));
        }
        Ok(())
    }

    fn put(&mut self, vhost: &str, mut message: OutboundMessage) {
        let v = self.by_vhost.entry(vhost.to_owned()).or_default();
        let old = if message.payload.is_empty() {
            let old = v.topics.remove(message.topic());
            if old.is_some() {
                v.levels.remove(message.topic());
            }
            old
        } else {
            let bytes = retained_footprint(&message);
            message.charge = match &self.memory {
                Some(m) => m.charge(bytes),
                None => MemoryCharge::default(),
            };
            self.messages += 1;
            self.bytes += bytes;
            if !v.topics.contains_key(message.topic()) {
                v.levels.insert(message.topic());
            }
            v.topics
                .insert(message.topic().to_owned(), Kept { message, bytes })
        };
        if let Some(old) = old {
            self.messages -= 1;
            self.bytes -= old.bytes;
        }
        if v.topics.is_empty() {
            self.by_vhost.remove(vhost);
        }
    }

    /// Drops the expired messages of every vhost (only when the store is full: a scan).
    fn drop_expired(&mut self, now: SystemTime) {
        for v in self.by_vhost.values_mut() {
            let mut gone = Vec::new();
            v.topics.retain(|topic, k| {
                let keep = !k.message.is_expired(now);
                if !keep {
                    self.messages -= 1;
                    self.bytes -= k.bytes;
                    gone.push(topic.clone());
                }
                keep
            });
            for topic in gone {
                v.levels.remove(&topic);
            }
        }
        self.by_vhost.retain(|_, v| !v.topics.is_empty());
    }

    /// The unexpired retained messages of `vhost` matching `filter`, by topic, expired ones
    /// dropped on the way. Each copy is charged again while the subscriber's session keeps it.
    ///
    /// Only the topics the filter's levels lead to are visited (see [`Levels`]): a filter
    /// costs what its candidate topics cost, except that `#` at the root visits them all.
    pub fn matching(&mut self, vhost: &str, filter: &str, now: SystemTime) -> Vec<OutboundMessage> {
        let Some(v) = self.by_vhost.get_mut(vhost) else {
            return Vec::new();
        };
        let levels: Vec<&str> = filter.split('/').collect();
        let mut candidates: Vec<String> = Vec::new();
        v.levels
            .candidates(&levels, &mut String::new(), &mut |topic| {
                if matches(filter, topic) {
                    candidates.push(topic.to_owned());
                }
            });
        let mut found = Vec::new();
        for topic in candidates {
            let expired = match v.topics.get(&topic) {
                Some(k) if k.message.is_expired(now) => true,
                Some(k) => {
                    found.push(k.message.clone());
                    false
                }
                None => false,
            };
            if expired {
                if let Some(k) = v.topics.remove(&topic) {
                    self.messages -= 1;
                    self.bytes -= k.bytes;
                }
                v.levels.remove(&topic);
            }
        }
        if v.topics.is_empty() {
            self.by_vhost.remove(vhost);
        }
        found.sort_by(|a, b| a.topic().cmp(b.topic()));
        found
    }

    /// Retained messages kept, over all vhosts.
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Bytes the kept messages count for (what is charged to the memory monitor).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;
    use switchboard_mqtt::{Properties, QoS};

    fn msg(topic: &str, payload: &'static [u8], expires_at: Option<SystemTime>) -> OutboundMessage {
        OutboundMessage::new(
            topic.into(),
            Bytes::from_static(payload),
            QoS::AtLeastOnce,
            true,
            Properties::default(),
            expires_at,
        )
    }

    const NO_LIMITS: RetainedLimits = RetainedLimits {
        max_messages: 0,
        max_bytes: 0,
    };

    fn set(s: &mut RetainedStore, vhost: &str, m: OutboundMessage) -> Result<u64, RetainedFull> {
        s.set(vhost, m, SystemTime::now(), |_| 7)
    }

    #[test]
    fn set_match_clear_and_expire() {
        let now = SystemTime::now();
        let mut s = RetainedStore::new(NO_LIMITS, None);
        set(&mut s, "/", msg("a/b", b"1", None)).expect("stored");
        set(
            &mut s,
            "/",
            msg("a/c", b"2", Some(now - Duration::from_secs(1))),
        )
        .expect("stored");
        set(&mut s, "/", msg("$SYS/x", b"3", None)).expect("stored");
        set(&mut s, "other", msg("a/b", b"4", None)).expect("stored");
        let got = s.matching("/", "a/#", now);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"1");
        assert!(s
            .matching("/", "#", now)
            .iter()
            .all(|m| m.topic() != "$SYS/x"));
        assert_eq!(s.matching("/", "$SYS/+", now).len(), 1);
        set(&mut s, "/", msg("a/b", b"", None)).expect("a clear");
        assert!(s.matching("/", "a/b", now).is_empty());
        assert_eq!(s.len(), 2, "$SYS/x in / and a/b in other");
        assert_eq!(&s.matching("other", "a/b", now)[0].payload[..], b"4");
    }

    #[test]
    fn the_level_index_finds_what_a_scan_finds() {
        let now = SystemTime::now();
        let mut s = RetainedStore::new(NO_LIMITS, None);
        let topics = [
            "a", "a/b", "a/b/c", "a//b", "/a", "/", "a/", "$SYS/x", "b/a", "a/x/b", "x",
        ];
        for t in topics {
            set(&mut s, "/", msg(t, b"1", None)).expect("stored");
        }
        let filters = [
            "#", "+", "a/#", "a/+", "+/+", "/#", "+/b", "a/+/b", "$SYS/#", "+/#", "a//b", "/",
            "a/", "a/b/c/#", "nope/#", "+/+/+",
        ];
        for f in filters {
            let got: Vec<String> = s
                .matching("/", f, now)
                .into_iter()
                .map(|m| m.topic().to_owned())
                .collect();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|t| matches(f, t))
                .map(|t| (*t).to_owned())
                .collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
        set(&mut s, "/", msg("a/b", b"", None)).expect("a clear");
        let left: Vec<String> = s
            .matching("/", "a/#", now)
            .into_iter()
            .map(|m| m.topic().to_owned())
            .collect();
        assert_eq!(left, vec!["a", "a/", "a//b", "a/b/c", "a/x/b"]);
    }

    #[test]
    fn count_limit_refuses_new_topics_but_not_replacements_or_clears() {
        let mut s = RetainedStore::new(
            RetainedLimits {
                max_messages: 2,
                max_bytes: 0,
            },
            None,
        );
        set(&mut s, "/", msg("a", b"1", None)).expect("first");
        set(&mut s, "v", msg("b", b"2", None)).expect("second, other vhost");
        assert_eq!(
            set(&mut s, "/", msg("c", b"3", None)),
            Err(RetainedFull::Messages(2)),
            "the limit is over all vhosts"
        );
        let mut written = false;
        let refused = s.set("/", msg("c", b"3", None), SystemTime::now(), |_| {
            written = true;
            0
        });
        assert!(
            refused.is_err() && !written,
            "a refused change writes no record"
        );
        assert_eq!(set(&mut s, "/", msg("a", b"new", None)), Ok(7), "replacing");
        set(&mut s, "/", msg("a", b"", None)).expect("clearing");
        set(&mut s, "/", msg("c", b"3", None)).expect("room again");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn byte_limit_counts_footprints_and_expired_messages_make_room() {
        let now = SystemTime::now();
        let one = retained_footprint(&msg("t/1", b"xxxx", None));
        let mut s = RetainedStore::new(
            RetainedLimits {
                max_messages: 0,
                max_bytes: 2 * one,
            },
            None,
        );
        set(&mut s, "/", msg("t/1", b"xxxx", None)).expect("first");
        set(
            &mut s,
            "/",
            msg("t/2", b"xxxx", Some(now - Duration::from_secs(1))),
        )
        .expect("second");
        assert_eq!(s.bytes(), 2 * one);
        set(&mut s, "/", msg("t/3", b"xxxx", None)).expect("the expired one made room");
        assert_eq!((s.len(), s.bytes()), (2, 2 * one));
        assert_eq!(
            set(&mut s, "/", msg("t/1", b"xxxxx", None)),
            Err(RetainedFull::Bytes(2 * one)),
            "a bigger replacement is over by one byte"
        );
    }

    #[test]
    fn kept_messages_are_charged_until_cleared() {
        let memory = MemoryMonitor::new(0);
        let mut s = RetainedStore::new(NO_LIMITS, Some(memory.clone()));
        let m = msg("a", b"12345678", None);
        let bytes = retained_footprint(&m);
        set(&mut s, "/", m).expect("stored");
        assert_eq!(memory.used(), bytes);
        let copies = s.matching("/", "#", SystemTime::now());
        assert_eq!(
            memory.used(),
            2 * bytes,
            "a subscriber's copy is charged too"
        );
        drop(copies);
        set(&mut s, "/", msg("a", b"", None)).expect("cleared");
        assert_eq!(memory.used(), 0);
        s.restore("/", msg("b", b"1", None));
        assert!(memory.used() > 0, "a restored message is charged");
    }
}
