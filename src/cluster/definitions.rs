//! Replicated definitions: the one place where a change to vhosts, users, permissions, topic
//! permissions and policies is made. An unclustered broker applies a [`Change`] at once, as it
//! always has; a clustered one proposes it to the metadata group as a record under a key, and
//! every node (the proposer too) makes it live when it applies the committed entry, through
//! [`BrokerDefinitions`]. A node cut off from a majority refuses the change
//! ([`ClusterError::NoQuorum`]) and changes nothing.
//!
//! Keys are `<kind>/<JSON array of the key's fields>`, e.g. `permission/["/","guest"]`; a
//! record's value is the same JSON the broker's store keeps for it.

use super::{Apply, BoxFuture, ClusterError, Command, Consensus};
use crate::core::access::permissions::Permissions;
use crate::core::access::records::{PermissionRecord, TopicPermissionRecord, UserRecord};
use crate::core::access::{Access, AccessError};
use crate::core::policy::RuntimePolicy;
use crate::core::Broker;
use serde_json::Value;
use std::sync::{Arc, Weak};

/// The kinds of definition record, in the order a node applies them when it takes a whole
/// snapshot: what a record names (a vhost, a user) before the record.
const KINDS: [&str; 5] = [VHOST, USER, PERMISSION, TOPIC_PERMISSION, POLICY];
const VHOST: &str = "vhost";
const USER: &str = "user";
const PERMISSION: &str = "permission";
const TOPIC_PERMISSION: &str = "topic-permission";
const POLICY: &str = "policy";

/// The key of the record of `kind` with `fields`.
pub fn key(kind: &str, fields: &[&str]) -> String {
    // A list of strings always serializes.
    format!(
        "{kind}/{}",
        serde_json::to_string(fields).unwrap_or_default()
    )
}

/// A key's kind and fields; `None` for a key that is not a definition's.
fn parse_key(key: &str) -> Option<(&str, Vec<String>)> {
    let (kind, fields) = key.split_once('/')?;
    let fields: Vec<String> = serde_json::from_str(fields).ok()?;
    Some((kind, fields))
}

/// Where a record of this key comes when a node applies many at once (unknown keys last).
pub fn apply_order(key: &str) -> usize {
    let kind = key.split_once('/').map_or(key, |(k, _)| k);
    KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// What the change removes (or names) does not exist.
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl ChangeError {
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ChangeError::NotFound
                | ChangeError::Access(AccessError::NoSuchUser(_) | AccessError::NoSuchVHost(_))
        )
    }
}

/// One change to the definitions.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutVHost(String),
    /// With everything in it: queues, exchanges, permissions, policies.
    DeleteVHost(String),
    PutUser(UserRecord),
    /// With its permissions and topic permissions.
    DeleteUser(String),
    SetPermissions(PermissionRecord),
    ClearPermissions {
        vhost: String,
        user: String,
    },
    SetTopicPermissions(TopicPermissionRecord),
    /// On one exchange, or (None) on all of them.
    ClearTopicPermissions {
        vhost: String,
        user: String,
        exchange: Option<String>,
    },
    SetPolicy(RuntimePolicy),
    ClearPolicy {
        vhost: String,
        name: String,
    },
}

/// Makes `change`: here when unclustered, else through the cluster (refused with
/// [`ClusterError::NoQuorum`] in a minority). Returns the store's LSN to wait for before
/// answering (0 when clustered: the change is durable here once committed and applied).
pub async fn commit(b: &Broker, change: Change) -> Result<u64, ChangeError> {
    match b.cluster.get() {
        None => change.apply(b),
        Some(cluster) => {
            change.check(b)?;
            cluster.propose(change.command(b, cluster.as_ref())).await?;
            Ok(0)
        }
    }
}

fn put<T: serde::Serialize>(key: String, record: &T) -> Result<Command, ChangeError> {
    let value = serde_json::to_value(record).map_err(|e| ChangeError::Invalid(e.to_string()))?;
    Ok(Command::Put { key, value })
}

/// Deletes of every record of `kind` whose fields `which` selects.
fn deletes_of(
    cluster: &dyn Consensus,
    kind: &str,
    which: impl Fn(&[String]) -> bool,
) -> Vec<Command> {
    cluster
        .list(&format!("{kind}/"))
        .into_iter()
        .filter(|(k, _)| parse_key(k).is_some_and(|(_, f)| which(&f)))
        .map(|(key, _)| Command::Delete { key })
        .collect()
}

