#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Quorum queues on three brokers in one process: each queue its own Raft group over the
//! three nodes. Declared on one node, listed on every node with its leader and members;
//! publisher confirms come once a majority has the message; consumers are served on the
//! leader, those on other nodes through it (and moved to the new leader when the lead moves); stopping the leader elects another that has every confirmed message; a lone node
//! confirms nothing; `x-delivery-limit` dead-letters with reason `delivery_limit`.

mod common;

use common::amqp::{
    args, assert_amqp_err, declare_durable, longstr, next, persistent, publish_with,
};
use common::cluster::{form, form_with_clock, Node};
use common::http::call;
use common::stomp::StompClient;
use common::{bounded, unique, wait_until_async};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use switchboard::core::clock::ManualClock;
use switchboard_stomp::{Command, Frame};

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut entries = vec![("x-queue-type", longstr("quorum"))];
    entries.extend(extra.iter().cloned());
    args(&entries)
}

async fn declare_quorum(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    bounded(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum_args(extra),
    ))
    .await
    .expect("quorum queue.declare");
}

/// `/api/queues/%2F/<q>` on `node`, once it answers 200.
async fn queue_info(node: &Node, q: &str) -> Value {
    let path = format!("/api/queues/%2F/{q}");
    let r = call(node.broker(), "GET", &path, None).await;
    assert_eq!(r.status, 200, "{path} on {}: {:?}", node.name, r.body);
    r.body
}

