//! Heart-beats and keep-alives of every protocol through the connection driver, on the broker's
//! manual clock over real sockets: each deadline comes when the test moves the clock, never by
//! sleeping. (The exact instants are proven without a socket in `src/net/driver/liveness.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::mqtt::{connect_packet, RawMqtt};
use common::raw::RawClient;
use common::stomp::StompClient;
use common::{wait_until, TestBroker};
use switchboard_stomp::{Command, Frame as StompFrame};

/// Reads the next frame, which must be a heartbeat.
async fn expect_heartbeat(c: &mut RawClient) {
    match c.recv().await {
        Some(switchboard_amqp::Frame::Heartbeat { channel: 0 }) => {}
        other => panic!("expected a heartbeat, got {other:?}"),
    }
}

/// Bytes the broker has read from its only connection.
fn read_by_broker(b: &TestBroker) -> u64 {
    b.broker().connections()[0].stats.octets().0
}

/// Waits until the broker has read `more` bytes past `before`: what the client sent was heard
/// before the clock moves again.
async fn heard(b: &TestBroker, before: u64, more: usize) {
    wait_until("the broker read what was sent", || {
        read_by_broker(b) >= before + more as u64
    })
    .await;
}

#[tokio::test]
async fn amqp_beats_at_half_the_interval_and_drops_a_peer_silent_for_two() {
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut c = RawClient::open(b.amqp, 1).await;
    // A beat for every half interval the clock moves.
    for _ in 0..4 {
        b.advance(&clock, 500);
        expect_heartbeat(&mut c).await;
    }
    // Silent for exactly two intervals: still served (only more than two is a dead peer).
    c.open_channel(1).await;
    for _ in 0..4 {
        b.advance(&clock, 500);
        expect_heartbeat(&mut c).await;
    }
    // Two intervals since channel.open, then the next check: gone.
    b.advance(&clock, 500);
    c.expect_eof().await;
    wait_until("connection unregistered", || {
        b.broker().connections().is_empty()
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn amqp_a_peer_that_beats_stays_open() {
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut c = RawClient::open(b.amqp, 1).await;
    let mut beat = bytes::BytesMut::new();
    switchboard_amqp::encode_heartbeat(&mut beat);
    // Ten intervals, far past the two a silent peer gets.
    for _ in 0..20 {
        b.advance(&clock, 500);
        let before = read_by_broker(&b);
        c.send_bytes(&beat).await;
        heard(&b, before, beat.len()).await;
    }
    c.open_channel(1).await;
    assert_eq!(b.broker().connections().len(), 1);
    b.stop().await;
}

#[tokio::test]
async fn mqtt_keep_alive_is_enforced_at_one_and_a_half_times_after_the_last_packet() {
    use switchboard_mqtt::*;
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut connect = connect_packet(Protocol::V5, "ka", true);
    connect.keep_alive = 1;
    let (mut c, _) = RawMqtt::connect_with(b.mqtt, connect).await;
    // A millisecond before 1.5 keep alives: answered.
    b.advance(&clock, 1499);
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    // 1.5 keep alives after that PINGREQ: disconnected, with the reason.
    b.advance(&clock, 1500);
    match c.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::KEEP_ALIVE_TIMEOUT),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn mqtt_a_client_that_pings_stays_and_its_deadline_follows_the_last_packet() {
    use switchboard_mqtt::*;
    let (b, clock) = TestBroker::start_on_manual_clock().await;
    let mut connect = connect_packet(Protocol::V311, "ping", true);
    connect.keep_alive = 1;
    let (mut c, _) = RawMqtt::connect_with(b.mqtt, connect).await;
    // 14 s in all, each gap under the 1.5 s limit.
    for _ in 0..10 {
        b.advance(&clock, 1400);
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    }
    // v3 has no DISCONNECT to say why: the socket closes 1.5 s after the last PINGREQ.
    b.advance(&clock, 1500);
    assert!(c.closed().await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn stomp_server_beats_and_closes_a_silent_client() {
    let (b, clock) = TestBroker::start_with_on_manual_clock(|c| c.stomp.heartbeat_ms = 100).await;
    let (mut c, answer) = StompClient::connect_with(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "100,100"),
        ],
    )
    .await;
    assert_eq!(answer.header("heart-beat"), Some("100,100"));
    // We promised a beat every 100 ms and send none: the server beats meanwhile...
    b.advance(&clock, 100);
    c.wait_heartbeats(1).await;
    b.advance(&clock, 100);
    c.wait_heartbeats(2).await;
    // ...and closes us at its first check (every 50 ms) past two missed intervals, before
    // its third beat.
    b.advance(&clock, 50);
    let closed = c.recv().await;
    assert!(closed.is_none(), "expected close, got {closed:?}");
    assert_eq!(c.heartbeats, 2, "beats at 100 and 200 ms");
    b.stop().await;
}

#[tokio::test]
async fn stomp_a_client_that_beats_stays_connected() {
    let (b, clock) = TestBroker::start_with_on_manual_clock(|c| c.stomp.heartbeat_ms = 50).await;
    let (mut c, _) = StompClient::connect_with(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "50,0"),
        ],
    )
    .await;
    for _ in 0..20 {
        b.advance(&clock, 50);
        let before = read_by_broker(&b);
        c.send_bytes(b"\n").await;
        heard(&b, before, 1).await;
    }
    c.request(StompFrame::new(Command::Begin).with("transaction", "alive"))
        .await;
    b.stop().await;
}