impl Change {
    /// Applies the change to this broker's live state and its store; returns the LSN that
    /// makes it durable. The only place a definition is changed, clustered or not.
    pub fn apply(&self, b: &Broker) -> Result<u64, ChangeError> {
        Ok(match self {
            Change::PutVHost(name) => b.add_vhost(name),
            Change::DeleteVHost(name) => b.delete_vhost(name).ok_or(ChangeError::NotFound)?,
            Change::PutUser(r) => {
                let hash = r.hash().map_err(AccessError::from)?;
                b.access.put_user(&r.name, hash, &r.tags)
            }
            Change::DeleteUser(name) => b.delete_user(name)?,
            Change::SetPermissions(r) => {
                if b.vhost(&r.vhost).is_none() {
                    return Err(ChangeError::NotFound);
                }
                b.access.set_permissions(&r.vhost, &r.user, &r.spec)?
            }
            Change::ClearPermissions { vhost, user } => b
                .access
                .clear_permissions(vhost, user)
                .ok_or(ChangeError::NotFound)?,
            Change::SetTopicPermissions(r) => {
                if b.vhost(&r.vhost).is_none() {
                    return Err(ChangeError::NotFound);
                }
                b.access.set_topic_permissions(&r.vhost, &r.user, &r.spec)?
            }
            Change::ClearTopicPermissions {
                vhost,
                user,
                exchange,
            } => b
                .access
                .clear_topic_permissions(vhost, user, exchange.as_deref())
                .ok_or(ChangeError::NotFound)?,
            Change::SetPolicy(r) => b.set_policy(r).map_err(ChangeError::Invalid)?.1,
            Change::ClearPolicy { vhost, name } => {
                b.clear_policy(vhost, name).ok_or(ChangeError::NotFound)?
            }
        })
    }

    /// Refuses here, before proposing, what [`Change::apply`] would refuse, so that a
    /// committed change applies on every node.
    fn check(&self, b: &Broker) -> Result<(), ChangeError> {
        let found = |yes: bool| {
            if yes {
                Ok(())
            } else {
                Err(ChangeError::NotFound)
            }
        };
        match self {
            Change::PutVHost(_) => Ok(()),
            Change::DeleteVHost(name) => found(b.vhost(name).is_some()),
            Change::PutUser(r) => r
                .hash()
                .map(|_| ())
                .map_err(|e| AccessError::from(e).into()),
            Change::DeleteUser(name) => found(b.access.user(name).is_some()),
            Change::SetPermissions(r) => {
                found(b.vhost(&r.vhost).is_some())?;
                found(b.access.user(&r.user).is_some())?;
                Permissions::new(&r.spec).map_err(AccessError::from)?;
                Ok(())
            }
            Change::ClearPermissions { vhost, user } => {
                found(b.access.permissions_of(vhost, user).is_some())
            }
            Change::SetTopicPermissions(r) => {
                found(b.vhost(&r.vhost).is_some())?;
                found(b.access.user(&r.user).is_some())?;
                Ok(Access::check_topic_spec(&r.spec)?)
            }
            Change::ClearTopicPermissions {
                vhost,
                user,
                exchange,
            } => found(match exchange {
                Some(x) => b.access.has_topic_permissions(vhost, user, x),
                None => b.access.has_any_topic_permissions(vhost, user),
            }),
            Change::SetPolicy(r) => {
                found(b.vhost(&r.vhost).is_some())?;
                r.compile()
                    .map(|_| ())
                    .map_err(|e| ChangeError::Invalid(e.to_string()))
            }
            Change::ClearPolicy { vhost, name } => found(b.policy_set().has_runtime(vhost, name)),
        }
    }

    /// The command that replicates the change. A deletion also removes the records of what
    /// goes with it (a user's permissions, a vhost's contents), so that the records stay what
    /// every node holds.
    fn command(&self, b: &Broker, cluster: &dyn Consensus) -> Command {
        let built = match self {
            Change::PutVHost(name) => put(key(VHOST, &[name]), &serde_json::json!({"name": name})),
            Change::DeleteVHost(name) => {
                let mut all = vec![Command::Delete {
                    key: key(VHOST, &[name]),
                }];
                for kind in &KINDS[2..] {
                    all.extend(deletes_of(cluster, kind, |f| f.first() == Some(name)));
                }
                Ok(Command::Batch(all))
            }
            Change::PutUser(r) => put(key(USER, &[&r.name]), r),
            Change::DeleteUser(name) => {
                let mut all = vec![Command::Delete {
                    key: key(USER, &[name]),
                }];
                for kind in [PERMISSION, TOPIC_PERMISSION] {
                    all.extend(deletes_of(cluster, kind, |f| f.get(1) == Some(name)));
                }
                Ok(Command::Batch(all))
            }
            Change::SetPermissions(r) => put(key(PERMISSION, &[&r.vhost, &r.user]), r),
            Change::ClearPermissions { vhost, user } => Ok(Command::Delete {
                key: key(PERMISSION, &[vhost, user]),
            }),
            Change::SetTopicPermissions(r) => put(
                key(TOPIC_PERMISSION, &[&r.vhost, &r.user, &r.spec.exchange]),
                r,
            ),
            Change::ClearTopicPermissions {
                vhost,
                user,
                exchange,
            } => {
                // All of them: those this node holds, as every node holds the same.
                let exchanges: Vec<String> = match exchange {
                    Some(x) => vec![x.clone()],
                    None => b
                        .access
                        .topic_permissions()
                        .into_iter()
                        .filter(|t| t.vhost == *vhost && t.user == *user)
                        .map(|t| t.spec.exchange)
                        .collect(),
                };
                Ok(Command::Batch(
                    exchanges
                        .iter()
                        .map(|x| Command::Delete {
                            key: key(TOPIC_PERMISSION, &[vhost, user, x]),
                        })
                        .collect(),
                ))
            }
            Change::SetPolicy(r) => put(key(POLICY, &[&r.vhost, &r.name]), r),
            Change::ClearPolicy { vhost, name } => Ok(Command::Delete {
                key: key(POLICY, &[vhost, name]),
            }),
        };
        // The records serialize: they came from JSON or from the broker's own state.
        built.unwrap_or(Command::Batch(Vec::new()))
    }

