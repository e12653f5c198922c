//! Content-defined chunking: FastCDC (v2020) over a byte stream.
//!
//! Boundaries depend only on the content (and the repository's seed), so an insertion shifts
//! only the chunks around it and everything else deduplicates.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Chunk size bounds in bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No chunk is smaller, except the last one of a stream.
    pub min_size: u32,
    /// The average the cut-point mask aims for.
    pub avg_size: u32,
    /// No chunk is larger.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 64 KiB average (16 KiB .. 256 KiB), chosen by measurement on `mysqldump`-shaped dumps
    /// (tests/bench/README.md): a changed row shifts every later extended-INSERT statement
    /// boundary, so each ~1 MB statement costs about one chunk; 64 KiB chunks store a 3%-changed
    /// dump about 6x smaller than 1 MiB chunks and 1.6x smaller than 128 KiB, for about 90
    /// bytes of overhead per chunk.
    fn default() -> Self {
        ChunkerParams::with_average(64 << 10)
    }
}

impl ChunkerParams {
    /// Bounds of a quarter and four times the average.
    pub fn with_average(avg: u32) -> Self {
        ChunkerParams { min_size: avg / 4, avg_size: avg, max_size: avg * 4 }
    }

    /// Checks the bounds against what FastCDC supports.
    pub fn validate(&self) -> Result<()> {
        let ChunkerParams { min_size, avg_size, max_size } = *self;
        let ok = (fastcdc::v2020::MINIMUM_MIN as u32..=fastcdc::v2020::MINIMUM_MAX as u32).contains(&min_size)
            && (fastcdc::v2020::AVERAGE_MIN as u32..=fastcdc::v2020::AVERAGE_MAX as u32).contains(&avg_size)
            && (fastcdc::v2020::MAXIMUM_MIN as u32..=fastcdc::v2020::MAXIMUM_MAX as u32).contains(&max_size)
            && min_size <= avg_size
            && avg_size <= max_size
            && min_size % 2 == 0
            && avg_size % 2 == 0
            && max_size % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "chunk sizes min {min_size} / avg {avg_size} / max {max_size}: need even sizes with \
                 64 B <= min <= avg <= max <= 16 MiB and 256 B <= avg <= 4 MiB"
            )))
        }
    }
}

/// Splits a reader into content-defined chunks. Reads every byte; holds at most `max_size`
/// bytes of the stream plus the chunk being returned.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> std::fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunker")
    }
}

impl<R: Read> Chunker<R> {
    /// A chunker over `source` with the repository's parameters and seed.
    pub fn new(source: R, params: ChunkerParams, seed: u64) -> Self {
        Chunker {
            inner: StreamCDC::with_level_and_seed(
                source,
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
                Normalization::Level1,
                seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(c) => Some(Ok(c.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(Error::Read(e))),
            Err(fastcdc::v2020::Error::Empty) => None,
            Err(fastcdc::v2020::Error::Other(s)) => Some(Err(Error::Read(std::io::Error::other(s)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096 }
    }

    fn chunks(data: &[u8], seed: u64) -> Vec<Vec<u8>> {
        Chunker::new(data, small(), seed).collect::<Result<Vec<_>>>().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn concatenation_is_identity_and_sizes_in_bounds(data in proptest::collection::vec(any::<u8>(), 0..40_000), seed in any::<u64>()) {
            let cs = chunks(&data, seed);
            prop_assert_eq!(cs.concat(), data);
            let p = small();
            for (i, c) in cs.iter().enumerate() {
                prop_assert!(c.len() <= p.max_size as usize);
                if i + 1 < cs.len() {
                    prop_assert!(c.len() >= p.min_size as usize);
                }
            }
        }

        #[test]
        fn boundaries_are_stable_under_an_insertion(
            seed in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 30_000..60_000),
            at in 0usize..30_000,
            ins in proptest::collection::vec(any::<u8>(), 1..100),
        ) {
            let before = chunks(&data, seed);
            let mut changed = data.clone();
            changed.splice(at..at, ins.iter().copied());
            let after = chunks(&changed, seed);
            // Chunks wholly after the edit (past a resynchronisation distance) reappear.
            let tail: std::collections::HashSet<_> = after.iter().collect();
            let mut offset = 0usize;
            let mut late = 0usize;
            let mut kept = 0usize;
            for c in &before {
                if offset > at + 3 * small().max_size as usize {
                    late += 1;
                    if tail.contains(c) { kept += 1; }
                }
                offset += c.len();
            }
            prop_assert_eq!(kept, late, "chunks far after the insertion must be unchanged");
        }
    }

    #[test]
    fn seed_changes_boundaries() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let lens = |seed| chunks(&data, seed).iter().map(Vec::len).collect::<Vec<_>>();
        assert_ne!(lens(1), lens(2));
        assert_eq!(lens(1), lens(1));
    }

    #[test]
    fn rejects_bad_params() {
        assert!(ChunkerParams { min_size: 10, avg_size: 1024, max_size: 4096 }.validate().is_err());
        assert!(ChunkerParams { min_size: 2048, avg_size: 1024, max_size: 4096 }.validate().is_err());
        assert!(ChunkerParams::default().validate().is_ok());
    }
}
