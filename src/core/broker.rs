//! The broker: vhosts, access control, the memory monitor and the registry of live
//! connections. Shared by every protocol adapter and the admin API.

use super::access::records::{encode, VHostRecord};
use super::access::Access;
use super::channel_info::{ChannelInfo, ChannelView};
use super::clock::{Clock, SystemClock};
use super::memory::MemoryMonitor;
use super::policy::Policies;
use super::queue::ConnectionId;
use super::stats::{ConnectionCounters, Stats};
use super::timer::Timer;
use super::vhost::{QueueRemovals, VHost, VHostEnv};
use crate::config::Config;
use crate::store::{kind, RecoveredKeyed, RecoveredLog, Store, StoreError, VHostDefinitions};
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{watch, Notify};

/// A live client connection, as listed by `ctl list_connections`.
#[derive(Debug)]
pub struct ConnectionEntry {
    pub id: ConnectionId,
    pub protocol: &'static str,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    pub channels: AtomicU32,
    /// The open channels (AMQP) by number, for the management API's channel listing.
    channel_views: Mutex<std::collections::BTreeMap<u16, Arc<dyn ChannelView>>>,
    /// (user, vhost) once authenticated and opened.
    pub session: Mutex<Option<(String, String)>>,
    /// Messages and bytes through the connection, for `message_stats`; shared with the
    /// connection's protocol state, which counts.
    pub stats: Arc<ConnectionCounters>,
    /// The client's own name for itself: the MQTT client id, else empty.
    pub client_id: Mutex<String>,
    /// Not read because publisher flow control holds it back (RabbitMQ's `flow` state).
    pub in_flow: AtomicBool,
    /// Set when the broker closes the connection (its user or vhost was deleted).
    forced: Notify,
    forced_reason: Mutex<Option<String>>,
}

impl ConnectionEntry {
    pub fn name(&self) -> String {
        format!("{} -> {}", self.peer, self.protocol)
    }

