//! Authenticated encryption of everything the repository stores.
//!
//! XChaCha20-Poly1305 with a fresh random 24-byte nonce per sealed message (random nonces are
//! safe at this nonce length), laid out as `nonce || ciphertext || tag`. The associated data
//! binds a ciphertext to its role (a blob to its id, an index to the word "index"), so objects
//! cannot be swapped for one another.
//!
//! XChaCha20-Poly1305 is built as libsodium and the RustCrypto crate build it: HChaCha20 turns
//! the key and the nonce's first 16 bytes into a subkey, and ChaCha20-Poly1305 (RFC 8439) seals
//! with that subkey and the nonce `0000 || nonce[16..24]`. The second step is ring's, whose
//! assembly runs ~1.8x the speed of the `chacha20poly1305` crate here (1.5-1.8 against
//! 0.87-0.92 GB/s on 21 KB messages); the bytes are the same, which a test checks against that
//! crate.

use rand::RngCore;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
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
        self.seal_in_place_with(&nonce, aad, buf);
    }

    fn seal_in_place_with(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
        buf[..NONCE_LEN].copy_from_slice(nonce);
        let (key, nonce) = self.cipher(nonce);
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut buf[NONCE_LEN..])
            .expect("ChaCha20-Poly1305 seals any message shorter than 256 GiB");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Opens a message sealed by [`SecretKey::seal`] with the same associated data.
    /// `what` names the object in the error.
    pub fn open(&self, aad: &[u8], sealed: &[u8], what: impl FnOnce() -> String) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(Error::Decrypt { what: what() });
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let mut buf = rest.to_vec();
        let (key, nonce) = self.cipher(nonce.try_into().expect("split at NONCE_LEN"));
        let plain = key.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| Error::Decrypt { what: what() })?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Opens a message sealed by [`SecretKey::seal`] where it lies, without a copy: returns the
    /// plaintext, a part of `sealed` (whose bytes are then no longer the sealed message). On
    /// error the bytes may be partly decrypted; nothing of them may be used.
    pub fn open_in_place<'a>(
        &self,
        aad: &[u8],
        sealed: &'a mut [u8],
        what: impl FnOnce() -> String,
    ) -> Result<&'a [u8]> {
        if sealed.len() < OVERHEAD {
            return Err(Error::Decrypt { what: what() });
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let (key, nonce) = self.cipher((&*nonce).try_into().expect("split at NONCE_LEN"));
        let plain = key.open_in_place(nonce, Aad::from(aad), rest).map_err(|_| Error::Decrypt { what: what() })?;
        Ok(plain)
    }

    /// The ChaCha20-Poly1305 key and nonce that XChaCha20-Poly1305 with this key and `nonce`
    /// comes down to.
    fn cipher(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        let (head, tail) = nonce.split_at(16);
        // 10 double rounds: HChaCha20.
        let mut subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(
            (&self.0).into(),
            <&[u8; 16]>::try_from(head).expect("split at 16").into(),
        );
        let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey).expect("a 32-byte key");
        subkey.as_mut_slice().zeroize();
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(tail);
        (LessSafeKey::new(key), Nonce::assume_unique_for_key(n))
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

    proptest::proptest! {
        /// The same bytes as the `chacha20poly1305` crate's XChaCha20-Poly1305, both ways, for
        /// messages from empty to past ChaCha's multi-block paths.
        #[test]
        fn the_same_bytes_as_the_reference_xchacha20poly1305(
            key: [u8; 32],
            nonce: [u8; NONCE_LEN],
            aad in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            msg in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
        ) {
            use chacha20poly1305::aead::{AeadInPlace, KeyInit};
            let reference = chacha20poly1305::XChaCha20Poly1305::new(&key.into());
            let mut theirs = msg.clone();
            let tag = reference.encrypt_in_place_detached(&nonce.into(), &aad, &mut theirs).unwrap();
            let ours = SecretKey(key);
            let mut buf = vec![0u8; NONCE_LEN];
            buf.extend_from_slice(&msg);
            ours.seal_in_place_with(&nonce, &aad, &mut buf);
            proptest::prop_assert_eq!(&buf[..NONCE_LEN], &nonce[..]);
            proptest::prop_assert_eq!(&buf[NONCE_LEN..NONCE_LEN + msg.len()], &theirs[..]);
            proptest::prop_assert_eq!(&buf[NONCE_LEN + msg.len()..], tag.as_slice());
            // And what the reference seals, we open.
            proptest::prop_assert_eq!(ours.open(&aad, &buf, || "x".into()).unwrap(), msg.clone());
            let sealed = ours.seal(&aad, &msg);
            let (n, rest) = sealed.split_at(NONCE_LEN);
            let (ct, t) = rest.split_at(rest.len() - TAG_LEN);
            let mut plain = ct.to_vec();
            reference.decrypt_in_place_detached(n.into(), &aad, &mut plain, t.into()).unwrap();
            proptest::prop_assert_eq!(plain, msg);
        }
    }
}
