//! The management HTTP API with RabbitMQ's paths, JSON, status codes and error bodies, checked
//! over real HTTP against state made and observed with lapin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::http::{call, call_as};
use common::*;
use lapin::options::*;
use serde_json::{json, Value};

fn q_path(name: &str) -> String {
    format!("/api/queues/%2F/{name}")
}

#[tokio::test]
async fn overview_shows_version_listeners_and_totals() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ov");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    ready_count(&ch, &q).await;
    let a = call(&b, "GET", "/api/overview", None).await;
    assert_eq!(a.status, 200);
    let v = a.body;
    assert_eq!(v["product_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["cluster_name"]
        .as_str()
        .unwrap()
        .starts_with("switchboard@"));
    let ports: Vec<(String, u64)> = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["protocol"].as_str().unwrap().to_owned(),
                l["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        ports.contains(&("amqp".into(), u64::from(b.amqp.port()))),
        "{ports:?}"
    );
    assert!(
        ports.contains(&("http".into(), u64::from(b.http.port()))),
        "{ports:?}"
    );
    assert!(v["object_totals"]["connections"].as_u64().unwrap() >= 1);
    assert!(v["object_totals"]["channels"].as_u64().unwrap() >= 1);
    assert!(v["queue_totals"]["messages_ready"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn queue_put_show_and_conditional_delete() {
    let b = TestBroker::start().await;
    let q = unique("api-q");
    let body = json!({"durable": true, "auto_delete": false, "arguments": {"x-max-length": 5}});
    assert_eq!(
        call(&b, "PUT", &q_path(&q), Some(body.clone()))
            .await
            .status,
        201
    );
    assert_eq!(call(&b, "PUT", &q_path(&q), Some(body)).await.status, 204);
    let a = call(&b, "PUT", &q_path(&q), Some(json!({"durable": false}))).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"], "bad_request");
    assert!(a.body["reason"]
        .as_str()
        .unwrap()
        .contains("inequivalent arg 'durable'"));

    let (_c, ch) = b.channel().await;
    publish(&ch, "", &q, b"one").await;
    ready_count(&ch, &q).await;
    let v = call(&b, "GET", &q_path(&q), None).await.body;
    assert_eq!(v["name"], q.as_str());
    assert_eq!(v["vhost"], "/");
    assert_eq!(v["type"], "classic");
    assert_eq!(v["state"], "running");
    assert_eq!(v["arguments"], json!({"x-max-length": 5}));
    assert_eq!(v["messages_ready"], 1);
    assert_eq!(v["messages"], 1);
    assert!(v["node"].as_str().unwrap().starts_with("switchboard@"));
    assert!(v["memory"].as_u64().unwrap() > 0);

    let a = call(&b, "DELETE", &format!("{}?if-empty=true", q_path(&q)), None).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(call(&b, "DELETE", &q_path(&q), None).await.status, 204);
    let a = call(&b, "GET", &q_path(&q), None).await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.body,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    assert_eq!(
        call(&b, "GET", "/api/queues/nosuchvhost", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn publish_then_get_with_ack_modes_and_encodings() {
    let b = TestBroker::start().await;
    let q = unique("api-get");
    call(&b, "PUT", &q_path(&q), Some(json!({}))).await;
    for (payload, enc) in [("aGVsbG8=", "base64"), ("world", "string")] {
        let a = call(
            &b,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(
                json!({"routing_key": q, "payload": payload, "payload_encoding": enc,
                        "properties": {"delivery_mode": 2, "headers": {"h": 1}}}),
            ),
        )
        .await;
        assert_eq!(a.body, json!({"routed": true}));
    }
    let a = call(
        &b,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        Some(
            json!({"routing_key": "nowhere", "payload": "x", "payload_encoding": "string",
                    "properties": {}}),
        ),
    )
    .await;
    assert_eq!(a.body, json!({"routed": false}));

    let get = |ackmode: &str, encoding: &str| json!({"count": 5, "ackmode": ackmode, "encoding": encoding, "truncate": 3});
    let path = format!("{}/get", q_path(&q));
    let a = call(&b, "POST", &path, Some(get("ack_requeue_true", "auto"))).await;
    let msgs = a.body.as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["payload"], "hel");
    assert_eq!(msgs[0]["payload_encoding"], "string");
    assert_eq!(msgs[0]["payload_bytes"], 5);
    assert_eq!(msgs[0]["redelivered"], false);
    assert_eq!(msgs[0]["message_count"], 1);
    assert_eq!(msgs[0]["properties"]["headers"], json!({"h": 1}));
    assert_eq!(msgs[0]["properties"]["delivery_mode"], 2);
    // Requeued: both are there again, now redelivered.
    let a = call(
        &b,
        "POST",
        &path,
        Some(get("reject_requeue_true", "base64")),
    )
    .await;
    let msgs = a.body.as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1]["payload"], "d29y");
    assert_eq!(msgs[1]["payload_encoding"], "base64");
    assert_eq!(msgs[1]["redelivered"], true);
    let a = call(&b, "POST", &path, Some(get("ack_requeue_false", "auto"))).await;
    assert_eq!(a.body.as_array().unwrap().len(), 2);
    let a = call(&b, "POST", &path, Some(get("ack_requeue_false", "auto"))).await;
    assert_eq!(a.body, json!([]));
    let a = call(&b, "POST", &path, Some(get("nack_maybe", "auto"))).await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn reject_requeue_false_dead_letters_and_purge_empties() {
    let b = TestBroker::start().await;
    let (q, dlq) = (unique("api-rej"), unique("api-dlq"));
    call(&b, "PUT", &q_path(&dlq), Some(json!({}))).await;
    let args =
        json!({"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}});
    call(&b, "PUT", &q_path(&q), Some(args)).await;
    let publish =
        json!({"routing_key": q, "payload": "m", "payload_encoding": "string", "properties": {}});
    for _ in 0..3 {
        call(
            &b,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(publish.clone()),
        )
        .await;
    }
    let a = call(
        &b,
        "POST",
        &format!("{}/get", q_path(&q)),
        Some(json!({"count": 1, "ackmode": "reject_requeue_false", "encoding": "auto"})),
    )
    .await;
    assert_eq!(a.body.as_array().unwrap().len(), 1);
    let v = call(&b, "GET", &q_path(&dlq), None).await.body;
    assert_eq!(v["messages_ready"], 1);
    assert_eq!(
        call(&b, "DELETE", &format!("{}/contents", q_path(&q)), None)
            .await
            .status,
        204
    );
    let v = call(&b, "GET", &q_path(&q), None).await.body;
    assert_eq!(v["messages_ready"], 0);
}

#[tokio::test]
async fn exchanges_put_show_delete() {
    let b = TestBroker::start().await;
    let e = unique("api-ex");
    let path = format!("/api/exchanges/%2F/{e}");
    let a = call(
        &b,
        "PUT",
        &path,
        Some(json!({"type": "topic", "durable": true})),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(
        call(&b, "PUT", &path, Some(json!({"type": "topic"})))
            .await
            .status,
        204
    );
    let a = call(&b, "PUT", &path, Some(json!({"type": "fanout"}))).await;
    assert_eq!(a.status, 400);
    let v = call(&b, "GET", &path, None).await.body;
    assert_eq!(v["type"], "topic");
    assert_eq!(v["durable"], true);
    let v = call(&b, "GET", "/api/exchanges/%2F/amq.default", None)
        .await
        .body;
    assert_eq!(v["name"], "");
    assert_eq!(v["type"], "direct");
    let a = call(&b, "DELETE", "/api/exchanges/%2F/amq.topic", None).await;
    assert!(a.status >= 400, "{a:?}");
    assert_eq!(call(&b, "DELETE", &path, None).await.status, 204);
    assert_eq!(call(&b, "GET", &path, None).await.status, 404);
    let list = call(&b, "GET", "/api/exchanges/%2F", None).await.body;
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "amq.fanout"));
}

#[tokio::test]
async fn bindings_in_all_four_forms() {
    let b = TestBroker::start().await;
    let (e, e2, q) = (unique("bx"), unique("bx2"), unique("bq"));
    call(
        &b,
        "PUT",
        &format!("/api/exchanges/%2F/{e}"),
        Some(json!({"type": "direct"})),
    )
    .await;
    call(
        &b,
        "PUT",
        &format!("/api/exchanges/%2F/{e2}"),
        Some(json!({"type": "fanout"})),
    )
    .await;
    call(&b, "PUT", &q_path(&q), Some(json!({}))).await;

    let eq = format!("/api/bindings/%2F/e/{e}/q/{q}");
    let a = call(
        &b,
        "POST",
        &eq,
        Some(json!({"routing_key": "k.1", "arguments": {}})),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.location.as_deref(), Some(format!("{eq}/k.1").as_str()));
    let a = call(
        &b,
        "POST",
        &eq,
        Some(json!({"routing_key": "k 2", "arguments": {"x": 1}})),
    )
    .await;
    assert_eq!(a.status, 201);
    let ee = format!("/api/bindings/%2F/e/{e}/e/{e2}");
    assert_eq!(
        call(&b, "POST", &ee, Some(json!({"routing_key": ""})))
            .await
            .status,
        201
    );

    let list = call(&b, "GET", &eq, None).await.body;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let with_args = list.iter().find(|x| x["routing_key"] == "k 2").unwrap();
    let key = with_args["properties_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("k%202~"), "{key}");
    assert_eq!(with_args["destination_type"], "queue");

    // Routed through the exchange now.
    let publish = json!({"routing_key": "k.1", "payload": "m", "payload_encoding": "string", "properties": {}});
    let a = call(
        &b,
        "POST",
        &format!("/api/exchanges/%2F/{e}/publish"),
        Some(publish),
    )
    .await;
    assert_eq!(a.body["routed"], true);

    let one = call(
        &b,
        "GET",
        &format!("{eq}/{}", key.replace('%', "%25")),
        None,
    )
    .await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.body["arguments"], json!({"x": 1}));
    let a = call(
        &b,
        "DELETE",
        &format!("{eq}/{}", key.replace('%', "%25")),
        None,
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        call(&b, "GET", &eq, None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let a = call(&b, "GET", &format!("{ee}/~"), None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        call(&b, "DELETE", &format!("{ee}/~"), None).await.status,
        204
    );
    assert_eq!(
        call(&b, "DELETE", &format!("{ee}/~"), None).await.status,
        404
    );

    let src = call(
        &b,
        "GET",
        &format!("/api/exchanges/%2F/{e}/bindings/source"),
        None,
    )
    .await;
    assert_eq!(src.body.as_array().unwrap().len(), 1);
    let qb = call(&b, "GET", &format!("{}/bindings", q_path(&q)), None)
        .await
        .body;
    // The default exchange's implicit binding and the one from `e`.
    assert_eq!(qb.as_array().unwrap().len(), 2, "{qb}");
    assert_eq!(
        call(&b, "GET", "/api/bindings/%2F/e/nope/q/nope", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn listings_page_sort_filter_and_project() {
    let b = TestBroker::start().await;
    let prefix = unique("pg");
    for i in 0..7 {
        call(
            &b,
            "PUT",
            &q_path(&format!("{prefix}-{i}")),
            Some(json!({})),
        )
        .await;
    }
    let path = format!(
        "/api/queues/%2F?page=2&page_size=3&name={prefix}&sort=name&sort_reverse=true&columns=name,messages"
    );
    let v = call(&b, "GET", &path, None).await.body;
    assert_eq!(v["filtered_count"], 7);
    assert_eq!(v["page_count"], 3);
    assert_eq!(v["item_count"], 3);
    assert_eq!(
        v["items"][0],
        json!({"name": format!("{prefix}-3"), "messages": 0})
    );
    let path = format!("/api/queues?name=^{prefix}-[05]$&use_regex=true");
    let v = call(&b, "GET", &path, None).await.body;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let a = call(&b, "GET", "/api/queues?page=0", None).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"], "bad_request");
}

#[tokio::test]
async fn connections_consumers_and_close_with_reason() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("cons");
    declare(&ch, &q).await;
    let _consumer = consume(&ch, &q, false).await;
    let conns = call(&b, "GET", "/api/connections", None).await.body;
    let conn = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["protocol"] == "amqp" && x["user"] == "guest")
        .cloned()
        .expect("our connection");
    assert_eq!(conn["vhost"], "/");
    assert_eq!(conn["channels"], 1);
    let name = conn["name"].as_str().unwrap().to_owned();
    let consumers = call(&b, "GET", "/api/consumers/%2F", None).await.body;
    let mine = consumers
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["queue"]["name"] == q.as_str())
        .cloned()
        .expect("our consumer");
    assert_eq!(mine["ack_required"], true);
    assert_eq!(mine["channel_details"]["connection_name"], name.as_str());
    assert_eq!(
        call(&b, "GET", "/api/consumers/nosuch", None).await.status,
        404
    );
    let per_vhost = call(&b, "GET", "/api/vhosts/%2F/connections", None)
        .await
        .body;
    assert!(per_vhost
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == name.as_str()));

    let encoded = name.replace(' ', "%20").replace('>', "%3E");
    let one = call(&b, "GET", &format!("/api/connections/{encoded}"), None).await;
    assert_eq!(one.status, 200, "{one:?}");
    let a = call_as(
        &b,
        ("guest", "guest"),
        "DELETE",
        &format!("/api/connections/{encoded}"),
        None,
        &[("X-Reason", "maintenance window")],
    )
    .await;
    assert_eq!(a.status, 204);
    wait_until("the closed connection to go", || !c.status().connected()).await;
    wait_until("the connection is gone", || {
        b.broker().connections().iter().all(|x| x.name() != name)
    })
    .await;
}

#[tokio::test]
async fn health_checks_aliveness_nodes_and_whoami() {
    let b = TestBroker::start().await;
    for path in [
        "/api/health/checks/alarms",
        "/api/health/checks/local-alarms",
        "/api/health/checks/virtual-hosts",
        "/api/health/checks/protocol-listener/amqp",
        "/api/health/checks/protocol-listener/mqtt",
        "/api/aliveness-test/%2F",
    ] {
        let a = call(&b, "GET", path, None).await;
        assert_eq!(
            (a.status, a.body["status"].clone()),
            (200, json!("ok")),
            "{path}"
        );
    }
    let a = call(
        &b,
        "GET",
        &format!("/api/health/checks/port-listener/{}", b.stomp.port()),
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    let a = call(&b, "GET", "/api/health/checks/port-listener/1", None).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.body["status"], "failed");
    let a = call(
        &b,
        "GET",
        "/api/health/checks/protocol-listener/amqp/ssl",
        None,
    )
    .await;
    assert_eq!(a.status, 404);
    let a = call(
        &b,
        "GET",
        "/api/health/checks/protocol-listener/amqps",
        None,
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(
        call(&b, "GET", "/api/aliveness-test/nosuch", None)
            .await
            .status,
        404
    );

    let nodes = call(&b, "GET", "/api/nodes", None).await.body;
    let node = &nodes[0];
    assert_eq!(node["running"], true);
    assert_eq!(node["mem_alarm"], false);
    let name = node["name"].as_str().unwrap();
    assert_eq!(
        call(&b, "GET", &format!("/api/nodes/{name}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(&b, "GET", "/api/nodes/rabbit@elsewhere", None)
            .await
            .status,
        404
    );

    let who = call_as(&b, ("alice", "secret"), "GET", "/api/whoami", None, &[]).await;
    assert_eq!(who.body["name"], "alice");
    let denied = call_as(&b, ("alice", "secret"), "GET", "/api/queues", None, &[]).await;
    assert_eq!(denied.status, 403);
    let bad = call_as(&b, ("guest", "wrong"), "GET", "/api/overview", None, &[]).await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.body["error"], "not_authorised");
}

#[tokio::test]
async fn runtime_policies_apply_to_new_queues_and_survive_restart() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let path = "/api/policies/%2F/cap";
    let body = json!({"pattern": "^capped\\.", "apply-to": "queues", "priority": 1,
                      "definition": {"max-length": 2}});
    assert_eq!(call(&b, "PUT", path, Some(body.clone())).await.status, 201);
    assert_eq!(call(&b, "PUT", path, Some(body)).await.status, 204);
    let bad = json!({"pattern": ".*", "definition": {"no-such-key": 1}});
    assert_eq!(
        call(&b, "PUT", "/api/policies/%2F/bad", Some(bad))
            .await
            .status,
        400
    );
    let v = call(&b, "GET", "/api/policies", None).await.body;
    assert_eq!(
        v,
        json!([{"vhost": "/", "name": "cap", "pattern": "^capped\\.", "apply-to": "queues",
                "definition": {"max-length": 2}, "priority": 1}])
    );
    let q = "capped.q";
    call(&b, "PUT", &q_path(q), Some(json!({}))).await;
    let publish =
        json!({"routing_key": q, "payload": "m", "payload_encoding": "string", "properties": {}});
    for _ in 0..4 {
        call(
            &b,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(publish.clone()),
        )
        .await;
    }
    assert_eq!(
        call(&b, "GET", &q_path(q), None).await.body["messages_ready"],
        2
    );
    b.stop().await;

    let b = TestBroker::start_in(&dir, |_| {}).await;
    let v = call(&b, "GET", "/api/policies/%2F/cap", None).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.body["definition"], json!({"max-length": 2}));
    assert_eq!(
        call(&b, "DELETE", "/api/policies/%2F/cap", None)
            .await
            .status,
        204
    );
    assert_eq!(
        call(&b, "DELETE", "/api/policies/%2F/cap", None)
            .await
            .status,
        404
    );
    b.stop().await;
    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert_eq!(call(&b, "GET", "/api/policies", None).await.body, json!([]));
}

/// Everything a definitions export covers, made through the API.
async fn populate(b: &TestBroker) {
    call(b, "PUT", "/api/vhosts/defs", None).await;
    call(
        b,
        "PUT",
        "/api/users/carol",
        Some(json!({"password": "pw", "tags": "monitoring"})),
    )
    .await;
    call(
        b,
        "PUT",
        "/api/permissions/defs/carol",
        Some(json!({"configure": "^c", "write": "^w", "read": ".*"})),
    )
    .await;
    call(
        b,
        "PUT",
        "/api/topic-permissions/defs/carol",
        Some(json!({"exchange": "amq.topic", "write": "^a", "read": ".*"})),
    )
    .await;
    call(
        b,
        "PUT",
        "/api/policies/defs/ttl",
        Some(json!({"pattern": "^t", "definition": {"message-ttl": 1000}, "apply-to": "queues"})),
    )
    .await;
    call(
        b,
        "PUT",
        "/api/exchanges/defs/events",
        Some(json!({"type": "topic"})),
    )
    .await;
    call(
        b,
        "PUT",
        "/api/exchanges/defs/fan",
        Some(json!({"type": "fanout", "internal": true})),
    )
    .await;
    call(
        b,
        "PUT",
        "/api/queues/defs/orders",
        Some(json!({"arguments": {"x-max-priority": 5, "x-queue-type": "classic"}})),
    )
    .await;
    call(
        b,
        "POST",
        "/api/bindings/defs/e/events/q/orders",
        Some(json!({"routing_key": "o.#"})),
    )
    .await;
    call(
        b,
        "POST",
        "/api/bindings/defs/e/events/e/fan",
        Some(json!({"routing_key": "f"})),
    )
    .await;
}

/// An export without the parts that differ between two brokers by design: the header.
fn comparable(mut v: Value) -> Value {
    for k in [
        "rabbit_version",
        "rabbitmq_version",
        "product_version",
        "product_name",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

#[tokio::test]
async fn definitions_round_trip_export_delete_import() {
    let b = TestBroker::start().await;
    populate(&b).await;
    let exported = call(&b, "GET", "/api/definitions", None).await;
    assert_eq!(exported.status, 200);
    let exported = exported.body;
    assert!(exported["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "carol"
            && u["hashing_algorithm"] == "rabbit_password_hashing_sha256"
            && u["tags"] == json!(["monitoring"])));
    assert_eq!(exported["parameters"], json!([]));
    assert_eq!(exported["global_parameters"], json!([]));

    assert_eq!(
        call(&b, "DELETE", "/api/vhosts/defs", None).await.status,
        204
    );
    assert_eq!(
        call(&b, "DELETE", "/api/users/carol", None).await.status,
        204
    );
    let gone = call(&b, "GET", "/api/definitions", None).await.body;
    assert_ne!(comparable(gone), comparable(exported.clone()));

    let a = call(&b, "POST", "/api/definitions", Some(exported.clone())).await;
    assert_eq!(a.status, 204, "{a:?}");
    let again = call(&b, "GET", "/api/definitions", None).await.body;
    assert_eq!(comparable(again), comparable(exported.clone()));
    // The imported user logs in with its old password.
    let who = call_as(&b, ("carol", "pw"), "GET", "/api/whoami", None, &[]).await;
    assert_eq!(who.status, 200);

    // Per vhost: the topology without vhost fields, importable into another vhost.
    let per = call(&b, "GET", "/api/definitions/defs", None).await.body;
    assert!(per.get("users").is_none());
    assert!(per["queues"][0].get("vhost").is_none());
    call(&b, "PUT", "/api/vhosts/copy", None).await;
    assert_eq!(
        call(&b, "POST", "/api/definitions/copy", Some(per.clone()))
            .await
            .status,
        204
    );
    let copied = call(&b, "GET", "/api/definitions/copy", None).await.body;
    assert_eq!(comparable(copied), comparable(per));
    assert_eq!(
        call(&b, "GET", "/api/definitions/nosuch", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn definitions_exported_by_rabbitmq_import() {
    let b = TestBroker::start().await;
    let text = include_str!("fixtures/rabbitmq-3.13-definitions.json");
    let defs: Value = serde_json::from_str(text).unwrap();
    let a = call(&b, "POST", "/api/definitions", Some(defs)).await;
    assert_eq!(a.status, 204, "{a:?}");
    // The user's RabbitMQ hash works here: its password is "s3cret".
    let who = call_as(&b, ("app", "s3cret"), "GET", "/api/whoami", None, &[]).await;
    assert_eq!(who.status, 200, "{who:?}");
    let q = call(&b, "GET", "/api/queues/shop/orders", None).await;
    assert_eq!(q.status, 200);
    assert_eq!(q.body["durable"], true);
    let bindings = call(
        &b,
        "GET",
        "/api/bindings/shop/e/orders.topic/q/orders",
        None,
    )
    .await
    .body;
    assert_eq!(bindings[0]["routing_key"], "order.*");
    let p = call(&b, "GET", "/api/policies/shop/dlx", None).await;
    assert_eq!(p.body["definition"]["dead-letter-exchange"], "orders.dlx");
    let perms = call(&b, "GET", "/api/permissions/shop/app", None).await;
    assert_eq!(perms.body["write"], "^orders");

    // And a lapin client sees the imported topology work.
    let conn = bounded(lapin::Connection::connect(
        &format!("amqp://app:s3cret@{}/shop", b.amqp),
        lapin::ConnectionProperties::default(),
    ))
    .await
    .expect("connect as the imported user");
    let ch = bounded(conn.create_channel()).await.unwrap();
    publish(&ch, "orders.topic", "order.new", b"o1").await;
    let got = bounded(ch.basic_get("orders".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap();
    assert_eq!(got.map(|m| m.delivery.data), Some(b"o1".to_vec()));
}

#[tokio::test]
async fn definitions_with_unknown_parameters_are_refused() {
    let b = TestBroker::start().await;
    let defs =
        json!({"parameters": [{"vhost": "/", "component": "shovel", "name": "s", "value": {}}]});
    let a = call(&b, "POST", "/api/definitions", Some(defs)).await;
    assert_eq!(a.status, 400);
    assert!(a.body["reason"].as_str().unwrap().contains("shovel"));
}

/// The API driven by RabbitMQ's own Rust client (`rabbitmq_http_client`, blocking), for every
/// endpoint of it that maps onto a feature we have. Not covered: the overview (the client
/// requires Erlang runtime fields and churn rates that this broker does not have), streams,
/// federation, shovels, limits, feature flags.
mod rabbitmq_client {
    use super::common::amqp::*;
    use super::common::*;
    use rabbitmq_http_client::blocking_api::Client;
    use rabbitmq_http_client::commons::{
        BindingDestinationType, ExchangeType, PolicyTarget, SupportedProtocol,
    };
    use rabbitmq_http_client::password_hashing;
    use rabbitmq_http_client::requests::{
        BindingDeletionParams, ExchangeParams, Permissions, PolicyParams, QueueParams,
        TopicPermissions, UserParams, VirtualHostParams,
    };
    use serde_json::{json, Map, Value};

    /// A broker on its own runtime, so that the blocking client can run on the test thread.
    fn broker() -> (tokio::runtime::Runtime, TestBroker) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let b = rt.block_on(TestBroker::start());
        (rt, b)
    }

    fn client(b: &TestBroker) -> Client<String, &'static str, &'static str> {
        Client::new(format!("{}/api", b.http_url()), "guest", "guest")
    }

    #[test]
    fn queues_exchanges_bindings_and_messages() {
        let (_rt, b) = broker();
        let rc = client(&b);
        let mut args = Map::new();
        args.insert("x-max-length".into(), json!(100));
        let q = unique("rc-q");
        rc.declare_queue("/", &QueueParams::new_durable_classic_queue(&q, Some(args)))
            .unwrap();
        let info = rc.get_queue_info("/", &q).unwrap();
        assert_eq!(info.name, q);
        assert!(info.durable);
        assert_eq!(info.queue_type, "classic");
        assert_eq!(info.arguments.0.get("x-max-length"), Some(&json!(100)));
        assert!(rc.list_queues().unwrap().iter().any(|x| x.name == q));
        assert!(rc.list_queues_in("/").unwrap().iter().any(|x| x.name == q));
        assert!(rc.get_queue_info("/", "nope").is_err());

        let e = unique("rc-e");
        rc.declare_exchange("/", &ExchangeParams::durable(&e, ExchangeType::Topic, None))
            .unwrap();
        let ex = rc.get_exchange_info("/", &e).unwrap();
        assert_eq!(ex.exchange_type, "topic");
        assert!(rc
            .list_exchanges_in("/")
            .unwrap()
            .iter()
            .any(|x| x.name == e));

        rc.bind_queue("/", &q, &e, Some("a.*"), None).unwrap();
        let e2 = unique("rc-e2");
        rc.declare_exchange("/", &ExchangeParams::durable_fanout(&e2, None))
            .unwrap();
        rc.bind_exchange("/", &e2, &e, Some("b.#"), None).unwrap();
        let qb = rc.list_queue_bindings("/", &q).unwrap();
        assert!(qb.iter().any(|x| x.source == e && x.routing_key == "a.*"));
        let src = rc.list_exchange_bindings_with_source("/", &e).unwrap();
        assert_eq!(src.len(), 2);
        assert!(rc
            .list_bindings_in("/")
            .unwrap()
            .iter()
            .any(|x| x.destination == e2));

        let routed = rc
            .publish_message("/", &e, "a.b", "hello", Map::new())
            .unwrap();
        assert!(routed.routed);
        let got = rc.get_messages("/", &q, 1, "ack_requeue_false").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, "hello");
        assert_eq!(got[0].routing_key, "a.b");
        rc.publish_message("/", "", &q, "again", Map::new())
            .unwrap();
        rc.purge_queue("/", &q).unwrap();
        assert_eq!(
            rc.get_messages("/", &q, 1, "ack_requeue_false")
                .unwrap()
                .len(),
            0
        );

        rc.delete_binding(
            &BindingDeletionParams {
                virtual_host: "/",
                source: &e,
                destination: &e2,
                destination_type: BindingDestinationType::Exchange,
                routing_key: "b.#",
                arguments: None,
            },
            false,
        )
        .unwrap();
        assert_eq!(
            rc.list_exchange_bindings_with_source("/", &e)
                .unwrap()
                .len(),
            1
        );
        rc.delete_exchange("/", &e, false).unwrap();
        rc.delete_queue("/", &q, false).unwrap();
        assert!(rc.delete_queue("/", &q, false).is_err());
        rc.delete_queue("/", &q, true).unwrap();
    }

    #[test]
    fn vhosts_users_permissions_and_policies() {
        let (_rt, b) = broker();
        let rc = client(&b);
        let vh = unique("rc-vh");
        rc.create_vhost(&VirtualHostParams::named(&vh)).unwrap();
        assert_eq!(rc.get_vhost(&vh).unwrap().name, vh);
        assert!(rc.list_vhosts().unwrap().iter().any(|v| v.name == vh));

        let salt = password_hashing::salt();
        let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&salt, "pw");
        rc.create_user(&UserParams::new("dave", &hash, "monitoring"))
            .unwrap();
        let dave = rc.get_user("dave").unwrap();
        assert_eq!(dave.name, "dave");
        rc.grant_permissions(&Permissions {
            user: "dave",
            vhost: &vh,
            configure: "^d",
            read: ".*",
            write: "^d",
        })
        .unwrap();
        let p = rc.get_permissions(&vh, "dave").unwrap();
        assert_eq!(p.configure, "^d");
        assert!(rc.list_permissions_of("dave").unwrap().len() == 1);
        rc.declare_topic_permissions(&TopicPermissions {
            user: "dave",
            vhost: &vh,
            exchange: "amq.topic",
            read: ".*",
            write: "^dave\\.",
        })
        .unwrap();
        assert_eq!(rc.list_topic_permissions_in(&vh).unwrap().len(), 1);
        let as_dave: Client<String, &str, &str> =
            Client::new(format!("{}/api", b.http_url()), "dave", "pw");
        assert_eq!(as_dave.current_user().unwrap().name, "dave");

        let mut def = Map::new();
        def.insert("max-length".into(), json!(10));
        let mut policy = PolicyParams::new(&vh, "cap", "^cap", def);
        policy.apply_to = PolicyTarget::Queues;
        policy.priority = 2;
        rc.declare_policy(&policy).unwrap();
        let got = rc.get_policy(&vh, "cap").unwrap();
        assert_eq!(got.pattern, "^cap");
        assert_eq!(got.priority, 2);
        assert_eq!(rc.list_policies_in(&vh).unwrap().len(), 1);
        rc.delete_policy(&vh, "cap", false).unwrap();
        assert!(rc.list_policies().unwrap().is_empty());

        rc.clear_permissions(&vh, "dave", false).unwrap();
        rc.delete_user("dave", false).unwrap();
        assert!(rc.get_user("dave").is_err());
        rc.delete_vhost(&vh, false).unwrap();
        assert!(rc.get_vhost(&vh).is_err());
    }

    #[test]
    fn definitions_health_checks_connections_and_nodes() {
        let (rt, b) = broker();
        let rc = client(&b);
        let q = unique("rc-def");
        rc.declare_queue("/", &QueueParams::new_durable_classic_queue(&q, None))
            .unwrap();
        let text = rc.export_cluster_wide_definitions().unwrap();
        let defs: Value = serde_json::from_str(&text).unwrap();
        assert!(defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == q.as_str()));
        let data = rc.export_cluster_wide_definitions_as_data().unwrap();
        assert!(data.queues.iter().any(|x| x.name == q));
        rc.delete_queue("/", &q, false).unwrap();
        rc.import_cluster_wide_definitions(defs).unwrap();
        assert!(rc.get_queue_info("/", &q).is_ok());
        let vdefs: Value =
            serde_json::from_str(&rc.export_vhost_definitions("/").unwrap()).unwrap();
        rc.import_vhost_definitions("other", vdefs).unwrap();
        assert!(rc.get_queue_info("other", &q).is_ok());

        rc.health_check_cluster_wide_alarms().unwrap();
        rc.health_check_local_alarms().unwrap();
        rc.health_check_if_node_is_quorum_critical().unwrap();
        rc.health_check_port_listener(b.amqp.port()).unwrap();
        assert!(rc.health_check_port_listener(1).is_err());
        rc.health_check_protocol_listener(SupportedProtocol::AMQP)
            .unwrap();
        assert!(rc
            .health_check_protocol_listener(SupportedProtocol::AMQPWithTLS)
            .is_err());

        let nodes = rc.list_nodes().unwrap();
        assert_eq!(nodes.len(), 1);
        assert!(rc.get_node_info(&nodes[0].name).is_ok());

        let conn = rt.block_on(b.connect());
        let listed = rc.list_connections().unwrap();
        let mine = listed
            .iter()
            .find(|c| c.username == "guest")
            .expect("our connection");
        assert!(rc.get_connection_info(&mine.name).is_ok());
        assert_eq!(rc.list_connections_in("/").unwrap().len(), 1);
        rc.close_connection(&mine.name, Some("from the client test"), false)
            .unwrap();
        rt.block_on(wait_until("the closed connection to go", || {
            !conn.status().connected()
        }));
    }

    #[test]
    fn channels_and_consumers_with_their_figures() {
        let (rt, b) = broker();
        let rc = client(&b);
        let q = unique("rc-cons");
        let (_c, ch, _consumer) = rt.block_on(async {
            let (c, ch) = b.channel().await;
            declare(&ch, &q).await;
            bounded(ch.basic_qos(4, lapin::options::BasicQosOptions::default()))
                .await
                .unwrap();
            let mut consumer = consume(&ch, &q, false).await;
            publish(&ch, "", &q, b"held").await;
            next(&mut consumer).await;
            (c, ch, consumer)
        });
        let channels = rc.list_channels().unwrap();
        let mine = channels
            .iter()
            .find(|c| c.consumer_count == 1)
            .expect("our channel");
        assert_eq!(mine.prefetch_count, 4);
        assert_eq!(mine.messages_unacknowledged, 1);
        assert!(!mine.has_publisher_confirms_enabled);
        let consumers = rc.list_consumers().unwrap();
        let c = consumers
            .iter()
            .find(|c| c.queue.name == q)
            .expect("our consumer");
        assert!(c.manual_ack);
        assert_eq!(c.prefetch_count, 4);
        let details = c.channel_details.as_ref().expect("channel details");
        assert_eq!(details.id, 1);
        assert_eq!(details.username, "guest");
        assert!(rc
            .list_consumers_in("/")
            .unwrap()
            .iter()
            .any(|c| c.queue.name == q));
        drop(ch);
    }
}

/// How many queues the listing test makes: `SWITCHBOARD_API_QUEUES` (the README's figure is for
/// 10,000 in a release build), else a number a debug build makes in a moment.
fn listing_scale() -> usize {
    std::env::var("SWITCHBOARD_API_QUEUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

#[tokio::test]
async fn listing_many_queues_whole_and_paged() {
    let n = listing_scale();
    let b = TestBroker::start().await;
    let vh = b.broker().vhost("/").expect("vhost");
    for i in 0..n {
        let spec = switchboard::core::vhost::QueueSpec {
            name: format!("many-{i:06}"),
            ..Default::default()
        };
        vh.declare_queue(spec, false, 0).expect("declare");
    }
    let mut whole = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let a = call(&b, "GET", "/api/queues", None).await;
        whole.push(started.elapsed());
        assert_eq!(a.body.as_array().map(Vec::len), Some(n));
    }
    let mut paged = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let a = call(
            &b,
            "GET",
            "/api/queues?page=1&page_size=100&sort=name",
            None,
        )
        .await;
        paged.push(started.elapsed());
        assert_eq!(a.body["filtered_count"], n);
        assert_eq!(a.body["items"][0]["name"], "many-000000");
    }
    whole.sort();
    paged.sort();
    println!(
        "GET /api/queues with {n} queues: median {:?} (min {:?}); first page of 100 sorted: median {:?}",
        whole[2], whole[0], paged[2]
    );
}

#[tokio::test]
async fn channels_are_listed_per_connection_and_vhost() {
    let b = TestBroker::start().await;
    let (c, _ch) = b.channel().await;
    let _second = bounded(c.create_channel()).await.unwrap();
    let all = call(&b, "GET", "/api/channels", None).await.body;
    let mine: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["user"] == "guest")
        .collect();
    assert_eq!(mine.len(), 2, "{all}");
    let conn = mine[0]["connection_details"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(mine[0]["name"], format!("{conn} (1)"));
    assert_eq!(mine[1]["number"], 2);
    let encoded = conn.replace(' ', "%20").replace('>', "%3E");
    let of = call(
        &b,
        "GET",
        &format!("/api/connections/{encoded}/channels"),
        None,
    )
    .await;
    assert_eq!(of.body.as_array().map(Vec::len), Some(2));
    let one = format!("{encoded}%20(1)")
        .replace('(', "%28")
        .replace(')', "%29");
    assert_eq!(
        call(&b, "GET", &format!("/api/channels/{one}"), None)
            .await
            .status,
        200
    );
    let in_vhost = call(&b, "GET", "/api/vhosts/other/channels", None)
        .await
        .body;
    assert_eq!(in_vhost, json!([]));
    bounded(_second.close(200, "bye".into())).await.unwrap();
    let of = call(
        &b,
        "GET",
        &format!("/api/connections/{encoded}/channels"),
        None,
    )
    .await;
    assert_eq!(of.body.as_array().map(Vec::len), Some(1));
}

/// The channel whose connection is `conn` and number is `n`, as `/api/channels` lists it.
async fn channel_object(b: &TestBroker, conn: &str, n: u64) -> Value {
    let all = call(b, "GET", "/api/channels", None).await.body;
    all.as_array()
        .unwrap()
        .iter()
        .find(|x| x["connection_details"]["name"] == conn && x["number"] == n)
        .cloned()
        .unwrap_or_else(|| panic!("channel {n} of {conn} in {all}"))
}

#[tokio::test]
async fn channel_objects_show_prefetch_unacked_confirms_and_transactions() {
    let b = TestBroker::start().await;
    let (c, consumer_ch) = b.channel().await;
    let q = unique("chq");
    declare(&consumer_ch, &q).await;
    bounded(consumer_ch.basic_qos(3, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&consumer_ch, &q, false).await;
    for i in 0..5 {
        publish(&consumer_ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    // Prefetch 3: three delivered and held unacked, two left ready.
    let held = next_n(&mut consumer, 3).await;
    let conn = call(&b, "GET", "/api/connections", None).await.body[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let ch1 = channel_object(&b, &conn, 1).await;
    assert_eq!(ch1["prefetch_count"], 3, "{ch1}");
    assert_eq!(ch1["consumer_count"], 1, "{ch1}");
    assert_eq!(ch1["messages_unacknowledged"], 3, "{ch1}");
    assert_eq!(ch1["transactional"], false);
    assert_eq!(ch1["confirm"], false);
    ack(&held[0]).await;
    wait_until_async("one ack to be counted", || async {
        channel_object(&b, &conn, 1).await["messages_unacknowledged"] == 3
            && ready_count(&consumer_ch, &q).await == 1
    })
    .await;

    let confirm_ch = confirm_channel(&c).await;
    assert!(publish_for_confirmation(&confirm_ch, "", &q, b"confirmed")
        .await
        .is_ack());
    let ch2 = channel_object(&b, &conn, 2).await;
    assert_eq!(ch2["confirm"], true, "{ch2}");
    assert_eq!(
        ch2["messages_unconfirmed"], 0,
        "the publish was confirmed: {ch2}"
    );

    let tx_ch = bounded(c.create_channel()).await.unwrap();
    bounded(tx_ch.tx_select()).await.unwrap();
    let got = get(&tx_ch, &q, false).await.expect("a message to get");
    bounded(tx_ch.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    publish(&tx_ch, "", &q, b"in tx").await;
    wait_until_async(
        "the transaction to hold one ack and one publish",
        || async {
            let ch3 = channel_object(&b, &conn, 3).await;
            ch3["acks_uncommitted"] == 1 && ch3["messages_uncommitted"] == 1
        },
    )
    .await;
    let ch3 = channel_object(&b, &conn, 3).await;
    assert_eq!(ch3["transactional"], true, "{ch3}");
    assert_eq!(ch3["messages_unacknowledged"], 1, "{ch3}");
    bounded(tx_ch.tx_commit()).await.unwrap();
    let ch3 = channel_object(&b, &conn, 3).await;
    assert_eq!(ch3["acks_uncommitted"], 0, "{ch3}");
    assert_eq!(ch3["messages_unacknowledged"], 0, "{ch3}");
}

/// The identity of a definitions object of `kind`, as both RabbitMQ and we key them.
fn definition_key(kind: &str, o: &Value) -> String {
    let fields: &[&str] = match kind {
        "vhosts" | "users" => &["name"],
        "permissions" => &["user", "vhost"],
        "topic_permissions" => &["user", "vhost", "exchange"],
        "exchanges" | "queues" | "policies" => &["vhost", "name"],
        _ => &[
            "vhost",
            "source",
            "destination_type",
            "destination",
            "routing_key",
            "arguments",
        ],
    };
    fields
        .iter()
        .map(|f| o[*f].to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The export `interop/rabbitmq_definitions.sh --write-fixture` took from RabbitMQ 3.10.8 (vhosts,
/// users with tags, permissions, topic permissions, exchanges of each type, queues with
/// arguments, bindings with arguments to queues and exchanges, policies) imports, and our export
/// then holds every object of it with the same fields.
#[tokio::test]
async fn definitions_exported_by_rabbitmq_3_10_import_object_by_object() {
    let b = TestBroker::start().await;
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/rabbitmq-definitions.json")).unwrap();
    let a = call(&b, "POST", "/api/definitions", Some(fixture.clone())).await;
    assert_eq!(a.status, 204, "{a:?}");
    let ours = call(&b, "GET", "/api/definitions", None).await.body;
    let compared: &[(&str, &[&str])] = &[
        ("vhosts", &[]),
        ("users", &["tags", "password_hash", "hashing_algorithm"]),
        ("permissions", &["configure", "write", "read"]),
        ("topic_permissions", &["write", "read"]),
        (
            "exchanges",
            &["type", "durable", "auto_delete", "internal", "arguments"],
        ),
        ("queues", &["durable", "auto_delete", "arguments"]),
        ("bindings", &[]),
        (
            "policies",
            &["pattern", "apply-to", "priority", "definition"],
        ),
    ];
    for (kind, fields) in compared {
        let theirs = fixture[*kind].as_array().unwrap();
        assert!(!theirs.is_empty(), "the fixture has {kind}");
        for o in theirs {
            let key = definition_key(kind, o);
            let mine = ours[*kind]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| definition_key(kind, m) == key)
                .unwrap_or_else(|| panic!("{kind} {key} not in our export"));
            for f in *fields {
                // guest is seeded by each side with its own hash.
                if *kind == "users" && o["name"] == "guest" && *f != "tags" {
                    continue;
                }
                assert_eq!(mine[*f], o[*f], "{kind} {key} {f}");
            }
        }
    }

    // RabbitMQ's password hashes work here.
    for (user, password) in [
        ("app", "app-secret"),
        ("ops", "ops-secret"),
        ("watcher", "watch"),
        ("lead", "lead"),
    ] {
        let who = call_as(&b, (user, password), "GET", "/api/whoami", None, &[]).await;
        assert_eq!(who.status, 200, "{user}: {who:?}");
    }
    // The policies apply to the imported queues.
    let payments = call(&b, "GET", "/api/queues/shop/payments", None)
        .await
        .body;
    assert_eq!(payments["policy"], "dlx");
    // The topology routes: a headers binding with arguments and an exchange-to-exchange one.
    let conn = bounded(lapin::Connection::connect(
        &format!("amqp://ops:ops-secret@{}/shop", b.amqp),
        lapin::ConnectionProperties::default(),
    ))
    .await
    .expect("connect as an imported user");
    let ch = bounded(conn.create_channel()).await.unwrap();
    let headers: lapin::types::FieldTable = args(&[
        ("region", longstr("eu")),
        ("priority", lapin::types::AMQPValue::LongInt(1)),
    ]);
    publish_with(
        &ch,
        "orders.headers",
        "",
        b"eu order",
        lapin::BasicProperties::default().with_headers(headers),
    )
    .await;
    publish(&ch, "orders.topic", "order.bulk.7", b"bulk").await;
    assert_eq!(drain(&ch, "orders.eu").await, ["eu order"]);
    assert_eq!(drain(&ch, "orders.priority").await, ["bulk"]);
}
