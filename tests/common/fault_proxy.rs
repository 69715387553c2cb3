//! A fault-injecting TCP proxy in front of each node's inter-node listener: every node
//! advertises its proxy's address, so all cluster traffic passes through one proxy or another,
//! and a fault set on node `i`'s link applies to every connection to or from `i`. The proxy
//! knows who dialled by the name in the transport's first frame (`Hello`), so the same faults
//! work on loopback, where every connection comes from 127.0.0.1.
//!
//! Faults: added delay (a delay line: each chunk leaves at its arrival plus a random delay in
//! the range, never overtaking the one before), a throughput cap, connections reset (RST both
//! ways) at random per chunk, and a stall (nothing forwarded, new connections held: a partition
//! where the kernel cannot make one).

use bytes::Bytes;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What one node's link does to the traffic that crosses it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkFault {
    /// Each chunk is held for a delay drawn from this range (inclusive).
    pub delay: Option<(Duration, Duration)>,
    /// At most this many bytes a second in each direction.
    pub bytes_per_sec: Option<u64>,
    /// The chance that a chunk resets its connection instead of crossing.
    pub reset_chance: f64,
    /// Nothing crosses; new connections wait.
    pub stalled: bool,
}

impl LinkFault {
    pub fn slow(min_ms: u64, max_ms: u64) -> Self {
        LinkFault {
            delay: Some((Duration::from_millis(min_ms), Duration::from_millis(max_ms))),
            ..Default::default()
        }
    }

    pub fn lossy(reset_chance: f64) -> Self {
        LinkFault {
            reset_chance,
            ..Default::default()
        }
    }

    pub fn stall() -> Self {
        LinkFault {
            stalled: true,
            ..Default::default()
        }
    }

    /// Both faults at once: the longer delays, the lower cap, the higher reset chance.
    fn with(&self, other: &LinkFault) -> LinkFault {
        let delay = match (self.delay, other.delay) {
            (Some((a, b)), Some((c, d))) => Some((a.max(c), b.max(d))),
            (a, b) => a.or(b),
        };
        let bytes_per_sec = match (self.bytes_per_sec, other.bytes_per_sec) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        LinkFault {
            delay,
            bytes_per_sec,
            reset_chance: self.reset_chance.max(other.reset_chance),
            stalled: self.stalled || other.stalled,
        }
    }
}

/// The faults of every node's link, shared by all the proxies of one cluster.
pub struct Links {
    names: Vec<String>,
    faults: Mutex<Vec<LinkFault>>,
    /// Bumped on every change, so that stalled connections look again.
    changed: watch::Sender<u64>,
    /// Connections reset by a lossy link so far.
    pub resets: AtomicU64,
}

impl Links {
    /// Links for the nodes named `names` (index `i` is node `i`), all healthy.
    pub fn new(names: Vec<String>) -> Arc<Links> {
        let n = names.len();
        Arc::new(Links {
            names,
            faults: Mutex::new(vec![LinkFault::default(); n]),
            changed: watch::Sender::new(0),
            resets: AtomicU64::new(0),
        })
    }

    pub fn set(&self, node: usize, fault: LinkFault) {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())[node] = fault;
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn clear(&self, node: usize) {
        self.set(node, LinkFault::default());
    }

    pub fn fault(&self, node: usize) -> LinkFault {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())[node].clone()
    }

    /// The faults between `from` (when known) and `to`.
    fn between(&self, from: Option<usize>, to: usize) -> LinkFault {
        let f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        match from {
            Some(a) => f[a].with(&f[to]),
            None => f[to].clone(),
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Waits until the link between `from` and `to` is not stalled.
    async fn unstalled(&self, from: Option<usize>, to: usize) {
        let mut changed = self.changed.subscribe();
        while self.between(from, to).stalled {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }
}

/// One node's proxy: listens on `addr`, forwards to the node once its address is known.
pub struct FaultProxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The largest first frame the proxy reads to learn who dialled.
const MAX_HELLO: usize = 64 << 10;

impl FaultProxy {
    /// A proxy on `bind` (an OS-chosen port) for node `node` of `links`.
    pub async fn start(bind: &str, node: usize, links: Arc<Links>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let to = target.clone();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let target = *to.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(target) = target {
                    tokio::spawn(relay(inbound, node, target, links.clone()));
                }
            }
        });
        Ok(FaultProxy {
            addr,
            target,
            accepting,
        })
    }

    /// Where the node listens (set once it has started).
    pub fn set_target(&self, addr: SocketAddr) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }
}

