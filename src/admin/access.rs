//! Users, vhosts, permissions and topic permissions through RabbitMQ's management endpoints
//! and JSON, so `rabbitmqadmin` and scripts written for RabbitMQ work unchanged. A change is
//! answered (201 Created, 204 No Content) only once its record in the store is durable.

use crate::cluster::definitions::{commit, Change, ChangeError};
use crate::core::access::password::{PasswordHash, SHA256_NAME};
use crate::core::access::permissions::{PermissionSpec, TopicPermissionSpec};
use crate::core::access::records::{
    split_tags, PermissionRecord, TopicPermissionRecord, UserRecord,
};
use crate::core::access::{AccessError, User};
use crate::core::Broker;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/users", get(list_users))
        .route(
            "/api/users/{name}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{name}/permissions", get(user_permissions))
        .route(
            "/api/users/{name}/topic-permissions",
            get(user_topic_permissions),
        )
        .route(
            "/api/vhosts/{name}",
            get(get_vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{name}/permissions", get(vhost_permissions))
        .route(
            "/api/vhosts/{name}/topic-permissions",
            get(vhost_topic_permissions),
        )
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(get_permissions)
                .put(put_permissions)
                .delete(delete_permissions),
        )
        .route("/api/topic-permissions", get(list_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(get_topic_permissions)
                .put(put_topic_permissions)
                .delete(delete_topic_permissions),
        )
}

/// An error answer in RabbitMQ's shape.
pub(super) fn error(status: StatusCode, error: &str, reason: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": error, "reason": reason.into()})),
    )
        .into_response()
}

pub(super) fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

pub(super) fn bad_request(reason: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

fn refused(e: AccessError) -> Response {
    match e {
        AccessError::NoSuchUser(_) | AccessError::NoSuchVHost(_) => not_found(),
        other => bad_request(other.to_string()),
    }
}

/// 201 for a new object, 204 for a changed one, once `lsn` is durable.
async fn done(b: &Broker, lsn: u64, created: bool) -> Response {
    b.access.durable(lsn).await;
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// A refused change: 404 for what does not exist, 503 `no_quorum` in a cluster's minority.
pub(super) fn change_refused(e: ChangeError) -> Response {
    match e {
        ChangeError::NotFound => not_found(),
        ChangeError::Access(e) => refused(e),
        ChangeError::Invalid(reason) => bad_request(reason),
        ChangeError::Core(e) => super::reply::core_error(e),
        ChangeError::Cluster(e) => super::cluster::cluster_error(e),
    }
}

/// Makes `change` (through the cluster when clustered) and answers 201 for a new object, 204
/// otherwise, once it is durable (committed by a majority, when clustered).
pub(super) async fn changed(b: &Broker, change: Change, created: bool) -> Response {
    match commit(b, change).await {
        Ok(lsn) => done(b, lsn, created).await,
        Err(e) => change_refused(e),
    }
}

async fn whoami(Extension(user): Extension<User>) -> Json<Value> {
    Json(json!({"name": user.name, "tags": user.tags}))
}

fn user_json(b: &Broker, name: &str) -> Option<Value> {
    b.access
        .users()
        .into_iter()
        .find(|u| u.name == name)
        .map(|u| {
            json!({
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": u.hashing_algorithm,
                "tags": u.tags,
                "limits": {},
            })
        })
}

async fn list_users(State(b): B) -> Json<Value> {
    let names: Vec<String> = b.access.users().into_iter().map(|u| u.name).collect();
    Json(Value::Array(
        names.iter().filter_map(|n| user_json(&b, n)).collect(),
    ))
}

async fn get_user(State(b): B, Path(name): Path<String>) -> Response {
    match user_json(&b, &name) {
        Some(v) => Json(v).into_response(),
        None => not_found(),
    }
}

/// Tags as a list or as RabbitMQ's comma-separated text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Tags {
    List(Vec<String>),
    Text(String),
}

impl Tags {
    fn into_vec(self) -> Vec<String> {
        match self {
            Tags::List(l) => l,
            Tags::Text(t) => split_tags(&t),
        }
    }
}

#[derive(Debug, Deserialize)]
struct PutUser {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    tags: Option<Tags>,
}

async fn put_user(State(b): B, Path(name): Path<String>, body: Option<Json<PutUser>>) -> Response {
    let Some(Json(body)) = body else {
        return bad_request("expected a JSON object");
    };
    let hash = match (&body.password, &body.password_hash) {
        (Some(p), _) => PasswordHash::new(p),
        (None, Some(h)) => {
            let algorithm = body.hashing_algorithm.as_deref().unwrap_or(SHA256_NAME);
            match PasswordHash::from_rabbit(h, algorithm) {
                Ok(h) => h,
                Err(e) => return bad_request(e.to_string()),
            }
        }
        (None, None) => return bad_request("password or password_hash must be set"),
    };
    let tags = body.tags.map(Tags::into_vec).unwrap_or_default();
    let created = b.access.user(&name).is_none();
    let record = UserRecord::new(&name, &hash, &tags);
    changed(&b, Change::PutUser(record), created).await
}

async fn delete_user(State(b): B, Path(name): Path<String>) -> Response {
    changed(&b, Change::DeleteUser(name), false).await
}

fn permission_json(p: &PermissionRecord) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.spec.configure,
        "write": p.spec.write,
        "read": p.spec.read,
    })
}

