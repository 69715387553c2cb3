//! Headers-exchange matching: `x-match` = `all` / `any` (ignoring `x-` keys) or
//! `all-with-x` / `any-with-x` (considering them), as RabbitMQ does.

use switchboard_amqp::{FieldTable, FieldValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
}

/// A headers binding's arguments, parsed once at bind time.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersSpec {
    mode: Mode,
    /// (key, expected value); `Void` means "present with any value".
    pairs: Vec<(String, FieldValue)>,
}

/// An `x-match` value that is not one of the four known modes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid x-match field value {0:?}; expected all, any, all-with-x, or any-with-x")]
pub struct InvalidXMatch(pub String);

impl HeadersSpec {
    pub fn parse(args: &FieldTable) -> Result<Self, InvalidXMatch> {
        let (mode, with_x) = match args.get("x-match") {
            None => (Mode::All, false),
            Some(v) => match v.as_str() {
                Some("all") => (Mode::All, false),
                Some("any") => (Mode::Any, false),
                Some("all-with-x") => (Mode::All, true),
                Some("any-with-x") => (Mode::Any, true),
                _ => return Err(InvalidXMatch(format!("{v:?}"))),
            },
        };
        let pairs = args
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.starts_with("x-")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(HeadersSpec { mode, pairs })
    }

    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let hit = |(k, want): &(String, FieldValue)| {
            headers
                .and_then(|h| h.get(k))
                .is_some_and(|got| matches!(want, FieldValue::Void) || values_equal(want, got))
        };
        match self.mode {
            Mode::All => self.pairs.iter().all(hit),
            Mode::Any => self.pairs.iter().any(hit),
        }
    }
}

/// Value equality as RabbitMQ's term comparison sees it: integers compare by value whatever
/// their wire width, everything else by type and value.
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn all_and_any() {
        let all = HeadersSpec::parse(&table(&[
            ("x-match", FieldValue::string("all")),
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
        ]))
        .unwrap();
        let any = HeadersSpec::parse(&table(&[
            ("x-match", FieldValue::string("any")),
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
        ]))
        .unwrap();
        let both = table(&[
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
        ]);
        let one = table(&[("format", FieldValue::string("pdf"))]);
        assert!(all.matches(Some(&both)));
        assert!(!all.matches(Some(&one)));
        assert!(any.matches(Some(&one)));
        assert!(!any.matches(None));
        assert!(!all.matches(None));
    }

    #[test]
    fn x_keys_ignored_unless_with_x() {
        let spec = |m: &str| {
            HeadersSpec::parse(&table(&[
                ("x-match", FieldValue::string(m)),
                ("x-tenant", FieldValue::string("a")),
            ]))
            .unwrap()
        };
        let h = table(&[("x-tenant", FieldValue::string("b"))]);
        assert!(spec("all").matches(Some(&h)), "no non-x keys: all matches");
        assert!(
            !spec("any").matches(Some(&h)),
            "no non-x keys: any matches nothing"
        );
        assert!(!spec("all-with-x").matches(Some(&h)));
        let h2 = table(&[("x-tenant", FieldValue::string("a"))]);
        assert!(spec("any-with-x").matches(Some(&h2)));
    }

    #[test]
    fn integers_compare_by_value_and_void_means_present() {
        let spec = HeadersSpec::parse(&table(&[
            ("n", FieldValue::I32(7)),
            ("k", FieldValue::Void),
        ]))
        .unwrap();
        let h = table(&[("n", FieldValue::I64(7)), ("k", FieldValue::Bool(true))]);
        assert!(spec.matches(Some(&h)));
    }

    #[test]
    fn bad_x_match_is_an_error() {
        assert!(HeadersSpec::parse(&table(&[("x-match", FieldValue::string("some"))])).is_err());
    }
}
