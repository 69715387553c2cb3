//! A broker without listeners, served over in-memory streams (`tokio::io::duplex`): nothing
//! waits for the kernel.

use std::net::SocketAddr;
use std::sync::Arc;
use switchboard::adapter::mqtt::registry::MqttState;
use switchboard::core::Broker;
use switchboard::Config;
use tokio::io::DuplexStream;

/// Bytes in flight each way of an in-memory connection.
const PIPE: usize = 64 * 1024;

/// A broker without listeners and the MQTT adapter's state its connections share.
pub struct MemoryBroker {
    pub broker: Arc<Broker>,
    pub mqtt: Arc<MqttState>,
}

impl std::ops::Deref for MemoryBroker {
    type Target = Arc<Broker>;
    fn deref(&self) -> &Arc<Broker> {
        &self.broker
    }
}

/// A broker on the test config (tweaked), keeping everything in memory, with its timer running
/// (connections' heart-beats and keep-alives are armed on it).
pub fn broker(tweak: impl FnOnce(&mut Config)) -> MemoryBroker {
    let mut config = Config::parse(&super::test_config_text()).expect("test config");
    tweak(&mut config);
    let broker = Broker::new(config);
    tokio::spawn(broker.timer.clone().run(broker.shutdown_signal()));
    let mqtt = Arc::new(MqttState::new(&broker.config.mqtt, broker.memory.clone()));
    MemoryBroker { broker, mqtt }
}

/// Loopback, where the guest user may log in from.
fn peer() -> SocketAddr {
    ([127, 0, 0, 1], 40000).into()
}

pub enum Protocol {
    Amqp,
    Mqtt,
    Stomp,
}

/// The client end of a new connection that `broker` serves with `protocol`'s adapter.
pub fn connect(served: &MemoryBroker, protocol: Protocol) -> DuplexStream {
    let (client, server) = tokio::io::duplex(PIPE);
    let (rd, wr) = tokio::io::split(server);
    let broker = served.broker.clone();
    let mqtt = served.mqtt.clone();
    tokio::spawn(async move {
        match protocol {
            Protocol::Amqp => {
                switchboard::adapter::amqp::serve_stream(rd, wr, peer(), None, broker).await
            }
            Protocol::Mqtt => {
                switchboard::adapter::mqtt::serve_stream(rd, wr, peer(), None, broker, mqtt).await
            }
            Protocol::Stomp => {
                switchboard::adapter::stomp::serve_stream(rd, wr, peer(), None, broker).await
            }
        }
    });
    client
}
