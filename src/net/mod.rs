//! Listeners: bind every configured address, accept connections and hand them to adapters, and
//! shut down gracefully.

pub mod accept;
pub mod auth_throttle;
pub mod driver;
pub mod limits;
pub mod tls;
pub mod websocket;

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
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
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

/// The addresses actually bound (port 0 resolved), per protocol and transport.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BoundAddrs {
    pub amqp: Vec<SocketAddr>,
    pub mqtt: Vec<SocketAddr>,
    pub stomp: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub prometheus: Vec<SocketAddr>,
    pub amqp_tls: Vec<SocketAddr>,
    pub mqtt_tls: Vec<SocketAddr>,
    pub stomp_tls: Vec<SocketAddr>,
    pub http_tls: Vec<SocketAddr>,
    pub mqtt_ws: Vec<SocketAddr>,
    pub stomp_ws: Vec<SocketAddr>,
    pub mqtt_wss: Vec<SocketAddr>,
    pub stomp_wss: Vec<SocketAddr>,
}

/// A broker with its listeners running.
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    /// The MQTT adapter's sessions and retained messages, made here and handed to every MQTT
    /// connection.
    pub mqtt: Arc<mqtt::registry::MqttState>,
    pub addrs: BoundAddrs,
    /// The TLS configuration in force, when a TLS listener is configured.
    pub tls: Option<Arc<tls::TlsServer>>,
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
    start_with_clock(config, Arc::new(crate::core::clock::SystemClock)).await
}

