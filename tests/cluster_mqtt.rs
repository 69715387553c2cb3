#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! MQTT and STOMP state across the nodes of a cluster (three brokers in one process, as in
//! tests/cluster_definitions.rs): a client id taken over on another node closes the old
//! connection; a persistent session resumes on another node with its subscriptions; retained
//! messages set or cleared on one node are what every node holds; STOMP durable queues exist on
//! every node; an expired session is gone from every node; a node left alone refuses
//! persistent sessions and retained sets.

mod common;

use bytes::Bytes;
use common::cluster::{form, leader_of, Node};
use common::http::call;
use common::mqtt::{connect_packet, publish_packet, RawMqtt};
use common::stomp::StompClient;
use common::{wait_until, wait_until_async};
use switchboard::cluster::adapter::{MqttSessionRecord, MQTT_SESSION};
use switchboard::cluster::definitions;
use switchboard_mqtt::{reason, Packet, Protocol, PubResponse, QoS};

fn mqtt(node: &Node) -> std::net::SocketAddr {
    node.broker().addrs().mqtt[0]
}

/// A persistent CONNECT: v5 with a Session Expiry Interval of `expiry`, 3.1.1 without clean
/// session (`expiry` unused).
fn persistent(protocol: Protocol, client_id: &str, expiry: u32) -> switchboard_mqtt::Connect {
    let mut c = connect_packet(protocol, client_id, protocol != Protocol::V5);
    c.clean_start = false;
    if protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

/// Waits until `path` answers `status` on every running node.
async fn wait_on_all(nodes: &[Node], path: &str, status: u16) {
    for n in nodes.iter().filter(|n| n.broker.is_some()) {
        wait_until_async(&format!("{path} on {} to answer {status}", n.name), || {
            let b = n.broker();
            async move { call(b, "GET", path, None).await.status == status }
        })
        .await;
    }
}

/// Waits until every node holds a session for `client_id` (or, with `present` false, none).
async fn wait_for_session(nodes: &[Node], client_id: &str, present: bool) {
    for n in nodes {
        let state = n.broker().mqtt_state();
        wait_until(
            &format!("session {client_id} on {} = {present}", n.name),
            || {
                state
                    .session_summaries()
                    .iter()
                    .any(|s| s.client_id == client_id)
                    == present
            },
        )
        .await;
    }
}

async fn disconnect(mut c: RawMqtt) {
    c.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(c.closed().await, None, "nothing after our DISCONNECT");
}

async fn puback(c: &mut RawMqtt) -> u8 {
    match c.recv().await {
        Some(Packet::PubAck(a)) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_taken_over_on_another_node_closes_the_old_connection() {
    let nodes = form(3).await;

    // v5: the old connection gets DISCONNECT 0x8E; the new one resumes the session.
    let (mut old, ack) =
        RawMqtt::connect_with(mqtt(&nodes[0]), persistent(Protocol::V5, "tk5", 300)).await;
    assert_eq!((ack.code, ack.session_present), (0, false));
    assert_eq!(old.subscribe("tk/a", QoS::AtLeastOnce).await.codes, [1]);
    wait_for_session(&nodes, "tk5", true).await;
    let (mut new, ack) =
        RawMqtt::connect_with(mqtt(&nodes[1]), persistent(Protocol::V5, "tk5", 300)).await;
    assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
    match old.closed().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    // The session goes on on node 1, with its subscription.
    let mut publisher = RawMqtt::connect(mqtt(&nodes[1]), Protocol::V311, "tk-pub", true).await;
    publisher
        .publish("tk/a", QoS::AtLeastOnce, 1, b"after")
        .await;
    assert_eq!(puback(&mut publisher).await, 0);
    assert_eq!(&new.next_publish().await.payload[..], b"after");

    // 3.1.1: the old connection is closed.
    let mut old = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V311, "tk3", false).await;
    wait_for_session(&nodes, "tk3", true).await;
    let (_new, ack) =
        RawMqtt::connect_with(mqtt(&nodes[2]), persistent(Protocol::V311, "tk3", 0)).await;
    assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
    assert_eq!(
        old.closed().await,
        None,
        "3.1.1 has no DISCONNECT from the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_reconnect_to_another_node() {
    let nodes = form(3).await;
    let mut c = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V311, "roam", false).await;
    assert_eq!(c.subscribe("roam/+", QoS::AtLeastOnce).await.codes, [1]);
    disconnect(c).await;
    // The session's queue and its binding are definitions of every node.
    wait_on_all(&nodes, "/api/queues/%2F/mqtt-subscription-roam", 200).await;
    wait_for_session(&nodes, "roam", true).await;

    let (mut c, ack) =
        RawMqtt::connect_with(mqtt(&nodes[2]), persistent(Protocol::V311, "roam", 0)).await;
    assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
    let mut publisher = RawMqtt::connect(mqtt(&nodes[2]), Protocol::V311, "roam-pub", true).await;
    publisher
        .publish("roam/x", QoS::AtLeastOnce, 1, b"here")
        .await;
    assert_eq!(puback(&mut publisher).await, 0);
    let p = c.next_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("roam/x", &b"here"[..]));
    assert_eq!(p.qos, QoS::AtLeastOnce, "the subscription's QoS came along");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_offline_arrive_on_reconnect_to_another_node() {
    let nodes = form(3).await;
    let mut c = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V311, "away", false).await;
    assert_eq!(c.subscribe("away/t", QoS::AtLeastOnce).await.codes, [1]);
    disconnect(c).await;
    wait_on_all(&nodes, "/api/queues/%2F/mqtt-subscription-away", 200).await;
    let mut publisher = RawMqtt::connect(mqtt(&nodes[1]), Protocol::V311, "away-pub", true).await;
    publisher
        .publish("away/t", QoS::AtLeastOnce, 1, b"kept")
        .await;
    assert_eq!(puback(&mut publisher).await, 0);
    let (mut c, ack) =
        RawMqtt::connect_with(mqtt(&nodes[2]), persistent(Protocol::V311, "away", 0)).await;
    assert_eq!((ack.code, ack.session_present), (0, true));
    assert_eq!(&c.next_publish().await.payload[..], b"kept");
}

/// The session record of `client_id` as `node` has applied it.
fn session_record(node: &Node, client_id: &str) -> Option<MqttSessionRecord> {
    let cluster = node.broker().broker().cluster.get()?;
    let key = definitions::key(MQTT_SESSION, &["/", client_id]);
    serde_json::from_value(cluster.get(&key)?).ok()
}

async fn expect_response(c: &mut RawMqtt, what: &str) -> PubResponse {
    match (what, c.recv().await) {
        ("PUBREC", Some(Packet::PubRec(r)))
        | ("PUBREL", Some(Packet::PubRel(r)))
        | ("PUBCOMP", Some(Packet::PubComp(r))) => r,
        (_, other) => panic!("expected {what}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_flows_go_on_where_the_client_comes_back_on_another_node() {
    let nodes = form(3).await;
    // The subscriber's session (and its queue) is made on node 0.
    let (mut sub, _) =
        RawMqtt::connect_with(mqtt(&nodes[0]), persistent(Protocol::V5, "q2-sub", 300)).await;
    assert_eq!(sub.subscribe("q2/t", QoS::ExactlyOnce).await.codes, [2]);
    wait_for_session(&nodes, "q2-sub", true).await;

    // Inbound: node 0 answers PUBREC, which the client does not get; it sends the PUBLISH
    // again to node 1, which knows the id and routes nothing.
    let (mut publisher, _) =
        RawMqtt::connect_with(mqtt(&nodes[0]), persistent(Protocol::V5, "q2-pub", 300)).await;
    publisher
        .publish("q2/t", QoS::ExactlyOnce, 11, b"once")
        .await;
    assert_eq!(expect_response(&mut publisher, "PUBREC").await.reason, 0);
    drop(publisher);
    let (mut publisher, ack) =
        RawMqtt::connect_with(mqtt(&nodes[1]), persistent(Protocol::V5, "q2-pub", 300)).await;
    assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
    let mut again = publish_packet("q2/t", QoS::ExactlyOnce, 11, b"once");
    again.dup = true;
    publisher.send(&Packet::Publish(again)).await;
    assert_eq!(expect_response(&mut publisher, "PUBREC").await.reason, 0);
    publisher.send(&Packet::PubRel(PubResponse::new(11))).await;
    assert_eq!(expect_response(&mut publisher, "PUBCOMP").await.reason, 0);

    // Outbound: node 0 sent the message; the client acknowledges nothing and comes back on
    // node 2 once the cluster has the message's packet id (the PUBLISH does not wait for
    // it). Node 2 sends it again with the same id, as a duplicate.
    let first = sub.next_publish().await;
    assert_eq!(
        (&first.payload[..], first.qos),
        (&b"once"[..], QoS::ExactlyOnce)
    );
    let id = first.packet_id.expect("QoS 2 has a packet id");
    wait_until("node 2 to hold the message's packet id", || {
        session_record(&nodes[2], "q2-sub")
            .is_some_and(|r| r.qos2.in_flight.iter().any(|f| f.0 == id))
    })
    .await;
    drop(sub);
    let (mut sub, ack) =
        RawMqtt::connect_with(mqtt(&nodes[2]), persistent(Protocol::V5, "q2-sub", 300)).await;
    assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
    let resent = sub.next_publish().await;
    assert_eq!(
        (resent.packet_id, resent.dup, &resent.payload[..]),
        (Some(id), true, &b"once"[..])
    );
    sub.send(&Packet::PubRec(PubResponse::new(id))).await;
    assert_eq!(expect_response(&mut sub, "PUBREL").await.packet_id, id);

    // The client leaves before PUBCOMP: node 1 sends PUBREL again.
    drop(sub);
    let (mut sub, ack) =
        RawMqtt::connect_with(mqtt(&nodes[1]), persistent(Protocol::V5, "q2-sub", 300)).await;
    assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
    assert_eq!(expect_response(&mut sub, "PUBREL").await.packet_id, id);
    sub.send(&Packet::PubComp(PubResponse::new(id))).await;
    // Delivered once: the publisher's resend was not routed again, and nothing else is due.
    sub.expect_nothing_pending().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_set_on_one_node_is_on_every_node_and_a_clear_everywhere() {
    let nodes = form(3).await;
    let mut setter = RawMqtt::connect(mqtt(&nodes[1]), Protocol::V5, "ret-set", true).await;
    let mut p = publish_packet("ret/t", QoS::AtLeastOnce, 1, b"kept");
    p.retain = true;
    setter.send(&Packet::Publish(p)).await;
    // v5 says 0x10 when nobody subscribed: the message is retained all the same.
    assert_eq!(puback(&mut setter).await, reason::NO_MATCHING_SUBSCRIBERS);
    for n in &nodes {
        let state = n.broker().mqtt_state();
        wait_until(&format!("retained on {}", n.name), || {
            state.retained_count() == 1
        })
        .await;
    }
    let mut sub = RawMqtt::connect(mqtt(&nodes[2]), Protocol::V311, "ret-sub", true).await;
    assert_eq!(sub.subscribe("ret/#", QoS::AtLeastOnce).await.codes, [1]);
    let got = sub.next_publish().await;
    assert_eq!((got.topic.as_str(), got.retain), ("ret/t", true));
    assert_eq!(&got.payload[..], b"kept");

    // Cleared on node 0: gone everywhere.
    let mut clearer = RawMqtt::connect(mqtt(&nodes[0]), Protocol::V311, "ret-clear", true).await;
    let mut p = publish_packet("ret/t", QoS::AtLeastOnce, 1, b"");
    p.retain = true;
    p.payload = Bytes::new();
    clearer.send(&Packet::Publish(p)).await;
    assert_eq!(puback(&mut clearer).await, 0);
    for n in &nodes {
        let state = n.broker().mqtt_state();
        wait_until(&format!("no retained on {}", n.name), || {
            state.retained_count() == 0
        })
        .await;
    }
    for n in &nodes {
        let mut late = RawMqtt::connect(mqtt(n), Protocol::V311, "ret-late", true).await;
        assert_eq!(late.subscribe("ret/#", QoS::AtLeastOnce).await.codes, [1]);
        late.expect_nothing_pending().await;
        disconnect(late).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_durable_queues_and_subscriptions_are_on_every_node() {
    let nodes = form(3).await;
    let mut c = StompClient::connect(nodes[0].broker().addrs().stomp[0], "1.2").await;
    c.subscribe("s1", "/queue/stomp-q", "auto").await;
    wait_on_all(&nodes, "/api/queues/%2F/stomp-q", 200).await;
    // A durable /topic subscription: its queue and its binding.
    c.subscribe_with(
        "s2",
        "/topic/news",
        "auto",
        &[
            ("durable", "true"),
            ("auto-delete", "false"),
            ("x-queue-name", "stomp-news"),
        ],
    )
    .await;
    wait_on_all(&nodes, "/api/queues/%2F/stomp-news", 200).await;
    for n in &nodes {
        wait_until_async(&format!("binding news on {}", n.name), || {
            let b = n.broker();
            async move {
                let bindings = call(b, "GET", "/api/queues/%2F/stomp-news/bindings", None)
                    .await
                    .body;
                bindings.as_array().is_some_and(|all| {
                    all.iter()
                        .any(|x| x["source"] == "amq.topic" && x["routing_key"] == "news")
                })
            }
        })
        .await;
    }
    // UNSUBSCRIBE with durable:true ends it on every node.
    c.request(
        switchboard_stomp::Frame::new(switchboard_stomp::Command::Unsubscribe)
            .with("id", "s2")
            .with("durable", "true"),
    )
    .await;
    wait_on_all(&nodes, "/api/queues/%2F/stomp-news", 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_removes_the_records_on_every_node() {
    let nodes = form(3).await;
    let (mut c, ack) =
        RawMqtt::connect_with(mqtt(&nodes[1]), persistent(Protocol::V5, "brief", 1)).await;
    assert_eq!(ack.code, 0);
    assert_eq!(c.subscribe("brief/t", QoS::AtLeastOnce).await.codes, [1]);
    wait_on_all(&nodes, "/api/queues/%2F/mqtt-subscription-brief", 200).await;
    wait_for_session(&nodes, "brief", true).await;
    disconnect(c).await;
    wait_on_all(&nodes, "/api/queues/%2F/mqtt-subscription-brief", 404).await;
    wait_for_session(&nodes, "brief", false).await;
    for n in &nodes {
        let records = n.consensus().list("mqtt-");
        assert!(
            records.iter().all(|(k, _)| !k.contains("\"brief\"")),
            "{}: {records:?}",
            n.name
        );
    }
}

/// Three nodes, and the one (not the leader) that [`leave_alone`] leaves running.
async fn with_a_survivor() -> (Vec<Node>, usize) {
    let nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    (nodes, (leader + 1) % 3)
}

/// Stops every node but `survivor`, which is then a minority of one.
async fn leave_alone(nodes: &mut [Node], survivor: usize) {
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != survivor {
            node.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_alone_refuses_persistent_sessions_and_retained_sets() {
    let (mut nodes, survivor) = with_a_survivor().await;
    let addr = mqtt(&nodes[survivor]);
    let (mut held, ack) =
        RawMqtt::connect_with(addr, persistent(Protocol::V5, "lone-q2", 60)).await;
    assert_eq!(ack.code, 0);
    leave_alone(&mut nodes, survivor).await;
    // A QoS 2 publish of a session the cluster holds: its packet id cannot be committed, so
    // no PUBREC; the connection closes (the client sends again, to a node that can).
    held.publish("lone/q2", QoS::ExactlyOnce, 5, b"x").await;
    match held.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::SERVER_BUSY),
        other => panic!("expected DISCONNECT 0x89, got {other:?}"),
    }
    assert_eq!(held.closed().await, None);
    let (_, ack) = RawMqtt::connect_with(addr, persistent(Protocol::V5, "lone5", 60)).await;
    assert_eq!(ack.code, reason::SERVER_UNAVAILABLE);
    let (_, ack) = RawMqtt::connect_with(addr, persistent(Protocol::V311, "lone3", 0)).await;
    assert_eq!(ack.code, reason::V3_SERVER_UNAVAILABLE);
    // A clean session has nothing to diverge on: it is served here alone.
    let mut clean = RawMqtt::connect(addr, Protocol::V5, "lone-clean", true).await;
    let mut p = publish_packet("lone/t", QoS::AtLeastOnce, 1, b"x");
    p.retain = true;
    clean.send(&Packet::Publish(p)).await;
    assert_eq!(
        puback(&mut clean).await,
        reason::IMPLEMENTATION_SPECIFIC_ERROR
    );
    assert_eq!(nodes[survivor].broker().mqtt_state().retained_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_message_is_not_sent_under_a_packet_id_the_cluster_does_not_hold() {
    let (mut nodes, survivor) = with_a_survivor().await;
    let addr = mqtt(&nodes[survivor]);
    let (mut subscriber, ack) =
        RawMqtt::connect_with(addr, persistent(Protocol::V5, "lone-out", 60)).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        subscriber
            .subscribe("lone/out", QoS::ExactlyOnce)
            .await
            .codes,
        [2]
    );
    leave_alone(&mut nodes, survivor).await;
    // The session's queue is on this node, so the message reaches it; its packet id cannot
    // be committed, so no PUBLISH goes out under it (a node the client moved to would send
    // the message under another id, a new message to the client): the connection closes.
    let mut publisher = RawMqtt::connect(addr, Protocol::V5, "lone-publisher", true).await;
    publisher
        .publish("lone/out", QoS::ExactlyOnce, 1, b"once")
        .await;
    match subscriber.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason::SERVER_BUSY),
        other => panic!("expected DISCONNECT 0x89 and no PUBLISH, got {other:?}"),
    }
    assert_eq!(subscriber.closed().await, None);
}
