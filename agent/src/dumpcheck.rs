//! Did a database dump end, or was it cut off? A reader that passes a stream through unchanged
//! and, at its end, looks at what the stream is.
//!
//! In an upstream-style pipeline (`mysqldump ... | gzip | kando location push -`) a dump that
//! dies halfway closes the pipe like one that finished: without `set -o pipefail` the shell
//! reports success, and the push would store half a dump as a backup. The dump tools mark their
//! end, though: mysqldump and mariadb-dump end with `-- Dump completed`, pg_dump with
//! `-- PostgreSQL database dump complete`, pg_dumpall with `-- PostgreSQL database cluster dump
//! complete`. When the stream starts like one of them (plain, or compressed with gzip or zstd)
//! and lacks its end mark, the reader fails at the end of the stream instead of reporting it,
//! so no snapshot is written and the pipeline fails. Anything else (custom-format pg_dump,
//! `--skip-comments`, not a dump) passes and is recorded as unverified.

use std::io::{Read, Write};

/// Bytes of the (decompressed) start kept to recognise the format.
const HEAD: usize = 512;
/// Bytes of the (decompressed) end kept to find the end mark.
const TAIL: usize = 4096;

/// What the end of a stream showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A dump of a known tool with its end mark.
    Complete(&'static str),
    /// A dump of a known tool without its end mark, stored because the user asked for it.
    Incomplete(&'static str),
    /// Not a format whose end can be recognised.
    Unverified,
}

impl Verdict {
    /// The value of the snapshot tag [`INPUT_TAG`].
    pub fn tag_value(&self) -> String {
        match self {
            Verdict::Complete(tool) => format!("complete:{tool}"),
            Verdict::Incomplete(tool) => format!("incomplete:{tool}"),
            Verdict::Unverified => "unverified".into(),
        }
    }
}

/// The snapshot tag that records how the input ended.
pub const INPUT_TAG: &str = "input";

/// Known dump formats: tool, how the text starts, the end mark.
const FORMATS: [(&str, &[&str], &str); 3] = [
    ("mysqldump", &["-- MySQL dump", "-- MariaDB dump"], "-- Dump completed"),
    ("pg_dumpall", &["--\n-- PostgreSQL database cluster dump\n"], "-- PostgreSQL database cluster dump complete"),
    ("pg_dump", &["--\n-- PostgreSQL database dump\n"], "-- PostgreSQL database dump complete"),
];

/// Keeps the first [`HEAD`] and the last [`TAIL`] bytes written to it.
#[derive(Debug, Default)]
struct Ends {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
}

impl Write for Ends {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let take = HEAD.saturating_sub(self.head.len()).min(buf.len());
        self.head.extend_from_slice(&buf[..take]);
        let keep = &buf[buf.len().saturating_sub(TAIL)..];
        let overflow = (self.tail.len() + keep.len()).saturating_sub(TAIL);
        self.tail.drain(..overflow);
        self.tail.extend(keep);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the stream's bytes go to be looked at: as they are, or through a decompressor.
enum Sink {
    /// Not decided yet: the first bytes.
    Undecided(Vec<u8>),
    Plain(Ends),
    Gzip(Box<flate2::write::MultiGzDecoder<Ends>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Ends>>),
    /// Nothing to conclude: the start is no known dump's (the rest is not even decompressed),
    /// or a compressed stream is damaged (or not what its magic said).
    Broken,
}

impl Sink {
    fn ends(&self) -> Option<&Ends> {
        match self {
            Sink::Plain(e) => Some(e),
            Sink::Gzip(d) => Some(d.get_ref()),
            Sink::Zstd(d) => Some(d.get_ref()),
            Sink::Undecided(_) | Sink::Broken => None,
        }
    }
}

/// The known format whose start `head` has: tool, end mark.
fn format_of(head: &[u8]) -> Option<(&'static str, &'static str)> {
    FORMATS
        .iter()
        .find(|(_, starts, _)| starts.iter().any(|s| starts_a_line(head, s.as_bytes())))
        .map(|(tool, _, end)| (*tool, *end))
}

/// How a checked stream ended: set once, at its end (the error's text when a dump was cut).
pub type Outcome = std::sync::Arc<std::sync::OnceLock<Result<Verdict, String>>>;

/// A reader that passes `inner` through and checks, at its end, that a recognised dump ended.
pub struct DumpCheck<R> {
    inner: R,
    sink: Sink,
    outcome: Outcome,
    refuse: bool,
}

impl<R> std::fmt::Debug for DumpCheck<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpCheck").field("outcome", &self.outcome.get()).finish_non_exhaustive()
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl<R: Read> DumpCheck<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        DumpCheck { inner, sink: Sink::Undecided(Vec::new()), outcome: Outcome::default(), refuse: true }
    }

    /// With `false`, a cut dump passes (recorded as [`Verdict::Incomplete`]) instead of failing.
    pub fn refusing(mut self, refuse: bool) -> Self {
        self.refuse = refuse;
        self
    }

    /// Where the outcome appears when the stream ends, for whoever consumes the reader.
    pub fn outcome(&self) -> Outcome {
        self.outcome.clone()
    }

    /// The verdict, once the stream has ended without an error.
    pub fn verdict(&self) -> Option<Verdict> {
        self.outcome.get().and_then(|o| o.as_ref().ok().copied())
    }

    fn feed(&mut self, buf: &[u8]) {
        if let Sink::Undecided(first) = &mut self.sink {
            first.extend_from_slice(buf);
            if first.len() < ZSTD_MAGIC.len() {
                return;
            }
            let first = std::mem::take(first);
            self.sink = Self::sink_for(&first);
            self.write_sink(&first);
            return;
        }
        self.write_sink(buf);
    }

    fn sink_for(first: &[u8]) -> Sink {
        if first.starts_with(&GZIP_MAGIC) {
            Sink::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Ends::default())))
        } else if first.starts_with(&ZSTD_MAGIC) {
            match zstd::stream::write::Decoder::new(Ends::default()) {
                Ok(d) => Sink::Zstd(Box::new(d)),
                Err(_) => Sink::Broken,
            }
        } else {
            Sink::Plain(Ends::default())
        }
    }

    fn write_sink(&mut self, buf: &[u8]) {
        let ok = match &mut self.sink {
            Sink::Plain(e) => e.write_all(buf).is_ok(),
            Sink::Gzip(d) => d.write_all(buf).is_ok(),
            Sink::Zstd(d) => d.write_all(buf).is_ok(),
            Sink::Undecided(_) | Sink::Broken => true,
        };
        // Once the start is known not to be a dump's, nothing more is looked at (a gzip'd
        // tarball is not decompressed to the end for nothing).
        let not_a_dump = self.sink.ends().is_some_and(|e| e.head.len() >= HEAD && format_of(&e.head).is_none());
        if !ok || not_a_dump {
            self.sink = Sink::Broken;
        }
    }

    /// At the end of the stream: the verdict, or the error that says the dump was cut off.
    fn conclude(&mut self) -> std::io::Result<Verdict> {
        if let Sink::Undecided(first) = &self.sink {
            let first = first.clone();
            self.sink = Self::sink_for(&first);
            self.write_sink(&first);
        }
        // A compressed stream cut off (the compressor killed) decodes as far as it goes: what
        // it holds is judged like a plain one.
        let compressed = match &mut self.sink {
            Sink::Gzip(d) => {
                let _ = d.try_finish();
                Some("gzip")
            }
            Sink::Zstd(d) => {
                let _ = d.flush();
                Some("zstd")
            }
            _ => None,
        };
        let Some(ends) = self.sink.ends() else {
            return Ok(Verdict::Unverified);
        };
        let Some((tool, end)) = format_of(&ends.head) else {
            return Ok(Verdict::Unverified);
        };
        let tail: Vec<u8> = ends.tail.iter().copied().collect();
        if tail.windows(end.len()).any(|w| w == end.as_bytes()) {
            return Ok(Verdict::Complete(tool));
        }
        if !self.refuse {
            return Ok(Verdict::Incomplete(tool));
        }
        let through = compressed.map(|c| format!(" ({c}-compressed)")).unwrap_or_default();
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the input is a {tool} dump{through} that ends before its {end:?} line: the dump \
                     command failed or was killed, and this is not a complete backup (nothing was \
                     stored). Find the dump's own error above; in a shell pipeline, `set -o pipefail` \
                     makes the pipeline report it (to store it anyway: push --accept-incomplete-dump)"
            ),
        ))
    }
}

