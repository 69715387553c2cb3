//! Raw-socket abuse: bytes no client library would send, built with the `switchboard_amqp`
//! codec. Each case checks the broker's answer (RabbitMQ's reply codes) and that the broker
//! survives for well-behaved clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use bytes::{BufMut, BytesMut};
use common::amqp::*;
use common::raw::RawClient;
use common::*;
use switchboard_amqp::*;
use tokio::io::AsyncWriteExt;

/// A raw client with channel 1 open.
async fn with_channel(b: &TestBroker) -> RawClient {
    let mut c = RawClient::open(b.amqp, 0).await;
    c.send(1, ChannelOpen {}).await;
    match c.recv_method().await {
        (1, Method::ChannelOpenOk(_)) => {}
        other => panic!("expected channel.open-ok, got {other:?}"),
    }
    c
}

/// Sends `bytes` after the handshake and expects `connection.close` with `code`; returns the
/// reply text. The broker then closes the socket.
async fn expect_close_after(b: &TestBroker, bytes: &[u8], code: u16) -> String {
    let mut c = RawClient::open(b.amqp, 0).await;
    c.send_bytes(bytes).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code, "{}", close.reply_text);
    c.expect_eof().await;
    close.reply_text
}

/// A normal lapin client still works on `b` and the queue `keep` (if any) holds `expected`.
async fn broker_still_serves(b: &TestBroker, keep: Option<(&str, u32)>) {
    let (_c, ch) = b.channel().await;
    if let Some((q, n)) = keep {
        assert_eq!(
            ready_count(&ch, q).await,
            n,
            "messages stored before the abuse"
        );
    }
    let q = unique("after-abuse");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, true).await;
    publish(&ch, "", &q, b"alive").await;
    assert_eq!(text(&next(&mut consumer).await), "alive");
}

fn method_frame(channel: u16, method: impl Into<Method>) -> BytesMut {
    let mut out = BytesMut::new();
    encode_method(&mut out, channel, &method.into());
    out
}

#[tokio::test]
async fn wrong_protocol_header_gets_ours_and_a_close() {
    let b = TestBroker::start().await;
    for header in [
        &b"AMQP\x00\x00\x08\x00"[..],
        b"AMQP\x01\x01\x00\x0a",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut c = RawClient::connect(b.amqp).await;
        c.send_bytes(header).await;
        assert_eq!(
            c.read_to_end().await,
            PROTOCOL_HEADER,
            "answer to {header:?}"
        );
    }
    broker_still_serves(&b, None).await;
}

#[tokio::test]
async fn garbage_after_the_handshake_closes_with_the_right_code() {
    let b = TestBroker::start().await;
    // An unknown frame type.
    let text = expect_close_after(&b, &[0xFF; 16], 501).await;
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    // A frame whose end octet is not 0xCE.
    let mut bad_end = method_frame(0, ConnectionUpdateSecretOk {});
    let last = bad_end.len() - 1;
    bad_end[last] = 0x00;
    expect_close_after(&b, &bad_end, 501).await;
    // A method frame too short for its arguments.
    let mut short = BytesMut::new();
    short.put_slice(&[FRAME_METHOD, 0, 1, 0, 0, 0, 4]);
    short.put_slice(&[0, 50, 0, 10]); // queue.declare with no arguments
    short.put_u8(FRAME_END);
    let text = expect_close_after(&b, &short, 502).await;
    assert!(text.starts_with("SYNTAX_ERROR - "), "{text}");
    // A method that does not exist.
    let mut unknown = BytesMut::new();
    unknown.put_slice(&[FRAME_METHOD, 0, 0, 0, 0, 0, 4, 0, 50, 0, 99, FRAME_END]);
    expect_close_after(&b, &unknown, 540).await;
    broker_still_serves(&b, None).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_before_its_payload_arrives() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.amqp, 0).await;
    // Only the 7-byte header announcing a 1 MB payload (frame_max is 128 KiB); the payload
    // never comes, so an answer proves the broker did not wait for it.
    let mut head = BytesMut::new();
    head.put_u8(FRAME_BODY);
    head.put_u16(1);
    head.put_u32(1_000_000);
    c.send_bytes(&head).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 501, "{}", close.reply_text);
    assert!(
        close.reply_text.contains("frame_max"),
        "{}",
        close.reply_text
    );
    c.expect_eof().await;
    broker_still_serves(&b, None).await;
}

