//! The sprig functions Kanister blueprints use, over `gotmpl` values.
//!
//! Each function follows sprig v2/v3 (the version upstream Kanister vendors) unless noted:
//! - Where sprig silently returns a wrong value (`b64dec` of invalid input returns the error
//!   text, `regexMatch` of an invalid pattern returns `false`, `date` of a non-time formats
//!   *now*), these fail instead, naming the function: a backup must not run on a wrong value.
//! - `div` by zero fails instead of panicking.
//! - `Local` is UTC (as in containers).
//!
//! Error messages name the function and describe the argument by type, never by value, so a
//! secret passed to a function does not end up in an error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use gotmpl::{FuncMap, TemplateError, Value};
use rand::Rng as _;
use sha2::Digest as _;

use super::gotime::GoTime;
use super::params::{JSON_KEY, list, string};

type R = gotmpl::Result<Value>;

/// Names of the functions registered by [`funcs`] (the `gotmpl` builtins `index`, `len`,
/// `printf`, `eq`, `and`, ... come on top).
pub const NAMES: &[&str] = &[
    "add",
    "add1",
    "atoi",
    "b64dec",
    "b64enc",
    "coalesce",
    "contains",
    "date",
    "dateInZone",
    "default",
    "dict",
    "div",
    "empty",
    "get",
    "hasKey",
    "hasPrefix",
    "hasSuffix",
    "indent",
    "int",
    "int64",
    "join",
    "list",
    "lower",
    "mod",
    "mul",
    "nindent",
    "now",
    "quote",
    "randAlphaNum",
    "regexMatch",
    "regexReplaceAll",
    "replace",
    "sha256sum",
    "split",
    "splitList",
    "squote",
    "sub",
    "toDate",
    "toJson",
    "toString",
    "toYaml",
    "trim",
    "trimPrefix",
    "trimSuffix",
    "unixEpoch",
    "upper",
];

fn fail(func: &str, msg: impl std::fmt::Display) -> TemplateError {
    TemplateError::Exec(format!("error calling {func}: {msg}"))
}

fn arity(func: &str, args: &[Value], n: usize) -> Result<(), TemplateError> {
    if args.len() == n { Ok(()) } else { Err(fail(func, format!("wrong number of args: want {n} got {}", args.len()))) }
}

fn min_arity(func: &str, args: &[Value], n: usize) -> Result<(), TemplateError> {
    if args.len() >= n {
        Ok(())
    } else {
        Err(fail(func, format!("wrong number of args: want at least {n} got {}", args.len())))
    }
}

/// A string argument; bytes are accepted as their (lossy UTF-8) text.
fn str_arg<'a>(func: &str, args: &'a [Value], i: usize) -> Result<std::borrow::Cow<'a, str>, TemplateError> {
    match &args[i] {
        Value::String(s) => Ok(std::borrow::Cow::Borrowed(s)),
        v if as_bytes(v).is_some() => Ok(std::borrow::Cow::Owned(strval(v))),
        v => Err(fail(func, format!("argument {} must be a string, got {}", i + 1, v.type_name()))),
    }
}

fn int_arg(func: &str, args: &[Value], i: usize) -> Result<i64, TemplateError> {
    match &args[i] {
        Value::Int(n) => Ok(*n),
        Value::Uint(n) => i64::try_from(*n).map_err(|_| fail(func, "integer overflow")),
        v => Err(fail(func, format!("argument {} must be an integer, got {}", i + 1, v.type_name()))),
    }
}

/// Go's `[]byte`: a list of `uint8` values (empty lists count as bytes).
pub(crate) fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    let Value::List(items) = v else { return None };
    items
        .iter()
        .map(|x| match x {
            Value::Uint(n) => u8::try_from(*n).ok(),
            _ => None,
        })
        .collect()
}

/// sprig's `strval`: strings as they are, bytes as text, anything else as Go's `%v`.
pub(crate) fn strval(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        v => match as_bytes(v) {
            Some(b) => String::from_utf8_lossy(&b).into_owned(),
            None => v.to_string(),
        },
    }
}

/// sprig's `empty`: nil, false, zero, and empty strings, lists and maps.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Function(_) => false,
        v => !v.is_truthy(),
    }
}

