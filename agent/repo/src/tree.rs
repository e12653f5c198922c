//! Directory trees: what a volume backup records for every file, directory and link.
//!
//! A directory's listing is stored as one or more tree-part blobs (kind
//! [`BlobKind::Tree`](crate::blob::BlobKind::Tree)), each a list of [`Node`]s sorted by name, at
//! most about [`PART_TARGET`] bytes, so huge directories never make huge blobs. A directory
//! node names the parts of its listing; a file node names its content chunks.
//!
//! Part encodings, told apart by their first byte:
//! - **2** (written now): binary, little-endian. `count: u32`, then per node: `name_len: u32,
//!   name, kind: u8, mode: u32, uid: u32, gid: u32, mtime_ns: i64, ctime_ns: i64, inode: u64,
//!   size: u64, flags: u8` (bit 0 link id, 1 target, 2 rdev, 3 changed during backup), the
//!   link id `u64`, target `len: u32 + bytes` and rdev `u64` when flagged, then `content` and
//!   `subtree` as `count: u32` + 32-byte ids. Several times faster to read than JSON, which
//!   is what an incremental backup of an unchanged tree mostly does.
//! - **1** (read only): a JSON array of nodes. Names are bytes on Linux: they are JSON strings
//!   when they are UTF-8 and `"\u0000hex:<hex>"` otherwise (a NUL never starts a real name).
//!
//! Restorers must refuse names that are empty, `.`, `..`, or hold `/` or NUL: see
//! [`is_safe_name`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::BlobId;

/// Target size of one encoded tree part.
pub const PART_TARGET: usize = 1 << 20;
/// The JSON encoding (read only).
const PART_JSON: u8 = 1;
/// The binary encoding, written now.
const PART_BINARY: u8 = 2;

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
    let mut out = Vec::with_capacity(5 + nodes.iter().map(approx_size).sum::<usize>());
    out.push(PART_BINARY);
    out.extend_from_slice(&len32(nodes.len()).to_le_bytes());
    for n in nodes {
        encode_node(n, &mut out);
    }
    out
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("tree parts hold far fewer than 4 GiB of anything")
}

const FLAG_LINK: u8 = 1;
const FLAG_TARGET: u8 = 2;
const FLAG_RDEV: u8 = 4;
const FLAG_CHANGED: u8 = 8;

fn kind_byte(k: NodeKind) -> u8 {
    match k {
        NodeKind::File => 0,
        NodeKind::Dir => 1,
        NodeKind::Symlink => 2,
        NodeKind::Fifo => 3,
        NodeKind::CharDevice => 4,
        NodeKind::BlockDevice => 5,
    }
}

fn encode_node(n: &Node, out: &mut Vec<u8>) {
    out.extend_from_slice(&len32(n.name.len()).to_le_bytes());
    out.extend_from_slice(&n.name);
    out.push(kind_byte(n.kind));
    for v in [n.mode, n.uid, n.gid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&n.mtime_ns.to_le_bytes());
    out.extend_from_slice(&n.ctime_ns.to_le_bytes());
    out.extend_from_slice(&n.inode.to_le_bytes());
    out.extend_from_slice(&n.size.to_le_bytes());
    let flags = if n.link_id.is_some() { FLAG_LINK } else { 0 }
        | if n.target.is_some() { FLAG_TARGET } else { 0 }
        | if n.rdev.is_some() { FLAG_RDEV } else { 0 }
        | if n.changed_during_backup { FLAG_CHANGED } else { 0 };
    out.push(flags);
    if let Some(l) = n.link_id {
        out.extend_from_slice(&l.to_le_bytes());
    }
    if let Some(t) = &n.target {
        out.extend_from_slice(&len32(t.len()).to_le_bytes());
        out.extend_from_slice(t);
    }
    if let Some(r) = n.rdev {
        out.extend_from_slice(&r.to_le_bytes());
    }
    for ids in [&n.content, &n.subtree] {
        out.extend_from_slice(&len32(ids.len()).to_le_bytes());
        for id in ids {
            out.extend_from_slice(id.as_bytes());
        }
    }
}

/// Decodes a listing part (either encoding).
pub fn decode_part(bytes: &[u8]) -> Result<Vec<Node>> {
    match bytes.split_first() {
        Some((&PART_BINARY, rest)) => decode_binary(rest),
        Some((&PART_JSON, rest)) => serde_json::from_slice(rest).map_err(|source| Error::Json { what: "tree", source }),
        Some((&v, _)) => Err(Error::Version { what: "tree", found: v.into(), supported: PART_BINARY.into() }),
        None => Err(Error::malformed("tree", "empty")),
    }
}

/// The smallest encoded node: an empty name, no optional field, no ids.
const MIN_NODE: usize = 4 + 1 + 12 + 32 + 1 + 8;

