//! Authenticated encryption of everything the repository stores.
//!
//! XChaCha20-Poly1305 with a fresh random 24-byte nonce per sealed message (random nonces are
//! safe at this nonce length), laid out as `nonce || ciphertext || tag`. The associated data
//! binds a ciphertext to its role (a blob to its id, an index to the word "index"), so objects
//! cannot be swapped for one another.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// Bytes of the nonce at the start of a sealed message.
pub const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag at its end.
pub const TAG_LEN: usize = 16;
/// Total bytes sealing adds to a message.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A 256-bit symmetric key. Zeroized on drop; `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A fresh random key from the operating system's generator.
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        SecretKey(k)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(bytes)
    }

    /// The key bytes, for deriving subkeys.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Seals `plaintext`: returns `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.resize(NONCE_LEN, 0);
        out.extend_from_slice(plaintext);
        self.seal_in_place(aad, &mut out);
        out
    }

    /// Seals in place: `buf` holds [`NONCE_LEN`] bytes of room followed by the plaintext; on
    /// return the room holds a fresh nonce, the plaintext is encrypted and the tag appended.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) {
        assert!(buf.len() >= NONCE_LEN, "seal_in_place needs room for the nonce");
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.0));
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut buf[NONCE_LEN..])
            .expect("XChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
        buf.extend_from_slice(&tag);
    }

    /// Opens a message sealed by [`SecretKey::seal`] with the same associated data.
    /// `what` names the object in the error.
    pub fn open(&self, aad: &[u8], sealed: &[u8], what: impl FnOnce() -> String) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(Error::Decrypt { what: what() });
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = ct.to_vec();
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.0));
        cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut buf, Tag::from_slice(tag))
            .map_err(|_| Error::Decrypt { what: what() })?;
        Ok(buf)
    }
}

/// Version byte at the start of every sealed metadata object.
pub const OBJECT_VERSION: u8 = 1;

/// Seals a metadata object (config, index, snapshot): `version || nonce || ciphertext || tag`.
/// Returns the bytes and their content address (unkeyed BLAKE3), the object's name.
pub fn seal_object(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> ([u8; 32], Vec<u8>) {
    let mut buf = object_buffer(plaintext.len());
    buf.extend_from_slice(plaintext);
    seal_object_buffer(key, aad, buf)
}

/// A buffer to write an object's plaintext into for [`seal_object_buffer`]: it starts with
/// room for the nonce and has capacity for the version byte and the tag, so a large object
/// (an index of millions of blobs) is sealed without a second copy.
pub fn object_buffer(plaintext_len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + plaintext_len + OVERHEAD);
    buf.resize(NONCE_LEN, 0);
    buf
}

/// Seals a buffer from [`object_buffer`] holding the plaintext after the nonce room.
pub fn seal_object_buffer(key: &SecretKey, aad: &[u8], mut buf: Vec<u8>) -> ([u8; 32], Vec<u8>) {
    key.seal_in_place(aad, &mut buf);
    buf.insert(0, OBJECT_VERSION);
    (crate::id::content_hash(&buf), buf)
}

/// Opens a metadata object. When `expected` is given, the bytes must hash to it first, so a
/// damaged object is reported as damaged rather than as a wrong key.
pub fn open_object(
    key: &SecretKey,
    aad: &[u8],
    what: &'static str,
    name: &str,
    expected: Option<&[u8; 32]>,
    bytes: &[u8],
) -> Result<Vec<u8>> {
    if let Some(exp) = expected
        && &crate::id::content_hash(bytes) != exp
    {
        return Err(Error::malformed(what, format!("{name} is damaged: its content does not match its name")));
    }
    match bytes.first() {
        None => Err(Error::malformed(what, format!("{name} is empty"))),
        Some(&v) if v > OBJECT_VERSION => {
            Err(Error::Version { what, found: v.into(), supported: OBJECT_VERSION.into() })
        }
        Some(_) => key.open(aad, &bytes[1..], || format!("{what} {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = SecretKey::random();
        let sealed = k.seal(b"aad", b"hello world");
        assert_eq!(sealed.len(), 11 + OVERHEAD);
        assert_eq!(k.open(b"aad", &sealed, || "x".into()).unwrap(), b"hello world");
        assert!(k.open(b"other", &sealed, || "x".into()).is_err());
        assert!(SecretKey::random().open(b"aad", &sealed, || "x".into()).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(k.open(b"aad", &bad, || "x".into()).is_err(), "flip at {i} went unnoticed");
        }
        assert!(k.open(b"aad", &sealed[..10], || "x".into()).is_err());
        // Two seals of the same message never share a nonce.
        assert_ne!(k.seal(b"a", b"m")[..NONCE_LEN], k.seal(b"a", b"m")[..NONCE_LEN]);
        assert_eq!(format!("{k:?}"), "SecretKey(..)");
    }
}