/// cast's `ToInt64` (sprig's number coercion): unparsable values are 0.
fn to_i64(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        Value::Uint(n) => *n as i64,
        Value::Float(f) => *f as i64,
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => parse_go_int(s).unwrap_or(0),
        _ => 0,
    }
}

/// `strconv.ParseInt(s, 0, 64)` after cast's trimming of a `.0` suffix.
fn parse_go_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = match s.split_once('.') {
        Some((int, frac)) if frac.bytes().all(|c| c == b'0') => int,
        _ => s,
    };
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let body = body.replace('_', "");
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower)
    };
    let n = i64::from_str_radix(&digits, radix).ok()?;
    Some(if neg { -n } else { n })
}

/// Go's `strconv.Quote` (what `%q` prints for a string).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`: no controls, no spaces but U+0020, no format
/// characters, no private use.
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(u, 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F
            | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
            | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF))
}

/// Writes `v` as Go's `encoding/json` does: map keys sorted, HTML characters escaped, bytes as
/// base64, structs as their upstream JSON.
pub(crate) fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Nil | Value::Function(_) => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Uint(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        Value::String(s) => json_string(out, s),
        Value::List(items) => {
            if let Some(b) = as_bytes(v).filter(|b| !b.is_empty()) {
                json_string(out, &base64::engine::general_purpose::STANDARD.encode(b));
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Value::Map(m) => {
            if let Some(Value::String(raw)) = m.get(JSON_KEY) {
                // Already Go's JSON; escape HTML characters as Go's encoder does.
                out.push_str(&escape_html_in_json(raw));
                return;
            }
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(out, k);
                out.push(':');
                write_json(out, item);
            }
            out.push('}');
        }
    }
}

fn escape_html_in_json(raw: &str) -> String {
    raw.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `toJson`.
pub fn to_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v);
    out
}

/// A time argument: a time value (Go's printed form) or Unix seconds.
fn time_arg(func: &str, v: &Value) -> Result<GoTime, TemplateError> {
    match v {
        Value::String(s) => GoTime::parse_go_string(s)
            .map_err(|_| fail(func, "argument is a string, not a time (use toDate to parse a string)")),
        Value::Int(_) | Value::Uint(_) => GoTime::from_unix(to_i64(v)).ok_or_else(|| fail(func, "time out of range")),
        v => Err(fail(func, format!("argument must be a time, got {}", v.type_name()))),
    }
}

fn f(m: &mut FuncMap, name: &str, func: impl Fn(&[Value]) -> R + Send + Sync + 'static) {
    m.insert(name.to_string(), Arc::new(func));
}

