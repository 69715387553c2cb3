//! `/api/mqtt/sessions` (ours; RabbitMQ has no such endpoint): MQTT sessions, connected or
//! waiting for their client, with their session queue's depth, for the dashboard.

use super::visible_vhosts;
use crate::adapter::mqtt::registry::MqttState;
use crate::core::access::User;
use crate::core::{Broker, VHost};
use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<Broker>> {
    Router::new().route("/api/mqtt/sessions", get(sessions))
}

/// Users see the sessions of the vhosts they see.
async fn sessions(
    State(b): State<Arc<Broker>>,
    Extension(me): Extension<User>,
    Extension(state): Extension<Arc<MqttState>>,
) -> Json<Value> {
    let vhosts: Vec<Arc<VHost>> = visible_vhosts(&b, &me);
    let out = state
        .session_summaries()
        .into_iter()
        .filter_map(|s| {
            let vh = vhosts.iter().find(|v| v.name == s.vhost)?;
            let messages = vh.queue(&s.queue).map_or(0, |q| {
                let st = q.stats_recent();
                st.ready + st.unacked
            });
            Some(json!({
                "client_id": s.client_id,
                "vhost": s.vhost,
                "queue": s.queue,
                "connected": s.connected,
                "subscriptions": s.subscriptions,
                "in_flight": s.in_flight,
                "pending": s.pending,
                "messages": messages,
                "expiry_interval": s.expiry_interval,
            }))
        })
        .collect();
    Json(Value::Array(out))
}
