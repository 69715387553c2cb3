//! Access control over MQTT (3.1.1 and 5) and STOMP: vhost access at connect, refused
//! subscriptions and publishes with each protocol's codes, topic permissions on topics in their
//! AMQP form with `{username}`/`{client_id}`, and the anonymous user's permissions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use bytes::Bytes;
use common::mqtt::*;
use common::stomp::StompClient;
use common::*;
use switchboard::config::RefusalReason;
use switchboard::core::access::password::PasswordHash;
use switchboard::core::access::permissions::{PermissionSpec, TopicPermissionSpec};
use switchboard_mqtt::*;
use switchboard_stomp::{Command, Frame};

fn spec(c: &str, w: &str, r: &str) -> PermissionSpec {
    PermissionSpec {
        configure: c.into(),
        write: w.into(),
        read: r.into(),
    }
}

fn mqtt_as(protocol: Protocol, client_id: &str, user: &str, password: &str) -> Connect {
    Connect {
        username: Some(user.into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        ..connect_packet(protocol, client_id, true)
    }
}

/// "dev" may do anything on "/", but its topics on amq.topic are restricted: it writes only
/// under devices.<client id>. and reads only cmd.<user name>.
fn device_user(b: &TestBroker) {
    let access = &b.broker().access;
    access.put_user("dev", PasswordHash::new("pw"), &[]);
    access
        .set_permissions("/", "dev", &spec(".*", ".*", ".*"))
        .unwrap();
    access
        .set_topic_permissions(
            "/",
            "dev",
            &TopicPermissionSpec {
                exchange: "amq.topic".into(),
                write: "^devices\\.{client_id}\\.".into(),
                read: "^cmd\\.{username}\\.".into(),
            },
        )
        .unwrap();
}

#[tokio::test]
async fn mqtt_connect_needs_vhost_permissions() {
    let b = TestBroker::start().await;
    b.broker()
        .access
        .put_user("nobody", PasswordHash::new("pw"), &[]);
    let (_c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V311, "n3", "nobody", "pw")).await;
    assert_eq!(ack.code, reason::V3_NOT_AUTHORIZED);
    let (_c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V5, "n5", "nobody", "pw")).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    // With permissions on the vhost it connects.
    b.broker()
        .access
        .set_permissions("/", "nobody", &spec("", "", ""))
        .unwrap();
    let (_c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V311, "n3", "nobody", "pw")).await;
    assert_eq!(ack.code, 0);
    b.stop().await;
}

#[tokio::test]
async fn mqtt_v311_topic_permissions() {
    let b = TestBroker::start().await;
    device_user(&b);
    let (mut c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V311, "c1", "dev", "pw")).await;
    assert_eq!(ack.code, 0);
    let granted = c.subscribe("cmd/dev/#", QoS::AtLeastOnce).await;
    assert_eq!(granted.codes, vec![1]);
    let refused = c.subscribe("#", QoS::AtLeastOnce).await;
    assert_eq!(refused.codes, vec![reason::V3_SUBACK_FAILURE]);
    // guest (unrestricted) sends a command; dev receives it.
    let mut g = RawMqtt::connect(b.mqtt, Protocol::V311, "g", true).await;
    g.publish("cmd/dev/reboot", QoS::AtMostOnce, 0, b"now")
        .await;
    let p = c.next_publish().await;
    assert_eq!(p.topic, "cmd/dev/reboot");
    // Its own topic is allowed...
    c.publish("devices/c1/temp", QoS::AtLeastOnce, 7, b"21")
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // ...another device's is not: 3.1.1 can only close.
    c.publish("devices/c2/temp", QoS::AtLeastOnce, 8, b"21")
        .await;
    assert!(c.closed().await.is_none(), "closed without an answer");
    b.stop().await;
}