fn topic_permission_json(p: &TopicPermissionRecord) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "exchange": p.spec.exchange,
        "write": p.spec.write,
        "read": p.spec.read,
    })
}

fn permissions_where(b: &Broker, keep: impl Fn(&PermissionRecord) -> bool) -> Json<Value> {
    Json(Value::Array(
        b.access
            .permissions()
            .iter()
            .filter(|p| keep(p))
            .map(permission_json)
            .collect(),
    ))
}

fn topic_permissions_where(
    b: &Broker,
    keep: impl Fn(&TopicPermissionRecord) -> bool,
) -> Json<Value> {
    Json(Value::Array(
        b.access
            .topic_permissions()
            .iter()
            .filter(|p| keep(p))
            .map(topic_permission_json)
            .collect(),
    ))
}

async fn user_permissions(State(b): B, Path(name): Path<String>) -> Response {
    if b.access.user(&name).is_none() {
        return not_found();
    }
    permissions_where(&b, |p| p.user == name).into_response()
}

async fn user_topic_permissions(State(b): B, Path(name): Path<String>) -> Response {
    if b.access.user(&name).is_none() {
        return not_found();
    }
    topic_permissions_where(&b, |p| p.user == name).into_response()
}

async fn list_permissions(State(b): B) -> Json<Value> {
    permissions_where(&b, |_| true)
}

async fn list_topic_permissions(State(b): B) -> Json<Value> {
    topic_permissions_where(&b, |_| true)
}

async fn vhost_permissions(State(b): B, Path(name): Path<String>) -> Response {
    if b.vhost(&name).is_none() {
        return not_found();
    }
    permissions_where(&b, |p| p.vhost == name).into_response()
}

async fn vhost_topic_permissions(State(b): B, Path(name): Path<String>) -> Response {
    if b.vhost(&name).is_none() {
        return not_found();
    }
    topic_permissions_where(&b, |p| p.vhost == name).into_response()
}

async fn get_permissions(State(b): B, Path((vhost, user)): Path<(String, String)>) -> Response {
    match b
        .access
        .permissions()
        .iter()
        .find(|p| p.vhost == vhost && p.user == user)
    {
        Some(p) => Json(permission_json(p)).into_response(),
        None => not_found(),
    }
}

async fn put_permissions(
    State(b): B,
    Path((vhost, user)): Path<(String, String)>,
    body: Option<Json<PermissionSpec>>,
) -> Response {
    let Some(Json(spec)) = body else {
        return bad_request("expected configure, write and read");
    };
    if b.vhost(&vhost).is_none() {
        return not_found();
    }
    let created = b.access.permissions_of(&vhost, &user).is_none();
    let record = PermissionRecord { user, vhost, spec };
    changed(&b, Change::SetPermissions(record), created).await
}

async fn delete_permissions(State(b): B, Path((vhost, user)): Path<(String, String)>) -> Response {
    changed(&b, Change::ClearPermissions { vhost, user }, false).await
}

async fn get_topic_permissions(
    State(b): B,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    let found: Vec<Value> = b
        .access
        .topic_permissions()
        .iter()
        .filter(|p| p.vhost == vhost && p.user == user)
        .map(topic_permission_json)
        .collect();
    if found.is_empty() {
        return not_found();
    }
    Json(Value::Array(found)).into_response()
}

async fn put_topic_permissions(
    State(b): B,
    Path((vhost, user)): Path<(String, String)>,
    body: Option<Json<TopicPermissionSpec>>,
) -> Response {
    let Some(Json(spec)) = body else {
        return bad_request("expected exchange, write and read");
    };
    if b.vhost(&vhost).is_none() {
        return not_found();
    }
    let created = !b
        .access
        .has_topic_permissions(&vhost, &user, &spec.exchange);
    let record = TopicPermissionRecord { user, vhost, spec };
    changed(&b, Change::SetTopicPermissions(record), created).await
}

#[derive(Debug, Deserialize)]
struct ExchangeQuery {
    exchange: Option<String>,
}

/// Clears all of a user's topic permissions in the vhost, or with `?exchange=` those on one
/// exchange.
async fn delete_topic_permissions(
    State(b): B,
    Path((vhost, user)): Path<(String, String)>,
    Query(q): Query<ExchangeQuery>,
) -> Response {
    let change = Change::ClearTopicPermissions {
        vhost,
        user,
        exchange: q.exchange,
    };
    changed(&b, change, false).await
}

async fn get_vhost(State(b): B, Path(name): Path<String>) -> Response {
    match b.vhost(&name) {
        Some(vh) => Json(super::overview::vhost_json(&b, &vh)).into_response(),
        None => not_found(),
    }
}

async fn put_vhost(State(b): B, Path(name): Path<String>) -> Response {
    if name.is_empty() {
        return bad_request("a vhost needs a name");
    }
    let created = b.vhost(&name).is_none();
    changed(&b, Change::PutVHost(name), created).await
}

async fn delete_vhost(State(b): B, Path(name): Path<String>) -> Response {
    changed(&b, Change::DeleteVHost(name), false).await
}
