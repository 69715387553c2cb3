//! Crash test: the broker is killed with SIGKILL in the middle of a sustained, confirmed,
//! persistent publish over several connections while a consumer acks, then restarted on the
//! same data directory. Every confirmed message must come back unless it was acked; nothing
//! whose ack was made durable may come back; each publisher's messages stay in order.
//! Repeated at several kill points.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::process::BrokerProcess;
use common::{fresh_data_dir, WAIT};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const PUBLISHERS: usize = 3;
const WINDOW: usize = 20;
const QUEUE: &str = "crash";
const MARKER: &str = "crash-marker";

/// Awaits `f` within the standard wait; None on timeout (the broker may be dead).
async fn within<F: std::future::Future>(f: F) -> Option<F::Output> {
    tokio::time::timeout(WAIT, f).await.ok()
}

async fn connect(addr: SocketAddr) -> lapin::Result<Connection> {
    Connection::connect(
        &format!("amqp://guest:guest@{addr}/%2f"),
        ConnectionProperties::default(),
    )
    .await
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

#[derive(Default)]
struct Seen {
    /// Confirmed sequence numbers per publisher.
    confirmed: Vec<BTreeSet<u64>>,
    /// Bodies the consumer acked (sent the ack for).
    acked: HashSet<String>,
    /// Bodies whose ack is known durable: a confirmed publish followed it on the connection.
    acked_durable: HashSet<String>,
}

async fn publisher(addr: SocketAddr, id: usize, seen: Arc<Mutex<Seen>>) {
    let Ok(conn) = connect(addr).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    let mut seq = 0u64;
    loop {
        let mut pending = Vec::new();
        for _ in 0..WINDOW {
            let body = format!("p{id}:{seq}");
            let Some(Ok(confirm)) = within(ch.basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            ))
            .await
            else {
                return;
            };
            pending.push((seq, confirm));
            seq += 1;
        }
        for (s, confirm) in pending {
            match within(confirm).await {
                Some(Ok(c)) if c.is_ack() => {
                    seen.lock().expect("seen").confirmed[id].insert(s);
                }
                _ => return,
            }
        }
    }
}

async fn consumer(addr: SocketAddr, seen: Arc<Mutex<Seen>>) {
    let Ok(conn) = connect(addr).await else {
        return;
    };
    let (Ok(ch), Ok(marker)) = (conn.create_channel().await, conn.create_channel().await) else {
        return;
    };
    if marker
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
        || ch.basic_qos(50, BasicQosOptions::default()).await.is_err()
    {
        return;
    }
    let Ok(mut deliveries) = ch
        .basic_consume(
            QUEUE.into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    let mut unconfirmed = Vec::new();
    loop {
        let Some(Some(Ok(d))) = within(deliveries.next()).await else {
            return;
        };
        let body = String::from_utf8_lossy(&d.data).into_owned();
        if !matches!(within(d.ack(BasicAckOptions::default())).await, Some(Ok(_))) {
            return;
        }
        seen.lock().expect("seen").acked.insert(body.clone());
        unconfirmed.push(body);
        if unconfirmed.len() >= 25 {
            // Frames on one connection are handled in order and the log is one ordered stream,
            // so this confirm means the acks before it are durable.
            let Some(Ok(confirm)) = within(marker.basic_publish(
                "".into(),
                MARKER.into(),
                BasicPublishOptions::default(),
                b"m",
                persistent(),
            ))
            .await
            else {
                return;
            };
            match within(confirm).await {
                Some(Ok(c)) if c.is_ack() => {
                    let mut s = seen.lock().expect("seen");
                    s.acked_durable.extend(unconfirmed.drain(..));
                }
                _ => return,
            }
        }
    }
}

fn parse(body: &str) -> (usize, u64) {
    let (p, s) = body
        .strip_prefix('p')
        .and_then(|b| b.split_once(':'))
        .expect("body shape");
    (p.parse().expect("publisher"), s.parse().expect("seq"))
}

async fn crash_round(kill_after: usize) {
    let dir = fresh_data_dir();
    let broker = BrokerProcess::spawn(&dir);
    let addr = broker.amqp;
    {
        let conn = within(connect(addr))
            .await
            .expect("connect")
            .expect("connect");
        let ch = within(conn.create_channel())
            .await
            .expect("ch")
            .expect("ch");
        for q in [QUEUE, MARKER] {
            within(ch.queue_declare(
                q.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ))
            .await
            .expect("declare")
            .expect("declare");
        }
    }
    let seen = Arc::new(Mutex::new(Seen {
        confirmed: vec![BTreeSet::new(); PUBLISHERS],
        ..Default::default()
    }));
    let mut tasks = Vec::new();
    for id in 0..PUBLISHERS {
        tasks.push(tokio::spawn(publisher(addr, id, seen.clone())));
    }
    tasks.push(tokio::spawn(consumer(addr, seen.clone())));
    let confirmed = || {
        let s = seen.lock().expect("seen");
        s.confirmed.iter().map(|s| s.len()).sum()
    };
    broker.kill_at(kill_after, confirmed, tasks).await;
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));

    let broker = BrokerProcess::spawn(&dir);
    let conn = within(connect(broker.amqp))
        .await
        .expect("reconnect")
        .expect("reconnect");
    let ch = within(conn.create_channel())
        .await
        .expect("ch")
        .expect("ch");
    let mut received = Vec::new();
    while let Some(m) = within(ch.basic_get(QUEUE.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get")
        .expect("basic.get")
    {
        received.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    drop(broker);

    let got: HashSet<&str> = received.iter().map(|s| s.as_str()).collect();
    let mut lost = Vec::new();
    for (p, seqs) in seen.confirmed.iter().enumerate() {
        for s in seqs {
            let body = format!("p{p}:{s}");
            if !seen.acked.contains(&body) && !got.contains(body.as_str()) {
                lost.push(body);
            }
        }
    }
    assert!(lost.is_empty(), "confirmed messages lost: {lost:?}");
    let returned: Vec<&String> = received
        .iter()
        .filter(|b| seen.acked_durable.contains(*b))
        .collect();
    assert!(
        returned.is_empty(),
        "durably acked messages came back: {returned:?}"
    );
    let mut last = [None; PUBLISHERS];
    for body in &received {
        let (p, s) = parse(body);
        assert!(
            last[p] < Some(s),
            "publisher {p} out of order: {s} after {:?}",
            last[p]
        );
        last[p] = Some(s);
    }
    let confirmed: usize = seen.confirmed.iter().map(|s| s.len()).sum();
    eprintln!(
        "kill after {kill_after}: {confirmed} confirmed, {} acked ({} durably), {} recovered",
        seen.acked.len(),
        seen.acked_durable.len(),
        received.len()
    );
    if kill_after >= 1000 {
        assert!(
            !seen.acked_durable.is_empty(),
            "the consumer made durable progress"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmed_message_is_lost_when_killed_early() {
    crash_round(150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmed_message_is_lost_when_killed_mid_run() {
    crash_round(1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmed_message_is_lost_when_killed_late() {
    crash_round(5000).await;
}
