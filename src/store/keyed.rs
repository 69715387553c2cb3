//! Keyed durable state in the log: everything that is not a message (definitions, users and
//! permissions, MQTT sessions, retained messages) is a value under a `(kind, key)`. The latest
//! put of a key is its value; a delete removes it. Values are opaque bytes here: each owner
//! encodes its own, so the store knows no broker types.
//!
//! The log keeps an index of where each key's current record lies. A put or delete makes the
//! record it replaces dead, so the segment holding it can go once nothing else in it is live,
//! and compaction can move a key's current record out of an old segment.

use super::log::RecordPos;
use bytes::Bytes;
use std::collections::HashMap;

/// Namespaces of keyed state. The numbers are on disk: never reuse one.
pub mod kind {
    pub const VHOST: u8 = 1;
    pub const EXCHANGE: u8 = 2;
    pub const QUEUE: u8 = 3;
    pub const BINDING: u8 = 4;
    pub const POLICY: u8 = 5;
    pub const USER: u8 = 6;
    pub const PERMISSION: u8 = 7;
    pub const TOPIC_PERMISSION: u8 = 8;
    pub const MQTT_SESSION: u8 = 9;
    pub const RETAINED: u8 = 10;
    /// When a durable queue with `x-expires` became unused (key: its log id; value: u64
    /// big-endian ms since the Unix epoch).
    pub const QUEUE_IDLE: u8 = 11;
    /// One subscription of a persistent MQTT session (key: vhost, client id, filter), kept
    /// beside the session's record so that a SUBSCRIBE writes only the filters it names.
    pub const MQTT_SUBSCRIPTION: u8 = 12;
}

/// A key made of several fields (a vhost and a queue name, say): each field as a 16-bit
/// big-endian length and its bytes, so no two field lists give the same key. Every owner of
/// keyed state composes its keys with this.
pub fn compose_key(fields: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(fields.iter().map(|f| 2 + f.len()).sum());
    for f in fields {
        let f = &f[..f.len().min(usize::from(u16::MAX))];
        k.extend_from_slice(&(f.len() as u16).to_be_bytes());
        k.extend_from_slice(f);
    }
    k
}

/// The fields of a key made by [`compose_key`]; `None` when it is not one.
pub fn split_key(mut key: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !key.is_empty() {
        let n = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
        let field = key.get(2..2 + n)?;
        fields.push(field);
        key = &key[2 + n..];
    }
    Some(fields)
}

/// A key as indexed: its kind byte, then the key's bytes.
pub(crate) fn index_key(kind: u8, key: &[u8]) -> Box<[u8]> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(kind);
    k.extend_from_slice(key);
    k.into_boxed_slice()
}

/// A key's current value as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredValue {
    pub at: RecordPos,
    pub value: Bytes,
}

/// Every key's current value after recovery, by kind and then key.
#[derive(Debug, Default)]
pub struct RecoveredKeyed {
    by_kind: HashMap<u8, HashMap<Box<[u8]>, RecoveredValue>>,
}

impl RecoveredKeyed {
    pub(crate) fn put(&mut self, kind: u8, key: &[u8], value: RecoveredValue) {
        self.by_kind
            .entry(kind)
            .or_default()
            .insert(key.into(), value);
    }

    pub(crate) fn delete(&mut self, kind: u8, key: &[u8]) {
        if let Some(m) = self.by_kind.get_mut(&kind) {
            m.remove(key);
        }
    }

    /// The current values of `kind`, in no particular order.
    pub fn of_kind(&self, kind: u8) -> impl Iterator<Item = (&[u8], &Bytes)> {
        self.by_kind
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (&k[..], &v.value)))
    }

    /// The current value of one key.
    pub fn get(&self, kind: u8, key: &[u8]) -> Option<&Bytes> {
        self.by_kind.get(&kind)?.get(key).map(|v| &v.value)
    }

    /// Every current record's position, as the log's index.
    pub(crate) fn index(&self) -> HashMap<Box<[u8]>, RecordPos> {
        self.by_kind
            .iter()
            .flat_map(|(kind, m)| m.iter().map(|(k, v)| (index_key(*kind, k), v.at)))
            .collect()
    }

    /// Every current record's position.
    pub(crate) fn positions(&self) -> impl Iterator<Item = RecordPos> + '_ {
        self.by_kind.values().flat_map(|m| m.values().map(|v| v.at))
    }
}

