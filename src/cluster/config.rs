//! The `[cluster]` section: who this node is, where other nodes reach it, whom it asks to join,
//! the shared secret, and the Raft timings.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name (`/api/cluster-name`); nodes of differently named clusters refuse
    /// each other.
    #[serde(default = "default_name")]
    pub name: String,
    /// This node's name; empty means `switchboard@<host name>` (RabbitMQ's `rabbit@host`).
    #[serde(default)]
    pub node_name: String,
    /// The inter-node listener; empty (the default) means not clustered.
    #[serde(default)]
    pub listen: String,
    /// The address other nodes dial to reach this one; empty means the bound listen address.
    #[serde(default)]
    pub advertise: String,
    /// `host:port` inter-node addresses of other nodes, asked in turn to let this one join.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// The shared secret every node of the cluster holds (as RabbitMQ's Erlang cookie).
    #[serde(default)]
    pub cookie: String,
    /// A file holding the cookie (trailing white space ignored); used when `cookie` is empty.
    #[serde(default)]
    pub cookie_file: String,
    /// How often the leader sends heartbeats, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for this long (up to a quarter more, at random) after
    /// the leader's lease stands for election, in milliseconds (see
    /// [`ClusterConfig::election_timeout_max_ms`]).
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// How long a change waits to be committed by a majority before it is refused, and the
    /// timeout of every inter-node connect and read, in milliseconds.
    #[serde(default = "default_operation_timeout_ms")]
    pub operation_timeout_ms: u64,
    /// How many nodes a quorum queue is replicated on when its declaration does not say
    /// (`x-quorum-initial-group-size`); at most the number of members.
    #[serde(default = "default_quorum_replicas")]
    pub quorum_replicas: u64,
    /// A member that has not answered the metadata leader for this long, in milliseconds, is
    /// down: the records of the transient and exclusive queues homed there are removed (as
    /// RabbitMQ deletes them when it sees their node go), so that a client declares the name
    /// again on another node, and the MQTT client ids held there move to the leader, which
    /// expires their sessions. 0: never.
    #[serde(default = "default_node_down_after_ms")]
    pub node_down_after_ms: u64,
    /// Mutual TLS between nodes: this node's certificate chain and key (PEM), and the
    /// authority every node's certificate is verified against. All empty: plain TCP.
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    #[serde(default)]
    pub tls_ca_file: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: default_name(),
            node_name: String::new(),
            listen: String::new(),
            advertise: String::new(),
            seeds: Vec::new(),
            cookie: String::new(),
            cookie_file: String::new(),
            heartbeat_ms: default_heartbeat_ms(),
            election_timeout_ms: default_election_timeout_ms(),
            operation_timeout_ms: default_operation_timeout_ms(),
            quorum_replicas: default_quorum_replicas(),
            node_down_after_ms: default_node_down_after_ms(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
        }
    }
}

fn default_name() -> String {
    "switchboard".into()
}
fn default_heartbeat_ms() -> u64 {
    250
}
fn default_election_timeout_ms() -> u64 {
    1000
}
fn default_operation_timeout_ms() -> u64 {
    5000
}
fn default_node_down_after_ms() -> u64 {
    10_000
}
fn default_quorum_replicas() -> u64 {
    3
}

