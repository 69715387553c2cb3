//! rabbitmqctl's operating commands (queues, connections, consumers, policies, status, stop,
//! definitions), each a call or two to the HTTP API, printing what rabbitmqctl prints.

use super::api::{expect_ok, segment, Api};
use super::manage::Output;
use super::{cell, CtlError};
use serde_json::{json, Value};

/// The commands, with their arguments as `rabbitmqctl help` shows them.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "delete_queue",
        "[-p <vhost>] <queue_name> [--if-empty|-e] [--if-unused|-u]",
    ),
    ("purge_queue", "[-p <vhost>] <queue>"),
    ("close_connection", "<connection_name> <explanation>"),
    ("list_consumers", "[-p <vhost>] [<column> ...]"),
    ("list_policies", "[-p <vhost>]"),
    (
        "set_policy",
        "[-p <vhost>] [--priority <priority>] [--apply-to <apply-to>] <name> <pattern> <definition>",
    ),
    ("clear_policy", "[-p <vhost>] <name>"),
    ("status", ""),
    ("stop", ""),
    ("export_definitions", "<file>"),
    ("import_definitions", "<file>"),
];

/// `list_consumers` columns (rabbitmqctl's info items we have) and the JSON they read.
const CONSUMER_COLUMNS: &[(&str, &str)] = &[
    ("queue_name", "queue.name"),
    ("channel_pid", "channel_details.connection_name"),
    ("consumer_tag", "consumer_tag"),
    ("ack_required", "ack_required"),
    ("exclusive", "exclusive"),
    ("active", "active"),
    ("activity_status", "activity_status"),
    ("arguments", "arguments"),
];
const CONSUMER_DEFAULT: &[&str] = &[
    "queue_name",
    "channel_pid",
    "consumer_tag",
    "ack_required",
    "active",
    "arguments",
];

fn info(text: String) -> Output {
    Output {
        info: text,
        lines: Vec::new(),
    }
}

/// The value at a dotted path, as a cell.
fn cell_at(row: &Value, path: &str) -> String {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut at = row;
    for p in parts {
        at = &at[p];
    }
    cell(at, last)
}

/// An unknown vhost is an error, as in rabbitmqctl, not an empty listing.
pub fn require_vhost(api: &Api, vhost: &str) -> Result<(), CtlError> {
    let path = format!("/api/vhosts/{}", segment(vhost));
    match api.get(&path)? {
        (404, _) => Err(CtlError::Failed(format!(
            "Virtual host '{vhost}' does not exist"
        ))),
        answer => expect_ok(&path, answer).map(|_| ()),
    }
}

/// Runs operating command `command`; `None` when it is not one of [`COMMANDS`].
pub fn run(
    api: &Api,
    vhost: &str,
    command: &str,
    args: &[String],
) -> Option<Result<Output, CtlError>> {
    let &(name, usage) = COMMANDS.iter().find(|(c, _)| *c == command)?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let usage_error = || CtlError::Usage(format!("usage: switchboard ctl {name} {usage}"));
    let result = match (name, a.as_slice()) {
        ("delete_queue", [queue, flags @ ..]) => {
            delete_queue(api, vhost, queue, flags, usage_error)
        }
        ("purge_queue", [queue]) => {
            let path = format!("/api/queues/{}/{}/contents", segment(vhost), segment(queue));
            not_found_as(api.delete(&path), "queue", queue, vhost, &path)
                .map(|_| info(format!("Purging queue '{queue}' in vhost '{vhost}' ...")))
        }
        ("close_connection", [connection, explanation]) => {
            let path = format!("/api/connections/{}", segment(connection));
            api.delete_with(&path, &[("X-Reason", explanation)])
                .and_then(|answer| match answer {
                    (404, _) => Err(CtlError::Failed(format!(
                        "no connection named '{connection}'"
                    ))),
                    answer => expect_ok(&path, answer),
                })
                .map(|_| {
                    info(format!(
                        "Closing connection {connection}, reason: {explanation}..."
                    ))
                })
        }
        ("list_consumers", columns) => list_consumers(api, vhost, columns),
        ("list_policies", []) => list_policies(api, vhost),
        ("set_policy", rest) => set_policy(api, vhost, rest).unwrap_or_else(|| Err(usage_error())),
        ("clear_policy", [policy]) => {
            let path = format!("/api/policies/{}/{}", segment(vhost), segment(policy));
            api.delete(&path)
                .and_then(|answer| match answer {
                    (404, _) => Err(CtlError::Failed(format!(
                        "Parameter does not exist: policy '{policy}' in vhost '{vhost}'"
                    ))),
                    answer => expect_ok(&path, answer),
                })
                .map(|_| {
                    info(format!(
                        "Clearing policy \"{policy}\" on vhost \"{vhost}\" ..."
                    ))
                })
        }
        ("status", []) => status(api),
        ("stop", []) => api
            .post("/api/switchboard/stop", &json!({}))
            .and_then(|a| expect_ok("/api/switchboard/stop", a))
            .map(|v| {
                info(format!(
                    "Stopping and halting node {} ...",
                    v["node"].as_str().unwrap_or_default()
                ))
            }),
        ("export_definitions", [file]) => export_definitions(api, file),
        ("import_definitions", [file]) => import_definitions(api, file),
        _ => Err(usage_error()),
    };
    Some(result)
}

