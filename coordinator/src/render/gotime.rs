//! Go time layouts (`2006-01-02T15:04:05Z07:00`) and Go's `time.Time` text form.
//!
//! Templates have no time type, so a time travels through a template as the string Go prints
//! for a `time.Time` (`2006-01-02 15:04:05.999999999 -0700 MST`): printing it gives what Go
//! prints, and the date functions parse it back with [`GoTime::parse_go_string`].
//!
//! [`GoTime::format`] follows Go's `Time.Format` element by element (the layout grammar of Go's
//! `time/format.go`), and [`GoTime::parse_layout`] follows `time.Parse` for the numeric,
//! month/day name, AM/PM, fraction and zone-offset elements. Zone abbreviations are kept for
//! printing; when parsing, only `UTC`/`GMT` carry a known offset (others parse as offset zero,
//! as Go does for abbreviations it does not know).

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The value does not match the layout.
    #[error("parsing time {value:?} as {layout:?}: cannot parse {rest:?} as {element:?}")]
    Parse {
        /// The whole value.
        value: String,
        /// The whole layout.
        layout: String,
        /// What was left of the value.
        rest: String,
        /// The layout element that failed.
        element: String,
    },
    /// The value parsed but names an impossible date or time.
    #[error("parsing time {value:?}: {what} out of range")]
    Range {
        /// The whole value.
        value: String,
        /// The field out of range (`month`, `day`, `hour`, ...).
        what: &'static str,
    },
    /// The value is longer than the layout.
    #[error("parsing time {value:?}: extra text {extra:?}")]
    Extra {
        /// The whole value.
        value: String,
        /// The unparsed tail.
        extra: String,
    },
    /// The string is not a time as printed by Go (`2006-01-02 15:04:05 -0700 MST`).
    #[error("{0:?} is not a time")]
    NotATime(String),
    /// Unknown IANA time zone.
    #[error("unknown time zone {0:?}")]
    UnknownZone(String),
}

/// A time with its zone, as Go's `time.Time` (instant, UTC offset, zone abbreviation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTime {
    at: DateTime<FixedOffset>,
    zone: String,
}

const LONG_DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const LONG_MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// One element of a Go layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Std {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    Pm,
    LowerPm,
    Tz,
    /// `Z` forms (`Z07:00`): UTC prints as `Z`. Fields: colons, seconds, minutes.
    Iso {
        colon: bool,
        secs: bool,
        mins: bool,
    },
    /// `-07:00` forms. Fields: colons, seconds, minutes.
    Num {
        colon: bool,
        secs: bool,
        mins: bool,
    },
    /// `.000` / `,999`: separator, digits, trailing zeros trimmed.
    Frac {
        sep: char,
        digits: usize,
        trim: bool,
    },
}

