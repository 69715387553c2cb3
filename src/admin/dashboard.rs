//! The web dashboard: one HTML page with its script and style sheet, embedded in the binary and
//! served without credentials at `/` (as RabbitMQ's management UI is). The page asks for a user
//! name and password and sends them with every API call; the API checks the user's tags.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// `/` and the page's assets, for the router's public (unauthenticated) part.
pub(super) fn routes() -> Router<Arc<crate::core::Broker>> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/dashboard/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary; a stale script against a new API would break.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
