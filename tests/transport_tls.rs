//! TLS on every listener with a rustls client: AMQP, MQTT, STOMP and the HTTP API; client
//! certificates required, verified and refused; plain text on a TLS port; reload on SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::mqtt::{connect_packet, RawMqtt, V3Client};
use common::raw::RawClient;
use common::stomp::StompClient;
use common::tls::{self, TestPki};
use common::{bounded, TestBroker};
use switchboard_stomp::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK_ANY: &str = "127.0.0.1:0";

async fn tls_broker(pki: &TestPki, verify_peer: bool, fail_if_no_peer_cert: bool) -> TestBroker {
    let any = LOOPBACK_ANY.parse().expect("address");
    TestBroker::start_with(|c| {
        c.tls = pki.server_config(verify_peer, fail_if_no_peer_cert);
        c.amqp.tls_listen = vec![any];
        c.mqtt.tls_listen = vec![any];
        c.stomp.tls_listen = vec![any];
        c.http.tls_listen = vec![any];
    })
    .await
}

/// Runs the AMQP handshake over TLS; false when the server refused the connection.
async fn amqp_opens(b: &TestBroker, connector: &tokio_rustls::TlsConnector) -> bool {
    let Ok(mut stream) = tls::connect(connector, b.addrs().amqp_tls[0]).await else {
        return false;
    };
    // TLS 1.3 finishes the client's side before the server checked its certificate: a refusal
    // shows on the first read.
    if stream
        .write_all(switchboard_amqp::PROTOCOL_HEADER)
        .await
        .is_err()
    {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(bounded(stream.read(&mut first)).await, Ok(1))
}

#[tokio::test]
async fn every_protocol_speaks_over_tls() {
    use switchboard_amqp::{ChannelOpen, Method};
    let pki = TestPki::new();
    let b = tls_broker(&pki, false, false).await;
    let connector = pki.connector(None);

    let amqp = tls::connect(&connector, b.addrs().amqp_tls[0])
        .await
        .unwrap();
    let mut amqp = RawClient::over(amqp).handshake(0).await;
    amqp.send(1, ChannelOpen {}).await;
    assert!(matches!(
        amqp.recv_method().await,
        (1, Method::ChannelOpenOk(_))
    ));

    let mqtt = tls::connect(&connector, b.addrs().mqtt_tls[0])
        .await
        .unwrap();
    let protocol = switchboard_mqtt::Protocol::V311;
    let (mut mqtt, ack) = RawMqtt::over(mqtt, protocol)
        .handshake(connect_packet(protocol, "over-tls", true))
        .await;
    assert_eq!(ack.code, 0);

    let stomp = tls::connect(&connector, b.addrs().stomp_tls[0])
        .await
        .unwrap();
    let (mut stomp, answer) = StompClient::over(stomp)
        .handshake(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
        ])
        .await;
    assert_eq!(answer.command, Command::Connected, "{answer:?}");

    // Across protocols, all over TLS: MQTT publishes, STOMP receives.
    stomp.subscribe("s", "/topic/tls.cross", "auto").await;
    mqtt.publish("tls/cross", switchboard_mqtt::QoS::AtMostOnce, 0, b"sealed")
        .await;
    assert_eq!(&stomp.message().await.body[..], b"sealed");

    let mut http = tls::connect(&connector, b.addrs().http_tls[0])
        .await
        .unwrap();
    http.write_all(
        b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = bounded(http.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    b.stop().await;
}

#[tokio::test]
async fn client_certificates_are_verified_and_can_be_required() {
    let pki = TestPki::new();
    let stranger = TestPki::new();
    let required = tls_broker(&pki, true, true).await;
    assert!(
        !amqp_opens(&required, &pki.connector(None)).await,
        "no certificate refused"
    );
    assert!(
        !amqp_opens(
            &required,
            &pki.connector(Some(stranger.client_identity("eve")))
        )
        .await,
        "a certificate from another CA refused"
    );
    assert!(
        amqp_opens(
            &required,
            &pki.connector(Some(pki.client_identity("alice")))
        )
        .await,
        "a certificate from the CA accepted"
    );
    let optional = tls_broker(&pki, true, false).await;
    assert!(
        amqp_opens(&optional, &pki.connector(None)).await,
        "optional: none is fine"
    );
    assert!(
        !amqp_opens(
            &optional,
            &pki.connector(Some(stranger.client_identity("eve")))
        )
        .await,
        "optional: a bad certificate is still refused"
    );
    required.stop().await;
    optional.stop().await;
}

#[tokio::test]
async fn plain_text_on_a_tls_port_is_refused_and_the_port_keeps_serving() {
    let pki = TestPki::new();
    let b = tls_broker(&pki, false, false).await;
    for addr in [
        b.addrs().amqp_tls[0],
        b.addrs().mqtt_tls[0],
        b.addrs().stomp_tls[0],
    ] {
        let mut plain = RawClient::connect(addr).await;
        plain.send_bytes(switchboard_amqp::PROTOCOL_HEADER).await;
        // Closed at once (after a TLS alert), not left hanging until a timeout.
        plain.expect_eof().await;
    }
    assert!(b.broker().connections().is_empty());
    assert!(amqp_opens(&b, &pki.connector(None)).await);
    b.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificates_for_new_connections() {
    let pki = TestPki::new();
    let b = tls_broker(&pki, false, false).await;
    let connector = pki.connector(None);
    let presented = |stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c[0].to_vec())
    };
    let before = tls::connect(&connector, b.addrs().amqp_tls[0])
        .await
        .unwrap();
    let renewed = pki.write_server_certificate("switchboard renewed");
    assert_ne!(presented(&before), Some(renewed.clone()));
    // The broker installed its SIGHUP handler at start; signal our own process.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    common::wait_until_async("new connections get the renewed certificate", || async {
        let s = tls::connect(&connector, b.addrs().amqp_tls[0])
            .await
            .unwrap();
        presented(&s) == Some(renewed.clone())
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_broken_tls_configuration_stops_the_start() {
    let pki = TestPki::new();
    let mut config = switchboard::Config::parse(&common::test_config_text()).unwrap();
    config.amqp.tls_listen = vec![LOOPBACK_ANY.parse().unwrap()];
    config.tls = pki.server_config(false, false);
    config.tls.key_file = Some(pki.dir.join("missing.key"));
    let err = switchboard::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("key_file"), "{err}");
}

#[tokio::test]
async fn a_client_certificate_logs_in_as_its_common_name() {
    use switchboard_amqp::*;
    let pki = TestPki::new();
    let any = LOOPBACK_ANY.parse().unwrap();
    let b = TestBroker::start_with(|c| {
        c.tls = pki.server_config(true, true);
        c.amqp.tls_listen = vec![any];
        c.mqtt.tls_listen = vec![any];
        c.stomp.tls_listen = vec![any];
        c.mqtt.ssl_cert_login = true;
        c.stomp.ssl_cert_login = true;
    })
    .await;
    let alice = pki.connector(Some(pki.client_identity("alice")));

    // AMQP: SASL EXTERNAL, offered only with a client certificate.
    let stream = tls::connect(&alice, b.addrs().amqp_tls[0]).await.unwrap();
    let mut amqp = RawClient::over(stream);
    amqp.send_bytes(PROTOCOL_HEADER).await;
    match amqp.recv_method().await {
        (0, Method::ConnectionStart(s)) => {
            assert!(String::from_utf8_lossy(&s.mechanisms).contains("EXTERNAL"))
        }
        other => panic!("expected connection.start, got {other:?}"),
    }
    amqp.send(
        0,
        ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "EXTERNAL".into(),
            response: bytes::Bytes::new(),
            locale: "en_US".into(),
        },
    )
    .await;
    let tune = match amqp.recv_method().await {
        (0, Method::ConnectionTune(t)) => t,
        other => panic!("expected connection.tune, got {other:?}"),
    };
    amqp.send(
        0,
        ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        },
    )
    .await;
    amqp.send(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
        },
    )
    .await;
    assert!(matches!(
        amqp.recv_method().await,
        (0, Method::ConnectionOpenOk(_))
    ));

    // MQTT without a user name, STOMP without a login: the certificate's name.
    let stream = tls::connect(&alice, b.addrs().mqtt_tls[0]).await.unwrap();
    let protocol = switchboard_mqtt::Protocol::V311;
    let mut connect = connect_packet(protocol, "by-cert", true);
    connect.username = None;
    connect.password = None;
    let (_mqtt, ack) = RawMqtt::over(stream, protocol).handshake(connect).await;
    assert_eq!(ack.code, 0);
    let stream = tls::connect(&alice, b.addrs().stomp_tls[0]).await.unwrap();
    let (_stomp, answer) = StompClient::over(stream)
        .handshake(&[("accept-version", "1.2")])
        .await;
    assert_eq!(answer.command, Command::Connected, "{answer:?}");

    common::wait_until("three connections logged in as alice", || {
        b.logged_in_users() == ["alice", "alice", "alice"]
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn rumqttc_over_tls_with_a_client_certificate() {
    let pki = TestPki::new();
    let b = tls_broker(&pki, true, true).await;
    let addr = b.addrs().mqtt_tls[0];
    let mut o = rumqttc::MqttOptions::new("rumqttc-tls", addr.ip().to_string(), addr.port());
    o.set_credentials("guest", "guest");
    o.set_keep_alive(std::time::Duration::from_secs(30));
    let config = pki.client_config(Some(pki.client_identity("alice")));
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ));
    let mut c = V3Client::connect_opts(o).await;
    c.subscribe("tls/rumqttc", rumqttc::QoS::AtLeastOnce).await;
    c.client
        .publish(
            "tls/rumqttc",
            rumqttc::QoS::AtLeastOnce,
            false,
            &b"over mqtts"[..],
        )
        .await
        .expect("publish");
    assert_eq!(&c.next_publish().await.payload[..], b"over mqtts");
    b.stop().await;
}

