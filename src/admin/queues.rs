//! `/api/queues`: list, declare, delete, purge and get messages from queues, with RabbitMQ's
//! paths, JSON fields and status codes.

use super::access::{bad_request, change_refused, not_found};
use super::json::{field_table_to_json, json_to_field_table};
use super::listing::{respond, respond_in, ListQuery};
use super::messages::{encode_payload, properties_to_json};
use super::reply::{core_error, flag, vhost, NotFound, API_CONNECTION};
use super::{node_name, visible_vhosts};
use crate::cluster::definitions;
use crate::core::access::User;
use crate::core::stats::{key_of, message_stats_json, QUEUE_FIELDS};
use crate::core::vhost::QueueSpec;
use crate::core::{Broker, Queue, VHost};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/queues", get(list_all))
        .route("/api/queues/{vhost}", get(list_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
}

/// A queue as RabbitMQ's management API shows it, with its counters and the sampler's rates.
/// `node` is [`node_name`], looked up once per listing. A listing (`live` false) takes the
/// figures a queue held on another node last had; one queue's own page asks its home.
pub(super) fn queue_json(b: &Broker, node: &str, q: &Arc<Queue>, live: bool) -> Value {
    let s = if live { q.stats() } else { q.stats_recent() };
    let rates = b.stats.table().rates(key_of(q));
    let exclusive_tag = q
        .consumers()
        .into_iter()
        .find(|(c, _)| c.exclusive)
        .map(|(c, _)| c.tag);
    let queue_type = q
        .arguments
        .get("x-queue-type")
        .and_then(|v| v.as_str())
        .unwrap_or("classic")
        .to_owned();
    let policy = b.policy_set().for_queue(&q.vhost, &q.name);
    let mut s = s;
    if let Some(held) = q
        .replica()
        .filter(|r| !r.is_leader())
        .and_then(|r| r.messages())
    {
        // Not served here: the group's messages as this replica holds them.
        s.ready = held;
    }
    let mut out = json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "owner_pid_details": q.exclusive_owner.map(|id| json!({"name": id.to_string()})),
        "arguments": field_table_to_json(&q.arguments),
        "node": q.home_node().unwrap_or(node),
        "state": "running",
        "type": queue_type,
        "consumers": s.consumers,
        "consumer_capacity": if s.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if s.consumers > 0 { 1.0 } else { 0.0 },
        "exclusive_consumer_tag": exclusive_tag,
        "messages_ready": s.ready,
        "messages_unacknowledged": s.unacked,
        "messages": s.ready + s.unacked,
        "message_bytes_ready": s.ready_bytes,
        "memory": q.memory_bytes(),
        "policy": policy.as_ref().map(|p| p.name.clone()),
        "effective_policy_definition": policy
            .as_ref()
            .map_or_else(|| json!({}), |p| field_table_to_json(&p.definition)),
        "message_stats": message_stats_json(&s.counters.counts(), &rates, QUEUE_FIELDS),
    });
    if let (Some(r), Some(map)) = (q.replica(), out.as_object_mut()) {
        // As RabbitMQ lists a quorum queue: its leader and members.
        map.insert("leader".into(), json!(r.leader()));
        map.insert("members".into(), json!(r.members()));
    }
    out
}

fn queues_of(b: &Broker, vhosts: &[Arc<VHost>]) -> Vec<Value> {
    let node = node_name(b);
    vhosts
        .iter()
        .flat_map(|vh| vh.queues())
        .map(|q| queue_json(b, &node, &q, false))
        .collect()
}

async fn list_all(
    State(b): B,
    Extension(user): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond(queues_of(&b, &visible_vhosts(&b, &user)), &q)
}

/// The vhost in a path, if this user may see into it (else 404, as for a missing one).
pub(super) fn visible(b: &Broker, user: &User, name: &str) -> Result<Arc<VHost>, NotFound> {
    let vh = vhost(b, name)?;
    if visible_vhosts(b, user).iter().any(|v| v.name == vh.name) {
        Ok(vh)
    } else {
        Err(NotFound)
    }
}

async fn list_in(
    State(b): B,
    Extension(user): Extension<User>,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond_in(&b, &user, &vh, &q, |vh| queues_of(&b, &[vh]))
}

