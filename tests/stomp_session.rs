//! STOMP sessions: CONNECT/STOMP, version negotiation, login, vhost choice, heart-beats both
//! ways, receipts, DISCONNECT, and ERROR-then-close for protocol errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::stomp::{text, StompClient};
use common::{wait_until, TestBroker};
use switchboard_stomp::{Command, Frame};

#[tokio::test]
async fn connect_negotiates_the_highest_common_version() {
    let tb = TestBroker::start().await;
    for (accept, want) in [
        (Some("1.0,1.1,1.2"), "1.2"),
        (Some("1.1"), "1.1"),
        (Some("1.0,1.1,2.0"), "1.1"),
        (None, "1.0"),
    ] {
        let mut headers = vec![("login", "guest"), ("passcode", "guest")];
        if let Some(a) = accept {
            headers.push(("accept-version", a));
        }
        let (_c, answer) = StompClient::connect_with(tb.stomp, &headers).await;
        assert_eq!(answer.command, Command::Connected);
        assert_eq!(answer.header("version"), Some(want));
        assert!(answer.header("server").unwrap().starts_with("Switchboard/"));
        assert!(answer.header("session").unwrap().starts_with("session-"));
        assert!(answer.header("heart-beat").is_some());
    }
}

#[tokio::test]
async fn the_stomp_command_connects_too() {
    let tb = TestBroker::start().await;
    let mut c = StompClient::tcp(tb.stomp).await;
    c.send_bytes(b"STOMP\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        .await;
    c.expect(Command::Connected).await;
}

#[tokio::test]
async fn no_common_version_is_an_error_listing_ours() {
    let tb = TestBroker::start().await;
    let (mut c, answer) = StompClient::connect_with(
        tb.stomp,
        &[
            ("accept-version", "2.0,3.1"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
    )
    .await;
    assert_eq!(answer.command, Command::Error);
    assert_eq!(answer.header("version"), Some("1.0,1.1,1.2"));
    assert!(text(&answer).contains("1.0,1.1,1.2"));
    c.expect_closed().await;
}

#[tokio::test]
async fn login_is_checked_and_the_default_login_is_loopback_only() {
    let tb = TestBroker::start().await;
    let (mut c, answer) = StompClient::connect_with(
        tb.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "wrong"),
        ],
    )
    .await;
    assert_eq!(answer.command, Command::Error);
    assert!(answer.header("message").unwrap().contains("Access refused"));
    assert!(text(&answer).contains("invalid credentials"));
    c.expect_closed().await;
    let (_c, answer) = StompClient::connect_with(
        tb.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "alice"),
            ("passcode", "secret"),
        ],
    )
    .await;
    assert_eq!(answer.command, Command::Connected);

    // The test config leaves the default login out, so it is guest/guest (as in the embedded
    // default), from loopback.
    let (_c, answer) = StompClient::connect_with(tb.stomp, &[("accept-version", "1.2")]).await;
    assert_eq!(
        answer.command,
        Command::Connected,
        "default login from loopback"
    );

    // Turned off: refused.
    let tb = TestBroker::start_with(|c| c.stomp.default_login = None).await;
    let (_c, answer) = StompClient::connect_with(tb.stomp, &[("accept-version", "1.2")]).await;
    assert_eq!(answer.command, Command::Error);
}

#[tokio::test]
async fn host_names_a_vhost_or_falls_back_to_the_default() {
    let tb = TestBroker::start().await;
    let conns = || tb.broker().connections();
    for (host, vhost) in [("other", "other"), ("stomp.example.com", "/"), ("/", "/")] {
        let (c, answer) = StompClient::connect_with(
            tb.stomp,
            &[
                ("accept-version", "1.2"),
                ("host", host),
                ("login", "guest"),
                ("passcode", "guest"),
            ],
        )
        .await;
        assert_eq!(answer.command, Command::Connected);
        let stomp_conns: Vec<_> = conns()
            .into_iter()
            .filter(|e| e.protocol == "stomp")
            .collect();
        assert_eq!(stomp_conns.len(), 1);
        let session = stomp_conns[0].session.lock().unwrap().clone();
        assert_eq!(session, Some(("guest".to_owned(), vhost.to_owned())));
        c.disconnect().await;
        wait_until("connection unregistered", || conns().is_empty()).await;
    }
}

#[tokio::test]
async fn receipts_and_disconnect() {
    let tb = TestBroker::start().await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.request(Frame::new(Command::Begin).with("transaction", "t"))
        .await;
    c.request(Frame::new(Command::Abort).with("transaction", "t"))
        .await;
    c.subscribe("s", "/queue/receipts", "auto").await;
    c.request(Frame::new(Command::Unsubscribe).with("id", "s"))
        .await;
    c.disconnect().await;
}