/// lapin over `amqps://` trusting the test CA, presenting `identity` (PEM certificate and key).
async fn lapin_over_tls(
    pki: &TestPki,
    uri: &str,
    identity: Option<(String, String)>,
) -> lapin::Result<lapin::Connection> {
    let config = lapin::tcp::OwnedTLSConfig {
        identity: identity.map(|(pem, key)| lapin::tcp::OwnedIdentity::PKCS8 {
            pem: pem.into_bytes(),
            key: key.into_bytes(),
        }),
        cert_chain: Some(pki.ca_pem()),
    };
    let builder = lapin::DefaultConnectionBuilder::new()?
        .with_uri_str(uri.to_owned())
        .with_tls_config(config);
    bounded(builder.connect()).await
}

#[tokio::test]
async fn lapin_publishes_and_consumes_over_tls() {
    use common::amqp::{consume, declare, next, publish, text};
    let pki = TestPki::new();
    let b = tls_broker(&pki, false, false).await;
    let uri = format!("amqps://guest:guest@{}/%2f", b.addrs().amqp_tls[0]);
    let c = lapin_over_tls(&pki, &uri, None).await.expect("amqps");
    let ch = bounded(c.create_channel()).await.expect("channel");
    declare(&ch, "over-tls").await;
    let mut consumer = consume(&ch, "over-tls", true).await;
    for i in 0..3 {
        publish(&ch, "", "over-tls", format!("tls {i}").as_bytes()).await;
    }
    for i in 0..3 {
        assert_eq!(text(&next(&mut consumer).await), format!("tls {i}"));
    }
    bounded(c.close(200, "bye".into())).await.expect("close");
    b.stop().await;
}

