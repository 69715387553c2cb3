//! The broker: vhosts, users, the memory monitor and the registry of live connections. Shared
//! by every protocol adapter and the admin API.

use super::auth::Users;
use super::memory::MemoryMonitor;
use super::queue::ConnectionId;
use super::vhost::VHost;
use crate::config::Config;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// A live client connection, as listed by `ctl list_connections`.
#[derive(Debug)]
pub struct ConnectionEntry {
    pub id: ConnectionId,
    pub protocol: &'static str,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    pub channels: AtomicU32,
    /// (user, vhost) once authenticated and opened.
    pub session: Mutex<Option<(String, String)>>,
}

impl ConnectionEntry {
    pub fn name(&self) -> String {
        format!("{} -> {}", self.peer, self.protocol)
    }
}

#[derive(Debug)]
pub struct Broker {
    pub config: Arc<Config>,
    pub users: Users,
    pub memory: Arc<MemoryMonitor>,
    vhosts: DashMap<String, Arc<VHost>>,
    connections: DashMap<ConnectionId, Arc<ConnectionEntry>>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Broker {
    pub fn new(config: Config) -> Arc<Self> {
        let vhosts = DashMap::new();
        for v in &config.vhosts {
            vhosts.insert(v.name.clone(), Arc::new(VHost::new(&v.name)));
        }
        let (shutdown, _) = watch::channel(false);
        Arc::new(Broker {
            users: Users::from_config(&config),
            memory: MemoryMonitor::new(config.memory_high_watermark_bytes()),
            config: Arc::new(config),
            vhosts,
            connections: DashMap::new(),
            next_id: AtomicU64::new(1),
            shutdown,
        })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<_> = self.vhosts.iter().map(|v| v.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A broker-unique id (connections, consumers).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register_connection(
        &self,
        protocol: &'static str,
        peer: SocketAddr,
    ) -> Arc<ConnectionEntry> {
        let entry = Arc::new(ConnectionEntry {
            id: self.next_id(),
            protocol,
            peer,
            connected_at: SystemTime::now(),
            channels: AtomicU32::new(0),
            session: Mutex::new(None),
        });
        self.connections.insert(entry.id, entry.clone());
        entry
    }

    /// Forgets a connection and deletes its exclusive queues.
    pub fn unregister_connection(&self, id: ConnectionId) {
        self.connections.remove(&id);
        for vh in self.vhosts() {
            vh.connection_closed(id);
        }
    }

    pub fn connections(&self) -> Vec<Arc<ConnectionEntry>> {
        let mut v: Vec<_> = self.connections.iter().map(|c| c.clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Becomes true when the broker begins to shut down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}
