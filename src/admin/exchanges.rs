//! `/api/exchanges`: list, declare and delete exchanges and publish through them, with
//! RabbitMQ's paths (the default exchange is `amq.default` in a path), JSON and status codes.

use super::access::{bad_request, change_refused, error, not_found};
use super::json::{field_table_to_json, json_to_field_table};
use super::listing::{respond, respond_in, ListQuery};
use super::messages::{decode_payload, properties_from_json};
use super::queues::visible;
use super::reply::{core_error, flag, vhost};
use super::visible_vhosts;
use crate::cluster::definitions;
use crate::core::access::User;
use crate::core::stats::{key_of, message_stats_json, EXCHANGE_FIELDS};
use crate::core::vhost::ExchangeSpec;
use crate::core::{Broker, Exchange, Message, Publish, PublishTo, VHost};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/exchanges", get(list_all))
        .route("/api/exchanges/{vhost}", get(list_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings_destination),
        )
}

/// The exchange a path segment names: `amq.default` is the default (nameless) exchange.
pub(super) fn exchange_name(segment: &str) -> &str {
    if segment == "amq.default" {
        ""
    } else {
        segment
    }
}

/// An exchange as RabbitMQ's management API shows it, with its counters and the sampler's rates.
pub(super) fn exchange_json(b: &Broker, vhost: &str, e: &Arc<Exchange>) -> Value {
    let rates = b.stats.table().rates(key_of(e));
    json!({
        "name": e.name,
        "vhost": vhost,
        "type": e.type_name(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": field_table_to_json(&e.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": Value::Null,
        "message_stats": message_stats_json(&e.stats.counts(), &rates, EXCHANGE_FIELDS),
    })
}

fn exchanges_of(b: &Broker, vhosts: &[Arc<VHost>]) -> Vec<Value> {
    vhosts
        .iter()
        .flat_map(|vh| {
            vh.exchanges()
                .into_iter()
                .map(|e| exchange_json(b, &vh.name, &e))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn list_all(
    State(b): B,
    Extension(user): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond(exchanges_of(&b, &visible_vhosts(&b, &user)), &q)
}

async fn list_in(
    State(b): B,
    Extension(user): Extension<User>,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond_in(&b, &user, &vh, &q, |vh| exchanges_of(&b, &[vh]))
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
    match vh.exchange(exchange_name(&name)) {
        Some(e) => Json(exchange_json(&b, &vh.name, &e)).into_response(),
        None => not_found(),
    }
}

#[derive(Debug, Deserialize)]
struct ExchangeBody {
    #[serde(rename = "type")]
    kind: String,
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    arguments: Option<Value>,
}

async fn declare(
    State(b): B,
    Path((vh, name)): Path<(String, String)>,
    body: Option<Json<ExchangeBody>>,
) -> Response {
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    let Some(Json(body)) = body else {
        return bad_request("expected a JSON object with the exchange's type");
    };
    let arguments = match json_to_field_table(body.arguments.as_ref()) {
        Ok(a) => a,
        Err(e) => return bad_request(e),
    };
    let name = exchange_name(&name).to_owned();
    let existed = vh.exchange(&name).is_some();
    let spec = ExchangeSpec {
        name,
        kind: body.kind,
        durable: body.durable.unwrap_or(true),
        auto_delete: body.auto_delete,
        internal: body.internal,
        arguments,
    };
    if let Some(change) = definitions::exchange_declared(&b, &vh, &spec) {
        if let Err(e) = definitions::commit(&b, change).await {
            return change_refused(e);
        }
    }
    match vh.declare_exchange(spec, false) {
        Ok(_) => {
            vh.definitions_synced().await;
            if existed {
                StatusCode::NO_CONTENT.into_response()
            } else {
                StatusCode::CREATED.into_response()
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
    let name = exchange_name(&name);
    if vh.exchange(name).is_none() {
        return not_found();
    }
    let if_unused = flag(q.get("if-unused"));
    if let Some(change) = definitions::exchange_deleted(&b, &vh, name) {
        if let Err(e) = vh.check_delete_exchange(name, if_unused) {
            return core_error(e);
        }
        if let Err(e) = definitions::commit(&b, change).await {
            return change_refused(e);
        }
    }
    match vh.delete_exchange(name, if_unused) {
        Ok(()) => {
            vh.definitions_synced().await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => core_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default = "string_encoding")]
    payload_encoding: String,
    properties: Option<Value>,
}

fn string_encoding() -> String {
    "string".into()
}

/// POST `/publish`: routes one message and answers `{"routed": bool}` once a persistent
/// message is durable in every queue it reached.
async fn publish(
    State(b): B,
    Path((vh, name)): Path<(String, String)>,
    body: Option<Json<PublishBody>>,
) -> Response {
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    let Some(Json(body)) = body else {
        return bad_request("expected routing_key, payload, payload_encoding and properties");
    };
    let Some(exchange) = vh.exchange(exchange_name(&name)) else {
        return not_found();
    };
    if exchange.internal {
        return error(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.name, vh.name
            ),
        );
    }
    if let Err(e) = vh.check_routing_key(&exchange, &body.routing_key) {
        return core_error(e);
    }
    let properties = match properties_from_json(body.properties.as_ref()) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let payload = match decode_payload(&body.payload, &body.payload_encoding) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let charge = b.memory.charge(Message::charge_size(payload.len()));
    let message = Arc::new(Message::new(
        exchange.name.clone(),
        body.routing_key,
        properties,
        None,
        payload,
        charge,
    ));
    let publish = Publish {
        to: PublishTo::Exchange(&exchange),
        message: &message,
        holdable: false,
    };
    // A delayed message counts as routed.
    let outcome = vh.publish(publish, &mut Vec::new());
    b.access.durable(outcome.lsn).await;
    Json(json!({"routed": outcome.held || outcome.queues > 0})).into_response()
}

async fn exchange_bindings(
    b: &Broker,
    user: &User,
    vh: &str,
    name: &str,
    q: &ListQuery,
    field: &str,
) -> Response {
    let vh = match visible(b, user, vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    let name = exchange_name(name);
    if vh.exchange(name).is_none() {
        return not_found();
    }
    let items = super::bindings::bindings_json(&vh)
        .into_iter()
        .filter(|bd| {
            bd[field] == name && (field == "source" || bd["destination_type"] == "exchange")
        })
        .collect();
    respond(items, q)
}

async fn bindings_source(
    State(b): B,
    Extension(user): Extension<User>,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    exchange_bindings(&b, &user, &vh, &name, &q, "source").await
}

async fn bindings_destination(
    State(b): B,
    Extension(user): Extension<User>,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    exchange_bindings(&b, &user, &vh, &name, &q, "destination").await
}
