//! 32-byte ids, printed and parsed as 64 hex digits.
//!
//! Blob ids are keyed BLAKE3 hashes of a chunk's plaintext (so an id reveals nothing about the
//! data to someone without the key); pack, index and snapshot ids are the unkeyed BLAKE3 hash
//! of the object's stored (encrypted) bytes, so a damaged object is found by hashing it.

use std::fmt;
use std::str::FromStr;

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;

/// A hasher for maps and sets keyed by ids. Ids are BLAKE3 outputs, uniformly distributed, so
/// their first eight bytes already are a good hash: indexes of millions of blobs load and
/// answer lookups several times faster than with SipHash. (Keyed ids cannot be chosen to
/// collide without the repository key.)
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // An id hashes as a length prefix, then its 32 bytes: the last long write decides.
        match bytes.first_chunk::<8>() {
            Some(w) => self.0 = (self.0 ^ u64::from_le_bytes(*w)).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            None => bytes.iter().for_each(|b| self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3)),
        }
    }
}

/// Builds [`IdHasher`]s.
pub type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;
/// A map keyed by ids.
pub type IdMap<K, V> = std::collections::HashMap<K, V, BuildIdHasher>;
/// A set of ids.
pub type IdSet<K> = std::collections::HashSet<K, BuildIdHasher>;

/// Error parsing an id from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {input:?}: expected 64 hex digits")]
pub struct ParseIdError {
    input: String,
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// The id as bytes.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }
            /// The full hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex digits, for tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
            /// Reads an id from the first [`ID_LEN`] bytes of `b`, if there are that many.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                b.get(..ID_LEN).map(|s| {
                    let mut a = [0u8; ID_LEN];
                    a.copy_from_slice(s);
                    Self(a)
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut a = [0u8; ID_LEN];
                hex::decode_to_slice(s, &mut a)
                    .map_err(|_| ParseIdError { input: s.to_string() })?;
                Ok(Self(a))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// Id of a blob: keyed BLAKE3 of its plaintext.
    BlobId
);
define_id!(
    /// Id (and object name) of a pack: BLAKE3 of the pack's bytes.
    PackId
);
define_id!(
    /// Id (and object name) of an index object: BLAKE3 of its bytes.
    IndexId
);
define_id!(
    /// Id (and object name) of a snapshot: BLAKE3 of its bytes.
    SnapshotId
);
define_id!(
    /// Id of a key slot (random).
    KeySlotId
);

/// Unkeyed BLAKE3 of `bytes`: the content address of a stored object.
pub fn content_hash(bytes: &[u8]) -> [u8; ID_LEN] {
    *blake3::hash(bytes).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = BlobId([7u8; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
        assert_eq!(id.short(), "07070707");
        assert!("xyz".parse::<BlobId>().is_err());
        assert!(s[..62].parse::<BlobId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
    }
}