/// The function map. `clock` fixes `now` (tests); `None` reads the system clock.
pub fn funcs(clock: Option<DateTime<Utc>>) -> FuncMap {
    let mut m = FuncMap::new();
    // --- encoding ---
    f(&mut m, "toJson", |a| {
        arity("toJson", a, 1)?;
        Ok(string(&to_json(&a[0])))
    });
    f(&mut m, "toYaml", |a| {
        arity("toYaml", a, 1)?;
        let json: serde_json::Value = serde_json::from_str(&to_json(&a[0])).map_err(|e| fail("toYaml", e))?;
        let yaml = serde_norway::to_string(&json).map_err(|e| fail("toYaml", e))?;
        Ok(string(yaml.strip_suffix('\n').unwrap_or(&yaml)))
    });
    f(&mut m, "toString", |a| {
        arity("toString", a, 1)?;
        Ok(string(&strval(&a[0])))
    });
    f(&mut m, "quote", |a| {
        let parts: Vec<String> = a.iter().filter(|v| !matches!(v, Value::Nil)).map(|v| go_quote(&strval(v))).collect();
        Ok(string(&parts.join(" ")))
    });
    f(&mut m, "squote", |a| {
        let parts: Vec<String> =
            a.iter().filter(|v| !matches!(v, Value::Nil)).map(|v| format!("'{}'", strval(v))).collect();
        Ok(string(&parts.join(" ")))
    });
    f(&mut m, "b64enc", |a| {
        arity("b64enc", a, 1)?;
        let s = str_arg("b64enc", a, 0)?;
        let raw = as_bytes(&a[0]).unwrap_or_else(|| s.as_bytes().to_vec());
        Ok(string(&base64::engine::general_purpose::STANDARD.encode(raw)))
    });
    f(&mut m, "b64dec", |a| {
        arity("b64dec", a, 1)?;
        let s = str_arg("b64dec", a, 0)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|_| fail("b64dec", "argument is not valid base64"))?;
        Ok(string(&String::from_utf8_lossy(&raw)))
    });
    f(&mut m, "sha256sum", |a| {
        arity("sha256sum", a, 1)?;
        let s = str_arg("sha256sum", a, 0)?;
        Ok(string(&hex::encode(sha2::Sha256::digest(s.as_bytes()))))
    });
    // --- defaults ---
    f(&mut m, "default", |a| {
        min_arity("default", a, 1)?;
        Ok(match a.get(1) {
            Some(given) if !is_empty(given) => given.clone(),
            _ => a[0].clone(),
        })
    });
    f(&mut m, "empty", |a| {
        arity("empty", a, 1)?;
        Ok(Value::Bool(is_empty(&a[0])))
    });
    f(&mut m, "coalesce", |a| Ok(a.iter().find(|v| !is_empty(v)).cloned().unwrap_or(Value::Nil)));
    // --- strings ---
    fn str1(name: &'static str, op: fn(&str) -> String) -> impl Fn(&[Value]) -> R {
        move |a| {
            arity(name, a, 1)?;
            Ok(string(&op(&str_arg(name, a, 0)?)))
        }
    }
    f(&mut m, "upper", str1("upper", str::to_uppercase));
    f(&mut m, "lower", str1("lower", str::to_lowercase));
    f(&mut m, "trim", str1("trim", |s| s.trim().to_string()));
    f(&mut m, "trimSuffix", |a| {
        arity("trimSuffix", a, 2)?;
        let (suffix, s) = (str_arg("trimSuffix", a, 0)?, str_arg("trimSuffix", a, 1)?);
        Ok(string(s.strip_suffix(&*suffix).unwrap_or(&s)))
    });
    f(&mut m, "trimPrefix", |a| {
        arity("trimPrefix", a, 2)?;
        let (prefix, s) = (str_arg("trimPrefix", a, 0)?, str_arg("trimPrefix", a, 1)?);
        Ok(string(s.strip_prefix(&*prefix).unwrap_or(&s)))
    });
    f(&mut m, "replace", |a| {
        arity("replace", a, 3)?;
        let (old, new, s) = (str_arg("replace", a, 0)?, str_arg("replace", a, 1)?, str_arg("replace", a, 2)?);
        Ok(string(&go_replace_all(&s, &old, &new)))
    });
    f(&mut m, "contains", |a| {
        arity("contains", a, 2)?;
        Ok(Value::Bool(str_arg("contains", a, 1)?.contains(&*str_arg("contains", a, 0)?)))
    });
    f(&mut m, "hasPrefix", |a| {
        arity("hasPrefix", a, 2)?;
        Ok(Value::Bool(str_arg("hasPrefix", a, 1)?.starts_with(&*str_arg("hasPrefix", a, 0)?)))
    });
    f(&mut m, "hasSuffix", |a| {
        arity("hasSuffix", a, 2)?;
        Ok(Value::Bool(str_arg("hasSuffix", a, 1)?.ends_with(&*str_arg("hasSuffix", a, 0)?)))
    });
    f(&mut m, "split", |a| {
        arity("split", a, 2)?;
        let (sep, s) = (str_arg("split", a, 0)?, str_arg("split", a, 1)?);
        let parts: BTreeMap<Arc<str>, Value> =
            go_split(&s, &sep).into_iter().enumerate().map(|(i, p)| (Arc::from(format!("_{i}")), string(p))).collect();
        Ok(Value::Map(Arc::new(parts)))
    });
    f(&mut m, "splitList", |a| {
        arity("splitList", a, 2)?;
        let (sep, s) = (str_arg("splitList", a, 0)?, str_arg("splitList", a, 1)?);
        Ok(list(go_split(&s, &sep).into_iter().map(string)))
    });
    f(&mut m, "join", |a| {
        arity("join", a, 2)?;
        let sep = str_arg("join", a, 0)?;
        let parts: Vec<String> = match &a[1] {
            Value::List(items) => items.iter().filter(|v| !matches!(v, Value::Nil)).map(strval).collect(),
            Value::Nil => Vec::new(),
            v => vec![strval(v)],
        };
        Ok(string(&parts.join(&sep)))
    });
    f(&mut m, "indent", |a| {
        arity("indent", a, 2)?;
        Ok(string(&indent(int_arg("indent", a, 0)?, &str_arg("indent", a, 1)?)))
    });
    f(&mut m, "nindent", |a| {
        arity("nindent", a, 2)?;
        Ok(string(&format!("\n{}", indent(int_arg("nindent", a, 0)?, &str_arg("nindent", a, 1)?))))
    });
    f(&mut m, "randAlphaNum", |a| {
        arity("randAlphaNum", a, 1)?;
        let n = usize::try_from(int_arg("randAlphaNum", a, 0)?)
            .map_err(|_| fail("randAlphaNum", "count must not be negative"))?;
        let s: String =
            rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(n).map(char::from).collect();
        Ok(string(&s))
    });
    f(&mut m, "regexMatch", |a| {
        arity("regexMatch", a, 2)?;
        let re = regex(&str_arg("regexMatch", a, 0)?, "regexMatch")?;
        Ok(Value::Bool(re.is_match(&str_arg("regexMatch", a, 1)?)))
    });
    f(&mut m, "regexReplaceAll", |a| {
        arity("regexReplaceAll", a, 3)?;
        let re = regex(&str_arg("regexReplaceAll", a, 0)?, "regexReplaceAll")?;
        let (s, repl) = (str_arg("regexReplaceAll", a, 1)?, str_arg("regexReplaceAll", a, 2)?);
        Ok(string(&re.replace_all(&s, &*repl)))
    });
    // --- lists and dicts ---
    f(&mut m, "list", |a| Ok(list(a.iter().cloned())));
    f(&mut m, "dict", |a| {
        let mut d = BTreeMap::new();
        for pair in a.chunks(2) {
            let value = pair.get(1).cloned().unwrap_or_else(|| string(""));
            d.insert(Arc::from(strval(&pair[0])), value);
        }
        Ok(Value::Map(Arc::new(d)))
    });
    f(&mut m, "get", |a| {
        arity("get", a, 2)?;
        let key = str_arg("get", a, 1)?;
        match &a[0] {
            Value::Map(d) => Ok(d.get(&*key).cloned().unwrap_or_else(|| string(""))),
            v => Err(fail("get", format!("argument 1 must be a dict, got {}", v.type_name()))),
        }
    });
    f(&mut m, "hasKey", |a| {
        arity("hasKey", a, 2)?;
        let key = str_arg("hasKey", a, 1)?;
        match &a[0] {
            Value::Map(d) => Ok(Value::Bool(d.contains_key(&*key))),
            v => Err(fail("hasKey", format!("argument 1 must be a dict, got {}", v.type_name()))),
        }
    });
    // --- dates ---
    f(&mut m, "now", move |a| {
        arity("now", a, 0)?;
        let t = clock.map_or_else(GoTime::now, GoTime::from_utc);
        Ok(string(&t.to_go_string()))
    });
    f(&mut m, "date", |a| {
        arity("date", a, 2)?;
        let layout = str_arg("date", a, 0)?;
        Ok(string(&time_arg("date", &a[1])?.to_utc().format(&layout)))
    });
    f(&mut m, "dateInZone", |a| {
        arity("dateInZone", a, 3)?;
        let layout = str_arg("dateInZone", a, 0)?;
        let zone = str_arg("dateInZone", a, 2)?;
        let t = time_arg("dateInZone", &a[1])?.in_zone(&zone).map_err(|e| fail("dateInZone", e))?;
        Ok(string(&t.format(&layout)))
    });
    f(&mut m, "toDate", |a| {
        arity("toDate", a, 2)?;
        let (layout, s) = (str_arg("toDate", a, 0)?, str_arg("toDate", a, 1)?);
        let t = GoTime::parse_layout(&layout, &s).map_err(|e| fail("toDate", e))?;
        Ok(string(&t.to_go_string()))
    });
    f(&mut m, "unixEpoch", |a| {
        arity("unixEpoch", a, 1)?;
        Ok(string(&time_arg("unixEpoch", &a[0])?.unix().to_string()))
    });
    // --- numbers ---
    f(&mut m, "add", |a| Ok(Value::Int(a.iter().map(to_i64).fold(0, i64::wrapping_add))));
    f(&mut m, "add1", |a| {
        arity("add1", a, 1)?;
        Ok(Value::Int(to_i64(&a[0]).wrapping_add(1)))
    });
    f(&mut m, "sub", |a| {
        arity("sub", a, 2)?;
        Ok(Value::Int(to_i64(&a[0]).wrapping_sub(to_i64(&a[1]))))
    });
    f(&mut m, "mul", |a| {
        min_arity("mul", a, 1)?;
        Ok(Value::Int(a.iter().map(to_i64).fold(1, i64::wrapping_mul)))
    });
    f(&mut m, "div", |a| {
        arity("div", a, 2)?;
        let d = to_i64(&a[1]);
        if d == 0 {
            return Err(fail("div", "integer divide by zero"));
        }
        Ok(Value::Int(to_i64(&a[0]).wrapping_div(d)))
    });
    f(&mut m, "mod", |a| {
        arity("mod", a, 2)?;
        let d = to_i64(&a[1]);
        if d == 0 {
            return Err(fail("mod", "integer divide by zero"));
        }
        Ok(Value::Int(to_i64(&a[0]).wrapping_rem(d)))
    });
    f(&mut m, "int", |a| {
        arity("int", a, 1)?;
        Ok(Value::Int(to_i64(&a[0])))
    });
    f(&mut m, "int64", |a| {
        arity("int64", a, 1)?;
        Ok(Value::Int(to_i64(&a[0])))
    });
    f(&mut m, "atoi", |a| {
        arity("atoi", a, 1)?;
        let s = str_arg("atoi", a, 0)?;
        let s = s.strip_prefix('+').unwrap_or(&s);
        Ok(Value::Int(s.parse().unwrap_or(0)))
    });
    m
}

