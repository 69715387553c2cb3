//! `/api/bindings`: list bindings, bind (POST, answered with the new binding's `Location`) and
//! unbind by `properties_key`, in RabbitMQ's four path forms (exchange to queue `e/../q/..`,
//! exchange to exchange `e/../e/..`).

use super::access::{bad_request, change_refused, not_found};
use super::exchanges::exchange_name;
use super::json::{field_table_to_json, json_to_field_table};
use super::listing::{respond, respond_in, ListQuery};
use super::queues::visible;
use super::reply::{core_error, vhost, NotFound, API_CONNECTION};
use super::visible_vhosts;
use crate::cluster::definitions;
use crate::core::access::User;
use crate::core::{Broker, VHost};
use crate::store::definitions::table_text;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::Arc;
use switchboard_amqp::FieldTable;

type B = State<Arc<Broker>>;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/bindings", get(list_all))
        .route("/api/bindings/{vhost}", get(list_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(list_between).post(bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(show).delete(unbind),
        )
}

/// What RabbitMQ leaves unquoted in a properties key (its `quote_plus` less `~`, which
/// separates the routing key from the arguments' hash).
const KEY_QUOTED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// A binding's id within its source and destination, as RabbitMQ forms it: the quoted routing
/// key (`~` when empty and without arguments), then `~` and a hash of the arguments if any.
pub(super) fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    let key = utf8_percent_encode(routing_key, KEY_QUOTED).to_string();
    if arguments.is_empty() {
        return if key.is_empty() { "~".into() } else { key };
    }
    let digest = sha2::Sha256::digest(table_text(arguments).as_bytes());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..4]);
    format!("{key}~{hash}")
}

/// Every binding in `vh`, the default exchange's implicit ones included, as RabbitMQ lists them.
pub(super) fn bindings_json(vh: &VHost) -> Vec<Value> {
    vh.bindings()
        .into_iter()
        .map(|(source, b)| {
            json!({
                "source": source,
                "vhost": vh.name,
                "destination": b.destination.name(),
                "destination_type": b.destination.kind_str(),
                "routing_key": b.routing_key,
                "arguments": field_table_to_json(&b.arguments),
                "properties_key": properties_key(&b.routing_key, &b.arguments),
            })
        })
        .collect()
}

async fn list_all(
    State(b): B,
    Extension(user): Extension<User>,
    Query(q): Query<ListQuery>,
) -> Response {
    let items = visible_vhosts(&b, &user)
        .iter()
        .flat_map(|vh| bindings_json(vh))
        .collect();
    respond(items, &q)
}

async fn list_in(
    State(b): B,
    Extension(user): Extension<User>,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    respond_in(&b, &user, &vh, &q, |vh| bindings_json(&vh))
}

/// `q` or `e` in a path as the destination type it names.
fn destination_type(kind: &str) -> Option<&'static str> {
    match kind {
        "q" => Some("queue"),
        "e" => Some("exchange"),
        _ => None,
    }
}

/// The bindings from `source` to `destination` of `kind`, after checking that both exist.
fn between(
    vh: &VHost,
    source: &str,
    kind: &str,
    destination: &str,
) -> Result<Vec<Value>, NotFound> {
    let dtype = destination_type(kind).ok_or(NotFound)?;
    let source = exchange_name(source);
    let exists = match dtype {
        "queue" => vh.queue(destination).is_some(),
        _ => vh.exchange(exchange_name(destination)).is_some(),
    };
    if vh.exchange(source).is_none() || !exists {
        return Err(NotFound);
    }
    let destination = if dtype == "exchange" {
        exchange_name(destination)
    } else {
        destination
    };
    Ok(bindings_json(vh)
        .into_iter()
        .filter(|b| {
            b["source"] == source
                && b["destination_type"] == dtype
                && b["destination"] == destination
        })
        .collect())
}

