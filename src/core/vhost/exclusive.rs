//! Exclusive queues: ownership checks and the index by owning connection.

use super::*;

impl VHost {
    /// Looks a queue up for use by `conn`: 404 if missing, 405 if another connection owns it.
    pub fn queue_for(&self, name: &str, conn: ConnectionId) -> CoreResult<Arc<Queue>> {
        let q = self
            .queue(name)
            .ok_or_else(|| CoreError::not_found("queue", name, &self.name))?;
        self.check_exclusive(&q, conn)?;
        Ok(q)
    }

    pub(super) fn check_exclusive(&self, q: &Queue, conn: ConnectionId) -> CoreResult<()> {
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked(&q.name)),
            _ => Ok(()),
        }
    }

    pub(super) fn locked(&self, name: &str) -> CoreError {
        CoreError::new(
            ErrorKind::ResourceLocked,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could \
                 be originally declared on another connection or the exclusive property value \
                 does not match that of the original declaration.",
                self.name
            ),
        )
    }

    pub(super) fn exclusive_index(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Vec<Arc<Queue>>>> {
        self.exclusive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an exclusive queue under its owner, for [`connection_closed`](Self::connection_closed).
    pub(super) fn note_exclusive(&self, q: &Arc<Queue>) {
        if let Some(owner) = q.exclusive_owner {
            self.exclusive_index()
                .entry(owner)
                .or_default()
                .push(q.clone());
        }
    }

    pub(super) fn forget_exclusive(&self, q: &Arc<Queue>) {
        let Some(owner) = q.exclusive_owner else {
            return;
        };
        let mut index = self.exclusive_index();
        if let Some(owned) = index.get_mut(&owner) {
            owned.retain(|o| !Arc::ptr_eq(o, q));
            if owned.is_empty() {
                index.remove(&owner);
            }
        }
    }

    /// Deletes the exclusive queues of a connection that closed.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let owned = self.exclusive_index().remove(&conn).unwrap_or_default();
        for q in owned {
            self.remove_queue(&q);
        }
    }
}
