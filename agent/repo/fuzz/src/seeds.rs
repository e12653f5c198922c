//! Writes the seed corpora: valid objects of each kind, sealed with the fuzz targets' fixed
//! keys, so the fuzzer starts from inputs that get past every envelope.
//!   cargo run --bin seeds   (from agent/repo/fuzz)

use std::path::Path;

use kanister_repo::blob::{self, BlobKind};
use kanister_repo::crypto::SecretKey;
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::index_run::{self, RunEntry, RunFooter, RunKey};
use kanister_repo::keys::{Argon2Params, Credential};
use kanister_repo::pack::PackWriter;
use kanister_repo::snapshot::{self, Root, Snapshot};
use kanister_repo::{BlobId, KeySlot, Keys, MasterKey, RepoConfig};

fn keys() -> Keys {
    Keys { id_key: SecretKey::from_bytes([1; 32]), data_key: SecretKey::from_bytes([2; 32]), chunker_seed: 3 }
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let keys = keys();
    let blobs: Vec<_> = [&b"first chunk of a dump"[..], b"second", &[7u8; 3000]]
        .iter()
        .map(|d| blob::encode(&keys, BlobKind::Data, blob::blob_id(&keys, d), d, 3).unwrap())
        .collect();
    let mut w = PackWriter::with_capacity(1 << 16);
    for b in &blobs {
        w.add(b);
    }
    let pack = w.finish(&keys.data_key);
    put("pack", "pack", &pack.bytes);
    let index = IndexFile {
        supersedes: vec![],
        packs: vec![IndexPack { id: pack.id, size: pack.bytes.len() as u64, blobs: pack.entries.clone() }],
    };
    let (_, sealed_index) = index.encode(&keys);
    put("object_envelope", "index", &sealed_index);
    put("index_plain", "index", &index.to_plaintext());
    let run_key = RunKey::from_bytes([5; 32]);
    let mut entries: Vec<RunEntry> = pack.entries.iter().map(|e| RunEntry { pack: 0, entry: *e }).collect();
    entries.sort_by_key(RunEntry::sort_key);
    let page = index_run::encode_page(&run_key, &[6; 16], 0, &entries);
    put("index_run", "page", &page[..index_run::PAGE_LEN - index_run::PAGE_MAC_LEN]);
    let footer = RunFooter {
        run_id: [6; 16],
        entries: entries.len() as u64,
        index_ids: vec![index.encode(&keys).0],
        packs: vec![(pack.id, pack.bytes.len() as u64)],
        fence: vec![entries[0].entry.id],
    }
    .encode(&run_key);
    put("index_run", "footer", &footer[..footer.len() - 32 - index_run::TAIL_LEN]);
    let ids: Vec<BlobId> = blobs.iter().map(|b| b.id).collect();
    put("id_list", "list", &snapshot::encode_id_list(&ids));
    let snap = Snapshot {
        version: snapshot::SNAPSHOT_VERSION,
        time: "2026-12-02T00:00:00Z".into(),
        hostname: "fuzz".into(),
        tags: [("namespace".to_string(), "mysql-test".to_string())].into(),
        root: Root::Stream { lists: ids.clone() },
        size: 3026,
        stats: Default::default(),
        program: "seeds".into(),
        parent: None,
    };
    let (_, sealed_snap) = snap.encode(&keys);
    put("object_envelope", "snapshot", &sealed_snap);
    put("snapshot_plain", "snapshot", &serde_json::to_vec(&snap).unwrap());
    let config = RepoConfig::new(Default::default(), 8 << 20, 1).unwrap();
    put("object_envelope", "config", &config.encode(&keys));
    put("config_plain", "config", &serde_json::to_vec(&config).unwrap());
    let master = MasterKey::generate();
    let cheap = Argon2Params { m_cost: 64, t_cost: 1, p_cost: 1 };
    put(
        "key_slot",
        "passphrase",
        &KeySlot::wrap(&master, &Credential::Passphrase(b"fuzz passphrase"), cheap, "s").unwrap().to_json(),
    );
    put(
        "key_slot",
        "keyfile",
        &KeySlot::wrap(&master, &Credential::KeyFile(b"fuzz key file 0123456789abcdef"), cheap, "s").unwrap().to_json(),
    );
    let mut trailer = vec![1u8];
    trailer.extend_from_slice(&(pack.entries.len() as u32).to_le_bytes());
    for e in &pack.entries {
        e.encode_into(&mut trailer);
    }
    put("pack_trailer_plain", "trailer", &trailer);
    for (i, b) in blobs.iter().enumerate() {
        let mut input = b.raw_len.to_le_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(&b.bytes);
        put("blob", &format!("blob{i}"), &input);
    }
    let nodes = vec![kanister_repo::tree::Node {
        name: b"app.conf".to_vec(),
        kind: kanister_repo::tree::NodeKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
        ctime_ns: 1,
        inode: 2,
        size: 3026,
        link_id: None,
        target: None,
        rdev: None,
        content: ids,
        subtree: vec![],
        changed_during_backup: false,
    }];
    put("tree_part", "part", &kanister_repo::tree::encode_part(&nodes));
    println!("seed corpora written under corpus/");
    let lock = kanister_repo::marker::BackupLock {
        format: kanister_repo::marker::FORMAT,
        started: 1,
        refreshed: 2,
        hostname: "fuzz".into(),
        pid: 3,
        process: None,
    };
    put("marker", "lock", &lock.encode());
    let holder = kanister_repo::marker::MaintenanceHolder {
        format: kanister_repo::marker::FORMAT,
        purpose: "prune".into(),
        hostname: "fuzz".into(),
        pid: 4,
        since: 5,
    };
    put("marker", "holder", &holder.encode());
    let mark = kanister_repo::marker::PruneMark {
        created: 6,
        packs: vec![IndexPack { id: pack.id, size: pack.bytes.len() as u64, blobs: pack.entries.clone() }],
    };
    put("marker", "prune", &mark.to_plaintext());
}
