//! Any node reaches every queue. A replicated durable classic queue has a home: the node
//! that declared it (its definition record says which). Only the home node holds the queue's
//! messages, as RabbitMQ's classic queues; every other node holds a proxy (the same queue in
//! its vhost, with its bindings and local consumers, but no messages) whose operations go to
//! the home node over the inter-node transport ([`proxy`]), where they are served ([`home`]).
//!
//! Where a queue lives is asked through [`QueueHome`], so that quorum queues can later say
//! where their leader is through the same question.

pub mod home;
pub mod proxy;
pub mod wire;

use super::transport::Auth;
use super::Consensus;
use crate::core::{Broker, Queue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Where a queue's messages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// On this node.
    Local,
    /// On the node of this name.
    Remote(String),
    /// Nowhere this node knows of (no such queue, or its node is not a member).
    Unavailable,
}

/// The question "where does this queue live".
pub trait QueueHome: Send + Sync {
    fn home_of(&self, vhost: &str, queue: &str) -> Home;
}

/// What a node needs of its cluster to forward: the address of a member by name.
pub trait Members: Send + Sync {
    fn address_of(&self, node: &str) -> Option<String>;
}

/// A node's forwarding: its links to the home nodes of its proxies, and the sessions of the
/// nodes whose proxies reach queues held here.
pub struct Forward {
    me: String,
    session: wire::Session,
    auth: Arc<Auth>,
    timeout: Duration,
    broker: Weak<Broker>,
    consensus: Weak<dyn Consensus>,
    /// Weak: the cluster holds this.
    members: Weak<dyn Members>,
    links: Mutex<HashMap<String, Arc<proxy::Link>>>,
    home: home::Home,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward").field("me", &self.me).finish()
    }
}

impl Forward {
    /// Forwarding for `broker`, named `me` in the cluster. A session this node serves is
    /// closed once it has not fetched for `timeout` (the cluster's operation timeout).
    pub fn new(
        broker: &Arc<Broker>,
        consensus: &Arc<dyn Consensus>,
        members: &Arc<dyn Members>,
        auth: Arc<Auth>,
        timeout: Duration,
    ) -> Arc<Forward> {
        let me = consensus.node().name;
        let forward = Arc::new(Forward {
            session: wire::Session {
                id: rand::random(),
                node: me.clone(),
            },
            me,
            auth,
            timeout,
            broker: Arc::downgrade(broker),
            consensus: Arc::downgrade(consensus),
            members: Arc::downgrade(members),
            links: Mutex::new(HashMap::new()),
            home: home::Home::new(broker, timeout),
        });
        let sweeping = Arc::downgrade(&forward);
        let mut shutdown = broker.shutdown_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(timeout / 4);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = super::stopped(&mut shutdown) => {
                        if let Some(f) = sweeping.upgrade() {
                            f.home.close_all();
                        }
                        return;
                    }
                }
                match sweeping.upgrade() {
                    Some(f) => f.home.expire(),
                    None => return,
                }
            }
        });
        forward
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Answers another node's request.
    pub async fn handle(&self, call: wire::Call) -> wire::Reply {
        self.home.handle(call).await
    }

    fn link(&self, node: &str) -> Option<Arc<proxy::Link>> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = links.get(node) {
            return Some(l.clone());
        }
        let addr = self.members.upgrade()?.address_of(node)?;
        let b = self.broker.upgrade()?;
        let link = proxy::Link::start(
            node.to_owned(),
            addr,
            self.session.clone(),
            self.auth.clone(),
            self.timeout,
            self.broker.clone(),
            b.shutdown_signal(),
        );
        links.insert(node.to_owned(), link.clone());
        Some(link)
    }

    /// A proxy for `queue` in `vhost` as `node` serves it (its home, or the leader of a
    /// quorum queue); None when `node` is not a member.
    pub fn proxy_on(&self, node: &str, vhost: &str, queue: &str) -> Option<Arc<proxy::Proxy>> {
        let link = self.link(node)?;
        Some(Arc::new(proxy::Proxy::new(
            link,
            vhost.to_owned(),
            queue.to_owned(),
        )))
    }

    /// Makes `queue` a proxy when the cluster says another node holds it.
    pub fn attach(&self, queue: &Arc<Queue>) {
        let Home::Remote(node) = self.home_of(&queue.vhost, &queue.name) else {
            return;
        };
        if queue.remote().is_some() {
            return;
        }
        let Some(proxy) = self.proxy_on(&node, &queue.vhost, &queue.name) else {
            tracing::warn!(queue = %queue.name, home = %node, "forward: the queue's home node is not a member; kept local");
            return;
        };
        if queue.set_remote(proxy) {
            tracing::debug!(queue = %queue.name, home = %node, "forward: queue is a proxy");
        }
    }

    /// Attaches every queue whose record names another home (at start, after the node's own
    /// store recovered its queues as local ones).
    pub fn attach_all(&self) {
        let Some(b) = self.broker.upgrade() else {
            return;
        };
        for vh in b.vhosts() {
            for q in vh.queues() {
                self.attach(&q);
            }
        }
    }
}

impl QueueHome for Forward {
    /// From the queue's definition record: its `home` when that is another node. A record
    /// written before homes were recorded has none: the queue stays local on every node,
    /// each holding its own instance as before, so that no node strands the messages it
    /// holds (the rule for such records, see the README).
    fn home_of(&self, vhost: &str, queue: &str) -> Home {
        let Some(consensus) = self.consensus.upgrade() else {
            return Home::Unavailable;
        };
        let key = super::definitions::key("queue", &[vhost, queue]);
        let Some(record) = consensus.get(&key) else {
            let here = self
                .broker
                .upgrade()
                .and_then(|b| b.vhost(vhost))
                .and_then(|vh| vh.queue(queue))
                .is_some();
            return if here { Home::Local } else { Home::Unavailable };
        };
        match record.get("home").and_then(|h| h.as_str()) {
            Some(h) if h != self.me => {
                if self
                    .members
                    .upgrade()
                    .is_some_and(|m| m.address_of(h).is_some())
                {
                    Home::Remote(h.to_owned())
                } else {
                    Home::Unavailable
                }
            }
            _ => Home::Local,
        }
    }
}
