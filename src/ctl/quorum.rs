//! `rabbitmq-queues`' membership commands for quorum queues: `add_member`, `delete_member`,
//! `grow` and `shrink`, each a call per queue to
//! `/api/switchboard/queues/{vhost}/{name}/members`.

use super::api::{expect_ok, segment, Api};
use super::manage::Output;
use super::CtlError;
use serde_json::{json, Value};

pub const COMMANDS: &[(&str, &str)] = &[
    ("add_member", "[-p <vhost>] <queue> <node>"),
    ("delete_member", "[-p <vhost>] <queue> <node>"),
    ("grow", "<node> <all|even>"),
    ("shrink", "<node>"),
];

/// Runs membership command `command`; `None` when it is not one of [`COMMANDS`].
pub fn run(
    api: &Api,
    vhost: &str,
    command: &str,
    args: &[String],
) -> Option<Result<Output, CtlError>> {
    let &(name, usage) = COMMANDS.iter().find(|(c, _)| *c == command)?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match (name, a.as_slice()) {
        ("add_member", [queue, node]) => add(api, vhost, queue, node).map(|()| Output {
            info: format!("Adding a replica for queue {queue} on node {node}..."),
            lines: Vec::new(),
        }),
        ("delete_member", [queue, node]) => remove(api, vhost, queue, node).map(|()| Output {
            info: format!("Removing a replica of queue {queue} on node {node}..."),
            lines: Vec::new(),
        }),
        ("grow", [node, which @ ("all" | "even")]) => grow(api, node, which == &"even"),
        ("shrink", [node]) => shrink(api, node),
        _ => Err(CtlError::Usage(format!(
            "usage: switchboard ctl {name} {usage}"
        ))),
    };
    Some(result)
}

fn members_path(vhost: &str, queue: &str) -> String {
    format!(
        "/api/switchboard/queues/{}/{}/members",
        segment(vhost),
        segment(queue)
    )
}

fn add(api: &Api, vhost: &str, queue: &str, node: &str) -> Result<(), CtlError> {
    let path = members_path(vhost, queue);
    expect_ok(&path, api.post(&path, &json!({ "node": node }))?).map(|_| ())
}

fn remove(api: &Api, vhost: &str, queue: &str, node: &str) -> Result<(), CtlError> {
    let path = format!("{}/{}", members_path(vhost, queue), segment(node));
    expect_ok(&path, api.delete(&path)?).map(|_| ())
}

/// Every quorum queue: its vhost, name and members.
fn quorum_queues(api: &Api) -> Result<Vec<(String, String, Vec<String>)>, CtlError> {
    let all = api.get_ok("/api/queues")?;
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Ok(all
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|q| q["type"] == "quorum")
        .map(|q| {
            let members = q["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            (text(q, "vhost"), text(q, "name"), members)
        })
        .collect())
}

/// One line per queue changed, as `rabbitmq-queues` prints them: vhost, name, size, result.
fn line(vhost: &str, queue: &str, size: usize, result: &Result<(), CtlError>) -> String {
    let outcome = match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    format!("{vhost}\t{queue}\t{size}\t{outcome}")
}

/// Adds `node` to every quorum queue that lacks it (`even`: only those with an even number
/// of replicas, which one more makes odd).
fn grow(api: &Api, node: &str, even: bool) -> Result<Output, CtlError> {
    let mut lines = vec!["vhost\tname\tsize\tresult".to_owned()];
    for (vhost, queue, members) in quorum_queues(api)? {
        if members.iter().any(|m| m == node) || (even && members.len() % 2 != 0) {
            continue;
        }
        let result = add(api, &vhost, &queue, node);
        let size = members.len() + usize::from(result.is_ok());
        lines.push(line(&vhost, &queue, size, &result));
    }
    Ok(Output {
        info: format!("Growing quorum queues onto node {node}..."),
        lines,
    })
}

/// Removes `node` from every quorum queue it is a replica of (a queue whose only replica it
/// is keeps it, with the refusal listed).
fn shrink(api: &Api, node: &str) -> Result<Output, CtlError> {
    let mut lines = vec!["vhost\tname\tsize\tresult".to_owned()];
    for (vhost, queue, members) in quorum_queues(api)? {
        if !members.iter().any(|m| m == node) {
            continue;
        }
        let result = remove(api, &vhost, &queue, node);
        let size = members.len() - usize::from(result.is_ok());
        lines.push(line(&vhost, &queue, size, &result));
    }
    Ok(Output {
        info: format!("Shrinking quorum queues on node {node}..."),
        lines,
    })
}
