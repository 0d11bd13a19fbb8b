//! Time as the service writes it: unix milliseconds (a sign's `tradeTime`, a claim's age) and
//! RFC 3339 (every time a partner reads). The one place that reads the wall clock for them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in unix milliseconds.
pub fn now_millis() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Now, in RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A unix time in milliseconds, in RFC 3339 (UTC, with the milliseconds when there are any);
/// empty when out of range.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// An RFC 3339 time in unix milliseconds; None when it does not read.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .and_then(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok())
}

/// A unix time in seconds, in RFC 3339 (UTC); empty when out of range.
pub fn rfc3339(unix_secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_time_reads_as_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn a_time_in_milliseconds_keeps_its_milliseconds() {
        assert_eq!(rfc3339_ms(1_767_225_600_250), "2026-01-01T00:00:00.25Z");
        assert_eq!(rfc3339_ms(1_767_225_600_000), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn a_time_out_of_range_is_empty_rather_than_an_error() {
        assert_eq!(rfc3339(i64::MAX), "");
        assert_eq!(rfc3339_ms(i64::MAX), "");
    }

    #[test]
    fn a_time_read_back_is_the_time_written() {
        assert_eq!(
            parse_rfc3339_ms(&rfc3339_ms(1_767_225_600_250)),
            Some(1_767_225_600_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T01:00:00+01:00"),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn now_in_both_shapes_is_the_same_moment() {
        let millis = now_millis();
        let text = now_rfc3339();
        let parsed = OffsetDateTime::parse(&text, &Rfc3339).expect("RFC 3339");
        let secs = i64::try_from(millis / 1000).expect("a time after 1970");
        assert!(
            (parsed.unix_timestamp() - secs).abs() <= 1,
            "{text} vs {millis}"
        );
    }
}
