//! Queue arguments (`x-max-priority`, `x-message-ttl`, `x-dead-letter-exchange`, …): parsed once
//! at declaration, validated with RabbitMQ's rules and words, merged with a matching policy.

use switchboard_amqp::{FieldTable, FieldValue};

/// The highest `x-max-priority` RabbitMQ accepts.
pub const MAX_SUPPORTED_PRIORITY: i64 = 255;

/// Every queue argument this module reads (policies set the same ones without `x-`).
pub const QUEUE_ARGUMENTS: &[&str] = &[
    "x-max-priority",
    "x-message-ttl",
    "x-expires",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// What a queue does when a publish would take it past its length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// A queue's effective arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    /// Priority levels above 0; None: one level, message priorities ignored.
    pub max_priority: Option<u8>,
    /// Per-queue message TTL in milliseconds.
    pub message_ttl: Option<u64>,
    /// Delete the queue after it is unused for this many milliseconds.
    pub expires: Option<u64>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub single_active_consumer: bool,
    /// A quorum queue returns a message at most this many times; the next return
    /// dead-letters it (reason `delivery_limit`) or drops it.
    pub delivery_limit: Option<u64>,
}

/// An invalid argument: the key and RabbitMQ's term for what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid arg '{key}': {detail}")]
pub struct ArgError {
    pub key: String,
    pub detail: String,
}

impl QueueArgs {
    /// The arguments a queue declared with `args` has, where a policy `definition` (keys
    /// without the `x-` prefix, as RabbitMQ policies write them) fills in what `args` leaves
    /// out. A bad value in `args` is an error; a bad value in the policy is ignored (it was
    /// reported when the configuration was loaded).
    pub fn parse(args: &FieldTable, policy: Option<&FieldTable>) -> Result<Self, ArgError> {
        let pick = |key: &str, check: Check| -> Result<Option<FieldValue>, ArgError> {
            if let Some(v) = args.get(key) {
                return check(v)
                    .map(|()| Some(v.clone()))
                    .map_err(|detail| ArgError {
                        key: key.to_owned(),
                        detail,
                    });
            }
            let from_policy = policy
                .and_then(|p| p.get(&key[2..]))
                .filter(|v| check(v).is_ok());
            Ok(from_policy.cloned())
        };
        let int = |key: &str, check: Check| -> Result<Option<u64>, ArgError> {
            Ok(pick(key, check)?
                .and_then(|v| v.as_i64())
                .and_then(|i| u64::try_from(i).ok()))
        };
        let text = |key: &str| -> Result<Option<String>, ArgError> {
            Ok(pick(key, check_string)?.and_then(|v| v.as_str().map(str::to_owned)))
        };
        let dead_letter_exchange = text("x-dead-letter-exchange")?;
        let dead_letter_routing_key = text("x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(ArgError {
                key: "x-dead-letter-routing-key".into(),
                detail: "routing_key_but_no_dlx_defined".into(),
            });
        }
        let overflow = match text_overflow(pick("x-overflow", check_overflow)?) {
            Some(o) => o,
            None => Overflow::DropHead,
        };
        Ok(QueueArgs {
            max_priority: int("x-max-priority", check_max_priority)?
                .filter(|&p| p > 0)
                .map(|p| u8::try_from(p).unwrap_or(u8::MAX)),
            message_ttl: int("x-message-ttl", check_non_negative)?,
            expires: int("x-expires", check_positive)?,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_length: int("x-max-length", check_non_negative)?,
            max_length_bytes: int("x-max-length-bytes", check_non_negative)?,
            overflow,
            single_active_consumer: pick("x-single-active-consumer", check_bool)?
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            delivery_limit: int("x-delivery-limit", check_non_negative)?,
        })
    }

    /// The number of priority levels ready messages are kept in.
    pub fn levels(&self) -> usize {
        usize::from(self.max_priority.unwrap_or(0)) + 1
    }

    /// The level of a message with AMQP priority `priority` (none = 0; above the max = the max).
    pub fn level_of(&self, priority: Option<u8>) -> usize {
        usize::from(priority.unwrap_or(0).min(self.max_priority.unwrap_or(0)))
    }
}

/// What `x-queue-type` asks for: a quorum queue (true), or a classic one (false, also when
/// absent). Other types (streams) are refused.
pub fn is_quorum(args: &FieldTable) -> Result<bool, ArgError> {
    let bad = |detail: String| ArgError {
        key: "x-queue-type".into(),
        detail,
    };
    match args.get("x-queue-type") {
        None => Ok(false),
        Some(v) => match v.as_str() {
            Some("classic") => Ok(false),
            Some("quorum") => Ok(true),
            Some(other) => Err(bad(format!("{{unsupported_queue_type,<<\"{other}\">>}}"))),
            None => Err(bad(format!("{{unacceptable_type,{}}}", type_name(v)))),
        },
    }
}

/// `x-quorum-initial-group-size`: how many nodes a quorum queue is replicated on (None: the
/// configured default).
pub fn quorum_group_size(args: &FieldTable) -> Result<Option<u64>, ArgError> {
    match args.get("x-quorum-initial-group-size") {
        None => Ok(None),
        Some(v) => check_positive(v)
            .map(|()| v.as_i64().and_then(|i| u64::try_from(i).ok()))
            .map_err(|detail| ArgError {
                key: "x-quorum-initial-group-size".into(),
                detail,
            }),
    }
}

/// Validates one argument value; Err holds RabbitMQ's description of the problem.
type Check = fn(&FieldValue) -> Result<(), String>;

fn text_overflow(v: Option<FieldValue>) -> Option<Overflow> {
    match v?.as_str()? {
        "drop-head" => Some(Overflow::DropHead),
        "reject-publish" => Some(Overflow::RejectPublish),
        "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
        _ => None,
    }
}

