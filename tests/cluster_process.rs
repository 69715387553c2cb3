#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Three `switchboard` processes form a cluster from their config files; the leader is killed
//! with SIGKILL, the other two elect a new one, and the killed node restarts on its data
//! directory and address and is a member again from its own log (it is given no seeds).

mod common;

use common::process::BrokerProcess;
use common::{fresh_data_dir, WAIT};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchboard::ctl::api::Api;

fn cluster_section(name: &str, listen: &str, seeds: &[String]) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "\n[cluster]\nname = \"procs\"\nnode_name = \"{name}\"\nlisten = \"{listen}\"\n\
         seeds = [{}]\ncookie = \"process-cookie\"\nheartbeat_ms = 50\n\
         election_timeout_ms = 300\noperation_timeout_ms = 3000\n",
        seeds.join(", ")
    )
}

struct Proc {
    name: String,
    dir: PathBuf,
    /// Its inter-node address, learned from its first start and kept for restarts.
    addr: String,
    process: Option<BrokerProcess>,
}

fn http(p: &Proc) -> SocketAddr {
    p.process.as_ref().expect("running").http
}

fn status(p: &Proc) -> Option<Value> {
    Api::new(&format!("http://{}", http(p)), "guest", "guest")
        .get_ok("/api/switchboard/cluster")
        .ok()
}

/// Polls `p`'s cluster status until `ok` holds, panicking after a bounded wait.
fn wait_status(p: &Proc, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    poll_until(
        || status(p).filter(|s| ok(s)),
        || format!("{}: timed out waiting for {what}: {:?}", p.name, status(p)),
    )
}

/// Polls `found` until it gives a value, panicking with `failure()` after a bounded wait.
fn poll_until<T>(mut found: impl FnMut() -> Option<T>, failure: impl Fn() -> String) -> T {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        if let Some(t) = found() {
            return t;
        }
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn voters(s: &Value) -> Vec<String> {
    let mut v: Vec<String> = s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["voter"] == true)
        .map(|m| m["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    v.sort();
    v
}

fn start(name: &str, dir: PathBuf, listen: &str, seeds: &[String]) -> Proc {
    let process = BrokerProcess::spawn_with(&dir, &cluster_section(name, listen, seeds));
    let mut p = Proc {
        name: name.into(),
        dir,
        addr: String::new(),
        process: Some(process),
    };
    let s = wait_status(&p, "its own member entry", |s| {
        s["members"].as_array().is_some_and(|m| !m.is_empty())
    });
    let me = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
        .unwrap_or(Value::Null);
    p.addr = me["addr"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| listen.to_owned());
    p
}

#[test]
fn three_processes_survive_kill_9_of_the_leader_and_its_restart() {
    let first = start("p0@procs", fresh_data_dir(), "127.0.0.1:0", &[]);
    let seeds = vec![first.addr.clone()];
    let mut nodes = vec![first];
    for i in 1..3 {
        nodes.push(start(
            &format!("p{i}@procs"),
            fresh_data_dir(),
            "127.0.0.1:0",
            &seeds,
        ));
    }
    let all: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    for n in &nodes {
        wait_status(n, "three voters and a leader", |s| {
            voters(s) == all && s["leader"].is_string()
        });
    }
    // rabbitmqctl's shape from the real binary.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "ctl",
            "--url",
            &format!("http://{}", http(&nodes[1])),
            "cluster_status",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let running = text.split("Running Nodes").nth(1).unwrap();
    for name in &all {
        assert!(running.contains(name.as_str()), "{text}");
    }

    let leader_name = wait_status(&nodes[0], "a leader", |s| s["leader"].is_string())["leader"]
        .as_str()
        .unwrap()
        .to_owned();
    let l = nodes.iter().position(|n| n.name == leader_name).unwrap();
    nodes[l].process.take().unwrap().kill();
    for (i, n) in nodes.iter().enumerate() {
        if i != l {
            wait_status(n, "a new leader", |s| {
                s["leader"].as_str().is_some_and(|x| x != leader_name)
            });
        }
    }
    // Back on the same data directory and address, with no seeds: it knows its cluster from
    // its own log and vote.
    let section = cluster_section(&nodes[l].name, &nodes[l].addr, &[]);
    nodes[l].process = Some(BrokerProcess::spawn_with(&nodes[l].dir, &section));
    let s = wait_status(&nodes[l], "its cluster again, every member running", |s| {
        voters(s) == all
            && s["leader"].is_string()
            && s["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["running"] == true)
    });
    assert_ne!(s["role"], "unjoined");

    quorum_members_change_through_ctl(&nodes, &all);
}

/// `switchboard ctl` as the real binary against `p`; its standard output.
fn ctl(p: &Proc, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["ctl", "--url", &format!("http://{}", http(p))])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A quorum queue declared with one replica grows onto the other nodes (`grow <node> all`),
/// loses one (`delete_member`), and gets it back (`add_member`); `shrink` takes a node out of
/// every queue; `list_queues name members` shows each step.
fn quorum_members_change_through_ctl(nodes: &[Proc], all: &[String]) {
    let api = Api::new(&format!("http://{}", http(&nodes[0])), "guest", "guest");
    let (status, body) = api
        .put(
            "/api/queues/%2F/qq-ctl",
            &serde_json::json!({"durable": true, "arguments": {
                "x-queue-type": "quorum", "x-quorum-initial-group-size": 1}}),
        )
        .unwrap();
    assert!((200..300).contains(&status), "{status} {body:?}");
    let members_on = |p: &Proc| -> Vec<String> {
        let text = ctl(p, &["-q", "list_queues", "name", "members"]);
        let line = text
            .lines()
            .find(|l| l.starts_with("qq-ctl\t"))
            .unwrap_or_default()
            .to_owned();
        let mut m: Vec<String> = line
            .split('\t')
            .nth(1)
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        m.sort();
        m
    };
    let wait_members = |want: &[&String]| {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        for p in nodes {
            poll_until(
                || (members_on(p) == want).then_some(()),
                || format!("{}: members {:?}, want {want:?}", p.name, members_on(p)),
            );
        }
    };
    let first = members_on(&nodes[0]);
    assert_eq!(first.len(), 1, "{first:?}");
    for n in all.iter().filter(|n| **n != first[0]) {
        let out = ctl(&nodes[1], &["grow", n, "all"]);
        assert!(
            out.contains("qq-ctl\t2\tok") || out.contains("qq-ctl\t3\tok"),
            "{out}"
        );
    }
    wait_members(&all.iter().collect::<Vec<_>>());
    ctl(&nodes[2], &["delete_member", "-p", "/", "qq-ctl", &all[1]]);
    wait_members(&[&all[0], &all[2]]);
    ctl(&nodes[2], &["add_member", "qq-ctl", &all[1]]);
    wait_members(&all.iter().collect::<Vec<_>>());
    let out = ctl(&nodes[0], &["shrink", &all[0]]);
    assert!(out.contains("qq-ctl\t2\tok"), "{out}");
    wait_members(&[&all[1], &all[2]]);
    // One queue is balanced already: `rebalance` (on a node holding a replica, which knows
    // the leader) moves nothing and lists each node's count.
    // Right after `shrink` the group may still be electing.
    let out = poll_until(
        || {
            let out = ctl(&nodes[1], &["rebalance"]);
            (out.lines().filter(|l| l.ends_with("\t1")).count() == 1).then_some(out)
        },
        || "rebalance never listed the queue's leader".to_owned(),
    );
    assert!(out.contains("node\tleaders"), "{out}");
    assert!(!out.contains("\tok"), "nothing to move: {out}");
}