    /// The change a committed record (`None`: removed) under `key` makes; `None` when the key
    /// is not a definition's.
    pub fn from_record(key: &str, value: Option<&Value>) -> Result<Option<Change>, String> {
        let Some((kind, fields)) = parse_key(key) else {
            return Ok(None);
        };
        fn record<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
            T::deserialize(v).map_err(|e| e.to_string())
        }
        let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
        Ok(Some(match (kind, value) {
            (VHOST, Some(_)) => Change::PutVHost(field(0)),
            (VHOST, None) => Change::DeleteVHost(field(0)),
            (USER, Some(v)) => Change::PutUser(record(v)?),
            (USER, None) => Change::DeleteUser(field(0)),
            (PERMISSION, Some(v)) => Change::SetPermissions(record(v)?),
            (PERMISSION, None) => Change::ClearPermissions {
                vhost: field(0),
                user: field(1),
            },
            (TOPIC_PERMISSION, Some(v)) => Change::SetTopicPermissions(record(v)?),
            (TOPIC_PERMISSION, None) => Change::ClearTopicPermissions {
                vhost: field(0),
                user: field(1),
                exchange: Some(field(2)),
            },
            (POLICY, Some(v)) => Change::SetPolicy(record(v)?),
            (POLICY, None) => Change::ClearPolicy {
                vhost: field(0),
                name: field(1),
            },
            _ => return Ok(None),
        }))
    }
}

/// Applies committed definition records to a broker. Holds it weakly: the broker holds the
/// cluster, which holds this.
pub struct BrokerDefinitions {
    broker: Weak<Broker>,
}

impl BrokerDefinitions {
    pub fn new(broker: &Arc<Broker>) -> Self {
        BrokerDefinitions {
            broker: Arc::downgrade(broker),
        }
    }
}

impl Apply for BrokerDefinitions {
    fn apply(&self, key: &str, value: Option<&Value>) -> u64 {
        let Some(b) = self.broker.upgrade() else {
            return 0;
        };
        let change = match Change::from_record(key, value) {
            Ok(Some(change)) => change,
            Ok(None) => return 0,
            Err(e) => {
                tracing::warn!(key, error = %e, "cluster: ignoring a definition record");
                return 0;
            }
        };
        match change.apply(&b) {
            Ok(lsn) => lsn,
            // Already gone (a deletion applied again, or one that went with another).
            Err(e) if e.is_not_found() => 0,
            Err(e) => {
                tracing::warn!(key, error = %e, "cluster: a definition did not apply here");
                0
            }
        }
    }

    fn durable(&self, lsn: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(b) = self.broker.upgrade() {
                b.access.durable(lsn).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_slashes_in_names() {
        let k = key(PERMISSION, &["/", "a/b"]);
        assert_eq!(k, r#"permission/["/","a/b"]"#);
        let (kind, fields) = parse_key(&k).unwrap();
        assert_eq!(kind, PERMISSION);
        assert_eq!(fields, ["/", "a/b"]);
        assert_eq!(
            Change::from_record(&k, None).unwrap(),
            Some(Change::ClearPermissions {
                vhost: "/".into(),
                user: "a/b".into()
            })
        );
    }

    #[test]
    fn vhosts_apply_before_what_lives_in_them_and_other_keys_are_not_definitions() {
        assert!(apply_order(&key(VHOST, &["v"])) < apply_order(&key(PERMISSION, &["v", "u"])));
        assert!(apply_order(&key(USER, &["u"])) < apply_order(&key(POLICY, &["v", "p"])));
        assert_eq!(Change::from_record("k/1", None).unwrap(), None);
        assert_eq!(Change::from_record("before", None).unwrap(), None);
    }
}
