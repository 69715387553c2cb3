//! Adapter state the metadata group replicates beside the definitions: MQTT client-id owners,
//! persistent sessions with their subscriptions, and retained messages. Each is a record under
//! a key of its own kind (`mqtt-client/["/","c1"]`), made through [`super::definitions::Change`]
//! like every definition, and made live on every node by the adapter that owns it, through
//! [`AdapterRecords`] (the adapter sets it on the broker at start; the cluster never names an
//! adapter type).

use super::definitions::{self, Change};
use super::{Command, Consensus};
use serde::{Deserialize, Serialize};

pub const MQTT_CLIENT: &str = "mqtt-client";
pub const MQTT_SESSION: &str = "mqtt-session";
pub const MQTT_SUBSCRIPTION: &str = "mqtt-subscription";
pub const MQTT_RETAINED: &str = "mqtt-retained";
pub const MQTT_WILL: &str = "mqtt-will";

/// Which connection holds an MQTT client id: the node and that node's connection id. A node
/// applying a record that names another connection closes its own with that client id (a
/// takeover across nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttClientRecord {
    pub vhost: String,
    pub client_id: String,
    pub node: String,
    pub conn: u64,
}

/// The `conn` of a client-id record whose node holds the session with no connection, only to
/// expire it: the node the client was on was found down ([`adopt_sessions_of`]). Connection
/// ids start at 1.
pub const NO_CONNECTION: u64 = 0;

/// The will of a connected MQTT client, held by the cluster while its connection lasts, so
/// that the will is published when the client's node goes down with it: the node that has
/// the connection publishes it otherwise, and removes the record when the connection ends.
/// With `conn` [`NO_CONNECTION`], the will is due: `node` (the leader that found the client's
/// node down) publishes it after `delay` seconds, unless the client id was claimed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttWillRecord {
    pub vhost: String,
    pub client_id: String,
    pub node: String,
    pub conn: u64,
    /// The Will Delay Interval, already bounded by the session's expiry.
    pub delay: u32,
    /// The will as the adapter encodes it, in base64.
    pub message: String,
}

/// The commands that move the client ids held at `down` (a node found down) to node `by`:
/// a persistent session's to `by` with [`NO_CONNECTION`], so that `by` expires it on
/// schedule (its client is gone with its node, and no other node would); a clean session's
/// record is removed (its session went with the node). The wills of the clients connected
/// there move to `by` too, which publishes them. Each only while the record still names
/// `down`: a client that reconnected elsewhere meanwhile keeps its record.
pub fn adopt_sessions_of(cluster: &dyn Consensus, down: &str, by: &str) -> Vec<Command> {
    let mut out = wills_due(cluster, down, by);
    for (key, value) in cluster.list(&format!("{MQTT_CLIENT}/")) {
        let Ok(r) = serde_json::from_value::<MqttClientRecord>(value.clone()) else {
            continue;
        };
        if r.node != down {
            continue;
        }
        let session = definitions::key(MQTT_SESSION, &[&r.vhost, &r.client_id]);
        let then = if cluster.get(&session).is_some() {
            let moved = MqttClientRecord {
                node: by.to_owned(),
                conn: NO_CONNECTION,
                ..r
            };
            match serde_json::to_value(&moved) {
                Ok(value) => Command::Put {
                    key: key.clone(),
                    value,
                },
                Err(_) => continue,
            }
        } else {
            Command::Delete { key: key.clone() }
        };
        out.push(Command::Guarded {
            key,
            expected: Some(value),
            then: vec![then],
        });
    }
    out
}

/// The commands that make the wills of the clients connected at `down` due at `by`.
fn wills_due(cluster: &dyn Consensus, down: &str, by: &str) -> Vec<Command> {
    let mut out = Vec::new();
    for (key, value) in cluster.list(&format!("{MQTT_WILL}/")) {
        let Ok(r) = serde_json::from_value::<MqttWillRecord>(value.clone()) else {
            continue;
        };
        if r.node != down || r.conn == NO_CONNECTION {
            continue;
        }
        let due = MqttWillRecord {
            node: by.to_owned(),
            conn: NO_CONNECTION,
            ..r
        };
        let Ok(due) = serde_json::to_value(&due) else {
            continue;
        };
        out.push(Command::Guarded {
            key: key.clone(),
            expected: Some(value),
            then: vec![Command::Put { key, value: due }],
        });
    }
    out
}

/// A persistent MQTT session (its subscriptions are records of their own; its queue is a
/// replicated durable queue), with its QoS 2 state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttSessionRecord {
    pub vhost: String,
    pub client_id: String,
    pub expiry_interval: u32,
    #[serde(flatten)]
    pub qos2: MqttQos2State,
}

/// A persistent session's QoS 2 state: what a node the client comes back to needs to answer
/// it as the node it left would (a resent PUBLISH is not routed again, a message in flight
/// keeps its packet id, PUBREL is sent again). Each acknowledgement that depends on it waits
/// for the record holding it (on this node's disk, and clustered, the cluster's commit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttQos2State {
    /// Inbound QoS 2 packet ids PUBREC'd and not yet released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound_qos2: Vec<u16>,
    /// Outbound QoS 2 messages in flight: (packet id, id in the session queue).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<(u16, u64)>,
    /// Outbound QoS 2 packet ids PUBREC'd, awaiting PUBCOMP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<u16>,
}

/// One subscription of a persistent session, with its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttSubscriptionRecord {
    pub vhost: String,
    pub client_id: String,
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

/// A topic's retained message: `message` is the adapter's stored encoding, in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedRecord {
    pub vhost: String,
    pub topic: String,
    pub message: String,
}

/// What an adapter does with the committed changes of its own records, on every node (the
/// proposer too), in log order, and again for entries re-applied after a restart: applying
/// must be idempotent. Must not propose (it runs inside the apply).
pub trait AdapterRecords: Send + Sync + std::fmt::Debug {
    /// Makes `change` live on this node; the store's LSN to wait for (0: none).
    fn apply(&self, change: &Change) -> u64;
}
