//! Listeners: bind every configured address, accept connections and hand them to adapters, and
//! shut down gracefully.

pub mod accept;
pub mod auth_throttle;
pub mod limits;

use crate::adapter::{amqp, mqtt, stomp};
use crate::admin;
use crate::config::Config;
use crate::core::Broker;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr} for {protocol}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write ports file {path}: {source}")]
    PortsFile {
        path: String,
        source: std::io::Error,
    },
}

/// The addresses actually bound (port 0 resolved), per protocol.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BoundAddrs {
    pub amqp: Vec<SocketAddr>,
    pub mqtt: Vec<SocketAddr>,
    pub stomp: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
}

/// A broker with its listeners running.
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    /// The MQTT adapter's sessions and retained messages, made here and handed to every MQTT
    /// connection.
    pub mqtt: Arc<mqtt::registry::MqttState>,
    pub addrs: BoundAddrs,
    listeners: Vec<JoinHandle<()>>,
}

async fn bind_all(
    protocol: &'static str,
    addrs: &[SocketAddr],
) -> Result<Vec<TcpListener>, ServerError> {
    let mut out = Vec::new();
    for &addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                protocol,
                addr,
                source,
            })?;
        out.push(l);
    }
    Ok(out)
}

fn local_addrs(ls: &[TcpListener]) -> Vec<SocketAddr> {
    ls.iter().filter_map(|l| l.local_addr().ok()).collect()
}

/// Binds the configured listeners and starts serving.
pub async fn start(config: Config) -> Result<RunningBroker, ServerError> {
    let amqp_ls = bind_all("AMQP", &config.amqp.listen).await?;
    let mqtt_ls = bind_all("MQTT", &config.mqtt.listen).await?;
    let stomp_ls = bind_all("STOMP", &config.stomp.listen).await?;
    let http_ls = bind_all("HTTP", &config.http.listen).await?;
    let broker = Broker::open(config)?;
    let addrs = BoundAddrs {
        amqp: local_addrs(&amqp_ls),
        mqtt: local_addrs(&mqtt_ls),
        stomp: local_addrs(&stomp_ls),
        http: local_addrs(&http_ls),
    };
    let mqtt_state = Arc::new(mqtt::registry::MqttState::default());
    mqtt::persist::restore(&broker, &mqtt_state).await;
    let limits = limits::ConnectionLimits::new(
        broker.config.server.max_connections,
        broker.config.server.max_connections_per_address,
    );
    let mut listeners = vec![
        tokio::spawn(crate::core::stored::compact(broker.clone())),
        tokio::spawn(crate::core::stored::watch_disk(broker.clone())),
        tokio::spawn(broker.timer.clone().run(broker.shutdown_signal())),
    ];
    for (protocol, ls) in [
        (Protocol::Amqp, amqp_ls),
        (Protocol::Mqtt, mqtt_ls),
        (Protocol::Stomp, stomp_ls),
    ] {
        for l in ls {
            tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "{protocol:?} listener started");
            let acceptor = accept::Acceptor::new(l, limits.clone(), protocol.name());
            listeners.push(tokio::spawn(accept_loop(
                acceptor,
                broker.clone(),
                mqtt_state.clone(),
                protocol,
            )));
        }
    }
    for l in http_ls {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP API listener started");
        let acceptor = accept::Acceptor::new(l, limits.clone(), "HTTP");
        listeners.push(tokio::spawn(admin::serve(acceptor, broker.clone())));
    }
    Ok(RunningBroker {
        broker,
        mqtt: mqtt_state,
        addrs,
        listeners,
    })
}

/// Which adapter a listener hands its connections to.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Amqp,
    Mqtt,
    Stomp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Amqp => "AMQP",
            Protocol::Mqtt => "MQTT",
            Protocol::Stomp => "STOMP",
        }
    }
}

async fn accept_loop(
    mut acceptor: accept::Acceptor,
    broker: Arc<Broker>,
    mqtt_state: Arc<mqtt::registry::MqttState>,
    protocol: Protocol,
) {
    let mut shutdown = broker.shutdown_signal();
    loop {
        let (socket, peer, admitted) = tokio::select! {
            next = acceptor.next() => next,
            _ = shutdown.changed() => return,
        };
        let broker = broker.clone();
        let mqtt_state = mqtt_state.clone();
        let _ = socket.set_nodelay(true);
        let (rd, wr) = socket.into_split();
        tokio::spawn(async move {
            // Counted against the limits until the connection ends.
            let _admitted = admitted;
            match protocol {
                Protocol::Amqp => amqp::serve_stream(rd, wr, peer, broker).await,
                Protocol::Mqtt => mqtt::serve_stream(rd, wr, peer, broker, mqtt_state).await,
                Protocol::Stomp => stomp::serve_stream(rd, wr, peer, broker).await,
            }
        });
    }
}

impl RunningBroker {
    /// Writes the bound addresses as JSON to `path`, atomically (temp file + rename), so that
    /// tests and tools can find OS-chosen ports.
    pub fn write_ports_file(&self, path: &Path) -> Result<(), ServerError> {
        let err = |source| ServerError::PortsFile {
            path: path.display().to_string(),
            source,
        };
        let json = serde_json::to_vec(&self.addrs).map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Stops accepting, asks every connection to close (AMQP: 320 CONNECTION_FORCED) and waits
    /// for them up to the configured grace period.
    pub async fn shutdown(self) {
        self.broker.begin_shutdown();
        let grace = Duration::from_secs(self.broker.config.server.shutdown_grace_seconds);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.broker.connections().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for l in self.listeners {
            l.abort();
        }
        if let Some(store) = &self.broker.store {
            // Whatever was appended is written before the process goes.
            let log = store.log.clone();
            let last = log.last_lsn();
            let _ = tokio::time::timeout(Duration::from_secs(5), log.wait_synced(last)).await;
            log.stop();
        }
    }
}
