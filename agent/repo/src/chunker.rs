//! Content-defined chunking: FastCDC (v2020) over a byte stream.
//!
//! Boundaries depend only on the content (and the repository's seed), so an insertion shifts
//! only the chunks around it and everything else deduplicates.

use std::io::Read;

use std::borrow::Cow;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
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

/// The cut-point search of a repository: FastCDC v2020 masks and seeded gear tables, computed
/// once and shared by every file and stream of a backup.
#[derive(Clone)]
pub struct Cutter {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl std::fmt::Debug for Cutter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cutter").field("params", &self.params).finish_non_exhaustive()
    }
}

impl Cutter {
    /// The cutter of a repository's parameters and seed.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Cutter { params, mask_s, mask_l, gear, gear_ls }
    }

    /// The chunk size bounds.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// The length of the chunk that starts `window`. `window` must hold at least `max_size`
    /// bytes, or everything up to the end of the data: the cut depends on nothing else.
    pub fn cut(&self, window: &[u8]) -> usize {
        let p = self.params;
        let (_, n) = cut_gear(
            window,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        n
    }

    /// The chunks of data held whole in memory, as slices of it (no copy). Cut exactly where a
    /// [`Chunker`] over the same bytes cuts.
    pub fn chunks<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = data;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (chunk, tail) = rest.split_at(self.cut(rest));
            rest = tail;
            Some(chunk)
        })
    }
}

/// Splits a reader into content-defined chunks. Reads every byte; holds one buffer of
/// `8 * max_size` bytes (2 MiB by default), filled by large reads, and copies each chunk out of it
/// once.
pub struct Chunker<R: Read> {
    cutter: Cutter,
    source: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> std::fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunker")
    }
}

impl<R: Read> Chunker<R> {
    /// A chunker over `source` with the repository's parameters and seed.
    pub fn new(source: R, params: ChunkerParams, seed: u64) -> Self {
        Chunker::with_cutter(source, Cutter::new(params, seed))
    }

    /// A chunker over `source` with a cutter already made.
    pub fn with_cutter(source: R, cutter: Cutter) -> Self {
        let size = cutter.params.max_size as usize * 8;
        Chunker { cutter, source, buf: vec![0; size], start: 0, end: 0, eof: false }
    }

    /// Makes sure `max_size` bytes (or all that is left) lie after `start`.
    fn fill(&mut self) -> std::io::Result<()> {
        let max = self.cutter.params.max_size as usize;
        while !self.eof && self.end - self.start < max {
            if self.buf.len() - self.end < max {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            return Some(Err(Error::Read(e)));
        }
        let window = &self.buf[self.start..self.end];
        if window.is_empty() {
            return None;
        }
        let n = self.cutter.cut(window);
        let chunk = window[..n].to_vec();
        self.start += n;
        Some(Ok(chunk))
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

    /// A reader returning at most `step` bytes per read, to exercise refills.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Repositories written before this chunker was ours were cut by fastcdc's
        /// `StreamCDC`: the cuts must stay exactly the same, or old backups stop deduplicating.
        /// In-memory chunking cuts the same way.
        #[test]
        fn cuts_exactly_where_fastcdc_stream_cdc_cuts(
            data in proptest::collection::vec(any::<u8>(), 0..60_000),
            text in any::<bool>(),
            seed in any::<u64>(),
            step in 1usize..9000,
        ) {
            let data: Vec<u8> = if text { data.iter().map(|b| b"abc \n"[*b as usize % 5]).collect() } else { data };
            let p = small();
            let theirs: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
                data.as_slice(), p.min_size as usize, p.avg_size as usize, p.max_size as usize, Normalization::Level1, seed,
            ).map(|c| c.unwrap().data).collect();
            let ours: Vec<Vec<u8>> = Chunker::new(Trickle(&data, step), p, seed).map(|c| c.unwrap()).collect();
            prop_assert_eq!(&ours, &theirs);
            let cutter = Cutter::new(p, seed);
            let slices: Vec<Vec<u8>> = cutter.chunks(&data).map(<[u8]>::to_vec).collect();
            prop_assert_eq!(&slices, &theirs);
        }

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
