//! The broker: vhosts, users, the memory monitor and the registry of live connections. Shared
//! by every protocol adapter and the admin API.

use super::auth::Users;
use super::clock::SystemClock;
use super::memory::MemoryMonitor;
use super::policy::Policies;
use super::queue::ConnectionId;
use super::timer::Timer;
use super::vhost::VHost;
use crate::config::Config;
use crate::store::{Store, StoreError};
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
    /// Durable storage; None for a memory-only broker (unit tests, benchmarks).
    pub store: Option<Arc<Store>>,
    /// Wakes queues for message TTL and `x-expires`; served by [`Timer::run`].
    pub timer: Arc<Timer>,
    /// Slows down repeated authentication failures from one address, for every protocol.
    pub auth_throttle: crate::net::auth_throttle::AuthThrottle,
    vhosts: DashMap<String, Arc<VHost>>,
    connections: DashMap<ConnectionId, Arc<ConnectionEntry>>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Broker {
    /// A broker that keeps everything in memory: nothing is read from or written to disk.
    pub fn new(config: Config) -> Arc<Self> {
        let memory = MemoryMonitor::new(config.memory_high_watermark_bytes());
        let policies = Self::policies(&config);
        let vhosts = DashMap::new();
        for v in &config.vhosts {
            let vh = VHost::with_policies(&v.name, policies.clone());
            vhosts.insert(v.name.clone(), Arc::new(vh));
        }
        Self::assemble(config, memory, None, vhosts)
    }

    /// A broker on the store in `config.server.data_dir`: durable definitions and persistent
    /// messages are recovered from it and written to it.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        let memory = MemoryMonitor::new(config.memory_high_watermark_bytes());
        let names: Vec<String> = config.vhosts.iter().map(|v| v.name.clone()).collect();
        let (store, mut recovered) = Store::open(
            &config.server.data_dir,
            &names,
            &config.store,
            memory.clone(),
        )?;
        let policies = Self::policies(&config);
        let vhosts = DashMap::new();
        for defs in &recovered.definitions {
            let vh = VHost::with_store(
                &defs.vhost,
                store.clone(),
                policies.clone(),
                defs,
                &mut recovered.log,
                &memory,
            );
            vhosts.insert(defs.vhost.clone(), Arc::new(vh));
        }
        Ok(Self::assemble(config, memory, Some(store), vhosts))
    }

    /// The configured policies (validated when the configuration was loaded).
    fn policies(config: &Config) -> Arc<Policies> {
        let policies = Policies::from_config(&config.policies).unwrap_or_else(|e| {
            tracing::error!("ignoring the policies: {e}");
            Policies::default()
        });
        Arc::new(policies)
    }

    fn assemble(
        config: Config,
        memory: Arc<MemoryMonitor>,
        store: Option<Arc<Store>>,
        vhosts: DashMap<String, Arc<VHost>>,
    ) -> Arc<Self> {
        let (shutdown, _) = watch::channel(false);
        let timer = Timer::new(Arc::new(SystemClock));
        for vh in vhosts.iter() {
            vh.attach(timer.clone(), Some(memory.clone()));
            vh.set_topic_max_words(config.server.topic_max_words);
        }
        Arc::new(Broker {
            timer,
            auth_throttle: Default::default(),
            users: Users::from_config(&config),
            memory,
            store,
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
