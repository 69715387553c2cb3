//! rabbitmqctl's cluster commands: `cluster_status`, `join_cluster`, `forget_cluster_node`.

use super::api::{expect_ok, segment, Api};
use super::manage::Output;
use super::CtlError;
use serde_json::{json, Value};

pub const COMMANDS: &[(&str, &str)] = &[
    ("cluster_status", ""),
    ("join_cluster", "<host:port of a member's cluster listener>"),
    ("forget_cluster_node", "<node_name>"),
];

/// Runs cluster command `command`; `None` when it is not one of [`COMMANDS`].
pub fn run(api: &Api, command: &str, args: &[String]) -> Option<Result<Output, CtlError>> {
    let &(name, usage) = COMMANDS.iter().find(|(c, _)| *c == command)?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match (name, a.as_slice()) {
        ("cluster_status", []) => cluster_status(api),
        ("join_cluster", [seed]) => {
            let path = "/api/switchboard/cluster/join";
            api.post(path, &json!({"seed": seed}))
                .and_then(|answer| expect_ok(path, answer))
                .map(|_| Output {
                    info: format!("Clustering this node with {seed} ..."),
                    lines: Vec::new(),
                })
        }
        ("forget_cluster_node", [node]) => {
            let path = format!("/api/switchboard/cluster/nodes/{}", segment(node));
            api.delete(&path)
                .and_then(|answer| expect_ok(&path, answer))
                .map(|_| Output {
                    info: format!("Removing node {node} from the cluster"),
                    lines: Vec::new(),
                })
        }
        _ => Err(CtlError::Usage(format!(
            "usage: switchboard ctl {name} {usage}"
        ))),
    };
    Some(result)
}

fn cluster_status(api: &Api) -> Result<Output, CtlError> {
    let status = api.get_ok("/api/switchboard/cluster")?;
    Ok(Output {
        info: format!(
            "Cluster status of node {} ...",
            status["node_name"].as_str().unwrap_or_default()
        ),
        lines: status_lines(&status),
    })
}

/// RabbitMQ's sections (basics, disk nodes, running nodes), then each member's Raft view.
pub fn status_lines(status: &Value) -> Vec<String> {
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut lines = vec![
        "Basics".to_owned(),
        String::new(),
        format!("Cluster name: {}", text(status, "cluster_name")),
        format!("Leader: {}", status["leader"].as_str().unwrap_or("(none)")),
        format!("Term: {}", status["term"].as_u64().unwrap_or(0)),
        String::new(),
        "Disk Nodes".to_owned(),
        String::new(),
    ];
    lines.extend(members.iter().map(|m| text(m, "name")));
    lines.extend([String::new(), "Running Nodes".to_owned(), String::new()]);
    lines.extend(
        members
            .iter()
            .filter(|m| m["running"] == true)
            .map(|m| text(m, "name")),
    );
    lines.extend([
        String::new(),
        "Members".to_owned(),
        String::new(),
        "name\taddress\traft_role\tvoter\trunning".to_owned(),
    ]);
    lines.extend(members.iter().map(|m| {
        format!(
            "{}\t{}\t{}\t{}\t{}",
            text(m, "name"),
            text(m, "addr"),
            text(m, "role"),
            m["voter"] == true,
            m["running"] == true
        )
    }));
    lines
}
