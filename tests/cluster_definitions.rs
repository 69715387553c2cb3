#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Definitions replicated through the cluster's metadata group: vhosts, users, permissions,
//! topic permissions and policies made on one node (a follower too) exist on every node; a
//! user made on one node logs in on another; a node left alone refuses changes and keeps its
//! definitions; a node restarted catches up with what changed while it was down.

mod common;

use common::cluster::{form, leader_of, Node};
use common::http::call;
use common::{bounded, wait_until_async};
use serde_json::{json, Value};
use switchboard::ctl::api::Api;

/// Waits until `path` answers 200 on every running node (or, with `present` false, 404).
async fn wait_on_all(nodes: &[Node], path: &str, present: bool) {
    for n in nodes.iter().filter(|n| n.broker.is_some()) {
        wait_until_async(&format!("{path} on {} present={present}", n.name), || {
            let b = n.broker();
            async move {
                let status = call(b, "GET", path, None).await.status;
                status == if present { 200 } else { 404 }
            }
        })
        .await;
    }
}

/// Runs a `switchboard ctl` management command against `node`.
async fn ctl(node: &Node, command: &str, args: &[&str]) {
    let url = node.broker().http_url();
    let command = command.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    bounded(tokio::task::spawn_blocking(move || {
        let api = Api::new(&url, "guest", "guest");
        switchboard::ctl::manage::run(&api, "/", &command, &args)
            .expect("a management command")
            .expect("the command succeeds")
    }))
    .await
    .unwrap();
}