    /// Records channel `number` as open, listed with what `view` reports.
    pub fn channel_opened(&self, number: u16, view: Arc<dyn ChannelView>) {
        self.channels.fetch_add(1, Ordering::Relaxed);
        self.channel_views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number, view);
    }

    /// Records channel `number` as closed.
    pub fn channel_closed(&self, number: u16) {
        self.channels.fetch_sub(1, Ordering::Relaxed);
        self.channel_views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&number);
    }

    /// Records every channel as closed (the connection is going).
    pub fn all_channels_closed(&self) {
        self.channels.store(0, Ordering::Relaxed);
        self.channel_views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The open channels' numbers, ascending, with their figures.
    pub fn channels_info(&self) -> Vec<(u16, ChannelInfo)> {
        // The views are read after the lock is released: a view takes its channel's own lock.
        let views: Vec<(u16, Arc<dyn ChannelView>)> = self
            .channel_views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, v)| (*n, v.clone()))
            .collect();
        views.into_iter().map(|(n, v)| (n, v.info())).collect()
    }

    /// Asks the connection's task to close, telling the client `reason`.
    pub fn force_close(&self, reason: String) {
        if let Ok(mut r) = self.forced_reason.lock() {
            *r = Some(reason);
        }
        // A stored permit: the task sees it even if it is not waiting right now.
        self.forced.notify_one();
    }

    /// Resolves with the reason once [`ConnectionEntry::force_close`] was called.
    pub async fn forced(&self) -> String {
        self.forced.notified().await;
        self.forced_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct Broker {
    pub config: Arc<Config>,
    /// Users, permissions and topic permissions.
    pub access: Access,
    policies: Arc<Policies>,
    pub memory: Arc<MemoryMonitor>,
    /// Durable storage; None for a memory-only broker (unit tests, benchmarks).
    pub store: Option<Arc<Store>>,
    /// Keyed state read back from the log at start, until the owners of its kinds (the MQTT
    /// adapter's sessions and retained messages) have taken theirs.
    keyed_at_start: Mutex<RecoveredKeyed>,
    /// Wakes queues for message TTL and `x-expires`; served by [`Timer::run`].
    pub timer: Arc<Timer>,
    /// Slows down repeated authentication failures from one address, for every protocol.
    pub auth_throttle: crate::net::auth_throttle::AuthThrottle,
    /// Message rates, filled by [`super::stats::sample`].
    pub stats: Stats,
    vhosts: DashMap<String, Arc<VHost>>,
    connections: DashMap<ConnectionId, Arc<ConnectionEntry>>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// This node's cluster membership, set at start when `[cluster] listen` is set.
    pub cluster: std::sync::OnceLock<Arc<dyn crate::cluster::Consensus>>,
    /// Makes the adapters' replicated records live (MQTT sessions, retained messages); set
    /// by the MQTT adapter at start on a clustered node.
    pub adapter_records: std::sync::OnceLock<Arc<dyn crate::cluster::adapter::AdapterRecords>>,
    /// Told of every queue a vhost removes (the cluster watches it).
    pub queue_removals: Arc<QueueRemovals>,
}

impl Broker {
    /// A broker that keeps everything in memory: nothing is read from or written to disk.
    pub fn new(config: Config) -> Arc<Self> {
        let memory = MemoryMonitor::new(config.memory_high_watermark_bytes());
        let policies = Self::policies(&config);
        let timer = Timer::new(Arc::new(SystemClock));
        let removals = Arc::new(QueueRemovals::default());
        let env = VHostEnv {
            timer: timer.clone(),
            memory: Some(memory.clone()),
            removals: removals.clone(),
        };
        let vhosts = DashMap::new();
        let names: Vec<String> = config.vhosts.iter().map(|v| v.name.clone()).collect();
        for name in &names {
            let vh = VHost::with_policies(name, policies.clone(), env.clone());
            vhosts.insert(name.clone(), Arc::new(vh));
        }
        let access = Access::seeded(&config, &names, None);
        Self::assemble(
            timer,
            config,
            memory,
            None,
            access,
            (policies, removals),
            vhosts,
        )
    }

    /// A broker on the store in `config.server.data_dir`: durable definitions and persistent
    /// messages are recovered from it and written to it.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// [`Broker::open`] with the core reading time from `clock` (tests move it by hand, across
    /// restarts too).
    pub fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Self>, StoreError> {
        let memory = MemoryMonitor::new(config.memory_high_watermark_bytes());
        // Users, vhosts and permissions come from the store; the configuration's only seed
        // a data directory that has none.
        let mut seed = false;
        let (store, mut recovered) = Store::open(
            &config.server.data_dir,
            |keyed| {
                if Access::any_recovered(keyed) {
                    Access::recovered_vhosts(keyed)
                } else {
                    seed = true;
                    config.vhosts.iter().map(|v| v.name.clone()).collect()
                }
            },
            &config.store,
        )?;
        let policies = Self::policies(&config);
        let timer = Timer::new(clock);
        let removals = Arc::new(QueueRemovals::default());
        let env = VHostEnv {
            timer: timer.clone(),
            memory: Some(memory.clone()),
            removals: removals.clone(),
        };
        // Before the queues come back, so that run-time policies apply to them as before.
        policies.restore(
            recovered
                .log
                .keyed
                .of_kind(kind::POLICY)
                .map(|(_, v)| &v[..]),
        );
        let vhosts = DashMap::new();
        for defs in &recovered.definitions {
            let vh = VHost::with_store(
                &defs.vhost,
                store.clone(),
                policies.clone(),
                defs,
                &mut recovered.log,
                env.clone(),
                &memory,
            );
            vhosts.insert(defs.vhost.clone(), Arc::new(vh));
        }
        let access = if seed {
            let names: Vec<String> = recovered
                .definitions
                .iter()
                .map(|d| d.vhost.clone())
                .collect();
            for name in &names {
                store.put(
                    kind::VHOST,
                    name.as_bytes(),
                    &encode(&VHostRecord { name: name.clone() }),
                );
            }
            Access::seeded(&config, &names, Some(store.clone()))
        } else {
            Access::restored(&config, &recovered.log.keyed, store.clone())
        };
        let keyed = std::mem::take(&mut recovered.log.keyed);
        Ok(Self::assemble(
            timer,
            config,
            memory,
            Some((store, keyed)),
            access,
            (policies, removals),
            vhosts,
        ))
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
        timer: Arc<Timer>,
        config: Config,
        memory: Arc<MemoryMonitor>,
        store: Option<(Arc<Store>, RecoveredKeyed)>,
        access: Access,
        (policies, queue_removals): (Arc<Policies>, Arc<QueueRemovals>),
        vhosts: DashMap<String, Arc<VHost>>,
    ) -> Arc<Self> {
        // With the store, what it held at start of keyed state, for its owners to take.
        let (store, keyed_at_start) = match store {
            Some((store, keyed)) => (Some(store), keyed),
            None => (None, RecoveredKeyed::default()),
        };
        // The seed's passwords are hashed by now; the running broker keeps no plain text.
        let mut config = config;
        for u in &mut config.users {
            u.password.clear();
        }
        let (shutdown, _) = watch::channel(false);
        for vh in vhosts.iter() {
            vh.serve_timer();
            vh.set_topic_max_words(config.server.topic_max_words);
            vh.set_flow_backlog(config.mqtt.flow_backlog);
        }
        Arc::new(Broker {
            timer,
            auth_throttle: Default::default(),
            stats: Stats::default(),
            access,
            policies,
            memory,
            store,
            keyed_at_start: Mutex::new(keyed_at_start),
            config: Arc::new(config),
            vhosts,
            connections: DashMap::new(),
            next_id: AtomicU64::new(1),
            shutdown,
            cluster: std::sync::OnceLock::new(),
            adapter_records: std::sync::OnceLock::new(),
            queue_removals,
        })
    }

    /// The configured and run-time policies.
    pub fn policy_set(&self) -> &Arc<Policies> {
        &self.policies
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<_> = self.vhosts.iter().map(|v| v.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Takes the keyed state of `kind` recovered at start (empty the second time).
    pub fn take_recovered(&self, kind: u8) -> Vec<(Vec<u8>, bytes::Bytes)> {
        let mut keyed = self
            .keyed_at_start
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let out: Vec<(Vec<u8>, bytes::Bytes)> = keyed
            .of_kind(kind)
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect();
        for (k, _) in &out {
            keyed.delete(kind, k);
        }
        out
    }

    /// Adds a vhost with the standard exchanges (nothing when it exists); returns the LSN that
    /// makes it durable (0 when nothing was written).
    pub fn add_vhost(&self, name: &str) -> u64 {
        let env = VHostEnv {
            timer: self.timer.clone(),
            memory: Some(self.memory.clone()),
            removals: self.queue_removals.clone(),
        };
        let vh = match self.vhosts.entry(name.to_owned()) {
            dashmap::Entry::Occupied(_) => return 0,
            dashmap::Entry::Vacant(slot) => {
                let vh = Arc::new(match &self.store {
                    Some(store) => VHost::with_store(
                        name,
                        store.clone(),
                        self.policies.clone(),
                        &VHostDefinitions {
                            vhost: name.to_owned(),
                            ..Default::default()
                        },
                        &mut RecoveredLog::default(),
                        env,
                        &self.memory,
                    ),
                    None => VHost::with_policies(name, self.policies.clone(), env),
                });
                slot.insert(vh.clone());
                vh
            }
        };
        vh.serve_timer();
        vh.set_topic_max_words(self.config.server.topic_max_words);
        vh.set_flow_backlog(self.config.mqtt.flow_backlog);
        let record = encode(&VHostRecord {
            name: name.to_owned(),
        });
        self.store
            .as_ref()
            .map_or(0, |s| s.put(kind::VHOST, name.as_bytes(), &record))
    }

    /// Deletes a vhost and everything in it (queues with their messages, exchanges,
    /// permissions) and closes its connections; `None` when there is no such vhost.
    pub fn delete_vhost(&self, name: &str) -> Option<u64> {
        let (_, vh) = self.vhosts.remove(name)?;
        self.close_connections(|_, v| v == name, &format!("vhost '{name}' is deleted"));
        for q in vh.queues() {
            vh.remove_queue(&q);
        }
        for ex in vh.exchanges() {
            if !ex.name.is_empty() && !ex.name.starts_with("amq.") {
                let _ = vh.delete_exchange(&ex.name, false);
            }
        }
        vh.stop_timer();
        let mut lsn = self.access.vhost_deleted(name);
        if let Some(store) = &self.store {
            lsn = lsn.max(store.delete(kind::VHOST, name.as_bytes()));
        }
        for p in self.policies.runtime() {
            if p.vhost.as_deref() == Some(name) {
                self.policies.clear_runtime(name, &p.name);
                if let Some(store) = &self.store {
                    let key = super::policy::RuntimePolicy::key(name, &p.name);
                    lsn = lsn.max(store.delete(kind::POLICY, &key));
                }
            }
        }
        Some(lsn)
    }

    /// Sets a run-time policy, applies it to the vhost's queues and writes its record; returns
    /// (created, LSN to wait for).
    pub fn set_policy(&self, record: &super::policy::RuntimePolicy) -> Result<(bool, u64), String> {
        let Some(vh) = self.vhost(&record.vhost) else {
            return Err(format!("vhost '{}' does not exist", record.vhost));
        };
        let policy = record.compile().map_err(|e| e.to_string())?;
        let bytes = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let created = self.policies.set_runtime(policy);
        vh.apply_policies();
        let key = super::policy::RuntimePolicy::key(&record.vhost, &record.name);
        let lsn = self
            .store
            .as_ref()
            .map_or(0, |s| s.put(kind::POLICY, &key, &bytes));
        Ok((created, lsn))
    }

    /// Clears a run-time policy and applies what remains to the vhost's queues; `None` when
    /// there was no such policy.
    pub fn clear_policy(&self, vhost: &str, name: &str) -> Option<u64> {
        if !self.policies.clear_runtime(vhost, name) {
            return None;
        }
        if let Some(vh) = self.vhost(vhost) {
            vh.apply_policies();
        }
        let key = super::policy::RuntimePolicy::key(vhost, name);
        Some(
            self.store
                .as_ref()
                .map_or(0, |s| s.delete(kind::POLICY, &key)),
        )
    }

    /// Deletes a user with its permissions and closes its connections.
    pub fn delete_user(&self, name: &str) -> Result<u64, super::access::AccessError> {
        let lsn = self.access.delete_user(name)?;
        self.close_connections(|u, _| u == name, &format!("user '{name}' is deleted"));
        Ok(lsn)
    }

    /// Closes every connection whose (user, vhost) `which` selects.
    pub fn close_connections(&self, which: impl Fn(&str, &str) -> bool, reason: &str) {
        for c in self.connections.iter() {
            let hit = c
                .session
                .lock()
                .ok()
                .and_then(|s| s.as_ref().map(|(u, v)| which(u, v)))
                .unwrap_or(false);
            if hit {
                c.force_close(reason.to_owned());
            }
        }
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
            channel_views: Mutex::new(Default::default()),
            session: Mutex::new(None),
            stats: Arc::default(),
            client_id: Mutex::new(String::new()),
            in_flow: AtomicBool::new(false),
            forced: Notify::new(),
            forced_reason: Mutex::new(None),
        });
        self.connections.insert(entry.id, entry.clone());
        entry
    }

    /// Forgets a connection and deletes its exclusive queues.
    pub fn unregister_connection(&self, id: ConnectionId) {
        if let Some((_, entry)) = self.connections.remove(&id) {
            super::sampler::connection_closed(self, &entry);
        }
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

impl Drop for Broker {
    /// The timer holds the vhosts it serves, and they hold it: let go of them, so a broker
    /// dropped without a shutdown (tests start many in one process) frees everything.
    fn drop(&mut self) {
        for vh in self.vhosts.iter() {
            vh.stop_timer();
        }
    }
}
