//! Deterministic test data: the same seed gives the same bytes on every machine.

use std::io::Read;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A stream of `len` bytes alternating blocks of SQL-like text and random bytes (about a third
/// random), as a reader.
#[derive(Debug)]
pub struct MixedStream {
    rng: ChaCha8Rng,
    left: u64,
    block: Vec<u8>,
    pos: usize,
    n: u64,
}

impl MixedStream {
    /// A mixed stream of `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        MixedStream { rng: ChaCha8Rng::seed_from_u64(seed), left: len, block: Vec::new(), pos: 0, n: 0 }
    }

    fn refill(&mut self) {
        self.n += 1;
        let size = self.rng.gen_range(64 << 10..2 << 20);
        self.block.clear();
        if self.rng.gen_bool(0.35) {
            self.block.resize(size, 0);
            self.rng.fill_bytes(&mut self.block);
        } else {
            while self.block.len() < size {
                let id = self.rng.next_u32();
                let amount = self.rng.gen_range(0..100_000);
                let w = WORDS[self.rng.gen_range(0..WORDS.len())];
                self.block.extend_from_slice(
                    format!("INSERT INTO t VALUES ({id},'{w}-{}',{amount}.{:02});\n", self.n, amount % 100).as_bytes(),
                );
            }
        }
        self.pos = 0;
    }
}

impl Read for MixedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            self.refill();
        }
        let k = buf.len().min(self.block.len() - self.pos).min(self.left as usize);
        buf[..k].copy_from_slice(&self.block[self.pos..self.pos + k]);
        self.pos += k;
        self.left -= k as u64;
        Ok(k)
    }
}

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
    "mike", "november", "oscar", "papa",
];

/// A synthetic `mysqldump` of one table, and later versions of it.
///
/// Version 2 changes `changed` of the rows (a fraction) in clusters of 200 to 2000 consecutive
/// rows at random places, the way batch jobs and hot key ranges update real tables, and
/// appends half a percent of new rows. Row contents derive from (seed, row, version) only.
#[derive(Debug, Clone)]
pub struct SqlDump {
    /// Seed of everything.
    pub seed: u64,
    /// Rows in version 1.
    pub rows: u64,
    /// Fraction of rows changed in version 2.
    pub changed: f64,
}

/// Average bytes of one generated row, for sizing dumps.
pub const ROW_BYTES: u64 = 94;

impl SqlDump {
    /// A dump of about `bytes` bytes.
    pub fn of_size(seed: u64, bytes: u64, changed: f64) -> Self {
        SqlDump { seed, rows: bytes / ROW_BYTES, changed }
    }

