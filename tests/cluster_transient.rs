#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Transient and exclusive queues across nodes (three brokers in one process, as in
//! tests/cluster_definitions.rs): every node routes to them, their home node holds them, and
//! their records go with them. An AMQP exclusive server-named queue, a clean MQTT session's
//! queue, a STOMP topic subscription's queue and a shared MQTT group's queue each get what a
//! publisher on another node sends, and are gone from every node once their owner lets go.

mod common;

use common::amqp::{amqp_error, consume, next, publish, text};
use common::cluster::{form, form_tweaked, Node};
use common::http::call;
use common::mqtt::RawMqtt;
use common::stomp::{text as stomp_text, StompClient};
use common::{bounded, wait_until_async, WAIT};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::sync::Arc;
use switchboard::core::clock::SystemClock;
use switchboard_mqtt::{Packet, Protocol, QoS};

fn mqtt(node: &Node) -> std::net::SocketAddr {
    node.broker().addrs().mqtt[0]
}

fn queue_path(name: &str) -> String {
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/api/queues/%2F/{encoded}")
}

/// Waits until `path` answers `status` on every node.
async fn wait_on_all(nodes: &[Node], path: &str, status: u16) {
    for n in nodes {
        wait_until_async(&format!("{path} on {} to answer {status}", n.name), || {
            let b = n.broker();
            async move { call(b, "GET", path, None).await.status == status }
        })
        .await;
    }
}

/// Waits until every node routes from `exchange` to queue `name` (its binding replicated).
async fn wait_for_binding(nodes: &[Node], name: &str, exchange: &str) {
    let path = format!("{}/bindings", queue_path(name));
    for n in nodes {
        wait_until_async(&format!("{name} bound on {}", n.name), || {
            let (b, path) = (n.broker(), path.clone());
            async move {
                let r = call(b, "GET", &path, None).await;
                r.status == 200
                    && r.body
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x["source"] == exchange))
            }
        })
        .await;
    }
}

/// Waits until the group queue `queue` has two consumers on its home node.
async fn both_members_consume(home: &Node, queue: &str) {
    wait_until_async("both members consume at the group's home", || async {
        let q = call(home.broker(), "GET", &queue_path(queue), None)
            .await
            .body;
        q["consumers"] == 2
    })
    .await;
}

