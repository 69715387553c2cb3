//! The HTTP management API: a JSON subset of RabbitMQ's `/api/` (queues, exchanges, bindings,
//! connections, overview, and users, vhosts and permissions), which `switchboard ctl` uses.
//! Requests authenticate with HTTP basic auth; what a user may do follows its tags as in
//! RabbitMQ (see [`allowed`]).

mod access;
mod json;

use crate::core::access::{tag, User};
use crate::core::{Broker, VHost};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use std::sync::Arc;

pub use json::field_table_to_json;

/// Serves the API on the connections `acceptor` admits until the broker shuts down. Each
/// connection is served by hyper directly (not `axum::serve`) for its header read timeout:
/// `http.idle_timeout_ms` closes a connection that sends no complete request head within that
/// time of opening or of its last response, so idle or half-sent requests cannot hold file
/// descriptors.
pub async fn serve(
    mut acceptor: crate::net::accept::Acceptor,
    broker: Arc<Broker>,
    tls: Option<Arc<crate::net::tls::TlsServer>>,
) {
    let idle_timeout = std::time::Duration::from_millis(broker.config.http.idle_timeout_ms);
    let app = router(broker.clone());
    let mut shutdown = broker.shutdown_signal();
    loop {
        let (socket, peer, admitted) = tokio::select! {
            next = acceptor.next() => next,
            _ = shutdown.changed() => return,
        };
        let service = TowerToHyperService::new(app.clone().layer(Extension(ConnectInfo(peer))));
        let shutdown = broker.shutdown_signal();
        let tls = tls.clone();
        tokio::spawn(async move {
            // Counted against the connection limits until the connection ends.
            let _admitted = admitted;
            match tls {
                None => serve_connection(socket, peer, service, idle_timeout, shutdown).await,
                Some(tls) => {
                    if let Some(stream) = tls.accept(socket, peer).await {
                        serve_connection(stream, peer, service, idle_timeout, shutdown).await;
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1 on one connection over any transport (TCP, TLS).
async fn serve_connection<S, Svc>(
    socket: S,
    peer: std::net::SocketAddr,
    service: Svc,
    idle_timeout: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Send
        + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: std::error::Error + Send + Sync + 'static,
{
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    if !idle_timeout.is_zero() {
        builder.header_read_timeout(idle_timeout);
    }
    let conn = builder.serve_connection(TokioIo::new(socket), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/queues", get(queues))
        .route("/api/exchanges", get(exchanges))
        .route("/api/bindings", get(bindings))
        .route("/api/connections", get(connections))
        .route("/api/vhosts", get(vhosts))
        .merge(access::routes())
        .layer(middleware::from_fn_with_state(broker.clone(), authenticate))
        .with_state(broker)
}

async fn authenticate(State(broker): State<Arc<Broker>>, req: Request, next: Next) -> Response {
    // Loopback-only users (guest) may use the API only from loopback, as over AMQP.
    let peer_ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"Switchboard\"")],
            Json(json!({"error": "not_authorised", "reason": "Login failed"})),
        )
            .into_response()
    };
    let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return unauthorized();
    };
    let authenticated = broker.access.authenticate(user, password, peer_ip);
    match &authenticated {
        Ok(_) => broker.auth_throttle.succeeded(peer_ip),
        Err(_) => broker.auth_throttle.failed(peer_ip).await,
    }
    match authenticated {
        Ok(u) => match allowed(&u, req.method(), req.uri().path()) {
            Ok(()) => {
                let mut req = req;
                req.extensions_mut().insert(u);
                next.run(req).await
            }
            Err(reason) => access::error(StatusCode::FORBIDDEN, "not_authorised", reason),
        },
        Err(_) => unauthorized(),
    }
}

/// What a user's tags let it do, as in RabbitMQ: `administrator` everything; `monitoring`,
/// `management` and `policymaker` read the listings (the latter two only of the vhosts they
/// have permissions in, and their own connections); users, permissions and every change are
/// for administrators. `/api/whoami` answers any user that authenticates.
fn allowed(user: &User, method: &Method, path: &str) -> Result<(), &'static str> {
    if user.is_administrator() || path == "/api/whoami" {
        return Ok(());
    }
    let admin_only = method != Method::GET
        || path.starts_with("/api/users")
        || path.starts_with("/api/permissions")
        || path.starts_with("/api/topic-permissions")
        || path.ends_with("/permissions")
        || path.ends_with("/topic-permissions");
    if admin_only {
        return Err("Not administrator user");
    }
    let reads = [tag::MONITORING, tag::MANAGEMENT, tag::POLICYMAKER];
    if reads.iter().any(|t| user.has_tag(t)) {
        Ok(())
    } else {
        Err("Not management user")
    }
}

/// The vhosts whose contents `user` may see: all for administrators and monitoring users,
/// else those it has permissions in.
fn visible_vhosts(b: &Broker, user: &User) -> Vec<Arc<VHost>> {
    let all = user.is_administrator() || user.has_tag(tag::MONITORING);
    b.vhosts()
        .into_iter()
        .filter(|v| all || b.access.permissions_of(&v.name, &user.name).is_some())
        .collect()
}

async fn overview(State(b): State<Arc<Broker>>, Extension(user): Extension<User>) -> Json<Value> {
    let (mut queues, mut exchanges, mut ready, mut unacked) = (0, 0, 0, 0);
    for vh in visible_vhosts(&b, &user) {
        exchanges += vh.exchanges().len();
        for q in vh.queues() {
            queues += 1;
            let s = q.stats();
            ready += s.ready;
            unacked += s.unacked;
        }
    }
    Json(json!({
        "product_name": "Switchboard",
        "product_version": env!("CARGO_PKG_VERSION"),
        "object_totals": {
            "connections": b.connections().len(),
            "queues": queues,
            "exchanges": exchanges,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "memory": {
            "used": b.memory.used(),
            "high_watermark": b.memory.high_watermark(),
            "alarm": b.memory.alarm(),
        },
    }))
}

async fn vhosts(State(b): State<Arc<Broker>>, Extension(user): Extension<User>) -> Json<Value> {
    Json(Value::Array(
        visible_vhosts(&b, &user)
            .iter()
            .map(|v| json!({"name": v.name}))
            .collect(),
    ))
}

async fn queues(State(b): State<Arc<Broker>>, Extension(user): Extension<User>) -> Json<Value> {
    let mut out = Vec::new();
    for vh in visible_vhosts(&b, &user) {
        for q in vh.queues() {
            let s = q.stats();
            out.push(json!({
                "name": q.name,
                "vhost": vh.name,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "exclusive": q.exclusive_owner.is_some(),
                "arguments": field_table_to_json(&q.arguments),
                "messages_ready": s.ready,
                "messages_unacknowledged": s.unacked,
                "messages": s.ready + s.unacked,
                "message_bytes_ready": s.ready_bytes,
                "consumers": s.consumers,
            }));
        }
    }
    Json(Value::Array(out))
}

async fn exchanges(State(b): State<Arc<Broker>>, Extension(user): Extension<User>) -> Json<Value> {
    let mut out = Vec::new();
    for vh in visible_vhosts(&b, &user) {
        for e in vh.exchanges() {
            out.push(json!({
                "name": e.name,
                "vhost": vh.name,
                "type": e.type_name(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": field_table_to_json(&e.arguments),
            }));
        }
    }
    Json(Value::Array(out))
}

async fn bindings(State(b): State<Arc<Broker>>, Extension(user): Extension<User>) -> Json<Value> {
    let mut out = Vec::new();
    for vh in visible_vhosts(&b, &user) {
        for (source, binding) in vh.bindings() {
            out.push(json!({
                "source": source,
                "vhost": vh.name,
                "destination": binding.destination.name(),
                "destination_type": binding.destination.kind_str(),
                "routing_key": binding.routing_key,
                "arguments": field_table_to_json(&binding.arguments),
            }));
        }
    }
    Json(Value::Array(out))
}

async fn connections(State(b): State<Arc<Broker>>, Extension(me): Extension<User>) -> Json<Value> {
    let sees_all = me.is_administrator() || me.has_tag(tag::MONITORING);
    let out = b
        .connections()
        .iter()
        .filter_map(|c| {
            let session = c.session.lock().map(|s| s.clone()).unwrap_or(None);
            let (user, vhost) = session.unwrap_or_default();
            if !sees_all && user != me.name {
                return None;
            }
            let connected_at = c
                .connected_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Some(json!({
                "name": c.name(),
                "protocol": c.protocol,
                "peer_host": c.peer.ip().to_string(),
                "peer_port": c.peer.port(),
                "user": user,
                "vhost": vhost,
                "channels": c.channels.load(std::sync::atomic::Ordering::Relaxed),
                "state": if user.is_empty() { "starting" } else { "running" },
                "connected_at": connected_at,
            }))
        })
        .collect();
    Json(Value::Array(out))
}
