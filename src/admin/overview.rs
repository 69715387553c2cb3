//! `/api/overview`, `/api/nodes`, `/api/cluster-name` and the `/api/vhosts` listing: what this
//! one-node broker is, where it listens and what it holds, in RabbitMQ's JSON.

use super::listing::{respond, ListQuery};
use super::visible_vhosts;
use crate::core::access::User;
use crate::core::sampler::vhost_counts;
use crate::core::stats::{message_stats_json, Counts, Rates, VHOST_FIELDS};
use crate::core::{Broker, VHost};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

type B = State<Arc<Broker>>;

/// The bound listeners as (RabbitMQ's protocol name, address): `amqp`, `mqtt`, `stomp`, `http`,
/// `prometheus`, and over TLS `amqp/ssl`, `mqtt/ssl`, `stomp/ssl`, `https`.
#[derive(Debug, Clone, Default)]
pub struct Listeners(pub Vec<(&'static str, SocketAddr)>);

impl Listeners {
    pub fn from_bound(addrs: &crate::net::BoundAddrs) -> Self {
        let mut out = Vec::new();
        for (protocol, list) in [
            ("amqp", &addrs.amqp),
            ("mqtt", &addrs.mqtt),
            ("stomp", &addrs.stomp),
            ("http", &addrs.http),
            ("prometheus", &addrs.prometheus),
            ("amqp/ssl", &addrs.amqp_tls),
            ("mqtt/ssl", &addrs.mqtt_tls),
            ("stomp/ssl", &addrs.stomp_tls),
            ("https", &addrs.http_tls),
            ("http/web-mqtt", &addrs.mqtt_ws),
            ("http/web-stomp", &addrs.stomp_ws),
            ("https/web-mqtt", &addrs.mqtt_wss),
            ("https/web-stomp", &addrs.stomp_wss),
        ] {
            out.extend(list.iter().map(|a| (protocol, *a)));
        }
        Listeners(out)
    }
}

/// When the API started serving, for the node's `uptime`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Started(Instant);

impl Started {
    pub(super) fn now() -> Self {
        Started(Instant::now())
    }
}

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}", get(node))
        .route("/api/vhosts", get(vhosts))
        .route("/api/switchboard/stop", post(stop))
}

/// `ctl stop`: begins the graceful shutdown (connections are asked to close and given the
/// configured grace period), answering before the listener goes.
async fn stop(State(b): B) -> Response {
    let node = node_name(&b);
    tracing::info!("stop requested through the management API");
    b.begin_shutdown();
    (
        axum::http::StatusCode::ACCEPTED,
        Json(json!({"status": "stopping", "node": node})),
    )
        .into_response()
}

/// This node's name: `[cluster] node_name`, by default as RabbitMQ's `rabbit@host`:
/// `switchboard@` and the host name.
pub fn node_name(b: &Broker) -> String {
    b.config.cluster.node_name()
}

fn listeners_json(b: &Broker, l: &Listeners) -> Vec<Value> {
    let node = node_name(b);
    l.0.iter()
        .map(|(protocol, addr)| {
            json!({
                "node": node,
                "protocol": protocol,
                "ip_address": addr.ip().to_string(),
                "port": addr.port(),
            })
        })
        .collect()
}

