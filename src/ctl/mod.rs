//! `switchboard ctl`: lists a running broker's queues, exchanges, bindings and connections,
//! and manages its users, vhosts and permissions ([`manage`]), through its HTTP API, printing
//! tab-separated columns as `rabbitmqctl` does.

pub mod api;
pub mod cluster;
pub mod manage;
pub mod operate;
pub mod quorum;

use api::Api;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the broker's HTTP API at {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("unexpected answer from {url}: {reason}")]
    Answer { url: String, reason: String },
    #[error("{path}: {status} {reason}")]
    Refused {
        path: String,
        status: u16,
        reason: String,
    },
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Usage(String),
    #[error("unknown column '{column}' for {command}; known: {known}")]
    UnknownColumn {
        command: &'static str,
        column: String,
        known: String,
    },
}

/// One listing command: the API path, the columns it knows and those shown by default.
pub struct Listing {
    pub command: &'static str,
    pub path: &'static str,
    pub what: &'static str,
    pub known: &'static [&'static str],
    pub default: &'static [&'static str],
    /// Whether it is listed per vhost (filtered by `--vhost`).
    pub per_vhost: bool,
}

pub const LISTINGS: &[Listing] = &[
    Listing {
        command: "list_queues",
        path: "/api/queues",
        what: "queues",
        known: &[
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
            "messages_ready",
            "messages_unacknowledged",
            "messages",
            "message_bytes_ready",
            "consumers",
            "vhost",
            "type",
            "leader",
            "members",
        ],
        default: &["name", "messages"],
        per_vhost: true,
    },
    Listing {
        command: "list_exchanges",
        path: "/api/exchanges",
        what: "exchanges",
        known: &[
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
            "arguments",
            "vhost",
        ],
        default: &["name", "type"],
        per_vhost: true,
    },
    Listing {
        command: "list_bindings",
        path: "/api/bindings",
        what: "bindings",
        known: &[
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
            "vhost",
        ],
        default: &[
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ],
        per_vhost: true,
    },
    Listing {
        command: "list_channels",
        path: "/api/channels",
        what: "channels",
        known: &[
            "name",
            "number",
            "user",
            "vhost",
            "state",
            "transactional",
            "confirm",
            "consumer_count",
            "messages_unacknowledged",
            "messages_unconfirmed",
            "messages_uncommitted",
            "acks_uncommitted",
            "prefetch_count",
            "global_prefetch_count",
        ],
        default: &["name", "user", "consumer_count", "messages_unacknowledged"],
        per_vhost: false,
    },
    Listing {
        command: "list_connections",
        path: "/api/connections",
        what: "connections",
        known: &[
            "name",
            "user",
            "peer_host",
            "peer_port",
            "state",
            "channels",
            "protocol",
            "vhost",
        ],
        default: &["user", "peer_host", "peer_port", "state"],
        per_vhost: false,
    },
];

/// The JSON field a column reads (bindings use rabbitmqctl's column names).
fn field_for(column: &str) -> &str {
    match column {
        "source_name" => "source",
        "destination_name" => "destination",
        "destination_kind" => "destination_type",
        other => other,
    }
}

pub(crate) fn cell(row: &Value, column: &str) -> String {
    if column == "source_kind" {
        return "exchange".into();
    }
    match row.get(field_for(column)) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => {
            // rabbitmqctl prints tables as [{key,value}, ...]
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{{\"{k}\",{v}}}")).collect();
            format!("[{}]", parts.join(","))
        }
        Some(other) => other.to_string(),
    }
}

/// Fetches a listing and renders it as lines of tab-separated cells, header first.
pub fn run_listing(
    listing: &Listing,
    base_url: &str,
    user: &str,
    password: &str,
    vhost: &str,
    columns: &[String],
) -> Result<Vec<String>, CtlError> {
    let columns: Vec<String> = if columns.is_empty() {
        listing.default.iter().map(|s| s.to_string()).collect()
    } else {
        columns.to_vec()
    };
    for c in &columns {
        if !listing.known.contains(&c.as_str()) {
            return Err(CtlError::UnknownColumn {
                command: listing.command,
                column: c.clone(),
                known: listing.known.join(", "),
            });
        }
    }
    let api = Api::new(base_url, user, password);
    if listing.per_vhost {
        operate::require_vhost(&api, vhost)?;
    }
    let rows = api.get_ok(listing.path)?;
    let Value::Array(rows) = rows else {
        return Err(CtlError::Answer {
            url: listing.path.to_owned(),
            reason: "expected a JSON array".into(),
        });
    };
    let mut lines = vec![columns.join("\t")];
    for row in rows {
        if listing.per_vhost && row.get("vhost").and_then(Value::as_str) != Some(vhost) {
            continue;
        }
        let cells: Vec<String> = columns.iter().map(|c| cell(&row, c)).collect();
        lines.push(cells.join("\t"));
    }
    Ok(lines)
}