async fn list_between(
    State(b): B,
    Extension(user): Extension<User>,
    Path((vh, source, kind, destination)): Path<(String, String, String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let vh = match visible(&b, &user, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    match between(&vh, &source, &kind, &destination) {
        Ok(items) => respond(items, &q),
        Err(r) => r.into_response(),
    }
}

/// Whether a path's properties key names the binding `b` (clients send it quoted or not).
fn key_matches(b: &Value, segment: &str) -> bool {
    let key = b["properties_key"].as_str().unwrap_or_default();
    key == segment
        || percent_decode_str(key)
            .decode_utf8()
            .is_ok_and(|k| k == segment)
}

fn found(
    vh: &VHost,
    source: &str,
    kind: &str,
    destination: &str,
    props: &str,
) -> Result<Value, NotFound> {
    between(vh, source, kind, destination)?
        .into_iter()
        .find(|b| key_matches(b, props))
        .ok_or(NotFound)
}

async fn show(
    State(b): B,
    Extension(user): Extension<User>,
    Path((vh, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let vh = match visible(&b, &user, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    match found(&vh, &source, &kind, &destination, &props) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct BindBody {
    #[serde(default)]
    routing_key: String,
    arguments: Option<Value>,
}

async fn bind(
    State(b): B,
    Path((vh_name, source, kind, destination)): Path<(String, String, String, String)>,
    body: Option<Json<BindBody>>,
) -> Response {
    let vh = match vhost(&b, &vh_name) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = between(&vh, &source, &kind, &destination) {
        return r.into_response();
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let arguments = match json_to_field_table(body.arguments.as_ref()) {
        Ok(a) => a,
        Err(e) => return bad_request(e),
    };
    let src = exchange_name(&source);
    let ends = (
        src,
        destination_type(&kind).unwrap_or("queue"),
        exchange_name(&destination),
    );
    let change = definitions::binding_changed(&b, &vh, true, ends, &body.routing_key, &arguments);
    if let Some(change) = change {
        if let Err(e) = definitions::commit(&b, change).await {
            return change_refused(e);
        }
    }
    let result = if kind == "q" {
        vh.bind_queue(
            &destination,
            src,
            &body.routing_key,
            &arguments,
            API_CONNECTION,
        )
    } else {
        vh.bind_exchange(
            exchange_name(&destination),
            src,
            &body.routing_key,
            &arguments,
        )
    };
    if let Err(e) = result {
        return core_error(e);
    }
    vh.definitions_synced().await;
    let seg = |s: &str| utf8_percent_encode(s, KEY_QUOTED).to_string();
    let location = format!(
        "/api/bindings/{}/e/{}/{kind}/{}/{}",
        seg(&vh_name),
        seg(&source),
        seg(&destination),
        properties_key(&body.routing_key, &arguments)
    );
    (StatusCode::CREATED, [(header::LOCATION, location)]).into_response()
}

async fn unbind(
    State(b): B,
    Path((vh, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let vh = match vhost(&b, &vh) {
        Ok(vh) => vh,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = found(&vh, &source, &kind, &destination, &props) {
        return r.into_response();
    }
    // The binding's own arguments (a JSON round trip would change their AMQP types).
    let dtype = destination_type(&kind).unwrap_or("queue");
    let Some((_, binding)) = vh.bindings().into_iter().find(|(src, b)| {
        src == exchange_name(&source)
            && b.destination.kind_str() == dtype
            && b.destination.name() == exchange_name(&destination)
            && key_matches(
                &json!({"properties_key": properties_key(&b.routing_key, &b.arguments)}),
                &props,
            )
    }) else {
        return not_found();
    };
    let (routing_key, arguments) = (binding.routing_key.as_str(), &binding.arguments);
    let src = exchange_name(&source);
    let ends = (src, dtype, exchange_name(&destination));
    if let Some(change) = definitions::binding_changed(&b, &vh, false, ends, routing_key, arguments)
    {
        if let Err(e) = definitions::commit(&b, change).await {
            return change_refused(e);
        }
    }
    let result = if kind == "q" {
        vh.unbind_queue(&destination, src, routing_key, arguments, API_CONNECTION)
    } else {
        vh.unbind_exchange(exchange_name(&destination), src, routing_key, arguments)
    };
    match result {
        Ok(()) => {
            vh.definitions_synced().await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => core_error(e),
    }
}
