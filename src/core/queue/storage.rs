//! A durable queue's side of the message log: reading paged-out messages back, settle
//! records, recovery at start and relocation for compaction.

use super::ready::Queued;
use super::{footprint, Queue, RecoveredEntry};
use crate::core::memory::MemoryCharge;
use crate::core::message::Message;
use crate::store::log::RecordPos;
use crate::store::record::{self, Entry, Record, Scan};
use crate::store::MessageLog;
use std::sync::Arc;
use switchboard_amqp::BasicProperties;

/// Reads a message back from its enqueue record at `pos` (or the one the reference record at
/// `pos` points at), charging its memory with `charge`.
pub fn read_back(
    log: &MessageLog,
    pos: RecordPos,
    charge: impl FnOnce(usize) -> MemoryCharge,
) -> Result<Message, String> {
    let mut data = log.read(pos).map_err(|e| e.to_string())?;
    if let Scan::Record(Record::Reference { body, .. }, _) = record::scan(&data, 0) {
        data = log.read(body).map_err(|e| e.to_string())?;
    }
    match record::scan(&data, 0) {
        Scan::Record(
            Record::Enqueue {
                exchange,
                routing_key,
                properties,
                body,
                ..
            },
            _,
        ) => {
            let props = BasicProperties::decode(&properties).map_err(|e| e.to_string())?;
            let charge = charge(Message::charge_size(body.len()));
            Ok(Message::new(
                exchange,
                routing_key,
                props,
                Some(properties),
                body,
                charge,
            ))
        }
        other => Err(format!("not an enqueue record: {other:?}")),
    }
}

impl Queue {
    /// The message of a ready entry, read back from the log if it was paged out. None if the
    /// record cannot be read (then the entry is settled and dropped: it could not be recovered
    /// either).
    pub(super) fn load(&self, q: &Queued) -> Option<Arc<Message>> {
        if let Some(m) = &q.message {
            return Some(m.clone());
        }
        let (store, pos) = (self.store.as_ref()?, q.stored?);
        let read = read_back(&store.log, pos, |size| store.memory.charge(size)).map(Arc::new);
        match read {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(queue = %self.name, segment = pos.segment, offset = pos.offset, "cannot read a paged-out message back; dropping it: {e}");
                self.log_settled(&[(q.id, pos)]);
                None
            }
        }
    }

    /// Records in the log that these persisted entries left the queue for good.
    pub(super) fn log_settled(&self, settled: &[(u64, RecordPos)]) {
        if let (Some(store), false) = (&self.store, settled.is_empty()) {
            store.log.append_settle(store.id, settled);
        }
    }

    /// Loads messages recovered from the log (in sequence order), marked redelivered: they may
    /// have been delivered before the restart. A message keeps the expiry its record holds, so
    /// its TTL counts from when it was enqueued; what expired while the broker was down leaves
    /// (dead-lettered or dropped) when the timer first runs, never delivered. A record without
    /// an expiry (no TTL when it was written, or written by an earlier release) gets one
    /// counted from `now` (the broker's clock) if a TTL applies to it now.
    pub fn recover(self: &Arc<Self>, entries: Vec<RecoveredEntry>, max_seq: u64, now: u64) {
        let mut st = self.lock();
        for e in entries {
            st.ready_bytes += e.body_len;
            if e.message.is_some() {
                st.memory_bytes += footprint(e.body_len);
            }
            let level = st.args().level_of(e.priority);
            let expires_at = e
                .expires_at
                .or_else(|| Self::expiry_of(&st, e.expiration.as_deref(), now));
            st.ready.push_back(Queued {
                id: e.seq,
                message: e.message,
                body_len: e.body_len,
                redelivered: true,
                stored: Some(e.at),
                level,
                expires_at,
            });
        }
        st.next_id = st.next_id.max(max_seq + 1);
    }
    /// Rewrites the enqueue records this queue still holds in log segment `segment` at the end
    /// of the log, so the segment (and the settled ones behind it) can be deleted. Returns how
    /// many were moved.
    pub fn relocate(&self, segment: u64) -> usize {
        let Some(store) = &self.store else {
            return 0;
        };
        let sharing = store.log.references_into(segment);
        let mut st = self.lock();
        let st = &mut *st;
        let mut moved = Vec::new();
        for q in st.ready.iter_mut().chain(st.unacked.values_mut()) {
            let in_segment = |p: &RecordPos| p.segment == segment || sharing.contains(p);
            let Some(old) = q.stored.filter(in_segment) else {
                continue;
            };
            let Some(message) = self.load(q) else {
                continue;
            };
            // Whole: a reference would point back into the segment being emptied.
            let entry = Entry {
                expires: q.expires_at,
                ..Entry::new(store.id, q.id)
            };
            let a = crate::core::stored::append_whole_message(&store.log, entry, &message);
            q.stored = Some(a.at);
            moved.push(old);
        }
        let n = moved.len();
        store.log.forget(moved);
        n
    }
}
