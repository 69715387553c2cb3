//! The HTTP calls `switchboard ctl` makes: basic auth as the given user, JSON both ways, and
//! RabbitMQ's error bodies turned into messages.

use super::CtlError;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

/// A broker's HTTP API as one user.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    authorization: String,
}

/// One path segment (a vhost or user name), percent-encoded: `/` becomes `%2F`.
pub fn segment(name: &str) -> String {
    utf8_percent_encode(name, NON_ALPHANUMERIC).to_string()
}

impl Api {
    pub fn new(base_url: &str, user: &str, password: &str) -> Self {
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{password}"),
        );
        Api {
            base: base_url.trim_end_matches('/').to_owned(),
            authorization: format!("Basic {auth}"),
        }
    }

    /// The same API as another user.
    pub fn as_user(&self, user: &str, password: &str) -> Self {
        Api::new(&self.base, user, password)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status and JSON body (Null when empty) of a call, whatever the status.
    fn answer(
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Value), CtlError> {
        let mut response = result.map_err(|e| CtlError::Request {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CtlError::Answer {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| CtlError::Answer {
                url: url.to_owned(),
                reason: e.to_string(),
            })?
        };
        Ok((status, body))
    }

    /// Our authorization, and answers of every status returned rather than errors.
    fn prepare<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        request
            .config()
            .http_status_as_error(false)
            .build()
            .header("Authorization", &self.authorization)
    }

    /// GET: the status and body.
    pub fn get(&self, path: &str) -> Result<(u16, Value), CtlError> {
        let url = self.url(path);
        let result = self.prepare(ureq::get(&url)).call();
        Self::answer(&url, result)
    }

    /// PUT with a JSON body: the status and body.
    pub fn put(&self, path: &str, body: &Value) -> Result<(u16, Value), CtlError> {
        let url = self.url(path);
        let result = self.prepare(ureq::put(&url)).send_json(body);
        Self::answer(&url, result)
    }

    /// DELETE: the status and body.
    pub fn delete(&self, path: &str) -> Result<(u16, Value), CtlError> {
        let url = self.url(path);
        let result = self.prepare(ureq::delete(&url)).call();
        Self::answer(&url, result)
    }

    /// POST with a JSON body: the status and body.
    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), CtlError> {
        let url = self.url(path);
        let result = self.prepare(ureq::post(&url)).send_json(body);
        Self::answer(&url, result)
    }

    /// DELETE with extra headers (`X-Reason`): the status and body.
    pub fn delete_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), CtlError> {
        let url = self.url(path);
        let mut request = self.prepare(ureq::delete(&url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::answer(&url, request.call())
    }

    /// GET that must succeed: the body.
    pub fn get_ok(&self, path: &str) -> Result<Value, CtlError> {
        expect_ok(path, self.get(path)?)
    }
}

/// The body of a 2xx answer, else the broker's reason as an error.
pub fn expect_ok(path: &str, (status, body): (u16, Value)) -> Result<Value, CtlError> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    Err(CtlError::Refused {
        path: path.to_owned(),
        status,
        reason: reason.to_owned(),
    })
}
