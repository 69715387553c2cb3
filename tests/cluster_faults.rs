#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Cluster fault tests: three `switchboard` processes, each in a network namespace of its own
//! (on loopback ports when namespaces cannot be made, which the output says), all inter-node
//! traffic through fault-injecting proxies. While confirmed messages flow on every protocol
//! and node and a client keeps changing definitions on random nodes, one fault is injected
//! and healed; then: no confirmed message lost, every node's definitions the same and
//! consistent with the writes that succeeded, no two leaders in one term, every node serving
//! every protocol again.
//!
//! `SWITCHBOARD_FAULTS_LONG=1 cargo test --test cluster_faults -- --ignored` runs the
//! randomized version (`SWITCHBOARD_FAULTS_MINUTES`, default 5; `SWITCHBOARD_FAULTS_SEED`;
//! the history goes to `SWITCHBOARD_FAULTS_HISTORY` or a file in the temp directory).

mod common;

use common::cluster_procs::{churned_state, http, ProcCluster};
use common::fault_proxy::LinkFault;
use common::history::{check_definitions, check_leaders, check_messages, Event, History, Kind};
use common::workload::{self, MessageLoad};
use common::{bounded, wait_until_async};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const NODES: usize = 3;

/// One at a time: three brokers with their clients are all two loaded cores can carry.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(test());
    // HTTP calls run on blocking threads: do not wait on one stuck on a dead node.
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// A cluster under load, with its history.
struct Faulted {
    cluster: ProcCluster,
    history: Arc<History>,
    load: workload::Running,
    stop: watch::Sender<bool>,
    churner: tokio::task::JoinHandle<()>,
    monitor: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Faulted {
    async fn begin(load: MessageLoad, history: History, seed: u64) -> Faulted {
        let started = Instant::now();
        let cluster = ProcCluster::start(NODES).await;
        eprintln!(
            "cluster up in {:?} ({})",
            started.elapsed(),
            if cluster.namespaces() {
                "network namespaces"
            } else {
                "loopback"
            }
        );
        workload::prepare(&cluster, &load).await;
        let history = Arc::new(history);
        let (stop, _) = watch::channel(false);
        let monitor = workload::monitor(cluster.book.clone(), history.clone(), stop.subscribe());
        let churner = workload::churn(
            cluster.book.clone(),
            history.clone(),
            seed,
            stop.subscribe(),
        );
        let running = workload::start(&cluster.book, &history, &load);
        running
            .progress(&history, 10, Duration::from_secs(30))
            .await;
        Faulted {
            cluster,
            history,
            load: running,
            stop,
            churner,
            monitor,
            started,
        }
    }

    /// Records a fault (or its undoing) in the history.
    fn nemesis(&self, f: &str, node: usize) {
        self.history.record(
            "nemesis",
            Kind::Info,
            f,
            &self.cluster.nodes[node].name,
            Value::Null,
        );
    }

    async fn under_load(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Waits for the cluster to come together, checks every node serves, drains the load and
    /// checks the history; panics naming every anomaly.
    async fn finish(self) -> Summary {
        let Faulted {
            cluster,
            history,
            load,
            stop,
            churner,
            monitor,
            started,
        } = self;
        let healed = Instant::now();
        cluster.wait_formed().await;
        // Every publisher, on every node, gets confirmations again.
        load.progress(&history, 5, Duration::from_secs(40)).await;
        let recovered = healed.elapsed();
        stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), churner).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), monitor).await;
        let streams = load.finish(&history, Duration::from_secs(40)).await;
        let mut anomalies = Vec::new();
        for i in 0..NODES {
            if let Err(e) = cluster.serves(i).await {
                anomalies.push(format!("does not serve: {e}"));
            }
        }
        let events = history.events();
        history.flush();
        match cluster.converged_definitions().await {
            Ok(defs) => anomalies.extend(check_definitions(&events, &churned_state(&defs))),
            Err(diff) => anomalies.extend(diff.into_iter().map(|d| format!("diverged: {d}"))),
        }
        anomalies.extend(check_leaders(&events));
        for (stream, c) in &streams {
            if !c.lost.is_empty() {
                anomalies.push(format!(
                    "{stream}: {} of {} confirmed messages never delivered: {:?}",
                    c.lost.len(),
                    c.confirmed,
                    &c.lost[..c.lost.len().min(20)]
                ));
            }
        }
        let s = Summary::of(&events, &streams, started.elapsed(), recovered, anomalies);
        eprintln!("{s}");
        assert!(s.anomalies.is_empty(), "anomalies: {:#?}", s.anomalies);
        s
    }
}

