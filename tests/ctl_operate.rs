//! rabbitmqctl's operating commands through the `switchboard ctl` binary: queues, connections,
//! consumers, policies, status, definitions and a graceful stop.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::process::BrokerProcess;
use common::*;
use std::process::Output;

/// Runs `switchboard ctl ARGS` against the HTTP API at `url` as guest.
async fn ctl_at(url: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(["ctl", "--url", url]).args(args);
    bounded(tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("join")
        .expect("ctl runs")
}

async fn ctl(b: &TestBroker, args: &[&str]) -> Output {
    ctl_at(&b.http_url(), args).await
}

/// A command that must succeed: (stdout, stderr).
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

/// A command that must fail: its stderr.
async fn ctl_err(b: &TestBroker, args: &[&str]) -> String {
    let out = ctl(b, args).await;
    assert!(!out.status.success(), "ctl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn delete_and_purge_queues() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ctlq");
    declare(&ch, &q).await;
    for _ in 0..3 {
        publish(&ch, "", &q, b"m").await;
    }
    ready_count(&ch, &q).await;
    let err = ctl_err(&b, &["delete_queue", &q, "--if-empty"]).await;
    assert!(err.contains("not empty"), "{err}");
    let (_, info) = ctl_ok(&b, &["purge_queue", &q]).await;
    assert!(
        info.contains(&format!("Purging queue '{q}' in vhost '/' ...")),
        "{info}"
    );
    assert_eq!(ready_count(&ch, &q).await, 0);
    publish(&ch, "", &q, b"m").await;
    ready_count(&ch, &q).await;
    let (out, info) = ctl_ok(&b, &["delete_queue", &q]).await;
    assert!(info.contains(&format!("Deleting queue '{q}' on vhost '/' ...")));
    assert_eq!(out.trim(), "Queue was successfully deleted with 1 messages");
    let err = ctl_err(&b, &["delete_queue", &q]).await;
    assert!(err.contains("was not found"), "{err}");
    let err = ctl_err(&b, &["purge_queue", "-p", "nosuch", "q"]).await;
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn list_consumers_and_close_connection() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("ctlc");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, false).await;
    let (out, info) = ctl_ok(&b, &["list_consumers"]).await;
    assert!(info.contains("Listing consumers in vhost / ..."), "{info}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "queue_name\tchannel_pid\tconsumer_tag\tack_required\tactive\targuments"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with(&q))
        .expect("our consumer");
    let cells: Vec<&str> = row.split('\t').collect();
    assert_eq!(cells[3], "true");
    let connection = cells[1].to_owned();
    assert!(connection.ends_with("-> amqp"), "{connection}");
    let (out, _) = ctl_ok(&b, &["list_consumers", "-q", "queue_name", "exclusive"]).await;
    assert!(out.lines().any(|l| l == format!("{q}\tfalse")), "{out}");
    let err = ctl_err(&b, &["list_consumers", "-p", "nosuch"]).await;
    assert!(
        err.contains("Virtual host 'nosuch' does not exist"),
        "{err}"
    );
    let err = ctl_err(&b, &["list_queues", "-p", "nosuch"]).await;
    assert!(
        err.contains("Virtual host 'nosuch' does not exist"),
        "{err}"
    );

    let (out, info) = ctl_ok(&b, &["list_channels"]).await;
    assert!(info.contains("Listing channels ..."), "{info}");
    assert!(
        out.lines()
            .any(|l| l == format!("{connection} (1)\tguest\t1\t0")),
        "name, user, consumer_count, messages_unacknowledged: {out}"
    );
    publish(&ch, "", &q, b"held").await;
    let _held = next(&mut consumer).await;
    let (out, _) = ctl_ok(
        &b,
        &[
            "list_channels",
            "number",
            "messages_unacknowledged",
            "transactional",
            "confirm",
        ],
    )
    .await;
    assert!(
        out.lines().any(|l| l == "1\t1\tfalse\tfalse"),
        "a consumer holding one unacked delivery: {out}"
    );

    let (_, info) = ctl_ok(&b, &["close_connection", &connection, "go away"]).await;
    assert!(info.contains("reason: go away"), "{info}");
    common::wait_until("the closed connection to go", || !c.status().connected()).await;
    let err = ctl_err(&b, &["close_connection", "nobody", "x"]).await;
    assert!(err.contains("no connection named 'nobody'"), "{err}");
}

#[tokio::test]
async fn set_list_and_clear_policies() {
    let b = TestBroker::start().await;
    let (_, info) = ctl_ok(
        &b,
        &[
            "set_policy",
            "--priority",
            "3",
            "--apply-to",
            "queues",
            "lim",
            "^lim\\.",
            r#"{"max-length": 1}"#,
        ],
    )
    .await;
    assert!(
        info.contains("Setting policy \"lim\" for pattern \"^lim\\.\""),
        "{info}"
    );
    let (out, _) = ctl_ok(&b, &["list_policies"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority"
    );
    assert_eq!(lines[1], "/\tlim\t^lim\\.\tqueues\t{\"max-length\":1}\t3");
    // The policy caps a queue declared after it.
    let (_c, ch) = b.channel().await;
    declare(&ch, "lim.q").await;
    publish(&ch, "", "lim.q", b"1").await;
    publish(&ch, "", "lim.q", b"2").await;
    assert_eq!(ready_count(&ch, "lim.q").await, 1);
    let err = ctl_err(&b, &["set_policy", "bad", ".*", r#"{"nope": 1}"#]).await;
    assert!(err.contains("unknown definition key 'nope'"), "{err}");
    let err = ctl_err(&b, &["set_policy", "bad", ".*", "{not json"]).await;
    assert!(err.contains("not valid JSON"), "{err}");
    ctl_ok(&b, &["clear_policy", "lim"]).await;
    let (out, _) = ctl_ok(&b, &["list_policies"]).await;
    assert_eq!(out.lines().count(), 1);
    let err = ctl_err(&b, &["clear_policy", "lim"]).await;
    assert!(err.contains("Parameter does not exist"), "{err}");
    let err = ctl_err(&b, &["list_policies", "-p", "nosuch"]).await;
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn status_shows_node_listeners_and_alarms() {
    let b = TestBroker::start().await;
    let (out, info) = ctl_ok(&b, &["status"]).await;
    assert!(info.starts_with("Status of node switchboard@"), "{info}");
    assert!(out.contains(&format!(
        "Switchboard version: {}",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(
        out.contains(&format!(
            "Interface: 127.0.0.1, port: {}, protocol: amqp",
            b.amqp.port()
        )),
        "{out}"
    );
    assert!(out.contains("Alarms\n\n(none)"), "{out}");
}

#[tokio::test]
async fn export_then_import_definitions_files() {
    let b = TestBroker::start().await;
    let dir = fresh_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("defs.json");
    let file = file.to_str().unwrap();
    let (_c, ch) = b.channel().await;
    let q = unique("exported");
    declare(&ch, &q).await;
    let (_, info) = ctl_ok(&b, &["export_definitions", file]).await;
    assert!(
        info.contains("Exporting definitions in JSON to a file at"),
        "{info}"
    );
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(&q));

    ctl_ok(&b, &["delete_queue", &q]).await;
    let (_, info) = ctl_ok(&b, &["import_definitions", file]).await;
    assert!(
        info.contains("Importing definitions in JSON from a file at"),
        "{info}"
    );
    assert_eq!(ready_count(&ch, &q).await, 0);
    let err = ctl_err(&b, &["import_definitions", "/nonexistent/defs.json"]).await;
    assert!(err.contains("cannot read"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn stop_shuts_the_broker_down_gracefully() {
    let dir = fresh_data_dir();
    let mut broker = BrokerProcess::spawn(&dir);
    let url = format!("http://{}", broker.http);
    let out = ctl_at(&url, &["stop"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Stopping and halting node switchboard@"),
        "{stderr}"
    );
    let status = tokio::task::spawn_blocking(move || broker.exited_within(WAIT * 2))
        .await
        .unwrap();
    assert_eq!(status.map(|s| s.success()), Some(true));
    let _ = std::fs::remove_dir_all(&dir);
}
