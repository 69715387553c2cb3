//! A Jepsen-style history of client operations (invoke, then ok, fail or info per operation)
//! and the checks made over it after a fault run:
//!
//! - **messages**: every publish that was confirmed (`ok`) was delivered at least once;
//! - **definitions**: each key's final state (what every node exports) is one a serial order
//!   of the writes allows: the effect of the last write that succeeded, or of any write whose
//!   outcome is unknown (`info`: refused with 503 `no_quorum`, timed out, connection lost),
//!   since such a write may have been committed at any later point, or not at all;
//! - **leaders**: no two nodes were ever seen leading in the same term.
//!
//! Histories can be written to a file as JSON lines as they are recorded.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    /// Done, and acknowledged as done.
    Ok,
    /// Definitely not done (the request never reached a broker, or was refused before any
    /// change was proposed).
    Fail,
    /// Unknown: it may have been done, now or later.
    Info,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the history began.
    pub t: u64,
    /// Who did it (`amqp-pub-n0`, `defs`, `monitor`, `nemesis`, ...).
    pub process: String,
    pub kind: Kind,
    /// What was done: `publish`, `deliver`, `put`, `delete`, `status`, a fault's name.
    pub f: String,
    /// What it was done to: a message stream, a definitions key, a node.
    pub key: String,
    pub value: Value,
    /// Why it failed or is unknown, when the client knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
    /// Confirmed publishes per stream so far (read while the load runs).
    confirmed: Mutex<BTreeMap<String, usize>>,
    file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl History {
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
            confirmed: Mutex::new(BTreeMap::new()),
            file: None,
        }
    }

    /// A history also written, one JSON event a line, to `path`.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::File::create(path)?;
        Ok(History {
            file: Some(Mutex::new(std::io::BufWriter::new(f))),
            ..History::new()
        })
    }

    pub fn record(&self, process: &str, kind: Kind, f: &str, key: &str, value: Value) {
        self.record_why(process, kind, f, key, value, None);
    }

    /// [`History::record`] with the reason a call failed or has no known outcome.
    pub fn record_why(
        &self,
        process: &str,
        kind: Kind,
        f: &str,
        key: &str,
        value: Value,
        error: Option<String>,
    ) {
        if kind == Kind::Ok && f == "publish" {
            *self
                .confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.to_owned())
                .or_default() += 1;
        }
        let e = Event {
            t: self.start.elapsed().as_millis() as u64,
            process: process.into(),
            kind,
            f: f.into(),
            key: key.into(),
            value,
            error,
        };
        if let Some(file) = &self.file {
            let mut w = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = serde_json::to_writer(&mut *w, &e);
            let _ = w.write_all(b"\n");
        }
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    pub fn flush(&self) {
        if let Some(file) = &self.file {
            let _ = file.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Confirmed publishes per stream so far.
    pub fn confirmed(&self) -> BTreeMap<String, usize> {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// [`check_messages`] over the events so far, without copying them.
    pub fn check_messages(&self) -> BTreeMap<String, StreamCheck> {
        check_messages(&self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// Per message stream: how many were confirmed, delivered, and which confirmed ones were not.
#[derive(Debug, Default, Clone)]
pub struct StreamCheck {
    pub confirmed: usize,
    pub unknown: usize,
    pub delivered: usize,
    pub redelivered: usize,
    pub lost: Vec<u64>,
}

/// Confirmed publishes (`ok` `publish`, key = stream, value = sequence number) against
/// deliveries (`ok` `deliver`, same key and value).
pub fn check_messages(events: &[Event]) -> BTreeMap<String, StreamCheck> {
    let mut confirmed: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut delivered: BTreeMap<&str, BTreeMap<u64, usize>> = BTreeMap::new();
    let mut out: BTreeMap<String, StreamCheck> = BTreeMap::new();
    for e in events {
        let Some(seq) = e.value.as_u64() else {
            continue;
        };
        match (e.f.as_str(), e.kind) {
            ("publish", Kind::Ok) => {
                confirmed.entry(&e.key).or_default().insert(seq);
            }
            ("publish", Kind::Info) => out.entry(e.key.clone()).or_default().unknown += 1,
            ("deliver", Kind::Ok) => {
                *delivered.entry(&e.key).or_default().entry(seq).or_default() += 1;
            }
            _ => {}
        }
    }
    for (stream, seqs) in &confirmed {
        let got = delivered.get(stream);
        let c = out.entry(stream.to_string()).or_default();
        c.confirmed = seqs.len();
        c.lost = seqs
            .iter()
            .filter(|s| got.is_none_or(|g| !g.contains_key(s)))
            .copied()
            .collect();
    }
    for (stream, got) in &delivered {
        let c = out.entry(stream.to_string()).or_default();
        c.delivered = got.len();
        c.redelivered = got.values().filter(|n| **n > 1).count();
    }
    out
}

/// A definitions write's effect: the key's value after it (`None`: removed).
pub type Effect = Option<String>;

/// Checks each key's `observed` final state (absent keys: `None`) against the `put`/`delete`
/// operations of the history (every event of a `put` carries the value written; a `delete`
/// that succeeded removes, one answered `not_found` changes nothing). Returns the anomalies.
pub fn check_definitions(events: &[Event], observed: &BTreeMap<String, String>) -> Vec<String> {
    // Per key: the effect of the last write that succeeded, and every effect still possible.
    let mut last_ok: BTreeMap<&str, Effect> = BTreeMap::new();
    let mut maybe: BTreeMap<&str, BTreeSet<Effect>> = BTreeMap::new();
    for e in events {
        if e.f != "put" && e.f != "delete" {
            continue;
        }
        let effect: Effect = if e.f == "put" {
            Some(e.value.as_str().unwrap_or_default().to_owned())
        } else {
            None
        };
        match e.kind {
            Kind::Invoke | Kind::Fail => {}
            Kind::Ok => {
                // A delete answered 404 found nothing to remove: no effect.
                if e.f == "put" || e.value != "not_found" {
                    last_ok.insert(&e.key, effect);
                }
            }
            Kind::Info => {
                maybe.entry(&e.key).or_default().insert(effect);
            }
        }
    }
    let keys: BTreeSet<&str> = last_ok
        .keys()
        .chain(maybe.keys())
        .copied()
        .chain(observed.keys().map(String::as_str))
        .collect();
    let mut anomalies = Vec::new();
    for key in keys {
        let seen: Effect = observed.get(key).cloned();
        let last = last_ok.get(key).cloned().unwrap_or(None);
        let possible = maybe.get(key);
        if seen != last && !possible.is_some_and(|p| p.contains(&seen)) {
            anomalies.push(format!(
                "definitions: {key} is {seen:?} at the end, but the last successful write left \
                 {last:?} and no write of unknown outcome could leave {seen:?} (possible: {possible:?})"
            ));
        }
    }
    anomalies
}

/// `status` events of the monitor (value: `{"term", "leader", "role"}` as a node reported
/// them, key = that node): terms in which two different leaders were seen.
pub fn check_leaders(events: &[Event]) -> Vec<String> {
    let mut by_term: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.f == "status" && e.kind == Kind::Ok)
    {
        let Some(term) = e.value["term"].as_u64() else {
            continue;
        };
        if let Some(l) = e.value["leader"].as_str() {
            by_term.entry(term).or_default().insert(l.to_owned());
        }
        if e.value["role"] == "leader" {
            by_term.entry(term).or_default().insert(e.key.clone());
        }
    }
    by_term
        .into_iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(term, l)| format!("leaders: term {term} had {l:?}"))
        .collect()
}
