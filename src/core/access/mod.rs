//! Access control as RabbitMQ has it: users with salted password hashes and tags, and per user
//! and vhost `configure`/`write`/`read` permissions and topic permissions. Changed at run time
//! (the HTTP API, `switchboard ctl`), kept as keyed records in the store and restored at start.
//!
//! Every change bumps a generation counter, so connections that cache verdicts (the publish
//! path checks `write` once per exchange, not per message) know when to check again.

pub mod password;
pub mod permissions;
pub mod records;

use crate::config::Config;
use crate::store::{kind, RecoveredKeyed, Store};
use password::{HashError, PasswordHash};
use permissions::{
    expand, has_variables, Pattern, PatternError, Perm, PermissionSpec, Permissions, ResourceKind,
    TopicPermissionSpec, TopicVars,
};
use records::{
    encode, permission_key, topic_permission_key, PermissionRecord, TopicPermissionRecord,
    UserRecord,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// RabbitMQ's user tags that mean something to the broker.
pub mod tag {
    pub const ADMINISTRATOR: &str = "administrator";
    pub const MONITORING: &str = "monitoring";
    pub const MANAGEMENT: &str = "management";
    pub const POLICYMAKER: &str = "policymaker";
    pub const IMPERSONATOR: &str = "impersonator";
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub tags: Vec<String>,
}

impl User {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    pub fn is_administrator(&self) -> bool {
        self.has_tag(tag::ADMINISTRATOR)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
}

/// Why a management change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("no user '{0}'")]
    NoSuchUser(String),
    #[error("no vhost '{0}'")]
    NoSuchVHost(String),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// A refused operation, with RabbitMQ's text ("access to queue 'q' in vhost '/' refused for
/// user 'u'"), which each protocol reports in its own way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Publish verdicts per exchange (write permission, and whether topic permissions restrict
/// it), valid for one access-control generation: a channel or session checks them once per
/// exchange, not per message, until access control changes.
#[derive(Debug, Default)]
pub struct PublishVerdicts {
    generation: u64,
    /// Exchange name → whether topic permissions apply to it. FxHash: the names are ones this
    /// authenticated client was allowed to publish to, and the map lives as long as its channel
    /// or session (see `crate::core::hash`); SipHash here was ~150 instructions per publish.
    allowed: crate::core::hash::FastHashMap<String, bool>,
    /// The exchange whose verdict was made last, and the verdict: a client publishes to the
    /// same exchange again and again, and comparing its name costs less than hashing it
    /// (about 100 instructions per publish).
    last: Option<(String, bool)>,
}

impl PublishVerdicts {
    /// Write permission on `exchange`; Ok(true) when topic permissions must still be checked
    /// on the routing key.
    pub fn check(
        &mut self,
        access: &Access,
        vhost: &str,
        user: &str,
        exchange: &str,
    ) -> Result<bool, Refused> {
        let generation = access.generation();
        if self.generation != generation {
            self.allowed.clear();
            self.last = None;
            self.generation = generation;
        }
        if let Some((name, restricted)) = &self.last {
            if name == exchange {
                return Ok(*restricted);
            }
        }
        if let Some(restricted) = self.allowed.get(exchange) {
            return Ok(*restricted);
        }
        access.check(vhost, user, Perm::Write, ResourceKind::Exchange, exchange)?;
        let restricted = access.has_topic_permissions(vhost, user, exchange);
        self.allowed.insert(exchange.to_owned(), restricted);
        self.last = Some((exchange.to_owned(), restricted));
        Ok(restricted)
    }
}

/// Whether loopback-only users may connect from `ip`: IPv4 loopback, `::1`, and IPv4-mapped
/// loopback (`::ffff:127.0.0.1`, what a dual-stack listener reports for an IPv4 client).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[derive(Debug, Clone)]
struct UserEntry {
    hash: PasswordHash,
    tags: Vec<String>,
}

/// Topic permissions on one exchange. Expressions without variables are compiled once.
#[derive(Debug, Clone)]
struct TopicEntry {
    spec: TopicPermissionSpec,
    write: Option<Pattern>,
    read: Option<Pattern>,
}

impl TopicEntry {
    fn new(spec: TopicPermissionSpec) -> Result<Self, PatternError> {
        let fixed = |p: &str| -> Result<Option<Pattern>, PatternError> {
            if has_variables(p) {
                Ok(None)
            } else {
                Pattern::new(p).map(Some)
            }
        };
        // Check expressions with variables now too, so a bad one is refused when set.
        for p in [&spec.write, &spec.read] {
            Pattern::new(&expand(
                p,
                TopicVars {
                    username: "u",
                    vhost: "v",
                    client_id: "c",
                },
            ))?;
        }
        Ok(TopicEntry {
            write: fixed(&spec.write)?,
            read: fixed(&spec.read)?,
            spec,
        })
    }
}

type VHostUser = (String, String);

#[derive(Debug, Default)]
struct State {
    users: HashMap<String, UserEntry>,
    /// By (vhost, user).
    permissions: HashMap<VHostUser, Arc<Permissions>>,
    /// By (vhost, user), then exchange.
    topic: HashMap<VHostUser, HashMap<String, TopicEntry>>,
}

/// Compiled topic expressions with their variables expanded, shared by connections.
const EXPANDED_CACHE_MAX: usize = 4096;

#[derive(Debug)]
pub struct Access {
    state: RwLock<State>,
    generation: AtomicU64,
    store: Option<Arc<Store>>,
    loopback_only: Vec<String>,
    /// Hashed against for unknown users, so they take as long as a wrong password.
    dummy: PasswordHash,
    expanded: Mutex<HashMap<String, Pattern>>,
}

fn key_pair(vhost: &str, user: &str) -> VHostUser {
    (vhost.to_owned(), user.to_owned())
}

impl Access {
    fn empty(config: &Config, store: Option<Arc<Store>>) -> Self {
        Access {
            state: RwLock::new(State::default()),
            generation: AtomicU64::new(1),
            store,
            loopback_only: config.server.loopback_users.clone(),
            dummy: PasswordHash::new("switchboard-dummy"),
            expanded: Mutex::new(HashMap::new()),
        }
    }

    /// Users and permissions from the configuration's `[[users]]`: each gets full
    /// permissions (".*" ".*" ".*") on each of `vhosts`, as RabbitMQ's default user gets on
    /// its default vhost. Written to `store` when there is one (a new data directory).
    pub fn seeded(config: &Config, vhosts: &[String], store: Option<Arc<Store>>) -> Self {
        let access = Self::empty(config, store);
        let all = PermissionSpec {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        };
        for u in &config.users {
            access.put_user(&u.name, PasswordHash::new(&u.password), &u.tags);
            for v in vhosts {
                // ".*" always compiles.
                let _ = access.set_permissions(v, &u.name, &all);
            }
        }
        access
    }

    /// Users and permissions as the store recovered them.
    pub fn restored(config: &Config, keyed: &RecoveredKeyed, store: Arc<Store>) -> Self {
        let access = Self::empty(config, Some(store));
        {
            let mut st = access.write_state();
            for (_, value) in keyed.of_kind(kind::USER) {
                let restored = serde_json::from_slice::<UserRecord>(value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.hash().map(|h| (r, h)).map_err(|e| e.to_string()));
                match restored {
                    Ok((r, hash)) => {
                        st.users.insert(r.name, UserEntry { hash, tags: r.tags });
                    }
                    Err(e) => tracing::warn!("ignoring a stored user: {e}"),
                }
            }
            for (_, value) in keyed.of_kind(kind::PERMISSION) {
                let restored = serde_json::from_slice::<PermissionRecord>(value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        Permissions::new(&r.spec)
                            .map(|p| (r, p))
                            .map_err(|e| e.to_string())
                    });
                match restored {
                    Ok((r, p)) => {
                        st.permissions
                            .insert(key_pair(&r.vhost, &r.user), Arc::new(p));
                    }
                    Err(e) => tracing::warn!("ignoring stored permissions: {e}"),
                }
            }
            for (_, value) in keyed.of_kind(kind::TOPIC_PERMISSION) {
                let restored = serde_json::from_slice::<TopicPermissionRecord>(value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        TopicEntry::new(r.spec.clone())
                            .map(|t| (r, t))
                            .map_err(|e| e.to_string())
                    });
                match restored {
                    Ok((r, t)) => {
                        st.topic
                            .entry(key_pair(&r.vhost, &r.user))
                            .or_default()
                            .insert(r.spec.exchange, t);
                    }
                    Err(e) => tracing::warn!("ignoring stored topic permissions: {e}"),
                }
            }
        }
        access
    }

    /// Whether a recovered store holds any access-control state (else it is seeded).
    pub fn any_recovered(keyed: &RecoveredKeyed) -> bool {
        keyed.of_kind(kind::USER).next().is_some() || keyed.of_kind(kind::VHOST).next().is_some()
    }

    /// The vhost names a recovered store holds.
    pub fn recovered_vhosts(keyed: &RecoveredKeyed) -> Vec<String> {
        keyed
            .of_kind(kind::VHOST)
            .filter_map(|(k, _)| String::from_utf8(k.to_vec()).ok())
            .collect()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts changes; a verdict cached under one generation is stale under the next.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn put(&self, kind: u8, key: &[u8], value: &[u8]) -> u64 {
        self.store.as_ref().map_or(0, |s| s.put(kind, key, value))
    }

    fn delete(&self, kind: u8, key: &[u8]) -> u64 {
        self.store.as_ref().map_or(0, |s| s.delete(kind, key))
    }

    /// Waits until the change with log sequence number `lsn` is durable (at once without a
    /// store, or when nothing was written).
    pub async fn durable(&self, lsn: u64) {
        if let (Some(store), true) = (&self.store, lsn > 0) {
            store.log.wait_synced(lsn).await;
        }
    }

    // ---- authentication ----

    /// Checks a name and password for a client connecting from `peer`. Unknown users are
    /// hashed against a dummy, so the time taken does not tell whether a user exists.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<User, AuthError> {
        let entry = self.read_state().users.get(name).cloned();
        let ok = match &entry {
            Some(e) => e.hash.verify(password),
            None => {
                let _ = self.dummy.verify(password);
                false
            }
        };
        match entry {
            Some(e) if ok => self.admit(name, e.tags, peer),
            _ => Err(AuthError::InvalidCredentials(name.to_owned())),
        }
    }

    /// The user a connection acts as without a password (MQTT's anonymous user, STOMP's
    /// default login): it must exist, and the loopback rule still applies.
    pub fn trusted(&self, name: &str, peer: IpAddr) -> Result<User, AuthError> {
        let tags = self.read_state().users.get(name).map(|e| e.tags.clone());
        match tags {
            Some(tags) => self.admit(name, tags, peer),
            None => Err(AuthError::InvalidCredentials(name.to_owned())),
        }
    }

    fn admit(&self, name: &str, tags: Vec<String>, peer: IpAddr) -> Result<User, AuthError> {
        if self.loopback_only.iter().any(|u| u == name) && !is_loopback(peer) {
            return Err(AuthError::LoopbackOnly(name.to_owned()));
        }
        Ok(User {
            name: name.to_owned(),
            tags,
        })
    }

    // ---- users ----

    pub fn user(&self, name: &str) -> Option<User> {
        self.read_state().users.get(name).map(|e| User {
            name: name.to_owned(),
            tags: e.tags.clone(),
        })
    }

    /// Every user with its hash, as RabbitMQ lists and exports them, by name.
    pub fn users(&self) -> Vec<UserRecord> {
        let st = self.read_state();
        let mut v: Vec<UserRecord> = st
            .users
            .iter()
            .map(|(n, e)| UserRecord::new(n, &e.hash, &e.tags))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates or replaces a user; returns the LSN that makes it durable.
    pub fn put_user(&self, name: &str, hash: PasswordHash, tags: &[String]) -> u64 {
        let record = UserRecord::new(name, &hash, tags);
        let mut st = self.write_state();
        st.users.insert(
            name.to_owned(),
            UserEntry {
                hash,
                tags: tags.to_vec(),
            },
        );
        let lsn = self.put(kind::USER, name.as_bytes(), &encode(&record));
        drop(st);
        self.changed();
        lsn
    }

    /// Changes a user's password, keeping its tags.
    pub fn change_password(&self, name: &str, hash: PasswordHash) -> Result<u64, AccessError> {
        let tags = self
            .user(name)
            .ok_or_else(|| AccessError::NoSuchUser(name.to_owned()))?
            .tags;
        Ok(self.put_user(name, hash, &tags))
    }

    /// Replaces a user's tags, keeping its password.
    pub fn set_tags(&self, name: &str, tags: &[String]) -> Result<u64, AccessError> {
        let hash = self
            .read_state()
            .users
            .get(name)
            .map(|e| e.hash.clone())
            .ok_or_else(|| AccessError::NoSuchUser(name.to_owned()))?;
        Ok(self.put_user(name, hash, tags))
    }

    /// Deletes a user and its permissions and topic permissions everywhere.
    pub fn delete_user(&self, name: &str) -> Result<u64, AccessError> {
        let mut st = self.write_state();
        if st.users.remove(name).is_none() {
            return Err(AccessError::NoSuchUser(name.to_owned()));
        }
        let mut lsn = self.delete(kind::USER, name.as_bytes());
        lsn = lsn.max(self.drop_grants(&mut st, |_, u| u == name));
        drop(st);
        self.changed();
        Ok(lsn)
    }

    /// Removes the permissions and topic permissions of (vhost, user) pairs `which` selects.
    fn drop_grants(&self, st: &mut State, which: impl Fn(&str, &str) -> bool) -> u64 {
        let mut lsn = 0;
        let gone: Vec<VHostUser> = st
            .permissions
            .keys()
            .filter(|(v, u)| which(v, u))
            .cloned()
            .collect();
        for (v, u) in gone {
            st.permissions.remove(&(v.clone(), u.clone()));
            lsn = lsn.max(self.delete(kind::PERMISSION, &permission_key(&v, &u)));
        }
        let gone: Vec<VHostUser> = st
            .topic
            .keys()
            .filter(|(v, u)| which(v, u))
            .cloned()
            .collect();
        for (v, u) in gone {
            for exchange in st
                .topic
                .remove(&(v.clone(), u.clone()))
                .unwrap_or_default()
                .keys()
            {
                lsn = lsn.max(self.delete(
                    kind::TOPIC_PERMISSION,
                    &topic_permission_key(&v, &u, exchange),
                ));
            }
        }
        lsn
    }

    /// Forgets every permission in a vhost being deleted.
    pub fn vhost_deleted(&self, vhost: &str) -> u64 {
        let mut st = self.write_state();
        let lsn = self.drop_grants(&mut st, |v, _| v == vhost);
        drop(st);
        self.changed();
        lsn
    }

    // ---- permissions ----

    /// Sets a user's permissions in a vhost (the caller checks that the vhost exists).
    pub fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        spec: &PermissionSpec,
    ) -> Result<u64, AccessError> {
        let compiled = Permissions::new(spec)?;
        let mut st = self.write_state();
        if !st.users.contains_key(user) {
            return Err(AccessError::NoSuchUser(user.to_owned()));
        }
        st.permissions
            .insert(key_pair(vhost, user), Arc::new(compiled));
        let record = PermissionRecord {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            spec: spec.clone(),
        };
        let lsn = self.put(
            kind::PERMISSION,
            &permission_key(vhost, user),
            &encode(&record),
        );
        drop(st);
        self.changed();
        Ok(lsn)
    }

    /// Removes a user's permissions in a vhost; `None` when there were none.
    pub fn clear_permissions(&self, vhost: &str, user: &str) -> Option<u64> {
        let mut st = self.write_state();
        st.permissions.remove(&key_pair(vhost, user))?;
        let lsn = self.delete(kind::PERMISSION, &permission_key(vhost, user));
        drop(st);
        self.changed();
        Some(lsn)
    }

    /// Every (user, vhost, permissions), by vhost and then user.
    pub fn permissions(&self) -> Vec<PermissionRecord> {
        let st = self.read_state();
        let mut v: Vec<PermissionRecord> = st
            .permissions
            .iter()
            .map(|((vhost, user), p)| PermissionRecord {
                user: user.clone(),
                vhost: vhost.clone(),
                spec: p.spec(),
            })
            .collect();
        v.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        v
    }

    /// A user's permissions in a vhost, if it has any.
    pub fn permissions_of(&self, vhost: &str, user: &str) -> Option<Arc<Permissions>> {
        self.read_state()
            .permissions
            .get(&key_pair(vhost, user))
            .cloned()
    }

    // ---- topic permissions ----

    /// Whether `spec` would be accepted by [`Access::set_topic_permissions`] (its expressions
    /// compile), checked before a clustered node proposes it.
    pub fn check_topic_spec(spec: &TopicPermissionSpec) -> Result<(), AccessError> {
        TopicEntry::new(spec.clone())?;
        Ok(())
    }

    /// Whether `user` has any topic permissions in `vhost`.
    pub fn has_any_topic_permissions(&self, vhost: &str, user: &str) -> bool {
        self.read_state()
            .topic
            .get(&key_pair(vhost, user))
            .is_some_and(|m| !m.is_empty())
    }

    pub fn set_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        spec: &TopicPermissionSpec,
    ) -> Result<u64, AccessError> {
        let entry = TopicEntry::new(spec.clone())?;
        let mut st = self.write_state();
        if !st.users.contains_key(user) {
            return Err(AccessError::NoSuchUser(user.to_owned()));
        }
        st.topic
            .entry(key_pair(vhost, user))
            .or_default()
            .insert(spec.exchange.clone(), entry);
        let record = TopicPermissionRecord {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            spec: spec.clone(),
        };
        let lsn = self.put(
            kind::TOPIC_PERMISSION,
            &topic_permission_key(vhost, user, &spec.exchange),
            &encode(&record),
        );
        drop(st);
        self.changed();
        Ok(lsn)
    }

    /// Removes a user's topic permissions in a vhost, on one exchange or (None) all of them;
    /// `None` when there were none.
    pub fn clear_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> Option<u64> {
        let mut st = self.write_state();
        let pair = key_pair(vhost, user);
        let by_exchange = st.topic.get_mut(&pair)?;
        let gone: Vec<String> = match exchange {
            Some(x) => by_exchange
                .remove(x)
                .map(|_| x.to_owned())
                .into_iter()
                .collect(),
            None => by_exchange.drain().map(|(x, _)| x).collect(),
        };
        if by_exchange.is_empty() {
            st.topic.remove(&pair);
        }
        if gone.is_empty() {
            return None;
        }
        let lsn = gone
            .iter()
            .map(|x| {
                self.delete(
                    kind::TOPIC_PERMISSION,
                    &topic_permission_key(vhost, user, x),
                )
            })
            .max()
            .unwrap_or(0);
        drop(st);
        self.changed();
        Some(lsn)
    }

    /// Every topic permission, by vhost, user and exchange.
    pub fn topic_permissions(&self) -> Vec<TopicPermissionRecord> {
        let st = self.read_state();
        let mut v: Vec<TopicPermissionRecord> = st
            .topic
            .iter()
            .flat_map(|((vhost, user), m)| {
                m.values().map(|t| TopicPermissionRecord {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    spec: t.spec.clone(),
                })
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.vhost, &a.user, &a.spec.exchange).cmp(&(&b.vhost, &b.user, &b.spec.exchange))
        });
        v
    }

    // ---- checks ----

    /// Whether `user` may use `vhost` at all: it has permissions there, as RabbitMQ requires.
    pub fn check_vhost(&self, vhost: &str, user: &str) -> Result<(), Refused> {
        match self.permissions_of(vhost, user) {
            Some(_) => Ok(()),
            None => Err(Refused(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            ))),
        }
    }

    /// Whether `user` has `perm` on the resource `name` of `kind` in `vhost`.
    pub fn check(
        &self,
        vhost: &str,
        user: &str,
        perm: Perm,
        kind: ResourceKind,
        name: &str,
    ) -> Result<(), Refused> {
        let allowed = self
            .permissions_of(vhost, user)
            .is_some_and(|p| p.allows(perm, kind, name));
        if allowed {
            return Ok(());
        }
        let shown = match (kind, name) {
            (ResourceKind::Exchange, "") => "amq.default",
            _ => name,
        };
        Err(Refused(format!(
            "access to {} '{shown}' in vhost '{vhost}' refused for user '{user}'",
            kind.as_str()
        )))
    }

    /// Whether `user` may write (publish) or read (bind, subscribe) `routing_key` on the topic
    /// exchange `exchange`. Without topic permissions on that exchange everything is allowed,
    /// as in RabbitMQ.
    pub fn check_topic(
        &self,
        perm: Perm,
        exchange: &str,
        routing_key: &str,
        vars: TopicVars<'_>,
    ) -> Result<(), Refused> {
        let verdict = {
            let st = self.read_state();
            let entry = st
                .topic
                .get(&key_pair(vars.vhost, vars.username))
                .and_then(|m| m.get(exchange));
            match entry {
                None => true,
                Some(t) => {
                    let (fixed, source) = match perm {
                        Perm::Write => (&t.write, &t.spec.write),
                        _ => (&t.read, &t.spec.read),
                    };
                    match fixed {
                        Some(p) => p.matches(routing_key),
                        None => self.matches_expanded(&expand(source, vars), routing_key),
                    }
                }
            }
        };
        if verdict {
            return Ok(());
        }
        Err(Refused(format!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            vars.vhost, vars.username
        )))
    }

    /// Whether `user` has topic permissions on `exchange` in `vhost` (else none are checked).
    pub fn has_topic_permissions(&self, vhost: &str, user: &str, exchange: &str) -> bool {
        self.read_state()
            .topic
            .get(&key_pair(vhost, user))
            .is_some_and(|m| m.contains_key(exchange))
    }

    /// Matches an expanded topic expression, compiling each distinct one once.
    fn matches_expanded(&self, pattern: &str, routing_key: &str) -> bool {
        let mut cache = self.expanded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(pattern) {
            return p.matches(routing_key);
        }
        let Ok(p) = Pattern::new(pattern) else {
            return false;
        };
        let ok = p.matches(routing_key);
        if cache.len() >= EXPANDED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(pattern.to_owned(), p);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;

    fn access() -> Access {
        let config = Config::parse(DEFAULT_CONFIG).unwrap();
        Access::seeded(&config, &["/".to_owned()], None)
    }

    #[test]
    fn guest_is_loopback_only_also_over_ipv6() {
        let a = access();
        for local in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(
                a.authenticate("guest", "guest", local.parse().unwrap())
                    .is_ok(),
                "{local}"
            );
        }
        for remote in ["10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1"] {
            assert_eq!(
                a.authenticate("guest", "guest", remote.parse().unwrap()),
                Err(AuthError::LoopbackOnly("guest".into())),
                "{remote}"
            );
        }
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(a.authenticate("guest", "nope", local).is_err());
        assert!(a.authenticate("nobody", "guest", local).is_err());
    }

    #[test]
    fn no_plain_text_password_is_kept() {
        let a = access();
        let users = a.users();
        assert_eq!(users.len(), 1);
        assert_ne!(users[0].password_hash, "guest");
        assert_eq!(users[0].hashing_algorithm, password::SHA256_NAME);
        assert!(
            !format!("{a:?}").contains("\"guest\", tags")
                && !format!("{a:?}").contains("password: \"guest\"")
        );
    }

    #[test]
    fn permissions_and_refusal_texts() {
        let a = access();
        a.put_user("u", PasswordHash::new("p"), &[]);
        assert_eq!(
            a.check_vhost("/", "u").unwrap_err().0,
            "access to vhost '/' refused for user 'u'"
        );
        let spec = PermissionSpec {
            configure: "^u-".into(),
            write: "^amq\\.default$".into(),
            read: "".into(),
        };
        let g0 = a.generation();
        a.set_permissions("/", "u", &spec).unwrap();
        assert!(a.generation() > g0);
        assert!(a.check_vhost("/", "u").is_ok());
        assert!(a
            .check("/", "u", Perm::Configure, ResourceKind::Queue, "u-q")
            .is_ok());
        assert_eq!(
            a.check("/", "u", Perm::Configure, ResourceKind::Queue, "q")
                .unwrap_err()
                .0,
            "access to queue 'q' in vhost '/' refused for user 'u'"
        );
        assert!(a
            .check("/", "u", Perm::Write, ResourceKind::Exchange, "")
            .is_ok());
        assert_eq!(
            a.check("/", "u", Perm::Read, ResourceKind::Exchange, "")
                .unwrap_err()
                .0,
            "access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        );
        assert!(a.clear_permissions("/", "u").is_some());
        assert!(a.clear_permissions("/", "u").is_none());
        assert!(a.check_vhost("/", "u").is_err());
        assert_eq!(
            a.set_permissions("/", "ghost", &spec),
            Err(AccessError::NoSuchUser("ghost".into()))
        );
    }

    #[test]
    fn publish_verdicts_are_kept_until_access_control_changes() {
        let a = access();
        a.put_user("u", PasswordHash::new("p"), &[]);
        let spec = |write: &str| PermissionSpec {
            configure: "".into(),
            write: write.into(),
            read: "".into(),
        };
        a.set_permissions("/", "u", &spec("^(x|y)$")).unwrap();
        let mut v = PublishVerdicts::default();
        for exchange in ["x", "x", "y", "x", "y", "y"] {
            assert_eq!(v.check(&a, "/", "u", exchange), Ok(false), "{exchange}");
        }
        assert!(v.check(&a, "/", "u", "z").is_err());
        // A change of permissions makes every cached verdict stale, the last one included.
        a.set_permissions("/", "u", &spec("^y$")).unwrap();
        assert!(v.check(&a, "/", "u", "x").is_err());
        assert_eq!(v.check(&a, "/", "u", "y"), Ok(false));
        assert_eq!(v.check(&a, "/", "u", "y"), Ok(false));
        a.set_permissions("/", "u", &spec("^x$")).unwrap();
        assert!(v.check(&a, "/", "u", "y").is_err());
        assert_eq!(v.check(&a, "/", "u", "x"), Ok(false));
    }

    #[test]
    fn topic_permissions_with_variables() {
        let a = access();
        a.put_user("dev1", PasswordHash::new("p"), &[]);
        let vars = |client_id| TopicVars {
            username: "dev1",
            vhost: "/",
            client_id,
        };
        // No topic permission on the exchange: everything goes.
        assert!(a
            .check_topic(Perm::Write, "amq.topic", "any.key", vars(""))
            .is_ok());
        a.set_topic_permissions(
            "/",
            "dev1",
            &TopicPermissionSpec {
                exchange: "amq.topic".into(),
                write: "^devices\\.{username}\\.".into(),
                read: "^cmd\\.{client_id}$".into(),
            },
        )
        .unwrap();
        assert!(a
            .check_topic(Perm::Write, "amq.topic", "devices.dev1.temp", vars(""))
            .is_ok());
        assert_eq!(
            a.check_topic(Perm::Write, "amq.topic", "devices.dev2.temp", vars("")).unwrap_err().0,
            "access to topic 'devices.dev2.temp' in exchange 'amq.topic' in vhost '/' refused for user 'dev1'"
        );
        assert!(a
            .check_topic(Perm::Read, "amq.topic", "cmd.c7", vars("c7"))
            .is_ok());
        assert!(a
            .check_topic(Perm::Read, "amq.topic", "cmd.c7", vars("c8"))
            .is_err());
        // Other exchanges are not restricted.
        assert!(a.check_topic(Perm::Read, "other", "x", vars("")).is_ok());
        assert!(a.clear_topic_permissions("/", "dev1", None).is_some());
        assert!(a
            .check_topic(Perm::Write, "amq.topic", "devices.dev2.temp", vars(""))
            .is_ok());
    }

    #[test]
    fn deleting_a_user_drops_its_grants() {
        let a = access();
        assert!(a.check_vhost("/", "guest").is_ok());
        a.delete_user("guest").unwrap();
        assert!(a.check_vhost("/", "guest").is_err());
        assert!(a.permissions().is_empty());
        assert!(a.delete_user("guest").is_err());
    }
}