fn regex(pattern: &str, func: &str) -> Result<regex::Regex, TemplateError> {
    regex::Regex::new(pattern).map_err(|_| fail(func, "invalid regular expression"))
}

fn indent(spaces: i64, s: &str) -> String {
    let pad = " ".repeat(usize::try_from(spaces).unwrap_or(0));
    format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))
}

/// Go's `strings.Split`: an empty separator splits into characters.
fn go_split<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    if sep.is_empty() {
        s.char_indices().map(|(i, c)| &s[i..i + c.len_utf8()]).collect()
    } else {
        s.split(sep).collect()
    }
}

/// Go's `strings.Replace(s, old, new, -1)`: an empty `old` inserts `new` around every char.
fn go_replace_all(s: &str, old: &str, new: &str) -> String {
    if !old.is_empty() {
        return s.replace(old, new);
    }
    let mut out = String::from(new);
    for c in s.chars() {
        out.push(c);
        out.push_str(new);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_list_matches_the_function_map() {
        let m = funcs(None);
        let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, NAMES);
    }

    #[test]
    fn go_quote_escapes_like_strconv() {
        assert_eq!(go_quote("a\"b\\c\n\t\u{1}é\u{a0}"), r#""a\"b\\c\n\t\x01é\u00a0""#);
    }

    #[test]
    fn go_ints_parse_like_cast() {
        assert_eq!(parse_go_int("0x1F"), Some(31));
        assert_eq!(parse_go_int("010"), Some(8));
        assert_eq!(parse_go_int("-12.0"), Some(-12));
        assert_eq!(parse_go_int("12.5"), None);
        assert_eq!(parse_go_int(""), None);
    }

    #[test]
    fn json_escapes_html_like_go() {
        assert_eq!(to_json(&string("<a&b>")), r#""\u003ca\u0026b\u003e""#);
        assert_eq!(to_json(&super::super::params::bytes(b"hi")), r#""aGk=""#);
    }
}
