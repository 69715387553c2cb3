//! Policies from the configuration (`[[policies]]`): queue arguments applied to every queue whose
//! name matches a pattern, as RabbitMQ policies do. The matching policy with the highest priority
//! applies; an argument given on the queue itself wins over the policy's.

use super::queue::args::{QueueArgs, QUEUE_ARGUMENTS};
use crate::config::PolicyConfig;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::RwLock;
use switchboard_amqp::{FieldTable, FieldValue};

/// Whether `key` is a definition key a policy may set: a queue argument without its `x-`.
fn is_policy_key(key: &str) -> bool {
    QUEUE_ARGUMENTS
        .iter()
        .any(|a| a.strip_prefix("x-") == Some(key))
}

/// What a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy '{policy}': invalid pattern: {reason}")]
    Pattern { policy: String, reason: String },
    #[error(
        "policy '{policy}': apply_to must be \"queues\", \"exchanges\" or \"all\", not {got:?}"
    )]
    ApplyTo { policy: String, got: String },
    #[error("policy '{policy}': unknown definition key '{key}' (known: the queue arguments without 'x-')")]
    UnknownKey { policy: String, key: String },
    #[error("policy '{policy}': definition '{key}' must be a string, an integer or a boolean")]
    ValueType { policy: String, key: String },
    #[error("policy '{policy}': {reason}")]
    Invalid { policy: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pattern: Regex,
    pub apply_to: ApplyTo,
    pub priority: i32,
    /// The vhost it is for; None: every vhost.
    pub vhost: Option<String>,
    /// Argument names without `x-`, as RabbitMQ policy definitions write them.
    pub definition: FieldTable,
}

impl Policy {
    pub fn from_config(c: &PolicyConfig) -> Result<Self, PolicyError> {
        let pattern = Regex::new(&c.pattern).map_err(|e| PolicyError::Pattern {
            policy: c.name.clone(),
            reason: e.to_string(),
        })?;
        let apply_to = match c.apply_to.as_str() {
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "all" => ApplyTo::All,
            other => {
                return Err(PolicyError::ApplyTo {
                    policy: c.name.clone(),
                    got: other.to_owned(),
                })
            }
        };
        let mut definition = FieldTable::new();
        for (key, value) in &c.definition {
            if !is_policy_key(key) {
                return Err(PolicyError::UnknownKey {
                    policy: c.name.clone(),
                    key: key.clone(),
                });
            }
            let v = match value {
                toml::Value::String(s) => FieldValue::string(s.clone()),
                toml::Value::Integer(i) => FieldValue::I64(*i),
                toml::Value::Boolean(b) => FieldValue::Bool(*b),
                _ => {
                    return Err(PolicyError::ValueType {
                        policy: c.name.clone(),
                        key: key.clone(),
                    })
                }
            };
            definition.insert(key.clone(), v);
        }
        // The same checks as for queue arguments, so a bad value is an error at start, not a
        // silently ignored policy.
        let as_arguments: FieldTable = definition
            .iter()
            .map(|(k, v)| (format!("x-{k}"), v.clone()))
            .collect();
        QueueArgs::parse(&as_arguments, None).map_err(|e| PolicyError::Invalid {
            policy: c.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Policy {
            name: c.name.clone(),
            pattern,
            apply_to,
            priority: c.priority,
            vhost: c.vhost.clone(),
            definition,
        })
    }
}

/// The policies in force: those of the configuration (fixed for the broker's life) and the
/// run-time ones set through the management API (each in one vhost, persisted by the API as
/// keyed records of kind `POLICY`). Queues declared or recovered get the policy in force then;
/// a run-time change is applied to existing queues by `VHost::apply_policies`.
#[derive(Debug, Default)]
pub struct Policies {
    configured: Vec<Policy>,
    runtime: RwLock<Vec<Policy>>,
}

/// A run-time policy as stored and as the management API writes it (RabbitMQ's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimePolicy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    #[serde(default)]
    pub priority: i32,
    pub definition: serde_json::Map<String, serde_json::Value>,
}

fn all() -> String {
    "all".into()
}

impl RuntimePolicy {
    /// The store key: vhost and name, NUL-separated (neither may contain NUL in AMQP).
    pub fn key(vhost: &str, name: &str) -> Vec<u8> {
        format!("{vhost}\0{name}").into_bytes()
    }

    /// Compiles it with the checks a configured policy gets.
    pub fn compile(&self) -> Result<Policy, PolicyError> {
        let mut definition = toml::Table::new();
        for (k, v) in &self.definition {
            let value = match v {
                serde_json::Value::String(s) => toml::Value::String(s.clone()),
                serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => toml::Value::Integer(i),
                    None => {
                        return Err(PolicyError::ValueType {
                            policy: self.name.clone(),
                            key: k.clone(),
                        })
                    }
                },
                _ => {
                    return Err(PolicyError::ValueType {
                        policy: self.name.clone(),
                        key: k.clone(),
                    })
                }
            };
            definition.insert(k.clone(), value);
        }
        Policy::from_config(&PolicyConfig {
            name: self.name.clone(),
            pattern: self.pattern.clone(),
            apply_to: self.apply_to.clone(),
            priority: self.priority,
            vhost: Some(self.vhost.clone()),
            definition,
        })
    }
}

impl Policy {
    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    /// `apply-to` as RabbitMQ writes it.
    pub fn apply_to_str(&self) -> &'static str {
        match self.apply_to {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }

