//! Directory trees: what a volume backup records for every file, directory and link.
//!
//! A directory's listing is stored as one or more tree-part blobs (kind
//! [`BlobKind::Tree`](crate::blob::BlobKind::Tree)), each a JSON array of [`Node`]s sorted by
//! name, at most about [`PART_TARGET`] bytes, so huge directories never make huge blobs. A
//! directory node names the parts of its listing; a file node names its content chunks.
//!
//! Names are bytes on Linux. They are stored as JSON strings when they are UTF-8 and as
//! `"\u0000hex:<hex>"` otherwise (a NUL can never start a real name). Restorers must refuse
//! names that are empty, `.`, `..`, or hold `/` or NUL: see [`is_safe_name`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::BlobId;

/// Target size of one encoded tree part.
pub const PART_TARGET: usize = 1 << 20;
const PART_VERSION: u8 = 1;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The entry's name (bytes).
    #[serde(with = "name_serde")]
    pub name: Vec<u8>,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch (for change detection).
    pub ctime_ns: i64,
    /// Inode number at backup time (for change detection).
    pub inode: u64,
    /// Size in bytes (files).
    pub size: u64,
    /// For files with several hard links: an id shared by all names of the same inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_id: Option<u64>,
    /// Symlink target (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_name_serde")]
    pub target: Option<Vec<u8>>,
    /// Device number (devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Content chunks (files), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<BlobId>,
    /// Listing parts (directories).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtree: Vec<BlobId>,
    /// The file changed while it was read, even after retries: its content may be torn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_during_backup: bool,
}

/// Whether a name is safe to create inside a restore target.
pub fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Encodes a listing part (the plaintext of a tree blob).
pub fn encode_part(nodes: &[Node]) -> Vec<u8> {
    let mut out = vec![PART_VERSION];
    serde_json::to_writer(&mut out, nodes).expect("nodes serialize");
    out
}

/// Decodes a listing part.
pub fn decode_part(bytes: &[u8]) -> Result<Vec<Node>> {
    match bytes.split_first() {
        Some((&PART_VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|source| Error::Json { what: "tree", source })
        }
        Some((&v, _)) => Err(Error::Version { what: "tree", found: v.into(), supported: PART_VERSION.into() }),
        None => Err(Error::malformed("tree", "empty")),
    }
}

/// Rough encoded size of a node, for cutting parts.
pub fn approx_size(n: &Node) -> usize {
    200 + n.name.len() + n.target.as_ref().map_or(0, Vec::len) + 70 * (n.content.len() + n.subtree.len())
}

mod name_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    const RAW: &str = "\u{0}hex:";

    pub fn serialize<S: Serializer>(name: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(name) {
            Ok(t) if !t.starts_with('\u{0}') => s.serialize_str(t),
            _ => s.serialize_str(&format!("{RAW}{}", hex::encode(name))),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let t = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        match t.strip_prefix(RAW) {
            Some(h) => hex::decode(h).map_err(serde::de::Error::custom),
            None => Ok(t.as_bytes().to_vec()),
        }
    }
}

mod opt_name_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => super::name_serde::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::name_serde")] Vec<u8>);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8]) -> Node {
        Node {
            name: name.to_vec(),
            kind: NodeKind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime_ns: 3,
            ctime_ns: 4,
            inode: 5,
            size: 6,
            link_id: None,
            target: Some(b"\xff\xfe".to_vec()),
            rdev: None,
            content: vec![BlobId([1; 32])],
            subtree: vec![],
            changed_during_backup: false,
        }
    }

    #[test]
    fn parts_round_trip_any_name_bytes() {
        let nodes = vec![node(b"plain.txt"), node("ünïcödé".as_bytes()), node(b"\xff\x00bad"), node(b"\x00hex:x")];
        let back = decode_part(&encode_part(&nodes)).unwrap();
        assert_eq!(back, nodes);
        assert!(decode_part(&[9, b'[', b']']).is_err());
    }

    #[test]
    fn unsafe_names_are_recognised() {
        for bad in [&b""[..], b".", b"..", b"../evil", b"a/b", b"nul\0"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        for ok in [&b"a"[..], b"...", b".hidden", "ü".as_bytes()] {
            assert!(is_safe_name(ok));
        }
    }
}
