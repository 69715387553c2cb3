//! Users, vhosts, permissions and topic permissions as keyed records in the store, in the JSON
//! RabbitMQ's definitions export uses for them (so a record reads like an exported entry).

use super::password::{HashError, PasswordHash};
use super::permissions::{PermissionSpec, TopicPermissionSpec};
use crate::store::compose_key;
use serde::{Deserialize, Serialize};

/// A user as RabbitMQ's definitions JSON carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: String,
    pub hashing_algorithm: String,
    #[serde(deserialize_with = "tags_list_or_text")]
    pub tags: Vec<String>,
}

/// Tags: a list (RabbitMQ 3.9+) or a comma-separated string (older exports).
fn tags_list_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Tags::deserialize(d)? {
        Tags::List(l) => l,
        Tags::Text(t) => split_tags(&t),
    })
}

/// Tags from rabbitmqctl's or the HTTP API's comma-separated form.
pub fn split_tags(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

impl UserRecord {
    pub fn new(name: &str, hash: &PasswordHash, tags: &[String]) -> Self {
        UserRecord {
            name: name.to_owned(),
            password_hash: hash.to_base64(),
            hashing_algorithm: hash.algorithm().name().to_owned(),
            tags: tags.to_vec(),
        }
    }

    pub fn hash(&self) -> Result<PasswordHash, HashError> {
        PasswordHash::from_rabbit(&self.password_hash, &self.hashing_algorithm)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VHostRecord {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionRecord {
    pub user: String,
    pub vhost: String,
    #[serde(flatten)]
    pub spec: PermissionSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermissionRecord {
    pub user: String,
    pub vhost: String,
    #[serde(flatten)]
    pub spec: TopicPermissionSpec,
}

pub fn permission_key(vhost: &str, user: &str) -> Vec<u8> {
    compose_key(&[vhost.as_bytes(), user.as_bytes()])
}

pub fn topic_permission_key(vhost: &str, user: &str, exchange: &str) -> Vec<u8> {
    compose_key(&[vhost.as_bytes(), user.as_bytes(), exchange.as_bytes()])
}

/// A record's JSON (these types always serialize).
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_rabbitmq_exported_user() {
        // From `rabbitmqctl export_definitions` (3.12): tags as a list.
        let json = r#"{"name":"app","password_hash":"kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR","hashing_algorithm":"rabbit_password_hashing_sha256","tags":["monitoring"],"limits":{}}"#;
        let u: UserRecord = serde_json::from_str(json).unwrap();
        assert_eq!(u.tags, vec!["monitoring"]);
        assert!(u.hash().unwrap().verify("test12"));
        // Older exports: tags as text.
        let json = r#"{"name":"a","password_hash":"","hashing_algorithm":"x","tags":"administrator,management"}"#;
        let u: UserRecord = serde_json::from_str(json).unwrap();
        assert_eq!(u.tags, vec!["administrator", "management"]);
    }

    #[test]
    fn permission_json_is_rabbitmqs() {
        let r = PermissionRecord {
            user: "u".into(),
            vhost: "/".into(),
            spec: PermissionSpec {
                configure: ".*".into(),
                write: "w".into(),
                read: "".into(),
            },
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&r)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"user":"u","vhost":"/","configure":".*","write":"w","read":""})
        );
    }
}
