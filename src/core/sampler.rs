//! The statistics sampler: every `http.stats_interval_ms` it reads every queue's, exchange's
//! and connection's counters once and turns them into rates (see [`super::stats`]). This is
//! the only place that walks every object for statistics; the per-message paths only count.

use super::broker::{Broker, ConnectionEntry};
use super::stats::{
    add_rates, alive_of, key_of, protocol_owner, Counts, Observed, RateTable, Rates, Share,
};
use super::vhost::VHost;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Samples every `interval` until the broker shuts down (0: never; counts are still kept and
/// reported, rates stay 0).
pub async fn run(broker: Arc<Broker>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut shutdown = broker.shutdown_signal();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => sample(&broker, Instant::now()),
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass over every object at `now`.
pub fn sample(broker: &Broker, now: Instant) {
    let vhosts = broker.vhosts();
    let connections = broker.connections();
    let mut table = broker.stats.table();
    let dt = table.begin(now);
    let mut vhost_rates: HashMap<String, Rates> = HashMap::new();
    for vh in &vhosts {
        let retire_to = [(vh.name.as_str(), Some(Share::Queue))];
        for q in vh.queues() {
            let key = key_of(&q);
            table.observe(
                Observed {
                    key,
                    alive: alive_of(&q),
                    retire_to: &retire_to,
                    counts: q.stats_recent().counters.counts(),
                    octets: (0, 0),
                },
                dt,
            );
            add_rates(
                &mut vhost_rates,
                &vh.name,
                &Share::Queue.of(&table.rates(key)),
            );
        }
        let retire_to = [(vh.name.as_str(), Some(Share::Exchange))];
        for e in vh.exchanges() {
            let key = key_of(&e);
            table.observe(
                Observed {
                    key,
                    alive: alive_of(&e),
                    retire_to: &retire_to,
                    counts: e.stats.counts(),
                    octets: (0, 0),
                },
                dt,
            );
            add_rates(
                &mut vhost_rates,
                &vh.name,
                &Share::Exchange.of(&table.rates(key)),
            );
        }
    }
    for c in &connections {
        if c.stats.is_retired() {
            continue;
        }
        let vhost = session_of(c).1;
        let protocol = protocol_owner(c.protocol);
        let retire_to = [
            (vhost.as_str(), Some(Share::Connection)),
            (protocol.as_str(), None),
        ];
        let key = key_of(c);
        table.observe(
            Observed {
                key,
                alive: alive_of(c),
                retire_to: &retire_to,
                counts: c.stats.counts(),
                octets: c.stats.octets(),
            },
            dt,
        );
        add_rates(
            &mut vhost_rates,
            &vhost,
            &Share::Connection.of(&table.rates(key)),
        );
    }
    table.end(vhost_rates);
}

/// Folds a closing connection's counts into its vhost's and protocol's totals at once.
pub fn connection_closed(broker: &Broker, c: &Arc<ConnectionEntry>) {
    let vhost = session_of(c).1;
    let protocol = protocol_owner(c.protocol);
    let retire_to = [
        (vhost.as_str(), Some(Share::Connection)),
        (protocol.as_str(), None),
    ];
    broker
        .stats
        .table()
        .retire_connection(key_of(c), &c.stats, &retire_to);
}

/// (user, vhost) of a connection; empty before it opened.
pub fn session_of(c: &ConnectionEntry) -> (String, String) {
    c.session
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_default()
}

/// A vhost's totals now: its gone objects' and the shares of its live ones.
pub fn vhost_counts(table: &RateTable, vh: &VHost, connections: &[Arc<ConnectionEntry>]) -> Counts {
    let mut total = table.retired(&vh.name);
    for q in vh.queues() {
        total.add(&Share::Queue.of(&q.stats_recent().counters.counts()));
    }
    for e in vh.exchanges() {
        total.add(&Share::Exchange.of(&e.stats.counts()));
    }
    for c in connections.iter().filter(|c| !c.stats.is_retired()) {
        if session_of(c).1 == vh.name {
            total.add(&Share::Connection.of(&c.stats.counts()));
        }
    }
    total
}

/// Totals of a protocol's connections, open and closed.
pub fn protocol_counts(
    table: &RateTable,
    protocol: &str,
    connections: &[Arc<ConnectionEntry>],
) -> Counts {
    let mut total = table.retired(&protocol_owner(protocol));
    for c in connections
        .iter()
        .filter(|c| c.protocol == protocol && !c.stats.is_retired())
    {
        total.add(&c.stats.counts());
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stats::Field;
    use crate::core::vhost::QueueSpec;
    use crate::core::Message;

    #[test]
    fn vhost_totals_outlive_a_deleted_queue() {
        let config = crate::config::Config::parse(crate::config::DEFAULT_CONFIG);
        let broker = Broker::new(config.expect("default config"));
        let vh = broker.vhost("/").expect("default vhost");
        let q = vh
            .declare_queue(
                QueueSpec {
                    name: "q".into(),
                    ..Default::default()
                },
                false,
                1,
            )
            .expect("declared")
            .queue;
        let exchange = vh.exchange("").expect("default exchange");
        for _ in 0..3 {
            let msg = Arc::new(Message::new(
                String::new(),
                "q".into(),
                Default::default(),
                None,
                bytes::Bytes::from_static(b"x"),
                Default::default(),
            ));
            let to = crate::core::PublishTo::Exchange(&exchange);
            let publish = crate::core::Publish {
                to,
                message: &msg,
                holdable: false,
            };
            vh.publish(publish, &mut Vec::new());
        }
        let t0 = Instant::now();
        sample(&broker, t0);
        let (_, effects) = q.get(true);
        vh.apply(&q, effects);
        sample(&broker, t0 + Duration::from_secs(1));
        let rates = broker.stats.table().vhost_rates("/");
        assert_eq!(rates.get(Field::GetNoAck), 1.0);
        vh.remove_queue(&q);
        drop(q);
        sample(&broker, t0 + Duration::from_secs(2));
        let table = broker.stats.table();
        let counts = vhost_counts(&table, &vh, &[]);
        assert_eq!(
            counts.get(Field::Publish),
            3,
            "published into the default exchange"
        );
        assert_eq!(counts.get(Field::GetNoAck), 1, "kept after the queue went");
    }
}
