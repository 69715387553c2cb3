//! STOMP destinations as RabbitMQ's STOMP plugin maps them onto exchanges and queues
//! (DESIGN.md "STOMP destinations"), both ways.

use super::error::{StompError, StompResult};
use base64::Engine;
use switchboard_amqp::{FieldTable, FieldValue};
use switchboard_stomp::Frame;

/// The exchange that `/topic/…` destinations use.
pub const TOPIC_EXCHANGE: &str = "amq.topic";

/// A parsed `destination` (or `reply-to`) header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `/queue/q`: queue `q`, declared durable, through the default exchange.
    Queue(String),
    /// `/amq/queue/q`: an existing queue `q`; nothing is declared.
    AmqQueue(String),
    /// `/topic/k`: `amq.topic` with routing key (or binding pattern) `k`.
    Topic(String),
    /// `/exchange/E[/k]`: exchange `E` with routing key (or binding pattern) `k`.
    Exchange { exchange: String, key: String },
    /// `/temp-queue/x`: in `reply-to`, a private reply queue of this connection.
    TempQueue(String),
    /// `/reply-queue/q`: a reply queue named in a delivered `reply-to`.
    ReplyQueue(String),
}

impl Destination {
    pub fn parse(text: &str) -> StompResult<Self> {
        let invalid = || {
            StompError::new(
                "Unknown destination",
                format!(
                    "'{text}' is not a valid destination. Valid destinations are /queue/<name>, \
                     /amq/queue/<name>, /topic/<key>, /exchange/<exchange>[/<key>], \
                     /temp-queue/<name> and /reply-queue/<name>."
                ),
            )
        };
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned()).ok_or_else(invalid);
        if let Some(q) = text.strip_prefix("/queue/") {
            return Ok(Destination::Queue(nonempty(q)?));
        }
        if let Some(q) = text.strip_prefix("/amq/queue/") {
            return Ok(Destination::AmqQueue(nonempty(q)?));
        }
        if let Some(k) = text.strip_prefix("/topic/") {
            return Ok(Destination::Topic(nonempty(k)?));
        }
        if let Some(rest) = text.strip_prefix("/exchange/") {
            let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Destination::Exchange {
                exchange: nonempty(exchange)?,
                key: key.to_owned(),
            });
        }
        if let Some(x) = text.strip_prefix("/temp-queue/") {
            return Ok(Destination::TempQueue(nonempty(x)?));
        }
        if let Some(q) = text.strip_prefix("/reply-queue/") {
            return Ok(Destination::ReplyQueue(nonempty(q)?));
        }
        Err(invalid())
    }

    /// The exchange and routing key a SEND to this destination publishes to. None for
    /// `/temp-queue`, which only makes sense in `reply-to`.
    pub fn publish_target(&self) -> Option<(&str, &str)> {
        match self {
            Destination::Queue(q) | Destination::AmqQueue(q) | Destination::ReplyQueue(q) => {
                Some(("", q))
            }
            Destination::Topic(k) => Some((TOPIC_EXCHANGE, k)),
            Destination::Exchange { exchange, key } => Some((exchange, key)),
            Destination::TempQueue(_) => None,
        }
    }
}

/// A MESSAGE's `destination`, rebuilt from where the message was published, as RabbitMQ does:
/// the default exchange gives `/queue/<key>` (`/reply-queue/<key>` for server-named reply
/// queues), `amq.topic` gives `/topic/<key>`, any other exchange `/exchange/<name>/<key>`.
pub fn destination_of(exchange: &str, routing_key: &str) -> String {
    match exchange {
        "" if routing_key.starts_with("amq.gen-") => format!("/reply-queue/{routing_key}"),
        "" => format!("/queue/{routing_key}"),
        TOPIC_EXCHANGE => format!("/topic/{routing_key}"),
        _ if routing_key.is_empty() => format!("/exchange/{exchange}"),
        _ => format!("/exchange/{exchange}/{routing_key}"),
    }
}

/// A `reply-to` as STOMP clients see it: a bare queue name (set by an AMQP publisher, or
/// written for a `/temp-queue`) becomes `/reply-queue/<name>`, so that a SEND to it reaches
/// the queue; destinations stay as they are.
pub fn reply_to_header(reply_to: &str) -> String {
    if reply_to.starts_with('/') {
        reply_to.to_owned()
    } else {
        format!("/reply-queue/{reply_to}")
    }
}

