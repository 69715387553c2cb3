#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Any node reaches every queue: a durable classic queue lives on the node that declared it,
//! and the other nodes forward publishes to it and consume from it over the inter-node
//! transport (three brokers in one process, as in tests/cluster_definitions.rs).

mod common;

use common::amqp::{
    confirm_channel, consume, consume_with, declare_durable, next, passive, persistent,
    publish_with, text,
};
use common::cluster::{form, Node};
use common::http::call;
use common::stomp::{text as stomp_text, StompClient};
use common::{bounded, wait_until_async, WAIT};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::collections::HashMap;

/// Waits until every node in `on` knows queue `name` (its definition replicated).
async fn wait_for_queue(nodes: &[Node], on: &[usize], name: &str) {
    for &i in on {
        let b = nodes[i].broker();
        let path = format!("/api/queues/%2F/{name}");
        wait_until_async(&format!("queue {name} on {}", nodes[i].name), || {
            let path = path.clone();
            async move { call(b, "GET", &path, None).await.status == 200 }
        })
        .await;
    }
}

/// The ready count node `i`'s management API shows for queue `name`.
async fn ready_on(nodes: &[Node], i: usize, name: &str) -> u64 {
    let path = format!("/api/queues/%2F/{name}");
    let body = call(nodes[i].broker(), "GET", &path, None).await.body;
    body["messages_ready"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publishes_from_two_nodes_reach_a_consumer_on_a_third_exactly_once_in_order() {
    let nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "fwd", FieldTable::default()).await;
    wait_for_queue(&nodes, &[1, 2], "fwd").await;

    // Listed everywhere with its home; a passive declare on another node finds it.
    for n in &nodes {
        let q = call(n.broker(), "GET", "/api/queues/%2F/fwd", None)
            .await
            .body;
        assert_eq!(q["node"], nodes[0].name.as_str(), "{}: {q}", n.name);
    }
    let (_c2, ch2) = nodes[2].broker().channel().await;
    bounded(ch2.queue_declare("fwd".into(), passive(), FieldTable::default()))
        .await
        .expect("passive declare on a node that is not the home");

    const N: usize = 1000;
    let mut publishers = Vec::new();
    for i in [1, 2] {
        let conn = nodes[i].broker().connect().await;
        publishers.push(tokio::spawn(async move {
            let ch = confirm_channel(&conn).await;
            let mut pending = Vec::with_capacity(N);
            for k in 0..N {
                let body = format!("n{i}-{k}");
                pending.push(publish_with(&ch, "", "fwd", body.as_bytes(), persistent()).await);
            }
            for p in pending {
                assert!(bounded(p).await.expect("confirm").is_ack(), "nacked");
            }
            conn
        }));
    }
    let mut conns = Vec::new();
    for p in publishers {
        conns.push(bounded(p).await.unwrap());
    }
    // Every confirmed message is on the home node, none on the others' proxies.
    assert_eq!(ready_on(&nodes, 0, "fwd").await, 2 * N as u64);
    let own = nodes[1]
        .broker()
        .broker()
        .vhost("/")
        .unwrap()
        .queue("fwd")
        .unwrap();
    assert_eq!(own.home_node(), Some(nodes[0].name.as_str()));

    bounded(ch2.basic_qos(100, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&ch2, "fwd", false).await;
    let mut next_of: HashMap<String, usize> = HashMap::new();
    for _ in 0..2 * N {
        let d = next(&mut consumer).await;
        let body = text(&d);
        let (from, k) = body.split_once('-').unwrap();
        let k: usize = k.parse().unwrap();
        let expected = next_of.entry(from.to_owned()).or_default();
        assert_eq!(k, *expected, "{from}'s messages out of order");
        *expected += 1;
        bounded(d.ack(BasicAckOptions::default())).await.unwrap();
    }
    assert_eq!(next_of.get("n1"), Some(&N));
    assert_eq!(next_of.get("n2"), Some(&N));
    common::amqp::assert_quiet(&mut consumer).await;
    wait_until_async("the home node's queue empty and settled", || async {
        let q = call(nodes[0].broker(), "GET", "/api/queues/%2F/fwd", None)
            .await
            .body;
        q["messages_ready"] == 0 && q["messages_unacknowledged"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stomp_subscriber_on_one_node_gets_what_an_amqp_publisher_on_another_sent() {
    let nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "to-stomp", FieldTable::default()).await;
    wait_for_queue(&nodes, &[1, 2], "to-stomp").await;

    let mut stomp = StompClient::connect(nodes[1].broker().addrs().stomp[0], "1.2").await;
    stomp
        .subscribe("s1", "/amq/queue/to-stomp", "client-individual")
        .await;
    let conn = nodes[2].broker().connect().await;
    let ch = confirm_channel(&conn).await;
    for k in 0..3 {
        let p = publish_with(
            &ch,
            "",
            "to-stomp",
            format!("hello {k}").as_bytes(),
            persistent(),
        )
        .await;
        assert!(bounded(p).await.unwrap().is_ack());
    }
    for k in 0..3 {
        let m = stomp.message().await;
        assert_eq!(stomp_text(&m), format!("hello {k}"));
        let ack = m.header("ack").expect("ack header").to_owned();
        stomp
            .send_frame(
                &switchboard_stomp::Frame::new(switchboard_stomp::Command::Ack).with("id", &ack),
            )
            .await;
    }
    wait_until_async("the STOMP acks reach the home node", || async {
        let q = call(nodes[0].broker(), "GET", "/api/queues/%2F/to-stomp", None)
            .await
            .body;
        q["messages_ready"] == 0 && q["messages_unacknowledged"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_and_a_nack_requeue_on_a_remote_queue() {
    let nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "remote-get", FieldTable::default()).await;
    wait_for_queue(&nodes, &[1], "remote-get").await;
    let conn1 = nodes[1].broker().connect().await;
    let ch1 = confirm_channel(&conn1).await;
    for body in ["a", "b"] {
        let p = publish_with(&ch1, "", "remote-get", body.as_bytes(), persistent()).await;
        assert!(bounded(p).await.unwrap().is_ack());
    }
    // A passive declare on the proxy answers the home node's count.
    let declared =
        bounded(ch1.queue_declare("remote-get".into(), passive(), FieldTable::default()))
            .await
            .unwrap();
    assert_eq!(declared.message_count(), 2);

    let got = common::amqp::get(&ch1, "remote-get", false)
        .await
        .expect("a message from basic.get");
    assert_eq!(&got.delivery.data[..], b"a");
    assert_eq!(got.message_count, 1);
    bounded(got.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();

    let mut consumer = consume(&ch1, "remote-get", false).await;
    let first = next(&mut consumer).await;
    assert_eq!(text(&first), "b");
    assert!(!first.redelivered);
    bounded(first.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(text(&again), "b");
    assert!(
        again.redelivered,
        "a requeued message comes back redelivered"
    );
    bounded(again.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    wait_until_async("remote-get empty on its home node", || async {
        let q = call(nodes[0].broker(), "GET", "/api/queues/%2F/remote-get", None)
            .await
            .body;
        q["messages_ready"] == 0 && q["messages_unacknowledged"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_node_stopped_with_unacked_deliveries_gets_them_requeued_on_the_home_node() {
    let mut nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "unacked", FieldTable::default()).await;
    wait_for_queue(&nodes, &[2], "unacked").await;
    let conn = nodes[0].broker().connect().await;
    let ch = confirm_channel(&conn).await;
    for k in 0..5 {
        let p = publish_with(&ch, "", "unacked", format!("m{k}").as_bytes(), persistent()).await;
        assert!(bounded(p).await.unwrap().is_ack());
    }
    let conn2 = nodes[2].broker().connect().await;
    let ch2 = bounded(conn2.create_channel()).await.unwrap();
    let mut consumer = consume_with(&ch2, "unacked", "held", Default::default()).await;
    for _ in 0..5 {
        next(&mut consumer).await;
    }
    wait_until_async("five unacked on the home node", || async {
        let q = call(nodes[0].broker(), "GET", "/api/queues/%2F/unacked", None)
            .await
            .body;
        q["messages_unacknowledged"] == 5
    })
    .await;
    nodes[2].stop().await;
    drop(consumer);
    // Within the session lease (the cluster's operation timeout, 3 s here).
    wait_until_async("the stopped node's deliveries requeued", || async {
        let q = call(nodes[0].broker(), "GET", "/api/queues/%2F/unacked", None)
            .await
            .body;
        q["messages_ready"] == 5 && q["messages_unacknowledged"] == 0
    })
    .await;
    let mut again = consume(&ch0, "unacked", false).await;
    let d = next(&mut again).await;
    assert_eq!(text(&d), "m0");
    assert!(d.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_queue_whose_home_is_down_is_nacked_and_the_node_serves_on() {
    let mut nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "homeless", FieldTable::default()).await;
    wait_for_queue(&nodes, &[1], "homeless").await;
    drop(ch0);
    drop(_c0);
    nodes[0].stop().await;

    let conn = nodes[1].broker().connect().await;
    let ch = confirm_channel(&conn).await;
    let p = publish_with(&ch, "", "homeless", b"lost", persistent()).await;
    let c = tokio::time::timeout(WAIT, p)
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        c.is_nack(),
        "a publish its home node never took is not confirmed"
    );

    // The node still serves its own queues on the same channel.
    bounded(ch.queue_declare(
        "local-only".into(),
        lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let p = publish_with(&ch, "", "local-only", b"here", persistent()).await;
    assert!(bounded(p).await.unwrap().is_ack());
    let got = common::amqp::get(&ch, "local-only", true).await.unwrap();
    assert_eq!(&got.delivery.data[..], b"here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_on_its_home_cancels_consumers_on_other_nodes() {
    let nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "doomed", FieldTable::default()).await;
    wait_for_queue(&nodes, &[1], "doomed").await;
    let (_c1, ch1) = nodes[1].broker().channel().await;
    let mut consumer = consume(&ch1, "doomed", false).await;
    wait_until_async(
        "the remote consumer registered on the home node",
        || async {
            let q = call(nodes[0].broker(), "GET", "/api/queues/%2F/doomed", None)
                .await
                .body;
            q["consumers"] == 1
        },
    )
    .await;
    bounded(ch0.queue_delete("doomed".into(), Default::default()))
        .await
        .unwrap();
    // lapin ends the consumer's stream on basic.cancel (it asks for consumer_cancel_notify).
    use futures_util::StreamExt;
    let ended = bounded(consumer.next()).await;
    assert!(ended.is_none(), "expected basic.cancel, got {ended:?}");
}

/// Figures for the README: `FORWARD_BENCH=1 cargo test --release --test cluster_forward
/// forwarding_rates -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_rates() {
    if std::env::var_os("FORWARD_BENCH").is_none() {
        eprintln!("skipped: set FORWARD_BENCH=1 to measure forwarding rates");
        return;
    }
    let nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "rates", FieldTable::default()).await;
    wait_for_queue(&nodes, &[1, 2], "rates").await;
    let body = vec![7u8; 1024];
    for (publishers, persistent_msgs, n) in [(1, true, 2000), (8, true, 500), (1, false, 20000)] {
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..publishers {
            let conn = nodes[1].broker().connect().await;
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let ch = confirm_channel(&conn).await;
                let props = if persistent_msgs {
                    persistent()
                } else {
                    Default::default()
                };
                let mut pending = Vec::with_capacity(n);
                for _ in 0..n {
                    pending.push(publish_with(&ch, "", "rates", &body, props.clone()).await);
                }
                for p in pending {
                    assert!(bounded(p).await.unwrap().is_ack());
                }
                conn
            }));
        }
        for t in tasks {
            bounded(t).await.unwrap();
        }
        let total = publishers * n;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "forward: {publishers} publisher(s) on node 2, {} 1 KiB messages, confirmed: {total} in {secs:.2} s = {:.0} msg/s",
            if persistent_msgs { "persistent" } else { "transient" },
            total as f64 / secs
        );
        let started = std::time::Instant::now();
        let (_c2, ch2) = nodes[2].broker().channel().await;
        bounded(ch2.basic_qos(200, BasicQosOptions::default()))
            .await
            .unwrap();
        let mut consumer = consume(&ch2, "rates", false).await;
        for _ in 0..total {
            let d = next(&mut consumer).await;
            bounded(d.ack(BasicAckOptions::default())).await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "forward: consumer on node 3 (prefetch 200, acks): {total} in {secs:.2} s = {:.0} msg/s",
            total as f64 / secs
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_holds_a_proxy_again_and_forwards_to_the_home() {
    let mut nodes = form(3).await;
    let (_c0, ch0) = nodes[0].broker().channel().await;
    declare_durable(&ch0, "kept-home", FieldTable::default()).await;
    wait_for_queue(&nodes, &[1], "kept-home").await;
    nodes[1].stop().await;
    let seeds = vec![nodes[0].addr.clone()];
    nodes[1].restart(&seeds).await;
    // From its own store the queue is back, and a proxy again before anyone can use it.
    let q = nodes[1]
        .broker()
        .broker()
        .vhost("/")
        .unwrap()
        .queue("kept-home")
        .expect("the queue after a restart");
    assert_eq!(q.home_node(), Some(nodes[0].name.as_str()));
    let conn = nodes[1].broker().connect().await;
    let ch = confirm_channel(&conn).await;
    let p = publish_with(&ch, "", "kept-home", b"after restart", persistent()).await;
    assert!(bounded(p).await.unwrap().is_ack());
    assert_eq!(ready_on(&nodes, 0, "kept-home").await, 1);
}
