//! RabbitMQ's permissions: per user and vhost, a `configure`, `write` and `read` regular
//! expression matched (unanchored) against a resource's name; an empty expression matches
//! nothing. Topic permissions add per-exchange `write` and `read` expressions matched against
//! routing keys, with `{username}`, `{vhost}` and `{client_id}` expanded first.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What an operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

/// What a permission is checked on; RabbitMQ's resource kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Exchange,
    Queue,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Exchange => "exchange",
            ResourceKind::Queue => "queue",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regular expression '{pattern}': {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// A permission expression, compiled once when it is set.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, PatternError> {
        // As RabbitMQ: "" grants nothing, i.e. it means ^$.
        let effective = if source.is_empty() { "^$" } else { source };
        let regex = Regex::new(effective).map_err(|e| PatternError {
            pattern: source.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }
}

/// The three expressions as written (RabbitMQ's JSON field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionSpec {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's permissions in one vhost, compiled.
#[derive(Debug, Clone)]
pub struct Permissions {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
}

impl Permissions {
    pub fn new(spec: &PermissionSpec) -> Result<Self, PatternError> {
        Ok(Permissions {
            configure: Pattern::new(&spec.configure)?,
            write: Pattern::new(&spec.write)?,
            read: Pattern::new(&spec.read)?,
        })
    }

    pub fn spec(&self) -> PermissionSpec {
        PermissionSpec {
            configure: self.configure.source().to_owned(),
            write: self.write.source().to_owned(),
            read: self.read.source().to_owned(),
        }
    }

    /// Whether `perm` is granted on a resource called `name`. The default exchange is
    /// checked under the name `amq.default`, as RabbitMQ does.
    pub fn allows(&self, perm: Perm, kind: ResourceKind, name: &str) -> bool {
        let name = match (kind, name) {
            (ResourceKind::Exchange, "") => "amq.default",
            _ => name,
        };
        match perm {
            Perm::Configure => self.configure.matches(name),
            Perm::Write => self.write.matches(name),
            Perm::Read => self.read.matches(name),
        }
    }
}

/// Topic permission expressions on one exchange, as written (RabbitMQ's JSON field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermissionSpec {
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// What a topic-permission expression's variables stand for on one connection.
#[derive(Debug, Clone, Copy)]
pub struct TopicVars<'a> {
    pub username: &'a str,
    pub vhost: &'a str,
    /// The MQTT client id; empty for protocols that have none.
    pub client_id: &'a str,
}

/// Expands `{username}`, `{vhost}` and `{client_id}` in a topic-permission expression. The
/// values are escaped so a name with regex metacharacters matches only itself.
pub fn expand(pattern: &str, vars: TopicVars<'_>) -> String {
    pattern
        .replace("{username}", &regex::escape(vars.username))
        .replace("{vhost}", &regex::escape(vars.vhost))
        .replace("{client_id}", &regex::escape(vars.client_id))
}

/// Whether a pattern uses any variable (then it is compiled per connection, not once).
pub fn has_variables(pattern: &str) -> bool {
    ["{username}", "{vhost}", "{client_id}"]
        .iter()
        .any(|v| pattern.contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(c: &str, w: &str, r: &str) -> Permissions {
        Permissions::new(&PermissionSpec {
            configure: c.into(),
            write: w.into(),
            read: r.into(),
        })
        .unwrap()
    }

    #[test]
    fn unanchored_and_empty_means_nothing() {
        let p = perms("^app-", "", ".*");
        assert!(p.allows(Perm::Configure, ResourceKind::Queue, "app-1"));
        assert!(!p.allows(Perm::Configure, ResourceKind::Queue, "my-app-1"));
        assert!(!p.allows(Perm::Write, ResourceKind::Exchange, "x"));
        assert!(!p.allows(Perm::Write, ResourceKind::Exchange, ""));
        assert!(p.allows(Perm::Read, ResourceKind::Queue, "anything"));
        // Unanchored: "app" matches inside a name.
        let p = perms("app", "app", "app");
        assert!(p.allows(Perm::Read, ResourceKind::Queue, "my-app-q"));
    }

    #[test]
    fn default_exchange_is_amq_default() {
        let p = perms("", "^amq\\.default$", "");
        assert!(p.allows(Perm::Write, ResourceKind::Exchange, ""));
        assert!(!p.allows(Perm::Write, ResourceKind::Queue, ""));
    }

    #[test]
    fn bad_expressions_are_refused() {
        let e = Permissions::new(&PermissionSpec {
            configure: "(".into(),
            write: ".*".into(),
            read: ".*".into(),
        })
        .unwrap_err();
        assert_eq!(e.pattern, "(");
    }

    #[test]
    fn variables_expand_escaped() {
        let vars = TopicVars {
            username: "a.b",
            vhost: "/",
            client_id: "c1",
        };
        assert_eq!(expand("^{username}\\.{client_id}$", vars), "^a\\.b\\.c1$");
        assert!(has_variables("x.{vhost}"));
        assert!(!has_variables("x.y"));
    }
}
