//! Go's `time.ParseDuration`, exactly: blueprints and ActionSets write timeouts as Go
//! durations (`300ms`, `1.5h`, `1h30m`), and a value that overflows must be an error, never a
//! panic (`99999999999999999h` used to panic inside `Duration::from_secs_f64` and leave the
//! ActionSet `running`).
//!
//! The rules, as Go 1.x implements them: an optional sign, then one or more decimal numbers,
//! each with an optional fraction and a required unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`,
//! `h`); `0` alone needs no unit; the total must fit in an `int64` of nanoseconds (about 292
//! years). Fractions are scaled through a `float64`, as Go does, so results agree to the
//! nanosecond. A negative duration is a valid Go duration but no timeout: it is refused here.

use std::time::Duration;

/// Why a text is not a (usable) Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not shaped like a Go duration.
    #[error("invalid duration {0:?}: expected a Go duration such as 300ms, 1.5h or 1h30m")]
    Invalid(String),
    /// A number without a unit.
    #[error("missing unit in duration {0:?}: add one of ns, us, ms, s, m, h")]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("unknown unit {unit:?} in duration {text:?}: use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// More than an int64 of nanoseconds.
    #[error("duration {0:?} is too long: at most 2562047h47m16.854775807s")]
    Overflow(String),
    /// Below zero.
    #[error("duration {0:?} is negative: a timeout must be positive")]
    Negative(String),
}

