//! The master key, the keys derived from it, and the key slots that store it wrapped.
//!
//! A repository has one random master key. It is never stored in the clear: each key slot (an
//! object under `keys/`) holds it sealed under a wrapping key, derived either from a passphrase
//! with Argon2id or from the contents of a raw key file (for example a Kubernetes Secret). Any
//! slot opens the repository, so keys can be added and removed without re-encrypting data.

use serde::{Deserialize, Serialize};

use crate::crypto::SecretKey;
use crate::error::{Error, Result};
use crate::id::KeySlotId;

/// Version of the key slot format this code writes and reads.
pub const KEY_SLOT_VERSION: u32 = 1;
const SLOT_AAD: &[u8] = b"kanister key slot v1";

/// The repository's master key: everything else is derived from it.
#[derive(Debug, Clone)]
pub struct MasterKey(SecretKey);

/// The working keys derived from the master key.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Key for BLAKE3 blob ids.
    pub id_key: SecretKey,
    /// Key for XChaCha20-Poly1305 of blobs and metadata.
    pub data_key: SecretKey,
    /// Seed of the chunker's gear table, so chunk boundaries depend on the key too.
    pub chunker_seed: u64,
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        MasterKey(SecretKey::random())
    }

    /// Derives the working keys (BLAKE3 key derivation with fixed context strings).
    pub fn keys(&self) -> Keys {
        let m = self.0.expose();
        let seed = blake3::derive_key("kanister-rs 2026-11 chunker seed", m);
        Keys {
            id_key: SecretKey(blake3::derive_key("kanister-rs 2026-11 blob id key", m)),
            data_key: SecretKey(blake3::derive_key("kanister-rs 2026-11 data encryption key", m)),
            chunker_seed: u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
        }
    }
}

/// Where the wrapping key of a slot comes from.
#[derive(Debug)]
pub enum Credential<'a> {
    /// A passphrase, stretched with Argon2id.
    Passphrase(&'a [u8]),
    /// The contents of a key file (trailing whitespace ignored), at least 16 bytes.
    KeyFile(&'a [u8]),
}

/// Argon2id cost parameters, stored in the slot so they can change over time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Argon2Params {
    /// The most memory a slot may ask for: 128 MiB, seven times the default. A slot is read
    /// from the store, which others may write: without a bound, `m_cost = 4294967295` made the
    /// agent allocate 4 TiB and abort, under `serve` killing the sidecar for every caller.
    pub const MAX_M_COST: u32 = 128 * 1024;
    /// The most passes a slot may ask for (`t_cost = 4294967295` hung the agent for years).
    pub const MAX_T_COST: u32 = 16;
    /// The most lanes a slot may ask for.
    pub const MAX_P_COST: u32 = 16;

    /// Refuses parameters outside the bounds above (or below Argon2's own minimums), naming
    /// what is wrong and where (`what`).
    pub fn check(&self, what: &str) -> Result<()> {
        let bad = |field: &str, value: u32, range: String| {
            Err(Error::Invalid(format!(
                "{what} asks for Argon2 {field} = {value}, outside {range}: refusing it before any work (the slot \
                 was written by something other than this agent, or damaged)"
            )))
        };
        if !(1..=Self::MAX_P_COST).contains(&self.p_cost) {
            return bad("p_cost (lanes)", self.p_cost, format!("1..={}", Self::MAX_P_COST));
        }
        if !(1..=Self::MAX_T_COST).contains(&self.t_cost) {
            return bad("t_cost (passes)", self.t_cost, format!("1..={}", Self::MAX_T_COST));
        }
        let min_m = 8 * self.p_cost;
        if !(min_m..=Self::MAX_M_COST).contains(&self.m_cost) {
            return bad("m_cost (KiB)", self.m_cost, format!("{min_m}..={}", Self::MAX_M_COST));
        }
        Ok(())
    }
}

impl Default for Argon2Params {
    /// 19 MiB, 2 passes, 1 lane: OWASP's recommended minimum for Argon2id, about 25 ms here,
    /// paid by every command that opens the repository with a passphrase. (Keys the coordinator
    /// hands to agents are raw keys and skip the stretching entirely.)
    fn default() -> Self {
        Argon2Params { m_cost: 19 * 1024, t_cost: 2, p_cost: 1 }
    }
}

