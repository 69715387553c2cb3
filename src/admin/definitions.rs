//! `/api/definitions[/{vhost}]`: export and import users, vhosts, permissions, topic
//! permissions, policies, exchanges, queues and bindings in RabbitMQ's definitions JSON, so a
//! file exported from RabbitMQ imports here and ours imports into RabbitMQ.

use super::access::{bad_request, change_refused, not_found};
use super::json::{field_table_to_json, json_to_field_table};
use super::reply::API_CONNECTION;
use crate::cluster::definitions::{self, commit, Change, ChangeError};
use crate::core::access::password::PasswordHash;
use crate::core::access::permissions::{PermissionSpec, TopicPermissionSpec};
use crate::core::access::records::{PermissionRecord, TopicPermissionRecord, UserRecord};
use crate::core::vhost::{ExchangeSpec, QueueSpec};
use crate::core::{Broker, Destination, VHost};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

/// What every export starts with. `rabbit_version` is what RabbitMQ's import reads to decide
/// the format: ours is that of RabbitMQ 3.10 and later.
fn header() -> serde_json::Map<String, Value> {
    let version = env!("CARGO_PKG_VERSION");
    let mut m = serde_json::Map::new();
    m.insert("rabbit_version".into(), json!(version));
    m.insert("rabbitmq_version".into(), json!(version));
    m.insert("product_name".into(), json!("Switchboard"));
    m.insert("product_version".into(), json!(version));
    m
}

/// Exchanges a client declared: not the default exchange nor the `amq.*` ones every vhost has.
fn declared_exchange(name: &str) -> bool {
    !name.is_empty() && !name.starts_with("amq.")
}

/// The exchanges, queues and bindings of `vh` (with `vhost` fields unless `per_vhost`).
/// Exclusive queues belong to a connection and are left out, as RabbitMQ leaves them out.
fn topology(vh: &VHost, per_vhost: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let with_vhost = |mut v: Value| {
        if !per_vhost {
            v["vhost"] = json!(vh.name);
        }
        v
    };
    let exchanges = vh
        .exchanges()
        .into_iter()
        .filter(|e| declared_exchange(&e.name))
        .map(|e| {
            with_vhost(json!({
                "name": e.name,
                "type": e.type_name(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": field_table_to_json(&e.arguments),
            }))
        })
        .collect();
    let queues = vh
        .queues()
        .into_iter()
        .filter(|q| q.exclusive_owner.is_none())
        .map(|q| {
            with_vhost(json!({
                "name": q.name,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": field_table_to_json(&q.arguments),
            }))
        })
        .collect();
    let bindings = vh
        .bindings()
        .into_iter()
        .filter(|(source, b)| {
            !source.is_empty()
                && match &b.destination {
                    Destination::Queue(q) => q.exclusive_owner.is_none(),
                    Destination::Exchange(_) => true,
                }
        })
        .map(|(source, b)| {
            with_vhost(json!({
                "source": source,
                "destination": b.destination.name(),
                "destination_type": b.destination.kind_str(),
                "routing_key": b.routing_key,
                "arguments": field_table_to_json(&b.arguments),
            }))
        })
        .collect();
    (exchanges, queues, bindings)
}

/// The whole broker's definitions.
pub fn export(b: &Broker) -> Value {
    let mut out = header();
    let users: Vec<Value> = b
        .access
        .users()
        .into_iter()
        .map(|u| {
            json!({
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": u.hashing_algorithm,
                "tags": u.tags,
                "limits": {},
            })
        })
        .collect();
    let vhosts: Vec<Value> = b
        .vhosts()
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "description": "",
                "tags": [],
                "metadata": {"description": "", "tags": []},
            })
        })
        .collect();
    let permissions: Vec<Value> = b
        .access
        .permissions()
        .iter()
        .map(|p| {
            json!({
                "user": p.user, "vhost": p.vhost,
                "configure": p.spec.configure, "write": p.spec.write, "read": p.spec.read,
            })
        })
        .collect();
    let topic_permissions: Vec<Value> = b
        .access
        .topic_permissions()
        .iter()
        .map(|p| {
            json!({
                "user": p.user, "vhost": p.vhost,
                "exchange": p.spec.exchange, "write": p.spec.write, "read": p.spec.read,
            })
        })
        .collect();
    let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for vh in b.vhosts() {
        let (e, q, bd) = topology(&vh, false);
        exchanges.extend(e);
        queues.extend(q);
        bindings.extend(bd);
    }
    out.insert("users".into(), json!(users));
    out.insert("vhosts".into(), json!(vhosts));
    out.insert("permissions".into(), json!(permissions));
    out.insert("topic_permissions".into(), json!(topic_permissions));
    out.insert("parameters".into(), json!([]));
    out.insert("global_parameters".into(), json!([]));
    out.insert("policies".into(), json!(super::policies::export(b, None)));
    out.insert("queues".into(), json!(queues));
    out.insert("exchanges".into(), json!(exchanges));
    out.insert("bindings".into(), json!(bindings));
    Value::Object(out)
}

