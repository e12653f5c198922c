//! Little-endian readers for the binary formats (indexes, tree parts): every read checks the
//! length, so damaged or hostile input ends in an error, never a panic.

use crate::error::{Error, Result};

/// Reads fixed-size fields from the front of a byte slice.
pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
    /// What is being read, for errors.
    pub(crate) what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::malformed(self.what, "truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_len` bytes each: larger than what is left is damage
    /// (so a hostile count cannot make the reader allocate much).
    pub(crate) fn count(&mut self, min_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_len.max(1)) > self.b.len() {
            return Err(Error::malformed(self.what, "a count larger than the data"));
        }
        Ok(n)
    }
}