/// [`start`] with the core reading time from `clock` (see [`Broker::open_with_clock`]).
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn crate::core::clock::Clock>,
) -> Result<RunningBroker, ServerError> {
    let amqp_ls = bind_all("AMQP", &config.amqp.listen).await?;
    let mqtt_ls = bind_all("MQTT", &config.mqtt.listen).await?;
    let stomp_ls = bind_all("STOMP", &config.stomp.listen).await?;
    let http_ls = bind_all("HTTP", &config.http.listen).await?;
    let prometheus_ls = bind_all("Prometheus", &config.prometheus.listen).await?;
    let amqp_tls_ls = bind_all("AMQP over TLS", &config.amqp.tls_listen).await?;
    let mqtt_tls_ls = bind_all("MQTT over TLS", &config.mqtt.tls_listen).await?;
    let stomp_tls_ls = bind_all("STOMP over TLS", &config.stomp.tls_listen).await?;
    let http_tls_ls = bind_all("HTTPS", &config.http.tls_listen).await?;
    let mqtt_ws_ls = bind_all("MQTT over WebSocket", &config.mqtt.ws_listen).await?;
    let stomp_ws_ls = bind_all("STOMP over WebSocket", &config.stomp.ws_listen).await?;
    let mqtt_wss_ls = bind_all("MQTT over secure WebSocket", &config.mqtt.wss_listen).await?;
    let stomp_wss_ls = bind_all("STOMP over secure WebSocket", &config.stomp.wss_listen).await?;
    let any_tls = [
        &amqp_tls_ls,
        &mqtt_tls_ls,
        &stomp_tls_ls,
        &http_tls_ls,
        &mqtt_wss_ls,
        &stomp_wss_ls,
    ]
    .iter()
    .any(|ls| !ls.is_empty());
    // Certificates are read before anything is served: a broken [tls] stops the start.
    let tls = any_tls
        .then(|| tls::TlsServer::new(&config.tls).map(Arc::new))
        .transpose()?;
    let broker = Broker::open_with_clock(config, clock)?;
    crate::cluster::start_for(&broker).await?;
    let addrs = BoundAddrs {
        amqp: local_addrs(&amqp_ls),
        mqtt: local_addrs(&mqtt_ls),
        stomp: local_addrs(&stomp_ls),
        http: local_addrs(&http_ls),
        prometheus: local_addrs(&prometheus_ls),
        amqp_tls: local_addrs(&amqp_tls_ls),
        mqtt_tls: local_addrs(&mqtt_tls_ls),
        stomp_tls: local_addrs(&stomp_tls_ls),
        http_tls: local_addrs(&http_tls_ls),
        mqtt_ws: local_addrs(&mqtt_ws_ls),
        stomp_ws: local_addrs(&stomp_ws_ls),
        mqtt_wss: local_addrs(&mqtt_wss_ls),
        stomp_wss: local_addrs(&stomp_wss_ls),
    };
    let mqtt_state = Arc::new(mqtt::registry::MqttState::new(
        &broker.config.mqtt,
        broker.memory.clone(),
    ));
    mqtt::persist::restore(&broker, &mqtt_state).await;
    mqtt::replica::register(&broker, &mqtt_state);
    let limits = limits::ConnectionLimits::new(
        broker.config.server.max_connections,
        broker.config.server.max_connections_per_address,
    );
    let mut listeners = vec![
        tokio::spawn(crate::core::stored::compact(broker.clone())),
        tokio::spawn(crate::core::stored::watch_disk(broker.clone())),
        tokio::spawn(broker.timer.clone().run(broker.shutdown_signal())),
        tokio::spawn(crate::core::sampler::run(
            broker.clone(),
            Duration::from_millis(broker.config.http.stats_interval_ms),
        )),
    ];
    if let Some(tls) = &tls {
        listeners.push(reload_on_sighup(tls.clone(), broker.shutdown_signal()));
    }
    let tcp = Transport::default();
    let over_tls = Transport {
        tls: tls.clone(),
        websocket: None,
    };
    let mqtt_ws = websocket::Endpoint::mqtt(broker.config.mqtt.max_packet_size as usize);
    let stomp_ws = websocket::Endpoint::stomp(broker.config.stomp.max_frame_size);
    let ws = |endpoint, tls: Option<Arc<tls::TlsServer>>| Transport {
        tls,
        websocket: Some(endpoint),
    };
    for (protocol, ls, transport) in [
        (Protocol::Amqp, amqp_ls, tcp.clone()),
        (Protocol::Mqtt, mqtt_ls, tcp.clone()),
        (Protocol::Stomp, stomp_ls, tcp),
        (Protocol::Amqp, amqp_tls_ls, over_tls.clone()),
        (Protocol::Mqtt, mqtt_tls_ls, over_tls.clone()),
        (Protocol::Stomp, stomp_tls_ls, over_tls),
        (Protocol::Mqtt, mqtt_ws_ls, ws(mqtt_ws, None)),
        (Protocol::Stomp, stomp_ws_ls, ws(stomp_ws, None)),
        (Protocol::Mqtt, mqtt_wss_ls, ws(mqtt_ws, tls.clone())),
        (Protocol::Stomp, stomp_wss_ls, ws(stomp_ws, tls.clone())),
    ] {
        for l in ls {
            tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), transport = transport.name(), "{protocol:?} listener started");
            let acceptor = accept::Acceptor::new(l, limits.clone(), protocol.name());
            listeners.push(tokio::spawn(accept_loop(
                acceptor,
                broker.clone(),
                mqtt_state.clone(),
                protocol,
                transport.clone(),
            )));
        }
    }
    let http = http_ls.into_iter().map(|l| (l, None));
    let https = http_tls_ls.into_iter().map(|l| (l, tls.clone()));
    for (l, tls) in http.chain(https) {
        let transport = if tls.is_some() { "TLS" } else { "TCP" };
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), transport, "HTTP API listener started");
        let acceptor = accept::Acceptor::new(l, limits.clone(), "HTTP");
        listeners.push(tokio::spawn(admin::serve(
            acceptor,
            broker.clone(),
            admin::Listeners::from_bound(&addrs),
            mqtt_state.clone(),
            tls,
        )));
    }
    for l in prometheus_ls {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "Prometheus listener started");
        let acceptor = accept::Acceptor::new(l, limits.clone(), "Prometheus");
        listeners.push(tokio::spawn(admin::metrics::serve(
            acceptor,
            broker.clone(),
            mqtt_state.clone(),
        )));
    }
    Ok(RunningBroker {
        broker,
        mqtt: mqtt_state,
        addrs,
        tls,
        listeners,
    })
}

