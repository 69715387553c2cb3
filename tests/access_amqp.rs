//! Access control over AMQP: vhost access, the configure/write/read matrix with RabbitMQ's
//! refusal texts, topic permissions, run-time changes, deleted users and vhosts, and users,
//! vhosts and permissions surviving a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod common;

use common::amqp::*;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use switchboard::core::access::password::PasswordHash;
use switchboard::core::access::permissions::{PermissionSpec, TopicPermissionSpec};

const REFUSED: u16 = 403;
const NOT_ALLOWED: u16 = 530;

fn spec(c: &str, w: &str, r: &str) -> PermissionSpec {
    PermissionSpec {
        configure: c.into(),
        write: w.into(),
        read: r.into(),
    }
}

async fn connect_as(
    b: &TestBroker,
    user: &str,
    password: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    let vhost = vhost.replace('/', "%2f");
    bounded(Connection::connect(
        &format!("amqp://{user}:{password}@{}/{vhost}", b.amqp),
        ConnectionProperties::default(),
    ))
    .await
}

async fn channel_as(b: &TestBroker, user: &str) -> (Connection, lapin::Channel) {
    let c = connect_as(b, user, "pw", "/").await.expect("connect");
    let ch = bounded(c.create_channel()).await.expect("channel");
    (c, ch)
}