struct Summary {
    elapsed: Duration,
    recovered: Duration,
    confirmed: usize,
    unknown: usize,
    delivered: usize,
    redelivered: usize,
    defs_ok: usize,
    defs_unknown: usize,
    defs_fail: usize,
    /// Mean time a definitions call took to succeed.
    defs_ok_ms: u64,
    faults: BTreeMap<String, usize>,
    samples: usize,
    anomalies: Vec<String>,
}

impl Summary {
    fn of(
        events: &[Event],
        streams: &BTreeMap<String, common::history::StreamCheck>,
        elapsed: Duration,
        recovered: Duration,
        anomalies: Vec<String>,
    ) -> Summary {
        let defs = |k: Kind| {
            events
                .iter()
                .filter(|e| e.process == "defs" && e.kind == k)
                .count()
        };
        // The churner is one client, one call at a time: each outcome follows its invoke.
        let mut invoked = None;
        let mut ok_ms = Vec::new();
        for e in events.iter().filter(|e| e.process == "defs") {
            match e.kind {
                Kind::Invoke => invoked = Some(e.t),
                Kind::Ok => ok_ms.extend(invoked.take().map(|t| e.t - t)),
                _ => invoked = None,
            }
        }
        let mut faults = BTreeMap::new();
        for e in events.iter().filter(|e| e.process == "nemesis") {
            *faults.entry(e.f.clone()).or_default() += 1;
        }
        Summary {
            elapsed,
            recovered,
            confirmed: streams.values().map(|c| c.confirmed).sum(),
            unknown: streams.values().map(|c| c.unknown).sum(),
            delivered: streams.values().map(|c| c.delivered).sum(),
            redelivered: streams.values().map(|c| c.redelivered).sum(),
            defs_ok: defs(Kind::Ok),
            defs_unknown: defs(Kind::Info),
            defs_fail: defs(Kind::Fail),
            defs_ok_ms: ok_ms.iter().sum::<u64>() / (ok_ms.len().max(1) as u64),
            faults,
            samples: events.iter().filter(|e| e.f == "status").count(),
            anomalies,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1?} in all, every publisher confirmed again {:.1?} after the heal; messages: \
             {} confirmed, {} unknown, {} delivered ({} more than once); definitions calls: \
             {} ok (in {} ms on average), {} unknown, {} failed; faults: {:?}; {} status samples; anomalies: {}",
            self.elapsed,
            self.recovered,
            self.confirmed,
            self.unknown,
            self.delivered,
            self.redelivered,
            self.defs_ok,
            self.defs_ok_ms,
            self.defs_unknown,
            self.defs_fail,
            self.faults,
            self.samples,
            self.anomalies.len()
        )
    }
}

