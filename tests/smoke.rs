#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn publish_and_get_with_lapin() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("smoke");
    bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    bounded(ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"hello",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let got = bounded(ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"hello");
}