const MAX: u64 = i64::MAX as u64; // nanoseconds
/// Go's bound on intermediate values (`1<<63`): one past `MAX`, so that `-9223372036854775808ns`
/// parses in Go (and is refused here as negative).
const LIMIT: u64 = 1 << 63;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses `text` as Go's `time.ParseDuration` does (see the module docs).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_string());
    let overflow = || DurationError::Overflow(text.to_string());
    let mut s = text;
    let mut negative = false;
    if let Some(c) = s.chars().next()
        && (c == '-' || c == '+')
    {
        negative = c == '-';
        s = &s[1..];
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // The integer part; an overflow here is an error, as in Go.
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut v: u64 = 0;
        for &d in &b[..digits] {
            if v > LIMIT / 10 {
                return Err(overflow());
            }
            v = v * 10 + u64::from(d - b'0');
            if v > LIMIT {
                return Err(overflow());
            }
        }
        let pre = digits > 0;
        s = &s[digits..];
        // The fraction: digits beyond what an int64 holds are ignored, as in Go.
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let fd = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
            let mut overflowed = false;
            for &d in &rest.as_bytes()[..fd] {
                if overflowed {
                    continue;
                }
                if f > MAX / 10 {
                    overflowed = true;
                    continue;
                }
                let next = f * 10 + u64::from(d - b'0');
                if next > LIMIT {
                    overflowed = true;
                    continue;
                }
                f = next;
                scale *= 10.0;
            }
            post = fd > 0;
            s = &rest[fd..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(text.to_string()));
        }
        let unit = &s[..unit_len];
        let nanos = unit_nanos(unit)
            .ok_or_else(|| DurationError::UnknownUnit { unit: unit.to_string(), text: text.to_string() })?;
        s = &s[unit_len..];
        if v > LIMIT / nanos {
            return Err(overflow());
        }
        v *= nanos;
        if f > 0 {
            // float64 arithmetic, truncated toward zero, exactly as Go scales fractions.
            v += (f as f64 * (nanos as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(overflow());
            }
        }
        total = total.checked_add(v).filter(|t| *t <= LIMIT).ok_or_else(overflow)?;
    }
    if negative && total > 0 {
        return Err(DurationError::Negative(text.to_string()));
    }
    if total > MAX {
        return Err(overflow());
    }
    Ok(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_examples() {
        let ok = |s: &str, ns: u64| assert_eq!(parse(s), Ok(Duration::from_nanos(ns)), "{s}");
        // From Go's own test table (time/time_test.go, parseDurationTests).
        ok("0", 0);
        ok("5s", 5_000_000_000);
        ok("30s", 30_000_000_000);
        ok("1478s", 1_478_000_000_000);
        ok("+5s", 5_000_000_000);
        ok("-0", 0);
        ok("+0", 0);
        ok("5.0s", 5_000_000_000);
        ok("5.6s", 5_600_000_000);
        ok("5.s", 5_000_000_000);
        ok(".5s", 500_000_000);
        ok("1.0s", 1_000_000_000);
        ok("1.00s", 1_000_000_000);
        ok("1.004s", 1_004_000_000);
        ok("1.0040s", 1_004_000_000);
        ok("100.00100s", 100_001_000_000);
        ok("10ns", 10);
        ok("11us", 11_000);
        ok("12µs", 12_000);
        ok("12μs", 12_000);
        ok("13ms", 13_000_000);
        ok("14s", 14_000_000_000);
        ok("15m", 900_000_000_000);
        ok("16h", 57_600_000_000_000);
        ok("3h30m", 12_600_000_000_000);
        ok("10.5s4m", 250_500_000_000);
        ok("1h2m3s4ms5us6ns", 3_723_004_005_006);
        ok("39h9m14.425s", 140_954_425_000_000);
        ok("52763797000ns", 52_763_797_000);
        ok("0.3333333333333333333h", 1_200_000_000_000);
        ok("9007199254740993ns", 9_007_199_254_740_993);
        ok("9223372036854775807ns", 9_223_372_036_854_775_807);
        ok("9223372036854775.807us", 9_223_372_036_854_775_807);
        ok("9223372036s854ms775us807ns", 9_223_372_036_854_775_807);
        ok("0.100000000000000000000h", 360_000_000_000);
        ok("0.830103483285477580700h", 2_988_372_539_827);
        for bad in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "9223372036854ms775us808ns",
            "99999999999999999h",
            "3000000h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed as {:?}", parse(bad));
        }
        assert!(matches!(parse("-5s"), Err(DurationError::Negative(_))));
        assert!(matches!(parse("10"), Err(DurationError::MissingUnit(_))));
        assert!(matches!(parse("99999999999999999h"), Err(DurationError::Overflow(_))));
    }

    /// Formats nanoseconds as Go's `Duration.String` would (`1h2m3.000000004s`).
    fn go_string(ns: u64) -> String {
        if ns == 0 {
            return "0s".into();
        }
        let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
        let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
        let (s, frac) = (rest / 1_000_000_000, rest % 1_000_000_000);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        let frac = if frac == 0 { String::new() } else { format!(".{frac:09}").trim_end_matches('0').to_string() };
        out.push_str(&format!("{s}{frac}s"));
        out
    }

    proptest! {
        /// Whatever the text, parsing returns; it never panics.
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }

        /// Texts made of Go's own pieces: numbers that fit parse to the sum, the rest overflow.
        #[test]
        fn sums_of_parts(parts in proptest::collection::vec((0u64..100_000_000_000u64, 0usize..8), 1..5)) {
            const UNITS: [(&str, u64); 8] = [("ns", 1), ("us", 1_000), ("µs", 1_000), ("μs", 1_000),
                ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];
            let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
            let sum: u128 = parts.iter().map(|(n, u)| u128::from(*n) * u128::from(UNITS[*u].1)).sum();
            match parse(&text) {
                Ok(d) => prop_assert_eq!(d.as_nanos(), sum),
                Err(DurationError::Overflow(_)) => prop_assert!(sum > u128::from(MAX)),
                Err(e) => prop_assert!(false, "{text}: {e}"),
            }
        }

        /// What Go's `Duration.String` prints parses back to the same duration.
        #[test]
        fn round_trips_go_strings(ns in 0u64..=MAX) {
            prop_assert_eq!(parse(&go_string(ns)), Ok(Duration::from_nanos(ns)));
        }
    }
}