async fn export_all(State(b): B) -> Json<Value> {
    Json(export(&b))
}

async fn export_vhost(State(b): B, Path(vh): Path<String>) -> Response {
    let Some(vh) = b.vhost(&vh) else {
        return not_found();
    };
    let mut out = header();
    let (exchanges, queues, bindings) = topology(&vh, true);
    out.insert("parameters".into(), json!([]));
    out.insert(
        "policies".into(),
        json!(super::policies::export(&b, Some(&vh.name))),
    );
    out.insert("queues".into(), json!(queues));
    out.insert("exchanges".into(), json!(exchanges));
    out.insert("bindings".into(), json!(bindings));
    Json(Value::Object(out)).into_response()
}

/// A definitions file; every section is optional, as in RabbitMQ.
#[derive(Debug, Default, Deserialize)]
pub struct Definitions {
    #[serde(default)]
    users: Vec<UserRecord>,
    #[serde(default)]
    vhosts: Vec<NamedVHost>,
    #[serde(default)]
    permissions: Vec<PermissionDef>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermissionDef>,
    #[serde(default)]
    parameters: Vec<Value>,
    /// RabbitMQ exports its cluster id here; it names nothing in this broker.
    #[serde(default)]
    #[allow(dead_code)]
    global_parameters: Vec<Value>,
    #[serde(default)]
    policies: Vec<Value>,
    #[serde(default)]
    queues: Vec<QueueDefJson>,
    #[serde(default)]
    exchanges: Vec<ExchangeDefJson>,
    #[serde(default)]
    bindings: Vec<BindingDefJson>,
}

#[derive(Debug, Deserialize)]
struct NamedVHost {
    name: String,
}

#[derive(Debug, Deserialize)]
struct PermissionDef {
    user: String,
    vhost: String,
    #[serde(flatten)]
    spec: PermissionSpec,
}

#[derive(Debug, Deserialize)]
struct TopicPermissionDef {
    user: String,
    vhost: String,
    #[serde(flatten)]
    spec: TopicPermissionSpec,
}