async fn puback(c: &mut RawMqtt) {
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, 0),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_queue_gets_publishes_from_every_node_and_goes_with_its_connection() {
    let nodes = form(3).await;
    let (c0, ch0) = nodes[0].broker().channel().await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let q = bounded(ch0.queue_declare("".into(), exclusive, FieldTable::default()))
        .await
        .unwrap();
    let name = q.name().as_str().to_owned();
    bounded(ch0.queue_bind(
        name.as_str().into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    wait_for_binding(&nodes, &name, "amq.fanout").await;
    let mut consumer = consume(&ch0, &name, true).await;

    for i in [1, 2] {
        let (_c, ch) = nodes[i].broker().channel().await;
        publish(&ch, "amq.fanout", "", format!("from {i}").as_bytes()).await;
        assert_eq!(text(&next(&mut consumer).await), format!("from {i}"));
    }

    // Another node's connection may not use it (RabbitMQ's RESOURCE_LOCKED).
    let (_c1, ch1) = nodes[1].broker().channel().await;
    let refused = bounded(ch1.basic_consume(
        name.as_str().into(),
        "thief".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    let err = refused.expect_err("consuming another's exclusive queue");
    assert_eq!(amqp_error(&err).map(|(code, _)| code), Some(405), "{err:?}");

    bounded(c0.close(200, "bye".into())).await.unwrap();
    wait_on_all(&nodes, &queue_path(&name), 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_mqtt_session_gets_publishes_from_every_node_and_its_queue_goes_with_it() {
    let nodes = form(3).await;
    let mut sub = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V5, "clean-sub", true).await;
    assert_eq!(sub.subscribe("cl/t", QoS::AtLeastOnce).await.codes, [1]);
    let queue = "mqtt-subscription-clean-sub";
    wait_for_binding(&nodes, queue, "amq.topic").await;

    let mut publisher = RawMqtt::connect(mqtt(&nodes[1]), Protocol::V311, "clean-pub", true).await;
    publisher
        .publish("cl/t", QoS::AtLeastOnce, 1, b"mqtt")
        .await;
    puback(&mut publisher).await;
    assert_eq!(&sub.next_publish().await.payload[..], b"mqtt");

    let (_c, ch) = nodes[2].broker().channel().await;
    publish(&ch, "amq.topic", "cl.t", b"amqp").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"amqp");

    sub.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(sub.closed().await, None);
    wait_on_all(&nodes, &queue_path(queue), 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stomp_topic_subscriber_gets_what_a_publisher_on_another_node_sent() {
    let nodes = form(3).await;
    let mut stomp = StompClient::connect(nodes[0].broker().addrs().stomp[0], "1.2").await;
    stomp.subscribe("t1", "/topic/st.x", "auto").await;
    let queue = wait_until_async("the subscription's queue on node 1", || async {
        let r = call(nodes[1].broker(), "GET", "/api/queues/%2F", None).await;
        r.body.as_array().is_some_and(|a| {
            a.iter().any(|q| {
                q["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("stomp-subscription-"))
            })
        })
    });
    queue.await;
    let listed = call(nodes[1].broker(), "GET", "/api/queues/%2F", None)
        .await
        .body;
    let name = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .find(|n| n.starts_with("stomp-subscription-"))
        .unwrap()
        .to_owned();
    wait_for_binding(&nodes, &name, "amq.topic").await;
    let (_c, ch) = nodes[2].broker().channel().await;
    publish(&ch, "amq.topic", "st.x", b"to stomp").await;
    assert_eq!(stomp_text(&stomp.message().await), "to stomp");
}

/// The payload of the next PUBLISH `a` or `b` receives, and which of them got it.
async fn next_of_two(a: &mut RawMqtt, b: &mut RawMqtt) -> (usize, Vec<u8>) {
    let got = tokio::time::timeout(WAIT, async {
        tokio::select! {
            p = a.recv() => (0, p),
            p = b.recv() => (1, p),
        }
    })
    .await
    .expect("a PUBLISH for a member in time");
    match got {
        (i, Some(Packet::Publish(p))) => (i, p.payload.to_vec()),
        (i, other) => panic!("member {i}: expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_members_on_two_nodes_share_what_a_third_publishes() {
    let nodes = form(3).await;
    let filter = "$share/g/sh/t";
    let mut m0 = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V5, "member-0", true).await;
    assert_eq!(m0.subscribe(filter, QoS::AtMostOnce).await.codes, [0]);
    let mut m1 = RawMqtt::connect(mqtt(&nodes[1]), Protocol::V5, "member-1", true).await;
    assert_eq!(m1.subscribe(filter, QoS::AtMostOnce).await.codes, [0]);
    let queue = "mqtt-shared-g/sh/t";
    wait_for_binding(&nodes, queue, "amq.topic").await;
    both_members_consume(&nodes[0], queue).await;

    let mut publisher = RawMqtt::connect(mqtt(&nodes[2]), Protocol::V5, "sh-pub", true).await;
    const N: usize = 20;
    for k in 0..N {
        publisher
            .publish(
                "sh/t",
                QoS::AtLeastOnce,
                1 + k as u16,
                format!("m{k}").as_bytes(),
            )
            .await;
        puback(&mut publisher).await;
    }
    let mut seen = HashSet::new();
    let mut per_member = [0; 2];
    for _ in 0..N {
        let (i, payload) = next_of_two(&mut m0, &mut m1).await;
        assert!(seen.insert(payload), "each message reaches one member once");
        per_member[i] += 1;
    }
    assert!(per_member.iter().all(|&n| n > 0), "{per_member:?}");
    m0.expect_nothing_pending().await;
    m1.expect_nothing_pending().await;

    // The member at the group's home leaves: every message goes to the other.
    let unsub = Packet::Unsubscribe(switchboard_mqtt::Unsubscribe {
        packet_id: 7,
        properties: Default::default(),
        filters: vec![filter.to_owned()],
    });
    m0.send(&unsub).await;
    assert!(matches!(m0.recv().await, Some(Packet::UnsubAck(_))));
    for k in 0..5 {
        let payload = format!("after {k}");
        publisher
            .publish("sh/t", QoS::AtLeastOnce, 100 + k, payload.as_bytes())
            .await;
        puback(&mut publisher).await;
        assert_eq!(m1.next_publish().await.payload, payload.as_bytes());
    }
    m0.expect_nothing_pending().await;

    // The last member leaves: the group's queue is gone from every node.
    m1.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(m1.closed().await, None);
    wait_on_all(&nodes, &queue_path(queue), 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_home_node_removes_the_records_of_the_transient_queues_it_lost() {
    let mut nodes = form(3).await;
    {
        let (_c, ch) = nodes[1].broker().channel().await;
        bounded(ch.queue_declare("short-lived".into(), Default::default(), Default::default()))
            .await
            .unwrap();
        wait_on_all(&nodes, &queue_path("short-lived"), 200).await;
        nodes[1].stop().await;
    }
    // Down, its transient queue is still known elsewhere (as a durable one's would be).
    for i in [0, 2] {
        let q = call(nodes[i].broker(), "GET", &queue_path("short-lived"), None).await;
        assert_eq!(
            (q.status, q.body["node"].as_str()),
            (200, Some(nodes[1].name.as_str()))
        );
    }
    let seeds = vec![nodes[0].addr.clone()];
    nodes[1].restart(&seeds).await;
    wait_on_all(&nodes, &queue_path("short-lived"), 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_resumed_on_another_node_rejoins_its_shared_group() {
    let nodes = form(3).await;
    let filter = "$share/roam/rs/t";
    let queue = "mqtt-shared-roam/rs/t";
    // A member that stays, on node 0 (the group's home).
    let mut stays = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V5, "stays", true).await;
    assert_eq!(stays.subscribe(filter, QoS::AtMostOnce).await.codes, [0]);
    let mut connect = common::mqtt::connect_packet(Protocol::V5, "roamer", false);
    connect.properties.session_expiry_interval = Some(300);
    let (mut roamer, _) = RawMqtt::connect_with(mqtt(&nodes[1]), connect.clone()).await;
    assert_eq!(roamer.subscribe(filter, QoS::AtMostOnce).await.codes, [0]);
    roamer.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(roamer.closed().await, None);
    // Resumed on node 2, it is a member again without subscribing.
    let (mut roamer, ack) = RawMqtt::connect_with(mqtt(&nodes[2]), connect).await;
    assert!(ack.session_present, "{ack:?}");
    both_members_consume(&nodes[0], queue).await;
    stays.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(stays.closed().await, None);
    let mut publisher = RawMqtt::connect(mqtt(&nodes[1]), Protocol::V5, "rs-pub", true).await;
    publisher
        .publish("rs/t", QoS::AtLeastOnce, 1, b"to the roamer")
        .await;
    puback(&mut publisher).await;
    assert_eq!(&roamer.next_publish().await.payload[..], b"to the roamer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_node_removes_the_records_of_its_transient_queues() {
    let mut nodes = form(3).await;
    let (_c, ch) = nodes[2].broker().channel().await;
    bounded(ch.queue_declare("on-gone".into(), Default::default(), Default::default()))
        .await
        .unwrap();
    wait_on_all(&nodes, &queue_path("on-gone"), 200).await;
    let gone = nodes[2].name.clone();
    nodes[2].stop().await;
    let r = call(
        nodes[0].broker(),
        "DELETE",
        &format!("/api/switchboard/cluster/nodes/{gone}"),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    wait_on_all(&nodes[..2], &queue_path("on-gone"), 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_taken_over_on_another_node_gets_a_queue_there() {
    let nodes = form(3).await;
    let mut old = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V5, "moving", true).await;
    assert_eq!(old.subscribe("mv/old", QoS::AtLeastOnce).await.codes, [1]);
    let queue = "mqtt-subscription-moving";
    wait_for_binding(&nodes, queue, "amq.topic").await;

    let mut new = RawMqtt::connect(mqtt(&nodes[1]), Protocol::V5, "moving", true).await;
    match old.closed().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, switchboard_mqtt::reason::SESSION_TAKEN_OVER)
        }
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert_eq!(new.subscribe("mv/new", QoS::AtLeastOnce).await.codes, [1]);
    wait_until_async("the new session's queue is held by node 1", || async {
        let q = call(nodes[2].broker(), "GET", &queue_path(queue), None).await;
        q.status == 200 && q.body["node"] == nodes[1].name.as_str()
    })
    .await;
    wait_for_binding(&nodes, queue, "amq.topic").await;
    let mut publisher = RawMqtt::connect(mqtt(&nodes[2]), Protocol::V5, "mv-pub", true).await;
    // The clean start left the old subscription behind: nobody matches (v5 PUBACK 0x10).
    publisher
        .publish("mv/old", QoS::AtLeastOnce, 1, b"old")
        .await;
    match publisher.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, 0x10),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    publisher
        .publish("mv/new", QoS::AtLeastOnce, 2, b"new")
        .await;
    puback(&mut publisher).await;
    let p = new.next_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("mv/new", &b"new"[..]));
    new.expect_nothing_pending().await;
}

/// Three nodes that find a silent member down after a second; the indexes of the metadata
/// leader and of the two others.
async fn quick_down_cluster() -> (Vec<Node>, [usize; 3]) {
    let nodes = form_tweaked(3, Arc::new(SystemClock), &|_, c| {
        c.node_down_after_ms = 1000;
    })
    .await;
    let leader = common::cluster::leader_of(&nodes).await;
    (nodes, [leader, (leader + 1) % 3, (leader + 2) % 3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_answering_goes_with_its_transient_queues_and_keeps_its_durable_ones() {
    let (mut nodes, [leader, home, other]) = quick_down_cluster().await;
    {
        let (_c, ch) = nodes[home].broker().channel().await;
        bounded(ch.queue_declare("left-behind".into(), Default::default(), Default::default()))
            .await
            .unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        bounded(ch.queue_declare("kept-durable".into(), durable, Default::default()))
            .await
            .unwrap();
    }
    wait_on_all(&nodes, &queue_path("left-behind"), 200).await;
    wait_on_all(&nodes, &queue_path("kept-durable"), 200).await;
    nodes[home].stop().await;

    // The leader finds the node silent past node_down_after_ms: its transient queue is gone
    // from the others (as RabbitMQ deletes a gone node's transient queues), its durable one
    // stays, homed there.
    let up = [&nodes[leader], &nodes[other]];
    for n in up {
        wait_until_async(&format!("left-behind gone from {}", n.name), || async {
            call(n.broker(), "GET", &queue_path("left-behind"), None)
                .await
                .status
                == 404
        })
        .await;
        let q = call(n.broker(), "GET", &queue_path("kept-durable"), None).await;
        assert_eq!(
            (q.status, q.body["node"].as_str()),
            (200, Some(nodes[home].name.as_str()))
        );
    }

    // A client of the gone node declares its queue again on another, and is served there.
    let (_c, ch) = nodes[other].broker().channel().await;
    bounded(ch.queue_declare("left-behind".into(), Default::default(), Default::default()))
        .await
        .unwrap();
    let mut consumer = consume(&ch, "left-behind", true).await;
    wait_until_async("left-behind known on the leader", || async {
        call(
            nodes[leader].broker(),
            "GET",
            &queue_path("left-behind"),
            None,
        )
        .await
        .status
            == 200
    })
    .await;
    let (_pc, pch) = nodes[leader].broker().channel().await;
    publish(&pch, "", "left-behind", b"found again").await;
    assert_eq!(&next(&mut consumer).await.data[..], b"found again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_whose_home_node_goes_is_made_again_by_a_member_elsewhere() {
    let (mut nodes, [leader, home, other]) = quick_down_cluster().await;
    let filter = "$share/outlive/ol/t";
    let queue = "mqtt-shared-outlive/ol/t";
    let mut first = RawMqtt::connect(mqtt(&nodes[home]), Protocol::V5, "ol-home", true).await;
    assert_eq!(first.subscribe(filter, QoS::AtMostOnce).await.codes, [0]);
    wait_on_all(&nodes, &queue_path(queue), 200).await;
    let mut second = RawMqtt::connect(mqtt(&nodes[other]), Protocol::V5, "ol-other", true).await;
    assert_eq!(second.subscribe(filter, QoS::AtMostOnce).await.codes, [0]);
    drop(first);
    nodes[home].stop().await;

    // Once the leader finds the home down, the group's queue goes and the member on the
    // other node makes it again there, staying connected.
    let up = [&nodes[leader], &nodes[other]];
    for n in up {
        wait_until_async(
            &format!("the group's queue homed at {}", nodes[other].name),
            || async {
                let q = call(n.broker(), "GET", &queue_path(queue), None).await;
                q.status == 200 && q.body["node"].as_str() == Some(nodes[other].name.as_str())
            },
        )
        .await;
    }
    wait_for_binding(&nodes[leader..=leader], queue, "amq.topic").await;
    wait_for_binding(&nodes[other..=other], queue, "amq.topic").await;
    let mut publisher = RawMqtt::connect(mqtt(&nodes[leader]), Protocol::V5, "ol-pub", true).await;
    publisher
        .publish("ol/t", QoS::AtMostOnce, 0, b"outlived")
        .await;
    assert_eq!(&second.next_publish().await.payload[..], b"outlived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_whose_node_goes_expires_on_the_nodes_left() {
    let (mut nodes, [leader, home, other]) = quick_down_cluster().await;
    let mut connect = common::mqtt::connect_packet(Protocol::V5, "gone-with-node", false);
    connect.properties.session_expiry_interval = Some(1);
    let (mut c, ack) = RawMqtt::connect_with(mqtt(&nodes[home]), connect).await;
    assert_eq!(ack.code, 0);
    assert_eq!(c.subscribe("gwn/t", QoS::AtLeastOnce).await.codes, [1]);
    let queue = queue_path("mqtt-subscription-gone-with-node");
    wait_on_all(&nodes, &queue, 200).await;
    // The client is connected when its node goes: no other node would end its session, until
    // the leader finds the node down and takes the session over to expire it.
    nodes[home].stop().await;
    drop(c);
    for n in [&nodes[leader], &nodes[other]] {
        wait_until_async(&format!("the session gone from {}", n.name), || async {
            let records = n.consensus().list("mqtt-");
            let gone = records
                .iter()
                .all(|(k, _)| !k.contains("\"gone-with-node\""));
            gone && call(n.broker(), "GET", &queue, None).await.status == 404
        })
        .await;
        assert!(
            !n.broker()
                .mqtt_state()
                .session_summaries()
                .iter()
                .any(|s| s.client_id == "gone-with-node"),
            "{}",
            n.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_of_a_client_whose_node_goes_is_published_by_the_nodes_left() {
    use switchboard_mqtt::{Properties, Will};
    let (mut nodes, [leader, home, other]) = quick_down_cluster().await;
    let mut watcher =
        RawMqtt::connect(mqtt(&nodes[other]), Protocol::V5, "will-watcher", true).await;
    assert_eq!(
        watcher.subscribe("wills/+", QoS::AtLeastOnce).await.codes,
        [1]
    );
    wait_on_all(&nodes, &queue_path("mqtt-subscription-will-watcher"), 200).await;
    let with_will = |id: &str| {
        let mut connect = common::mqtt::connect_packet(Protocol::V5, id, true);
        connect.will = Some(Will {
            topic: format!("wills/{id}"),
            payload: bytes::Bytes::from(format!("{id} is gone")),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
        connect
    };
    let will_records = |n: &Node| n.consensus().list("mqtt-will/");
    // A will the client discards (DISCONNECT 0x00) leaves the cluster with its connection.
    let (mut discarding, ack) =
        RawMqtt::connect_with(mqtt(&nodes[home]), with_will("discarding")).await;
    assert_eq!(ack.code, 0);
    let (held, ack) = RawMqtt::connect_with(mqtt(&nodes[home]), with_will("holding")).await;
    assert_eq!(ack.code, 0);
    common::wait_until("both wills to be the cluster's", || {
        will_records(&nodes[leader]).len() == 2
    })
    .await;
    discarding
        .send(&Packet::Disconnect(Default::default()))
        .await;
    assert!(discarding.closed().await.is_none());
    common::wait_until("the discarded will to leave the cluster", || {
        let left = will_records(&nodes[leader]);
        left.len() == 1 && left[0].0.contains("\"holding\"")
    })
    .await;
    // The holding client's node goes with its connection: the leader publishes the will.
    nodes[home].stop().await;
    drop(held);
    let will = watcher.next_publish().await;
    assert_eq!(will.topic, "wills/holding");
    assert_eq!(&will.payload[..], b"holding is gone");
    for n in [&nodes[leader], &nodes[other]] {
        common::wait_until(&format!("the will gone from {}", n.name), || {
            will_records(n).is_empty()
        })
        .await;
    }
    watcher.expect_nothing_pending().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_process_is_gone_is_down_at_once() {
    // A minute before a silent node is down by the clock: only its refused address can make
    // it so within the test's wait.
    let nodes = form_tweaked(3, Arc::new(SystemClock), &|_, c| {
        c.node_down_after_ms = 60_000;
    })
    .await;
    let leader = common::cluster::leader_of(&nodes).await;
    let (home, other) = ((leader + 1) % 3, (leader + 2) % 3);
    {
        let (_c, ch) = nodes[home].broker().channel().await;
        bounded(ch.queue_declare(
            "gone-at-once".into(),
            Default::default(),
            Default::default(),
        ))
        .await
        .unwrap();
    }
    wait_on_all(&nodes, &queue_path("gone-at-once"), 200).await;
    let mut nodes = nodes;
    nodes[home].stop().await;
    for n in [&nodes[leader], &nodes[other]] {
        wait_until_async(&format!("gone-at-once gone from {}", n.name), || async {
            call(n.broker(), "GET", &queue_path("gone-at-once"), None)
                .await
                .status
                == 404
        })
        .await;
    }
}
