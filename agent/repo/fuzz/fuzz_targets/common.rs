// Shared by the fuzz targets (included with `#[path]`): the fixed keys their seeds are sealed
// with, so mutations of valid objects get past the envelope.
use kanister_repo::Keys;
use kanister_repo::crypto::SecretKey;

#[allow(dead_code)]
pub fn keys() -> Keys {
    Keys { id_key: SecretKey::from_bytes([1; 32]), data_key: SecretKey::from_bytes([2; 32]), chunker_seed: 3 }
}