/// Reads the dialler's first frame (kept, to be forwarded) and the node name in it.
async fn hello(inbound: &mut TcpStream, links: &Links) -> Option<(Vec<u8>, Option<usize>)> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), inbound.read_exact(&mut len))
        .await
        .ok()?
        .ok()?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_HELLO {
        return None;
    }
    let mut frame = vec![0u8; 4 + n];
    frame[..4].copy_from_slice(&len);
    tokio::time::timeout(Duration::from_secs(5), inbound.read_exact(&mut frame[4..]))
        .await
        .ok()?
        .ok()?;
    let from = serde_json::from_slice::<serde_json::Value>(&frame[4..])
        .ok()
        .and_then(|v| v["Hello"]["node"].as_str().and_then(|n| links.index_of(n)));
    Some((frame, from))
}

async fn relay(mut inbound: TcpStream, to: usize, target: SocketAddr, links: Arc<Links>) {
    let Some((first, from)) = hello(&mut inbound, &links).await else {
        return;
    };
    links.unstalled(from, to).await;
    let Ok(Ok(mut outbound)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    if outbound.write_all(&first).await.is_err() {
        return;
    }
    let (kill, _) = watch::channel(false);
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let up = pump(in_r, out_w, from, to, links.clone(), kill.clone());
    let down = pump(out_r, in_w, from, to, links, kill);
    tokio::join!(up, down);
}

/// One direction of a connection through the delay line. A reset (decided here or by the
/// other direction, or a write that fails) sets no linger on both sockets before their halves
/// drop, so each side sees an RST; a clean end of input is passed on as a FIN after the queue.
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    from: Option<usize>,
    to: usize,
    links: Arc<Links>,
    kill: watch::Sender<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(64);
    let mut killed = kill.subscribe();
    let reader_kill = kill.clone();
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = tokio::select! {
                n = r.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                _ = killed.wait_for(|k| *k) => break,
            };
            tokio::select! {
                _ = links.unstalled(from, to) => {}
                _ = killed.wait_for(|k| *k) => break,
            }
            let fault = links.between(from, to);
            let (delay, reset) = {
                let mut rng = rand::rng();
                let delay = fault
                    .delay
                    .map(|(lo, hi)| {
                        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
                        Duration::from_millis(rng.random_range(lo..=hi.max(lo)))
                    })
                    .unwrap_or_default();
                (delay, rng.random_bool(fault.reset_chance.clamp(0.0, 1.0)))
            };
            if reset {
                links.resets.fetch_add(1, Ordering::Relaxed);
                reader_kill.send_replace(true);
                break;
            }
            let mut at = (Instant::now() + delay).max(last);
            if let Some(rate) = fault.bytes_per_sec.filter(|r| *r > 0) {
                at = at.max(last + Duration::from_micros(n as u64 * 1_000_000 / rate));
            }
            last = at;
            tokio::select! {
                sent = tx.send((at, Bytes::copy_from_slice(&buf[..n]))) => if sent.is_err() { return },
                _ = killed.wait_for(|k| *k) => break,
            }
        }
        let _ = r.as_ref().set_zero_linger();
    };
    let mut killed = kill.subscribe();
    let writer = async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = killed.wait_for(|k| *k) => break,
            };
            // Input ended and the queue is written: `w` drops here, which sends a FIN.
            let Some((at, chunk)) = next else { return };
            let written = tokio::select! {
                w = async {
                    tokio::time::sleep_until(at).await;
                    w.write_all(&chunk).await
                } => w.is_ok(),
                _ = killed.wait_for(|k| *k) => break,
            };
            if !written {
                kill.send_replace(true);
                break;
            }
        }
        let _ = w.as_ref().set_zero_linger();
    };
    tokio::join!(reader, writer);
}
