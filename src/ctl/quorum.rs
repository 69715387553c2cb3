//! `rabbitmq-queues`' commands for quorum queues: `add_member`, `delete_member`, `grow` and
//! `shrink`, each a call per queue to `/api/switchboard/queues/{vhost}/{name}/members`, and
//! `rebalance`, moves of leaders through `/api/switchboard/queues/{vhost}/{name}/leader`.

use super::api::{expect_ok, segment, Api};
use super::manage::Output;
use super::CtlError;
use serde_json::{json, Value};

pub const COMMANDS: &[(&str, &str)] = &[
    ("add_member", "[-p <vhost>] <queue> <node>"),
    ("delete_member", "[-p <vhost>] <queue> <node>"),
    ("grow", "<node> <all|even>"),
    ("shrink", "<node>"),
    ("rebalance", "[quorum|all]"),
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
        ("rebalance", [] | ["quorum" | "all"]) => rebalance(api),
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

/// A quorum queue as `/api/queues` lists it.
struct QuorumQueue {
    vhost: String,
    name: String,
    members: Vec<String>,
    leader: Option<String>,
}

/// Every quorum queue.
fn quorum_queues(api: &Api) -> Result<Vec<QuorumQueue>, CtlError> {
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
            QuorumQueue {
                vhost: text(q, "vhost"),
                name: text(q, "name"),
                members,
                leader: q["leader"].as_str().map(str::to_owned),
            }
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
    for QuorumQueue {
        vhost,
        name: queue,
        members,
        ..
    } in quorum_queues(api)?
    {
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
    for QuorumQueue {
        vhost,
        name: queue,
        members,
        ..
    } in quorum_queues(api)?
    {
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

/// The names of the running cluster nodes, from `/api/nodes`.
fn running_nodes(api: &Api) -> Result<Vec<String>, CtlError> {
    let nodes = api.get_ok("/api/nodes")?;
    Ok(nodes
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|n| n["running"] == true)
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect())
}

/// Moves quorum queue leaders until each running node leads about as many (`rabbitmq-queues
/// rebalance`): while a node leads more than its share (the queues with a leader over the
/// running nodes, rounded up), one of its queues moves to the running member that leads
/// fewest, if that one leads at least two fewer. One line per move, then each node's count.
fn rebalance(api: &Api) -> Result<Output, CtlError> {
    let nodes = running_nodes(api)?;
    let mut lines = vec!["vhost	name	from	to	result".to_owned()];
    let mut failed: Vec<(String, String)> = Vec::new();
    let moves = quorum_queues(api)?.len() * 2;
    for _ in 0..moves {
        let queues = quorum_queues(api)?;
        let counts = leader_counts(&nodes, &queues);
        let Some((q, to)) = next_move(&nodes, &queues, &counts, &failed) else {
            break;
        };
        let from = q.leader.clone().unwrap_or_default();
        let path = format!(
            "/api/switchboard/queues/{}/{}/leader",
            segment(&q.vhost),
            segment(&q.name)
        );
        let result = api
            .post(&path, &json!({ "node": to }))
            .and_then(|r| expect_ok(&path, r).map(|_| ()));
        let outcome = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        lines.push(format!("{}	{}	{from}	{to}	{outcome}", q.vhost, q.name));
        if result.is_err() {
            failed.push((q.vhost.clone(), q.name.clone()));
        }
    }
    let queues = quorum_queues(api)?;
    let leaderless = queues.iter().filter(|q| q.leader.is_none()).count();
    if leaderless > 0 {
        lines.push(format!(
            "{leaderless} quorum queue(s) list no leader here (an election, or this node holds no \
             replica of them and has not reached their leader): not moved; run it on a node \
             holding their replicas"
        ));
    }
    let counts = leader_counts(&nodes, &queues);
    lines.push(String::new());
    lines.push("node	leaders".to_owned());
    lines.extend(counts.iter().map(|(n, c)| format!("{n}	{c}")));
    Ok(Output {
        info: "Rebalancing the leaders of quorum queues...".to_owned(),
        lines,
    })
}

/// How many quorum queues each running node leads (every running node listed).
fn leader_counts(
    nodes: &[String],
    queues: &[QuorumQueue],
) -> std::collections::BTreeMap<String, usize> {
    let mut counts: std::collections::BTreeMap<String, usize> =
        nodes.iter().map(|n| (n.clone(), 0)).collect();
    for l in queues.iter().filter_map(|q| q.leader.as_ref()) {
        if let Some(c) = counts.get_mut(l) {
            *c += 1;
        }
    }
    counts
}

/// The next queue to move and the member to move its lead to: a queue of the node leading
/// most, if it leads more than its share, to its running member leading fewest, if that
/// one leads at least two fewer (else a move only swaps which node is over). Queues whose
/// move failed are not tried again.
fn next_move<'a>(
    nodes: &[String],
    queues: &'a [QuorumQueue],
    counts: &std::collections::BTreeMap<String, usize>,
    failed: &[(String, String)],
) -> Option<(&'a QuorumQueue, String)> {
    let led: usize = counts.values().sum();
    let share = led.div_ceil(nodes.len().max(1));
    queues
        .iter()
        .filter(|q| !failed.iter().any(|(v, n)| *v == q.vhost && *n == q.name))
        .filter_map(|q| {
            let from = q.leader.as_ref()?;
            let from_count = counts.get(from).copied()?;
            let (to, to_count) = q
                .members
                .iter()
                .filter(|m| *m != from)
                .filter_map(|m| counts.get(m).map(|c| (m, *c)))
                .min_by_key(|(m, c)| (*c, (*m).clone()))?;
            (from_count > share && to_count + 2 <= from_count).then(|| (q, to.clone(), from_count))
        })
        .max_by_key(|(_, _, from_count)| *from_count)
        .map(|(q, to, _)| (q, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, leader: &str) -> QuorumQueue {
        QuorumQueue {
            vhost: "/".into(),
            name: name.into(),
            members: vec!["a".into(), "b".into(), "c".into()],
            leader: Some(leader.into()),
        }
    }

    #[test]
    fn moves_go_from_the_node_over_its_share_to_the_member_leading_fewest() {
        let nodes: Vec<String> = ["a", "b", "c"].iter().map(|n| n.to_string()).collect();
        let queues = vec![q("1", "a"), q("2", "a"), q("3", "a"), q("4", "b")];
        let counts = leader_counts(&nodes, &queues);
        let (moved, to) = next_move(&nodes, &queues, &counts, &[]).unwrap();
        assert_eq!((moved.leader.as_deref(), to.as_str()), (Some("a"), "c"));
        // Balanced (2, 1, 1 for four queues on three nodes): nothing to move.
        let queues = vec![q("1", "a"), q("2", "c"), q("3", "a"), q("4", "b")];
        let counts = leader_counts(&nodes, &queues);
        assert!(next_move(&nodes, &queues, &counts, &[]).is_none());
        // A queue whose move failed is not tried again.
        let queues = vec![q("1", "a"), q("2", "a"), q("3", "a")];
        let counts = leader_counts(&nodes, &queues);
        let failed: Vec<(String, String)> = ["1", "2", "3"]
            .iter()
            .map(|n| ("/".into(), n.to_string()))
            .collect();
        assert!(next_move(&nodes, &queues, &counts, &failed).is_none());
    }
}