    /// The record a run-time policy is kept as, which [`RuntimePolicy::compile`] makes this
    /// from; `None` for a configured policy of every vhost. A definition holds only what
    /// [`Policy::from_config`] makes: strings, integers and booleans.
    pub fn runtime_record(&self) -> Option<RuntimePolicy> {
        let definition = self
            .definition
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    FieldValue::Bool(b) => serde_json::Value::Bool(*b),
                    other => match other.as_i64() {
                        Some(i) => i.into(),
                        None => other.as_str()?.into(),
                    },
                };
                Some((k.clone(), value))
            })
            .collect::<Option<_>>()?;
        Some(RuntimePolicy {
            vhost: self.vhost.clone()?,
            name: self.name.clone(),
            pattern: self.pattern().to_owned(),
            apply_to: self.apply_to_str().to_owned(),
            priority: self.priority,
            definition,
        })
    }
}

impl Policies {
    pub fn from_config(configs: &[PolicyConfig]) -> Result<Self, PolicyError> {
        let configured = configs
            .iter()
            .map(Policy::from_config)
            .collect::<Result<_, _>>()?;
        Ok(Policies {
            configured,
            runtime: RwLock::new(Vec::new()),
        })
    }

    fn runtime_list(&self) -> std::sync::RwLockReadGuard<'_, Vec<Policy>> {
        self.runtime.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy for queue `name` in `vhost`: the highest-priority match (the first one
    /// configured among equals, configured before run-time ones).
    pub fn for_queue(&self, vhost: &str, name: &str) -> Option<Policy> {
        let runtime = self.runtime_list();
        self.configured
            .iter()
            .chain(runtime.iter())
            .filter(|p| p.apply_to != ApplyTo::Exchanges)
            .filter(|p| p.vhost.as_deref().is_none_or(|v| v == vhost))
            .filter(|p| p.pattern.is_match(name))
            .fold(None, |best: Option<&Policy>, p| match best {
                Some(b) if b.priority >= p.priority => Some(b),
                _ => Some(p),
            })
            .cloned()
    }

    /// Sets (adds or replaces) a run-time policy; true when it is new.
    pub fn set_runtime(&self, policy: Policy) -> bool {
        let mut runtime = self.runtime.write().unwrap_or_else(|e| e.into_inner());
        match runtime
            .iter_mut()
            .find(|p| p.vhost == policy.vhost && p.name == policy.name)
        {
            Some(existing) => {
                *existing = policy;
                false
            }
            None => {
                runtime.push(policy);
                true
            }
        }
    }

    /// Clears a run-time policy; false when there was none.
    pub fn clear_runtime(&self, vhost: &str, name: &str) -> bool {
        let mut runtime = self.runtime.write().unwrap_or_else(|e| e.into_inner());
        let before = runtime.len();
        runtime.retain(|p| !(p.vhost.as_deref() == Some(vhost) && p.name == name));
        runtime.len() != before
    }

    /// Whether a run-time policy `name` is set in `vhost`.
    pub fn has_runtime(&self, vhost: &str, name: &str) -> bool {
        self.runtime_list()
            .iter()
            .any(|p| p.vhost.as_deref() == Some(vhost) && p.name == name)
    }

    /// The run-time policies, in the order they were first set.
    pub fn runtime(&self) -> Vec<Policy> {
        self.runtime_list().clone()
    }

    /// The configured policies.
    pub fn configured(&self) -> &[Policy] {
        &self.configured
    }

    /// Restores run-time policies from their store records, skipping (with a warning) any
    /// that no longer compile.
    pub fn restore<'a>(&self, records: impl Iterator<Item = &'a [u8]>) {
        for bytes in records {
            let compiled = serde_json::from_slice::<RuntimePolicy>(bytes)
                .map_err(|e| e.to_string())
                .and_then(|r| r.compile().map_err(|e| e.to_string()));
            match compiled {
                Ok(p) => {
                    self.set_runtime(p);
                }
                Err(e) => tracing::warn!("ignoring a stored policy: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, pattern: &str, priority: i32, def: &str) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            pattern: pattern.into(),
            apply_to: "queues".into(),
            priority,
            vhost: None,
            definition: toml::from_str(def).unwrap(),
        }
    }

    #[test]
    fn a_run_time_policy_gives_back_the_record_it_was_compiled_from() {
        let record: RuntimePolicy = serde_json::from_value(serde_json::json!({
            "vhost": "shop",
            "name": "p",
            "pattern": "^t\\.",
            "apply-to": "queues",
            "priority": 3,
            "definition": {"message-ttl": 5000, "dead-letter-exchange": "dlx", "single-active-consumer": true},
        }))
        .unwrap();
        assert_eq!(record.compile().unwrap().runtime_record(), Some(record));
        let configured = Policy::from_config(&config("c", ".*", 0, "max-length = 1")).unwrap();
        assert_eq!(configured.runtime_record(), None);
    }

    #[test]
    fn highest_priority_match_applies() {
        let p = Policies::from_config(&[
            config("low", "^orders", 0, "message-ttl = 1000"),
            config("high", "^orders\\.eu", 5, "max-length = 10"),
            config("other", "^logs", 9, "max-length = 1"),
        ])
        .unwrap();
        assert_eq!(p.for_queue("/", "orders.eu.1").unwrap().name, "high");
        assert_eq!(p.for_queue("/", "orders.us").unwrap().name, "low");
        assert!(p.for_queue("/", "payments").is_none());
    }

    #[test]
    fn bad_policies_are_errors() {
        let err = |c: PolicyConfig| Policy::from_config(&c).unwrap_err().to_string();
        assert!(err(config("p", "(", 0, "")).contains("invalid pattern"));
        assert!(err(config("p", ".*", 0, "ttl = 5")).contains("unknown definition key 'ttl'"));
        assert!(err(config("p", ".*", 0, "message-ttl = -5")).contains("{value_negative,-5}"));
        let mut c = config("p", ".*", 0, "");
        c.apply_to = "queue".into();
        assert!(err(c).contains("apply_to"));
    }
}