#[tokio::test]
async fn truncated_frame_then_disconnect_leaves_the_broker_up() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("kept");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"kept").await;

    let mut c = with_channel(&b).await;
    let frame = method_frame(
        1,
        QueueDeclare {
            queue: "half".into(),
            ..Default::default()
        },
    );
    c.send_bytes(&frame[..frame.len() / 2]).await;
    drop(c);
    wait_until("the raw connection is gone", || {
        b.broker().connections().len() == 1
    })
    .await;
    broker_still_serves(&b, Some((&q, 1))).await;
}

#[tokio::test]
async fn method_on_an_unopened_channel_is_504() {
    let b = TestBroker::start().await;
    let declare = method_frame(
        5,
        QueueDeclare {
            queue: "x".into(),
            ..Default::default()
        },
    );
    let text = expect_close_after(&b, &declare, 504).await;
    assert_eq!(text, "CHANNEL_ERROR - expected 'channel.open' on channel 5");

    // Opening the same channel twice is also a channel error.
    let mut c = with_channel(&b).await;
    c.send(1, ChannelOpen {}).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 504, "{}", close.reply_text);
    assert_eq!((close.class_id, close.method_id), (20, 10));
}

#[tokio::test]
async fn content_frames_out_of_place_are_505() {
    let b = TestBroker::start().await;
    // A content header with no basic.publish before it.
    let mut c = with_channel(&b).await;
    let mut header = BytesMut::new();
    encode_header(&mut header, 1, 3, &BasicProperties::default());
    c.send_bytes(&header).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 505, "{}", close.reply_text);
    assert!(
        close.reply_text.starts_with("UNEXPECTED_FRAME - "),
        "{}",
        close.reply_text
    );
    c.expect_eof().await;

    // A body frame with no publish.
    let mut c = with_channel(&b).await;
    let mut body = BytesMut::new();
    encode_body(&mut body, 1, b"abc");
    c.send_bytes(&body).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 505);

    // A method where the content header of a publish should be.
    let mut c = with_channel(&b).await;
    let mut out = method_frame(
        1,
        BasicPublish {
            exchange: "".into(),
            routing_key: "q".into(),
            ..Default::default()
        },
    );
    encode_method(&mut out, 1, &BasicQos::default().into());
    c.send_bytes(&out).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 505);

    // A content header on channel 0.
    let mut c = RawClient::open(b.amqp, 0).await;
    let mut header = BytesMut::new();
    encode_header(&mut header, 0, 0, &BasicProperties::default());
    c.send_bytes(&header).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 505);
    broker_still_serves(&b, None).await;
}

#[tokio::test]
async fn a_raw_publish_is_routed() {
    // The positive control for the hand-built frames above.
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("raw");
    declare(&ch, &q).await;
    let mut c = with_channel(&b).await;
    let mut out = method_frame(
        1,
        BasicPublish {
            exchange: "".into(),
            routing_key: q.clone(),
            ..Default::default()
        },
    );
    encode_header(&mut out, 1, 5, &BasicProperties::default());
    encode_body(&mut out, 1, b"he");
    encode_body(&mut out, 1, b"llo");
    encode_method(&mut out, 1, &ChannelClose::default().into());
    c.send_bytes(&out).await;
    match c.recv_method().await {
        (1, Method::ChannelCloseOk(_)) => {}
        other => panic!("expected channel.close-ok, got {other:?}"),
    }
    assert_eq!(drain(&ch, &q).await, ["hello"]);
}

#[tokio::test]
async fn connections_dropped_mid_handshake_are_cleaned_up() {
    let b = TestBroker::start().await;
    // Connected, nothing sent.
    let c = RawClient::connect(b.amqp).await;
    drop(c);
    // Header sent, connection.start read, then gone.
    let mut c = RawClient::connect(b.amqp).await;
    c.send_bytes(PROTOCOL_HEADER).await;
    assert!(matches!(
        c.recv_method().await,
        (0, Method::ConnectionStart(_))
    ));
    drop(c);
    // Half of a start-ok, then gone.
    let mut c = RawClient::connect(b.amqp).await;
    c.send_bytes(PROTOCOL_HEADER).await;
    c.recv_method().await;
    let start_ok = method_frame(
        0,
        ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: bytes::Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        },
    );
    c.send_bytes(&start_ok[..10]).await;
    drop(c);
    wait_until("no connections left", || {
        b.broker().connections().is_empty()
    })
    .await;
    broker_still_serves(&b, None).await;
}

