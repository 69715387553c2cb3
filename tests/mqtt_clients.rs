//! Sessions, wills, takeover and shared subscriptions with rumqttc (3.1.1 and 5), the Rust
//! client people use; the raw-socket tests check the same items packet by packet.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::mqtt::*;
use common::*;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{LastWill, QoS};

#[tokio::test]
async fn v311_persistent_session_receives_what_was_published_offline() {
    let b = TestBroker::start().await;
    let mut c = V3Client::connect(b.mqtt, "rq-persist", false).await;
    c.subscribe("rq/off", QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    // The event loop ends once the broker closed the connection.
    while c.next().await.is_some() {}
    let p = V3Client::connect(b.mqtt, "rq-persist-pub", true).await;
    for i in 0..3 {
        p.client
            .publish("rq/off", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let mut p = p;
    let mut acked = 0;
    while acked < 3 {
        if let Some(rumqttc::Packet::PubAck(_)) = p.next().await {
            acked += 1;
        }
    }
    let mut c = V3Client::connect(b.mqtt, "rq-persist", false).await;
    for i in 0..3u8 {
        assert_eq!(&c.next_publish().await.payload[..], &[i]);
    }
    b.stop().await;
}

#[tokio::test]
async fn v311_will_is_published_when_the_client_vanishes() {
    let b = TestBroker::start().await;
    let mut watcher = V3Client::connect(b.mqtt, "rq-will-watch", true).await;
    watcher.subscribe("rq/will", QoS::AtLeastOnce).await;
    let mut o = rumqttc::MqttOptions::new("rq-will", b.mqtt.ip().to_string(), b.mqtt.port());
    o.set_credentials("guest", "guest");
    o.set_last_will(LastWill::new(
        "rq/will",
        "vanished",
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10);
    // Poll until connected, then drop the event loop: the socket closes without DISCONNECT.
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) =
            bounded(el.poll()).await.expect("poll")
        {
            break;
        }
    }
    drop(el);
    drop(client);
    let m = watcher.next_publish().await;
    assert_eq!(&m.payload[..], b"vanished");
    b.stop().await;
}

#[tokio::test]
async fn v5_takeover_and_session_present() {
    let b = TestBroker::start().await;
    let mut o = V5Client::options(b.mqtt, "rq-take");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut old = V5Client::connect_opts(o.clone()).await;
    assert!(!old.connack.session_present);
    let new = V5Client::connect_opts(o).await;
    assert!(new.connack.session_present);
    // rumqttc reports a server DISCONNECT as the error that ends its event loop.
    let end = bounded(&mut old.ended).await.expect("old connection ended");
    assert!(format!("{end:?}").contains("SessionTakenOver"), "{end:?}");
    b.stop().await;
}

#[tokio::test]
async fn v5_shared_subscription_splits_messages() {
    let b = TestBroker::start().await;
    let mut a = V5Client::connect(b.mqtt, "rq-share-a").await;
    let mut c = V5Client::connect(b.mqtt, "rq-share-b").await;
    a.subscribe("$share/workers/rq/jobs", Q5::AtLeastOnce).await;
    c.subscribe("$share/workers/rq/jobs", Q5::AtLeastOnce).await;
    let p = V5Client::connect(b.mqtt, "rq-share-pub").await;
    for i in 0..6u8 {
        p.client
            .publish("rq/jobs", Q5::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(a.next_publish().await.payload[0]);
        got.push(c.next_publish().await.payload[0]);
    }
    got.sort_unstable();
    assert_eq!(got, (0..6).collect::<Vec<u8>>());
    b.stop().await;
}