async fn overview(
    State(b): B,
    Extension(user): Extension<User>,
    Extension(listeners): Extension<Listeners>,
) -> Json<Value> {
    let (mut queues, mut exchanges, mut consumers, mut ready, mut unacked) = (0, 0, 0, 0, 0);
    let vhosts = visible_vhosts(&b, &user);
    let (counts, rates) = message_totals(&b, &vhosts);
    for vh in vhosts {
        exchanges += vh.exchanges().len();
        for q in vh.queues() {
            queues += 1;
            let s = q.stats_recent();
            ready += s.ready;
            unacked += s.unacked;
            consumers += s.consumers;
        }
    }
    let connections = b.connections();
    let channels: u64 = connections
        .iter()
        .map(|c| u64::from(c.channels.load(Ordering::Relaxed)))
        .sum();
    let node = node_name(&b);
    let version = env!("CARGO_PKG_VERSION");
    let http = listeners.0.iter().find(|(p, _)| *p == "http");
    Json(json!({
        "product_name": "Switchboard",
        "product_version": version,
        "rabbitmq_version": version,
        "management_version": version,
        "cluster_name": node,
        "node": node,
        "rates_mode": "none",
        "listeners": listeners_json(&b, &listeners),
        "contexts": http.map(|(_, a)| vec![json!({
            "node": node,
            "description": "Switchboard management API",
            "path": "/",
            "port": a.port().to_string(),
        })]).unwrap_or_default(),
        "object_totals": {
            "connections": connections.len(),
            "channels": channels,
            "queues": queues,
            "exchanges": exchanges,
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "message_stats": message_stats_json(&counts, &rates, VHOST_FIELDS),
        "statistics_interval_ms": b.config.http.stats_interval_ms,
        "memory": {
            "used": b.memory.used(),
            "high_watermark": b.memory.high_watermark(),
            "alarm": b.memory.alarm(),
        },
    }))
}

async fn cluster_name(State(b): B) -> Json<Value> {
    let name = match b.cluster.get() {
        Some(_) => b.config.cluster.name.clone(),
        None => node_name(&b),
    };
    Json(json!({"name": name}))
}

fn node_json(b: &Broker, started: Started) -> Value {
    let (mem_alarm, disk_alarm) = b.memory.alarms();
    json!({
        "name": node_name(b),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "mem_used": b.memory.used(),
        "mem_limit": b.memory.high_watermark(),
        "mem_alarm": mem_alarm,
        "disk_free_alarm": disk_alarm,
        "disk_free_limit": b.config.server.disk_free_limit_bytes,
        "uptime": started.0.elapsed().as_millis() as u64,
        "os_pid": std::process::id().to_string(),
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "partitions": [],
        "applications": [{
            "name": "switchboard",
            "description": "Switchboard message broker",
            "version": env!("CARGO_PKG_VERSION"),
        }],
    })
}

async fn nodes(State(b): B, Extension(started): Extension<Started>) -> Json<Value> {
    let this = node_json(&b, started);
    match b.cluster.get() {
        Some(c) => Json(json!(super::cluster::members_json(&c.status().await, this))),
        None => Json(json!([this])),
    }
}

async fn node(
    State(b): B,
    Extension(started): Extension<Started>,
    Path(name): Path<String>,
) -> Response {
    if name != node_name(&b) {
        return super::access::not_found();
    }
    Json(node_json(&b, started)).into_response()
}

/// The summed counts and rates of `vhosts`, for the overview.
fn message_totals(b: &Broker, vhosts: &[Arc<VHost>]) -> (Counts, Rates) {
    let connections = b.connections();
    let table = b.stats.table();
    let (mut counts, mut rates) = (Counts::default(), Rates::default());
    for v in vhosts {
        counts.add(&vhost_counts(&table, v, &connections));
        rates.add(&table.vhost_rates(&v.name));
    }
    (counts, rates)
}

/// A vhost as RabbitMQ lists it, with its message totals, counters and rates.
pub(super) fn vhost_json(b: &Broker, vh: &VHost) -> Value {
    let (counts, rates) = {
        let connections = b.connections();
        let table = b.stats.table();
        (
            vhost_counts(&table, vh, &connections),
            table.vhost_rates(&vh.name),
        )
    };
    let (mut ready, mut unacked) = (0, 0);
    for q in vh.queues() {
        let s = q.stats_recent();
        ready += s.ready;
        unacked += s.unacked;
    }
    json!({
        "name": vh.name,
        "description": "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "default_queue_type": "classic",
        "tracing": false,
        "cluster_state": {},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_stats": message_stats_json(&counts, &rates, VHOST_FIELDS),
    })
}

async fn vhosts(
    State(b): B,
    Extension(user): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    let items = visible_vhosts(&b, &user)
        .iter()
        .map(|v| vhost_json(&b, v))
        .collect();
    respond(items, &q)
}