fn seed() -> u64 {
    std::env::var("SWITCHBOARD_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

async fn faulted() -> Faulted {
    let seed = seed();
    eprintln!("seed {seed}");
    Faulted::begin(MessageLoad::classic(NODES), History::new(), seed).await
}

/// A node that is not the leader.
async fn follower(c: &ProcCluster) -> usize {
    (c.leader().await + 1) % NODES
}

#[test]
fn kill_9_of_the_metadata_leader_then_restart() {
    run(|| async {
        let mut f = faulted().await;
        let l = f.cluster.leader().await;
        f.nemesis("kill", l);
        f.cluster.kill(l);
        // The other two elect a leader and go on committing.
        let gone = f.cluster.nodes[l].name.clone();
        let other = (l + 1) % NODES;
        f.cluster
            .wait_status(other, "a new leader", |s| {
                s["leader"].as_str().is_some_and(|x| x != gone)
            })
            .await;
        f.under_load(Duration::from_secs(2)).await;
        f.nemesis("restart", l);
        f.cluster.restart(l).await;
        f.finish().await;
    });
}

#[test]
fn partition_of_a_follower_then_heal() {
    run(|| async {
        let f = faulted().await;
        let n = follower(&f.cluster).await;
        f.nemesis("partition", n);
        f.cluster.partition(n);
        f.under_load(Duration::from_secs(5)).await;
        f.nemesis("heal", n);
        f.cluster.heal(n);
        f.finish().await;
    });
}

#[test]
fn partition_of_the_leader_into_the_minority_then_heal() {
    run(|| async {
        let f = faulted().await;
        let l = f.cluster.leader().await;
        let old = f.cluster.nodes[l].name.clone();
        f.nemesis("partition", l);
        f.cluster.partition(l);
        // The majority side elects a leader of its own while the old one is cut off.
        let other = (l + 1) % NODES;
        f.cluster
            .wait_status(other, "a leader on the majority side", |s| {
                s["leader"].as_str().is_some_and(|x| x != old)
            })
            .await;
        f.under_load(Duration::from_secs(3)).await;
        f.nemesis("heal", l);
        f.cluster.heal(l);
        f.finish().await;
    });
}

#[test]
fn slow_link_on_the_leader() {
    run(|| async {
        let f = faulted().await;
        let l = f.cluster.leader().await;
        f.nemesis("slow", l);
        f.cluster.set_link(l, LinkFault::slow(50, 200));
        f.under_load(Duration::from_secs(6)).await;
        f.nemesis("clear", l);
        f.cluster.clear_link(l);
        f.finish().await;
    });
}

#[test]
fn lossy_link_on_the_leader() {
    run(|| async {
        let f = faulted().await;
        let l = f.cluster.leader().await;
        f.nemesis("lossy", l);
        f.cluster.set_link(l, LinkFault::lossy(0.05));
        f.under_load(Duration::from_secs(6)).await;
        f.nemesis("clear", l);
        f.cluster.clear_link(l);
        let resets = f
            .cluster
            .links
            .resets
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(resets > 0, "the lossy link reset no connection");
        eprintln!("{resets} inter-node connections reset");
        f.finish().await;
    });
}

/// The node a running node lists as leading quorum queue `q` (not `not`), waiting for one
/// that is running.
async fn quorum_leader(c: &ProcCluster, q: &str, not: Option<&str>) -> usize {
    let path = format!("/api/queues/%2F/{q}");
    let found = std::sync::Mutex::new(None);
    wait_until_async(&format!("a running leader of {q} listed"), || async {
        for i in (0..c.nodes.len()).filter(|i| c.running(*i)) {
            let Some(a) = c.book.get(i) else { continue };
            if let Ok((200, body)) = http(a.http, "GET", &path, None).await {
                let leader = body["leader"].as_str().filter(|l| Some(*l) != not);
                if let Some(at) = leader.and_then(|l| c.nodes.iter().position(|n| n.name == l)) {
                    if c.running(at) {
                        *found.lock().unwrap() = Some(at);
                        return true;
                    }
                }
            }
        }
        false
    })
    .await;
    let at = found.lock().unwrap().take();
    at.expect("found")
}

/// Quorum queues under the same load, each consumed on the next node (so through its leader
/// from wherever it is): the node leading `faults-amqp-n0` is killed with SIGKILL, another
/// takes the lead, and the killed node restarts and catches up. No confirmed message lost.
#[test]
fn kill_9_of_a_quorum_queue_leader_then_restart() {
    run(|| async {
        let seed = seed();
        eprintln!("seed {seed}");
        let load = MessageLoad {
            queue_arguments: json!({"x-queue-type": "quorum"}),
            consume_from: (0..NODES).map(|i| (i + 1) % NODES).collect(),
        };
        let mut f = Faulted::begin(load, History::new(), seed).await;
        let q = "faults-amqp-n0";
        let l = quorum_leader(&f.cluster, q, None).await;
        let gone = f.cluster.nodes[l].name.clone();
        f.nemesis("kill", l);
        f.cluster.kill(l);
        let now = quorum_leader(&f.cluster, q, Some(&gone)).await;
        eprintln!(
            "{q}: {gone} killed, {} leads it now",
            f.cluster.nodes[now].name
        );
        f.under_load(Duration::from_secs(2)).await;
        f.nemesis("restart", l);
        f.cluster.restart(l).await;
        f.finish().await;
    });
}

/// An AMQP channel on node `i`, with its connection (kept open while the channel is used).
async fn amqp_channel(c: &ProcCluster, i: usize) -> (lapin::Connection, lapin::Channel) {
    let a = c.book.get(i).expect("running");
    let conn = bounded(lapin::Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", a.amqp),
        lapin::ConnectionProperties::default(),
    ))
    .await
    .expect("AMQP connection");
    let ch = bounded(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

/// Publishes `body` persistently to `q` on `ch` (in confirm mode) and waits for its confirm.
async fn publish_confirmed(ch: &lapin::Channel, q: &str, body: &str) {
    let confirm = bounded(ch.basic_publish(
        "".into(),
        q.into(),
        lapin::options::BasicPublishOptions::default(),
        body.as_bytes(),
        lapin::BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .expect("basic.publish");
    let confirmation = bounded(confirm).await.expect("confirm");
    assert!(confirmation.is_ack(), "{body}: {confirmation:?}");
}

/// A quorum queue on three of four nodes, consumed on the fourth, which holds no replica and
/// reaches the leader through the forwarding proxy: the leader is killed with SIGKILL. The
/// consumer is not cancelled: once the dead leader has left its fetches unanswered for the
/// operation timeout, it follows the lead to the member elected, which serves it what is
/// published from then on.
#[test]
fn a_consumer_on_a_node_holding_no_replica_follows_the_lead_past_kill_9_of_the_leader() {
    run(|| async {
        let mut c = ProcCluster::start(4).await;
        let q = common::unique("faults-outside");
        let (_c0, ch0) = amqp_channel(&c, 0).await;
        let mut arguments = lapin::types::FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        bounded(ch0.queue_declare(
            q.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        ))
        .await
        .expect("quorum queue.declare");
        let leader = quorum_leader(&c, &q, None).await;
        let a = c.book.get(leader).expect("running");
        let (status, info) = http(a.http, "GET", &format!("/api/queues/%2F/{q}"), None)
            .await
            .expect("queue info");
        assert_eq!(status, 200, "{info}");
        let members: Vec<&str> = info["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(members.len(), 3, "{info}");
        let outsider = (0..4)
            .find(|i| !members.contains(&c.nodes[*i].name.as_str()))
            .expect("a node holding no replica");
        let publisher = (0..4).find(|i| *i != outsider && *i != leader).unwrap();

        let (_pc, pch) = amqp_channel(&c, publisher).await;
        bounded(pch.confirm_select(lapin::options::ConfirmSelectOptions::default()))
            .await
            .unwrap();
        let (_oc, och) = amqp_channel(&c, outsider).await;
        bounded(och.basic_qos(100, lapin::options::BasicQosOptions::default()))
            .await
            .unwrap();
        let mut consumer = bounded(och.basic_consume(
            q.as_str().into(),
            "outside".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        ))
        .await
        .expect("basic.consume on the node holding no replica");
        publish_confirmed(&pch, &q, "before").await;
        let d = common::amqp::next(&mut consumer).await;
        assert_eq!(&d.data[..], b"before");
        bounded(d.acker.ack(lapin::options::BasicAckOptions::default()))
            .await
            .unwrap();

        let gone = c.nodes[leader].name.clone();
        c.kill(leader);
        let now = quorum_leader(&c, &q, Some(&gone)).await;
        eprintln!("{q}: {gone} killed, {} leads it now", c.nodes[now].name);
        publish_confirmed(&pch, &q, "after").await;
        // "before" again when its ack had not committed when the leader went (at least once).
        loop {
            let d = common::amqp::next(&mut consumer).await;
            bounded(d.acker.ack(lapin::options::BasicAckOptions::default()))
                .await
                .unwrap();
            if &d.data[..] == b"after" {
                break;
            }
            assert_eq!(&d.data[..], b"before");
            assert!(d.redelivered);
        }
    });
}

/// The seeded random schedule: one fault at a time (kill -9, partition, slow link, lossy
/// link; of the leader or of another node), held for 2-8 s, undone, the cluster given time to
/// come together, over `SWITCHBOARD_FAULTS_MINUTES`.
#[test]
#[ignore = "minutes long: SWITCHBOARD_FAULTS_LONG=1 cargo test --test cluster_faults -- --ignored"]
fn randomized_faults_with_a_recorded_history() {
    if std::env::var("SWITCHBOARD_FAULTS_LONG").as_deref() != Ok("1") {
        eprintln!("skipped: set SWITCHBOARD_FAULTS_LONG=1 to run the randomized fault schedule");
        return;
    }
    let minutes: f64 = std::env::var("SWITCHBOARD_FAULTS_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(5.0);
    let seed = seed();
    let path = std::env::var("SWITCHBOARD_FAULTS_HISTORY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join(format!("switchboard-faults-{seed}.jsonl")));
    eprintln!(
        "seed {seed}, {minutes} minutes, history in {}",
        path.display()
    );
    run(|| async move {
        let history = History::to_file(&path).expect("history file");
        let mut f = Faulted::begin(MessageLoad::classic(NODES), history, seed).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        let end = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
        while Instant::now() < end {
            let node = if rng.random_bool(0.5) {
                f.cluster.leader().await
            } else {
                rng.random_range(0..NODES)
            };
            let hold = Duration::from_millis(rng.random_range(2_000..8_000));
            match rng.random_range(0..4) {
                0 => {
                    f.nemesis("kill", node);
                    f.cluster.kill(node);
                    f.under_load(hold).await;
                    f.nemesis("restart", node);
                    f.cluster.restart(node).await;
                }
                1 => {
                    f.nemesis("partition", node);
                    f.cluster.partition(node);
                    f.under_load(hold).await;
                    f.nemesis("heal", node);
                    f.cluster.heal(node);
                }
                2 => {
                    let lo = rng.random_range(10..100);
                    f.nemesis("slow", node);
                    f.cluster
                        .set_link(node, LinkFault::slow(lo, lo + rng.random_range(0..300)));
                    f.under_load(hold).await;
                    f.nemesis("clear", node);
                    f.cluster.clear_link(node);
                }
                _ => {
                    f.nemesis("lossy", node);
                    f.cluster
                        .set_link(node, LinkFault::lossy(rng.random_range(0.01..0.2)));
                    f.under_load(hold).await;
                    f.nemesis("clear", node);
                    f.cluster.clear_link(node);
                }
            }
            f.cluster.wait_formed().await;
            f.under_load(Duration::from_millis(rng.random_range(1_000..3_000)))
                .await;
        }
        let s = f.finish().await;
        eprintln!(
            "randomized run, seed {seed}: {} faults injected",
            s.faults
                .iter()
                .filter(|(k, _)| ["kill", "partition", "slow", "lossy"].contains(&k.as_str()))
                .map(|(_, n)| n)
                .sum::<usize>()
        );
    });
}

/// The checker itself, on histories with known anomalies.
#[test]
fn checker_finds_lost_messages_lost_writes_and_two_leaders_in_a_term() {
    let h = History::new();
    for seq in 1..=3u64 {
        h.record("p", Kind::Invoke, "publish", "amqp/n0", seq.into());
        h.record("p", Kind::Ok, "publish", "amqp/n0", seq.into());
    }
    h.record("c", Kind::Ok, "deliver", "amqp/n0", 1.into());
    h.record("c", Kind::Ok, "deliver", "amqp/n0", 3.into());
    h.record("c", Kind::Ok, "deliver", "amqp/n0", 3.into());
    let m = check_messages(&h.events());
    assert_eq!(m["amqp/n0"].lost, vec![2]);
    assert_eq!(m["amqp/n0"].redelivered, 1);

    let put = |key: &str, kind: Kind, v: &str| h.record("defs", kind, "put", key, v.into());
    let del = |key: &str, kind: Kind, v: Value| h.record("defs", kind, "delete", key, v);
    // A: put t1 ok, put t2 unknown: t1 or t2 at the end, nothing else.
    put("user/a", Kind::Invoke, "t1");
    put("user/a", Kind::Ok, "t1");
    put("user/a", Kind::Invoke, "t2");
    put("user/a", Kind::Info, "t2");
    // B: put ok then delete ok: absent.
    put("vhost/b", Kind::Invoke, "present");
    put("vhost/b", Kind::Ok, "present");
    del("vhost/b", Kind::Invoke, Value::Null);
    del("vhost/b", Kind::Ok, "removed".into());
    // C: put ok, delete refused as not found (stale): still present.
    put("queue/c", Kind::Invoke, "present");
    put("queue/c", Kind::Ok, "present");
    del("queue/c", Kind::Invoke, Value::Null);
    del("queue/c", Kind::Ok, "not_found".into());
    let events = h.events();
    let state = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for good in [
        state(&[("user/a", "t1"), ("queue/c", "present")]),
        state(&[("user/a", "t2"), ("queue/c", "present")]),
    ] {
        assert_eq!(check_definitions(&events, &good), Vec::<String>::new());
    }
    for bad in [
        // A lost write.
        state(&[("queue/c", "present")]),
        // A value never written.
        state(&[("user/a", "t3"), ("queue/c", "present")]),
        // A delete undone.
        state(&[
            ("user/a", "t1"),
            ("vhost/b", "present"),
            ("queue/c", "present"),
        ]),
    ] {
        assert_eq!(check_definitions(&events, &bad).len(), 1, "{bad:?}");
    }

    let status = |node: &str, term: u64, leader: &str, role: &str| {
        h.record(
            "monitor",
            Kind::Ok,
            "status",
            node,
            json!({"term": term, "leader": leader, "role": role}),
        )
    };
    status("n1", 3, "n1", "leader");
    status("n2", 3, "n1", "follower");
    status("n2", 4, "n2", "leader");
    assert!(check_leaders(&h.events()).is_empty());
    status("n3", 4, "n3", "leader");
    assert_eq!(check_leaders(&h.events()).len(), 1);
}
