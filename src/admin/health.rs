//! The probes load balancers and Kubernetes call: `/api/aliveness-test/{vhost}` (a message
//! through a queue and back) and `/api/health/checks/*`, answering 200 `{"status":"ok"}` or
//! 503 `{"status":"failed","reason":..}` as RabbitMQ does.

use super::access::bad_request;
use super::reply::{vhost, API_CONNECTION};
use super::{node_name, Listeners};
use crate::core::vhost::QueueSpec;
use crate::core::{Broker, Message, Publish, PublishTo};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use switchboard_amqp::BasicProperties;

type B = State<Arc<Broker>>;

/// The queue the aliveness test uses, as RabbitMQ names it.
const ALIVENESS_QUEUE: &str = "aliveness-test";

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(local_alarms))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/health/checks/virtual-hosts", get(virtual_hosts))
        .route("/api/health/checks/node-is-quorum-critical", get(ok))
}

fn ok_with(extra: Value) -> Response {
    let mut body = json!({"status": "ok"});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    Json(body).into_response()
}

fn failed(reason: &str, extra: Value) -> Response {
    let mut body = json!({"status": "failed", "reason": reason});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// With one node there is no quorum queue whose quorum depends on this one.
async fn ok() -> Response {
    ok_with(json!({}))
}

/// Declares the aliveness queue, sends a message through it and takes it back.
async fn aliveness(State(b): B, Path(vh): Path<String>) -> Response {
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    let spec = QueueSpec {
        name: ALIVENESS_QUEUE.into(),
        ..Default::default()
    };
    let q = match vh.declare_queue(spec, false, API_CONNECTION) {
        Ok(d) => d.queue,
        Err(e) => return failed(&e.message, json!({})),
    };
    let body = Bytes::from_static(b"test_message");
    let charge = b.memory.charge(Message::charge_size(body.len()));
    let message = Message::new(
        String::new(),
        ALIVENESS_QUEUE.into(),
        BasicProperties::default(),
        None,
        body.clone(),
        charge,
    );
    let publish = Publish {
        to: PublishTo::Queue(&q),
        message: &Arc::new(message),
        holdable: false,
    };
    let _ = vh.publish(publish, &mut Vec::new());
    // Other messages may sit in the queue (an earlier test's); ours is the one with our body.
    let mut seen = false;
    loop {
        let (got, effects) = q.get(true);
        vh.apply(&q, effects);
        let Some((d, _)) = got else {
            break;
        };
        if d.message.body == body {
            seen = true;
            break;
        }
    }
    if seen {
        ok_with(json!({}))
    } else {
        failed("aliveness test message did not come back", json!({}))
    }
}

fn alarm_list(b: &Broker) -> Vec<Value> {
    let (memory, disk) = b.memory.alarms();
    let node = node_name(b);
    let mut out = Vec::new();
    if memory {
        out.push(json!({"node": node, "resource": "memory"}));
    }
    if disk {
        out.push(json!({"node": node, "resource": "disk"}));
    }
    out
}

async fn alarms(State(b): B) -> Response {
    let list = alarm_list(&b);
    if list.is_empty() {
        ok_with(json!({}))
    } else {
        failed(
            "resource alarm(s) in effect in the cluster",
            json!({"alarms": list}),
        )
    }
}

async fn local_alarms(State(b): B) -> Response {
    let list = alarm_list(&b);
    if list.is_empty() {
        ok_with(json!({}))
    } else {
        failed(
            "resource alarm(s) in effect on the target node",
            json!({"local_alarms": list}),
        )
    }
}

async fn port_listener(
    Extension(listeners): Extension<Listeners>,
    Path(port): Path<String>,
) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return bad_request(format!("invalid port: {port}"));
    };
    let ports: Vec<u16> = listeners.0.iter().map(|(_, a)| a.port()).collect();
    if ports.contains(&port) {
        ok_with(json!({"port": port}))
    } else {
        failed(
            "No active listener",
            json!({"missing": port, "ports": ports}),
        )
    }
}

/// A protocol name as the check accepts it, RabbitMQ's aliases included.
fn protocol_of(name: &str) -> &str {
    match name {
        "amqp091" | "amqp0-9-1" | "amqp0.9.1" | "amqp0_9_1" => "amqp",
        "mqtt311" | "mqtt3.1.1" | "mqtt5" => "mqtt",
        "stomp1.0" | "stomp1.1" | "stomp1.2" => "stomp",
        other => other,
    }
}

async fn protocol_listener(
    Extension(listeners): Extension<Listeners>,
    Path(protocol): Path<String>,
) -> Response {
    let wanted = protocol_of(&protocol.to_ascii_lowercase()).to_owned();
    let mut protocols: Vec<&str> = listeners.0.iter().map(|(p, _)| *p).collect();
    protocols.dedup();
    if protocols.contains(&wanted.as_str()) {
        ok_with(json!({"protocol": wanted}))
    } else {
        failed(
            "No active listener",
            json!({"missing": wanted, "protocols": protocols}),
        )
    }
}

/// Every vhost of this broker runs for as long as it exists: none can be down.
async fn virtual_hosts() -> Response {
    ok_with(json!({}))
}