/// Splits `layout` into (literal prefix, element, rest), as Go's `nextStdChunk`.
fn next_chunk(layout: &str) -> (&str, Option<Std>, &str) {
    let b = layout.as_bytes();
    let starts_lower = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_lowercase());
    let mut i = 0;
    while i < b.len() {
        let rest = &layout[i..];
        let hit: Option<(Std, usize)> = match b[i] {
            b'J' if rest.starts_with("January") => Some((Std::LongMonth, 7)),
            b'J' if rest.starts_with("Jan") && !starts_lower(i + 3) => Some((Std::Month, 3)),
            b'M' if rest.starts_with("Monday") => Some((Std::LongWeekDay, 6)),
            b'M' if rest.starts_with("Mon") && !starts_lower(i + 3) => Some((Std::WeekDay, 3)),
            b'M' if rest.starts_with("MST") => Some((Std::Tz, 3)),
            b'0' if rest.starts_with("002") => Some((Std::ZeroYearDay, 3)),
            b'0' if b.get(i + 1).is_some_and(|c| (b'1'..=b'6').contains(c)) => {
                let std = [Std::ZeroMonth, Std::ZeroDay, Std::ZeroHour12, Std::ZeroMinute, Std::ZeroSecond, Std::Year]
                    [usize::from(b[i + 1] - b'1')];
                Some((std, 2))
            }
            b'1' if rest.starts_with("15") => Some((Std::Hour, 2)),
            b'1' => Some((Std::NumMonth, 1)),
            b'2' if rest.starts_with("2006") => Some((Std::LongYear, 4)),
            b'2' => Some((Std::Day, 1)),
            b'_' if rest.starts_with("_2") => {
                if rest.starts_with("_2006") {
                    // Go: a literal "_" followed by the year.
                    return (&layout[..i + 1], Some(Std::LongYear), &layout[i + 5..]);
                }
                Some((Std::UnderDay, 2))
            }
            b'_' if rest.starts_with("__2") => Some((Std::UnderYearDay, 3)),
            b'3' => Some((Std::Hour12, 1)),
            b'4' => Some((Std::Minute, 1)),
            b'5' => Some((Std::Second, 1)),
            b'P' if rest.starts_with("PM") => Some((Std::Pm, 2)),
            b'p' if rest.starts_with("pm") => Some((Std::LowerPm, 2)),
            b'-' | b'Z' => {
                let body = &rest[1..];
                let forms: [(&str, bool, bool, bool); 5] = [
                    ("070000", false, true, true),
                    ("07:00:00", true, true, true),
                    ("0700", false, false, true),
                    ("07:00", true, false, true),
                    ("07", false, false, false),
                ];
                forms.iter().find(|(f, ..)| body.starts_with(f)).map(|&(f, colon, secs, mins)| {
                    let std =
                        if b[i] == b'Z' { Std::Iso { colon, secs, mins } } else { Std::Num { colon, secs, mins } };
                    (std, 1 + f.len())
                })
            }
            c @ (b'.' | b',') if matches!(b.get(i + 1), Some(b'0' | b'9')) => {
                let digit = b[i + 1];
                let mut j = i + 1;
                while b.get(j) == Some(&digit) {
                    j += 1;
                }
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    None
                } else {
                    let std = Std::Frac { sep: char::from(c), digits: j - i - 1, trim: digit == b'9' };
                    Some((std, j - i))
                }
            }
            _ => None,
        };
        if let Some((std, len)) = hit {
            return (&layout[..i], Some(std), &layout[i + len..]);
        }
        // Advance by one character (layouts may hold any UTF-8 text).
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    (layout, None, "")
}

fn pad(out: &mut String, n: i64, width: usize) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{n:0width$}");
}

fn fmt_offset(out: &mut String, offset_secs: i32, colon: bool, secs: bool, mins: bool) {
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let abs = offset_secs.unsigned_abs();
    let _ = write!(out, "{sign}{:02}", abs / 3600);
    if mins {
        if colon {
            out.push(':');
        }
        let _ = write!(out, "{:02}", (abs / 60) % 60);
    }
    if secs {
        if colon {
            out.push(':');
        }
        let _ = write!(out, "{:02}", abs % 60);
    }
}

impl GoTime {
    /// The current time in UTC (Go's `time.Now()` with `Local` = UTC, as in containers).
    pub fn now() -> Self {
        Self::from_utc(Utc::now())
    }

    /// A UTC time.
    pub fn from_utc(at: DateTime<Utc>) -> Self {
        GoTime { at: at.fixed_offset(), zone: "UTC".into() }
    }

    /// A time at `unix` seconds, in UTC.
    pub fn from_unix(unix: i64) -> Option<Self> {
        DateTime::from_timestamp(unix, 0).map(Self::from_utc)
    }

