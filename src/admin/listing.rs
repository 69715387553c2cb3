//! The query parameters RabbitMQ's list endpoints take, applied to a listing: `name` with
//! `use_regex` filters on the name, `sort` (a dotted field path) with `sort_reverse` orders,
//! `columns` (comma-separated dotted paths) keeps only those fields, and `page` with
//! `page_size` answers one page wrapped in RabbitMQ's pagination object instead of an array.

use super::access::bad_request;
use super::queues::visible;
use crate::core::access::User;
use crate::core::{Broker, VHost};
use axum::response::{IntoResponse, Response};
use axum::Json;
use regex::RegexBuilder;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::sync::Arc;

/// RabbitMQ's default and largest page sizes.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;

/// The listing parameters as they come in the query string (all optional, all text, so that a
/// bad number is answered with RabbitMQ's 400 rather than axum's rejection).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    page: Option<String>,
    page_size: Option<String>,
    name: Option<String>,
    use_regex: Option<String>,
    sort: Option<String>,
    sort_reverse: Option<String>,
    columns: Option<String>,
}

/// Applies `q` to `items` and answers the listing (an array, or a page object).
/// `items` of the vhost `name` as a page of `q`, when `user` may see that vhost; RabbitMQ's 404
/// when not (the `/api/{resource}/{vhost}` listings).
pub(super) fn respond_in(
    b: &Broker,
    user: &User,
    name: &str,
    q: &ListQuery,
    items: impl FnOnce(Arc<VHost>) -> Vec<Value>,
) -> Response {
    match visible(b, user, name) {
        Ok(vh) => respond(items(vh), q),
        Err(r) => r.into_response(),
    }
}

pub(super) fn respond(items: Vec<Value>, q: &ListQuery) -> Response {
    match apply(items, q) {
        Ok(v) => Json(v).into_response(),
        Err(reason) => bad_request(reason),
    }
}

fn is_true(v: &Option<String>) -> bool {
    v.as_deref() == Some("true")
}

fn positive(name: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{name} must be a positive integer, got '{v}'")),
    }
}

pub(super) fn apply(mut items: Vec<Value>, q: &ListQuery) -> Result<Value, String> {
    let total = items.len();
    if let Some(name) = q.name.as_deref().filter(|n| !n.is_empty()) {
        let matcher = if is_true(&q.use_regex) {
            RegexBuilder::new(name)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("invalid name regex: {e}"))?
        } else {
            RegexBuilder::new(&regex::escape(name))
                .case_insensitive(true)
                .build()
                .map_err(|e| e.to_string())?
        };
        items.retain(|i| {
            i.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| matcher.is_match(n))
        });
    }
    if let Some(sort) = q.sort.as_deref().filter(|s| !s.is_empty()) {
        items.sort_by(|a, b| compare(lookup(a, sort), lookup(b, sort)));
    }
    if is_true(&q.sort_reverse) {
        items.reverse();
    }
    let columns: Option<Vec<&str>> = q.columns.as_deref().map(|c| {
        c.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    });
    let project = |items: Vec<Value>| -> Vec<Value> {
        match &columns {
            Some(cols) => items.iter().map(|i| only_columns(i, cols)).collect(),
            None => items,
        }
    };
    let Some(page) = q.page.as_deref() else {
        return Ok(Value::Array(project(items)));
    };
    let page = positive("page", page)?;
    let page_size = match q.page_size.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(s) => positive("page_size", s)?,
    };
    if page_size > MAX_PAGE_SIZE {
        return Err(format!("page_size must not exceed {MAX_PAGE_SIZE}"));
    }
    let filtered = items.len();
    let page_count = filtered.div_ceil(page_size);
    if page > page_count.max(1) {
        return Err(format!("page out of range: {page} > {}", page_count.max(1)));
    }
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    let page_items = project(page_items);
    Ok(json!({
        "filtered_count": filtered,
        "item_count": page_items.len(),
        "items": page_items,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
}

/// The value at a dotted path (`message_stats.publish`).
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// Missing first, then booleans, numbers and strings in their natural order.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_)) => 1,
            Some(Value::Number(_)) => 2,
            Some(Value::String(_)) => 3,
            Some(_) => 4,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// `item` with only the fields the dotted `columns` name, nested as they were.
fn only_columns(item: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    for col in columns {
        let Some(found) = lookup(item, col) else {
            continue;
        };
        let mut keys = col.split('.').peekable();
        let mut at = &mut out;
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                at.insert(key.to_owned(), found.clone());
                break;
            }
            let next = at
                .entry(key.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(m) => at = m,
                _ => break,
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        serde_json::from_value(json!(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<Map<String, Value>>()))
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn items(n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| json!({"name": format!("q{i:02}"), "messages": i % 3, "stats": {"x": i}}))
            .collect()
    }

    #[test]
    fn pages_report_rabbitmq_counts() {
        let v = apply(items(25), &q(&[("page", "3"), ("page_size", "10")])).unwrap();
        assert_eq!(v["filtered_count"], 25);
        assert_eq!(v["total_count"], 25);
        assert_eq!(v["page_count"], 3);
        assert_eq!(v["item_count"], 5);
        assert_eq!(v["items"][0]["name"], "q20");
    }

    #[test]
    fn bad_and_out_of_range_pages_are_refused() {
        assert!(apply(items(5), &q(&[("page", "0")])).is_err());
        assert!(apply(items(5), &q(&[("page", "x")])).is_err());
        assert!(apply(items(5), &q(&[("page", "2"), ("page_size", "5")])).is_err());
        assert!(apply(items(5), &q(&[("page", "1"), ("page_size", "501")])).is_err());
        // An empty listing still has its first page.
        let v = apply(Vec::new(), &q(&[("page", "1")])).unwrap();
        assert_eq!(v["item_count"], 0);
    }

    #[test]
    fn name_filters_as_substring_or_regex() {
        let v = apply(items(25), &q(&[("name", "Q1")])).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(10));
        let v = apply(
            items(25),
            &q(&[("name", "^q(03|17)$"), ("use_regex", "true")]),
        )
        .unwrap();
        assert_eq!(v, json!([items(25)[3], items(25)[17]]));
        assert!(apply(items(1), &q(&[("name", "("), ("use_regex", "true")])).is_err());
    }

    #[test]
    fn sorts_by_dotted_field_and_projects_columns() {
        let v = apply(
            items(4),
            &q(&[
                ("sort", "stats.x"),
                ("sort_reverse", "true"),
                ("columns", "name,stats.x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            v,
            json!([
                {"name": "q03", "stats": {"x": 3}},
                {"name": "q02", "stats": {"x": 2}},
                {"name": "q01", "stats": {"x": 1}},
                {"name": "q00", "stats": {"x": 0}},
            ])
        );
    }
}