/// What a v5 client refused for want of permission is told under each `mqtt.refusal_reason`:
/// `specific` names the reason (0x87, and a Reason String where the packet has one);
/// `unspecified` answers 0x80 and no Reason String (Paho's interoperability client accepts no
/// other SUBACK failure code). 3.1.1 answers are the same under both.
async fn refusals_answered_as(how: RefusalReason, code: u8, told: bool) {
    let b = TestBroker::start_with(|c| c.mqtt.refusal_reason = how).await;
    device_user(&b);
    let (mut c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V5, "c5", "dev", "pw")).await;
    assert_eq!(ack.code, 0);
    let refused = c.subscribe("devices/#", QoS::AtMostOnce).await;
    assert_eq!(refused.codes, vec![code], "{how:?} SUBACK");
    c.publish("devices/other/x", QoS::AtLeastOnce, 3, b"x")
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!((a.packet_id, a.reason), (3, code), "{how:?}"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    c.publish("devices/other/x", QoS::ExactlyOnce, 4, b"x")
        .await;
    match c.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!((a.packet_id, a.reason), (4, code), "{how:?}"),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // Still connected, and allowed publishes go through.
    c.publish("devices/c5/x", QoS::AtLeastOnce, 5, b"x").await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, 5),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // A refused QoS 0 publish can only be answered by DISCONNECT; the client asked for problem
    // information (the default), so only the setting keeps the Reason String out.
    c.publish("devices/other/x", QoS::AtMostOnce, 0, b"x").await;
    match c.closed().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, code, "{how:?} DISCONNECT");
            assert_eq!(d.properties.reason_string.is_some(), told, "{how:?} {d:?}");
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // CONNACK for a user without permissions on the vhost.
    b.broker()
        .access
        .put_user("nobody", PasswordHash::new("pw"), &[]);
    let (_c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V5, "n5", "nobody", "pw")).await;
    assert_eq!(ack.code, code, "{how:?} CONNACK");
    assert_eq!(
        ack.properties.reason_string.is_some(),
        told,
        "{how:?} {ack:?}"
    );
    // Bad credentials are not a permission refusal: 0x86 under both.
    let (_c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V5, "n5", "nobody", "wrong")).await;
    assert_eq!(ack.code, reason::BAD_USER_NAME_OR_PASSWORD, "{how:?}");
    // 3.1.1: SUBACK 0x80 and CONNACK 0x05 whatever the setting.
    let (mut c3, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V311, "c3", "dev", "pw")).await;
    assert_eq!(ack.code, 0);
    let refused = c3.subscribe("devices/#", QoS::AtMostOnce).await;
    assert_eq!(refused.codes, vec![reason::V3_SUBACK_FAILURE], "{how:?}");
    let (_c, ack) =
        RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V311, "n3", "nobody", "pw")).await;
    assert_eq!(ack.code, reason::V3_NOT_AUTHORIZED, "{how:?}");
    b.stop().await;
}

#[tokio::test]
async fn mqtt_v5_refusals_name_the_reason_by_default() {
    refusals_answered_as(RefusalReason::Specific, reason::NOT_AUTHORIZED, true).await;
}

#[tokio::test]
async fn mqtt_v5_refusals_can_keep_the_reason_back() {
    refusals_answered_as(RefusalReason::Unspecified, reason::UNSPECIFIED_ERROR, false).await;
}