/// RabbitMQ's name for an AMQP field type, as its error messages print it.
pub fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal(_) => "decimal",
        FieldValue::LongString(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
        FieldValue::ByteArray(_) => "binary",
    }
}

fn integer(v: &FieldValue) -> Result<i64, String> {
    match v {
        FieldValue::Timestamp(_) => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
        _ => v
            .as_i64()
            .ok_or_else(|| format!("{{unacceptable_type,{}}}", type_name(v))),
    }
}

fn check_non_negative(v: &FieldValue) -> Result<(), String> {
    match integer(v)? {
        i if i < 0 => Err(format!("{{value_negative,{i}}}")),
        _ => Ok(()),
    }
}

fn check_positive(v: &FieldValue) -> Result<(), String> {
    check_non_negative(v)?;
    match integer(v)? {
        0 => Err("{value_zero,0}".into()),
        _ => Ok(()),
    }
}

fn check_max_priority(v: &FieldValue) -> Result<(), String> {
    check_non_negative(v)?;
    match integer(v)? {
        i if i > MAX_SUPPORTED_PRIORITY => Err(format!("{{max_value_exceeded,{i}}}")),
        _ => Ok(()),
    }
}

fn check_string(v: &FieldValue) -> Result<(), String> {
    match v.as_str() {
        Some(_) => Ok(()),
        None => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
    }
}

fn check_overflow(v: &FieldValue) -> Result<(), String> {
    check_string(v)?;
    match text_overflow(Some(v.clone())) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{{invalid_overflow_value,<<\"{}\">>}}",
            v.as_str().unwrap_or_default()
        )),
    }
}

fn check_bool(v: &FieldValue) -> Result<(), String> {
    match v {
        FieldValue::Bool(_) => Ok(()),
        _ => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
    }
}

/// The TTL in milliseconds a message's `expiration` property asks for. RabbitMQ refuses a
/// publish whose expiration is not a non-negative integer string; the Err is its reason.
pub fn parse_expiration(expiration: &str) -> Result<u64, String> {
    let digits = expiration.trim_start_matches(['-', '+']);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let sign_len = expiration.len() - digits.len();
    if end == 0 {
        return Err(format!("{{invalid_expiration,<<\"{expiration}\">>}}"));
    }
    if end < digits.len() {
        return Err(format!("{{leftover_string,\"{}\"}}", &digits[end..]));
    }
    let n: i128 = expiration[..sign_len + end]
        .parse()
        .map_err(|_| format!("{{invalid_expiration,<<\"{expiration}\">>}}"))?;
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    u64::try_from(n).map_err(|_| format!("{{value_too_large,{n}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn rabbitmq_validation_words() {
        let err = |t: FieldTable| QueueArgs::parse(&t, None).unwrap_err().to_string();
        assert_eq!(
            err(table(&[("x-message-ttl", FieldValue::I32(-1))])),
            "invalid arg 'x-message-ttl': {value_negative,-1}"
        );
        assert_eq!(
            err(table(&[("x-expires", FieldValue::I32(0))])),
            "invalid arg 'x-expires': {value_zero,0}"
        );
        assert_eq!(
            err(table(&[("x-max-priority", FieldValue::I32(256))])),
            "invalid arg 'x-max-priority': {max_value_exceeded,256}"
        );
        assert_eq!(
            err(table(&[("x-max-length", FieldValue::string("10"))])),
            "invalid arg 'x-max-length': {unacceptable_type,longstr}"
        );
        assert_eq!(
            err(table(&[("x-overflow", FieldValue::string("drop-tail"))])),
            "invalid arg 'x-overflow': {invalid_overflow_value,<<\"drop-tail\">>}"
        );
        assert_eq!(
            err(table(&[(
                "x-dead-letter-routing-key",
                FieldValue::string("k")
            )])),
            "invalid arg 'x-dead-letter-routing-key': routing_key_but_no_dlx_defined"
        );
    }

    #[test]
    fn queue_argument_wins_over_policy_and_bad_policy_values_are_ignored() {
        let args = table(&[("x-message-ttl", FieldValue::I64(5))]);
        let policy = table(&[
            ("message-ttl", FieldValue::I64(100)),
            ("max-length", FieldValue::I64(3)),
            ("expires", FieldValue::I64(-4)),
            ("overflow", FieldValue::string("reject-publish")),
        ]);
        let a = QueueArgs::parse(&args, Some(&policy)).unwrap();
        assert_eq!(a.message_ttl, Some(5));
        assert_eq!(a.max_length, Some(3));
        assert_eq!(a.expires, None);
        assert_eq!(a.overflow, Overflow::RejectPublish);
    }

    #[test]
    fn priority_levels_clamp() {
        let a = QueueArgs::parse(&table(&[("x-max-priority", FieldValue::U8(5))]), None).unwrap();
        assert_eq!(a.levels(), 6);
        assert_eq!(a.level_of(None), 0);
        assert_eq!(a.level_of(Some(3)), 3);
        assert_eq!(a.level_of(Some(200)), 5);
        assert_eq!(QueueArgs::default().level_of(Some(9)), 0);
    }

    #[test]
    fn expiration_strings_as_rabbitmq_reads_them() {
        assert_eq!(parse_expiration("1500"), Ok(1500));
        assert_eq!(parse_expiration("0"), Ok(0));
        assert_eq!(parse_expiration("-1"), Err("{value_negative,-1}".into()));
        assert_eq!(
            parse_expiration("12ab"),
            Err("{leftover_string,\"ab\"}".into())
        );
        assert!(parse_expiration("abc").is_err());
        assert!(parse_expiration("").is_err());
    }
}
