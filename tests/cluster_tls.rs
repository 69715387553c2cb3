#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking
//! Mutual TLS between nodes: three nodes holding certificates from the cluster's authority
//! form a cluster, replicate a quorum queue and forward a classic queue's traffic over TLS;
//! a dialer speaking plain TCP, and a node whose certificate another authority signed, are
//! refused before the cookie is even asked for.

mod common;

use common::amqp::{
    args, confirm_mode, consume, declare_durable, longstr, next, persistent, publish_confirmed,
};
use common::cluster::{form_tweaked, Node, CLUSTER, COOKIE};
use common::tls::TestPki;
use common::{bounded, fresh_data_dir};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use switchboard::cluster::transport::{dial, Auth};
use switchboard::cluster::ClusterConfig;
use switchboard::core::clock::SystemClock;

/// Gives node `name` a certificate from `pki` for inter-node TLS.
fn with_tls(pki: &TestPki, name: &str, c: &mut ClusterConfig) {
    let (cert, key, ca) = pki.write_node_certificate(name);
    c.tls_cert_file = cert.display().to_string();
    c.tls_key_file = key.display().to_string();
    c.tls_ca_file = ca.display().to_string();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_clusters_certificates_serve_each_other_and_others_are_refused() {
    let pki = TestPki::new();
    let nodes = form_tweaked(3, Arc::new(SystemClock), &|i, c| {
        with_tls(&pki, &format!("node-{i}"), c)
    })
    .await;

    // A quorum queue's group replicates over TLS: declared on node 1, published to through
    // node 2, consumed on node 1 (which leads it once its declaration is answered).
    let (_c1, ch1) = nodes[1].broker().channel().await;
    let qq = common::unique("tls-qq");
    declare_durable(&ch1, &qq, args(&[("x-queue-type", longstr("quorum"))])).await;
    let mut consumer = consume(&ch1, &qq, false).await;
    let (_c2, ch2) = nodes[2].broker().channel().await;
    confirm_mode(&ch2).await;
    publish_confirmed(&ch2, "", &qq, b"replicated over TLS", persistent()).await;
    assert_eq!(&next(&mut consumer).await.data[..], b"replicated over TLS");

    // A classic queue on node 0 is reached from node 2 through forwarding, over TLS too.
    let (_c0, ch0) = nodes[0].broker().channel().await;
    let q = common::unique("tls-classic");
    declare_durable(&ch0, &q, FieldTable::default()).await;
    let (_c2b, ch2b) = nodes[2].broker().channel().await;
    let mut remote = consume(&ch2b, &q, true).await;
    confirm_mode(&ch0).await;
    publish_confirmed(&ch0, "", &q, b"forwarded over TLS", persistent()).await;
    assert_eq!(&next(&mut remote).await.data[..], b"forwarded over TLS");

    // Plain TCP gets nowhere: the listener wants a TLS handshake first.
    let plain = Auth {
        cluster: CLUSTER.into(),
        node: "plain@test".into(),
        cookie: COOKIE.as_bytes().to_vec(),
        tls: None,
    };
    let dialed = bounded(dial(&nodes[0].addr, &plain, None, Duration::from_secs(3))).await;
    assert!(dialed.is_err(), "a plain-text dialer is refused");

    // The right cookie with a certificate from another authority: refused at the handshake,
    // and never a member.
    let other = TestPki::new();
    let intruder = Node::start_tweaked(
        "intruder@tls",
        &fresh_data_dir(),
        "127.0.0.1:0",
        &[],
        COOKIE,
        Arc::new(SystemClock),
        &|c| with_tls(&other, "intruder", c),
    )
    .await;
    let err = bounded(intruder.consensus().join(nodes[0].addr.clone()))
        .await
        .expect_err("join refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    let status = nodes[0].status().await;
    assert_eq!(status.members.len(), 3, "{status:?}");
}

#[test]
fn inter_node_tls_needs_all_three_files() {
    let c = ClusterConfig {
        tls_cert_file: "/etc/switchboard/node.pem".into(),
        ..ClusterConfig::default()
    };
    let err = switchboard::cluster::tls::NodeTls::from_config(&c).expect_err("incomplete");
    assert!(err.to_string().contains("cluster.tls_key_file"), "{err}");
}