/// A 404 for a queue in rabbitmqctl's words, other failures as the broker's reason.
fn not_found_as(
    answer: Result<(u16, Value), CtlError>,
    what: &str,
    name: &str,
    vhost: &str,
    path: &str,
) -> Result<Value, CtlError> {
    match answer? {
        (404, _) => Err(CtlError::Failed(format!(
            "{what} '{name}' in vhost '{vhost}' was not found"
        ))),
        answer => expect_ok(path, answer),
    }
}

fn delete_queue(
    api: &Api,
    vhost: &str,
    queue: &str,
    flags: &[&str],
    usage_error: impl Fn() -> CtlError,
) -> Result<Output, CtlError> {
    let (mut if_empty, mut if_unused) = (false, false);
    for f in flags {
        match *f {
            "--if-empty" | "-e" => if_empty = true,
            "--if-unused" | "-u" => if_unused = true,
            _ => return Err(usage_error()),
        }
    }
    let path = format!("/api/queues/{}/{}", segment(vhost), segment(queue));
    // The count rabbitmqctl reports; the API's DELETE answers no body.
    let queue_info = not_found_as(api.get(&path), "queue", queue, vhost, &path)?;
    let mut query = Vec::new();
    if if_empty {
        query.push("if-empty=true");
    }
    if if_unused {
        query.push("if-unused=true");
    }
    let delete_path = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    not_found_as(api.delete(&delete_path), "queue", queue, vhost, &path)?;
    Ok(Output {
        info: format!("Deleting queue '{queue}' on vhost '{vhost}' ..."),
        lines: vec![format!(
            "Queue was successfully deleted with {} messages",
            queue_info["messages_ready"].as_u64().unwrap_or(0)
        )],
    })
}

fn list_consumers(api: &Api, vhost: &str, columns: &[&str]) -> Result<Output, CtlError> {
    let columns: Vec<&str> = if columns.is_empty() {
        CONSUMER_DEFAULT.to_vec()
    } else {
        columns.to_vec()
    };
    let mut paths = Vec::new();
    for c in &columns {
        match CONSUMER_COLUMNS.iter().find(|(name, _)| name == c) {
            Some((_, path)) => paths.push(*path),
            None => {
                return Err(CtlError::UnknownColumn {
                    command: "list_consumers",
                    column: (*c).to_owned(),
                    known: CONSUMER_COLUMNS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    require_vhost(api, vhost)?;
    let rows = api.get_ok(&format!("/api/consumers/{}", segment(vhost)))?;
    let mut lines = vec![columns.join("\t")];
    for row in rows.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let cells: Vec<String> = paths.iter().map(|p| cell_at(row, p)).collect();
        lines.push(cells.join("\t"));
    }
    Ok(Output {
        info: format!("Listing consumers in vhost {vhost} ..."),
        lines,
    })
}

fn list_policies(api: &Api, vhost: &str) -> Result<Output, CtlError> {
    require_vhost(api, vhost)?;
    let rows = api.get_ok(&format!("/api/policies/{}", segment(vhost)))?;
    let columns = [
        "vhost",
        "name",
        "pattern",
        "apply-to",
        "definition",
        "priority",
    ];
    let mut lines = vec![columns.join("\t")];
    for row in rows.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match c {
                // rabbitmqctl prints the definition as JSON.
                &"definition" => row[*c].to_string(),
                other => cell(row, other),
            })
            .collect();
        lines.push(cells.join("\t"));
    }
    Ok(Output {
        info: format!("Listing policies for vhost \"{vhost}\" ..."),
        lines,
    })
}

/// `set_policy [--priority N] [--apply-to X] name pattern definition`; None on bad usage.
fn set_policy(api: &Api, vhost: &str, args: &[&str]) -> Option<Result<Output, CtlError>> {
    let (mut priority, mut apply_to) = (0i32, "all".to_owned());
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--priority" => priority = it.next()?.parse().ok()?,
            "--apply-to" => apply_to = (*it.next()?).to_owned(),
            other => positional.push(other),
        }
    }
    let [name, pattern, definition] = positional.as_slice() else {
        return None;
    };
    let definition: Value = match serde_json::from_str(definition) {
        Ok(v) => v,
        Err(e) => {
            return Some(Err(CtlError::Failed(format!(
                "policy definition is not valid JSON: {e}"
            ))))
        }
    };
    let path = format!("/api/policies/{}/{}", segment(vhost), segment(name));
    let body = json!({
        "pattern": pattern, "definition": definition,
        "priority": priority, "apply-to": apply_to,
    });
    Some(
        api.put(&path, &body)
            .and_then(|a| match a {
                (404, _) => Err(CtlError::Failed(format!(
                    "Virtual host '{vhost}' does not exist"
                ))),
                a => expect_ok(&path, a),
            })
            .map(|_| {
                info(format!(
                    "Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{vhost}\" ..."
                ))
            }),
    )
}

