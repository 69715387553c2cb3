//! Plain HTTP calls to the management API (blocking ureq off the runtime), answering status,
//! JSON body (Null when empty) and the `Location` header.

use super::{bounded, TestBroker};
use serde_json::Value;

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
}

/// `method` `path` with an optional JSON body and extra headers, as `user`.
pub async fn call_as(
    b: &TestBroker,
    (user, password): (&str, &str),
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let url = format!("{}{path}", b.http_url());
    let method = method.to_owned();
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{password}")
        )
    );
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    bounded(tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url)
            .header("Authorization", auth);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let response = match body {
            Some(v) => agent.run(
                req.header("Content-Type", "application/json")
                    .body(serde_json::to_vec(&v).expect("json"))
                    .expect("request"),
            ),
            None => agent.run(req.body(()).expect("request")),
        };
        let mut response = response.expect("HTTP call");
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.body_mut().read_to_string().expect("body");
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            body,
            location,
        }
    }))
    .await
    .expect("HTTP task")
}

/// As guest (an administrator in the test config).
pub async fn call(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> Answer {
    call_as(b, ("guest", "guest"), method, path, body, &[]).await
}
