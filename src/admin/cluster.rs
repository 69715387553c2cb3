//! The cluster's endpoints: `GET /api/switchboard/cluster` (`ctl cluster_status`),
//! `POST /api/switchboard/cluster/join` (`ctl join_cluster`) and
//! `DELETE /api/switchboard/cluster/nodes/{name}` (`ctl forget_cluster_node`),
//! `POST /api/switchboard/queues/{vhost}/{name}/members` and
//! `DELETE /api/switchboard/queues/{vhost}/{name}/members/{node}` (`ctl add_member`,
//! `delete_member`, `grow`, `shrink`: a quorum queue's replicas),
//! `POST /api/switchboard/queues/{vhost}/{name}/leader` (`ctl rebalance`); `/api/nodes` lists the
//! members through [`members_json`].

use super::access::{bad_request, error};
use crate::cluster::quorum::{MemberError, Registry};
use crate::cluster::{ClusterError, ClusterStatus, Consensus};
use crate::core::Broker;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/switchboard/cluster", get(status))
        .route("/api/switchboard/cluster/join", post(join))
        .route("/api/switchboard/cluster/nodes/{name}", delete(forget))
        .route(
            "/api/switchboard/queues/{vhost}/{name}/members",
            post(add_member),
        )
        .route(
            "/api/switchboard/queues/{vhost}/{name}/members/{node}",
            delete(delete_member),
        )
        .route(
            "/api/switchboard/queues/{vhost}/{name}/leader",
            post(move_leader),
        )
}

/// This node's cluster, or the answer for an unclustered node.
fn consensus(b: &Broker) -> Result<&Arc<dyn Consensus>, Box<Response>> {
    b.cluster
        .get()
        .ok_or_else(|| Box::new(cluster_error(ClusterError::NotClustered)))
}

/// A refused cluster operation: 503 when no majority could commit it, 404 for an unknown
/// node, 400 otherwise.
pub(super) fn cluster_error(e: ClusterError) -> Response {
    match e {
        ClusterError::NoQuorum(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", e.to_string())
        }
        ClusterError::UnknownNode(_) => {
            error(StatusCode::NOT_FOUND, "Object Not Found", e.to_string())
        }
        ClusterError::Peer { .. } => error(StatusCode::BAD_GATEWAY, "unreachable", e.to_string()),
        other => bad_request(other.to_string()),
    }
}

async fn status(State(b): B) -> Response {
    match consensus(&b) {
        Ok(c) => Json(c.status().await).into_response(),
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
struct Join {
    seed: String,
}

async fn join(State(b): B, Json(body): Json<Join>) -> Response {
    let c = match consensus(&b) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match c.join(body.seed).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => cluster_error(e),
    }
}

async fn forget(State(b): B, Path(name): Path<String>) -> Response {
    let c = match consensus(&b) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match c.remove_member(name.clone()).await {
        Ok(()) => {
            // Its transient queues went with it; nobody else removes their records.
            crate::cluster::transient::forget_homed_at(&b, &name);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => cluster_error(e),
    }
}

#[derive(Deserialize)]
struct Member {
    node: String,
}

/// A refused change of a quorum queue's replicas: 404 for an unknown queue or node, 400 for
/// what cannot be changed, 503 when the group or the cluster could not commit it.
fn member_error(e: MemberError) -> Response {
    match e {
        MemberError::NotFound { .. } | MemberError::UnknownNode(_) => {
            error(StatusCode::NOT_FOUND, "Object Not Found", e.to_string())
        }
        MemberError::NotQuorum { .. }
        | MemberError::LastMember { .. }
        | MemberError::NotMember { .. } => bad_request(e.to_string()),
        MemberError::Change(c) => super::access::change_refused(c),
        MemberError::Stopping | MemberError::Failed(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", e.to_string())
        }
    }
}

fn groups(b: &Broker) -> Result<Arc<Registry>, Box<Response>> {
    consensus(b)?
        .quorum()
        .ok_or_else(|| Box::new(bad_request("this node runs no quorum queues")))
}

/// Runs `change` on this node's quorum queue registry: 204 once made, else why not.
async fn member_change<F, Fut>(b: &Broker, change: F) -> Response
where
    F: FnOnce(Arc<Registry>) -> Fut,
    Fut: std::future::Future<Output = Result<(), MemberError>>,
{
    let g = match groups(b) {
        Ok(g) => g,
        Err(r) => return *r,
    };
    match change(g).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => member_error(e),
    }
}

async fn add_member(
    State(b): B,
    Path((vhost, name)): Path<(String, String)>,
    Json(body): Json<Member>,
) -> Response {
    member_change(&b, |g| async move {
        g.add_member(&vhost, &name, &body.node).await
    })
    .await
}

/// `POST .../leader {"node": ...}`: that member leads the queue from now on.
async fn move_leader(
    State(b): B,
    Path((vhost, name)): Path<(String, String)>,
    Json(body): Json<Member>,
) -> Response {
    member_change(&b, |g| async move {
        g.move_leader(&vhost, &name, &body.node).await
    })
    .await
}

async fn delete_member(
    State(b): B,
    Path((vhost, name, node)): Path<(String, String, String)>,
) -> Response {
    member_change(&b, |g| async move {
        g.delete_member(&vhost, &name, &node).await
    })
    .await
}

/// Every member as `/api/nodes` lists it: `this` (this node's own entry) with the cluster's
/// view added, and the other members with what is known of them from here.
pub(super) fn members_json(status: &ClusterStatus, this: Value) -> Vec<Value> {
    status
        .members
        .iter()
        .map(|m| {
            let mut node = if m.name == status.node_name {
                this.clone()
            } else {
                json!({"name": m.name, "type": "disc"})
            };
            if let Value::Object(o) = &mut node {
                o.insert("running".into(), json!(m.running));
                o.insert("cluster_address".into(), json!(m.addr));
                o.insert("raft_role".into(), json!(m.role.as_str()));
                o.insert("is_leader".into(), json!(m.is_leader));
                o.insert("voter".into(), json!(m.voter));
            }
            node
        })
        .collect()
}