#[tokio::test]
async fn lapin_logs_in_with_a_client_certificate_by_sasl_external() {
    use common::amqp::{declare, get, publish};
    let pki = TestPki::new();
    let b = tls_broker(&pki, true, true).await;
    let addr = b.addrs().amqp_tls[0];
    // No user name or password in the URI: the certificate's common name is the user.
    let external = format!("amqps://{addr}/%2f?auth_mechanism=external");
    let c = lapin_over_tls(&pki, &external, Some(pki.client_identity_pem("alice")))
        .await
        .expect("EXTERNAL login");
    common::wait_until("logged in as alice", || b.logged_in_users() == ["alice"]).await;
    let ch = bounded(c.create_channel()).await.expect("channel");
    declare(&ch, "by-cert").await;
    publish(&ch, "", "by-cert", b"as alice").await;
    let got = get(&ch, "by-cert", true).await.expect("a message");
    assert_eq!(&got.delivery.data[..], b"as alice");
    // Without a certificate the broker refuses the TLS handshake (fail_if_no_peer_cert).
    let plain = format!("amqps://guest:guest@{addr}/%2f");
    assert!(lapin_over_tls(&pki, &plain, None).await.is_err());
    // A certificate for a user that does not exist is refused at login.
    let nobody = lapin_over_tls(&pki, &external, Some(pki.client_identity_pem("nobody"))).await;
    assert!(nobody.is_err(), "unknown user logged in");
    b.stop().await;
}
