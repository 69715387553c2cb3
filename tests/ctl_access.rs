//! The RabbitMQ tutorials' rabbitmqctl user/vhost/permission commands run through the
//! `switchboard ctl` binary against a broker, and the HTTP endpoints behind them: RabbitMQ's
//! status codes, access by tag, and importing a RabbitMQ-exported password hash.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Output;

/// Runs `switchboard ctl ARGS` against the broker as guest.
async fn ctl(b: &TestBroker, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(["ctl", "--url", &b.http_url()]).args(args);
    bounded(tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("join")
        .expect("ctl runs")
}

/// Runs a ctl command that must succeed; returns (stdout, stderr).
async fn ctl_ok(b: &TestBroker, args: &[&str]) -> (String, String) {
    let out = ctl(b, args).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "ctl {args:?} failed: {stdout} {stderr}"
    );
    (stdout, stderr)
}

#[tokio::test]
async fn tutorial_commands_through_ctl() {
    let b = TestBroker::start().await;
    let (out, info) = ctl_ok(&b, &["add_user", "myuser", "mypassword"]).await;
    assert!(info.contains("Adding user \"myuser\" ..."), "{info}");
    assert!(
        out.starts_with("Done. Don't forget to grant the user permissions"),
        "{out}"
    );
    let again = ctl(&b, &["add_user", "myuser", "x"]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("user_already_exists: myuser"));

    ctl_ok(&b, &["add_vhost", "myvhost"]).await;
    let (_, info) = ctl_ok(&b, &["set_user_tags", "myuser", "mytag", "management"]).await;
    assert!(info.contains("Setting tags for user \"myuser\" to [mytag, management] ..."));
    let (_, info) = ctl_ok(
        &b,
        &[
            "set_permissions",
            "-p",
            "myvhost",
            "myuser",
            ".*",
            ".*",
            ".*",
        ],
    )
    .await;
    assert!(info.contains("Setting permissions for user \"myuser\" in vhost \"myvhost\" ..."));

    let (out, _) = ctl_ok(&b, &["list_users"]).await;
    assert!(out.lines().any(|l| l == "user\ttags"), "{out}");
    assert!(
        out.lines().any(|l| l == "myuser\t[mytag, management]"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "guest\t[administrator]"), "{out}");
    let (out, _) = ctl_ok(&b, &["list_vhosts"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["name", "/", "myvhost", "other"]
    );
    let (out, _) = ctl_ok(&b, &["list_permissions", "-p", "myvhost"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["user\tconfigure\twrite\tread", "myuser\t.*\t.*\t.*"]
    );
    let (out, _) = ctl_ok(&b, &["list_user_permissions", "myuser"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["vhost\tconfigure\twrite\tread", "myvhost\t.*\t.*\t.*"]
    );

    // The user logs in to its vhost over AMQP with the password set through ctl.
    let c = bounded(lapin::Connection::connect(
        &format!("amqp://myuser:mypassword@{}/myvhost", b.amqp),
        lapin::ConnectionProperties::default(),
    ))
    .await
    .expect("myuser connects");
    let (out, info) = ctl_ok(&b, &["authenticate_user", "myuser", "mypassword"]).await;
    assert!(info.contains("Authenticating user \"myuser\" ..."));
    assert_eq!(out.trim(), "Success");
    assert!(!ctl(&b, &["authenticate_user", "myuser", "nope"])
        .await
        .status
        .success());

    ctl_ok(
        &b,
        &[
            "set_topic_permissions",
            "-p",
            "myvhost",
            "myuser",
            "amq.topic",
            "^{username}-w",
            "^{username}-r",
        ],
    )
    .await;
    let (out, _) = ctl_ok(&b, &["list_topic_permissions", "-p", "myvhost"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "user\texchange\twrite\tread",
            "myuser\tamq.topic\t^{username}-w\t^{username}-r"
        ]
    );
    ctl_ok(
        &b,
        &[
            "clear_topic_permissions",
            "-p",
            "myvhost",
            "myuser",
            "amq.topic",
        ],
    )
    .await;
    let (out, _) = ctl_ok(&b, &["list_topic_permissions", "-p", "myvhost"]).await;
    assert_eq!(out.lines().count(), 1, "{out}");

    ctl_ok(&b, &["change_password", "myuser", "newpass"]).await;
    assert!(!ctl(&b, &["authenticate_user", "myuser", "mypassword"])
        .await
        .status
        .success());
    ctl_ok(&b, &["authenticate_user", "myuser", "newpass"]).await;
    let (out, _) = ctl_ok(&b, &["list_users"]).await;
    assert!(
        out.lines().any(|l| l == "myuser\t[mytag, management]"),
        "tags kept: {out}"
    );

    ctl_ok(&b, &["clear_permissions", "-p", "myvhost", "myuser"]).await;
    let (out, _) = ctl_ok(&b, &["list_permissions", "-p", "myvhost"]).await;
    assert_eq!(out.lines().count(), 1, "{out}");
    // Deleting the vhost closes the connection to it.
    ctl_ok(&b, &["delete_vhost", "myvhost"]).await;
    wait_until("myvhost's connection to close", || !c.status().connected()).await;
    ctl_ok(&b, &["delete_user", "myuser"]).await;
    let gone = ctl(&b, &["delete_user", "myuser"]).await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no_such_user: myuser"));
    b.stop().await;
}

/// One HTTP call as `user`: the status and JSON body (Null when empty).
async fn http(
    b: &TestBroker,
    method: &'static str,
    path: &str,
    (user, password): (&str, &str),
    body: Option<Value>,
) -> (u16, Value) {
    let api = switchboard::ctl::api::Api::new(&b.http_url(), user, password);
    let path = path.to_owned();
    bounded(tokio::task::spawn_blocking(move || match method {
        "GET" => api.get(&path),
        "PUT" => api.put(&path, &body.unwrap_or(Value::Null)),
        _ => api.delete(&path),
    }))
    .await
    .expect("join")
    .expect("HTTP call")
}

const GUEST: (&str, &str) = ("guest", "guest");

#[tokio::test]
async fn endpoints_status_codes_and_tags() {
    let b = TestBroker::start().await;
    let body = json!({"password": "pw", "tags": "management"});
    assert_eq!(
        http(&b, "PUT", "/api/users/m", GUEST, Some(body.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        http(&b, "PUT", "/api/users/m", GUEST, Some(body)).await.0,
        204
    );
    let (status, user) = http(&b, "GET", "/api/users/m", GUEST, None).await;
    assert_eq!(status, 200);
    assert_eq!(user["tags"], json!(["management"]));
    assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_ne!(user["password_hash"], "pw");
    assert_eq!(
        http(&b, "PUT", "/api/vhosts/v1", GUEST, Some(json!({})))
            .await
            .0,
        201
    );
    assert_eq!(
        http(&b, "PUT", "/api/vhosts/v1", GUEST, Some(json!({})))
            .await
            .0,
        204
    );
    let perms = json!({"configure": "", "write": "", "read": ".*"});
    assert_eq!(
        http(&b, "PUT", "/api/permissions/v1/m", GUEST, Some(perms))
            .await
            .0,
        201
    );
    let bad = json!({"configure": "(", "write": "", "read": ""});
    assert_eq!(
        http(&b, "PUT", "/api/permissions/v1/m", GUEST, Some(bad))
            .await
            .0,
        400
    );
    let none = json!({"configure": "", "write": "", "read": ""});
    assert_eq!(
        http(&b, "PUT", "/api/permissions/nope/m", GUEST, Some(none))
            .await
            .0,
        404
    );
    let (_, p) = http(&b, "GET", "/api/permissions/v1/m", GUEST, None).await;
    assert_eq!(
        p,
        json!({"user":"m","vhost":"v1","configure":"","write":"","read":".*"})
    );

    // A management user reads what it may see, and changes nothing.
    let m = ("m", "pw");
    let (status, me) = http(&b, "GET", "/api/whoami", m, None).await;
    assert_eq!(
        (status, me),
        (200, json!({"name": "m", "tags": ["management"]}))
    );
    let (status, vhosts) = http(&b, "GET", "/api/vhosts", m, None).await;
    let names: Vec<&Value> = vhosts
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| &v["name"])
        .collect();
    assert_eq!((status, names), (200, vec![&json!("v1")]));
    assert_eq!(http(&b, "GET", "/api/users", m, None).await.0, 403);
    assert_eq!(
        http(&b, "PUT", "/api/vhosts/v2", m, Some(json!({})))
            .await
            .0,
        403
    );
    assert_eq!(
        http(&b, "GET", "/api/queues", ("m", "wrong"), None).await.0,
        401
    );
    // A user without tags may only ask who it is.
    let (status, err) = http(&b, "GET", "/api/queues", ("alice", "secret"), None).await;
    assert_eq!(
        (status, err["reason"].as_str()),
        (403, Some("Not management user"))
    );
    assert_eq!(
        http(&b, "GET", "/api/whoami", ("alice", "secret"), None)
            .await
            .0,
        200
    );

    assert_eq!(
        http(&b, "DELETE", "/api/permissions/v1/m", GUEST, None)
            .await
            .0,
        204
    );
    assert_eq!(
        http(&b, "DELETE", "/api/permissions/v1/m", GUEST, None)
            .await
            .0,
        404
    );
    assert_eq!(
        http(&b, "DELETE", "/api/vhosts/v1", GUEST, None).await.0,
        204
    );
    assert_eq!(http(&b, "DELETE", "/api/users/m", GUEST, None).await.0, 204);
    assert_eq!(http(&b, "GET", "/api/users/m", GUEST, None).await.0, 404);
    b.stop().await;
}

#[tokio::test]
async fn imports_a_rabbitmq_exported_user() {
    let b = TestBroker::start().await;
    // The hash of "test12" from RabbitMQ's docs (salt 908DC60A), as an export carries it.
    let exported = json!({
        "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": ["monitoring"],
    });
    assert_eq!(
        http(&b, "PUT", "/api/users/imported", GUEST, Some(exported))
            .await
            .0,
        201
    );
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        http(&b, "PUT", "/api/permissions/%2F/imported", GUEST, Some(all))
            .await
            .0,
        201
    );
    let c = bounded(lapin::Connection::connect(
        &format!("amqp://imported:test12@{}/%2f", b.amqp),
        lapin::ConnectionProperties::default(),
    ))
    .await;
    assert!(c.is_ok(), "the exported password logs in: {c:?}");
    // It reads back unchanged, so it exports to RabbitMQ as it came.
    let (_, u) = http(&b, "GET", "/api/users/imported", GUEST, None).await;
    assert_eq!(
        u["password_hash"],
        "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    );
    let wrong =
        json!({"password_hash": "short", "hashing_algorithm": "rabbit_password_hashing_sha256"});
    assert_eq!(
        http(&b, "PUT", "/api/users/x", GUEST, Some(wrong)).await.0,
        400
    );
    b.stop().await;
}