async fn show(
    State(b): B,
    Extension(user): Extension<User>,
    Path((vh, name)): Path<(String, String)>,
) -> Response {
    let vh = match visible(&b, &user, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    match vh.queue(&name) {
        Some(q) => Json(queue_json(&b, &node_name(&b), &q, true)).into_response(),
        None => not_found(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct QueueBody {
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Option<Value>,
}

/// PUT: declares the queue (201), or checks that an existing one is equivalent (204).
async fn declare(
    State(b): B,
    Path((vh, name)): Path<(String, String)>,
    body: Option<Json<QueueBody>>,
) -> Response {
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let arguments = match json_to_field_table(body.arguments.as_ref()) {
        Ok(a) => a,
        Err(e) => return bad_request(e),
    };
    let spec = QueueSpec {
        name,
        // RabbitMQ's management API declares durable queues unless told otherwise.
        durable: body.durable.unwrap_or(true),
        exclusive: false,
        auto_delete: body.auto_delete,
        arguments,
    };
    if let Err(e) = definitions::check_queue_type(&b, &vh, &spec) {
        return core_error(e);
    }
    // Clustered: committed first, then declared here again, which checks it as unclustered.
    if definitions::needs_catching_up(&b, &vh, &spec) {
        if let Err(e) = definitions::caught_up(&b).await {
            return change_refused(e);
        }
    }
    let replicated = definitions::queue_declared(&b, &vh, &spec);
    if let Some(change) = replicated.clone() {
        if let Err(e) = definitions::commit(&b, change).await {
            return change_refused(e);
        }
    }
    match vh.declare_queue(spec, false, API_CONNECTION) {
        Ok(d) => {
            vh.definitions_synced().await;
            if d.created || replicated.is_some() {
                StatusCode::CREATED.into_response()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        Err(e) => core_error(e),
    }
}

async fn remove(
    State(b): B,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    if vh.queue(&name).is_none() {
        // Clustered, not here may only mean not applied here yet.
        if let Err(e) = definitions::caught_up(&b).await {
            return change_refused(e);
        }
        if vh.queue(&name).is_none() {
            return not_found();
        }
    }
    let if_unused = flag(q.get("if-unused"));
    let if_empty = flag(q.get("if-empty"));
    if let Some(change) = definitions::queue_deleted(&b, &vh, &name) {
        if let Err(e) = vh.check_delete_queue(&name, if_unused, if_empty, API_CONNECTION) {
            return core_error(e);
        }
        if let Err(e) = definitions::commit(&b, change).await {
            return change_refused(e);
        }
    }
    match vh.delete_queue(&name, if_unused, if_empty, API_CONNECTION) {
        Ok(_) => {
            vh.definitions_synced().await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => core_error(e),
    }
}

async fn purge(State(b): B, Path((vh, name)): Path<(String, String)>) -> Response {
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    match vh.queue_for(&name, API_CONNECTION) {
        Ok(q) => {
            q.purge();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => core_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct GetBody {
    count: Option<u32>,
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    truncate: Option<usize>,
}

fn auto() -> String {
    "auto".into()
}

/// POST `/get`: takes up to `count` messages; `ack_requeue_true` and `reject_requeue_true` put
/// them back (marked redelivered) once all are taken, `ack_requeue_false` removes them and
/// `reject_requeue_false` rejects them (dead-lettered when the queue has a dead-letter
/// exchange).
async fn get_messages(
    State(b): B,
    Path((vh, name)): Path<(String, String)>,
    body: Option<Json<GetBody>>,
) -> Response {
    let Some(Json(body)) = body else {
        return bad_request("expected count, ackmode and encoding");
    };
    let requeue = match body.ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => Some(true),
        "ack_requeue_false" => Some(false),
        "reject_requeue_false" => None,
        other => return bad_request(format!("Unknown ackmode: {other}")),
    };
    if body.encoding != "auto" && body.encoding != "base64" {
        return bad_request(format!("Unknown encoding: {}", body.encoding));
    }
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    let q = match vh.queue_for(&name, API_CONNECTION) {
        Ok(q) => q,
        Err(e) => return core_error(e),
    };
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..body.count.unwrap_or(1) {
        let (got, effects) = q.get(requeue == Some(false));
        vh.apply(&q, effects);
        let Some((d, left)) = got else {
            break;
        };
        let m = &d.message;
        let (payload, payload_encoding) = encode_payload(&m.body, &body.encoding, body.truncate);
        out.push(json!({
            "payload_bytes": m.body.len(),
            "redelivered": d.redelivered,
            "exchange": m.exchange,
            "routing_key": m.routing_key,
            "message_count": left,
            "properties": properties_to_json(m.properties()),
            "payload": payload,
            "payload_encoding": payload_encoding,
        }));
        taken.push(d.id);
    }
    let effects = match requeue {
        Some(true) => q.requeue(&taken),
        Some(false) => Default::default(),
        // Dead-lettered through the vhost when the queue has a dead-letter exchange.
        None => q.reject(&taken),
    };
    vh.apply(&q, effects);
    Json(Value::Array(out)).into_response()
}

async fn bindings(
    State(b): B,
    Extension(user): Extension<User>,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let vh = match visible(&b, &user, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    if vh.queue(&name).is_none() {
        return not_found();
    }
    let items = super::bindings::bindings_json(&vh)
        .into_iter()
        .filter(|bd| bd["destination_type"] == "queue" && bd["destination"] == name.as_str())
        .collect();
    respond(items, &q)
}
