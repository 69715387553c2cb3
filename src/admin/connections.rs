//! `/api/connections` (list, show, close with an `X-Reason`), `/api/channels` and
//! `/api/consumers`, in
//! RabbitMQ's JSON. Users that are neither administrators nor monitoring see only their own
//! connections and the consumers in vhosts they may use.

use super::access::not_found;
use super::listing::{respond, respond_in, ListQuery};
use super::visible_vhosts;
use crate::core::access::{tag, User};
use crate::core::broker::ConnectionEntry;
use crate::core::sampler::session_of;
use crate::core::stats::{key_of, message_stats_json, CONNECTION_FIELDS};
use crate::core::{Broker, VHost};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/connections", get(list_all))
        .route("/api/connections/{name}", get(show).delete(close))
        .route(
            "/api/connections/username/{username}",
            get(of_user).delete(close_of_user),
        )
        .route("/api/vhosts/{vhost}/connections", get(list_in))
        .route("/api/channels", get(channels_all))
        .route("/api/channels/{name}", get(channel))
        .route("/api/vhosts/{vhost}/channels", get(channels_in))
        .route("/api/connections/{name}/channels", get(channels_of))
        .route("/api/consumers", get(consumers_all))
        .route("/api/consumers/{vhost}", get(consumers_in))
}

/// A connection as RabbitMQ's management API shows it; `node` is [`super::node_name`], looked
/// up once per listing.
pub(super) fn connection_json(b: &Broker, node: &str, c: &Arc<ConnectionEntry>) -> Value {
    let (user, vhost) = session_of(c);
    let (recv_oct, send_oct) = c.stats.octets();
    let (table_rates, (recv_rate, send_rate)) = {
        let table = b.stats.table();
        (table.rates(key_of(c)), table.octet_rates(key_of(c)))
    };
    let connected_at = c
        .connected_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "name": c.name(),
        "node": node,
        "type": "network",
        "protocol": c.protocol,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "user": user,
        "vhost": vhost,
        "channels": c.channels.load(std::sync::atomic::Ordering::Relaxed),
        "state": if user.is_empty() {
            "starting"
        } else if c.in_flow.load(std::sync::atomic::Ordering::Relaxed) {
            "flow"
        } else {
            "running"
        },
        "connected_at": connected_at,
        "ssl": false,
        "client_properties": client_properties(c),
        "recv_oct": recv_oct,
        "recv_oct_details": {"rate": recv_rate},
        "send_oct": send_oct,
        "send_oct_details": {"rate": send_rate},
        "message_stats": message_stats_json(&c.stats.counts(), &table_rates, CONNECTION_FIELDS),
    })
}

/// What the client said about itself: for MQTT its client id (RabbitMQ's MQTT plugin shows it
/// as `client_properties.client_id`).
fn client_properties(c: &ConnectionEntry) -> Value {
    let id = c.client_id.lock().map(|s| s.clone()).unwrap_or_default();
    if id.is_empty() {
        json!({})
    } else {
        json!({ "client_id": id })
    }
}

/// Whether `me` sees every user's connections (RabbitMQ: administrators and monitoring users),
/// not only its own.
fn sees_all(me: &User) -> bool {
    me.is_administrator() || me.has_tag(tag::MONITORING)
}

/// The connections `me` may see, in `vhost` if given.
fn seen_connections(b: &Broker, me: &User, vhost: Option<&str>) -> Vec<Arc<ConnectionEntry>> {
    let all = sees_all(me);
    b.connections()
        .into_iter()
        .filter(|c| {
            let (user, vh) = session_of(c);
            (all || user == me.name) && vhost.is_none_or(|v| v == vh)
        })
        .collect()
}

/// The connections `me` may see, as JSON.
fn connections_for(b: &Broker, me: &User, vhost: Option<&str>) -> Vec<Value> {
    let node = super::node_name(b);
    seen_connections(b, me, vhost)
        .iter()
        .map(|c| connection_json(b, &node, c))
        .collect()
}

async fn list_all(
    State(b): B,
    Extension(me): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond(connections_for(&b, &me, None), &q)
}

async fn list_in(
    State(b): B,
    Extension(me): Extension<User>,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond_in(&b, &me, &vh, &q, |vh| {
        connections_for(&b, &me, Some(&vh.name))
    })
}

fn find(b: &Broker, me: &User, name: &str) -> Option<Arc<ConnectionEntry>> {
    let sees_all = sees_all(me);
    b.connections()
        .into_iter()
        .find(|c| c.name() == name && (sees_all || session_of(c).0 == me.name))
}

async fn show(State(b): B, Extension(me): Extension<User>, Path(name): Path<String>) -> Response {
    match find(&b, &me, &name) {
        Some(c) => Json(connection_json(&b, &super::node_name(&b), &c)).into_response(),
        None => not_found(),
    }
}

/// DELETE: asks the connection to close, telling the client the `X-Reason` header's text
/// (RabbitMQ's default otherwise).
/// What a closed client is told: the `X-Reason` header, or RabbitMQ's default.
fn close_reason(headers: &HeaderMap) -> String {
    headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_owned()
}

async fn close(
    State(b): B,
    Extension(me): Extension<User>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(c) = find(&b, &me, &name) else {
        return not_found();
    };
    c.force_close(close_reason(&headers));
    StatusCode::NO_CONTENT.into_response()
}