fn status(api: &Api) -> Result<Output, CtlError> {
    let overview = api.get_ok("/api/overview")?;
    let nodes = api.get_ok("/api/nodes")?;
    let node = nodes.get(0).cloned().unwrap_or(Value::Null);
    let name = overview["node"].as_str().unwrap_or_default();
    let mut lines = vec![
        "Runtime".to_owned(),
        String::new(),
        format!("OS PID: {}", cell(&node, "os_pid")),
        format!(
            "Switchboard version: {}",
            cell(&overview, "product_version")
        ),
        format!("Node name: {name}"),
        format!(
            "Uptime (seconds): {}",
            node["uptime"].as_u64().unwrap_or(0) / 1000
        ),
        String::new(),
        "Alarms".to_owned(),
        String::new(),
    ];
    let mut alarms = Vec::new();
    if node["mem_alarm"] == true {
        alarms.push("memory");
    }
    if node["disk_free_alarm"] == true {
        alarms.push("free disk space");
    }
    if alarms.is_empty() {
        lines.push("(none)".into());
    } else {
        lines.extend(alarms.iter().map(|a| format!("{a} alarm in effect")));
    }
    lines.extend([
        String::new(),
        "Memory".to_owned(),
        String::new(),
        format!("Used by messages: {} bytes", cell(&node, "mem_used")),
        format!("High watermark: {} bytes", cell(&node, "mem_limit")),
        String::new(),
        "Totals".to_owned(),
        String::new(),
    ]);
    for k in [
        "connections",
        "channels",
        "queues",
        "exchanges",
        "consumers",
    ] {
        lines.push(format!("{k}: {}", cell(&overview["object_totals"], k)));
    }
    lines.extend([String::new(), "Listeners".to_owned(), String::new()]);
    for l in overview["listeners"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        lines.push(format!(
            "Interface: {}, port: {}, protocol: {}",
            cell(l, "ip_address"),
            cell(l, "port"),
            cell(l, "protocol")
        ));
    }
    Ok(Output {
        info: format!("Status of node {name} ..."),
        lines,
    })
}

fn export_definitions(api: &Api, file: &str) -> Result<Output, CtlError> {
    let defs = api.get_ok("/api/definitions")?;
    let text = serde_json::to_string_pretty(&defs)
        .map_err(|e| CtlError::Failed(format!("cannot render the definitions: {e}")))?;
    if file == "-" {
        return Ok(Output {
            info: "Exporting definitions in JSON to standard output ...".into(),
            lines: vec![text],
        });
    }
    std::fs::write(file, text)
        .map_err(|e| CtlError::Failed(format!("cannot write {file}: {e}")))?;
    Ok(info(format!(
        "Exporting definitions in JSON to a file at \"{file}\" ..."
    )))
}

fn import_definitions(api: &Api, file: &str) -> Result<Output, CtlError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CtlError::Failed(format!("cannot read {file}: {e}")))?;
    let defs: Value = serde_json::from_str(&text)
        .map_err(|e| CtlError::Failed(format!("{file} is not valid JSON: {e}")))?;
    let answer = api.post("/api/definitions", &defs)?;
    expect_ok("/api/definitions", answer)?;
    Ok(info(format!(
        "Importing definitions in JSON from a file at \"{file}\" ..."
    )))
}