    /// Which rows version 2 changes: sorted, non-overlapping `[start, end)` ranges.
    pub fn changed_ranges(&self) -> Vec<(u64, u64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5eed_c4a9);
        let target = (self.rows as f64 * self.changed) as u64;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut total = 0;
        while total < target && self.rows > 2000 {
            let len = rng.gen_range(200..2000).min(target - total).max(1);
            let start = rng.gen_range(0..self.rows - len);
            if ranges.iter().any(|&(s, e)| start < e + 1 && s < start + len + 1) {
                continue;
            }
            ranges.push((start, start + len));
            total += len;
        }
        ranges.sort();
        ranges
    }

    /// Writes version `version` (1 or 2) to `out`.
    pub fn write(&self, version: u32, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let ranges = if version >= 2 { self.changed_ranges() } else { Vec::new() };
        let rows = if version >= 2 { self.rows + self.rows / 200 } else { self.rows };
        writeln!(out, "-- MySQL dump 10.13 (synthetic: kanister-testkit seed {})", self.seed)?;
        writeln!(out, "--\n-- Table structure for table `orders`\n--\n")?;
        writeln!(out, "DROP TABLE IF EXISTS `orders`;")?;
        writeln!(
            out,
            "CREATE TABLE `orders` (\n  `id` bigint NOT NULL,\n  `customer` varchar(64) NOT NULL,\n  `created` datetime NOT NULL,\n  `amount` decimal(10,2) NOT NULL,\n  `status` varchar(16) NOT NULL,\n  `note` varchar(255) DEFAULT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n"
        )?;
        writeln!(out, "LOCK TABLES `orders` WRITE;")?;
        let mut r = 0usize;
        let mut line = Vec::with_capacity(1 << 20);
        let mut row = 0u64;
        while row < rows {
            line.clear();
            line.extend_from_slice(b"INSERT INTO `orders` VALUES ");
            // Like mysqldump's extended inserts: statements of up to ~1 MB (net_buffer_length).
            let mut first = true;
            while row < rows && line.len() < 1_000_000 {
                while r < ranges.len() && ranges[r].1 <= row {
                    r += 1;
                }
                let v = if r < ranges.len() && ranges[r].0 <= row { 2 } else { 1 };
                if !first {
                    line.push(b',');
                }
                first = false;
                self.row(row, v, &mut line);
                row += 1;
            }
            line.extend_from_slice(b";\n");
            out.write_all(&line)?;
        }
        writeln!(out, "UNLOCK TABLES;\n-- Dump completed")?;
        Ok(())
    }

    fn row(&self, row: u64, version: u64, out: &mut Vec<u8>) {
        let mut h = splitmix(self.seed ^ row.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (version << 56));
        let mut next = || {
            h = splitmix(h);
            h
        };
        let (a, b, c, d) = (next(), next(), next(), next());
        let status = ["new", "paid", "shipped", "returned", "cancelled"][(a % 5) as usize];
        let w1 = WORDS[(b % 16) as usize];
        let w2 = WORDS[((b >> 8) % 16) as usize];
        let w3 = WORDS[((b >> 16) % 16) as usize];
        use std::io::Write;
        let _ = write!(
            out,
            "({},'customer-{:06}','2026-{:02}-{:02} {:02}:{:02}:{:02}',{}.{:02},'{}','{} {} {} {:x}')",
            row + 1,
            c % 1_000_000,
            1 + (c >> 20) % 12,
            1 + (c >> 24) % 28,
            (c >> 32) % 24,
            (c >> 40) % 60,
            (c >> 48) % 60,
            d % 10_000,
            (d >> 16) % 100,
            status,
            w1,
            w2,
            w3,
            d >> 40
        );
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes a tree of `files` files totalling about `total` bytes under `root`: nested
/// directories of up to 100 entries, mostly small files (text and binary), a few large ones.
pub fn write_tree(root: &std::path::Path, files: u64, total: u64, seed: u64) -> std::io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // 2% of the files hold half the bytes; the rest share the other half.
    let large = (files / 50).max(1);
    let large_size = total / 2 / large;
    let small_avg = (total / 2 / (files - large).max(1)).max(1);
    for i in 0..files {
        let dir = root.join(format!("d{:03}/e{:03}", i / 10_000 % 1000, i / 100 % 100));
        std::fs::create_dir_all(&dir)?;
        let size = if i % 50 == 7 { large_size } else { rng.gen_range(0..=2 * small_avg) };
        let text = rng.gen_bool(0.7);
        let ext = if text { "txt" } else { "bin" };
        std::fs::write(dir.join(format!("f{i:07}.{ext}")), file_bytes(&mut rng, size as usize, text))?;
    }
    Ok(())
}

/// Changes about `fraction` of the files of a tree written by [`write_tree`]: rewrites some,
/// appends to others, in place. Returns how many files changed.
pub fn mutate_tree(root: &std::path::Path, fraction: f64, seed: u64) -> std::io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stack = vec![root.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if rng.gen_bool(fraction) {
                let text = p.extension().is_some_and(|x| x == "txt");
                let len = std::fs::metadata(&p)?.len() as usize;
                if rng.gen_bool(0.5) {
                    let extra = file_bytes(&mut rng, (len / 10).max(100), text);
                    let mut f = std::fs::OpenOptions::new().append(true).open(&p)?;
                    std::io::Write::write_all(&mut f, &extra)?;
                } else {
                    let mut data = std::fs::read(&p)?;
                    let at = if data.is_empty() { 0 } else { rng.gen_range(0..data.len()) };
                    let patch = file_bytes(&mut rng, 64.min(data.len() - at).max(1), text);
                    data.splice(at..(at + patch.len()).min(data.len()), patch);
                    std::fs::write(&p, data)?;
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

fn file_bytes(rng: &mut ChaCha8Rng, size: usize, text: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + 128);
    if text {
        while v.len() < size {
            let w = WORDS[rng.gen_range(0..WORDS.len())];
            let n: u32 = rng.r#gen();
            v.extend_from_slice(format!("{w} {n} {} {w}-{}\n", n % 997, n >> 20).as_bytes());
        }
        v.truncate(size);
    } else {
        v.resize(size, 0);
        rng.fill_bytes(&mut v);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let (a, n) = crate::sha256_of(MixedStream::new(7, 5_000_000)).unwrap();
        let (b, _) = crate::sha256_of(MixedStream::new(7, 5_000_000)).unwrap();
        assert_eq!((a.clone(), n), (b, 5_000_000));
        assert_ne!(a, crate::sha256_of(MixedStream::new(8, 5_000_000)).unwrap().0);
        let d = SqlDump::of_size(1, 2_000_000, 0.03);
        let mut v1 = Vec::new();
        let mut v2 = Vec::new();
        d.write(1, &mut v1).unwrap();
        d.write(2, &mut v2).unwrap();
        assert!(v1.len() > 1_500_000 && v1.len() < 3_000_000, "{}", v1.len());
        assert_ne!(v1, v2);
        let changed: u64 = d.changed_ranges().iter().map(|(s, e)| e - s).sum();
        assert!((changed as f64 / d.rows as f64 - 0.03).abs() < 0.005);
    }
}