/// Why the `[cluster]` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("cluster.listen: '{0}' is not an address (ip:port)")]
    Listen(String),
    #[error("cluster.{0}: {1}")]
    Invalid(&'static str, String),
    #[error("clustered (cluster.listen is set) but no cookie: set cluster.cookie or cluster.cookie_file")]
    NoCookie,
    #[error("cannot read cluster.cookie_file {path}: {source}")]
    CookieFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ClusterConfig {
    /// Whether this node is clustered at all.
    pub fn enabled(&self) -> bool {
        !self.listen.trim().is_empty()
    }

    /// This node's name: the configured one, or `switchboard@<host name>`.
    pub fn node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        let host = crate::sys::host_name().unwrap_or_else(|| "localhost".into());
        format!("switchboard@{host}")
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ClusterConfigError> {
        self.listen
            .trim()
            .parse()
            .map_err(|_| ClusterConfigError::Listen(self.listen.clone()))
    }

    /// The upper end of the randomised election timeout. openraft makes it the leader's lease
    /// as well: a follower votes for no other candidate, and stands itself only after the
    /// lease and its own timeout have passed since it last heard the leader, so a failover
    /// takes about twice this. A quarter of the timeout as spread keeps two followers from
    /// standing at once (a vote's round trip is far shorter) with the lease kept short;
    /// twice the timeout (openraft's usual spread) made failover 5 s with the defaults.
    pub fn election_timeout_max_ms(&self) -> u64 {
        self.election_timeout_ms + (self.election_timeout_ms / 4).max(1)
    }

    /// The heartbeat and leader lease, for standing for election early (see
    /// [`super::failover`]).
    pub fn failover_timings(&self) -> super::failover::Timings {
        super::failover::Timings {
            heartbeat: std::time::Duration::from_millis(self.heartbeat_ms),
            lease: std::time::Duration::from_millis(self.election_timeout_max_ms()),
        }
    }

    /// Checks what can be checked without touching the network or the cookie file.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        self.listen_addr()?;
        if self.heartbeat_ms == 0 {
            return Err(ClusterConfigError::Invalid(
                "heartbeat_ms",
                "must be at least 1".into(),
            ));
        }
        if self.election_timeout_ms <= self.heartbeat_ms {
            return Err(ClusterConfigError::Invalid(
                "election_timeout_ms",
                "must be longer than heartbeat_ms".into(),
            ));
        }
        if self.operation_timeout_ms == 0 {
            return Err(ClusterConfigError::Invalid(
                "operation_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if self.cookie.is_empty() && self.cookie_file.is_empty() {
            return Err(ClusterConfigError::NoCookie);
        }
        Ok(())
    }

    /// The shared secret: `cookie`, else the contents of `cookie_file`. Never empty.
    pub fn read_cookie(&self) -> Result<Vec<u8>, ClusterConfigError> {
        let cookie = if !self.cookie.is_empty() {
            self.cookie.clone()
        } else if !self.cookie_file.is_empty() {
            let path = PathBuf::from(&self.cookie_file);
            std::fs::read_to_string(&path)
                .map_err(|source| ClusterConfigError::CookieFile { path, source })?
                .trim_end()
                .to_owned()
        } else {
            String::new()
        };
        if cookie.is_empty() {
            return Err(ClusterConfigError::NoCookie);
        }
        Ok(cookie.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn not_clustered_by_default_and_needs_no_cookie() {
        let c = ClusterConfig::default();
        assert!(!c.enabled());
        c.validate().unwrap();
        assert!(c.node_name().starts_with("switchboard@"));
    }

    #[test]
    fn clustered_without_a_cookie_is_refused() {
        let c = ClusterConfig {
            listen: "127.0.0.1:0".into(),
            ..ClusterConfig::default()
        };
        assert!(matches!(c.validate(), Err(ClusterConfigError::NoCookie)));
        let with = ClusterConfig {
            cookie: "s3cret".into(),
            ..c
        };
        with.validate().unwrap();
        assert_eq!(with.read_cookie().unwrap(), b"s3cret");
    }

    #[test]
    fn cookie_file_is_read_and_trimmed() {
        let path = std::env::temp_dir().join(format!("sb-cookie-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let c = ClusterConfig {
            listen: "127.0.0.1:0".into(),
            cookie_file: path.display().to_string(),
            ..ClusterConfig::default()
        };
        c.validate().unwrap();
        assert_eq!(c.read_cookie().unwrap(), b"from-file");
        std::fs::remove_file(&path).unwrap();
    }
}