/// How a slot's wrapping key is derived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kdf {
    /// Argon2id of a passphrase with a random salt.
    Argon2id {
        /// Cost parameters.
        #[serde(flatten)]
        params: Argon2Params,
        /// 16 random bytes, hex.
        salt: String,
    },
    /// BLAKE3 key derivation from the contents of a key file.
    KeyFile,
}

/// A key slot: the master key sealed under a wrapping key. Stored as JSON under `keys/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    /// Format version.
    pub version: u32,
    /// Random id of the slot (also its object name).
    pub id: KeySlotId,
    /// RFC 3339 creation time.
    pub created: String,
    /// Free text: who added the slot, for `key list`.
    #[serde(default)]
    pub label: String,
    /// How the wrapping key is derived.
    pub kdf: Kdf,
    /// The sealed master key, hex.
    pub wrapped: String,
}

impl KeySlot {
    /// Wraps `master` under a key derived from `cred`, in a new slot.
    pub fn wrap(master: &MasterKey, cred: &Credential<'_>, params: Argon2Params, label: &str) -> Result<Self> {
        params.check("the new key slot")?;
        let kdf = match cred {
            Credential::Passphrase(_) => {
                let mut salt = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
                Kdf::Argon2id { params, salt: hex::encode(salt) }
            }
            Credential::KeyFile(_) => Kdf::KeyFile,
        };
        let wrapping = derive_wrapping_key(&kdf, cred)?;
        let mut id = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        Ok(KeySlot {
            version: KEY_SLOT_VERSION,
            id: KeySlotId(id),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            label: label.to_string(),
            kdf,
            wrapped: hex::encode(wrapping.seal(SLOT_AAD, master.0.expose())),
        })
    }

    /// Opens the slot with `cred`. `Ok(None)` when the credential does not fit this slot.
    pub fn unwrap(&self, cred: &Credential<'_>) -> Result<Option<MasterKey>> {
        if self.version > KEY_SLOT_VERSION {
            return Err(Error::Version { what: "key slot", found: self.version, supported: KEY_SLOT_VERSION });
        }
        let kind_matches = matches!(
            (&self.kdf, cred),
            (Kdf::Argon2id { .. }, Credential::Passphrase(_)) | (Kdf::KeyFile, Credential::KeyFile(_))
        );
        if !kind_matches {
            return Ok(None);
        }
        if let Kdf::Argon2id { params, .. } = &self.kdf {
            params.check(&format!("key slot {}", self.id.short()))?;
        }
        let wrapping = derive_wrapping_key(&self.kdf, cred)?;
        let sealed = hex::decode(&self.wrapped).map_err(|e| Error::malformed("key slot", e.to_string()))?;
        match wrapping.open(SLOT_AAD, &sealed, || format!("key slot {}", self.id.short())) {
            Ok(plain) => {
                let bytes: [u8; 32] = plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::malformed("key slot", "master key is not 32 bytes"))?;
                Ok(Some(MasterKey(SecretKey::from_bytes(bytes))))
            }
            Err(_) => Ok(None),
        }
    }

    /// Serializes the slot for storage.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a key slot serializes")
    }

    /// Parses a stored slot.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json { what: "key slot", source })
    }
}

/// Opens the first slot that `cred` fits.
pub fn open_any(slots: &[KeySlot], cred: &Credential<'_>) -> Result<MasterKey> {
    for slot in slots {
        if let Some(master) = slot.unwrap(cred)? {
            return Ok(master);
        }
    }
    Err(Error::WrongKey { slots: slots.len() })
}

