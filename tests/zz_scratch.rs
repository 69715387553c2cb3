mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn scratch() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let mut ev = c.events_listener();
    let r = ch
        .queue_declare(
            "nope".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    println!("passive: {r:?}");
    println!("status: {:?}", ch.status());
    let r = ch.basic_qos(1, BasicQosOptions::default()).await;
    println!("after: {r:?}");
    let ch2 = c.create_channel().await.unwrap();
    ch2.exchange_declare(
        "ix".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let r = ch2
        .basic_publish(
            "ix".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    println!("publish: {:?}", r.is_ok());
    let r = ch2.basic_qos(1, BasicQosOptions::default()).await;
    println!("after publish: {r:?}");
    let ch3 = c.create_channel().await.unwrap();
    let r = ch3.basic_ack(42, BasicAckOptions::default()).await;
    println!("ack: {r:?}");
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), ev.next()).await;
    println!("event: {r:?}");
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), ev.next()).await;
    println!("event: {r:?}");
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), ev.next()).await;
    println!("event: {r:?}");
    let ch4 = c.create_channel().await.unwrap();
    let r = ch4
        .exchange_declare(
            "weird".into(),
            lapin::ExchangeKind::Custom("foo".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    println!("custom: {r:?}");
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), ev.next()).await;
    println!("event: {r:?}");
    println!("conn status {:?}", c.status());
}
