//! A cluster of `switchboard` processes for fault tests. Each node runs in its own network
//! namespace ([`super::netns`]) when the test may make them (root), else on loopback; every
//! node advertises the address of its [`FaultProxy`], so all inter-node traffic crosses one.
//! Partitions cut a namespace's cluster link (on loopback: stall the node's proxied
//! connections); slow and lossy links are the proxy's. Dropping the cluster kills every
//! process, then removes the namespaces, whether the test passed or not.

use super::fault_proxy::{FaultProxy, LinkFault, Links};
use super::netns::NetLab;
use super::{fresh_data_dir, test_config_text_in, WAIT};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use switchboard::ctl::api::{segment, Api};

pub const COOKIE: &str = "faults-cookie";

/// Where a running node's clients reach it.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub amqp: SocketAddr,
    pub mqtt: SocketAddr,
    pub stomp: SocketAddr,
    pub http: SocketAddr,
}

/// The current client addresses of every node (`None` while it is down): ports change when a
/// node restarts, and the workload's clients look here before each reconnect.
#[derive(Clone, Default)]
pub struct AddressBook(Arc<RwLock<Vec<Option<Addrs>>>>);

impl AddressBook {
    pub fn get(&self, i: usize) -> Option<Addrs> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(i)
            .copied()
            .flatten()
    }

    fn set(&self, i: usize, a: Option<Addrs>) {
        let mut v = self.0.write().unwrap_or_else(|p| p.into_inner());
        if v.len() <= i {
            v.resize(i + 1, None);
        }
        v[i] = a;
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

pub struct ProcNode {
    pub name: String,
    pub dir: PathBuf,
    client_ip: String,
    /// Its inter-node listener (the proxy forwards here).
    listen: String,
    pub proxy: FaultProxy,
    child: Option<Child>,
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct ProcCluster {
    pub nodes: Vec<ProcNode>,
    pub links: Arc<Links>,
    pub book: AddressBook,
    /// Declared last: dropped after the processes that run in it.
    lab: Option<NetLab>,
}

/// An HTTP call with a bounded wait: status and body, or why there is none.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let api = Api::new(&format!("http://{addr}"), "guest", "guest");
    let (method, path) = (method.to_owned(), path.to_owned());
    let call = tokio::task::spawn_blocking(move || {
        let body = body.unwrap_or(Value::Null);
        match method.as_str() {
            "GET" => api.get(&path),
            "PUT" => api.put(&path, &body),
            "POST" => api.post(&path, &body),
            _ => api.delete(&path),
        }
        .map_err(|e| e.to_string())
    });
    match tokio::time::timeout(WAIT + Duration::from_secs(5), call).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl ProcCluster {
    /// Starts `n` nodes (the first forms the cluster, the others join it) and waits until
    /// every node sees all of them as voters under one leader.
    pub async fn start(n: usize) -> ProcCluster {
        let tag = super::unique("f");
        let names: Vec<String> = (0..n).map(|i| format!("f{i}@{tag}")).collect();
        let loopback = std::env::var("SWITCHBOARD_FAULTS_LOOPBACK").as_deref() == Ok("1");
        let lab = if loopback {
            eprintln!(
                "cluster faults: SWITCHBOARD_FAULTS_LOOPBACK=1: the nodes run on loopback ports \
                 and a partition is the proxy stalling a node's links"
            );
            None
        } else {
            match NetLab::new(n) {
                Ok(lab) => Some(lab),
                Err(e) => {
                    eprintln!(
                        "cluster faults: no network namespaces ({}): the nodes run on loopback \
                         ports and a partition is the proxy stalling a node's links",
                        e.0
                    );
                    None
                }
            }
        };
        let links = Links::new(names.clone());
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (proxy_bind, client_ip, listen) = match &lab {
                Some(l) => (
                    format!("{}:0", l.host_ip('r')),
                    l.node_ip(i, 'c'),
                    // Its own namespace's own address: nothing else can hold the port.
                    format!("{}:25672", l.node_ip(i, 'r')),
                ),
                None => (
                    "127.0.0.1:0".to_owned(),
                    "127.0.0.1".to_owned(),
                    format!("127.0.0.1:{}", free_loopback_port()),
                ),
            };
            let proxy = FaultProxy::start(&proxy_bind, i, links.clone())
                .await
                .expect("proxy");
            proxy.set_target(listen.parse().expect("listen address"));
            nodes.push(ProcNode {
                name: name.clone(),
                dir: fresh_data_dir(),
                client_ip,
                listen,
                proxy,
                child: None,
            });
        }
        let mut c = ProcCluster {
            nodes,
            links,
            book: AddressBook::default(),
            lab,
        };
        c.spawn(0, &[]).await;
        c.wait_status(0, "a one-node cluster", |s| s["leader"].is_string())
            .await;
        let seed = vec![c.nodes[0].proxy.addr.to_string()];
        for i in 1..n {
            c.spawn(i, &seed).await;
        }
        c.wait_formed().await;
        c
    }

    pub fn namespaces(&self) -> bool {
        self.lab.is_some()
    }

    fn config(&self, i: usize, seeds: &[String]) -> String {
        let n = &self.nodes[i];
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        // Clients come from the test's side of the bridge, not loopback: guest must be let in.
        test_config_text_in(&n.dir)
            .replace("127.0.0.1:0", &format!("{}:0", n.client_ip))
            .replace("[server]\n", "[server]\nloopback_users = []\n")
            + &format!(
                "\n[cluster]\nname = \"faults\"\nnode_name = \"{}\"\nlisten = \"{}\"\n\
                 advertise = \"{}\"\nseeds = [{}]\ncookie = \"{COOKIE}\"\nheartbeat_ms = 100\n\
                 election_timeout_ms = 1000\noperation_timeout_ms = 3000\n",
                n.name,
                n.listen,
                n.proxy.addr,
                seeds.join(", ")
            )
    }

    /// Starts node `i`'s process (on its data directory) and waits for its ports file.
    async fn spawn(&mut self, i: usize, seeds: &[String]) {
        let config = self.config(i, seeds);
        let n = &self.nodes[i];
        assert!(n.child.is_none(), "{} is running", n.name);
        std::fs::create_dir_all(&n.dir).expect("data dir");
        let config_path = n.dir.join("switchboard.toml");
        std::fs::write(&config_path, config).expect("config");
        let ports = n.dir.join("ports.json");
        let _ = std::fs::remove_file(&ports);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("broker.log"))
            .expect("log file");
        let bin = env!("CARGO_BIN_EXE_switchboard");
        let mut cmd = match &self.lab {
            Some(l) => l.command_in(i, bin),
            None => Command::new(bin),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--ports-file")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn broker");
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + WAIT * 3;
        let addrs = loop {
            if let Some(a) = std::fs::read_to_string(&ports)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| {
                    let at = |p: &str| v[p][0].as_str()?.parse::<SocketAddr>().ok();
                    Some(Addrs {
                        amqp: at("amqp")?,
                        mqtt: at("mqtt")?,
                        stomp: at("stomp")?,
                        http: at("http")?,
                    })
                })
            {
                break a;
            }
            if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited with {status} at start; log: {}",
                    self.nodes[i].name,
                    self.log_tail(i)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start",
                self.nodes[i].name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.book.set(i, Some(addrs));
    }

    /// The last lines of node `i`'s log (for failure messages).
    pub fn log_tail(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.nodes[i].dir.join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILL: no shutdown, no last write.
    pub fn kill(&mut self, i: usize) {
        self.book.set(i, None);
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }

    /// Starts a killed node again on its data directory and address, with no seeds: it is a
    /// member from its own log.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i, &[]).await;
    }

    /// Cuts node `i` off from the other nodes (its clients still reach it).
    pub fn partition(&self, i: usize) {
        match &self.lab {
            Some(l) => l.cut(i).expect("cut the link"),
            None => self.links.set(i, LinkFault::stall()),
        }
    }

    pub fn heal(&self, i: usize) {
        match &self.lab {
            Some(l) => l.heal(i).expect("heal the link"),
            None => self.links.clear(i),
        }
    }

    /// Sets node `i`'s inter-node link to `fault` (through the proxies).
    pub fn set_link(&self, i: usize, fault: LinkFault) {
        self.links.set(i, fault);
    }

    pub fn clear_link(&self, i: usize) {
        self.links.clear(i);
    }

    pub fn api(&self, i: usize) -> Option<Api> {
        let a = self.book.get(i)?;
        Some(Api::new(&format!("http://{}", a.http), "guest", "guest"))
    }

    /// `GET /api/switchboard/cluster` of node `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let a = self.book.get(i)?;
        match http(a.http, "GET", "/api/switchboard/cluster", None).await {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    /// Polls node `i`'s cluster status until `ok` holds, panicking after a bounded wait.
    pub async fn wait_status(&self, i: usize, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let s = self.status(i).await;
            if let Some(s) = &s {
                if ok(s) {
                    return s.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}: {s:?}\nlog: {}",
                self.nodes[i].name,
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        v.sort();
        v
    }

    /// Waits until every node runs and sees every node as a running voter under one leader,
    /// the same leader for all; its index.
    pub async fn wait_formed(&self) -> usize {
        let all = self.names();
        let deadline = Instant::now() + WAIT * 4;
        loop {
            let mut leaders = Vec::new();
            for i in 0..self.nodes.len() {
                let ok = self.status(i).await.filter(|s| {
                    let mut voters: Vec<String> = s["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| m["voter"] == true && m["running"] == true)
                        .filter_map(|m| m["name"].as_str().map(str::to_owned))
                        .collect();
                    voters.sort();
                    voters == all
                });
                leaders.push(ok.and_then(|s| s["leader"].as_str().map(str::to_owned)));
            }
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| x.as_ref() == Some(l)) {
                    if let Some(at) = self.nodes.iter().position(|n| &n.name == l) {
                        return at;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not come together: leaders seen {leaders:?}\nlogs:\n{}",
                (0..self.nodes.len())
                    .map(|i| format!("--- {}\n{}", self.nodes[i].name, self.log_tail(i)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader every running node agrees on (waiting for one).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let mut seen = Vec::new();
            for i in (0..self.nodes.len()).filter(|i| self.running(*i)) {
                seen.push(
                    self.status(i)
                        .await
                        .and_then(|s| s["leader"].as_str().map(str::to_owned)),
                );
            }
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|x| x.as_ref() == Some(l)) {
                    if let Some(at) = self.nodes.iter().position(|n| &n.name == l) {
                        return at;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `i`'s definitions as a comparable map, without what is node-local by design
    /// (MQTT sessions' queues and their bindings).
    pub async fn definitions(&self, i: usize) -> Result<BTreeMap<String, Value>, String> {
        let a = self.book.get(i).ok_or("not running")?;
        match http(a.http, "GET", "/api/definitions", None).await {
            Ok((200, d)) => Ok(comparable_definitions(&d)),
            other => Err(format!("GET /api/definitions: {other:?}")),
        }
    }

    /// Waits until every node exports the same definitions; those, or the differences after
    /// a bounded wait.
    pub async fn converged_definitions(&self) -> Result<BTreeMap<String, Value>, Vec<String>> {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let mut all = Vec::new();
            for i in 0..self.nodes.len() {
                all.push(self.definitions(i).await);
            }
            if let Some(Ok(first)) = all.first() {
                if all.iter().all(|d| d.as_ref() == Ok(first)) {
                    return Ok(first.clone());
                }
            }
            if Instant::now() > deadline {
                let base = all
                    .first()
                    .cloned()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let mut diff: Vec<String> = all
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.as_ref().err().map(|e| format!("node {i}: {e}")))
                    .collect();
                for (i, d) in all.iter().enumerate().skip(1) {
                    let d = d.clone().unwrap_or_default();
                    let keys: std::collections::BTreeSet<&String> =
                        base.keys().chain(d.keys()).collect();
                    for k in keys {
                        if base.get(k) != d.get(k) {
                            diff.push(format!(
                                "{k}: node 0 {:?}, node {i} {:?}",
                                base.get(k),
                                d.get(k)
                            ));
                        }
                    }
                }
                return Err(diff);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Node `i` answers on every protocol and commits a definitions change: an error naming
    /// what did not.
    pub async fn serves(&self, i: usize) -> Result<(), String> {
        let a = self.book.get(i).ok_or("not running")?;
        let name = &self.nodes[i].name;
        let amqp = async {
            let c = lapin::Connection::connect(
                &format!("amqp://guest:guest@{}/%2f", a.amqp),
                lapin::ConnectionProperties::default(),
            )
            .await?;
            let ch = c.create_channel().await?;
            ch.close(200, "ok".into()).await?;
            c.close(200, "ok".into()).await
        };
        tokio::time::timeout(WAIT, amqp)
            .await
            .map_err(|_| format!("{name}: AMQP timed out"))?
            .map_err(|e| format!("{name}: AMQP {e}"))?;
        super::tolerant::MqttWire::connect(a.mqtt, &format!("probe-{i}"), true)
            .await
            .ok_or(format!("{name}: MQTT CONNECT not accepted"))?;
        super::tolerant::StompWire::connect(a.stomp)
            .await
            .ok_or(format!("{name}: STOMP CONNECT not accepted"))?;
        match http(a.http, "GET", "/api/overview", None).await {
            Ok((200, _)) => {}
            other => return Err(format!("{name}: GET /api/overview {other:?}")),
        }
        let path = format!("/api/vhosts/{}", segment(&format!("probe-{i}")));
        match http(a.http, "PUT", &path, None).await {
            Ok((201 | 204, _)) => {}
            other => return Err(format!("{name}: PUT {path} {other:?}")),
        }
        match http(a.http, "DELETE", &path, None).await {
            Ok((204, _)) => Ok(()),
            other => Err(format!("{name}: DELETE {path} {other:?}")),
        }
    }
}

/// The users of the test config, which every node seeds on its own (with its own salt).
const SEED_USERS: [&str; 2] = ["guest", "alice"];

/// `/api/definitions` as `section/identity` → the object, without what is node-local by
/// design: MQTT session queues and their bindings, the seed users' password hashes.
pub fn comparable_definitions(d: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let local = |v: &Value| {
        ["name", "destination"].iter().any(|k| {
            v[k].as_str()
                .is_some_and(|s| s.starts_with("mqtt-subscription-"))
        })
    };
    for section in [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        for item in d[section].as_array().into_iter().flatten() {
            if (section == "queues" || section == "bindings") && local(item) {
                continue;
            }
            let mut item = item.clone();
            if section == "users" && SEED_USERS.iter().any(|u| item["name"] == *u) {
                item["password_hash"] = Value::Null;
            }
            let id = [
                "vhost",
                "user",
                "name",
                "source",
                "destination",
                "routing_key",
            ]
            .iter()
            .filter_map(|k| item[k].as_str())
            .collect::<Vec<_>>()
            .join("|");
            out.insert(format!("{section}/{id}"), item);
        }
    }
    out
}

/// The final state of the workload's definitions keys (`vhost/…`, `user/…`, `queue/…`, as
/// the churner names them) in `defs`: present keys with their value.
pub fn churned_state(defs: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in defs {
        let name = v["name"].as_str().unwrap_or_default();
        if k.starts_with("vhosts/") && name.starts_with("fv-") {
            out.insert(format!("vhost/{name}"), "present".to_owned());
        } else if k.starts_with("users/") && name.starts_with("fu-") {
            let tags = match &v["tags"] {
                Value::Array(t) => t
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.as_str().unwrap_or_default().to_owned(),
            };
            out.insert(format!("user/{name}"), tags);
        } else if k.starts_with("queues/") && name.starts_with("fq-") {
            out.insert(format!("queue/{name}"), "present".to_owned());
        }
    }
    out
}

/// A durable queue body for `PUT /api/queues/...` with `arguments`.
pub fn durable_queue(arguments: &Value) -> Value {
    json!({"durable": true, "auto_delete": false, "arguments": arguments})
}