fn decode_binary(bytes: &[u8]) -> Result<Vec<Node>> {
    let mut r = crate::wire::Reader::new(bytes, "tree");
    let count = r.count(MIN_NODE)?;
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = r.count(1)?;
        let name = r.take(name_len)?.to_vec();
        let kind = match r.u8()? {
            0 => NodeKind::File,
            1 => NodeKind::Dir,
            2 => NodeKind::Symlink,
            3 => NodeKind::Fifo,
            4 => NodeKind::CharDevice,
            5 => NodeKind::BlockDevice,
            k => return Err(Error::malformed("tree", format!("unknown node kind {k}"))),
        };
        let (mode, uid, gid) = (r.u32()?, r.u32()?, r.u32()?);
        let (mtime_ns, ctime_ns, inode, size) = (r.i64()?, r.i64()?, r.u64()?, r.u64()?);
        let flags = r.u8()?;
        if flags & !(FLAG_LINK | FLAG_TARGET | FLAG_RDEV | FLAG_CHANGED) != 0 {
            return Err(Error::malformed("tree", format!("unknown node flags {flags:#x}")));
        }
        let link_id = if flags & FLAG_LINK != 0 { Some(r.u64()?) } else { None };
        let target = if flags & FLAG_TARGET != 0 {
            let n = r.count(1)?;
            Some(r.take(n)?.to_vec())
        } else {
            None
        };
        let rdev = if flags & FLAG_RDEV != 0 { Some(r.u64()?) } else { None };
        let mut ids = || -> Result<Vec<BlobId>> {
            let n = r.count(32)?;
            (0..n).map(|_| Ok(BlobId::from_slice(r.take(32)?).expect("32 bytes"))).collect()
        };
        let content = ids()?;
        let subtree = ids()?;
        nodes.push(Node {
            name,
            kind,
            mode,
            uid,
            gid,
            mtime_ns,
            ctime_ns,
            inode,
            size,
            link_id,
            target,
            rdev,
            content,
            subtree,
            changed_during_backup: flags & FLAG_CHANGED != 0,
        });
    }
    if !r.b.is_empty() {
        return Err(Error::malformed("tree", "bytes after the last node"));
    }
    Ok(nodes)
}

/// Rough encoded size of a node, for cutting parts.
pub fn approx_size(n: &Node) -> usize {
    MIN_NODE + 20 + n.name.len() + n.target.as_ref().map_or(0, Vec::len) + 32 * (n.content.len() + n.subtree.len())
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

    /// Parts written before the binary encoding (JSON) still read.
    #[test]
    fn json_parts_still_read() {
        let nodes = vec![node(b"plain.txt"), node(b"\xff\x00bad")];
        let mut json = vec![PART_JSON];
        serde_json::to_writer(&mut json, &nodes).unwrap();
        assert_eq!(decode_part(&json).unwrap(), nodes);
    }

    fn any_node() -> impl proptest::strategy::Strategy<Value = Node> {
        use proptest::prelude::*;
        let ids = || proptest::collection::vec(any::<[u8; 32]>().prop_map(BlobId), 0..4);
        (
            (proptest::collection::vec(any::<u8>(), 0..40), 0u8..6, any::<u32>(), any::<u32>(), any::<u32>()),
            (any::<i64>(), any::<i64>(), any::<u64>(), any::<u64>()),
            (any::<Option<u64>>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))),
            (any::<Option<u64>>(), ids(), ids(), any::<bool>()),
        )
            .prop_map(
                |(
                    (name, k, mode, uid, gid),
                    (mtime_ns, ctime_ns, inode, size),
                    (link_id, target),
                    (rdev, content, subtree, changed),
                )| Node {
                    name,
                    kind: [
                        NodeKind::File,
                        NodeKind::Dir,
                        NodeKind::Symlink,
                        NodeKind::Fifo,
                        NodeKind::CharDevice,
                        NodeKind::BlockDevice,
                    ][k as usize],
                    mode,
                    uid,
                    gid,
                    mtime_ns,
                    ctime_ns,
                    inode,
                    size,
                    link_id,
                    target,
                    rdev,
                    content,
                    subtree,
                    changed_during_backup: changed,
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        #[test]
        fn binary_parts_round_trip(nodes in proptest::collection::vec(any_node(), 0..20)) {
            let bytes = encode_part(&nodes);
            proptest::prop_assert_eq!(decode_part(&bytes).unwrap(), nodes.clone());
            // Every encoded part is within the size estimate the part cutter uses.
            proptest::prop_assert!(bytes.len() <= 5 + nodes.iter().map(approx_size).sum::<usize>());
            // Any truncation is an error, never a panic or a shorter listing.
            for cut in 0..bytes.len() {
                proptest::prop_assert!(decode_part(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn damaged_parts_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut b = bytes;
            if let Some(first) = b.first_mut() { *first = PART_BINARY; }
            let _ = decode_part(&b);
        }
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