#[derive(Debug, Deserialize)]
struct QueueDefJson {
    name: String,
    vhost: Option<String>,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ExchangeDefJson {
    name: String,
    vhost: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct BindingDefJson {
    source: String,
    vhost: Option<String>,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    arguments: Option<Value>,
}

fn yes() -> bool {
    true
}

/// Why an import stopped: RabbitMQ answers these with 400 and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("vhost '{0}' does not exist and is not in the file")]
    NoVHost(String),
    /// A clustered node could not commit a change (503 `no_quorum` in a minority).
    #[error(transparent)]
    Cluster(ChangeError),
}

/// Makes one imported change through the decision point (the cluster, when clustered).
async fn make(b: &Broker, change: Change) -> Result<u64, ImportError> {
    commit(b, change).await.map_err(|e| match e {
        ChangeError::Cluster(_) => ImportError::Cluster(e),
        other => ImportError::Invalid(other.to_string()),
    })
}

/// The vhost an object goes to: the one the path names for a per-vhost import, else its own.
fn target(b: &Broker, into: Option<&str>, own: Option<&str>) -> Result<Arc<VHost>, ImportError> {
    let name = into.or(own).unwrap_or("/");
    b.vhost(name)
        .ok_or_else(|| ImportError::NoVHost(name.to_owned()))
}

/// Applies a definitions file; `into` is the vhost of a per-vhost import (the objects' own
/// `vhost` fields are then ignored, as RabbitMQ ignores them). Returns once every change is
/// durable; stops at the first object refused (what came before it stays, as in RabbitMQ).
pub async fn import(b: &Broker, defs: Definitions, into: Option<&str>) -> Result<(), ImportError> {
    let invalid = |e: &dyn std::fmt::Display| ImportError::Invalid(e.to_string());
    if let Some(p) = defs.parameters.first() {
        let component = p.get("component").and_then(Value::as_str).unwrap_or("?");
        return Err(ImportError::Invalid(format!(
            "runtime parameters of component '{component}' are not supported by this broker"
        )));
    }
    let mut lsn = 0;
    for u in defs.users {
        PasswordHash::from_rabbit(&u.password_hash, &u.hashing_algorithm)
            .map_err(|e| invalid(&format!("user '{}': {e}", u.name)))?;
        lsn = lsn.max(make(b, Change::PutUser(u)).await?);
    }
    for v in defs.vhosts {
        lsn = lsn.max(make(b, Change::PutVHost(v.name)).await?);
    }
    for p in defs.permissions {
        let record = PermissionRecord {
            user: p.user,
            vhost: p.vhost,
            spec: p.spec,
        };
        lsn = lsn.max(make(b, Change::SetPermissions(record)).await?);
    }
    for p in defs.topic_permissions {
        let record = TopicPermissionRecord {
            user: p.user,
            vhost: p.vhost,
            spec: p.spec,
        };
        lsn = lsn.max(make(b, Change::SetTopicPermissions(record)).await?);
    }
    for p in &defs.policies {
        let record = super::policies::import(p, into).map_err(|e| invalid(&e))?;
        lsn = lsn.max(make(b, Change::SetPolicy(record)).await?);
    }
    let mut touched: Vec<Arc<VHost>> = Vec::new();
    for e in defs.exchanges {
        let vh = target(b, into, e.vhost.as_deref())?;
        if !declared_exchange(&e.name) {
            continue;
        }
        let spec = ExchangeSpec {
            name: e.name,
            kind: e.kind,
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments: json_to_field_table(e.arguments.as_ref()).map_err(|e| invalid(&e))?,
        };
        if let Some(change) = definitions::exchange_declared(b, &vh, &spec) {
            make(b, change).await?;
        }
        vh.declare_exchange(spec, false).map_err(|e| invalid(&e))?;
        touched.push(vh);
    }
    for q in defs.queues {
        let vh = target(b, into, q.vhost.as_deref())?;
        let spec = QueueSpec {
            name: q.name,
            durable: q.durable,
            exclusive: false,
            auto_delete: q.auto_delete,
            arguments: json_to_field_table(q.arguments.as_ref()).map_err(|e| invalid(&e))?,
        };
        if let Some(change) = definitions::queue_declared(b, &vh, &spec) {
            make(b, change).await?;
        }
        vh.declare_queue(spec, false, API_CONNECTION)
            .map_err(|e| invalid(&e))?;
        touched.push(vh);
    }
    for bd in defs.bindings {
        let vh = target(b, into, bd.vhost.as_deref())?;
        let args = json_to_field_table(bd.arguments.as_ref()).map_err(|e| invalid(&e))?;
        let ends = (
            bd.source.as_str(),
            bd.destination_type.as_str(),
            bd.destination.as_str(),
        );
        if let Some(change) =
            definitions::binding_changed(b, &vh, true, ends, &bd.routing_key, &args)
        {
            make(b, change).await?;
        }
        let result = match bd.destination_type.as_str() {
            "queue" => vh.bind_queue(
                &bd.destination,
                &bd.source,
                &bd.routing_key,
                &args,
                API_CONNECTION,
            ),
            "exchange" => vh.bind_exchange(&bd.destination, &bd.source, &bd.routing_key, &args),
            other => {
                return Err(ImportError::Invalid(format!(
                    "binding destination_type must be queue or exchange, not '{other}'"
                )))
            }
        };
        result.map_err(|e| invalid(&e))?;
        touched.push(vh);
    }
    b.access.durable(lsn).await;
    for vh in touched {
        vh.definitions_synced().await;
    }
    Ok(())
}

async fn import_answer(
    b: &Broker,
    body: Option<Json<Definitions>>,
    into: Option<&str>,
) -> Response {
    let Some(Json(defs)) = body else {
        return bad_request("expected a definitions JSON object");
    };
    match import(b, defs, into).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(ImportError::Cluster(e)) => change_refused(e),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn import_all(State(b): B, body: Option<Json<Definitions>>) -> Response {
    import_answer(&b, body, None).await
}

async fn import_vhost(
    State(b): B,
    Path(vh): Path<String>,
    body: Option<Json<Definitions>>,
) -> Response {
    if b.vhost(&vh).is_none() {
        return not_found();
    }
    import_answer(&b, body, Some(&vh)).await
}
