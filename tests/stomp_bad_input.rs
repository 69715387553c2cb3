//! Bad STOMP input and hostile peers: malformed frames, a 10 MB header line, a body without a
//! terminator, oversized declared bodies, abrupt disconnects and connection floods get an ERROR
//! or a close, and the broker keeps serving everyone else. Also the memory alarm: a publishing
//! connection is not read while it is on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::stomp::{text, StompClient};
use common::{bounded, unique, wait_until, TestBroker};
use std::net::SocketAddr;
use std::time::Duration;
use switchboard_stomp::{Command, Frame};
use tokio::io::AsyncWriteExt;

const QUIET: Duration = Duration::from_millis(300);

/// A well-behaved client still gets a message through.
async fn still_serving(addr: SocketAddr) {
    let q = unique("/queue/alive");
    let mut c = StompClient::connect(addr, "1.2").await;
    c.subscribe("s", &q, "auto").await;
    c.send(&q, b"still here", &[]).await;
    assert_eq!(text(&c.message().await), "still here");
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_a_close() {
    let tb = TestBroker::start().await;
    let cases: [(&[u8], &str); 6] = [
        (b"BOGUS\n\n\0", "unknown command"),
        (b"SEND\ndestination\n\n\0", "without a colon"),
        (
            b"SEND\ndestination:/queue/a\nk:bad\\tescape\n\n\0",
            "escape",
        ),
        (
            b"SEND\ndestination:/queue/a\ncontent-length:abc\n\n\0",
            "content-length",
        ),
        (
            b"SEND\ndestination:/queue/a\ncontent-length:2\n\nabc\0",
            "NUL",
        ),
        (b"SEND\ndestination:/queue/a\nk:\xff\xfe\n\n\0", "UTF-8"),
    ];
    for (bytes, expect) in cases {
        let mut c = StompClient::connect(tb.stomp, "1.2").await;
        c.send_bytes(bytes).await;
        let err = c.expect(Command::Error).await;
        assert!(
            text(&err).contains(expect),
            "{:?}: {}",
            String::from_utf8_lossy(bytes),
            text(&err)
        );
        c.expect_closed().await;
    }
    still_serving(tb.stomp).await;
}

#[tokio::test]
async fn a_10_mb_header_line_is_refused_before_it_is_all_read() {
    let tb = TestBroker::start().await;
    let c = StompClient::connect(tb.stomp, "1.2").await;
    let (mut rd, mut wr) = c.stream.into_split();
    // Keep writing the line in a task: the server must answer long before 10 MB are sent.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(b"SEND\ndestination:/queue/a\nhuge:").await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 10 * 1024 * 1024 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut buf = bytes::BytesMut::new();
    let err = loop {
        if let Some(f) = switchboard_stomp::decode(
            &mut buf,
            switchboard_stomp::Version::V1_2,
            &Default::default(),
        )
        .unwrap()
        {
            break f;
        }
        let n = bounded(tokio::io::AsyncReadExt::read_buf(&mut rd, &mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed without an ERROR");
    };
    assert_eq!(err.command, Command::Error);
    assert!(
        text(&err).contains("header line longer than"),
        "{}",
        text(&err)
    );
    let sent = bounded(writer).await.unwrap();
    assert!(
        sent < 10 * 1024 * 1024,
        "the server read all {sent} bytes before refusing"
    );
    still_serving(tb.stomp).await;
}

#[tokio::test]
async fn a_body_without_terminator_is_refused_at_the_body_limit() {
    let tb = TestBroker::start_with(|c| c.stomp.max_body_size = 64 * 1024).await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.send_bytes(b"SEND\ndestination:/queue/a\n\n").await;
    let chunk = vec![b'y'; 16 * 1024];
    let mut err = None;
    for _ in 0..8 {
        if c.stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    if let Some(f) = c.recv().await {
        err = Some(f);
    }
    let err = err.expect("an ERROR frame");
    assert_eq!(err.command, Command::Error);
    assert!(
        text(&err).contains("body larger than 65536"),
        "{}",
        text(&err)
    );
    c.expect_closed().await;
    still_serving(tb.stomp).await;
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_arrives() {
    let tb = TestBroker::start_with(|c| c.stomp.max_body_size = 1024).await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.send_bytes(b"SEND\ndestination:/queue/a\ncontent-length:1000000\n\n")
        .await;
    let err = c.expect(Command::Error).await;
    assert!(text(&err).contains("body larger than 1024"));
    c.expect_closed().await;
}

#[tokio::test]
async fn too_many_headers_are_refused() {
    let tb = TestBroker::start_with(|c| c.stomp.max_headers = 8).await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    let mut f = Frame::new(Command::Send).with("destination", "/queue/a");
    for i in 0..9 {
        f = f.with(format!("h{i}"), "v");
    }
    let err = c.expect_error(f).await;
    assert!(text(&err).contains("more than 8 headers"));
}

#[tokio::test]
async fn abrupt_disconnects_requeue_and_leave_others_served() {
    let tb = TestBroker::start().await;
    let q = unique("/queue/abrupt");
    let mut p = StompClient::connect(tb.stomp, "1.2").await;
    p.send(&q, b"m", &[]).await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe("s", &q, "client").await;
    c.message().await;
    // Half a frame, then gone.
    c.send_bytes(b"SEND\ndestination:/queue/x\ncontent-len")
        .await;
    drop(c);
    let mut d = StompClient::connect(tb.stomp, "1.2").await;
    d.subscribe("s", &q, "client").await;
    let m = d.message().await;
    assert_eq!(m.header("redelivered"), Some("true"));
    // Closing before CONNECT completes, and mid-CONNECT, is harmless too.
    drop(StompClient::tcp(tb.stomp).await);
    let mut half = StompClient::tcp(tb.stomp).await;
    half.send_bytes(b"CONNECT\naccept-vers").await;
    drop(half);
    still_serving(tb.stomp).await;
    wait_until("only live connections remain", || {
        tb.broker().connections().len() == 2
    })
    .await;
}

#[tokio::test]
async fn a_connection_flood_does_not_stop_service() {
    let tb = TestBroker::start().await;
    let mut flood = Vec::new();
    for i in 0..100 {
        let mut c = StompClient::tcp(tb.stomp).await;
        match i % 3 {
            0 => c.send_bytes(b"garbage\n\n\0").await,
            1 => {
                c.send_bytes(b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:nope\n\n\0")
                    .await
            }
            _ => {} // silent: closed after the handshake timeout
        }
        flood.push((i, c));
    }
    still_serving(tb.stomp).await;
    for (i, c) in flood.iter_mut() {
        if *i % 3 != 2 {
            let err = c.expect(Command::Error).await;
            assert!(err.header("message").is_some());
            c.expect_closed().await;
        }
    }
}

#[tokio::test]
async fn a_publisher_is_not_read_during_a_memory_alarm() {
    let tb = TestBroker::start_with(|c| c.server.memory_high_watermark_bytes = Some(20_000)).await;
    let q = unique("/queue/alarm");
    let mut p = StompClient::connect(tb.stomp, "1.2").await;
    let body = vec![b'z'; 1000];
    let memory = tb.broker().memory.clone();
    let mut sent = 0;
    while !memory.alarm() {
        p.send(&q, &body, &[]).await;
        sent += 1;
        assert!(sent < 100, "alarm never went off");
    }
    // Blocked: this SEND is not read, so no RECEIPT.
    p.send_frame(
        &Frame::new(Command::Send)
            .with("destination", q.as_str())
            .with("receipt", "blocked")
            .with_body(body.clone()),
    )
    .await;
    p.expect_nothing(QUIET).await;
    // A consumer drains the queue; the alarm clears and the publisher is read again.
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe("s", &q, "auto").await;
    for _ in 0..sent {
        c.message().await;
    }
    let r = p.expect(Command::Receipt).await;
    assert_eq!(r.header("receipt-id"), Some("blocked"));
    assert!(!memory.alarm());
}
