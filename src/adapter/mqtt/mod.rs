//! The MQTT adapter (being built): until it lands, a connection to the MQTT listener is closed at once.

use crate::core::Broker;
use std::sync::Arc;
use tokio::net::TcpStream;

pub async fn serve(socket: TcpStream, _broker: Arc<Broker>) {
    tracing::warn!(peer = ?socket.peer_addr().ok(), "MQTT is not built yet; closing the connection");
}
