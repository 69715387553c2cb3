//! Heart-beats and keep-alives of every protocol through the connection driver, on tokio's
//! paused clock over in-memory connections: exact virtual times, no sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::in_memory::{self, Protocol};
use common::mqtt::{connect_packet, RawMqtt};
use common::raw::RawClient;
use common::stomp::StompClient;
use common::wait_until;
use std::time::Duration;
use switchboard_stomp::{Command, Frame as StompFrame};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn amqp_beats_at_half_the_interval_and_drops_a_peer_silent_for_two() {
    use switchboard_amqp::Frame;
    let broker = in_memory::broker(|_| {});
    let mut c = RawClient::over(in_memory::connect(&broker, Protocol::Amqp))
        .handshake(1)
        .await;
    let opened = Instant::now();
    match c.recv().await {
        Some(Frame::Heartbeat { channel: 0 }) => {}
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    assert_eq!(opened.elapsed(), 500 * MS, "a beat every half interval");
    c.expect_eof().await;
    // Checked every half interval: the first check after two silent intervals.
    assert_eq!(opened.elapsed(), 2500 * MS);
    wait_until("connection unregistered", || {
        broker.connections().is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn amqp_a_peer_that_beats_stays_open() {
    use switchboard_amqp::*;
    let broker = in_memory::broker(|_| {});
    let mut c = RawClient::over(in_memory::connect(&broker, Protocol::Amqp))
        .handshake(1)
        .await;
    // Ten intervals, far past the two a silent peer gets.
    for _ in 0..20 {
        tokio::time::sleep(500 * MS).await;
        let mut beat = bytes::BytesMut::new();
        encode_heartbeat(&mut beat);
        c.send_bytes(&beat).await;
    }
    c.send(1, ChannelOpen {}).await;
    assert!(matches!(
        c.recv_method().await,
        (1, Method::ChannelOpenOk(_))
    ));
    assert_eq!(broker.connections().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn mqtt_keep_alive_is_enforced_at_one_and_a_half_times() {
    use switchboard_mqtt::*;
    let broker = in_memory::broker(|_| {});
    let mut connect = connect_packet(Protocol::V5, "ka", true);
    connect.keep_alive = 1;
    let stream = in_memory::connect(&broker, in_memory::Protocol::Mqtt);
    let (mut c, _) = RawMqtt::over(stream, Protocol::V5).handshake(connect).await;
    let opened = Instant::now();
    match c.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::KEEP_ALIVE_TIMEOUT),
        other => panic!("{other:?}"),
    }
    assert_eq!(opened.elapsed(), 1500 * MS);
}

#[tokio::test(start_paused = true)]
async fn mqtt_a_client_that_pings_stays_and_its_deadline_follows_the_last_packet() {
    use switchboard_mqtt::*;
    let broker = in_memory::broker(|_| {});
    let mut connect = connect_packet(Protocol::V311, "ping", true);
    connect.keep_alive = 1;
    let stream = in_memory::connect(&broker, in_memory::Protocol::Mqtt);
    let (mut c, _) = RawMqtt::over(stream, Protocol::V311)
        .handshake(connect)
        .await;
    for _ in 0..10 {
        tokio::time::sleep(1400 * MS).await;
        c.send(&Packet::PingReq).await;
        assert!(matches!(c.recv().await, Some(Packet::PingResp)));
    }
    let last = Instant::now();
    // v3 has no DISCONNECT to say why: the socket closes 1.5 s after the last PINGREQ.
    assert!(c.closed().await.is_none());
    assert_eq!(last.elapsed(), 1500 * MS);
}

#[tokio::test(start_paused = true)]
async fn stomp_server_beats_and_closes_a_silent_client() {
    let broker = in_memory::broker(|c| c.stomp.heartbeat_ms = 100);
    let (mut c, answer) = StompClient::over(in_memory::connect(&broker, Protocol::Stomp))
        .handshake(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "100,100"),
        ])
        .await;
    assert_eq!(answer.header("heart-beat"), Some("100,100"));
    let opened = Instant::now();
    // We promised a beat every 100 ms and send none: the server beats meanwhile and closes us
    // at its first check (every 50 ms) past two missed intervals.
    let closed = c.recv().await;
    assert!(closed.is_none(), "expected close, got {closed:?}");
    assert_eq!(opened.elapsed(), 250 * MS);
    assert_eq!(c.heartbeats, 2, "beats at 100 and 200 ms");
}

#[tokio::test(start_paused = true)]
async fn stomp_a_client_that_beats_stays_connected() {
    let broker = in_memory::broker(|c| c.stomp.heartbeat_ms = 50);
    let (mut c, _) = StompClient::over(in_memory::connect(&broker, Protocol::Stomp))
        .handshake(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "50,0"),
        ])
        .await;
    for _ in 0..20 {
        tokio::time::sleep(50 * MS).await;
        c.send_bytes(b"\n").await;
    }
    c.request(StompFrame::new(Command::Begin).with("transaction", "alive"))
        .await;
}