fn follower_of(nodes: &[Node], leader: usize) -> usize {
    (leader + 1) % nodes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_made_on_a_follower_exist_on_every_node() {
    let nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let f = follower_of(&nodes, leader);
    let on = nodes[f].broker();

    let r = call(on, "PUT", "/api/vhosts/shop", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(
        on,
        "PUT",
        "/api/users/dora",
        Some(json!({"password": "wonder", "tags": "monitoring"})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(
        on,
        "PUT",
        "/api/permissions/shop/dora",
        Some(json!({"configure": "^a", "write": ".*", "read": ".*"})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(
        on,
        "PUT",
        "/api/topic-permissions/shop/dora",
        Some(json!({"exchange": "amq.topic", "write": "^orders\\.", "read": ".*"})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(
        on,
        "PUT",
        "/api/policies/shop/ttl",
        Some(
            json!({"pattern": "^t\\.", "definition": {"message-ttl": 5000}, "apply-to": "queues"}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    for path in [
        "/api/vhosts/shop",
        "/api/users/dora",
        "/api/permissions/shop/dora",
        "/api/topic-permissions/shop/dora",
        "/api/policies/shop/ttl",
    ] {
        wait_on_all(&nodes, path, true).await;
    }
    for n in &nodes {
        let b = n.broker();
        let user = call(b, "GET", "/api/users/dora", None).await.body;
        assert_eq!(user["tags"], json!(["monitoring"]), "{}: {user}", n.name);
        let p = call(b, "GET", "/api/permissions/shop/dora", None)
            .await
            .body;
        assert_eq!(p["configure"], "^a", "{}: {p}", n.name);
        let t = call(b, "GET", "/api/topic-permissions/shop/dora", None)
            .await
            .body;
        assert_eq!(t[0]["write"], "^orders\\.", "{}: {t}", n.name);
        let policy = call(b, "GET", "/api/policies/shop/ttl", None).await.body;
        assert_eq!(
            policy["definition"]["message-ttl"], 5000,
            "{}: {policy}",
            n.name
        );
    }

    // A change and deletions from another node reach every node too.
    let other = nodes[(f + 1) % 3].broker();
    let r = call(
        other,
        "PUT",
        "/api/permissions/shop/dora",
        Some(json!({"configure": "^b", "write": ".*", "read": ".*"})),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    for n in &nodes {
        let b = n.broker();
        wait_until_async(
            &format!("changed permissions on {}", n.name),
            || async move {
                call(b, "GET", "/api/permissions/shop/dora", None)
                    .await
                    .body["configure"]
                    == "^b"
            },
        )
        .await;
    }
    let r = call(other, "DELETE", "/api/policies/shop/ttl", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = call(other, "DELETE", "/api/users/dora", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    wait_on_all(&nodes, "/api/policies/shop/ttl", false).await;
    wait_on_all(&nodes, "/api/users/dora", false).await;
    // The user's permissions went with it, everywhere.
    wait_on_all(&nodes, "/api/permissions/shop/dora", false).await;
    let r = call(other, "DELETE", "/api/vhosts/shop", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    wait_on_all(&nodes, "/api/vhosts/shop", false).await;
    // Deleting what is not there is a 404, as unclustered.
    let r = call(other, "DELETE", "/api/users/dora", None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_added_with_ctl_on_one_node_logs_in_over_amqp_on_another() {
    let nodes = form(3).await;
    ctl(&nodes[1], "add_user", &["bob", "builder"]).await;
    ctl(&nodes[1], "set_permissions", &["bob", ".*", ".*", ".*"]).await;
    wait_on_all(&nodes, "/api/permissions/%2F/bob", true).await;
    let b3 = nodes[2].broker();
    let url = format!("amqp://bob:builder@{}/%2f", b3.addrs().amqp[0]);
    let conn = bounded(lapin::Connection::connect(
        &url,
        lapin::ConnectionProperties::default(),
    ))
    .await
    .expect("bob logs in on node 3");
    let ch = bounded(conn.create_channel()).await.unwrap();
    declare_exclusive(&ch, "bob-q").await;
    // A wrong password is refused there as anywhere.
    let wrong = format!("amqp://bob:nope@{}/%2f", b3.addrs().amqp[0]);
    let refused = bounded(lapin::Connection::connect(
        &wrong,
        lapin::ConnectionProperties::default(),
    ))
    .await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_alone_refuses_with_503_and_keeps_its_definitions() {
    let mut nodes = form(3).await;
    let r = call(nodes[0].broker(), "PUT", "/api/vhosts/kept", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    wait_on_all(&nodes, "/api/vhosts/kept", true).await;
    let queue = Some(json!({"durable": true}));
    let r = call(
        nodes[0].broker(),
        "PUT",
        "/api/queues/%2F/held",
        queue.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    wait_on_all(&nodes, "/api/queues/%2F/held", true).await;
    let leader = leader_of(&nodes).await;
    let survivor = follower_of(&nodes, leader);
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != survivor {
            node.stop().await;
        }
    }
    let alone = nodes[survivor].broker();
    // Declaring a queue it has, or deleting one it lacks, is answered from its own state,
    // which the majority may have changed meanwhile: refused too, not confirmed.
    let refusals: [(&str, String, Option<Value>); 6] = [
        ("PUT", "/api/queues/%2F/held".into(), queue),
        ("DELETE", "/api/queues/%2F/absent".into(), None),
        ("PUT", "/api/vhosts/lost".into(), None),
        (
            "PUT",
            "/api/users/lost".into(),
            Some(json!({"password": "x", "tags": ""})),
        ),
        ("DELETE", "/api/vhosts/kept".into(), None),
        (
            "PUT",
            "/api/policies/kept/p".into(),
            Some(json!({"pattern": ".*", "definition": {"max-length": 1}})),
        ),
    ];
    for (method, path, body) in refusals {
        let r = call(alone, method, &path, body).await;
        assert_eq!(r.status, 503, "{method} {path}: {:?}", r.body);
        assert_eq!(r.body["error"], "no_quorum", "{:?}", r.body);
        assert!(
            r.body["reason"].as_str().unwrap().contains("majority"),
            "{:?}",
            r.body
        );
    }
    assert_eq!(
        call(alone, "GET", "/api/vhosts/lost", None).await.status,
        404
    );
    assert_eq!(
        call(alone, "GET", "/api/users/lost", None).await.status,
        404
    );
    assert_eq!(
        call(alone, "GET", "/api/vhosts/kept", None).await.status,
        200
    );
    assert_eq!(
        call(alone, "GET", "/api/policies/kept/p", None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_with_changes_made_while_it_was_down() {
    let mut nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let down = follower_of(&nodes, leader);
    let up = (down + 1) % 3;
    let r = call(nodes[up].broker(), "PUT", "/api/vhosts/before", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    wait_on_all(&nodes, "/api/vhosts/before", true).await;
    nodes[down].stop().await;

    let on = nodes[up].broker();
    let r = call(on, "PUT", "/api/vhosts/while-down", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(
        on,
        "PUT",
        "/api/users/carol",
        Some(json!({"password": "c", "tags": ["management"]})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(on, "DELETE", "/api/vhosts/before", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);

    let seeds = vec![nodes[up].addr.clone()];
    nodes[down].restart(&seeds).await;
    wait_on_all(&nodes, "/api/vhosts/while-down", true).await;
    wait_on_all(&nodes, "/api/users/carol", true).await;
    wait_on_all(&nodes, "/api/vhosts/before", false).await;
    // It keeps them: they were applied to its own store, so a plain restart has them at once.
    nodes[down].stop().await;
    nodes[down].restart(&seeds).await;
    let b = nodes[down].broker();
    assert_eq!(call(b, "GET", "/api/users/carol", None).await.status, 200);
    assert_eq!(call(b, "GET", "/api/vhosts/before", None).await.status, 404);
}

async fn amqp_channel(node: &Node) -> (lapin::Connection, lapin::Channel) {
    node.broker().channel().await
}

async fn declare_exclusive(ch: &lapin::Channel, name: &str) {
    let options = lapin::options::QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    bounded(ch.queue_declare(name.into(), options, Default::default()))
        .await
        .unwrap();
}

fn durable_queue() -> lapin::options::QueueDeclareOptions {
    lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_durable_queues_and_bindings_reach_every_node_and_route_there() {
    let nodes = form(3).await;
    // A durable queue declared over AMQP on node 1 is listed by node 2.
    let (_c1, ch1) = amqp_channel(&nodes[0]).await;
    bounded(ch1.queue_declare("orders".into(), durable_queue(), Default::default()))
        .await
        .unwrap();
    wait_on_all(&nodes, "/api/queues/%2F/orders", true).await;
    let listed = call(nodes[1].broker(), "GET", "/api/queues", None)
        .await
        .body;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "orders" && q["durable"] == true),
        "{listed}"
    );
    // A durable exchange made through the HTTP API on node 2, bound to the queue over AMQP
    // on node 2.
    let r = call(
        nodes[1].broker(),
        "PUT",
        "/api/exchanges/%2F/shop",
        Some(json!({"type": "direct", "durable": true})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    wait_on_all(&nodes, "/api/exchanges/%2F/shop", true).await;
    let (_c2, ch2) = amqp_channel(&nodes[1]).await;
    bounded(ch2.queue_bind(
        "orders".into(),
        "shop".into(),
        "new".into(),
        Default::default(),
        Default::default(),
    ))
    .await
    .unwrap();
    let b3 = nodes[2].broker();
    wait_until_async("the binding on node 3", || async move {
        let found = call(b3, "GET", "/api/bindings/%2F/e/shop/q/orders", None)
            .await
            .body;
        found
            .as_array()
            .is_some_and(|a| a.iter().any(|b| b["routing_key"] == "new"))
    })
    .await;
    // Publishing on node 3 routes into the queue on node 1, which declared it (its home).
    let (_c3, ch3) = amqp_channel(&nodes[2]).await;
    bounded(ch3.basic_publish(
        "shop".into(),
        "new".into(),
        Default::default(),
        b"order 1",
        Default::default(),
    ))
    .await
    .unwrap();
    let b1 = nodes[0].broker();
    wait_until_async("the message on the home node", || async move {
        call(b1, "GET", "/api/queues/%2F/orders", None).await.body["messages"] == 1
    })
    .await;
    // A consumer on node 3 takes it from there.
    let mut consumer = common::amqp::consume(&ch3, "orders", true).await;
    let got = common::amqp::next(&mut consumer).await;
    assert_eq!(got.data, b"order 1");
    wait_until_async("the home node's queue empty", || async move {
        call(b1, "GET", "/api/queues/%2F/orders", None).await.body["messages"] == 0
    })
    .await;

    // Unbinding and deleting reach every node too.
    bounded(ch2.queue_unbind(
        "orders".into(),
        "shop".into(),
        "new".into(),
        Default::default(),
    ))
    .await
    .unwrap();
    bounded(ch1.exchange_delete("shop".into(), Default::default()))
        .await
        .unwrap();
    bounded(ch3.queue_delete("orders".into(), Default::default()))
        .await
        .unwrap();
    wait_on_all(&nodes, "/api/exchanges/%2F/shop", false).await;
    wait_on_all(&nodes, "/api/queues/%2F/orders", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_and_transient_queues_are_on_every_node_and_a_minority_refuses_durable_declares()
{
    let mut nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let survivor = follower_of(&nodes, leader);
    let (_c, ch) = amqp_channel(&nodes[survivor]).await;
    declare_exclusive(&ch, "mine").await;
    bounded(ch.queue_declare("passing".into(), Default::default(), Default::default()))
        .await
        .unwrap();
    bounded(ch.queue_declare("held".into(), durable_queue(), Default::default()))
        .await
        .unwrap();
    wait_on_all(&nodes, "/api/queues/%2F/held", true).await;
    // Known on every node (which routes to them), held by the node that declared them.
    for q in ["mine", "passing"] {
        let path = format!("/api/queues/%2F/{q}");
        wait_on_all(&nodes, &path, true).await;
        for n in &nodes {
            let body = call(n.broker(), "GET", &path, None).await.body;
            assert_eq!(
                body["node"],
                nodes[survivor].name.as_str(),
                "{q} on {}",
                n.name
            );
        }
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != survivor {
            node.stop().await;
        }
    }
    // Transient declares still work alone (on this node only); a durable one is refused with
    // 541 and the reason.
    bounded(ch.queue_declare("passing-2".into(), Default::default(), Default::default()))
        .await
        .unwrap();
    let err = bounded(ch.queue_declare("kept".into(), durable_queue(), Default::default()))
        .await
        .expect_err("refused without a majority");
    let text = err.to_string();
    assert!(
        text.contains("541") || text.contains("INTERNAL_ERROR"),
        "{text}"
    );
    assert!(text.contains("no quorum"), "{text}");
    // Declaring a durable queue it has again is refused as well: the majority may have
    // deleted it meanwhile.
    let (_c2, ch2) = amqp_channel(&nodes[survivor]).await;
    let err = bounded(ch2.queue_declare("held".into(), durable_queue(), Default::default()))
        .await
        .expect_err("refused without a majority");
    assert!(err.to_string().contains("no quorum"), "{err}");
    let alone = nodes[survivor].broker();
    assert_eq!(
        call(alone, "GET", "/api/queues/%2F/kept", None)
            .await
            .status,
        404
    );
    let r = call(
        alone,
        "PUT",
        "/api/exchanges/%2F/lost",
        Some(json!({"type": "fanout"})),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(
        call(alone, "GET", "/api/exchanges/%2F/lost", None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_purged_log_gets_the_definitions_from_a_snapshot() {
    let mut nodes = form(3).await;
    let leader = leader_of(&nodes).await;
    let down = follower_of(&nodes, leader);
    let r = call(nodes[down].broker(), "PUT", "/api/vhosts/old", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    wait_on_all(&nodes, "/api/vhosts/old", true).await;
    nodes[down].stop().await;
    let on = nodes[leader].broker();
    let r = call(on, "PUT", "/api/vhosts/snap", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(on, "DELETE", "/api/vhosts/old", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    // Enough entries for a snapshot (every 500) and the log before it purged.
    let c = nodes[leader].consensus();
    for i in 0..620 {
        let filler = switchboard::cluster::Command::Put {
            key: format!("filler/{i}"),
            value: json!(i),
        };
        bounded(c.propose(filler)).await.unwrap();
    }
    let seeds = vec![nodes[leader].addr.clone()];
    nodes[down].restart(&seeds).await;
    wait_on_all(&nodes, "/api/vhosts/snap", true).await;
    wait_on_all(&nodes, "/api/vhosts/old", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definitions_import_on_one_node_reaches_every_node() {
    let nodes = form(3).await;
    let file = json!({
        "users": [{"name": "erin", "password_hash": "AQIDBIV95vysndns22OUIkd+GXKHcaHKPqqFQqu+5m9ZikS3", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"]}],
        "vhosts": [{"name": "imported"}],
        "permissions": [{"user": "erin", "vhost": "imported", "configure": ".*", "write": ".*", "read": ".*"}],
        "policies": [{"vhost": "imported", "name": "cap", "pattern": ".*", "apply-to": "queues", "definition": {"max-length": 10}, "priority": 0}],
        "exchanges": [{"name": "in-x", "vhost": "imported", "type": "fanout", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "in-q", "vhost": "imported", "durable": true, "auto_delete": false, "arguments": {}}],
        "bindings": [{"source": "in-x", "vhost": "imported", "destination": "in-q", "destination_type": "queue", "routing_key": "", "arguments": {}}],
    });
    let r = call(nodes[2].broker(), "POST", "/api/definitions", Some(file)).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    for path in [
        "/api/users/erin",
        "/api/vhosts/imported",
        "/api/permissions/imported/erin",
        "/api/policies/imported/cap",
        "/api/exchanges/imported/in-x",
        "/api/queues/imported/in-q",
    ] {
        wait_on_all(&nodes, path, true).await;
    }
    let b1 = nodes[0].broker();
    wait_until_async("the imported binding on node 1", || async move {
        let found = call(b1, "GET", "/api/bindings/imported/e/in-x/q/in-q", None)
            .await
            .body;
        found.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_nodes_users_are_the_clusters_and_a_node_that_joins_gives_up_its_own() {
    use switchboard::cluster::definitions::{self, Change};
    use switchboard::cluster::seeding::SEEDED;
    let nodes = form(3).await;
    // The first node's seed user, vhost and permission are records of the cluster.
    let c = nodes[2].consensus();
    common::wait_until("the cluster to be seeded", || c.get(SEEDED).is_some()).await;
    for key in [
        definitions::key("user", &["guest"]),
        definitions::key("vhost", &["/"]),
        definitions::key("permission", &["/", "guest"]),
    ] {
        assert!(c.get(&key).is_some(), "{key}: {:?}", c.list(""));
    }
    // guest goes from the cluster; a node that joins later, seeded with guest from its own
    // configuration, gives it up, and keeps the cluster's "/".
    bounded(definitions::commit(
        nodes[1].broker().broker(),
        Change::DeleteUser("guest".into()),
    ))
    .await
    .unwrap();
    let has_guest = |n: &Node| {
        n.broker()
            .broker()
            .access
            .users()
            .iter()
            .any(|u| u.name == "guest")
    };
    for n in &nodes {
        common::wait_until(&format!("guest gone from {}", n.name), || !has_guest(n)).await;
    }
    // The deletion purged from the log (a snapshot every 500 entries): the node that joins
    // gets a snapshot without guest, not the entry that deleted it.
    let c = nodes[0].consensus();
    for i in 0..620 {
        let filler = switchboard::cluster::Command::Put {
            key: format!("filler/{i}"),
            value: json!(i),
        };
        bounded(c.propose(filler)).await.unwrap();
    }
    let name = format!("late-{}", common::unique("n"));
    let late = Node::start(
        &name,
        &common::fresh_data_dir(),
        "127.0.0.1:0",
        &[nodes[0].addr.clone()],
        common::cluster::COOKIE,
    )
    .await;
    let mut names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    names.push(name);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    common::cluster::wait_for_members(&late, &names).await;
    common::wait_until("the joining node to give up its guest", || {
        !has_guest(&late)
    })
    .await;
    assert!(late.broker().broker().vhost("/").is_some());
}

/// A single broker, not clustered, on data directory `dir`.
async fn single_node(dir: &std::path::Path) -> common::TestBroker {
    let config = switchboard::config::Config::parse(&common::test_config_text_in(dir)).unwrap();
    common::TestBroker::start_config(config).await
}

/// Declares durable direct exchange `exchange` bound with `key` to durable queue `queue`,
/// and publishes `held` through it, persistent.
async fn durable_topology(
    b: &common::TestBroker,
    exchange: &str,
    queue: &str,
    key: &str,
    held: &[u8],
) {
    use common::amqp::{confirm_mode, persistent, publish_with};
    use lapin::options::ExchangeDeclareOptions;
    use lapin::types::FieldTable;
    let (_c, ch) = b.channel().await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    bounded(ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    ))
    .await
    .unwrap();
    bounded(ch.queue_declare(queue.into(), durable_queue(), FieldTable::default()))
        .await
        .unwrap();
    bounded(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Confirmed, so the broker has it on disk before it stops.
    confirm_mode(&ch).await;
    let confirm = publish_with(&ch, exchange, key, held, persistent()).await;
    assert!(bounded(confirm).await.unwrap().is_ack());
}

/// Sets run-time policy `name` in `/` on `b`.
async fn set_policy(b: &common::TestBroker, name: &str, definition: Value) {
    let body = json!({"pattern": "^capped\\.", "definition": definition, "apply-to": "queues", "priority": 2});
    let r = call(b, "PUT", &format!("/api/policies/%2F/{name}"), Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_exchanges_queues_and_bindings_are_the_clusters_it_forms() {
    use common::amqp::{confirm_mode, consume, next, persistent, publish_with};
    // A single node, not clustered, with a durable exchange bound to a durable queue that
    // holds a message.
    let dir = common::fresh_data_dir();
    let single = single_node(&dir).await;
    durable_topology(&single, "before-x", "before-q", "k", b"held before").await;
    single.stop().await;

    // It becomes the first node of a cluster; a second joins and routes to the queue there.
    let cookie = common::cluster::COOKIE;
    let first = Node::start(&common::unique("first"), &dir, "127.0.0.1:0", &[], cookie).await;
    let second = Node::start(
        &common::unique("second"),
        &common::fresh_data_dir(),
        "127.0.0.1:0",
        std::slice::from_ref(&first.addr),
        cookie,
    )
    .await;
    common::cluster::wait_for_members(&second, &[&first.name, &second.name]).await;
    wait_on_all(
        std::slice::from_ref(&second),
        "/api/queues/%2F/before-q",
        true,
    )
    .await;
    wait_on_all(
        std::slice::from_ref(&second),
        "/api/exchanges/%2F/before-x",
        true,
    )
    .await;
    // Records apply one at a time: the queue and exchange may be there before the binding.
    wait_until_async("the binding on the second node", || {
        let b = second.broker();
        async move {
            let bindings = call(b, "GET", "/api/bindings/%2F/e/before-x/q/before-q", None).await;
            bindings.body.as_array().is_some_and(|a| !a.is_empty())
        }
    })
    .await;
    let (_c, ch) = second.broker().channel().await;
    confirm_mode(&ch).await;
    let confirm = publish_with(&ch, "before-x", "k", b"routed on the second", persistent()).await;
    assert!(bounded(confirm).await.unwrap().is_ack());
    let mut consumer = consume(&ch, "before-q", true).await;
    let mut got = vec![
        next(&mut consumer).await.data,
        next(&mut consumer).await.data,
    ];
    got.sort();
    assert_eq!(
        got,
        [b"held before".to_vec(), b"routed on the second".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_policy_is_on_every_node_of_the_cluster_it_forms() {
    // A single node, not clustered, with a run-time policy.
    let dir = common::fresh_data_dir();
    let single = single_node(&dir).await;
    set_policy(&single, "cap", json!({"max-length": 3})).await;
    single.stop().await;

    // It becomes the first node of a cluster, which two more join.
    let cookie = common::cluster::COOKIE;
    let first = Node::start(&common::unique("first"), &dir, "127.0.0.1:0", &[], cookie).await;
    let mut nodes = vec![first];
    for name in ["second", "third"] {
        let seeds = [nodes[0].addr.clone()];
        let dir = common::fresh_data_dir();
        let n = Node::start(&common::unique(name), &dir, "127.0.0.1:0", &seeds, cookie).await;
        nodes.push(n);
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    common::cluster::wait_for_members(&nodes[2], &names).await;
    wait_on_all(&nodes, "/api/policies/%2F/cap", true).await;
    for n in &nodes {
        let policy = call(n.broker(), "GET", "/api/policies/%2F/cap", None)
            .await
            .body;
        assert_eq!(
            policy["definition"]["max-length"], 3,
            "{}: {policy}",
            n.name
        );
        assert_eq!(policy["priority"], 2, "{}: {policy}", n.name);
        assert_eq!(policy["pattern"], "^capped\\.", "{}: {policy}", n.name);
    }
}

/// `/api/definitions` of `n`, each list sorted: nodes list what they hold in their own order.
async fn definitions_of(n: &Node) -> Value {
    let mut d = call(n.broker(), "GET", "/api/definitions", None).await.body;
    if let Some(sections) = d.as_object_mut() {
        for list in sections.values_mut().filter_map(Value::as_array_mut) {
            list.sort_by_key(|v| v.to_string());
        }
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_gives_up_its_own_exchanges_queues_bindings_and_policies() {
    // A cluster with a topology and a policy of its own.
    let nodes = form(2).await;
    durable_topology(nodes[0].broker(), "theirs-x", "theirs-q", "t", b"theirs").await;
    set_policy(nodes[1].broker(), "theirs-p", json!({"max-length": 5})).await;
    for path in [
        "/api/exchanges/%2F/theirs-x",
        "/api/queues/%2F/theirs-q",
        "/api/policies/%2F/theirs-p",
    ] {
        wait_on_all(&nodes, path, true).await;
    }
    // A single node with others: a durable exchange bound to a durable queue holding a
    // message, and a policy.
    let dir = common::fresh_data_dir();
    let single = single_node(&dir).await;
    durable_topology(&single, "mine-x", "mine-q", "m", b"mine").await;
    set_policy(&single, "mine-p", json!({"max-length": 7})).await;
    single.stop().await;

    // It joins the cluster: once caught up, it holds the cluster's definitions and none of
    // its own.
    let seeds = [nodes[0].addr.clone()];
    let name = common::unique("joining");
    let mut late = Node::start(&name, &dir, "127.0.0.1:0", &seeds, common::cluster::COOKIE).await;
    let mut names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.push(&name);
    common::cluster::wait_for_members(&late, &names).await;
    let joined = std::slice::from_ref(&late);
    for path in [
        "/api/exchanges/%2F/theirs-x",
        "/api/queues/%2F/theirs-q",
        "/api/policies/%2F/theirs-p",
    ] {
        wait_on_all(joined, path, true).await;
    }
    let gone = [
        "/api/exchanges/%2F/mine-x",
        "/api/queues/%2F/mine-q",
        "/api/policies/%2F/mine-p",
    ];
    for path in gone {
        wait_on_all(joined, path, false).await;
    }
    let other = &nodes[1];
    let (late_ref, other_ref) = (&late, other);
    wait_until_async(
        "the joining node's definitions to be the cluster's",
        || async move { definitions_of(late_ref).await == definitions_of(other_ref).await },
    )
    .await;
    let d = definitions_of(&late).await;
    assert!(
        !d["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == "mine-x"),
        "{d}"
    );
    let bound = |b: &Value| b["source"] == "theirs-x" && b["destination"] == "theirs-q";
    assert!(d["bindings"].as_array().unwrap().iter().any(bound), "{d}");
    // Nothing of its own went to the cluster either.
    for key in [
        switchboard::cluster::definitions::key("queue", &["/", "mine-q"]),
        switchboard::cluster::definitions::key("policy", &["/", "mine-p"]),
    ] {
        assert!(other.consensus().get(&key).is_none(), "{key}");
    }
    // Gone from its store too: restarted, it still has none of them (and, a member now,
    // resets nothing of the cluster's).
    late.stop().await;
    late.restart(&seeds).await;
    let b = late.broker();
    for path in gone {
        assert_eq!(call(b, "GET", path, None).await.status, 404, "{path}");
    }
    assert_eq!(
        call(b, "GET", "/api/queues/%2F/theirs-q", None)
            .await
            .status,
        200
    );
}