/// The queue of a durable subscription: `x-queue-name` if given, else a name derived from the
/// destination and subscription id, so that a client subscribing again gets the same queue.
/// Shaped as RabbitMQ's (`stomp-subscription-` + 22 URL-safe base64 characters of a 128-bit
/// digest); the digest is our own, so the names differ from RabbitMQ's.
pub fn durable_subscription_queue(destination: &str, id: &str) -> String {
    let mut input = Vec::with_capacity(destination.len() + id.len() + 1);
    input.extend_from_slice(destination.as_bytes());
    input.push(0);
    input.extend_from_slice(id.as_bytes());
    let mut digest = [0u8; 16];
    digest[..8].copy_from_slice(&fnv1a64(&input, 0xcbf2_9ce4_8422_2325).to_be_bytes());
    digest[8..].copy_from_slice(&fnv1a64(&input, 0x6c62_272e_07bb_0142).to_be_bytes());
    format!(
        "stomp-subscription-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

fn fnv1a64(data: &[u8], basis: u64) -> u64 {
    data.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Queue arguments that RabbitMQ reads as integers from SUBSCRIBE headers.
const INTEGER_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-delivery-limit",
    "x-max-age-seconds",
];
/// Queue arguments read as booleans.
const BOOLEAN_ARGS: &[&str] = &["x-single-active-consumer"];
/// Queue arguments read as strings.
const STRING_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-queue-type",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-queue-leader-locator",
    "x-max-age",
];

/// Queue arguments from a SUBSCRIBE's `x-*` headers (first of repeated headers wins).
pub fn queue_arguments(frame: &Frame) -> StompResult<FieldTable> {
    let mut args = FieldTable::new();
    for (name, value) in &frame.headers {
        if args.contains_key(name) {
            continue;
        }
        let v = if INTEGER_ARGS.contains(&name.as_str()) {
            let n: i64 = value
                .trim()
                .parse()
                .map_err(|_| StompError::invalid_header(name, value, "expected an integer"))?;
            FieldValue::I64(n)
        } else if BOOLEAN_ARGS.contains(&name.as_str()) {
            match value.trim() {
                "true" => FieldValue::Bool(true),
                "false" => FieldValue::Bool(false),
                _ => {
                    return Err(StompError::invalid_header(
                        name,
                        value,
                        "expected true or false",
                    ))
                }
            }
        } else if STRING_ARGS.contains(&name.as_str()) {
            FieldValue::string(value.clone())
        } else {
            continue;
        };
        args.insert(name.clone(), v);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_stomp::Command;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            Destination::parse("/queue/a/b").unwrap(),
            Destination::Queue("a/b".into())
        );
        assert_eq!(
            Destination::parse("/amq/queue/q").unwrap(),
            Destination::AmqQueue("q".into())
        );
        assert_eq!(
            Destination::parse("/topic/a.b").unwrap(),
            Destination::Topic("a.b".into())
        );
        assert_eq!(
            Destination::parse("/exchange/amq.fanout").unwrap(),
            Destination::Exchange {
                exchange: "amq.fanout".into(),
                key: String::new()
            }
        );
        assert_eq!(
            Destination::parse("/exchange/E/k/with/slash").unwrap(),
            Destination::Exchange {
                exchange: "E".into(),
                key: "k/with/slash".into()
            }
        );
        assert_eq!(
            Destination::parse("/temp-queue/r").unwrap(),
            Destination::TempQueue("r".into())
        );
        for bad in ["queue/a", "/queue/", "/other/x", "/exchange/", ""] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rebuilds_destinations() {
        assert_eq!(destination_of("", "q"), "/queue/q");
        assert_eq!(destination_of("", "amq.gen-x"), "/reply-queue/amq.gen-x");
        assert_eq!(destination_of("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(destination_of("E", "k"), "/exchange/E/k");
        assert_eq!(destination_of("E", ""), "/exchange/E");
        assert_eq!(reply_to_header("amq.gen-1"), "/reply-queue/amq.gen-1");
        assert_eq!(reply_to_header("/queue/r"), "/queue/r");
    }

    #[test]
    fn durable_queue_names_are_stable_and_rabbit_shaped() {
        let a = durable_subscription_queue("/topic/a", "s1");
        assert_eq!(a, durable_subscription_queue("/topic/a", "s1"));
        assert_ne!(a, durable_subscription_queue("/topic/a", "s2"));
        assert_eq!(a.len(), "stomp-subscription-".len() + 22);
    }

    #[test]
    fn queue_arguments_are_typed() {
        let f = Frame::new(Command::Subscribe)
            .with("x-message-ttl", "1000")
            .with("x-message-ttl", "5")
            .with("x-dead-letter-exchange", "dlx")
            .with("x-single-active-consumer", "true")
            .with("x-queue-name", "ignored-here")
            .with("id", "0");
        let args = queue_arguments(&f).unwrap();
        assert_eq!(args.get("x-message-ttl"), Some(&FieldValue::I64(1000)));
        assert_eq!(
            args.get("x-dead-letter-exchange").and_then(|v| v.as_str()),
            Some("dlx")
        );
        assert_eq!(
            args.get("x-single-active-consumer"),
            Some(&FieldValue::Bool(true))
        );
        assert_eq!(args.len(), 3);
        let bad = Frame::new(Command::Subscribe).with("x-max-length", "ten");
        assert!(queue_arguments(&bad).is_err());
    }
}
