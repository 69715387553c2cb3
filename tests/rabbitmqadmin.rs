//! RabbitMQ's own CLI, `rabbitmqadmin` v2 (`cargo install --locked rabbitmqadmin`), end to end
//! against our HTTP API: listings, declarations, publish and get, purge, delete, and a
//! definitions export and import.
//!
//! The binary is `SWITCHBOARD_RABBITMQADMIN` when set (then it must exist), else a v2
//! `rabbitmqadmin` on `PATH`; without either the test says so and passes without running. A cold
//! install took 7 min 15 s on the 2-core CI-sized machine, so `./test.sh` does not install it
//! (see README, "The management API").
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;
use common::amqp::*;
use common::*;
use lapin::options::BasicQosOptions;
use std::path::PathBuf;

/// The rabbitmqadmin binary to run, or None (with the reason printed) when there is none.
fn rabbitmqadmin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHBOARD_RABBITMQADMIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SWITCHBOARD_RABBITMQADMIN={} is not a file",
            path.display()
        );
        return Some(path);
    }
    // The rabbitmq-server package brings the Python rabbitmqadmin v1, which takes other
    // arguments: only a v2 counts.
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("rabbitmqadmin"))
            .find(|p| p.is_file() && is_v2(p))
    });
    if on_path.is_none() {
        eprintln!(
            "SKIPPED: no rabbitmqadmin v2 on PATH and SWITCHBOARD_RABBITMQADMIN is unset \
             (cargo install --locked rabbitmqadmin to run this test)"
        );
    }
    on_path
}

/// Whether `bin --version` says rabbitmqadmin 2.x.
fn is_v2(bin: &std::path::Path) -> bool {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("rabbitmqadmin 2."))
}

