//! The HTTP management API: a JSON subset of RabbitMQ's `/api/` (queues, exchanges, bindings,
//! connections, overview, and users, vhosts and permissions), which `switchboard ctl` uses.
//! Requests authenticate with HTTP basic auth; what a user may do follows its tags as in
//! RabbitMQ (see [`allowed`]).

mod access;
mod bindings;
mod cluster;
mod connections;
mod dashboard;
mod definitions;
mod exchanges;
mod health;
mod json;
mod listing;
mod messages;
pub mod metrics;
mod mqtt;
mod overview;
mod policies;
mod queues;
mod reply;

use crate::adapter::mqtt::registry::MqttState;
use crate::core::access::{tag, User};
use crate::core::{Broker, VHost};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use base64::Engine;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::sync::Arc;

pub use definitions::{export as export_definitions, import as import_definitions};
pub use json::field_table_to_json;
pub use overview::{node_name, Listeners};

/// Serves the API on the connections `acceptor` admits until the broker shuts down. Each
/// connection is served by hyper directly (not `axum::serve`) for its header read timeout:
/// `http.idle_timeout_ms` closes a connection that sends no complete request head within that
/// time of opening or of its last response, so idle or half-sent requests cannot hold file
/// descriptors.
pub async fn serve(
    acceptor: crate::net::accept::Acceptor,
    broker: Arc<Broker>,
    listeners: Listeners,
    mqtt: Arc<MqttState>,
    tls: Option<Arc<crate::net::tls::TlsServer>>,
) {
    let app = router(broker.clone(), listeners, mqtt);
    serve_app(acceptor, broker, app, tls).await
}

/// Serves `app` on the connections `acceptor` admits (over TLS with `tls`), as [`serve`]
/// describes.
pub(crate) async fn serve_app(
    mut acceptor: crate::net::accept::Acceptor,
    broker: Arc<Broker>,
    app: Router,
    tls: Option<Arc<crate::net::tls::TlsServer>>,
) {
    let idle_timeout = std::time::Duration::from_millis(broker.config.http.idle_timeout_ms);
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

/// The management API; `listeners` are the broker's bound addresses, for the overview and the
/// listener health checks; `mqtt` the MQTT adapter's sessions, for `/api/mqtt/sessions`.
pub fn router(broker: Arc<Broker>, listeners: Listeners, mqtt: Arc<MqttState>) -> Router {
    Router::new()
        .merge(overview::routes())
        .merge(queues::routes())
        .merge(exchanges::routes())
        .merge(bindings::routes())
        .merge(connections::routes())
        .merge(health::routes())
        .merge(definitions::routes())
        .merge(policies::routes())
        .merge(mqtt::routes())
        .merge(access::routes())
        .merge(cluster::routes())
        .layer(Extension(listeners))
        .layer(Extension(mqtt))
        .layer(Extension(overview::Started::now()))
        .layer(middleware::from_fn_with_state(broker.clone(), authenticate))
        // Added after the authentication layer, so not behind it: the page loads without
        // credentials and shows its login form.
        .merge(dashboard::routes())
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
    // A script's request (the dashboard's) gets no basic-auth challenge: a browser would answer
    // one with its own login dialog instead of letting the page show the failure.
    let from_script = req.headers().contains_key("x-requested-with");
    let unauthorized = || {
        let body = Json(json!({"error": "not_authorised", "reason": "Login failed"}));
        if from_script {
            return (StatusCode::UNAUTHORIZED, body).into_response();
        }
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"Switchboard\"")],
            body,
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
pub(crate) fn visible_vhosts(b: &Broker, user: &User) -> Vec<Arc<VHost>> {
    let all = user.is_administrator() || user.has_tag(tag::MONITORING);
    b.vhosts()
        .into_iter()
        .filter(|v| all || b.access.permissions_of(&v.name, &user.name).is_some())
        .collect()
}