/// Waits until every running node lists `q` as a quorum queue, and those holding a replica
/// list a leader they agree on (and not `not`) that is running; returns the leader's index in `nodes`.
async fn wait_for_leader(nodes: &[Node], q: &str, not: Option<&str>) -> usize {
    let found = std::sync::Mutex::new(None);
    wait_until_async(&format!("a leader of {q} every node agrees on"), || {
        let found = &found;
        async move {
            let mut leaders = Vec::new();
            for n in nodes.iter().filter(|n| n.broker.is_some()) {
                let path = format!("/api/queues/%2F/{q}");
                let r = call(n.broker(), "GET", &path, None).await;
                if r.status != 200 || r.body["type"] != "quorum" {
                    return false;
                }
                // A node holding no replica knows a leader only once it reached one.
                let member = r.body["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == n.name.as_str()));
                if !member {
                    continue;
                }
                leaders.push(r.body["leader"].as_str().map(str::to_owned));
            }
            let Some(Some(first)) = leaders.first().cloned() else {
                return false;
            };
            if !leaders.iter().all(|l| l.as_deref() == Some(first.as_str()))
                || not == Some(first.as_str())
            {
                return false;
            }
            let at = nodes
                .iter()
                .position(|n| n.name == first && n.broker.is_some());
            *found.lock().unwrap() = at;
            at.is_some()
        }
    })
    .await;
    let leader = found.lock().unwrap().unwrap();
    // Serving: a consumer there is accepted (the leader loads the queue once it has applied
    // everything committed before its term; until then a consumer is refused).
    let conn = nodes[leader].broker().connect().await;
    wait_until_async(&format!("{q}'s leader to serve"), || {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            let ok = ch
                .basic_consume(
                    q.into(),
                    "probe".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .is_ok();
            if ok {
                let _ = ch.close(200, "probed".into()).await;
            }
            ok
        }
    })
    .await;
    leader
}

/// Waits until `node` holds `n` committed, unsettled messages of `q` (as a follower lists
/// them).
async fn wait_held(node: &Node, q: &str, n: u64) {
    wait_until_async(
        &format!("{} to hold {n} messages of {q}", node.name),
        || async { queue_info(node, q).await["messages"].as_u64() == Some(n) },
    )
    .await;
}

/// A channel on `node` in confirm mode, with its connection.
async fn confirming_channel(node: &Node) -> (lapin::Connection, Channel) {
    let (conn, ch) = node.broker().channel().await;
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    (conn, ch)
}

/// Publishes `bodies` persistently on `ch` (in confirm mode) and waits for every confirm.
async fn publish_confirmed(ch: &Channel, q: &str, bodies: impl Iterator<Item = String>) {
    let mut confirms = Vec::new();
    for body in bodies {
        confirms.push(publish_with(ch, "", q, body.as_bytes(), persistent()).await);
    }
    for c in confirms {
        let confirmation = bounded(c).await.expect("confirm");
        assert!(confirmation.is_ack(), "{confirmation:?}");
    }
}

/// The next `n` deliveries of `consumer`, which must be `m0`, `m1`, ... delivered for the
/// first time; the first `acked` are acknowledged, the others returned unacknowledged.
async fn take_in_order(
    consumer: &mut lapin::Consumer,
    n: usize,
    acked: usize,
) -> Vec<lapin::message::Delivery> {
    let mut unacked = Vec::new();
    for i in 0..n {
        let d = next(consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("m{i}"));
        assert!(!d.redelivered);
        if i < acked {
            bounded(d.acker.ack(BasicAckOptions::default()))
                .await
                .unwrap();
        } else {
            unacked.push(d);
        }
    }
    unacked
}

async fn consumer_on(ch: &Channel, q: &str, prefetch: u16) -> lapin::Consumer {
    bounded(ch.basic_qos(prefetch, BasicQosOptions::default()))
        .await
        .unwrap();
    bounded(ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("basic.consume on the leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_on_one_node_listed_on_every_node_and_refused_where_rabbitmq_refuses() {
    let nodes = form(3).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let q = unique("qq");
    declare_quorum(&ch, &q, &[]).await;
    let leader = wait_for_leader(&nodes, &q, None).await;
    let info = queue_info(&nodes[1], &q).await;
    assert_eq!(info["type"], "quorum");
    assert_eq!(info["durable"], true);
    let mut members: Vec<String> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    members.sort();
    let mut names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(members, names);
    // `ctl list_queues` shows the type, the leader and the members.
    let url = nodes[2].broker().http_url();
    let lines = bounded(tokio::task::spawn_blocking(move || {
        let listing = switchboard::ctl::LISTINGS
            .iter()
            .find(|l| l.command == "list_queues")
            .unwrap();
        let columns: Vec<String> = ["name", "type", "leader", "members"]
            .iter()
            .map(|c| c.to_string())
            .collect();
        switchboard::ctl::run_listing(listing, &url, "guest", "guest", "/", &columns).unwrap()
    }))
    .await
    .unwrap();
    let row = lines
        .iter()
        .find(|l| l.starts_with(&format!("{q}\t")))
        .unwrap();
    let cells: Vec<&str> = row.split('\t').collect();
    assert_eq!(cells[1], "quorum", "{row}");
    assert_eq!(cells[2], nodes[leader].name, "{row}");
    assert!(names.iter().all(|n| cells[3].contains(n.as_str())), "{row}");

    // Redeclaring is equivalent.
    declare_quorum(&ch, &q, &[]).await;

    // basic.get on a node that does not lead it is served by the leader.
    let other = (leader + 1) % 3;
    let (_c2, ch2) = nodes[other].broker().channel().await;
    let got = bounded(ch2.basic_get(q.as_str().into(), BasicGetOptions::default()))
        .await
        .expect("basic.get on a follower");
    assert!(got.is_none(), "the queue is empty");

    // Exclusive, auto-delete and transient quorum queues are refused as RabbitMQ refuses them.
    for (options, property) in [
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            "exclusive",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            "auto-delete",
        ),
        (QueueDeclareOptions::default(), "non-durable"),
    ] {
        let (_c, ch) = nodes[0].broker().channel().await;
        let bad = unique("qq-bad");
        let r = bounded(ch.queue_declare(bad.as_str().into(), options, quorum_args(&[]))).await;
        assert_amqp_err(
            r,
            406,
            &format!("PRECONDITION_FAILED - invalid property '{property}' for queue '{bad}' in vhost '/'"),
        );
    }

    // A STOMP SEND's RECEIPT comes once the group has committed it (`send` waits for it).
    let mut stomp = StompClient::connect(nodes[other].broker().addrs().stomp[0], "1.2").await;
    stomp
        .send(
            &format!("/amq/queue/{q}"),
            b"over stomp",
            &[("persistent", "true")],
        )
        .await;
    for n in &nodes {
        wait_held(n, &q, 1).await;
    }

    // Deleting it removes it (and its group) on every node.
    bounded(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    for n in &nodes {
        let path = format!("/api/queues/%2F/{q}");
        wait_until_async(&format!("{q} gone on {}", n.name), || async {
            call(n.broker(), "GET", &path, None).await.status == 404
        })
        .await;
    }

    // Declared again under the same name it is a new group, which commits.
    declare_quorum(&ch, &q, &[]).await;
    wait_for_leader(&nodes, &q, None).await;
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish_confirmed(&ch, &q, std::iter::once("again".to_owned())).await;
    for n in &nodes {
        wait_held(n, &q, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_losing_the_leader_and_acked_ones_stay_gone() {
    let mut nodes = form(3).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let q = unique("qq-fail");
    declare_quorum(&ch, &q, &[]).await;
    let leader = wait_for_leader(&nodes, &q, None).await;

    // 1,000 confirmed publishes on a node that does not lead the queue.
    let publisher = (leader + 1) % 3;
    let (_pc, pch) = confirming_channel(&nodes[publisher]).await;
    publish_confirmed(&pch, &q, (0..1000).map(|i| format!("m{i}"))).await;

    // All of them, in order, on the leader; the first 600 acked.
    let (_lc, lch) = nodes[leader].broker().channel().await;
    let mut consumer = consumer_on(&lch, &q, 1000).await;
    let unacked = take_in_order(&mut consumer, 1000, 600).await;
    // The acks are committed once every replica holds only the 400 unacked.
    for n in &nodes {
        wait_held(n, &q, 400).await;
    }

    // The leader goes: another is elected and serves the 400, redelivered, in order.
    let old = nodes[leader].name.clone();
    drop(unacked);
    nodes[leader].stop().await;
    let new_leader = wait_for_leader(&nodes, &q, Some(&old)).await;
    let (_nc, nch) = nodes[new_leader].broker().channel().await;
    let mut consumer = consumer_on(&nch, &q, 1000).await;
    for i in 600..1000 {
        let d = next(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("m{i}"));
        assert!(d.redelivered, "m{i} was delivered before");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "an acked message came back"
    );

    // The old leader comes back on its data directory and catches up.
    let seed = vec![nodes[new_leader].addr.clone()];
    nodes[leader].restart(&seed).await;
    wait_held(&nodes[leader], &q, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_on_a_follower_is_served_by_the_leader_and_follows_the_lead_when_it_goes() {
    let mut nodes = form(3).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let q = unique("qq-follow");
    declare_quorum(&ch, &q, &[]).await;
    let leader = wait_for_leader(&nodes, &q, None).await;
    let follower = (leader + 1) % 3;
    let publisher = (leader + 2) % 3;

    // 100 confirmed publishes on one follower, consumed in order on the other.
    let (_pc, pch) = confirming_channel(&nodes[publisher]).await;
    publish_confirmed(&pch, &q, (0..100).map(|i| format!("m{i}"))).await;
    let (_fc, fch) = nodes[follower].broker().channel().await;
    let mut consumer = consumer_on(&fch, &q, 60).await;
    let unacked = take_in_order(&mut consumer, 100, 50).await;
    // The follower's acks reached the leader: every replica holds only the 50 unacked.
    for n in &nodes {
        wait_held(n, &q, 50).await;
    }
    let listed = queue_info(&nodes[leader], &q).await;
    assert_eq!(listed["consumers"].as_u64(), Some(1), "{listed}");

    // The leader goes: the follower's consumer follows the lead, as RabbitMQ moves a quorum
    // queue's consumers (no basic.cancel, no consuming again): the new leader delivers the
    // other 50 to it, redelivered and in order.
    let old = nodes[leader].name.clone();
    nodes[leader].stop().await;
    drop(unacked);
    for i in 50..100 {
        let d = next(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("m{i}"));
        assert!(d.redelivered, "m{i} was delivered before");
        bounded(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    for n in nodes.iter().filter(|n| n.name != old) {
        wait_held(n, &q, 0).await;
    }
    // And what is published from now on reaches it too.
    publish_confirmed(&pch, &q, std::iter::once("after".to_owned())).await;
    assert_eq!(&next(&mut consumer).await.data[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_replica_confirms_nothing() {
    let mut nodes = form(3).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let q = unique("qq-lone");
    declare_quorum(&ch, &q, &[]).await;
    wait_for_leader(&nodes, &q, None).await;
    nodes[1].stop().await;
    nodes[2].stop().await;
    let (_pc, pch) = confirming_channel(&nodes[0]).await;
    let confirm = publish_with(&pch, "", &q, b"alone", persistent()).await;
    let mut stomp = StompClient::connect(nodes[0].broker().addrs().stomp[0], "1.2").await;
    stomp
        .send_frame(
            &Frame::new(Command::Send)
                .with("destination", format!("/amq/queue/{q}"))
                .with("receipt", "lonely")
                .with_body(b"alone too".to_vec()),
        )
        .await;
    stomp.expect_nothing(Duration::from_millis(500)).await;
    // As RabbitMQ's quorum queue without a majority: no confirm, the publisher times out.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), confirm)
            .await
            .is_err(),
        "a publish was confirmed by one node of three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_past_the_delivery_limit_is_dead_lettered_with_reason_delivery_limit() {
    let nodes = form(3).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let q = unique("qq-limit");
    let dlq = unique("qq-limit-dlq");
    common::amqp::declare_durable(&ch, &dlq, FieldTable::default()).await;
    declare_quorum(
        &ch,
        &q,
        &[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", longstr("")),
            ("x-dead-letter-routing-key", longstr(&dlq)),
        ],
    )
    .await;
    let leader = wait_for_leader(&nodes, &q, None).await;
    let (_lc, lch) = confirming_channel(&nodes[leader]).await;
    publish_confirmed(&lch, &q, std::iter::once("poison".to_owned())).await;
    let mut consumer = consumer_on(&lch, &q, 10).await;
    // Returned twice (the limit): delivered again each time, with its delivery count.
    for returns in 0..=2 {
        let d = next(&mut consumer).await;
        assert_eq!(&d.data[..], b"poison");
        let count = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        if returns == 0 {
            assert_eq!(count, None);
        } else {
            assert_eq!(count, Some(AMQPValue::LongLongInt(returns)), "{count:?}");
        }
        bounded(d.acker.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    // The third return is past the limit: dead-lettered, not delivered again.
    let mut dead = consumer_on(&lch, &dlq, 10).await;
    let d = next(&mut dead).await;
    assert_eq!(&d.data[..], b"poison");
    let headers = d.properties.headers().clone().unwrap();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    assert_eq!(
        first.inner().get("reason"),
        Some(&longstr("delivery_limit")),
        "{first:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "the poison message was delivered again"
    );
    // Settled on every replica.
    for n in &nodes {
        wait_held(n, &q, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclustered_node_refuses_a_quorum_queue() {
    let b = common::TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("qq-single");
    let r = bounded(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum_args(&[]),
    ))
    .await;
    assert_amqp_err(
        r,
        406,
        &format!("PRECONDITION_FAILED - cannot declare quorum queue '{q}' in vhost '/': this node is not clustered ([cluster] listen is empty)"),
    );
}

/// The members every running node lists for `q`, once they all list `want`.
async fn wait_members(nodes: &[Node], q: &str, want: &[&str]) {
    wait_until_async(
        &format!("every node to list {q}'s members as {want:?}"),
        || async {
            for n in nodes.iter().filter(|n| n.broker.is_some()) {
                let r = call(n.broker(), "GET", &format!("/api/queues/%2F/{q}"), None).await;
                let members: Vec<&str> = r.body["members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if members != want {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// `ctl add_member` / `delete_member` (their HTTP calls), made on a node that holds no
/// replica: a replica added receives what the group holds before it votes, and a replica
/// removed (the leader here) hands the lead on and deletes its files; the messages stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_added_and_removed_at_run_time_take_over_the_messages() {
    let nodes = form(3).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let q = unique("qq-members");
    declare_quorum(
        &ch,
        &q,
        &[("x-quorum-initial-group-size", AMQPValue::LongInt(1))],
    )
    .await;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    wait_members(&nodes, &q, &[names[0]]).await;
    assert_eq!(wait_for_leader(&nodes, &q, None).await, 0);
    bounded(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish_confirmed(&ch, &q, (0..100).map(|i| format!("m{i}"))).await;

    let members = format!("/api/switchboard/queues/%2F/{q}/members");
    for added in [1, 2] {
        let r = call(
            nodes[2].broker(),
            "POST",
            &members,
            Some(serde_json::json!({"node": names[added]})),
        )
        .await;
        assert_eq!(r.status, 204, "add_member {}: {:?}", names[added], r.body);
        wait_members(&nodes, &q, &names[..=added]).await;
        wait_held(&nodes[added], &q, 100).await;
    }
    // Again: nothing changes.
    let r = call(
        nodes[1].broker(),
        "POST",
        &members,
        Some(serde_json::json!({"node": names[2]})),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    wait_members(&nodes, &q, &names).await;

    // The leader leaves: its replica and files go, the others elect a leader that serves
    // all 100.
    let r = call(
        nodes[1].broker(),
        "DELETE",
        &format!("{members}/{}", names[0]),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "delete_member: {:?}", r.body);
    wait_members(&nodes, &q, &names[1..]).await;
    let groups = nodes[0].dir.join("cluster").join("queues");
    wait_until_async("the removed replica's files to go", || async {
        std::fs::read_dir(&groups).map_or(true, |mut d| d.next().is_none())
    })
    .await;
    let leader = wait_for_leader(&nodes, &q, Some(names[0])).await;
    assert_ne!(leader, 0);
    let (_lc, lch) = nodes[leader].broker().channel().await;
    let mut consumer = consumer_on(&lch, &q, 200).await;
    for i in 0..100 {
        let d = next(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("m{i}"));
        bounded(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    // A consumer on the node that left is served through the leader.
    let (_c0, ch0) = confirming_channel(&nodes[0]).await;
    publish_confirmed(&ch0, &q, std::iter::once("after".to_owned())).await;
    let d = next(&mut consumer).await;
    assert_eq!(&d.data[..], b"after");
    // Its listing names the leader its publish reached.
    assert_eq!(queue_info(&nodes[0], &q).await["leader"], names[leader]);

    // What cannot be changed is refused with a reason.
    let unknown = call(
        nodes[0].broker(),
        "POST",
        &members,
        Some(serde_json::json!({"node": "nobody"})),
    )
    .await;
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);
    declare_durable(&ch0, "classic-members", FieldTable::default()).await;
    let classic = call(
        nodes[0].broker(),
        "POST",
        "/api/switchboard/queues/%2F/classic-members/members",
        Some(serde_json::json!({"node": names[1]})),
    )
    .await;
    assert_eq!(classic.status, 400, "{:?}", classic.body);
    let r = call(
        nodes[0].broker(),
        "DELETE",
        &format!("{members}/{}", names[1]),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    wait_members(&nodes, &q, &names[2..]).await;
    let last = call(
        nodes[0].broker(),
        "DELETE",
        &format!("{members}/{}", names[2]),
        None,
    )
    .await;
    assert_eq!(last.status, 400, "{:?}", last.body);
    assert!(
        last.body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("last member"),
        "{:?}",
        last.body
    );
}

/// The reason of the first `x-death` entry of a dead-lettered delivery.
fn death_reason(d: &lapin::message::Delivery) -> Option<AMQPValue> {
    let headers = d.properties.headers().clone()?;
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death").cloned() else {
        return None;
    };
    match deaths.as_slice().first() {
        Some(AMQPValue::FieldTable(first)) => first.inner().get("reason").cloned(),
        _ => None,
    }
}

/// `x-max-length` (drop-head, and reject-publish), and `x-message-ttl` on a clock the test
/// moves: what the leader drops or expires leaves every replica, dead-lettered with RabbitMQ's
/// reasons, and a message's TTL counts from when it was proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_limits_and_message_ttl_apply_on_every_replica() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let nodes = form_with_clock(3, clock.clone()).await;
    let (_c, ch) = confirming_channel(&nodes[0]).await;
    let dlq = unique("qq-dead");
    declare_durable(&ch, &dlq, FieldTable::default()).await;
    let dead_letters = [
        ("x-dead-letter-exchange", longstr("")),
        ("x-dead-letter-routing-key", longstr(&dlq)),
    ];
    let mut dead = consumer_on(&ch, &dlq, 10).await;

    // drop-head: the oldest two of five leave.
    let q = unique("qq-maxlen");
    let mut extra = vec![("x-max-length", AMQPValue::LongInt(3))];
    extra.extend(dead_letters.iter().cloned());
    declare_quorum(&ch, &q, &extra).await;
    let leader = wait_for_leader(&nodes, &q, None).await;
    publish_confirmed(&ch, &q, (0..5).map(|i| format!("m{i}"))).await;
    for n in &nodes {
        wait_held(n, &q, 3).await;
    }
    for i in 0..2 {
        let d = next(&mut dead).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("m{i}"));
        assert_eq!(death_reason(&d), Some(longstr("maxlen")));
        bounded(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    let (_lc, lch) = nodes[leader].broker().channel().await;
    let mut consumer = consumer_on(&lch, &q, 10).await;
    for i in 2..5 {
        let d = next(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("m{i}"));
    }

    // TTL: of two messages proposed 600 ms apart with a 1 s TTL, 500 ms after the second
    // only the first has expired.
    let t = unique("qq-ttl");
    let mut extra = vec![("x-message-ttl", AMQPValue::LongInt(1000))];
    extra.extend(dead_letters.iter().cloned());
    declare_quorum(&ch, &t, &extra).await;
    let leader = wait_for_leader(&nodes, &t, None).await;
    publish_confirmed(&ch, &t, std::iter::once("old".to_owned())).await;
    clock.advance(600);
    publish_confirmed(&ch, &t, std::iter::once("young".to_owned())).await;
    for n in &nodes {
        wait_held(n, &t, 2).await;
    }
    nodes[leader].broker().advance(&clock, 500);
    for n in &nodes {
        wait_held(n, &t, 1).await;
    }
    let d = next(&mut dead).await;
    assert_eq!(&d.data[..], b"old");
    assert_eq!(death_reason(&d), Some(longstr("expired")));
    let (_tc, tch) = nodes[leader].broker().channel().await;
    let mut consumer = consumer_on(&tch, &t, 10).await;
    let d = next(&mut consumer).await;
    assert_eq!(&d.data[..], b"young");
}

/// `x-overflow: reject-publish` on a quorum queue refuses what would go over its limit as a
/// full classic queue does, once the group has committed it: an AMQP confirm is a nack
/// (published on the leader or on a follower, whose proposal the leader commits), an MQTT 5
/// PUBACK carries 0x97 Quota exceeded, an MQTT 3.1.1 publisher is disconnected, and a STOMP
/// SEND gets an ERROR instead of its RECEIPT. The refused messages leave every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quorum_queue_refuses_publishes_on_every_protocol() {
    use common::mqtt::RawMqtt;
    use switchboard_mqtt::{reason, Packet, Protocol, QoS};
    let nodes = form(3).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let r = unique("qq-reject");
    declare_quorum(
        &ch,
        &r,
        &[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", longstr("reject-publish")),
        ],
    )
    .await;
    bounded(ch.queue_bind(
        r.as_str().into(),
        "amq.topic".into(),
        format!("{r}.#").as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let leader = wait_for_leader(&nodes, &r, None).await;
    let follower = (leader + 1) % nodes.len();
    let (_lc, lch) = nodes[leader].broker().channel().await;
    let (_fc, fch) = nodes[follower].broker().channel().await;
    for c in [&lch, &fch] {
        bounded(c.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
    }
    publish_confirmed(&fch, &r, (0..2).map(|i| format!("r{i}"))).await;
    for (c, body) in [(&fch, "over-on-follower"), (&lch, "over-on-leader")] {
        let confirm = publish_with(c, "", &r, body.as_bytes(), persistent()).await;
        let confirmation = bounded(confirm).await.expect("confirm");
        assert!(confirmation.is_nack(), "{body}: {confirmation:?}");
    }

    let mqtt = nodes[follower].broker().addrs().mqtt[0];
    let mut v5 = RawMqtt::connect(mqtt, Protocol::V5, &unique("qq-v5"), true).await;
    v5.publish(&format!("{r}/x"), QoS::AtLeastOnce, 1, b"over-v5")
        .await;
    match v5.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason, reason::QUOTA_EXCEEDED),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut v3 = RawMqtt::connect(mqtt, Protocol::V311, &unique("qq-v3"), true).await;
    v3.publish(&format!("{r}/x"), QoS::AtLeastOnce, 1, b"over-v3")
        .await;
    assert_eq!(v3.closed().await, None, "no PUBACK for the refused publish");

    let mut stomp = StompClient::connect(nodes[leader].broker().addrs().stomp[0], "1.2").await;
    let err = stomp
        .expect_error(
            Frame::new(Command::Send)
                .with("destination", format!("/amq/queue/{r}").as_str())
                .with("persistent", "true")
                .with("receipt", "r-full")
                .with_body(b"over-stomp".to_vec()),
        )
        .await;
    assert_eq!(err.header("message"), Some("Message rejected"));
    assert_eq!(err.header("receipt-id"), Some("r-full"));

    // Only the two taken stay, on every replica, and they are what a consumer gets.
    for n in &nodes {
        wait_held(n, &r, 2).await;
    }
    let mut consumer = consumer_on(&lch, &r, 10).await;
    for i in 0..2 {
        let d = next(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("r{i}"));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "a refused message was kept"
    );
}

/// A declaration is answered once the new queue serves, as RabbitMQ answers it: a consumer
/// right after `queue.declare-ok` (AMQP), after the HTTP API's 201, or a STOMP SUBSCRIBE that
/// declares it, is served at once on the declaring node, never refused while the new group
/// elects its first leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_right_after_the_declaration_is_served() {
    let nodes = form(3).await;
    for node in &nodes {
        let (_c, ch) = node.broker().channel().await;
        let q = unique("qq-fresh");
        declare_quorum(&ch, &q, &[]).await;
        let mut consumer = consumer_on(&ch, &q, 10).await;
        bounded(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        publish_confirmed(&ch, &q, std::iter::once(format!("to {}", node.name))).await;
        let d = next(&mut consumer).await;
        assert_eq!(d.data, format!("to {}", node.name).as_bytes());
    }

    let q = unique("qq-http");
    let path = format!("/api/queues/%2F/{q}");
    let body = serde_json::json!({"durable": true, "arguments": {"x-queue-type": "quorum"}});
    let r = call(nodes[1].broker(), "PUT", &path, Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let (_c, ch) = nodes[1].broker().channel().await;
    let _consumer = consumer_on(&ch, &q, 1).await;

    let q = unique("qq-stomp");
    let dest = format!("/queue/{q}");
    let mut stomp = StompClient::connect(nodes[2].broker().addrs().stomp[0], "1.2").await;
    stomp
        .subscribe_with("s", &dest, "client", &[("x-queue-type", "quorum")])
        .await;
    assert_eq!(queue_info(&nodes[2], &q).await["type"], "quorum");
    stomp
        .send(&dest, b"over stomp", &[("persistent", "true")])
        .await;
    assert_eq!(&stomp.message().await.body[..], b"over stomp");
}

/// `ctl rebalance` moves leaders until each node leads as many quorum queues: three queues
/// declared on one node (which leads them all) end up led one per node. The move keeps every
/// confirmed message, and a consumer of a moved queue follows its lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_spreads_the_leaders_and_keeps_messages_and_consumers() {
    let nodes = form(3).await;
    let (_c, ch) = confirming_channel(&nodes[0]).await;
    let queues: Vec<String> = (0..3).map(|_| unique("qq-balance")).collect();
    for q in &queues {
        declare_quorum(&ch, q, &[]).await;
        assert_eq!(wait_for_leader(&nodes, q, None).await, 0, "{q}");
        publish_confirmed(&ch, q, (0..10).map(|i| format!("{q}-{i}"))).await;
    }
    let (_cc, cch) = nodes[0].broker().channel().await;
    let mut consumers = Vec::new();
    for q in &queues {
        consumers.push(consumer_on(&cch, q, 100).await);
    }
    // Each consumer holds its ten unacknowledged through the moves.
    let mut held = Vec::new();
    for (q, c) in queues.iter().zip(consumers.iter_mut()) {
        for i in 0..10 {
            let d = next(c).await;
            assert_eq!(String::from_utf8_lossy(&d.data), format!("{q}-{i}"));
            held.push(d);
        }
    }

    let url = nodes[1].broker().http_url();
    let out = bounded(tokio::task::spawn_blocking(move || {
        let api = switchboard::ctl::api::Api::new(&url, "guest", "guest");
        switchboard::ctl::quorum::run(&api, "/", "rebalance", &[])
            .expect("a ctl command")
            .expect("rebalance")
    }))
    .await
    .unwrap();
    let text = out.lines.join("\n");
    assert_eq!(
        out.lines.iter().filter(|l| l.ends_with("\tok")).count(),
        2,
        "{text}"
    );
    let mut leaders = Vec::new();
    for q in &queues {
        leaders.push(wait_for_leader(&nodes, q, None).await);
    }
    leaders.sort();
    assert_eq!(leaders, [0, 1, 2], "{text}");
    for n in &nodes {
        assert!(text.contains(&format!("{}\t1", n.name)), "{text}");
    }

    // What is published now reaches the consumers, moved with their queues' leads; a moved
    // queue's new leader first redelivers the ten its consumer held (kept by the group).
    for q in &queues {
        publish_confirmed(&ch, q, std::iter::once(format!("{q}-after"))).await;
    }
    for (q, c) in queues.iter().zip(consumers.iter_mut()) {
        loop {
            let d = next(c).await;
            let body = String::from_utf8_lossy(&d.data).into_owned();
            bounded(d.acker.ack(BasicAckOptions::default()))
                .await
                .unwrap();
            if body == format!("{q}-after") {
                break;
            }
            assert!(d.redelivered && body.starts_with(q.as_str()), "{body}");
        }
    }
    for d in held {
        bounded(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    for q in &queues {
        for n in &nodes {
            wait_held(n, q, 0).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_on_a_node_holding_no_replica_follows_the_lead_when_it_moves_and_when_its_node_goes(
) {
    let mut nodes = form(4).await;
    let (_c, ch) = nodes[0].broker().channel().await;
    let q = unique("qq-outside");
    declare_quorum(&ch, &q, &[]).await;
    let leader = wait_for_leader(&nodes, &q, None).await;
    let members: Vec<String> = queue_info(&nodes[leader], &q).await["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");
    let outsider = nodes
        .iter()
        .position(|n| !members.contains(&n.name))
        .expect("a node holding no replica");
    let publisher = (0..4).find(|i| *i != outsider && *i != leader).unwrap();
    let target = (0..4)
        .find(|i| ![outsider, leader, publisher].contains(i))
        .unwrap();

    let (_pc, pch) = confirming_channel(&nodes[publisher]).await;
    publish_confirmed(&pch, &q, (0..20).map(|i| format!("m{i}"))).await;
    let (_oc, och) = nodes[outsider].broker().channel().await;
    let mut consumer = consumer_on(&och, &q, 100).await;
    let unacked = take_in_order(&mut consumer, 20, 10).await;
    for n in nodes.iter().filter(|n| members.contains(&n.name)) {
        wait_held(n, &q, 10).await;
    }

    // The lead moves with the old leader up (it lets go of the outsider's consumer): the
    // consumer follows it, with no basic.cancel, and the new leader redelivers the ten it
    // held.
    let path = format!("/api/switchboard/queues/%2F/{q}/leader");
    let body = serde_json::json!({ "node": nodes[target].name });
    let r = call(nodes[publisher].broker(), "POST", &path, Some(body)).await;
    assert!(r.status < 300, "{path}: {} {:?}", r.status, r.body);
    let moved = wait_for_leader(&nodes, &q, Some(&nodes[leader].name)).await;
    assert_eq!(moved, target);
    drop(unacked);
    for i in 10..20 {
        let d = next(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), format!("m{i}"));
        assert!(d.redelivered, "m{i} was delivered before");
        bounded(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    publish_confirmed(&pch, &q, std::iter::once("after-move".to_owned())).await;
    let d = next(&mut consumer).await;
    assert_eq!(&d.data[..], b"after-move");
    bounded(d.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();

    // Every replica has the acks before the leader goes.
    for n in nodes.iter().filter(|n| members.contains(&n.name)) {
        wait_held(n, &q, 0).await;
    }

    // The leader's node goes: the outsider's fetches there go unanswered, and its consumer
    // follows the lead to the member elected.
    let gone = nodes[target].name.clone();
    nodes[target].stop().await;
    wait_for_leader(&nodes, &q, Some(&gone)).await;
    publish_confirmed(&pch, &q, std::iter::once("after-stop".to_owned())).await;
    let d = next(&mut consumer).await;
    assert_eq!(&d.data[..], b"after-stop");
    assert!(!d.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_comes_back_at_another_address_is_reached_there_by_every_group() {
    let mut nodes = form(3).await;
    let q = unique("qq-moved");
    {
        let (_c, ch) = nodes[0].broker().channel().await;
        declare_quorum(&ch, &q, &[]).await;
    }
    let leader = wait_for_leader(&nodes, &q, None).await;
    let moved = (leader + 1) % nodes.len();
    let old = nodes[moved].addr.clone();
    nodes[moved].stop().await;
    // Back on its data directory, listening on a port the OS picks: it asks the others to
    // move it there, and every group dials it there.
    nodes[moved].addr = "127.0.0.1:0".into();
    nodes[moved].restart(&[]).await;
    let new = nodes[moved].consensus().node().addr;
    assert_ne!(new, old);
    nodes[moved].addr = new.clone();
    for n in &nodes {
        let c = n.consensus();
        let name = nodes[moved].name.clone();
        common::wait_until(&format!("{} to have the new address", n.name), || {
            c.nodes().iter().any(|m| m.name == name && m.addr == new)
        })
        .await;
    }
    // The metadata group reaches it: a vhost made elsewhere is there.
    let r = call(
        nodes[leader].broker(),
        "PUT",
        "/api/vhosts/after-move",
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    wait_until_async("the vhost on the moved node", || async {
        call(nodes[moved].broker(), "GET", "/api/vhosts/after-move", None)
            .await
            .status
            == 200
    })
    .await;
    // The quorum queue's group reaches it: its replica holds what was confirmed since.
    let (_c, ch) = confirming_channel(&nodes[leader]).await;
    publish_confirmed(&ch, &q, (0..20).map(|i| format!("m{i}"))).await;
    wait_held(&nodes[moved], &q, 20).await;
}