    /// The instant, with its UTC offset.
    pub fn instant(&self) -> DateTime<FixedOffset> {
        self.at
    }

    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        self.at.timestamp()
    }

    /// The same instant in another zone: `UTC`, `Local` (= UTC here) or an IANA name.
    pub fn in_zone(&self, zone: &str) -> Result<Self, Error> {
        if zone.is_empty() || zone == "UTC" || zone == "Local" {
            return Ok(Self::from_utc(self.at.with_timezone(&Utc)));
        }
        let tz: chrono_tz::Tz = zone.parse().map_err(|_| Error::UnknownZone(zone.to_string()))?;
        let local = self.at.with_timezone(&tz);
        use chrono_tz::OffsetName as _;
        let name = local.offset().abbreviation().unwrap_or_default().to_string();
        Ok(GoTime { at: local.fixed_offset(), zone: name })
    }

    /// The time in UTC (sprig's `date` formats in `Local`, which is UTC in our containers).
    pub fn to_utc(&self) -> Self {
        Self::from_utc(self.at.with_timezone(&Utc))
    }

    /// Formats as Go's `Time.Format(layout)`.
    pub fn format(&self, layout: &str) -> String {
        let t = self.at;
        let mut out = String::with_capacity(layout.len() + 8);
        let mut rest = layout;
        loop {
            let (prefix, std, tail) = next_chunk(rest);
            out.push_str(prefix);
            let Some(std) = std else { break };
            rest = tail;
            let hour = i64::from(t.hour());
            match std {
                Std::LongYear => pad(&mut out, i64::from(t.year()), 4),
                Std::Year => pad(&mut out, i64::from(t.year().rem_euclid(100)), 2),
                Std::LongMonth => out.push_str(LONG_MONTHS[t.month0() as usize]),
                Std::Month => out.push_str(&LONG_MONTHS[t.month0() as usize][..3]),
                Std::NumMonth => pad(&mut out, i64::from(t.month()), 1),
                Std::ZeroMonth => pad(&mut out, i64::from(t.month()), 2),
                Std::LongWeekDay => out.push_str(LONG_DAYS[t.weekday().num_days_from_sunday() as usize]),
                Std::WeekDay => out.push_str(&LONG_DAYS[t.weekday().num_days_from_sunday() as usize][..3]),
                Std::Day => pad(&mut out, i64::from(t.day()), 1),
                Std::UnderDay => {
                    let _ = write!(out, "{:>2}", t.day());
                }
                Std::ZeroDay => pad(&mut out, i64::from(t.day()), 2),
                Std::UnderYearDay => {
                    let _ = write!(out, "{:>3}", t.ordinal());
                }
                Std::ZeroYearDay => pad(&mut out, i64::from(t.ordinal()), 3),
                Std::Hour => pad(&mut out, hour, 2),
                Std::Hour12 | Std::ZeroHour12 => {
                    let h = match hour % 12 {
                        0 => 12,
                        h => h,
                    };
                    pad(&mut out, h, if std == Std::Hour12 { 1 } else { 2 });
                }
                Std::Minute => pad(&mut out, i64::from(t.minute()), 1),
                Std::ZeroMinute => pad(&mut out, i64::from(t.minute()), 2),
                Std::Second => pad(&mut out, i64::from(t.second()), 1),
                Std::ZeroSecond => pad(&mut out, i64::from(t.second()), 2),
                Std::Pm => out.push_str(if hour >= 12 { "PM" } else { "AM" }),
                Std::LowerPm => out.push_str(if hour >= 12 { "pm" } else { "am" }),
                Std::Tz => {
                    if self.zone.is_empty() {
                        fmt_offset(&mut out, t.offset().local_minus_utc(), false, false, true);
                    } else {
                        out.push_str(&self.zone);
                    }
                }
                Std::Iso { colon, secs, mins } => {
                    let off = t.offset().local_minus_utc();
                    if off == 0 {
                        out.push('Z');
                    } else {
                        fmt_offset(&mut out, off, colon, secs, mins);
                    }
                }
                Std::Num { colon, secs, mins } => fmt_offset(&mut out, t.offset().local_minus_utc(), colon, secs, mins),
                Std::Frac { sep, digits, trim } => {
                    let nanos = t.nanosecond() % 1_000_000_000;
                    let all = format!("{nanos:09}");
                    let mut frac = &all[..digits.min(9)];
                    if trim {
                        frac = frac.trim_end_matches('0');
                        if frac.is_empty() {
                            continue;
                        }
                    }
                    out.push(sep);
                    out.push_str(frac);
                    // Go pads layouts longer than nine digits with zeros.
                    for _ in 9..digits {
                        if !trim {
                            out.push('0');
                        }
                    }
                }
            }
        }
        out
    }

    /// Go's `Time.String()` form, without the monotonic clock reading:
    /// `2006-01-02 15:04:05.999999999 -0700 MST`.
    pub fn to_go_string(&self) -> String {
        self.format("2006-01-02 15:04:05.999999999 -0700 MST")
    }

    /// Parses the form printed by [`to_go_string`](Self::to_go_string).
    pub fn parse_go_string(s: &str) -> Result<Self, Error> {
        let not_a_time = || Error::NotATime(s.to_string());
        let mut parts = s.splitn(4, ' ');
        let (Some(date), Some(time), Some(off)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(not_a_time());
        };
        let zone = parts.next().unwrap_or_default();
        let naive = NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|_| not_a_time())?;
        let offset = chrono::DateTime::parse_from_str(&format!("2000-01-01 00:00 {off}"), "%Y-%m-%d %H:%M %z")
            .map_err(|_| not_a_time())?
            .offset()
            .to_owned();
        let at = offset.from_local_datetime(&naive).single().ok_or_else(not_a_time)?;
        Ok(GoTime { at, zone: zone.to_string() })
    }

    /// Parses `value` with a Go layout, as Go's `time.ParseInLocation(layout, value, UTC)`.
    pub fn parse_layout(layout: &str, value: &str) -> Result<Self, Error> {
        Parser::new(layout, value).run()
    }
}

