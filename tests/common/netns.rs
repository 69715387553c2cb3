//! Network namespaces for the cluster fault tests: one namespace per node, each with two veth
//! links to the test's own namespace, one on a client bridge (AMQP, MQTT, STOMP, HTTP) and one
//! on a cluster bridge (inter-node traffic). Cutting a node's cluster link is a real partition
//! (the kernel drops its packets, nothing is refused or reset) while its clients still reach
//! it, as a client on the minority side of a real partition would. The [`NetLab`] guard
//! removes its namespaces and bridges when dropped, and a new lab first removes those of test
//! processes that died without dropping theirs.

use std::process::{Command, Stdio};

/// Why a lab could not be made (not root, no `ip`, no namespaces in this kernel).
#[derive(Debug)]
pub struct Unavailable(pub String);

pub struct NetLab {
    /// `sbf<pid>-<n>`: the namespaces are `<tag>-<i>`.
    tag: String,
    /// `sf<pid hex>-<n hex>`: prefix of the root-side interface names (at most 15 bytes).
    ifp: String,
    /// The first two octets after `10.`: the client net is `10.a.b.0/24`, the cluster net
    /// `10.a.b+1.0/24`, and the test's own side `.254` on both.
    net: (u8, u8),
    nodes: usize,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces and bridges of test processes that are gone.
fn sweep_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let pid = ns
                .strip_prefix("sbf")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !pid_alive(p)) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for name in list
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        {
            let pid = name
                .strip_prefix("sf")
                .and_then(|r| r.split('-').next())
                .and_then(|p| u32::from_str_radix(p, 16).ok());
            if pid.is_some_and(|p| !pid_alive(p)) {
                let _ = ip(&["link", "del", &name]);
            }
        }
    }
}

impl NetLab {
    /// Makes `nodes` namespaces with their links, or says why it cannot.
    pub fn new(nodes: usize) -> Result<NetLab, Unavailable> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        if euid() != 0 {
            return Err(Unavailable("not root".into()));
        }
        sweep_stale();
        let routes = ip(&["-4", "addr"]).map_err(Unavailable)?;
        // A pair of /24s in 10.64-191.x that this machine does not use yet.
        let mut net = None;
        for k in 0..200u32 {
            let a = 64 + ((pid + k * 7 + n * 13) % 128) as u8;
            let b = ((pid / 128 + n * 2 + k * 2) % 126 * 2) as u8;
            let used = |b: u8| routes.contains(&format!("10.{a}.{b}."));
            if !used(b) && !used(b + 1) {
                net = Some((a, b));
                break;
            }
        }
        let net = net.ok_or_else(|| Unavailable("no free 10.x.y.0/24 pair".into()))?;
        let lab = NetLab {
            tag: format!("sbf{pid}-{n}"),
            ifp: format!("sf{pid:x}-{n:x}"),
            net,
            nodes,
        };
        // From here on, a failure drops (removes) what was made.
        lab.build().map_err(Unavailable)?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), String> {
        for (bridge, host) in [
            (self.bridge('c'), self.host_ip('c')),
            (self.bridge('r'), self.host_ip('r')),
        ] {
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            ip(&["addr", "add", &format!("{host}/24"), "dev", &bridge])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for side in ['c', 'r'] {
                let outer = self.veth(i, side);
                let inner = format!("eth{side}");
                ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
                ])?;
                ip(&["link", "set", &outer, "master", &self.bridge(side)])?;
                ip(&["link", "set", &outer, "up"])?;
                let addr = format!("{}/24", self.node_ip(i, side));
                ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
                ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            }
        }
        Ok(())
    }

    fn bridge(&self, side: char) -> String {
        format!("{}b{side}", self.ifp)
    }

    fn veth(&self, i: usize, side: char) -> String {
        format!("{}{i}{side}", self.ifp)
    }

    fn subnet(&self, side: char) -> String {
        let (a, b) = self.net;
        let b = if side == 'c' { b } else { b + 1 };
        format!("10.{a}.{b}")
    }

    /// Node `i`'s address on the client (`'c'`) or cluster (`'r'`) net.
    pub fn node_ip(&self, i: usize, side: char) -> String {
        format!("{}.{}", self.subnet(side), i + 1)
    }

    /// The test's own address on the client (`'c'`) or cluster (`'r'`) net.
    pub fn host_ip(&self, side: char) -> String {
        format!("{}.254", self.subnet(side))
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// The command that runs `program` inside node `i`'s namespace.
    pub fn command_in(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(i), program]);
        c
    }

    /// Cuts node `i`'s cluster link: its inter-node packets go nowhere, in both directions.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &self.veth(i, 'r'), "down"]).map(drop)
    }

    pub fn heal(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &self.veth(i, 'r'), "up"]).map(drop)
    }
}

impl Drop for NetLab {
    /// Removing a namespace removes the veths in it and their peers; the bridges go by name.
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        for side in ['c', 'r'] {
            let _ = ip(&["link", "del", &self.bridge(side)]);
        }
    }
}

/// The effective user id, read from `/proc` (the workspace denies `unsafe`, so no `geteuid`).
fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}
