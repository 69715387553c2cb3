#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! A cluster of brokers in one process, each on its own OS-chosen ports and data directory:
//! forming, status on every node (ctl and `/api/nodes`), the cookie, leader loss, restart
//! with the log, forgetting a node, and refusal in a minority.

mod common;

use common::cluster::{form, leader_of, wait_for_members, Node};
use common::http::call;
use common::{bounded, fresh_data_dir, wait_until_async};
use serde_json::{json, Value};
use switchboard::cluster::transport::{dial, Auth};
use switchboard::cluster::{ClusterError, Command};
use switchboard::ctl::api::Api;

fn put(key: &str, value: Value) -> Command {
    Command::Put {
        key: key.into(),
        value,
    }
}

/// Waits until every running node in `nodes` has applied `key` = `value`.
async fn wait_everywhere(nodes: &[Node], key: &str, value: &Value) {
    for n in nodes.iter().filter(|n| n.broker.is_some()) {
        let c = n.consensus();
        wait_until_async(&format!("{key} on {}", n.name), || {
            let got = c.get(key);
            async move { got.as_ref() == Some(value) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_and_every_node_shows_all_three_and_one_leader() {
    let nodes = form(3).await;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    leader_of(&nodes).await;
    for n in &nodes {
        let answer = call(n.broker(), "GET", "/api/nodes", None).await;
        assert_eq!(answer.status, 200);
        let listed = answer.body.as_array().expect("array").clone();
        let mut listed_names: Vec<&str> =
            listed.iter().map(|m| m["name"].as_str().unwrap()).collect();
        listed_names.sort();
        assert_eq!(listed_names, names, "/api/nodes on {}", n.name);
        assert!(listed.iter().all(|m| m["running"] == true), "{listed:?}");
        assert_eq!(
            listed.iter().filter(|m| m["is_leader"] == true).count(),
            1,
            "{listed:?}"
        );
        let leader = listed.iter().find(|m| m["is_leader"] == true).unwrap();
        assert_eq!(leader["raft_role"], "leader");
        // This node's own entry keeps its figures.
        let own = listed
            .iter()
            .find(|m| m["name"] == n.name.as_str())
            .unwrap();
        assert!(own["mem_limit"].is_number(), "{own}");

        let url = n.broker().http_url();
        let out = bounded(tokio::task::spawn_blocking(move || {
            let api = Api::new(&url, "guest", "guest");
            switchboard::ctl::cluster::run(&api, "cluster_status", &[])
                .expect("a cluster command")
                .expect("cluster_status")
        }))
        .await
        .unwrap();
        assert!(out.info.contains(&n.name), "{}", out.info);
        let text = out.lines.join("\n");
        let running = text.split("Running Nodes").nth(1).unwrap();
        for name in &names {
            assert!(running.contains(name), "{text}");
        }
        assert!(text.contains("Cluster name: test-cluster"), "{text}");
    }
    let answer = call(nodes[1].broker(), "GET", "/api/cluster-name", None).await;
    assert_eq!(answer.body["name"], "test-cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_proposed_on_any_node_is_applied_on_every_node() {
    let nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let follower = (leader + 1) % 3;
    let r = bounded(
        nodes[follower]
            .consensus()
            .propose(put("k/1", json!({"v": 1}))),
    )
    .await
    .unwrap();
    assert!(!r.existed);
    // Confirmed once committed: the proposing node has applied it already.
    assert_eq!(
        nodes[follower].consensus().get("k/1"),
        Some(json!({"v": 1}))
    );
    wait_everywhere(&nodes, "k/1", &json!({"v": 1})).await;
    let r = bounded(nodes[leader].consensus().propose(put("k/1", json!(2))))
        .await
        .unwrap();
    assert!(r.existed);
    wait_everywhere(&nodes, "k/1", &json!(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_refused_and_never_joins() {
    let nodes = form(2).await;
    let wrong = Auth {
        cluster: "test-cluster".into(),
        node: "intruder@test".into(),
        cookie: b"not-the-cookie".to_vec(),
        tls: None,
    };
    let err = dial(
        &nodes[0].addr,
        &wrong,
        None,
        std::time::Duration::from_secs(3),
    )
    .await
    .expect_err("a wrong cookie is refused");
    assert!(err.to_string().contains("cookie"), "{err}");
    // A whole node with the wrong cookie and a member as its seed: its join is refused.
    let intruder = Node::start(
        "intruder@test",
        &fresh_data_dir(),
        "127.0.0.1:0",
        &[],
        "not-the-cookie",
    )
    .await;
    let err = bounded(intruder.consensus().join(nodes[0].addr.clone()))
        .await
        .expect_err("join refused");
    assert!(err.to_string().contains("cookie"), "{err}");
    let status = nodes[0].status().await;
    assert_eq!(status.members.len(), 2, "{status:?}");
    assert!(status.members.iter().all(|m| m.name != "intruder@test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_elects_a_new_one_and_the_other_two_still_commit() {
    let mut nodes = form(3).await;
    let old = leader_of(&nodes).await;
    bounded(nodes[old].consensus().propose(put("before", json!(1))))
        .await
        .unwrap();
    nodes[old].stop().await;
    let new = leader_of(&nodes).await;
    assert_ne!(new, old);
    let other = (0..3).find(|i| *i != old && *i != new).unwrap();
    bounded(nodes[other].consensus().propose(put("after", json!(2))))
        .await
        .unwrap();
    wait_everywhere(&nodes, "after", &json!(2)).await;
    wait_everywhere(&nodes, "before", &json!(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_its_log_and_catches_up() {
    let mut nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let f = (leader + 1) % 3;
    bounded(nodes[leader].consensus().propose(put("one", json!(1))))
        .await
        .unwrap();
    wait_everywhere(&nodes, "one", &json!(1)).await;
    nodes[f].stop().await;
    bounded(nodes[leader].consensus().propose(put("two", json!(2))))
        .await
        .unwrap();
    // Back on its data directory and address, no seeds: it is a member already.
    nodes[f].restart(&[]).await;
    // What it had before the stop comes from its own log and snapshot, the rest from the leader.
    wait_everywhere(&nodes, "one", &json!(1)).await;
    wait_everywhere(&nodes, "two", &json!(2)).await;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    wait_for_members(&nodes[f], &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_cluster_node_shrinks_the_membership() {
    let mut nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let gone = (leader + 1) % 3;
    let gone_name = nodes[gone].name.clone();
    nodes[gone].stop().await;
    let asked = (leader + 2) % 3;
    let url = nodes[asked].broker().http_url();
    let name = gone_name.clone();
    bounded(tokio::task::spawn_blocking(move || {
        let api = Api::new(&url, "guest", "guest");
        switchboard::ctl::cluster::run(&api, "forget_cluster_node", &[name])
            .expect("a cluster command")
            .expect("forget_cluster_node")
    }))
    .await
    .unwrap();
    let left: Vec<&str> = nodes
        .iter()
        .filter(|n| n.name != gone_name)
        .map(|n| n.name.as_str())
        .collect();
    for n in nodes.iter().filter(|n| n.broker.is_some()) {
        wait_for_members(n, &left).await;
        assert_eq!(n.status().await.members.len(), 2);
    }
    // Two voters now: both are needed, and both commit.
    bounded(nodes[asked].consensus().propose(put("k", json!(true))))
        .await
        .unwrap();
    let answer = call(
        nodes[asked].broker(),
        "DELETE",
        "/api/switchboard/cluster/nodes/nobody",
        None,
    )
    .await;
    assert_eq!(answer.status, 404, "{:?}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_in_a_minority_refuses_changes() {
    let mut nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let survivor = (leader + 1) % 3;
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != survivor {
            node.stop().await;
        }
    }
    let started = std::time::Instant::now();
    let err = bounded(nodes[survivor].consensus().propose(put("lost", json!(1))))
        .await
        .expect_err("refused without a majority");
    assert!(matches!(err, ClusterError::NoQuorum(_)), "{err}");
    assert!(err.to_string().contains("majority"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    assert_eq!(nodes[survivor].consensus().get("lost"), None);
    // Through the HTTP API, a change refused this way is a 503 with the reason.
    let answer = call(
        nodes[survivor].broker(),
        "DELETE",
        &format!("/api/switchboard/cluster/nodes/{}", nodes[leader].name),
        None,
    )
    .await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert!(answer.body["reason"].as_str().unwrap().contains("majority"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_cluster_moves_a_lone_node_into_the_cluster() {
    let nodes = form(2).await;
    bounded(nodes[0].consensus().propose(put("shared", json!("yes"))))
        .await
        .unwrap();
    let name = common::unique("lone@test");
    let lone = Node::start(
        &name,
        &fresh_data_dir(),
        "127.0.0.1:0",
        &[],
        common::cluster::COOKIE,
    )
    .await;
    // Alone in its own one-node cluster, with a record of its own that it gives up.
    bounded(lone.consensus().propose(put("mine", json!(1))))
        .await
        .unwrap();
    let url = lone.broker().http_url();
    let seed = nodes[1].addr.clone();
    let out = bounded(tokio::task::spawn_blocking(move || {
        let api = Api::new(&url, "guest", "guest");
        switchboard::ctl::cluster::run(&api, "join_cluster", &[seed])
            .expect("a cluster command")
            .expect("join_cluster")
    }))
    .await
    .unwrap();
    assert!(out.info.contains("Clustering"), "{}", out.info);
    let mut all: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    all.push(&name);
    wait_for_members(&lone, &all).await;
    wait_for_members(&nodes[0], &all).await;
    let c = lone.consensus();
    wait_until_async("the cluster's record on the joined node", || {
        let got = c.get("shared");
        async move { got == Some(json!("yes")) }
    })
    .await;
    assert_eq!(lone.consensus().get("mine"), None);
    // A member of a cluster of several cannot be moved without being forgotten first.
    let err = bounded(nodes[0].consensus().join(lone.addr.clone()))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("already a member"), "{err}");
}