struct Parser<'a> {
    layout: &'a str,
    value: &'a str,
    year: i32,
    month: u32,
    day: u32,
    yday: Option<u32>,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
    pm: Option<bool>,
    offset: Option<i32>,
    zone: Option<String>,
}

impl<'a> Parser<'a> {
    fn new(layout: &'a str, value: &'a str) -> Self {
        Parser {
            layout,
            value,
            year: 0,
            month: 1,
            day: 1,
            yday: None,
            hour: 0,
            min: 0,
            sec: 0,
            nanos: 0,
            pm: None,
            offset: None,
            zone: None,
        }
    }

    fn err(&self, rest: &str, element: &str) -> Error {
        Error::Parse {
            value: self.value.to_string(),
            layout: self.layout.to_string(),
            rest: rest.to_string(),
            element: element.to_string(),
        }
    }

    fn range(&self, what: &'static str) -> Error {
        Error::Range { value: self.value.to_string(), what }
    }

    fn run(mut self) -> Result<GoTime, Error> {
        let mut layout = self.layout;
        let mut v = self.value;
        loop {
            let (prefix, std, tail) = next_chunk(layout);
            let elem_text = &layout[prefix.len()..layout.len() - tail.len()];
            v = v.strip_prefix(prefix).ok_or_else(|| self.err(v, prefix))?;
            let Some(std) = std else {
                if !v.is_empty() {
                    return Err(Error::Extra { value: self.value.to_string(), extra: v.to_string() });
                }
                break;
            };
            layout = tail;
            let before = v;
            v = self.element(std, v, tail).ok_or_else(|| self.err(before, elem_text))?;
        }
        self.finish()
    }