#[tokio::test]
async fn server_beats_at_the_interval_the_client_asks_for() {
    // The default offer is 10 s; a client asking for beats every 300 ms gets them that often
    // (as from RabbitMQ), and is asked to send at the server's own interval.
    let tb = TestBroker::start().await;
    let (mut c, answer) = StompClient::connect_with(
        tb.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "0,300"),
        ],
    )
    .await;
    assert_eq!(answer.header("heart-beat"), Some("300,10000"));
    let started = std::time::Instant::now();
    c.wait_heartbeats(3).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "three beats took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_beats_no_faster_than_the_floor() {
    let tb = TestBroker::start_with(|c| c.stomp.heartbeat_min_ms = 250).await;
    let (_c, answer) = StompClient::connect_with(
        tb.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "0,10"),
        ],
    )
    .await;
    assert_eq!(answer.header("heart-beat"), Some("250,10000"));
}

#[tokio::test]
async fn protocol_errors_get_an_error_frame_then_close() {
    let tb = TestBroker::start().await;
    let cases: Vec<(Frame, &str)> = vec![
        (Frame::new(Command::Send), "destination"),
        (
            Frame::new(Command::Send).with("destination", "/nowhere/x"),
            "destination",
        ),
        (
            Frame::new(Command::Subscribe)
                .with("destination", "/queue/x")
                .with("ack", "sometimes"),
            "ack",
        ),
        (
            Frame::new(Command::Commit).with("transaction", "never-begun"),
            "transaction",
        ),
        (
            Frame::new(Command::Unsubscribe).with("id", "nope"),
            "Subscription",
        ),
        (Frame::new(Command::Connect), "Already connected"),
        (Frame::new(Command::Message), "server frame"),
        (
            Frame::new(Command::Subscribe).with("destination", "/amq/queue/does-not-exist"),
            "NOT_FOUND",
        ),
        (
            Frame::new(Command::Send).with("destination", "/exchange/missing/k"),
            "NOT_FOUND",
        ),
    ];
    for (frame, expect) in cases {
        let mut c = StompClient::connect(tb.stomp, "1.2").await;
        let frame = frame.with("receipt", "77");
        let err = c.expect_error(frame.clone()).await;
        let all = format!("{} {}", err.header("message").unwrap_or(""), text(&err));
        assert!(all.contains(expect), "{frame:?}: {all}");
        assert_eq!(err.header("receipt-id"), Some("77"));
    }
}

#[tokio::test]
async fn first_frame_must_be_connect() {
    let tb = TestBroker::start().await;
    let mut c = StompClient::tcp(tb.stomp).await;
    let err = c
        .expect_error(Frame::new(Command::Send).with("destination", "/queue/a"))
        .await;
    assert!(err.header("message").unwrap().contains("CONNECT"));
}

#[tokio::test]
async fn shutdown_sends_an_error_then_closes() {
    let tb = TestBroker::start().await;
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.request(Frame::new(Command::Begin).with("transaction", "t"))
        .await;
    tb.stop().await;
    let err = c.expect(Command::Error).await;
    assert_eq!(err.header("message"), Some("Server shutdown"));
    c.expect_closed().await;
}

#[tokio::test]
async fn unsubscribing_after_the_queue_was_deleted_is_fine() {
    let tb = TestBroker::start().await;
    let q = common::unique("deleted");
    let mut c = StompClient::connect(tb.stomp, "1.2").await;
    c.subscribe("s", &format!("/queue/{q}"), "auto").await;
    let vh = tb.broker().vhost("/").unwrap();
    vh.delete_queue(&q, false, false, 0).unwrap();
    // Told, as RabbitMQ tells it, and the connection stays open.
    let error = c.expect(Command::Error).await;
    assert_eq!(
        error.header("message"),
        Some("Server cancelled subscription")
    );
    assert_eq!(error.header("subscription"), Some("s"));
    c.request(Frame::new(Command::Unsubscribe).with("id", "s"))
        .await;
    c.disconnect().await;
}

#[tokio::test]
async fn absurd_heart_beat_values_do_not_hurt() {
    let tb = TestBroker::start().await;
    for hb in ["18446744073709551615,18446744073709551615", "1,1", "0,0"] {
        let (mut c, answer) = StompClient::connect_with(
            tb.stomp,
            &[
                ("accept-version", "1.2"),
                ("login", "guest"),
                ("passcode", "guest"),
                ("heart-beat", hb),
            ],
        )
        .await;
        assert_eq!(answer.command, Command::Connected, "{hb}");
        c.request(Frame::new(Command::Begin).with("transaction", "t"))
            .await;
    }
    let (mut c, answer) = StompClient::connect_with(
        tb.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "a,b"),
        ],
    )
    .await;
    assert_eq!(answer.command, Command::Error);
    c.expect_closed().await;
}