#[cfg(test)]
mod tests {
    use super::kind;
    use crate::store::log::MessageLog;
    use crate::store::recovery::recover;
    use crate::store::FsyncPolicy;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "switchboard-keyed-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn reopen(dir: &Path, segment_bytes: u64) -> (Arc<MessageLog>, super::RecoveredKeyed) {
        let mut rec = recover(dir).expect("recover");
        let live = rec.retain_queues(|_| true);
        let index = rec.keyed.index();
        let log = MessageLog::start(
            dir.to_owned(),
            segment_bytes,
            FsyncPolicy::Always,
            live,
            index,
        )
        .expect("start");
        (log, rec.keyed)
    }

    async fn close(log: &MessageLog) {
        let lsn = log.last_lsn();
        log.wait_synced(lsn).await;
        log.stop();
    }

    fn sorted(keyed: &super::RecoveredKeyed, k: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v: Vec<_> = keyed
            .of_kind(k)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn composed_keys_split_back_and_do_not_collide() {
        use super::{compose_key, split_key};
        let a = compose_key(&[b"a/b", b"c"]);
        let b = compose_key(&[b"a", b"/bc"]);
        assert_ne!(a, b);
        assert_eq!(split_key(&a), Some(vec![&b"a/b"[..], b"c"]));
        assert_eq!(
            split_key(&compose_key(&[b"", b"x"])),
            Some(vec![&b""[..], b"x"])
        );
        assert_eq!(split_key(&[0, 5, b'a']), None);
    }

    #[tokio::test]
    async fn puts_and_deletes_survive_a_restart() {
        let dir = tempdir("restart");
        let (log, keyed) = reopen(&dir, 1 << 20);
        assert_eq!(keyed.of_kind(kind::QUEUE).count(), 0);
        log.put(kind::QUEUE, b"a", b"1");
        log.put(kind::QUEUE, b"a", b"2");
        log.put(kind::QUEUE, b"b", b"x");
        log.put(kind::USER, b"a", b"user");
        log.delete(kind::QUEUE, b"b");
        log.delete(kind::QUEUE, b"never there");
        close(&log).await;

        let (log, keyed) = reopen(&dir, 1 << 20);
        assert_eq!(
            sorted(&keyed, kind::QUEUE),
            [(b"a".to_vec(), b"2".to_vec())]
        );
        assert_eq!(
            sorted(&keyed, kind::USER),
            [(b"a".to_vec(), b"user".to_vec())]
        );
        // The recovered index is live: a delete after the restart sticks.
        log.delete(kind::QUEUE, b"a");
        close(&log).await;
        let (log, keyed) = reopen(&dir, 1 << 20);
        assert!(sorted(&keyed, kind::QUEUE).is_empty());
        close(&log).await;
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn superseded_segments_are_deleted_and_compaction_moves_current_values() {
        let dir = tempdir("compact");
        let (log, _) = reopen(&dir, 1024);
        let value = [7u8; 200];
        // Fill several segments with a few keys rewritten over and over, plus one key written
        // once at the start that would pin the head segment.
        log.put(kind::VHOST, b"pinned", b"keep me");
        for round in 0..40u8 {
            for key in [&b"k1"[..], b"k2"] {
                let mut v = value.to_vec();
                v.push(round);
                log.put(kind::EXCHANGE, key, &v);
            }
        }
        let lsn = log.last_lsn();
        log.wait_synced(lsn).await;
        let head = log.segments()[0].0;
        assert!(log.segments().len() > 3, "{:?}", log.segments());
        assert_eq!(
            log.relocate_keyed(head),
            1,
            "only the pinned key lives in the head"
        );
        // One more write lets the writer delete the dead head segments; it does so after
        // reporting the write durable, so a second write's round ends after the deletion.
        log.put(kind::EXCHANGE, b"k1", b"last");
        let lsn = log.last_lsn();
        log.wait_synced(lsn).await;
        log.put(kind::EXCHANGE, b"k2", &[value.as_slice(), &[39]].concat());
        let lsn = log.last_lsn();
        log.wait_synced(lsn).await;
        let segments: Vec<u64> = log.segments().iter().map(|s| s.0).collect();
        assert!(!segments.contains(&head), "{segments:?}");
        close(&log).await;

        let (log, keyed) = reopen(&dir, 1024);
        assert_eq!(
            keyed.get(kind::VHOST, b"pinned").map(|v| &v[..]),
            Some(&b"keep me"[..])
        );
        assert_eq!(
            keyed.get(kind::EXCHANGE, b"k1").map(|v| &v[..]),
            Some(&b"last"[..])
        );
        let k2 = keyed.get(kind::EXCHANGE, b"k2").expect("k2");
        assert_eq!(k2.last(), Some(&39));
        close(&log).await;
        std::fs::remove_dir_all(&dir).ok();
    }
}
