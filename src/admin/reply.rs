//! Answers shared by the management endpoints: core errors with RabbitMQ's status codes and
//! bodies, and the vhost a path names.

use super::access::{bad_request, error, not_found};
use crate::core::error::{CoreError, ErrorKind};
use crate::core::{Broker, VHost};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The connection id the management API acts as: connections are numbered from 1, so no
/// client's exclusive queue belongs to it.
pub(super) const API_CONNECTION: crate::core::queue::ConnectionId = 0;

/// A core refusal as RabbitMQ's management plugin answers the AMQP error behind it: not found
/// is 404, access refused 401 `not_authorised`, every other refusal 400 `bad_request`.
pub(super) fn core_error(e: CoreError) -> Response {
    match e.kind {
        ErrorKind::NotFound => error(StatusCode::NOT_FOUND, "Object Not Found", e.message),
        ErrorKind::AccessRefused => error(StatusCode::UNAUTHORIZED, "not_authorised", e.message),
        _ => bad_request(e.message),
    }
}

/// A missing object (vhost, queue, exchange, binding), answered with RabbitMQ's 404.
#[derive(Debug, Clone, Copy)]
pub(super) struct NotFound;

impl IntoResponse for NotFound {
    fn into_response(self) -> Response {
        not_found()
    }
}

/// The vhost named in a path, or RabbitMQ's 404.
pub(super) fn vhost(b: &Broker, name: &str) -> Result<Arc<VHost>, NotFound> {
    b.vhost(name).ok_or(NotFound)
}

/// `true`/`false` query flags as RabbitMQ reads them (anything but `true` is false).
pub(super) fn flag(v: Option<&String>) -> bool {
    v.map(String::as_str) == Some("true")
}