/// Publishes in confirm mode and waits for the confirm: the channel's closing error when the
/// publish was refused.
async fn publish_refused(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<()> {
    bounded(ch.confirm_select(ConfirmSelectOptions::default())).await?;
    let options = BasicPublishOptions::default();
    let confirm =
        bounded(ch.basic_publish(exchange.into(), key.into(), options, body, properties)).await?;
    bounded(confirm).await.map(|_| ())
}

/// A user "u" (password "pw") allowed only names starting with "u-" on "/".
fn restricted_user(b: &TestBroker) {
    let access = &b.broker().access;
    access.put_user("u", PasswordHash::new("pw"), &[]);
    access
        .set_permissions("/", "u", &spec("^u-", "^u-", "^u-"))
        .unwrap();
}

#[tokio::test]
async fn no_permission_on_a_vhost_means_530() {
    let b = TestBroker::start().await;
    restricted_user(&b);
    // "u" has permissions on "/" only.
    assert!(connect_as(&b, "u", "pw", "/").await.is_ok());
    let e = connect_as(&b, "u", "pw", "other").await.unwrap_err();
    let (code, text) = amqp_error(&e).expect("a protocol error");
    assert_eq!(code, NOT_ALLOWED);
    assert_eq!(
        text,
        "NOT_ALLOWED - access to vhost 'other' refused for user 'u'"
    );
    // A wrong password is refused as before.
    assert!(connect_as(&b, "u", "wrong", "/").await.is_err());
    b.stop().await;
}

#[tokio::test]
async fn configure_write_read_matrix() {
    let b = TestBroker::start().await;
    restricted_user(&b);
    let (_gc, guest) = b.channel().await;
    declare(&guest, "guest-q").await;
    publish(&guest, "", "guest-q", b"private").await;
    declare_exchange(&guest, "guest-x", ExchangeKind::Fanout).await;

    // configure: declare and delete.
    let (_c, ch) = channel_as(&b, "u").await;
    declare(&ch, "u-q").await;
    declare_exchange(&ch, "u-x", ExchangeKind::Fanout).await;
    let (_c, ch) = channel_as(&b, "u").await;
    assert_amqp_err(
        ch.queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        REFUSED,
        "access to queue 'q' in vhost '/' refused for user 'u'",
    );
    let (_c, ch) = channel_as(&b, "u").await;
    assert_amqp_err(
        ch.queue_delete("guest-q".into(), QueueDeleteOptions::default())
            .await,
        REFUSED,
        "access to queue 'guest-q' in vhost '/' refused for user 'u'",
    );
    let (_c, ch) = channel_as(&b, "u").await;
    assert_amqp_err(
        ch.exchange_delete("guest-x".into(), ExchangeDeleteOptions::default())
            .await,
        REFUSED,
        "access to exchange 'guest-x' in vhost '/' refused for user 'u'",
    );
    // A passive declare needs no permission (as RabbitMQ).
    let (_c, ch) = channel_as(&b, "u").await;
    bounded(ch.queue_declare("guest-q".into(), passive(), FieldTable::default()))
        .await
        .expect("passive declare");

    // read: get, consume, purge.
    assert_amqp_err(
        ch.basic_get("guest-q".into(), BasicGetOptions::default())
            .await,
        REFUSED,
        "access to queue 'guest-q' in vhost '/' refused for user 'u'",
    );
    let (_c, ch) = channel_as(&b, "u").await;
    assert_amqp_err(
        ch.basic_consume(
            "guest-q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
        REFUSED,
        "access to queue 'guest-q' in vhost '/' refused for user 'u'",
    );
    let (_c, ch) = channel_as(&b, "u").await;
    assert_amqp_err(
        ch.queue_purge("guest-q".into(), QueuePurgeOptions::default())
            .await,
        REFUSED,
        "access to queue 'guest-q' in vhost '/' refused for user 'u'",
    );
    assert_eq!(ready_count(&guest, "guest-q").await, 1, "nothing was taken");

    // bind: write on the queue, read on the exchange. Binding "#" on amq.topic is refused.
    let (_c, ch) = channel_as(&b, "u").await;
    assert_amqp_err(
        ch.queue_bind(
            "u-q".into(),
            "amq.topic".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        REFUSED,
        "access to exchange 'amq.topic' in vhost '/' refused for user 'u'",
    );
    let (_c, ch) = channel_as(&b, "u").await;
    bind(&ch, "u-q", "u-x", "").await;

    // write: publishing to the default exchange (checked as amq.default) and to others.
    let ch = bounded(_c.create_channel()).await.unwrap();
    let closed = publish_refused(&ch, "", "guest-q", b"x", BasicProperties::default()).await;
    assert_amqp_err(
        closed,
        REFUSED,
        "access to exchange 'amq.default' in vhost '/' refused for user 'u'",
    );
    let (_c, ch) = channel_as(&b, "u").await;
    publish(&ch, "u-x", "", b"mine").await;
    assert_eq!(drain(&ch, "u-q").await, vec!["mine"]);
    b.stop().await;
}

#[tokio::test]
async fn permission_changes_apply_to_new_operations() {
    let b = TestBroker::start().await;
    restricted_user(&b);
    let (_gc, guest) = b.channel().await;
    declare(&guest, "shared").await;
    let (c, ch) = channel_as(&b, "u").await;
    assert_amqp_err(
        ch.queue_declare(
            "shared".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        REFUSED,
        "access to queue 'shared'",
    );
    // Widen: the same connection may now declare; publishing (cached per exchange) too.
    b.broker()
        .access
        .set_permissions("/", "u", &spec(".*", ".*", ".*"))
        .unwrap();
    let ch = bounded(c.create_channel()).await.unwrap();
    declare(&ch, "shared").await;
    publish(&ch, "", "shared", b"now allowed").await;
    assert_eq!(drain(&ch, "shared").await, vec!["now allowed"]);
    // Narrow again: the cached write verdict is dropped.
    b.broker()
        .access
        .set_permissions("/", "u", &spec(".*", "", ".*"))
        .unwrap();
    let closed = publish_refused(&ch, "", "shared", b"x", BasicProperties::default()).await;
    assert_amqp_err(closed, REFUSED, "access to exchange 'amq.default'");
    b.stop().await;
}

#[tokio::test]
async fn topic_permissions_on_publish_and_bind() {
    let b = TestBroker::start().await;
    let access = &b.broker().access;
    access.put_user("u", PasswordHash::new("pw"), &[]);
    access
        .set_permissions("/", "u", &spec(".*", ".*", ".*"))
        .unwrap();
    access
        .set_topic_permissions(
            "/",
            "u",
            &TopicPermissionSpec {
                exchange: "amq.topic".into(),
                write: "^{username}\\.".into(),
                read: "^{username}\\.".into(),
            },
        )
        .unwrap();
    let (c, ch) = channel_as(&b, "u").await;
    declare(&ch, "u-q").await;
    bind(&ch, "u-q", "amq.topic", "u.#").await;
    publish(&ch, "amq.topic", "u.temp", b"own").await;
    assert_eq!(drain(&ch, "u-q").await, vec!["own"]);
    let ch2 = bounded(c.create_channel()).await.unwrap();
    assert_amqp_err(
        ch2.queue_bind(
            "u-q".into(),
            "amq.topic".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        REFUSED,
        "access to topic '#' in exchange 'amq.topic' in vhost '/' refused for user 'u'",
    );
    let ch3 = bounded(c.create_channel()).await.unwrap();
    let closed = publish_refused(
        &ch3,
        "amq.topic",
        "other.temp",
        b"x",
        BasicProperties::default(),
    )
    .await;
    assert_amqp_err(
        closed,
        REFUSED,
        "access to topic 'other.temp' in exchange 'amq.topic' in vhost '/' refused for user 'u'",
    );
    // Non-topic exchanges are not subject to topic permissions.
    let (_c, ch) = channel_as(&b, "u").await;
    publish(&ch, "", "u-q", b"direct").await;
    assert_eq!(drain(&ch, "u-q").await, vec!["direct"]);
    b.stop().await;
}

#[tokio::test]
async fn user_id_needs_impersonator_to_differ() {
    let b = TestBroker::start().await;
    let access = &b.broker().access;
    for (name, tags) in [("u", vec![]), ("imp", vec!["impersonator".to_owned()])] {
        access.put_user(name, PasswordHash::new("pw"), &tags);
        access
            .set_permissions("/", name, &spec(".*", ".*", ".*"))
            .unwrap();
    }
    let (_c, ch) = channel_as(&b, "imp").await;
    declare(&ch, "q").await;
    let props = BasicProperties::default().with_user_id("someone-else".into());
    bounded(ch.basic_publish(
        "".into(),
        "q".into(),
        BasicPublishOptions::default(),
        b"1",
        props.clone(),
    ))
    .await
    .unwrap();
    assert_eq!(drain(&ch, "q").await, vec!["1"]);
    let (_c, ch) = channel_as(&b, "u").await;
    let closed = publish_refused(&ch, "", "q", b"2", props).await;
    assert_amqp_err(
        closed,
        406,
        "user_id property set to 'someone-else' but authenticated user was 'u'",
    );
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_user_or_vhost_closes_its_connections() {
    let b = TestBroker::start().await;
    restricted_user(&b);
    let u = connect_as(&b, "u", "pw", "/").await.unwrap();
    b.broker().delete_user("u").unwrap();
    wait_until("u's connection to close", || !u.status().connected()).await;
    assert!(connect_as(&b, "u", "pw", "/").await.is_err());

    b.broker().add_vhost("temp");
    let access = &b.broker().access;
    access
        .set_permissions("temp", "guest", &spec(".*", ".*", ".*"))
        .unwrap();
    let c = connect_as(&b, "guest", "guest", "temp").await.unwrap();
    let ch = bounded(c.create_channel()).await.unwrap();
    // A vhost added at run time has the standard exchanges.
    declare(&ch, "tq").await;
    bind(&ch, "tq", "amq.topic", "#").await;
    publish(&ch, "amq.topic", "a.b", b"m").await;
    assert_eq!(drain(&ch, "tq").await, vec!["m"]);
    publish(&ch, "", "tq", b"left").await;
    assert!(b.broker().delete_vhost("temp").is_some());
    wait_until("temp's connection to close", || !c.status().connected()).await;
    assert!(b.broker().vhost("temp").is_none());
    assert!(access.permissions_of("temp", "guest").is_none());
    // Re-adding it starts empty.
    b.broker().add_vhost("temp");
    access
        .set_permissions("temp", "guest", &spec(".*", ".*", ".*"))
        .unwrap();
    let c = connect_as(&b, "guest", "guest", "temp").await.unwrap();
    let ch = bounded(c.create_channel()).await.unwrap();
    assert_amqp_err(
        ch.queue_declare("tq".into(), passive(), FieldTable::default())
            .await,
        404,
        "tq",
    );
    b.stop().await;
}

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart() {
    let dir = fresh_data_dir();
    let b = TestBroker::start_in(&dir, |_| {}).await;
    let broker = b.broker().clone();
    let lsn = broker.add_vhost("apps");
    broker.access.durable(lsn).await;
    let lsn = broker
        .access
        .put_user("app", PasswordHash::new("pw"), &["monitoring".into()]);
    broker.access.durable(lsn).await;
    let lsn = broker
        .access
        .set_permissions("apps", "app", &spec("^app", "^app|amq\\.default", "^app"))
        .unwrap();
    broker.access.durable(lsn).await;
    // Seeded users can be deleted for good too.
    let lsn = broker.delete_user("alice").unwrap();
    broker.access.durable(lsn).await;
    drop(broker);
    b.stop().await;

    // The config still lists alice and not "apps": the store wins over the seed.
    let b = TestBroker::start_in(&dir, |_| {}).await;
    assert!(b.broker().vhost("apps").is_some());
    assert!(b.broker().access.user("alice").is_none());
    assert_eq!(
        b.broker().access.user("app").unwrap().tags,
        vec!["monitoring".to_owned()]
    );
    let c = connect_as(&b, "app", "pw", "apps")
        .await
        .expect("app logs in after restart");
    let ch = bounded(c.create_channel()).await.unwrap();
    declare(&ch, "app-q").await;
    let ch = bounded(c.create_channel()).await.unwrap();
    assert_amqp_err(
        ch.queue_declare(
            "x".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        REFUSED,
        "access to queue 'x' in vhost 'apps' refused for user 'app'",
    );
    assert!(connect_as(&b, "app", "pw", "/").await.is_err());
    b.stop().await;
}
