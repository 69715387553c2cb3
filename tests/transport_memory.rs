//! Every byte a client holds is counted (issue 13): unfinished AMQP bodies and unfinished
//! STOMP frames are charged to the memory monitor by the connection driver, unfinished
//! WebSocket messages by the WebSocket transport; they trip the high watermark, and are
//! released when their connections go.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::QUIET;
use common::in_memory::{self, Protocol};
use common::mqtt::{connect_packet, RawMqtt};
use common::raw::{unfinished_publish, RawClient};
use common::stomp::StompClient;
use common::websocket as ws;
use common::{bounded, wait_until, TestBroker};
use futures_util::SinkExt;
use switchboard_mqtt::{Packet, Protocol as Mqtt, QoS};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1 << 20;
const WATERMARK: usize = 4 * MIB;

fn small_watermark() -> in_memory::MemoryBroker {
    in_memory::broker(|c| {
        c.server.memory_high_watermark_bytes = Some(WATERMARK as u64);
        c.stomp.max_body_size = 64 * MIB;
        c.stomp.max_frame_size = 65 * MIB;
        c.stomp.heartbeat_ms = 100;
    })
}

/// Writes `bytes` from a task of its own: once the alarm blocks the connection, the write
/// stalls (as the client's TCP window would fill), and the test goes on without it.
fn write_in_background<S>(mut stream: S, bytes: Vec<u8>) -> tokio::task::JoinHandle<S>
where
    S: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _ = stream.write_all(&bytes).await;
        stream
    })
}

/// The unfinished frames trip the alarm; once their clients go, every byte is released.
async fn alarm_then_release<S>(
    broker: &in_memory::MemoryBroker,
    writers: Vec<tokio::task::JoinHandle<S>>,
) {
    let memory = &broker.memory;
    wait_until("the unfinished frames trip the alarm", || memory.alarm()).await;
    assert!(
        memory.used() >= WATERMARK,
        "{} bytes counted",
        memory.used()
    );
    for w in writers {
        w.abort();
    }
    wait_until("everything released with the connections", || {
        broker.connections().is_empty()
    })
    .await;
    assert_eq!(memory.used(), 0);
    assert!(!memory.alarm());
}

#[tokio::test]
async fn unfinished_amqp_bodies_are_charged_and_trip_the_watermark() {
    let broker = small_watermark();
    let mut writers = Vec::new();
    // Three publishers each announce an 8 MiB body and send 1.5 MiB of it: 4.5 MiB unfinished.
    // A blocked connection is not read, so it notices its peer gone only when a write fails:
    // heartbeats make the broker write.
    for _ in 0..3 {
        let mut c = RawClient::over(in_memory::connect(&broker, Protocol::Amqp))
            .handshake(1)
            .await;
        c.open_channel(1).await;
        let out = unfinished_publish(8 * MIB as u64, 3 * MIB / 2);
        writers.push(write_in_background(c.stream, out.to_vec()));
    }
    alarm_then_release(&broker, writers).await;
}

#[tokio::test]
async fn unfinished_stomp_frames_are_charged_and_trip_the_watermark() {
    let broker = small_watermark();
    let mut writers = Vec::new();
    // Three SENDs of 15 MiB each, 1.5 MiB of each sent.
    for _ in 0..3 {
        let (c, answer) = StompClient::over(in_memory::connect(&broker, Protocol::Stomp))
            .handshake(&[
                ("accept-version", "1.2"),
                ("login", "guest"),
                ("passcode", "guest"),
                // Server beats every 100 ms: how a blocked connection finds its peer gone.
                ("heart-beat", "0,100"),
            ])
            .await;
        assert_eq!(answer.command, switchboard_stomp::Command::Connected);
        let mut frame = format!(
            "SEND\ndestination:/queue/big\ncontent-length:{}\n\n",
            15 * MIB
        )
        .into_bytes();
        frame.resize(frame.len() + 3 * MIB / 2, b'x');
        writers.push(write_in_background(c.stream, frame));
    }
    alarm_then_release(&broker, writers).await;
}

/// A WebSocket that has logged in over MQTT and read its CONNACK.
async fn mqtt_websocket(
    b: &TestBroker,
    client_id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let (mut socket, _) = ws::open(b.addrs().mqtt_ws[0], &["mqtt"]).await;
    let mut hello = bytes::BytesMut::new();
    let connect = Packet::Connect(Box::new(connect_packet(Mqtt::V311, client_id, true)));
    switchboard_mqtt::encode(&connect, Mqtt::V311, &mut hello).unwrap();
    bounded(socket.send(Message::binary(hello.to_vec())))
        .await
        .unwrap();
    match ws::next_message(&mut socket).await {
        // CONNACK, accepted.
        Some(Message::Binary(ack)) => assert_eq!(&ack[..], &[0x20, 2, 0, 0]),
        other => panic!("expected the CONNACK, got {other:?}"),
    }
    socket
}

/// The start of one masked binary WebSocket frame announcing `len` payload bytes, and `sent`
/// of them: a message tungstenite holds until its end arrives.
fn unfinished_ws_frame(len: usize, sent: usize) -> Vec<u8> {
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(len as u64).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.resize(frame.len() + sent, b'x');
    frame
}

#[tokio::test]
async fn unfinished_websocket_messages_are_charged_and_block_publishers() {
    let b = TestBroker::start_with(|c| {
        c.server.memory_high_watermark_bytes = Some(WATERMARK as u64);
        c.mqtt.max_packet_size = 4 * MIB as u32;
    })
    .await;
    let memory = b.broker().memory.clone();
    let mut bystander = RawMqtt::connect(b.mqtt, Mqtt::V311, "bystander", true).await;

    // Three WebSocket clients each send 2 MiB of a 3 MiB message: 6 MiB that the driver's read
    // buffers never see.
    let mut writers = Vec::new();
    for i in 0..3 {
        let socket = mqtt_websocket(&b, &format!("ws-big-{i}")).await;
        let frame = unfinished_ws_frame(3 * MIB, 2 * MIB);
        writers.push(write_in_background(socket.into_inner(), frame));
    }
    wait_until("the unfinished messages trip the alarm", || memory.alarm()).await;
    assert!(
        memory.used() >= WATERMARK,
        "{} bytes counted",
        memory.used()
    );

    // A publisher is blocked: its publish is taken, then it is not read any more.
    bystander
        .publish("ws/bystander", QoS::AtLeastOnce, 1, b"during the alarm")
        .await;
    assert!(matches!(bystander.recv().await, Some(Packet::PubAck(_))));
    bystander.send(&Packet::PingReq).await;
    let quiet = tokio::time::timeout(QUIET, bystander.recv()).await;
    assert!(quiet.is_err(), "publisher read during the alarm: {quiet:?}");

    // The WebSocket clients go: their bytes are released, the alarm clears, the publisher is
    // read again.
    for w in writers {
        w.abort();
    }
    wait_until("only the bystander is left", || {
        b.broker().connections().len() == 1
    })
    .await;
    assert_eq!(memory.used(), 0);
    assert!(!memory.alarm());
    assert_eq!(bystander.recv().await, Some(Packet::PingResp));
    // Nothing crashed: WebSocket clients are still served.
    let _again = mqtt_websocket(&b, "ws-after").await;
    b.stop().await;
}
