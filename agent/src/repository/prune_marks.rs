//! Prune marks (`prune/`): packs `prune` set aside, kept until the grace period ends so that a
//! backup that was running meanwhile can have them back. The format is
//! [`kanister_repo::marker::PruneMark`].

use std::collections::HashSet;
use std::time::SystemTime;

use bytes::Bytes;
use kanister_repo::PackId;
pub use kanister_repo::marker::PruneMark;

use super::{Open, PRUNE, Repository};
use crate::error::Result;

impl Repository<Open> {
    /// Every pack named in a prune mark.
    pub async fn prune_marked_packs(&self) -> Result<HashSet<PackId>> {
        let mut out = HashSet::new();
        for (_, _, mark) in self.prune_marks().await? {
            out.extend(mark.packs.iter().map(|p| p.id));
        }
        Ok(out)
    }

    /// Reads every prune mark, with the store's time of writing it.
    pub async fn prune_marks(&self) -> Result<Vec<(String, SystemTime, PruneMark)>> {
        let mut out = Vec::new();
        for o in self.store.list(PRUNE).await? {
            let bytes = self.store.get(&o.key).await?;
            let mark = PruneMark::open(&self.keys().data_key, &o.key, &bytes)?;
            out.push((o.key, o.last_modified, mark));
        }
        Ok(out)
    }

    /// Writes a prune mark.
    pub async fn write_prune_mark(&self, mark: &PruneMark) -> Result<String> {
        let (id, bytes) = mark.seal(&self.keys().data_key);
        let key = format!("{PRUNE}/{}", hex::encode(id));
        self.store.put(&key, Bytes::from(bytes)).await?;
        Ok(key)
    }
}
