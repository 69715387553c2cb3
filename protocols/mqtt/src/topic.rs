//! Topic name and topic filter rules (spec 4.7).

use crate::error::DecodeError;

/// A PUBLISH topic name: no wildcards. Emptiness is checked by the caller, since a v5 PUBLISH
/// may carry an empty topic together with a Topic Alias.
pub fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    // Bytes, not chars: both wildcards are ASCII, which never occurs inside a multi-byte
    // UTF-8 sequence, and a char-set pattern decodes every char.
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::TopicName("wildcard in a topic name"));
    }
    Ok(())
}

/// Why a topic filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic filter")]
    Empty,
    #[error("'#' must be the last level and alone in it")]
    MultiLevelWildcard,
    #[error("'+' must be alone in its level")]
    SingleLevelWildcard,
    #[error("malformed shared subscription")]
    Shared,
}

/// A topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
pub fn check_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(FilterError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// Splits `$share/<group>/<filter>` into group and filter (spec 4.8.2). `None` for an ordinary
/// filter; an error when the share name is empty or holds a wildcard, or the filter is missing.
pub fn split_shared(filter: &str) -> Result<Option<(&str, &str)>, FilterError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(FilterError::Shared);
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(FilterError::Shared);
    }
    check_filter(inner)?;
    Ok(Some((group, inner)))
}

/// Whether `topic` matches `filter` under MQTT's rules: `+` one level, `#` this level and all
/// below (so `a/#` matches `a`), empty levels count, and a filter starting with a wildcard does
/// not match a topic starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "sport/tennis/#",
            "+/#",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_filter(""), Err(FilterError::Empty));
        assert_eq!(check_filter("a/#/b"), Err(FilterError::MultiLevelWildcard));
        assert_eq!(check_filter("a#"), Err(FilterError::MultiLevelWildcard));
        assert_eq!(check_filter("a/b+"), Err(FilterError::SingleLevelWildcard));
        assert_eq!(check_filter("+a"), Err(FilterError::SingleLevelWildcard));
    }

    #[test]
    fn topic_names() {
        assert!(check_topic_name("a/b").is_ok());
        assert!(check_topic_name("a/+").is_err());
        assert!(check_topic_name("#").is_err());
    }

    #[test]
    fn matching_edge_cases() {
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/#", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(matches("#", "a"));
    }

    #[test]
    fn shared() {
        assert_eq!(split_shared("a/b"), Ok(None));
        assert_eq!(split_shared("$share/g/a/#"), Ok(Some(("g", "a/#"))));
        assert_eq!(split_shared("$share/g"), Err(FilterError::Shared));
        assert_eq!(split_shared("$share//a"), Err(FilterError::Shared));
        assert_eq!(split_shared("$share/g+/a"), Err(FilterError::Shared));
    }
}
