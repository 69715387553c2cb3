//! Listener deadlines and limits: the HTTP API closes idle and half-sent connections, every
//! listener caps connections in all and per source address, and repeated authentication
//! failures from one address are answered ever more slowly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::stomp::StompClient;
use common::*;
use std::time::{Duration, Instant};
use switchboard_stomp::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes; what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    bounded(s.read_to_end(&mut out)).await.ok();
    out
}

/// Whether the server closed `s` without sending anything, within a short wait.
async fn closed_at_once(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn the_http_api_closes_idle_and_half_sent_connections() {
    let b = TestBroker::start_with(|c| c.http.idle_timeout_ms = 300).await;
    // Nothing sent at all.
    let t = Instant::now();
    let mut idle = bounded(TcpStream::connect(b.http)).await.unwrap();
    assert!(read_to_close(&mut idle).await.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // Half a request head.
    let t = Instant::now();
    let mut half = bounded(TcpStream::connect(b.http)).await.unwrap();
    half.write_all(b"GET /api/overview HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut half).await;
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    b.stop().await;
}

/// Reads one HTTP response (head and a `Content-Length` body) off `s`; its status line.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
        let n = bounded(s.read(&mut chunk)).await.expect("read");
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn the_http_api_closes_a_kept_alive_connection_idle_between_requests() {
    let b = TestBroker::start_with(|c| c.http.idle_timeout_ms = 300).await;
    let mut s = bounded(TcpStream::connect(b.http)).await.unwrap();
    let request = b"GET /api/overview HTTP/1.1\r\nHost: x\r\n\
        Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: keep-alive\r\n\r\n";
    // Two requests on the connection, each sent before the timeout: it is kept alive.
    for _ in 0..2 {
        s.write_all(request).await.unwrap();
        let status = read_response(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    // Then nothing more: closed once the wait after the last response passes the timeout.
    let t = Instant::now();
    assert!(read_to_close(&mut s).await.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    b.stop().await;
}

#[tokio::test]
async fn connections_are_capped_per_address_and_in_all_on_every_listener() {
    // The per-address count spans listeners: a fresh broker for each.
    for listener in 0..6 {
        let b = TestBroker::start_with(|c| {
            c.server.max_connections_per_address = 3;
        })
        .await;
        let (mqtt_ws, stomp_ws) = (b.addrs().mqtt_ws[0], b.addrs().stomp_ws[0]);
        let addr = [b.amqp, b.mqtt, b.stomp, b.http, mqtt_ws, stomp_ws][listener];
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(bounded(TcpStream::connect(addr)).await.unwrap());
        }
        // The limiter counts a connection once its task is running: wait for that, then the
        // fourth is closed as it is accepted.
        let mut extra = bounded(TcpStream::connect(addr)).await.unwrap();
        assert!(
            closed_at_once(&mut extra).await,
            "fourth connection to {addr} closed"
        );
        drop(held.pop());
        // A slot is free again once the broker has seen the close.
        let deadline = Instant::now() + WAIT;
        loop {
            let mut again = bounded(TcpStream::connect(addr)).await.unwrap();
            let mut byte = [0u8; 1];
            let open = tokio::time::timeout(Duration::from_millis(100), again.read(&mut byte))
                .await
                .is_err();
            if open {
                break;
            }
            assert!(Instant::now() < deadline, "no slot freed on {addr}");
        }
        b.stop().await;
    }

    let b = TestBroker::start_with(|c| c.server.max_connections = 2).await;
    let _one = bounded(TcpStream::connect(b.amqp)).await.unwrap();
    let _two = bounded(TcpStream::connect(b.mqtt)).await.unwrap();
    let mut three = bounded(TcpStream::connect(b.stomp)).await.unwrap();
    assert!(closed_at_once(&mut three).await, "over the total cap");
    b.stop().await;
}

#[tokio::test]
async fn repeated_authentication_failures_from_one_address_slow_down() {
    let b = TestBroker::start().await;
    let mut took = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        let (_c, answer) = StompClient::connect_with(
            b.stomp,
            &[
                ("accept-version", "1.2"),
                ("login", "guest"),
                ("passcode", "wrong"),
            ],
        )
        .await;
        assert_eq!(answer.command, Command::Error);
        took.push(t.elapsed());
    }
    // Three free, then 100 ms, 200 ms, 400 ms.
    assert!(
        took[..3].iter().all(|t| *t < Duration::from_millis(100)),
        "{took:?}"
    );
    assert!(took[5] >= Duration::from_millis(350), "{took:?}");
    // The slowdown is per address and per failure: other clients are not held up meanwhile, and
    // a good login goes through at once (and clears the count).
    let t = Instant::now();
    StompClient::connect(b.stomp, "1.2").await;
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let (_c, answer) = StompClient::connect_with(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "wrong"),
        ],
    )
    .await;
    assert_eq!(answer.command, Command::Error);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    b.stop().await;
}