/// The connections of user `username` that `me` may see.
fn connections_of_user(b: &Broker, me: &User, username: &str) -> Vec<Arc<ConnectionEntry>> {
    seen_connections(b, me, None)
        .into_iter()
        .filter(|c| session_of(c).0 == username)
        .collect()
}

/// `GET /api/connections/username/{username}` (rabbitmqadmin's `list user_connections`).
async fn of_user(
    State(b): B,
    Extension(me): Extension<User>,
    Path(username): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let node = super::node_name(&b);
    let items = connections_of_user(&b, &me, &username)
        .iter()
        .map(|c| connection_json(&b, &node, c))
        .collect();
    respond(items, &q)
}

/// `DELETE /api/connections/username/{username}`: closes every connection of the user.
async fn close_of_user(
    State(b): B,
    Extension(me): Extension<User>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Response {
    let reason = close_reason(&headers);
    for c in connections_of_user(&b, &me, &username) {
        c.force_close(reason.clone());
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Every consumer of the queues in `vhosts`, as RabbitMQ lists them.
pub(super) fn consumers_of(b: &Broker, vhosts: &[Arc<VHost>]) -> Vec<Value> {
    let connections = b.connections();
    let node = super::node_name(b);
    let mut out = Vec::new();
    for vh in vhosts {
        for q in vh.queues() {
            for (c, priority) in q.consumers() {
                let conn = connections.iter().find(|e| e.id == c.owner);
                // MQTT and STOMP consumers have no channel: number 0 and the connection's name,
                // so that RabbitMQ's clients (which require both) can read them.
                let channel_details = conn.map_or_else(
                    || json!({}),
                    |e| {
                        let (name, number) = match c.sink.channel_number() {
                            Some(n) => (format!("{} ({n})", e.name()), n),
                            None => (e.name(), 0),
                        };
                        json!({
                            "name": name,
                            "number": number,
                            "connection_name": e.name(),
                            "peer_host": e.peer.ip().to_string(),
                            "peer_port": e.peer.port(),
                            "user": session_of(e).0,
                            "node": node,
                        })
                    },
                );
                out.push(json!({
                    "consumer_tag": c.tag,
                    "exclusive": c.exclusive,
                    "ack_required": !c.no_ack,
                    "prefetch_count": c.sink.prefetch_count(),
                    // No delivery acknowledgement timeout is enforced here.
                    "consumer_timeout": 0,
                    "active": true,
                    "activity_status": "up",
                    "arguments": if priority == 0 { json!({}) } else { json!({"x-priority": priority}) },
                    "queue": {"name": q.name, "vhost": vh.name},
                    "channel_details": channel_details,
                }));
            }
        }
    }
    out
}

async fn consumers_all(
    State(b): B,
    Extension(me): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond(consumers_of(&b, &visible_vhosts(&b, &me)), &q)
}

async fn consumers_in(
    State(b): B,
    Extension(me): Extension<User>,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond_in(&b, &me, &vh, &q, |vh| consumers_of(&b, &[vh]))
}

/// The open channels of `c` (AMQP; other protocols have none), named as RabbitMQ names them.
fn channels_json(node: &str, c: &ConnectionEntry) -> Vec<Value> {
    let (user, vhost) = session_of(c);
    c.channels_info()
        .into_iter()
        .map(|(n, info)| {
            json!({
                "name": format!("{} ({n})", c.name()),
                "number": n,
                "node": node,
                "user": user,
                "vhost": vhost,
                "state": "running",
                "prefetch_count": info.prefetch_count,
                "global_prefetch_count": info.global_prefetch_count,
                "consumer_count": info.consumer_count,
                "messages_unacknowledged": info.messages_unacknowledged,
                "messages_unconfirmed": info.messages_unconfirmed,
                "messages_uncommitted": info.messages_uncommitted,
                "acks_uncommitted": info.acks_uncommitted,
                "transactional": info.transactional,
                "confirm": info.confirm,
                "connection_details": {
                    "name": c.name(),
                    "peer_host": c.peer.ip().to_string(),
                    "peer_port": c.peer.port(),
                },
            })
        })
        .collect()
}

/// The channels of the connections `me` may see, in `vhost` if given.
fn channels_for(b: &Broker, me: &User, vhost: Option<&str>) -> Vec<Value> {
    let node = super::node_name(b);
    seen_connections(b, me, vhost)
        .iter()
        .flat_map(|c| channels_json(&node, c))
        .collect()
}

async fn channels_all(
    State(b): B,
    Extension(me): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond(channels_for(&b, &me, None), &q)
}

async fn channels_in(
    State(b): B,
    Extension(me): Extension<User>,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond_in(&b, &me, &vh, &q, |vh| channels_for(&b, &me, Some(&vh.name)))
}

async fn channels_of(
    State(b): B,
    Extension(me): Extension<User>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    match find(&b, &me, &name) {
        Some(c) => respond(channels_json(&super::node_name(&b), &c), &q),
        None => not_found(),
    }
}

async fn channel(
    State(b): B,
    Extension(me): Extension<User>,
    Path(name): Path<String>,
) -> Response {
    channels_for(&b, &me, None)
        .into_iter()
        .find(|c| c["name"] == name.as_str())
        .map_or_else(not_found, |c| Json(c).into_response())
}