#[tokio::test]
async fn mqtt_read_and_write_permissions_on_the_exchange() {
    let b = TestBroker::start().await;
    let access = &b.broker().access;
    access.put_user("w", PasswordHash::new("pw"), &[]);
    // May write to amq.topic but read nothing.
    access
        .set_permissions("/", "w", &spec(".*", ".*", "^mqtt-subscription-"))
        .unwrap();
    let (mut c, _) = RawMqtt::connect_with(b.mqtt, mqtt_as(Protocol::V311, "w1", "w", "pw")).await;
    let refused = c.subscribe("a/b", QoS::AtMostOnce).await;
    assert_eq!(refused.codes, vec![reason::V3_SUBACK_FAILURE]);
    c.publish("a/b", QoS::AtLeastOnce, 1, b"x").await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
    // A will the user could not publish is refused at CONNECT.
    access
        .set_permissions("/", "w", &spec(".*", "", ".*"))
        .unwrap();
    let mut connect = mqtt_as(Protocol::V311, "w2", "w", "pw");
    connect.will = Some(Will {
        topic: "last/words".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (_c, ack) = RawMqtt::connect_with(b.mqtt, connect).await;
    assert_eq!(ack.code, reason::V3_NOT_AUTHORIZED);
    b.stop().await;
}

#[tokio::test]
async fn mqtt_anonymous_acts_as_the_configured_user() {
    let b = TestBroker::start_with(|c| c.mqtt.anonymous_user = Some("alice".into())).await;
    b.broker()
        .access
        .set_permissions("/", "alice", &spec(".*", ".*", "^mqtt-subscription-"))
        .unwrap();
    let connect = Connect {
        username: None,
        password: None,
        ..connect_packet(Protocol::V311, "anon", true)
    };
    let (mut c, ack) = RawMqtt::connect_with(b.mqtt, connect.clone()).await;
    assert_eq!(ack.code, 0);
    // alice may not read amq.topic, so neither may the anonymous client.
    let refused = c.subscribe("x", QoS::AtMostOnce).await;
    assert_eq!(refused.codes, vec![reason::V3_SUBACK_FAILURE]);
    // Without permissions on the vhost, anonymous connections are refused too.
    b.broker().access.clear_permissions("/", "alice");
    let (_c, ack) = RawMqtt::connect_with(b.mqtt, connect).await;
    assert_eq!(ack.code, reason::V3_NOT_AUTHORIZED);
    b.stop().await;
}

async fn stomp_as(b: &TestBroker, user: &str, host: &str) -> (StompClient, Frame) {
    StompClient::connect_with(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("host", host),
            ("login", user),
            ("passcode", "pw"),
        ],
    )
    .await
}

#[tokio::test]
async fn stomp_permission_matrix() {
    let b = TestBroker::start().await;
    let access = &b.broker().access;
    access.put_user("s", PasswordHash::new("pw"), &[]);
    access
        .set_permissions(
            "/",
            "s",
            &spec(
                "^s-|^stomp-subscription-",
                "^amq\\.default$|^amq\\.topic$|^stomp-subscription-",
                "^s-|^amq\\.topic$|^stomp-subscription-",
            ),
        )
        .unwrap();
    access
        .set_topic_permissions(
            "/",
            "s",
            &TopicPermissionSpec {
                exchange: "amq.topic".into(),
                write: "^s\\.".into(),
                read: "^s\\.".into(),
            },
        )
        .unwrap();

    // No permissions on "other": CONNECT is refused.
    let (_c, answer) = stomp_as(&b, "s", "other").await;
    assert_eq!(answer.command, Command::Error);
    assert!(
        String::from_utf8_lossy(&answer.body)
            .contains("access to vhost 'other' refused for user 's'"),
        "{answer:?}"
    );

    let (mut c, answer) = stomp_as(&b, "s", "/").await;
    assert_eq!(answer.command, Command::Connected);
    c.request(
        Frame::new(Command::Send)
            .with("destination", "/queue/s-q")
            .with_body("hi"),
    )
    .await;
    c.subscribe("1", "/queue/s-q", "auto").await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.body.as_ref(), b"hi");
    c.request(
        Frame::new(Command::Subscribe)
            .with("id", "2")
            .with("destination", "/topic/s.events"),
    )
    .await;
    c.request(
        Frame::new(Command::Send)
            .with("destination", "/topic/s.events")
            .with_body("e"),
    )
    .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.body.as_ref(), b"e");

    // configure on another queue is refused.
    let err = c
        .expect_error(
            Frame::new(Command::Send)
                .with("destination", "/queue/other")
                .with_body("x"),
        )
        .await;
    assert_eq!(err.header("message"), Some("access_refused"));
    assert!(
        String::from_utf8_lossy(&err.body)
            .contains("ACCESS_REFUSED - access to queue 'other' in vhost '/' refused for user 's'"),
        "{err:?}"
    );

    // Topic permissions: /topic/other.x is refused for SEND and SUBSCRIBE.
    let (mut c, _) = stomp_as(&b, "s", "/").await;
    let err = c
        .expect_error(
            Frame::new(Command::Send)
                .with("destination", "/topic/other.x")
                .with_body("x"),
        )
        .await;
    assert!(
        String::from_utf8_lossy(&err.body).contains(
            "access to topic 'other.x' in exchange 'amq.topic' in vhost '/' refused for user 's'"
        ),
        "{err:?}"
    );
    let (mut c, _) = stomp_as(&b, "s", "/").await;
    let err = c
        .expect_error(
            Frame::new(Command::Subscribe)
                .with("id", "3")
                .with("destination", "/topic/other.#"),
        )
        .await;
    assert!(
        String::from_utf8_lossy(&err.body).contains("access to topic 'other.#'"),
        "{err:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn stomp_default_login_acts_as_the_configured_user() {
    let b = TestBroker::start_with(|c| {
        c.stomp.default_login = Some("alice".into());
        c.stomp.default_passcode = None;
    })
    .await;
    b.broker()
        .access
        .set_permissions("/", "alice", &spec("^a-", "^amq\\.default$", "^a-"))
        .unwrap();
    let (mut c, answer) =
        StompClient::connect_with(b.stomp, &[("accept-version", "1.2"), ("host", "/")]).await;
    assert_eq!(answer.command, Command::Connected, "{answer:?}");
    c.request(
        Frame::new(Command::Send)
            .with("destination", "/queue/a-q")
            .with_body("ok"),
    )
    .await;
    let err = c
        .expect_error(
            Frame::new(Command::Send)
                .with("destination", "/queue/b-q")
                .with_body("no"),
        )
        .await;
    assert!(
        String::from_utf8_lossy(&err.body)
            .contains("access to queue 'b-q' in vhost '/' refused for user 'alice'"),
        "{err:?}"
    );
    b.stop().await;
}
