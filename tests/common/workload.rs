//! The load the cluster fault tests run while they inject faults, every operation recorded in
//! a [`History`]:
//!
//! - **messages** ([`MessageLoad`]): on every node, one publisher per protocol (AMQP with
//!   confirms, MQTT QoS 1, STOMP SENDs with receipts, all persistent) and a consumer per
//!   publisher (AMQP manual acks, an MQTT persistent session at QoS 1, STOMP
//!   `client-individual` acks) on the node [`MessageLoad::consume_from`] names. AMQP and STOMP
//!   go through durable queues declared with [`MessageLoad::queue_arguments`]; clients
//!   reconnect (to the node's current address) whenever their connection fails;
//! - **definitions** ([`churn`]): one client declares and deletes vhosts, users (with tags)
//!   and durable queues over the HTTP API of a random node;
//! - **monitor** ([`monitor`]): every node's `/api/switchboard/cluster`, sampled.

use super::cluster_procs::{durable_queue, http, AddressBook, ProcCluster};
use super::history::{History, Kind, StreamCheck};
use super::tolerant::{MqttWire, StompWire};
use super::WAIT;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ConnectionProperties};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::ctl::api::segment;
use switchboard_mqtt as mqtt;
use switchboard_stomp as stomp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pause before a client reconnects.
const RETRY: Duration = Duration::from_millis(200);

/// What the message load runs through: the parameters the quorum-queue scenarios change.
#[derive(Debug, Clone)]
pub struct MessageLoad {
    /// Arguments of the AMQP and STOMP streams' durable queues: `{}` for classic queues,
    /// `{"x-queue-type": "quorum"}` for quorum ones.
    pub queue_arguments: Value,
    /// `consume_from[i]`: the node whose consumers take what is published on node `i` (a
    /// classic queue is node-local, so the same node).
    pub consume_from: Vec<usize>,
}

impl MessageLoad {
    pub fn classic(nodes: usize) -> Self {
        MessageLoad {
            queue_arguments: json!({}),
            consume_from: (0..nodes).collect(),
        }
    }
}

fn amqp_queue(i: usize) -> String {
    format!("faults-amqp-n{i}")
}
fn stomp_queue(i: usize) -> String {
    format!("faults-stomp-n{i}")
}
fn mqtt_topic(i: usize) -> String {
    format!("faults/n{i}")
}
fn mqtt_session(i: usize) -> String {
    format!("faults-sub-n{i}")
}

/// Every stream's name (`amqp/n0`, `mqtt/n1`, ...), as the history keys them.
pub fn streams(nodes: usize) -> Vec<String> {
    (0..nodes)
        .flat_map(|i| ["amqp", "mqtt", "stomp"].map(|p| format!("{p}/n{i}")))
        .collect()
}