    /// Parses one element at the start of `v`; returns the rest, or `None` on a mismatch.
    fn element(&mut self, std: Std, v: &'a str, layout_rest: &str) -> Option<&'a str> {
        match std {
            Std::LongYear => {
                let (n, r) = digits(v, 4, 4)?;
                self.year = n as i32;
                Some(r)
            }
            Std::Year => {
                let (n, r) = digits(v, 2, 2)?;
                self.year = if n >= 69 { 1900 + n as i32 } else { 2000 + n as i32 };
                Some(r)
            }
            Std::LongMonth | Std::Month => {
                let (i, r) = lookup_name(v, &LONG_MONTHS, std == Std::Month)?;
                self.month = i as u32 + 1;
                Some(r)
            }
            Std::NumMonth | Std::ZeroMonth => {
                let (n, r) = num(v, std == Std::ZeroMonth)?;
                self.month = n;
                Some(r)
            }
            Std::LongWeekDay | Std::WeekDay => lookup_name(v, &LONG_DAYS, std == Std::WeekDay).map(|(_, r)| r),
            Std::Day | Std::UnderDay | Std::ZeroDay => {
                let v = if std == Std::UnderDay { v.strip_prefix(' ').unwrap_or(v) } else { v };
                let (n, r) = num(v, std == Std::ZeroDay)?;
                self.day = n;
                Some(r)
            }
            Std::UnderYearDay | Std::ZeroYearDay => {
                let v = if std == Std::UnderYearDay { v.trim_start_matches(' ') } else { v };
                let (n, r) = if std == Std::ZeroYearDay { digits(v, 3, 3)? } else { digits(v, 1, 3)? };
                self.yday = Some(n);
                Some(r)
            }
            Std::Hour => {
                let (n, r) = num(v, false)?;
                self.hour = n;
                Some(r)
            }
            Std::Hour12 | Std::ZeroHour12 => {
                let (n, r) = num(v, std == Std::ZeroHour12)?;
                (n <= 12).then_some(())?;
                self.hour = n;
                Some(r)
            }
            Std::Minute | Std::ZeroMinute => {
                let (n, r) = num(v, std == Std::ZeroMinute)?;
                self.min = n;
                Some(r)
            }
            Std::Second | Std::ZeroSecond => {
                let (n, mut r) = num(v, std == Std::ZeroSecond)?;
                self.sec = n;
                // Go accepts a fraction after the seconds even if the layout has none,
                // unless the layout's next element is itself a fraction.
                let next_is_frac = matches!(next_chunk(layout_rest), ("", Some(Std::Frac { .. }), _));
                if !next_is_frac
                    && let Some(after) = r.strip_prefix(['.', ','])
                    && after.starts_with(|c: char| c.is_ascii_digit())
                {
                    let len = after.bytes().take_while(u8::is_ascii_digit).count();
                    self.nanos = frac_nanos(&after[..len]);
                    r = &after[len..];
                }
                Some(r)
            }
            Std::Pm | Std::LowerPm => {
                let head = v.get(..2)?;
                self.pm = Some(match head.to_ascii_uppercase().as_str() {
                    "PM" => true,
                    "AM" => false,
                    _ => return None,
                });
                Some(&v[2..])
            }
            Std::Frac { digits: n, trim, .. } => {
                let Some(after) = v.strip_prefix(['.', ',']) else {
                    // A trimmed fraction may be absent.
                    return trim.then_some(v);
                };
                let len = after.bytes().take_while(u8::is_ascii_digit).count();
                if !trim && len != n {
                    return None;
                }
                self.nanos = frac_nanos(&after[..len]);
                Some(&after[len..])
            }
            Std::Iso { colon, secs, mins } | Std::Num { colon, secs, mins } => {
                if matches!(std, Std::Iso { .. })
                    && let Some(r) = v.strip_prefix('Z')
                {
                    self.offset = Some(0);
                    self.zone = Some("UTC".into());
                    return Some(r);
                }
                let sign = match v.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let mut r = &v[1..];
                let (h, rest) = digits(r, 2, 2)?;
                r = rest;
                let mut m = 0;
                let mut s = 0;
                if mins {
                    if colon {
                        r = r.strip_prefix(':')?;
                    }
                    (m, r) = digits(r, 2, 2)?;
                }
                if secs {
                    if colon {
                        r = r.strip_prefix(':')?;
                    }
                    (s, r) = digits(r, 2, 2)?;
                }
                self.offset = Some(sign * (h * 3600 + m * 60 + s) as i32);
                Some(r)
            }
            Std::Tz => {
                if let Some(r) = v.strip_prefix("UTC").or_else(|| v.strip_prefix("GMT")) {
                    self.offset = Some(0);
                    self.zone = Some(v[..3].to_string());
                    return Some(r);
                }
                let len = v.bytes().take_while(u8::is_ascii_uppercase).count();
                if !(3..=5).contains(&len) {
                    return None;
                }
                self.zone = Some(v[..len].to_string());
                Some(&v[len..])
            }
        }
    }

    fn finish(self) -> Result<GoTime, Error> {
        let mut hour = self.hour;
        match self.pm {
            Some(true) if hour < 12 => hour += 12,
            Some(false) if hour == 12 => hour = 0,
            _ => {}
        }
        let (month, day) = match self.yday {
            Some(yday) => {
                let d = NaiveDate::from_yo_opt(self.year, yday).ok_or(self.range("day-of-year"))?;
                (d.month(), d.day())
            }
            None => (self.month, self.day),
        };
        if !(1..=12).contains(&month) {
            return Err(self.range("month"));
        }
        let date = NaiveDate::from_ymd_opt(self.year, month, day).ok_or(self.range("day"))?;
        if hour > 23 {
            return Err(self.range("hour"));
        }
        if self.min > 59 {
            return Err(self.range("minute"));
        }
        if self.sec > 59 {
            return Err(self.range("second"));
        }
        let naive = date.and_hms_nano_opt(hour, self.min, self.sec, self.nanos).ok_or(self.range("time"))?;
        let offset_secs = self.offset.unwrap_or(0);
        let offset = FixedOffset::east_opt(offset_secs).ok_or(self.range("zone offset"))?;
        let at = offset.from_local_datetime(&naive).single().ok_or(self.range("time"))?;
        let zone = match (self.zone, offset_secs) {
            (Some(z), _) => z,
            (None, 0) => "UTC".into(),
            (None, _) => String::new(),
        };
        Ok(GoTime { at, zone })
    }
}

/// Reads between `min` and `max` ASCII digits.
fn digits(v: &str, min: usize, max: usize) -> Option<(u32, &str)> {
    let len = v.bytes().take(max).take_while(u8::is_ascii_digit).count();
    if len < min {
        return None;
    }
    Some((v[..len].parse().ok()?, &v[len..]))
}

/// Go's `getnum`: two digits if `fixed`, else one or two.
fn num(v: &str, fixed: bool) -> Option<(u32, &str)> {
    if fixed { digits(v, 2, 2) } else { digits(v, 1, 2) }
}

fn frac_nanos(digits: &str) -> u32 {
    let mut s: String = digits.chars().take(9).collect();
    while s.len() < 9 {
        s.push('0');
    }
    s.parse().unwrap_or(0)
}

/// Case-insensitive match of a (long or three-letter) name at the start of `v`.
fn lookup_name<'v>(v: &'v str, names: &[&str], short: bool) -> Option<(usize, &'v str)> {
    names.iter().enumerate().find_map(|(i, name)| {
        let name = if short { &name[..3] } else { name };
        let head = v.get(..name.len())?;
        head.eq_ignore_ascii_case(name).then(|| (i, &v[name.len()..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> GoTime {
        GoTime::from_utc(DateTime::parse_from_rfc3339(s).expect("rfc3339").to_utc())
    }

    // Expected strings are what Go 1.22 prints for the same instants and layouts.
    #[test]
    fn formats_like_go() {
        let tm = t("2024-03-07T09:05:03.120450000Z");
        let cases = [
            ("2006-01-02T15-04-05", "2024-03-07T09-05-03"),
            ("2006-01-02T15:04:05.999999999Z07:00", "2024-03-07T09:05:03.12045Z"),
            ("2006-01-02T15:04:05.000Z0700", "2024-03-07T09:05:03.120Z"),
            ("Mon Jan _2 15:04:05 MST 2006", "Thu Mar  7 09:05:03 UTC 2024"),
            ("Monday, 02-Jan-06 3:04:05 PM -07:00", "Thursday, 07-Mar-24 9:05:03 AM +00:00"),
            ("January 2, 2006 03pm", "March 7, 2024 09am"),
            ("002 __2 1/2", "067  67 3/7"),
            ("20060102", "20240307"),
            ("15:04:05,000000", "09:05:03,120450"),
            ("Janet Month", "Janet Month"),
            ("2006-01-02 15:04:05.999999999 -0700 MST", "2024-03-07 09:05:03.12045 +0000 UTC"),
        ];
        for (layout, want) in cases {
            assert_eq!(tm.format(layout), want, "layout {layout}");
        }
        // A whole second: `.999` disappears entirely, `.000` stays.
        let whole = t("2024-12-31T23:59:59Z");
        assert_eq!(whole.format("15:04:05.999"), "23:59:59");
        assert_eq!(whole.format("15:04:05.000"), "23:59:59.000");
    }

    #[test]
    fn formats_zones_like_go() {
        let tm = t("2024-07-01T12:00:00Z").in_zone("Asia/Kolkata").expect("zone");
        assert_eq!(tm.format("15:04 MST -0700 Z07:00 -07"), "17:30 IST +0530 +05:30 +05");
        assert_eq!(tm.to_go_string(), "2024-07-01 17:30:00 +0530 IST");
        let ny = t("2024-01-15T12:00:00Z").in_zone("America/New_York").expect("zone");
        assert_eq!(ny.format(time_layouts::RFC1123Z), "Mon, 15 Jan 2024 07:00:00 -0500");
        assert!(matches!(tm.in_zone("Mars/Olympus"), Err(Error::UnknownZone(_))));
    }

    mod time_layouts {
        pub const RFC1123Z: &str = "Mon, 02 Jan 2006 15:04:05 -0700";
    }

    #[test]
    fn parses_layouts_like_go() {
        let rfc3339nano = "2006-01-02T15:04:05.999999999Z07:00";
        let p = GoTime::parse_layout(rfc3339nano, "2024-03-07T09:05:03.12045Z").expect("parse");
        assert_eq!(p.to_go_string(), "2024-03-07 09:05:03.12045 +0000 UTC");
        let p = GoTime::parse_layout(rfc3339nano, "2024-03-07T09:05:03+02:00").expect("parse");
        assert_eq!(p.unix(), t("2024-03-07T07:05:03Z").unix());
        assert_eq!(p.to_go_string(), "2024-03-07 09:05:03 +0200 +0200");
        let p = GoTime::parse_layout("Jan _2 2006 3:04PM", "mar  7 2024 9:05PM").expect("parse");
        assert_eq!(p.format("2006-01-02 15:04"), "2024-03-07 21:05");
        let p = GoTime::parse_layout("2006-01-02 15:04:05", "2024-03-07 09:05:03.5").expect("frac");
        assert_eq!(p.format(".000"), ".500");
    }

    #[test]
    fn parse_errors_name_the_element() {
        let e = GoTime::parse_layout("2006-01-02", "2024-3-07").expect_err("must fail");
        assert_eq!(e.to_string(), r#"parsing time "2024-3-07" as "2006-01-02": cannot parse "3-07" as "01""#);
        let e = GoTime::parse_layout("2006-01-02", "2024-02-30").expect_err("must fail");
        assert_eq!(e.to_string(), r#"parsing time "2024-02-30": day out of range"#);
        let e = GoTime::parse_layout("2006-01-02", "2024-02-03x").expect_err("must fail");
        assert!(matches!(e, Error::Extra { .. }));
    }

    #[test]
    fn go_string_round_trips() {
        for s in
            ["2024-03-07 09:05:03.12045 +0000 UTC", "2024-07-01 17:30:00 +0530 IST", "1999-12-31 23:59:59 -0800 PST"]
        {
            assert_eq!(GoTime::parse_go_string(s).expect(s).to_go_string(), s);
        }
        assert!(GoTime::parse_go_string("yesterday").is_err());
    }
}