#[tokio::test]
async fn exclusive_queue_goes_when_its_socket_dies() {
    let b = TestBroker::start().await;
    let q = unique("excl");
    let mut c = with_channel(&b).await;
    c.send(
        1,
        QueueDeclare {
            queue: q.clone(),
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        c.recv_method().await,
        (1, Method::QueueDeclareOk(_))
    ));
    let vhost = b.broker().vhost("/").unwrap();
    assert!(vhost.queue(&q).is_some());
    c.stream.set_zero_linger().unwrap();
    drop(c);
    wait_until("exclusive queue deleted", || vhost.queue(&q).is_none()).await;
}

#[tokio::test]
async fn channel_number_above_channel_max_is_530() {
    let b = TestBroker::start_with(|c| c.amqp.channel_max = 10).await;
    let mut c = RawClient::open(b.amqp, 0).await;
    c.send(10, ChannelOpen {}).await;
    assert!(matches!(
        c.recv_method().await,
        (10, Method::ChannelOpenOk(_))
    ));
    c.send(11, ChannelOpen {}).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 530, "{}", close.reply_text);
    assert!(
        close.reply_text.starts_with("NOT_ALLOWED - "),
        "{}",
        close.reply_text
    );
}

/// One abusive connection, kind `i % 8`, ending in a reset rather than a clean close.
async fn abuse(addr: std::net::SocketAddr, i: u32) {
    let mut c = match i % 8 {
        // Connect only; a partial header; a full header; a wrong header.
        0..=3 => {
            let mut c = RawClient::connect(addr).await;
            let bytes: &[u8] = match i % 8 {
                0 => b"",
                1 => b"AMQ",
                2 => PROTOCOL_HEADER,
                _ => b"AMQP\x00\x00\x08\x00",
            };
            // The server may already have hung up on a wrong header: errors are fine here.
            let _ = c.stream.write_all(bytes).await;
            c
        }
        // Open, then: garbage; an oversized frame header; half a frame; a publish cut short.
        kind => {
            let mut c = RawClient::open(addr, 0).await;
            let mut out = BytesMut::new();
            match kind {
                4 => out.put_slice(&[0xAB; 32]),
                5 => out.put_slice(&[FRAME_BODY, 0, 1, 0x7F, 0xFF, 0xFF, 0xFF]),
                6 => {
                    let f = method_frame(0, ConnectionUpdateSecretOk {});
                    out.put_slice(&f[..f.len() - 3]);
                }
                _ => {
                    encode_method(&mut out, 1, &ChannelOpen {}.into());
                    encode_method(
                        &mut out,
                        1,
                        &BasicPublish {
                            routing_key: "nowhere".into(),
                            ..Default::default()
                        }
                        .into(),
                    );
                    encode_header(&mut out, 1, 1_000, &BasicProperties::default());
                    encode_body(&mut out, 1, &[0u8; 10]);
                }
            }
            let _ = c.stream.write_all(&out).await;
            c
        }
    };
    let _ = c.stream.set_zero_linger();
    let _ = c.stream.flush().await;
    drop(c);
}

#[tokio::test]
async fn a_flood_of_abrupt_connections_leaves_the_broker_serving() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("survivor");
    declare(&ch, &q).await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    ready_count(&ch, &q).await;

    let addr = b.amqp;
    let tasks: Vec<_> = (0..200u32).map(|i| tokio::spawn(abuse(addr, i))).collect();
    for t in tasks {
        bounded(t).await.expect("abusive client task");
    }
    wait_until("abusive connections gone", || {
        b.broker().connections().len() == 1
    })
    .await;
    broker_still_serves(&b, Some((&q, 3))).await;
    assert_eq!(drain(&ch, &q).await, ["m0", "m1", "m2"]);
}
