//! The phase output protocol: `###Phase-output###: {"key":"k","value":"v"}` lines in a
//! command's stdout or a pod's log become the phase's `Output` (`.Phases.<name>.Output.k`).
//!
//! The parser follows upstream Kanister (`pkg/output`):
//! - the marker may appear anywhere in a line; what precedes it is ordinary log text, the rest of
//!   the line (trimmed) is the JSON object `{"key": .., "value": ..}`; a later key wins;
//! - a marker split across two lines (a line ending with a prefix of the marker, the next
//!   starting with the rest) is recognised, as upstream does for chunked logs;
//! - lines may be arbitrarily long (up to [`MAX_OUTPUT_LINE`] for an output line) and arrive in
//!   chunks of any size, split anywhere (also inside a multi-byte character);
//! - empty lines are ignored.
//!
//! Besides outputs, the parser keeps the last lines of ordinary log text ([`LogTail`]) so that a
//! failing command's error can show them.

use std::collections::VecDeque;
use std::fmt;

use crate::crd::JsonMap;

/// The marker that starts a phase output.
pub const MARKER: &str = "###Phase-output###:";

/// The longest accepted output line (marker to end of line). Longer output lines are an error;
/// longer ordinary lines are cut when kept in the [`LogTail`].
pub const MAX_OUTPUT_LINE: usize = 8 * 1024 * 1024;

/// Errors of the parser.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The text after the marker is not a `{"key": .., "value": ..}` object.
    #[error("failed to parse phase output {text:?}: {message}")]
    Json {
        /// The text after the marker, cut to 200 bytes.
        text: String,
        /// The JSON parser's message.
        message: String,
    },
    /// The key is empty or has characters other than letters, digits and `_`.
    #[error("phase output key {0:?} is invalid: it must be non-empty and only letters, digits and '_'")]
    InvalidKey(String),
    /// An output line exceeded [`MAX_OUTPUT_LINE`].
    #[error("phase output line longer than {MAX_OUTPUT_LINE} bytes")]
    TooLong,
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(serde::Deserialize)]
struct KeyValue {
    key: String,
    value: serde_json::Value,
}

/// The last lines of ordinary log output, each cut to [`LogTail::MAX_LINE`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTail {
    lines: VecDeque<String>,
    capacity: usize,
}

impl LogTail {
    /// Longest kept line, in bytes; longer lines are cut and end with `...`.
    pub const MAX_LINE: usize = 512;

    /// A tail that keeps the last `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        LogTail { lines: VecDeque::with_capacity(capacity), capacity }
    }

    /// Adds a line (without its newline).
    pub fn push(&mut self, line: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let mut text = String::from_utf8_lossy(&line[..line.len().min(Self::MAX_LINE)]).into_owned();
        if line.len() > Self::MAX_LINE {
            text.push_str("...");
        }
        let text = text.trim_end_matches('\r').to_string();
        if text.trim().is_empty() {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(text);
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// Whether no line was kept.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Replaces every occurrence of each of `secrets` by `<redacted>`.
    pub fn redact(&mut self, secrets: &[String]) {
        for line in &mut self.lines {
            for s in secrets {
                if !s.is_empty() && line.contains(s.as_str()) {
                    *line = line.replace(s.as_str(), "<redacted>");
                }
            }
        }
    }
}

impl fmt::Display for LogTail {
    /// `; last log lines: a | b | c`, or nothing when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return Ok(());
        }
        write!(f, "; last log lines: ")?;
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                write!(f, " | ")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

/// A streaming parser of phase outputs. Feed it bytes as they arrive, then call
/// [`Parser::finish`].
#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    /// When the previous line ended with a prefix of the marker: the rest of the marker.
    pending_suffix: Option<&'static [u8]>,
    outputs: JsonMap,
    tail: LogTail,
    error: Option<Error>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new(10)
    }
}

impl Parser {
    /// A parser that keeps the last `tail_lines` ordinary lines.
    pub fn new(tail_lines: usize) -> Self {
        Parser {
            line: Vec::new(),
            pending_suffix: None,
            outputs: JsonMap::new(),
            tail: LogTail::new(tail_lines),
            error: None,
        }
    }