/// Declares the queues (on node 0; replicated) and waits until every node has them, and
/// makes each MQTT consumer's persistent session with its subscription.
pub async fn prepare(c: &ProcCluster, load: &MessageLoad) {
    let n = c.nodes.len();
    let a0 = c.book.get(0).expect("node 0 running");
    for i in 0..n {
        for q in [amqp_queue(i), stomp_queue(i)] {
            let path = format!("/api/queues/%2F/{}", segment(&q));
            let r = http(
                a0.http,
                "PUT",
                &path,
                Some(durable_queue(&load.queue_arguments)),
            )
            .await;
            assert!(matches!(r, Ok((201 | 204, _))), "PUT {path}: {r:?}");
            for j in 0..n {
                let aj = c.book.get(j).expect("running");
                let deadline = Instant::now() + WAIT;
                while !matches!(http(aj.http, "GET", &path, None).await, Ok((200, _))) {
                    assert!(Instant::now() < deadline, "node {j} never got {q}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let at = c.book.get(load.consume_from[i]).expect("running");
        let mut w = MqttWire::connect(at.mqtt, &mqtt_session(i), false)
            .await
            .expect("MQTT session");
        w.subscribe_qos1(&mqtt_topic(i)).await.expect("SUBACK");
        w.send(&mqtt::Packet::Disconnect(mqtt::Disconnect::default()))
            .await
            .expect("DISCONNECT");
    }
}

/// The message load, running.
pub struct Running {
    stop_publishing: watch::Sender<bool>,
    stop_consuming: watch::Sender<bool>,
    publishers: Vec<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
    nodes: usize,
}

/// Starts every publisher and consumer of `load` (after [`prepare`]).
pub fn start(book: &AddressBook, history: &Arc<History>, load: &MessageLoad) -> Running {
    let (stop_publishing, _) = watch::channel(false);
    let (stop_consuming, _) = watch::channel(false);
    let mut publishers = Vec::new();
    let mut consumers = Vec::new();
    let nodes = load.consume_from.len();
    for i in 0..nodes {
        let from = load.consume_from[i];
        let p = |stop: &watch::Sender<bool>| Client {
            book: book.clone(),
            history: history.clone(),
            stop: stop.subscribe(),
        };
        publishers.push(tokio::spawn(
            p(&stop_publishing).amqp_publisher(i, amqp_queue(i)),
        ));
        publishers.push(tokio::spawn(p(&stop_publishing).mqtt_publisher(i)));
        publishers.push(tokio::spawn(
            p(&stop_publishing).stomp_publisher(i, stomp_queue(i)),
        ));
        consumers.push(tokio::spawn(p(&stop_consuming).amqp_consumer(
            from,
            format!("amqp/n{i}"),
            amqp_queue(i),
        )));
        consumers.push(tokio::spawn(p(&stop_consuming).mqtt_consumer(from, i)));
        consumers.push(tokio::spawn(p(&stop_consuming).stomp_consumer(
            from,
            format!("stomp/n{i}"),
            stomp_queue(i),
        )));
    }
    Running {
        stop_publishing,
        stop_consuming,
        publishers,
        consumers,
        nodes,
    }
}

impl Running {
    /// Waits until every stream has had at least `n` more publishes confirmed than it had
    /// when called: the publishers of every node get through.
    pub async fn progress(&self, history: &History, n: usize, within: Duration) {
        let before = history.confirmed();
        let deadline = Instant::now() + within;
        loop {
            let now = history.confirmed();
            let behind: Vec<String> = streams(self.nodes)
                .into_iter()
                .filter(|s| {
                    now.get(s).copied().unwrap_or(0) < before.get(s).copied().unwrap_or(0) + n
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "streams making no progress within {within:?}: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops publishing, lets the consumers take what is left (until every confirmed message
    /// was delivered, or `within`), stops them and checks the streams.
    pub async fn finish(
        self,
        history: &History,
        within: Duration,
    ) -> BTreeMap<String, StreamCheck> {
        self.stop_publishing.send_replace(true);
        for p in self.publishers {
            let _ = tokio::time::timeout(WAIT * 2, p).await;
        }
        let deadline = Instant::now() + within;
        loop {
            let checks = history.check_messages();
            if checks.values().all(|c| c.lost.is_empty()) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop_consuming.send_replace(true);
        for c in self.consumers {
            let _ = tokio::time::timeout(WAIT * 2, c).await;
        }
        history.check_messages()
    }
}

struct Client {
    book: AddressBook,
    history: Arc<History>,
    stop: watch::Receiver<bool>,
}

fn seq_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.parse().ok()
}

impl Client {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits out the pause before a reconnect; false once told to stop.
    async fn pause(&mut self) -> bool {
        let _ = tokio::time::timeout(RETRY, self.stop.wait_for(|s| *s)).await;
        !self.stopped()
    }

    fn record(&self, process: &str, kind: Kind, f: &str, key: &str, seq: u64) {
        self.history.record(process, kind, f, key, seq.into());
    }

    async fn amqp_channel(&self, node: usize) -> Option<(lapin::Connection, lapin::Channel)> {
        let a = self.book.get(node)?;
        let url = format!("amqp://guest:guest@{}/%2f", a.amqp);
        let open = async {
            let conn = lapin::Connection::connect(&url, ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            Ok::<_, lapin::Error>((conn, ch))
        };
        tokio::time::timeout(WAIT, open).await.ok()?.ok()
    }

    async fn amqp_publisher(mut self, node: usize, queue: String) {
        let (stream, process) = (format!("amqp/n{node}"), format!("pub-amqp-n{node}"));
        let mut seq = 0u64;
        while self.pause().await {
            let Some((_conn, ch)) = self.amqp_channel(node).await else {
                continue;
            };
            if ch
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .is_err()
            {
                continue;
            }
            while !self.stopped() {
                seq += 1;
                self.record(&process, Kind::Invoke, "publish", &stream, seq);
                let publish = async {
                    ch.basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        seq.to_string().as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await
                };
                match tokio::time::timeout(WAIT, publish).await {
                    Ok(Ok(c)) if c.is_ack() => {
                        self.record(&process, Kind::Ok, "publish", &stream, seq)
                    }
                    _ => {
                        self.record(&process, Kind::Info, "publish", &stream, seq);
                        break;
                    }
                }
            }
        }
    }

    async fn amqp_consumer(mut self, node: usize, stream: String, queue: String) {
        let process = format!("sub-{stream}");
        while self.pause().await {
            let Some((_conn, ch)) = self.amqp_channel(node).await else {
                continue;
            };
            let consume = async {
                ch.basic_qos(100, BasicQosOptions::default()).await?;
                ch.basic_consume(
                    queue.as_str().into(),
                    "faults".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            };
            let Ok(Ok(mut consumer)) = tokio::time::timeout(WAIT, consume).await else {
                continue;
            };
            loop {
                let next = tokio::select! {
                    n = consumer.next() => n,
                    _ = self.stop.wait_for(|s| *s) => return,
                };
                let Some(Ok(d)) = next else { break };
                if let Some(seq) = seq_of(&d.data) {
                    self.record(&process, Kind::Ok, "deliver", &stream, seq);
                }
                let acked = tokio::time::timeout(WAIT, d.ack(BasicAckOptions::default())).await;
                if !matches!(acked, Ok(Ok(_))) {
                    break;
                }
            }
        }
    }

    async fn mqtt_publisher(mut self, node: usize) {
        let (stream, process) = (format!("mqtt/n{node}"), format!("pub-mqtt-n{node}"));
        let topic = mqtt_topic(node);
        let mut seq = 0u64;
        while self.pause().await {
            let Some(a) = self.book.get(node) else {
                continue;
            };
            let Some(mut w) = MqttWire::connect(a.mqtt, &format!("faults-pub-n{node}"), true).await
            else {
                continue;
            };
            while !self.stopped() {
                seq += 1;
                self.record(&process, Kind::Invoke, "publish", &stream, seq);
                let id = (seq % 65_535) as u16 + 1;
                match w.publish_qos1(&topic, id, seq.to_string().as_bytes()).await {
                    Some(()) => self.record(&process, Kind::Ok, "publish", &stream, seq),
                    None => {
                        self.record(&process, Kind::Info, "publish", &stream, seq);
                        break;
                    }
                }
            }
        }
    }

    /// The persistent session [`prepare`] made, resumed on every reconnect (never
    /// subscribed again: a session lost with its queue shows as lost messages).
    async fn mqtt_consumer(mut self, node: usize, publisher: usize) {
        let (stream, process) = (
            format!("mqtt/n{publisher}"),
            format!("sub-mqtt-n{publisher}"),
        );
        while self.pause().await {
            let Some(a) = self.book.get(node) else {
                continue;
            };
            let Some(mut w) = MqttWire::connect(a.mqtt, &mqtt_session(publisher), false).await
            else {
                continue;
            };
            loop {
                let next = tokio::select! {
                    p = w.recv(Duration::from_secs(30)) => p,
                    _ = self.stop.wait_for(|s| *s) => return,
                };
                match next {
                    Some(mqtt::Packet::Publish(p)) => {
                        if let Some(seq) = seq_of(&p.payload) {
                            self.record(&process, Kind::Ok, "deliver", &stream, seq);
                        }
                        if let Some(id) = p.packet_id {
                            if w.puback(id).await.is_none() {
                                break;
                            }
                        }
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
    }

    async fn stomp_publisher(mut self, node: usize, queue: String) {
        let (stream, process) = (format!("stomp/n{node}"), format!("pub-stomp-n{node}"));
        let destination = format!("/amq/queue/{queue}");
        let mut seq = 0u64;
        while self.pause().await {
            let Some(a) = self.book.get(node) else {
                continue;
            };
            let Some(mut w) = StompWire::connect(a.stomp).await else {
                continue;
            };
            while !self.stopped() {
                seq += 1;
                self.record(&process, Kind::Invoke, "publish", &stream, seq);
                let send = stomp::Frame::new(stomp::Command::Send)
                    .with("destination", destination.as_str())
                    .with("persistent", "true")
                    .with_body(seq.to_string().into_bytes());
                match w.request(send, &seq.to_string()).await {
                    Some(()) => self.record(&process, Kind::Ok, "publish", &stream, seq),
                    None => {
                        self.record(&process, Kind::Info, "publish", &stream, seq);
                        break;
                    }
                }
            }
        }
    }

    async fn stomp_consumer(mut self, node: usize, stream: String, queue: String) {
        let process = format!("sub-{stream}");
        while self.pause().await {
            let Some(a) = self.book.get(node) else {
                continue;
            };
            let Some(mut w) = StompWire::connect(a.stomp).await else {
                continue;
            };
            let subscribe = stomp::Frame::new(stomp::Command::Subscribe)
                .with("id", "0")
                .with("destination", format!("/amq/queue/{queue}"))
                .with("ack", "client-individual")
                .with("prefetch-count", "100");
            if w.send(&subscribe).await.is_none() {
                continue;
            }
            loop {
                let next = tokio::select! {
                    f = w.recv(Duration::from_secs(30)) => f,
                    _ = self.stop.wait_for(|s| *s) => return,
                };
                let Some(f) = next else { break };
                if f.command != stomp::Command::Message {
                    if f.command == stomp::Command::Error {
                        break;
                    }
                    continue;
                }
                if let Some(seq) = seq_of(&f.body) {
                    self.record(&process, Kind::Ok, "deliver", &stream, seq);
                }
                let Some(id) = f.header("ack") else { break };
                let ack = stomp::Frame::new(stomp::Command::Ack).with("id", id);
                if w.send(&ack).await.is_none() {
                    break;
                }
            }
        }
    }
}

/// One client changing definitions on random nodes until `stop`: `put`/`delete` of
/// `vhost/fv-<k>`, `user/fu-<k>` (value: its tags) and `queue/fq-<k>` (durable, in `/`).
pub fn churn(
    book: AddressBook,
    history: Arc<History>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        while !*stop.borrow() {
            let node = rng.random_range(0..book.len());
            let k = rng.random_range(0..4);
            let put = rng.random_bool(0.6);
            let tags = format!("t{}", rng.random_range(0..100));
            let (key, path, body, value) = match rng.random_range(0..3) {
                0 => (
                    format!("vhost/fv-{k}"),
                    format!("/api/vhosts/fv-{k}"),
                    json!({}),
                    "present".to_owned(),
                ),
                1 => (
                    format!("user/fu-{k}"),
                    format!("/api/users/fu-{k}"),
                    json!({"password": "pw", "tags": tags}),
                    tags,
                ),
                _ => (
                    format!("queue/fq-{k}"),
                    format!("/api/queues/%2F/fq-{k}"),
                    durable_queue(&json!({})),
                    "present".to_owned(),
                ),
            };
            let Some(a) = book.get(node) else {
                let _ = tokio::time::timeout(RETRY, stop.wait_for(|s| *s)).await;
                continue;
            };
            let (f, method, value) = if put {
                ("put", "PUT", Value::from(value))
            } else {
                ("delete", "DELETE", Value::Null)
            };
            let process = "defs";
            history.record(process, Kind::Invoke, f, &key, value.clone());
            let answer = http(a.http, method, &path, put.then_some(body)).await;
            let why = match &answer {
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e.clone(),
            };
            let (kind, value) = match answer {
                Ok((201 | 204, _)) if put => (Kind::Ok, value),
                Ok((204, _)) => (Kind::Ok, "removed".into()),
                Ok((404, _)) if !put => (Kind::Ok, "not_found".into()),
                // Refused before anything was proposed.
                Ok((400 | 401 | 403 | 405, _)) => (Kind::Fail, value),
                // Connection refused: the node is down, nothing was sent.
                Err(e) if e.contains("refused") => (Kind::Fail, value),
                // 503 no_quorum, a timeout, a connection lost mid-call: unknown.
                _ => (Kind::Info, value),
            };
            let why = (kind != Kind::Ok).then_some(why);
            history.record_why(process, kind, f, &key, value, why);
            let _ = tokio::time::timeout(Duration::from_millis(20), stop.wait_for(|s| *s)).await;
        }
    })
}

/// Samples every node's cluster status until `stop`: `status` events keyed by node name.
pub fn monitor(
    book: AddressBook,
    history: Arc<History>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !*stop.borrow() {
            for i in 0..book.len() {
                let Some(a) = book.get(i) else { continue };
                if let Ok((200, s)) = http(a.http, "GET", "/api/switchboard/cluster", None).await {
                    let node = s["node_name"].as_str().unwrap_or_default().to_owned();
                    history.record(
                        "monitor",
                        Kind::Ok,
                        "status",
                        &node,
                        json!({"term": s["term"], "leader": s["leader"], "role": s["role"]}),
                    );
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), stop.wait_for(|s| *s)).await;
        }
    })
}
