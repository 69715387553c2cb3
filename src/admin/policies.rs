//! `/api/policies[/{vhost}[/{name}]]`: run-time policies in RabbitMQ's JSON, persisted as keyed
//! records of kind `POLICY` and answered once durable. Setting or clearing one applies at once to
//! the queues that exist in its vhost. Policies from the configuration file stay as they are and
//! are not listed here.

use super::access::{bad_request, changed, not_found};
use super::json::field_table_to_json;
use super::listing::{respond, ListQuery};
use super::queues::visible;
use super::reply::vhost;
use crate::cluster::definitions::Change;
use crate::core::access::User;
use crate::core::policy::{Policy, RuntimePolicy};
use crate::core::Broker;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/policies", get(list_all))
        .route("/api/policies/{vhost}", get(list_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(show).put(put).delete(remove),
        )
}

pub(super) fn policy_json(p: &Policy) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern(),
        "apply-to": p.apply_to_str(),
        "definition": field_table_to_json(&p.definition),
        "priority": p.priority,
    })
}

/// The run-time policies, of one vhost or all.
pub(super) fn export(b: &Broker, vhost: Option<&str>) -> Vec<Value> {
    b.policy_set()
        .runtime()
        .iter()
        .filter(|p| vhost.is_none() || p.vhost.as_deref() == vhost)
        .map(|p| {
            let mut v = policy_json(p);
            if vhost.is_some() {
                // Per-vhost definitions carry no vhost fields, as RabbitMQ's.
                if let Some(m) = v.as_object_mut() {
                    m.remove("vhost");
                }
            }
            v
        })
        .collect()
}

/// A policy from a definitions file, into its own vhost or `into`.
pub(super) fn import(v: &Value, into: Option<&str>) -> Result<RuntimePolicy, String> {
    let mut v = v.clone();
    if let (Some(into), Some(m)) = (into, v.as_object_mut()) {
        m.insert("vhost".into(), json!(into));
    }
    serde_json::from_value(v).map_err(|e| format!("invalid policy: {e}"))
}

async fn list_all(
    State(b): B,
    Extension(user): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    let visible: Vec<String> = super::visible_vhosts(&b, &user)
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let items = b
        .policy_set()
        .runtime()
        .iter()
        .filter(|p| p.vhost.as_ref().is_some_and(|v| visible.contains(v)))
        .map(policy_json)
        .collect();
    respond(items, &q)
}

async fn list_in(
    State(b): B,
    Extension(user): Extension<User>,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let vh = match visible(&b, &user, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    let items = b
        .policy_set()
        .runtime()
        .iter()
        .filter(|p| p.vhost.as_deref() == Some(vh.name.as_str()))
        .map(policy_json)
        .collect();
    respond(items, &q)
}

async fn show(
    State(b): B,
    Extension(user): Extension<User>,
    Path((vh, name)): Path<(String, String)>,
) -> Response {
    if let Err(r) = visible(&b, &user, &vh) {
        return r.into_response();
    }
    match b
        .policy_set()
        .runtime()
        .iter()
        .find(|p| p.vhost.as_deref() == Some(vh.as_str()) && p.name == name)
    {
        Some(p) => Json(policy_json(p)).into_response(),
        None => not_found(),
    }
}

#[derive(Debug, Deserialize)]
struct PolicyBody {
    pattern: String,
    #[serde(rename = "apply-to")]
    apply_to: Option<String>,
    #[serde(default)]
    priority: i32,
    definition: serde_json::Map<String, Value>,
}

async fn put(
    State(b): B,
    Path((vh, name)): Path<(String, String)>,
    body: Option<Json<PolicyBody>>,
) -> Response {
    if let Err(r) = vhost(&b, &vh) {
        return r.into_response();
    }
    let Some(Json(body)) = body else {
        return bad_request("expected pattern, definition, priority and apply-to");
    };
    let record = RuntimePolicy {
        vhost: vh,
        name,
        pattern: body.pattern,
        apply_to: body.apply_to.unwrap_or_else(|| "all".into()),
        priority: body.priority,
        definition: body.definition,
    };
    let created = !b.policy_set().has_runtime(&record.vhost, &record.name);
    changed(&b, Change::SetPolicy(record), created).await
}

async fn remove(State(b): B, Path((vhost, name)): Path<(String, String)>) -> Response {
    changed(&b, Change::ClearPolicy { vhost, name }, false).await
}
