//! Event times as records carry them (epoch milliseconds, UTC) and as people and the
//! reference engine write them (RFC 3339, UTC, whole seconds). The one conversion between
//! the two, so every command, report and contract reads and prints times the same way.

use std::time::{Duration, UNIX_EPOCH};

/// `value` is not an RFC 3339 UTC time at or after the epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an RFC 3339 UTC time like 2025-11-18T12:10:07Z")]
pub struct TimeError {
    /// The text given.
    pub value: String,
}

/// Epoch ms of an RFC 3339 time (`2025-11-18T12:10:07Z`; fractions and a space instead of
/// the `T` are accepted). Times before 1970 are refused: no record carries one.
pub fn parse_rfc3339_ms(value: &str) -> Result<i64, TimeError> {
    let error = || TimeError {
        value: value.into(),
    };
    let t = humantime::parse_rfc3339_weak(value).map_err(|_| error())?;
    let since = t.duration_since(UNIX_EPOCH).map_err(|_| error())?;
    i64::try_from(since.as_millis()).map_err(|_| error())
}

/// RFC 3339 UTC with whole seconds (`2025-11-18T12:10:07Z`), as the reference writes
/// `validUntil`. Times before the epoch print as the epoch.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_round_trips_through_its_text() {
        let ms = parse_rfc3339_ms("2025-11-18T12:10:07Z").expect("parses");
        assert_eq!(ms, 1_763_467_807_000);
        assert_eq!(format_rfc3339_ms(ms), "2025-11-18T12:10:07Z");
    }

    #[test]
    fn text_that_is_not_a_time_is_named_in_the_error() {
        let e = parse_rfc3339_ms("yesterday").expect_err("refused");
        assert!(e.to_string().contains("\"yesterday\""), "{e}");
        assert!(parse_rfc3339_ms("1969-12-31T23:59:59Z").is_err());
    }
}
