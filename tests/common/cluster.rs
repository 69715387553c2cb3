#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Cluster nodes in one test process: each a whole broker on OS-chosen ports with its own data
//! directory, short Raft timings, and the inter-node address of an earlier node as its seed.

use super::{wait_until_async, TestBroker};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchboard::cluster::{ClusterConfig, ClusterStatus, Consensus};
use switchboard::config::Config;
use switchboard::core::clock::{Clock, SystemClock};

pub const COOKIE: &str = "test-cookie";
pub const CLUSTER: &str = "test-cluster";

/// The `[cluster]` of a test node: named `name`, listening on `listen`, joining via `seeds`.
pub fn cluster_config(name: &str, listen: &str, seeds: &[String], cookie: &str) -> ClusterConfig {
    ClusterConfig {
        name: CLUSTER.into(),
        node_name: name.into(),
        listen: listen.into(),
        seeds: seeds.to_vec(),
        cookie: cookie.into(),
        heartbeat_ms: 50,
        election_timeout_ms: 300,
        operation_timeout_ms: 3000,
        ..ClusterConfig::default()
    }
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    /// The inter-node address it listens on (kept across restarts).
    pub addr: String,
    pub broker: Option<TestBroker>,
    /// What its core reads time from (kept across restarts).
    pub clock: Arc<dyn Clock>,
}

impl Node {
    pub async fn start(
        name: &str,
        dir: &Path,
        listen: &str,
        seeds: &[String],
        cookie: &str,
    ) -> Node {
        Node::start_tweaked(
            name,
            dir,
            listen,
            seeds,
            cookie,
            Arc::new(SystemClock),
            &|_| {},
        )
        .await
    }

    /// [`Node::start`] with the core reading time from `clock`, and `tweak` applied to its
    /// `[cluster]` first.
    pub async fn start_tweaked(
        name: &str,
        dir: &Path,
        listen: &str,
        seeds: &[String],
        cookie: &str,
        clock: Arc<dyn Clock>,
        tweak: &dyn Fn(&mut ClusterConfig),
    ) -> Node {
        let mut config = Config::parse(&super::test_config_text_in(dir)).expect("test config");
        config.cluster = cluster_config(name, listen, seeds, cookie);
        tweak(&mut config.cluster);
        let broker = TestBroker::start_config_with_clock(config, clock.clone()).await;
        let addr = consensus(&broker).node().addr;
        Node {
            name: name.into(),
            dir: dir.to_owned(),
            addr,
            broker: Some(broker),
            clock,
        }
    }

    pub fn broker(&self) -> &TestBroker {
        self.broker.as_ref().expect("node running")
    }

    pub fn consensus(&self) -> Arc<dyn Consensus> {
        consensus(self.broker())
    }

    pub async fn status(&self) -> ClusterStatus {
        self.consensus().status().await
    }

    /// Stops the node (its Raft and peer listener first), keeping its data directory.
    pub async fn stop(&mut self) {
        if let Some(b) = self.broker.take() {
            consensus(&b).shutdown().await;
            b.stop().await;
        }
    }

    /// Starts the node again on its data directory and inter-node address.
    pub async fn restart(&mut self, seeds: &[String]) {
        assert!(self.broker.is_none(), "stop the node first");
        let again = Node::start_tweaked(
            &self.name,
            &self.dir,
            &self.addr,
            seeds,
            COOKIE,
            self.clock.clone(),
            &|_| {},
        )
        .await;
        self.broker = again.broker;
    }
}

pub fn consensus(b: &TestBroker) -> Arc<dyn Consensus> {
    b.broker().cluster.get().expect("clustered").clone()
}

/// Waits until `node` sees exactly `names` as voters and some leader.
pub async fn wait_for_members(node: &Node, names: &[&str]) {
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    let c = node.consensus();
    wait_until_async(&format!("{} to see members {want:?}", node.name), || {
        let c = c.clone();
        let want = want.clone();
        async move {
            let s = c.status().await;
            let voters: Vec<String> = s
                .members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.name.clone())
                .collect();
            voters == want && s.leader.is_some()
        }
    })
    .await;
}

/// A cluster of `n` nodes: the first forms it, each other one has the first as its seed.
/// Node names are unique in the test process, so that a node of another test that comes to
/// listen on a port a stopped node had is told apart (the dialer checks the name).
pub async fn form(n: usize) -> Vec<Node> {
    form_with_clock(n, Arc::new(SystemClock)).await
}

/// [`form`], every node's core reading time from `clock` (a [`ManualClock`] the test moves;
/// Raft keeps its own timers).
///
/// [`ManualClock`]: switchboard::core::clock::ManualClock
pub async fn form_with_clock(n: usize, clock: Arc<dyn Clock>) -> Vec<Node> {
    form_tweaked(n, clock, &|_, _| {}).await
}

/// [`form_with_clock`], node `i`'s `[cluster]` changed by `tweak(i, ..)` before it starts.
pub async fn form_tweaked(
    n: usize,
    clock: Arc<dyn Clock>,
    tweak: &dyn Fn(usize, &mut ClusterConfig),
) -> Vec<Node> {
    let cluster = super::unique("c");
    let first_name = format!("node-0@{cluster}");
    let first = Node::start_tweaked(
        &first_name,
        &super::fresh_data_dir(),
        "127.0.0.1:0",
        &[],
        COOKIE,
        clock.clone(),
        &|c| tweak(0, c),
    )
    .await;
    let seed = vec![first.addr.clone()];
    let mut nodes = vec![first];
    for i in 1..n {
        let name = format!("node-{i}@{cluster}");
        nodes.push(
            Node::start_tweaked(
                &name,
                &super::fresh_data_dir(),
                "127.0.0.1:0",
                &seed,
                COOKIE,
                clock.clone(),
                &|c| tweak(i, c),
            )
            .await,
        );
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for node in &nodes {
        wait_for_members(node, &names).await;
    }
    nodes
}

/// The index in `nodes` of the leader that every running node names.
pub async fn leader_of(nodes: &[Node]) -> usize {
    let deadline = tokio::time::Instant::now() + super::WAIT;
    loop {
        let mut leaders = Vec::new();
        for n in nodes.iter().filter(|n| n.broker.is_some()) {
            leaders.push(n.status().await.leader);
        }
        if let Some(Some(first)) = leaders.first().cloned() {
            let agreed = leaders.iter().all(|l| l.as_ref() == Some(&first));
            let at = nodes
                .iter()
                .position(|n| n.name == first && n.broker.is_some());
            if let (true, Some(at)) = (agreed, at) {
                return at;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader agreed on: {leaders:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
