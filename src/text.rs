//! How the worker writes (and reads back) times, durations and URLs, wherever they
//! appear: RFC 3339 stamps in results, audit events, records and tables; `5s`-style
//! durations in settings and queue names; URLs with their password masked in every
//! message and error.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A time as RFC 3339, exactly as `time`'s `Rfc3339` writes it (the fraction only
/// as long as it needs), in one small allocation: every result and audit event has
/// several, and the general formatter cost more than the rest of an event.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside what RFC 3339 writes in four digits: the general formatter says so.
        return t.format(&Rfc3339).unwrap_or_default();
    }
    let mut out = String::with_capacity(30);
    let two = |out: &mut String, n: u8| {
        out.push(char::from(b'0' + n / 10));
        out.push(char::from(b'0' + n % 10));
    };
    let year = year as u32;
    for d in [year / 1000, year / 100 % 10, year / 10 % 10, year % 10] {
        out.push(char::from(b'0' + d as u8));
    }
    out.push('-');
    two(&mut out, u8::from(t.month()));
    out.push('-');
    two(&mut out, t.day());
    out.push('T');
    two(&mut out, t.hour());
    out.push(':');
    two(&mut out, t.minute());
    out.push(':');
    two(&mut out, t.second());
    let mut nanos = t.nanosecond();
    if nanos > 0 {
        let mut digits = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            digits -= 1;
        }
        let mut fraction = [b'0'; 9];
        for slot in fraction[..digits].iter_mut().rev() {
            *slot = b'0' + (nanos % 10) as u8;
            nanos /= 10;
        }
        out.push('.');
        out.extend(fraction[..digits].iter().map(|&b| char::from(b)));
    }
    out.push('Z');
    out
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Replaces the password of `scheme://user:password@host…` by `***`, working on the raw
/// text so that even an unparsable URL is printed without its password.
///
/// A user or password typed without percent-encoding may hold `/`, `?`, `#` or `@`,
/// so everything from the first `:` to the *last* `@` is masked. Erring this way can
/// mask a port and part of a path that holds `@` (`host:***@h`), never print a
/// password.
pub fn redact_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let rest = &raw[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return raw.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &raw[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => raw.to_owned(),
    }
}

/// Parses `200ms`, `5s`, `2m`, `1h` (a whole number and a unit).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Prints a duration the way [`parse_duration`] reads it, in the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn rfc3339_is_times(seconds in 0i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let t = OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                .replace_nanosecond(nanos).unwrap();
            prop_assert_eq!(rfc3339(t), t.format(&Rfc3339).unwrap());
        }
    }

    #[test]
    fn rfc3339_trims_the_fraction_as_times_does() {
        for nanos in [0, 1, 100_000_000, 120_000_000, 999_999_999] {
            let t = OffsetDateTime::from_unix_timestamp(1_800_000_000)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap();
            assert_eq!(rfc3339(t), t.format(&Rfc3339).unwrap(), "{nanos}");
        }
    }

    #[test]
    fn redaction_leaves_urls_without_password_alone() {
        assert_eq!(redact_url("amqp://host/vh"), "amqp://host/vh");
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(redact_url("amqp://host:5672/vh"), "amqp://host:5672/vh");
        assert_eq!(redact_url("not a url"), "not a url");
        // A `:` before an `@` may be a password's: masked, even when it was not.
        assert_eq!(redact_url("amqp://host:5672/v@h"), "amqp://host:***@h");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["5x", "5", "s", "", "-1s", "1.5s", "5 s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        for d in ["200ms", "5s", "2m", "1h", "90s", "1500ms"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }
}
