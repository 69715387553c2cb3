//! Connection limits shared by every listener: a cap on connections in all, and on connections
//! from one source address, so that no peer can use up the process's file descriptors (2,100
//! idle HTTP connections under an fd limit of 2,048 once stopped every protocol from accepting).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections open, the limit (server.max_connections)")]
    Total(usize),
    #[error(
        "{0} connections open from this address, the limit (server.max_connections_per_address)"
    )]
    Address(usize),
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
}

/// An admitted connection: counted until dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

impl ConnectionLimits {
    /// `max_total` 0: derived from the file descriptor limit (see [`auto_max_connections`]).
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        let max_total = if max_total == 0 {
            auto_max_connections()
        } else {
            max_total
        };
        Arc::new(ConnectionLimits {
            max_total,
            max_per_address,
            open: Mutex::new(Open::default()),
        })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection from `address`, or refuses it when a limit is reached.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, Refused> {
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err(Refused::Total(open.total));
        }
        let from_address = open.by_address.get(&address).copied().unwrap_or(0);
        if self.max_per_address != 0 && from_address >= self.max_per_address {
            return Err(Refused::Address(from_address));
        }
        open.total += 1;
        *open.by_address.entry(address).or_insert(0) += 1;
        Ok(Admitted {
            limits: self.clone(),
            address,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// The default cap on connections: the soft file descriptor limit less a reserve (a tenth, at
/// least 64) for the message store's files, the listeners and the HTTP API's own work.
pub fn auto_max_connections() -> usize {
    let soft = match crate::sys::open_file_limit() {
        Some((soft, _)) => usize::try_from(soft).unwrap_or(usize::MAX),
        None => 1 << 20,
    };
    let reserve = (soft / 10).max(64);
    soft.saturating_sub(reserve).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_address_and_releases_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refused::Address(2));
        let b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Total(3));
        drop(b1);
        let _b1 = limits.admit(b).unwrap();
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.admit(a).unwrap();
    }

    #[test]
    fn the_automatic_cap_leaves_descriptors_spare() {
        let n = auto_max_connections();
        assert!(n >= 1);
        if let Some((soft, _)) = crate::sys::open_file_limit() {
            if soft > 64 {
                assert!((n as u64) < soft);
            }
        }
    }
}