fn derive_wrapping_key(kdf: &Kdf, cred: &Credential<'_>) -> Result<SecretKey> {
    match (kdf, cred) {
        (Kdf::Argon2id { params, salt }, Credential::Passphrase(pass)) => {
            if pass.is_empty() {
                return Err(Error::Invalid("the passphrase is empty".into()));
            }
            let salt = hex::decode(salt).map_err(|e| Error::malformed("key slot salt", e.to_string()))?;
            let p = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
                .map_err(|e| Error::Kdf(e.to_string()))?;
            let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
            let mut out = [0u8; 32];
            a.hash_password_into(pass, &salt, &mut out).map_err(|e| Error::Kdf(e.to_string()))?;
            Ok(SecretKey::from_bytes(out))
        }
        (Kdf::KeyFile, Credential::KeyFile(contents)) => {
            let trimmed = trim_trailing_whitespace(contents);
            if trimmed.len() < 16 {
                return Err(Error::Invalid(format!(
                    "the key file holds {} bytes; a raw key needs at least 16 (e.g. `head -c 32 /dev/urandom | base64`)",
                    trimmed.len()
                )));
            }
            Ok(SecretKey::from_bytes(blake3::derive_key("kanister-rs 2026-11 key file wrapping key", trimmed)))
        }
        _ => Err(Error::Invalid("credential kind does not match the key slot".into())),
    }
}

fn trim_trailing_whitespace(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(0, |i| i + 1);
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Argon2Params {
        Argon2Params { m_cost: 64, t_cost: 1, p_cost: 1 }
    }

    #[test]
    fn passphrase_slot_opens_only_with_its_passphrase() {
        let m = MasterKey::generate();
        let slot = KeySlot::wrap(&m, &Credential::Passphrase(b"correct horse"), cheap(), "t").unwrap();
        let slot = KeySlot::from_json(&slot.to_json()).unwrap();
        let got = open_any(std::slice::from_ref(&slot), &Credential::Passphrase(b"correct horse")).unwrap();
        assert_eq!(got.0.expose(), m.0.expose());
        let err = open_any(&[slot], &Credential::Passphrase(b"wrong")).unwrap_err();
        assert!(matches!(err, Error::WrongKey { slots: 1 }), "{err}");
    }

    #[test]
    fn key_file_slot_ignores_trailing_newline_and_rejects_short_keys() {
        let m = MasterKey::generate();
        let slot = KeySlot::wrap(&m, &Credential::KeyFile(b"0123456789abcdef0123\n"), cheap(), "").unwrap();
        assert!(open_any(std::slice::from_ref(&slot), &Credential::KeyFile(b"0123456789abcdef0123")).is_ok());
        assert!(open_any(std::slice::from_ref(&slot), &Credential::Passphrase(b"0123456789abcdef0123")).is_err());
        assert!(KeySlot::wrap(&m, &Credential::KeyFile(b"short\n"), cheap(), "").is_err());
    }

    #[test]
    fn hostile_cost_parameters_are_refused_fast_naming_the_slot() {
        let master = MasterKey::generate();
        let slot = KeySlot::wrap(&master, &Credential::Passphrase(b"pw"), cheap(), "t").unwrap();
        for (m, t, p) in [(u32::MAX, 1, 1), (64, u32::MAX, 1), (64, 1, u32::MAX), (0, 1, 1), (64, 0, 1), (64, 1, 0)] {
            let mut hostile = slot.clone();
            if let Kdf::Argon2id { params, .. } = &mut hostile.kdf {
                *params = Argon2Params { m_cost: m, t_cost: t, p_cost: p };
            }
            let started = std::time::Instant::now();
            let e = hostile.unwrap(&Credential::Passphrase(b"pw")).expect_err("refused");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "({m}, {t}, {p}) took long");
            let text = e.to_string();
            assert!(text.contains(&slot.id.short()) && text.contains("Argon2"), "{text}");
        }
        assert!(
            KeySlot::wrap(
                &master,
                &Credential::Passphrase(b"pw"),
                Argon2Params { m_cost: u32::MAX, t_cost: 1, p_cost: 1 },
                "t"
            )
            .is_err()
        );
    }

    #[test]
    fn derived_keys_differ_and_are_stable() {
        let m = MasterKey::generate();
        let (a, b) = (m.keys(), m.keys());
        assert_eq!(a.id_key.expose(), b.id_key.expose());
        assert_ne!(a.id_key.expose(), a.data_key.expose());
        assert_eq!(a.chunker_seed, b.chunker_seed);
    }
}
