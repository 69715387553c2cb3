//! Clustered, a persistent session's record (with its QoS 2 state, see
//! [`MqttQos2State`](crate::cluster::adapter::MqttQos2State)) is written to the cluster as
//! well as to this node's store, so that a client that comes back on another node finds its
//! packet ids there: a resent PUBLISH is not routed twice, a message in flight keeps its id,
//! PUBREL is sent again. Without it a client moving nodes could get a QoS 2 message twice, or
//! lose one whose id its node still held.
//!
//! One writer per connection commits the session's latest record, one commit at a time, in
//! the order the connection wrote them; records written while a commit is out go together in
//! the next one (the latest is all that counts). Each write gives a [`Ticket`], decided when
//! the record holding it is committed: the acknowledgement that depends on it (PUBREC, PUBREL,
//! PUBCOMP) waits for it, as it waits for the local store.
//!
//! A commit is made only while the cluster's client-id record names this connection: a
//! connection closed by a takeover on another node cannot overwrite what the new one holds.
//! One the cluster does not confirm (a minority) fails the writer, and the connection closes
//! rather than acknowledge state another node would not have.

use super::registry::SessionKey;
use crate::adapter::outbox::Outbox;
use crate::cluster::adapter::{MqttClientRecord, MqttSessionRecord};
use crate::cluster::definitions;
use crate::core::queue::Ticket;
use crate::core::Broker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::Notify;

/// The records written and not yet taken by the writer's task.
#[derive(Default)]
struct Pending {
    record: Option<MqttSessionRecord>,
    tickets: Vec<Ticket>,
    /// A commit is out (taken and not yet decided).
    busy: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Rung for the task when a record is written or the writer goes; for
    /// [`StateWriter::flush`] when a commit is decided.
    wake: Notify,
    decided: Notify,
    failed: AtomicBool,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Commits a connection's session records to the cluster (see the module's comment).
pub(super) struct StateWriter {
    shared: Arc<Shared>,
}

impl StateWriter {
    /// A writer for connection `conn` of this node holding `key`; None on a broker that is not
    /// clustered. `outbox` is woken when a commit fails, so the connection closes.
    pub(super) fn start(
        broker: &Arc<Broker>,
        key: &SessionKey,
        conn: u64,
        outbox: &Arc<Outbox>,
    ) -> Option<Self> {
        let cluster = broker.cluster.get()?;
        let holder = MqttClientRecord {
            vhost: key.vhost.clone(),
            client_id: key.client_id.clone(),
            node: cluster.node().name,
            conn,
        };
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            decided: Notify::new(),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(run(
            Arc::downgrade(broker),
            shared.clone(),
            holder,
            Arc::downgrade(outbox),
        ));
        Some(StateWriter { shared })
    }

    /// Commits `record` (after every record written before it); the ticket is decided once
    /// the cluster has it, or once it never will.
    pub(super) fn write(&self, record: MqttSessionRecord) -> Ticket {
        let ticket = Ticket::pending();
        {
            let mut p = self.shared.lock();
            p.record = Some(record);
            p.tickets.push(ticket.clone());
        }
        self.shared.wake.notify_one();
        ticket
    }

    /// Whether the cluster did not confirm a record: what this connection acknowledges from
    /// now on might not be known to another node.
    pub(super) fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Resolves once every record written so far is decided.
    pub(super) async fn flush(&self) {
        loop {
            let decided = self.shared.decided.notified();
            tokio::pin!(decided);
            decided.as_mut().enable();
            {
                let p = self.shared.lock();
                if p.record.is_none() && !p.busy {
                    return;
                }
            }
            decided.await;
        }
    }
}

impl Drop for StateWriter {
    /// The task commits what is left, then ends.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

async fn run(
    broker: Weak<Broker>,
    shared: Arc<Shared>,
    holder: MqttClientRecord,
    outbox: Weak<Outbox>,
) {
    // What the last commit made the cluster hold: the same record again commits nothing.
    let mut last: Option<MqttSessionRecord> = None;
    loop {
        let taken = {
            let mut p = shared.lock();
            let record = p.record.take();
            p.busy = record.is_some();
            record.map(|r| (r, std::mem::take(&mut p.tickets)))
        };
        let Some((record, tickets)) = taken else {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            shared.wake.notified().await;
            continue;
        };
        let Some(b) = broker.upgrade() else {
            tickets.iter().for_each(Ticket::fail);
            shared.lock().busy = false;
            shared.decided.notify_waiters();
            return;
        };
        let outcome = if last.as_ref() == Some(&record) {
            Ok(())
        } else {
            definitions::commit_held_mqtt_session(&b, &holder, record.clone()).await
        };
        match outcome {
            Ok(()) => {
                last = Some(record);
                tickets.iter().for_each(Ticket::commit);
            }
            Err(e) => {
                last = None;
                if !shared.failed.swap(true, Ordering::AcqRel) {
                    tracing::info!(client = %holder.client_id, error = %e, "the cluster did not confirm an MQTT session's state; closing its connection");
                }
                tickets.iter().for_each(Ticket::fail);
                if let Some(outbox) = outbox.upgrade() {
                    outbox.wake();
                }
            }
        }
        shared.lock().busy = false;
        shared.decided.notify_waiters();
        // The acknowledgements held for these tickets wait for the log's signal.
        if let Some(store) = &b.store {
            store.log.nudge();
        }
    }
}