/// Reads the TLS files again on every SIGHUP. The handler is installed before this returns, so
/// a SIGHUP right after start is not the default (fatal) one.
fn reload_on_sighup(
    tls: Arc<tls::TlsServer>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: TLS certificates reload only on restart");
            None
        }
    };
    tokio::spawn(async move {
        let Some(hangups) = hangups.as_mut() else {
            return;
        };
        loop {
            tokio::select! {
                got = hangups.recv() => if got.is_none() { return },
                _ = shutdown.changed() => return,
            }
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "TLS reload failed; the old certificates stay")
                }
            }
        }
    })
}

/// What a listener's connections run on under the driver: TCP, TLS, and/or WebSocket.
#[derive(Debug, Clone, Default)]
struct Transport {
    tls: Option<Arc<tls::TlsServer>>,
    websocket: Option<websocket::Endpoint>,
}

impl Transport {
    fn name(&self) -> &'static str {
        match (self.tls.is_some(), self.websocket.is_some()) {
            (false, false) => "TCP",
            (true, false) => "TLS",
            (false, true) => "WebSocket",
            (true, true) => "WebSocket over TLS",
        }
    }
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

    /// Serves one connection over any transport; `cert_name`: the common name of the client's
    /// verified TLS certificate, for certificate login.
    async fn serve<R, W>(
        self,
        rd: R,
        wr: W,
        peer: SocketAddr,
        cert_name: Option<String>,
        broker: Arc<Broker>,
        mqtt_state: Arc<mqtt::registry::MqttState>,
    ) where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Protocol::Amqp => amqp::serve_stream(rd, wr, peer, cert_name, broker).await,
            Protocol::Mqtt => mqtt::serve_stream(rd, wr, peer, cert_name, broker, mqtt_state).await,
            Protocol::Stomp => stomp::serve_stream(rd, wr, peer, cert_name, broker).await,
        }
    }

    /// Serves one connection over a stream (a TLS stream, say), through a WebSocket upgrade
    /// first when `websocket` is set.
    async fn serve_over<S>(
        self,
        stream: S,
        websocket: Option<websocket::Endpoint>,
        peer: SocketAddr,
        cert_name: Option<String>,
        broker: Arc<Broker>,
        mqtt_state: Arc<mqtt::registry::MqttState>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match websocket {
            None => {
                let (rd, wr) = tokio::io::split(stream);
                self.serve(rd, wr, peer, cert_name, broker, mqtt_state)
                    .await;
            }
            Some(endpoint) => {
                if let Some(ws) = endpoint.accept(stream, peer, &broker.memory).await {
                    let reason = ws.reason();
                    let (rd, wr) = tokio::io::split(ws);
                    let serve = self.serve(rd, wr, peer, cert_name, broker, mqtt_state);
                    websocket::serve_with_reason(reason, serve).await;
                }
            }
        }
    }
}

async fn accept_loop(
    mut acceptor: accept::Acceptor,
    broker: Arc<Broker>,
    mqtt_state: Arc<mqtt::registry::MqttState>,
    protocol: Protocol,
    transport: Transport,
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
        let Transport { tls, websocket } = transport.clone();
        tokio::spawn(async move {
            // Counted against the limits until the connection ends.
            let _admitted = admitted;
            match (tls, websocket) {
                // Plain TCP: the socket's own halves, no lock between reader and writer.
                (None, None) => {
                    let (rd, wr) = socket.into_split();
                    protocol.serve(rd, wr, peer, None, broker, mqtt_state).await;
                }
                (None, Some(_)) => {
                    protocol
                        .serve_over(socket, websocket, peer, None, broker, mqtt_state)
                        .await;
                }
                (Some(tls), websocket) => {
                    if let Some(stream) = tls.accept(socket, peer).await {
                        let cert_name = tls::peer_common_name(&stream);
                        protocol
                            .serve_over(stream, websocket, peer, cert_name, broker, mqtt_state)
                            .await;
                    }
                }
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
