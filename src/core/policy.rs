//! Policies from the configuration (`[[policies]]`): queue arguments applied to every queue whose
//! name matches a pattern, as RabbitMQ policies do. The matching policy with the highest priority
//! applies; an argument given on the queue itself wins over the policy's.

use super::queue::args::{QueueArgs, QUEUE_ARGUMENTS};
use crate::config::PolicyConfig;
use regex::Regex;
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

/// Every configured policy.
#[derive(Debug, Clone, Default)]
pub struct Policies(Vec<Policy>);

impl Policies {
    pub fn from_config(configs: &[PolicyConfig]) -> Result<Self, PolicyError> {
        configs
            .iter()
            .map(Policy::from_config)
            .collect::<Result<_, _>>()
            .map(Policies)
    }

    /// The policy for queue `name` in `vhost`: the highest-priority match (the first one
    /// configured among equals).
    pub fn for_queue(&self, vhost: &str, name: &str) -> Option<&Policy> {
        self.0
            .iter()
            .filter(|p| p.apply_to != ApplyTo::Exchanges)
            .filter(|p| p.vhost.as_deref().is_none_or(|v| v == vhost))
            .filter(|p| p.pattern.is_match(name))
            .fold(None, |best: Option<&Policy>, p| match best {
                Some(b) if b.priority >= p.priority => Some(b),
                _ => Some(p),
            })
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