/// Whether `head` has a line that starts with `marker`: recent mariadb-dump writes a
/// `/*M!999999\- enable the sandbox mode */` line before its `-- MariaDB dump` header.
fn starts_a_line(head: &[u8], marker: &[u8]) -> bool {
    head.starts_with(marker) || head.windows(marker.len() + 1).any(|w| w[0] == b'\n' && &w[1..] == marker)
}

impl<R: Read> Read for DumpCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.outcome.get().is_some() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            let concluded = self.conclude();
            let _ = self.outcome.set(concluded.as_ref().map(|v| *v).map_err(ToString::to_string));
            return concluded.map(|_| 0);
        }
        self.feed(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> std::io::Result<Verdict> {
        let mut r = DumpCheck::new(bytes);
        let mut out = Vec::new();
        // Small reads, as from a pipe.
        let mut buf = [0u8; 7];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, bytes, "the stream passes through unchanged");
        Ok(r.verdict().unwrap())
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn mysqldump(rows: usize, complete: bool) -> Vec<u8> {
        // As mariadb-dump 10.11.19 starts.
        let mut s = String::from(
            "/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n--\n-- Host: localhost\n",
        );
        for i in 0..rows {
            s.push_str(&format!("INSERT INTO `t` VALUES ({i},'row {i}');\n"));
        }
        if complete {
            s.push_str("/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n\n-- Dump completed on 2026-12-03  7:00:00\n");
        }
        s.into_bytes()
    }

    #[test]
    fn complete_dumps_pass_and_cut_ones_fail() {
        assert_eq!(run(&mysqldump(5000, true)).unwrap(), Verdict::Complete("mysqldump"));
        let e = run(&mysqldump(5000, false)).unwrap_err();
        assert!(e.to_string().contains("mysqldump dump that ends before its \"-- Dump completed\" line"), "{e}");
        assert_eq!(run(&gzip(&mysqldump(5000, true))).unwrap(), Verdict::Complete("mysqldump"));
        let e = run(&gzip(&mysqldump(5000, false))).unwrap_err();
        assert!(e.to_string().contains("(gzip-compressed)"), "{e}");
        let z = zstd::encode_all(&mysqldump(100, false)[..], 1).unwrap();
        assert!(run(&z).is_err());
        let z = zstd::encode_all(&mysqldump(100, true)[..], 1).unwrap();
        assert_eq!(run(&z).unwrap(), Verdict::Complete("mysqldump"));
        // A gzip stream cut off inside (gzip itself killed) holds a cut dump.
        let g = gzip(&mysqldump(5000, true));
        assert!(run(&g[..g.len() / 2]).is_err());

        let pg = b"--\n-- PostgreSQL database dump\n--\n\nCOPY t (a) FROM stdin;\n1\n\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n";
        assert_eq!(run(pg).unwrap(), Verdict::Complete("pg_dump"));
        assert!(run(&pg[..60]).is_err());
        let all = b"--\n-- PostgreSQL database cluster dump\n--\n\nCREATE ROLE x;\n\n--\n-- PostgreSQL database cluster dump complete\n--\n\n";
        assert_eq!(run(all).unwrap(), Verdict::Complete("pg_dumpall"));
        assert!(run(&all[..50]).is_err());
    }

    #[test]
    fn a_cut_dump_can_be_accepted_and_is_recorded_so() {
        let cut = mysqldump(100, false);
        let mut r = DumpCheck::new(&cut[..]).refusing(false);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(r.verdict(), Some(Verdict::Incomplete("mysqldump")));
        assert_eq!(r.verdict().unwrap().tag_value(), "incomplete:mysqldump");
    }

    #[test]
    fn a_stream_that_starts_like_no_dump_is_looked_at_no_further() {
        let mut text: Vec<u8> =
            (0..20_000u32).flat_map(|i| format!("log line {}\n", i.wrapping_mul(2_654_435_761)).into_bytes()).collect();
        text.extend_from_slice(b"-- Dump completed");
        let compressed = gzip(&text);
        let mut r = DumpCheck::new(&compressed[..]);
        let mut buf = [0u8; 64];
        while r.read(&mut buf).unwrap() > 0 {
            if r.sink.ends().is_none() {
                break;
            }
        }
        assert!(matches!(r.sink, Sink::Broken), "the decompressor still runs past the start");
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(r.verdict(), Some(Verdict::Unverified));
    }

    #[test]
    fn other_streams_are_unverified() {
        for s in [&b""[..], b"x", b"PGDMP\x01\x0e", b"hello world, not a dump", &[0x1f, 0x8b, 0, 1, 2, 3][..]] {
            assert_eq!(run(s).unwrap(), Verdict::Unverified, "{s:?}");
        }
    }

    proptest::proptest! {
        /// Any bytes pass through unchanged and end in a verdict or an error, never a panic.
        #[test]
        fn any_stream_passes_through(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), cut in 0usize..2000) {
            let _ = run(&bytes);
            let gz = gzip(&mysqldump(50, true));
            let _ = run(&gz[..cut.min(gz.len())]);
        }
    }
}