/// Runs one rabbitmqadmin command against `b` as guest; its stdout, or a panic with its
/// output when it fails.
async fn admin(bin: &PathBuf, b: &TestBroker, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port"])
        .arg(b.http.port().to_string())
        .args([
            "--username",
            "guest",
            "--password",
            "guest",
            "--non-interactive",
        ])
        .args(args);
    let out = bounded(tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("join")
        .expect("rabbitmqadmin runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rabbitmqadmin {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The whitespace-separated cells of each output line.
fn rows(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| !r.is_empty())
        .collect()
}

/// The row whose first cell is `first`.
fn row<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    rows(out)
        .into_iter()
        .find(|r| r[0] == first)
        .unwrap_or_else(|| panic!("no row for {first} in:\n{out}"))
}

#[tokio::test]
async fn rabbitmqadmin_commands_work_against_our_api() {
    let Some(bin) = rabbitmqadmin() else {
        return;
    };
    let b = TestBroker::start().await;
    // A client with a consumer holding an unacked delivery, for the connection and channel
    // listings.
    let (_c, ch) = b.channel().await;
    bounded(ch.basic_qos(5, BasicQosOptions::default()))
        .await
        .unwrap();
    declare(&ch, "held").await;
    let mut consumer = consume(&ch, "held", false).await;
    publish(&ch, "", "held", b"x").await;
    let _held = next(&mut consumer).await;

    let overview = admin(&bin, &b, &["show", "overview"]).await;
    assert!(overview.contains("Switchboard"), "{overview}");
    let vhosts = admin(&bin, &b, &["list", "vhosts"]).await;
    assert_eq!(row(&vhosts, "/")[0], "/");
    let users = admin(&bin, &b, &["list", "users"]).await;
    assert!(row(&users, "guest").contains(&"administrator"), "{users}");
    let exchanges = admin(&bin, &b, &["list", "exchanges"]).await;
    assert_eq!(row(&exchanges, "amq.topic")[2], "topic", "{exchanges}");
    let connections = admin(&bin, &b, &["list", "connections"]).await;
    assert!(connections.contains("guest"), "{connections}");
    // number, name (3 cells), vhost, state, consumer_count, confirm, prefetch_count,
    // messages_unacknowledged, messages_unconfirmed.
    let channels = admin(&bin, &b, &["list", "channels"]).await;
    let channel = row(&channels, "1");
    assert_eq!(
        channel[channel.len() - 5..],
        ["1", "false", "5", "1", "0"],
        "{channels}"
    );

    let consumers = admin(&bin, &b, &["list", "consumers"]).await;
    assert!(consumers.contains("held"), "{consumers}");
    let mine = admin(
        &bin,
        &b,
        &["list", "user_connections", "--username", "guest"],
    )
    .await;
    assert!(mine.contains("-> amqp"), "{mine}");

    admin(
        &bin,
        &b,
        &["declare", "queue", "--name", "orders", "--durable", "true"],
    )
    .await;
    admin(
        &bin,
        &b,
        &[
            "declare",
            "policy",
            "--name",
            "cap",
            "--pattern",
            "^orders$",
            "--apply-to",
            "queues",
            "--definition",
            r#"{"max-length": 2}"#,
        ],
    )
    .await;
    let policies = admin(&bin, &b, &["list", "policies"]).await;
    assert!(row(&policies, "cap").contains(&"^orders$"), "{policies}");
    admin(&bin, &b, &["delete", "policy", "--name", "cap"]).await;
    admin(
        &bin,
        &b,
        &[
            "declare",
            "binding",
            "--source",
            "amq.direct",
            "--destination-type",
            "queue",
            "--destination",
            "orders",
            "--routing-key",
            "new",
        ],
    )
    .await;
    let bindings = admin(&bin, &b, &["list", "bindings"]).await;
    assert!(
        rows(&bindings)
            .iter()
            .any(|r| r.contains(&"amq.direct") && r.contains(&"orders") && r.contains(&"new")),
        "{bindings}"
    );
    let queues = admin(&bin, &b, &["list", "queues"]).await;
    assert_eq!(row(&queues, "orders")[3], "true", "durable: {queues}");
    let published = admin(
        &bin,
        &b,
        &[
            "publish",
            "message",
            "--exchange",
            "amq.direct",
            "--routing-key",
            "new",
            "--payload",
            "hello",
        ],
    )
    .await;
    assert!(published.contains("routed"), "{published}");
    assert_eq!(ready_count(&ch, "orders").await, 1);
    let got = admin(
        &bin,
        &b,
        &["get", "messages", "--queue", "orders", "--count", "1"],
    )
    .await;
    assert!(got.contains("hello"), "{got}");
    assert_eq!(
        ready_count(&ch, "orders").await,
        0,
        "ack_requeue_false took it"
    );

    publish(&ch, "", "orders", b"one").await;
    publish(&ch, "", "orders", b"two").await;
    assert_eq!(ready_count(&ch, "orders").await, 2);
    admin(&bin, &b, &["purge", "queue", "--name", "orders"]).await;
    assert_eq!(ready_count(&ch, "orders").await, 0);

    let file = fresh_data_dir().join("definitions.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let file_arg = file.to_str().unwrap().to_owned();
    admin(&bin, &b, &["definitions", "export", "--file", &file_arg]).await;
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        exported["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "orders"),
        "{exported}"
    );
    admin(&bin, &b, &["delete", "queue", "--name", "orders"]).await;
    let vh = b.broker().vhost("/").unwrap();
    assert!(vh.queue("orders").is_none());
    admin(&bin, &b, &["definitions", "import", "--file", &file_arg]).await;
    let back = vh
        .queue("orders")
        .expect("the import brought the queue back");
    assert!(back.durable);
    publish(&ch, "amq.direct", "new", b"bound again").await;
    assert_eq!(ready_count(&ch, "orders").await, 1, "and its binding");

    // Closing: one connection by name, then every connection of a user.
    let before: Vec<String> = b.broker().connections().iter().map(|c| c.name()).collect();
    let second = b.connect().await;
    let name = b
        .broker()
        .connections()
        .iter()
        .map(|c| c.name())
        .find(|n| !before.contains(n))
        .expect("the second connection is listed");
    admin(&bin, &b, &["close", "connection", "--name", &name]).await;
    wait_until("the named connection to close", || {
        !second.status().connected()
    })
    .await;
    assert!(_c.status().connected(), "only the named one");
    admin(
        &bin,
        &b,
        &["close", "user_connections", "--username", "guest"],
    )
    .await;
    wait_until("guest's connections to close", || !_c.status().connected()).await;
}