    /// Consumes a chunk of output. Chunks may split lines (and characters) anywhere.
    pub fn feed(&mut self, mut data: &[u8]) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&data[..nl]);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line);
            data = &data[nl + 1..];
        }
        self.line.extend_from_slice(data);
        if self.line.len() > MAX_OUTPUT_LINE + MARKER.len() {
            // An over-long line: keep it only if it may still be an output line.
            if find(&self.line, MARKER.as_bytes()).is_some() {
                self.error.get_or_insert(Error::TooLong);
                self.line.clear();
            } else {
                let keep = self.line.split_off(self.line.len() - MARKER.len());
                self.tail.push(&self.line);
                self.line = keep;
            }
        }
    }

    fn process_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        if let Some(suffix) = self.pending_suffix.take()
            && let Some(rest) = line.strip_prefix(suffix)
        {
            self.capture(rest);
            return;
        }
        match find(line, MARKER.as_bytes()) {
            Some(at) => {
                if at > 0 {
                    self.tail.push(&line[..at]);
                }
                self.capture(&line[at + MARKER.len()..]);
            }
            None => {
                self.tail.push(line);
                self.pending_suffix = split_marker_suffix(line);
            }
        }
    }

    fn capture(&mut self, content: &[u8]) {
        let text = String::from_utf8_lossy(content);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match serde_json::from_str::<KeyValue>(text) {
            Ok(kv) => {
                if kv.key.is_empty() || !kv.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.error.get_or_insert(Error::InvalidKey(kv.key));
                    return;
                }
                // Upstream values are strings; other JSON values are kept as their text.
                let value = match kv.value {
                    serde_json::Value::String(s) => serde_json::Value::String(s),
                    other => serde_json::Value::String(other.to_string()),
                };
                self.outputs.insert(kv.key, value);
            }
            Err(e) => {
                let cut: String = text.chars().take(200).collect();
                self.error.get_or_insert(Error::Json { text: cut, message: e.to_string() });
            }
        }
    }

    /// The ordinary log lines seen so far (last ones only).
    pub fn tail(&self) -> &LogTail {
        &self.tail
    }

    /// Ends the stream: processes a last line without newline and returns the outputs, or the
    /// first malformed output, with the log tail in both cases.
    pub fn finish(mut self) -> (Result<JsonMap>, LogTail) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line);
        }
        match self.error {
            Some(e) => (Err(e), self.tail),
            None => (Ok(self.outputs), self.tail),
        }
    }
}

/// Parses a complete text (all of a command's stdout).
pub fn parse(text: &[u8]) -> Result<JsonMap> {
    let mut p = Parser::new(0);
    p.feed(text);
    p.finish().0
}

/// Formats one output line as `kando output` prints it.
pub fn format_output(key: &str, value: &str) -> String {
    let json = serde_json::json!({ "key": key, "value": value });
    format!("{MARKER} {json}")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// When `line` ends with a proper prefix of the marker, the rest of the marker.
fn split_marker_suffix(line: &[u8]) -> Option<&'static [u8]> {
    let marker = MARKER.as_bytes();
    (1..marker.len()).rev().find(|&i| line.ends_with(&marker[..i])).map(|i| &marker[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> serde_json::Value {
        serde_json::Value::String(v.into())
    }

    #[test]
    fn plain_output_lines() {
        let out = parse(b"hello\n###Phase-output###: {\"key\":\"path\",\"value\":\"/a/b\"}\nbye\n").unwrap();
        assert_eq!(out.get("path"), Some(&s("/a/b")));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn marker_after_text_and_last_key_wins_and_no_trailing_newline() {
        let text = "log: ###Phase-output###: {\"key\":\"k\",\"value\":\"1\"}\n\n\
                    ###Phase-output###:{\"key\":\"k\",\"value\":\"2\"}";
        assert_eq!(parse(text.as_bytes()).unwrap().get("k"), Some(&s("2")));
    }

    #[test]
    fn chunks_split_anywhere() {
        let text = format!("a\n{}\nb\n{}\n", format_output("x", "héllo wörld"), format_output("y", "2"));
        for chunk in 1..text.len() {
            let mut p = Parser::new(5);
            for c in text.as_bytes().chunks(chunk) {
                p.feed(c);
            }
            let (out, tail) = p.finish();
            let out = out.unwrap();
            assert_eq!(out.get("x"), Some(&s("héllo wörld")), "chunk size {chunk}");
            assert_eq!(out.get("y"), Some(&s("2")));
            assert_eq!(tail.lines().collect::<Vec<_>>(), ["a", "b"]);
        }
    }

    #[test]
    fn marker_split_across_lines() {
        let out = parse(b"some log ###Phase-\noutput###: {\"key\":\"k\",\"value\":\"v\"}\n").unwrap();
        assert_eq!(out.get("k"), Some(&s("v")));
        // A line that merely ends like the marker's start does not swallow the next line.
        let out = parse(b"count ##\nplain line\n").unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn long_lines() {
        let value = "v".repeat(1_000_000);
        let noise = "n".repeat(3 * MAX_OUTPUT_LINE / 2);
        let text = format!("{noise}\n{}\n", format_output("big", &value));
        let mut p = Parser::new(2);
        for c in text.as_bytes().chunks(64 * 1024) {
            p.feed(c);
        }
        let (out, tail) = p.finish();
        assert_eq!(out.unwrap().get("big"), Some(&s(&value)));
        assert!(tail.lines().all(|l| l.len() <= LogTail::MAX_LINE + 3));
    }

    #[test]
    fn bad_json_and_bad_key_are_errors() {
        assert!(matches!(parse(b"###Phase-output###: {not json}\n"), Err(Error::Json { .. })));
        assert_eq!(
            parse(b"###Phase-output###: {\"key\":\"a-b\",\"value\":\"v\"}\n"),
            Err(Error::InvalidKey("a-b".into()))
        );
    }

    #[test]
    fn tail_keeps_last_lines_and_redacts() {
        let mut p = Parser::new(2);
        p.feed(b"one\ntwo\nthree hunter22\n");
        let (_, mut tail) = p.finish();
        tail.redact(&["hunter22".into()]);
        assert_eq!(tail.to_string(), "; last log lines: two | three <redacted>");
    }
}
