//! The stored object format. Every object starts with a header that records
//! how it was written, so reading never guesses:
//!
//! ```text
//! b"SHS1"  flags:u8  [nonce: 12 bytes, if encrypted]  payload
//! ```
//!
//! `flags` bit 0: the payload is zstd-compressed; bit 1: it is encrypted
//! with AES-256-GCM under a random nonce, with the object's path as
//! associated data, so an object copied to another path does not decrypt.
//! Compression happens before encryption.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use statehost_plugin_api::BackendError;

const MAGIC: &[u8; 4] = b"SHS1";
const ZSTD: u8 = 1;
const AES_GCM: u8 = 2;
const NONCE_LEN: usize = 12;

/// How objects are written, and the key to read encrypted ones.
pub struct Codec {
    zstd_level: Option<i32>,
    cipher: Option<Aes256Gcm>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("zstd_level", &self.zstd_level)
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl Codec {
    /// A codec that compresses at `zstd_level` (if any) and encrypts with
    /// `key` (if any).
    pub fn new(zstd_level: Option<i32>, key: Option<[u8; 32]>) -> Self {
        Codec {
            zstd_level,
            cipher: key.map(|k| Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&k))),
        }
    }

    /// Parses a 256-bit key given as 64 hex digits or as base64.
    pub fn parse_key(text: &str) -> Option<[u8; 32]> {
        use base64::Engine;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?
        };
        bytes.try_into().ok()
    }

    /// The object bytes for `value`, stored at `path`.
    pub fn encode(&self, path: &str, value: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut flags = 0;
        let compressed;
        let mut payload = value;
        if let Some(level) = self.zstd_level {
            compressed = zstd::bulk::compress(value, level)
                .map_err(|e| BackendError::other(format!("zstd compression failed: {e}")))?;
            payload = &compressed;
            flags |= ZSTD;
        }
        let mut out = Vec::with_capacity(payload.len() + 5 + NONCE_LEN + 16);
        out.extend_from_slice(MAGIC);
        match &self.cipher {
            None => {
                out.push(flags);
                out.extend_from_slice(payload);
            }
            Some(cipher) => {
                out.push(flags | AES_GCM);
                let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
                let sealed = cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: payload,
                            aad: path.as_bytes(),
                        },
                    )
                    .map_err(|_| BackendError::other("encryption failed"))?;
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
            }
        }
        Ok(out)
    }

    /// The value stored in `bytes` at `path`; a clear error for anything
    /// that is not an intact object written for this path.
    pub fn decode(&self, path: &str, bytes: &[u8]) -> Result<Vec<u8>, BackendError> {
        let corrupt =
            |why: &str| BackendError::invalid_input(format!("the object at {path} {why}"));
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| corrupt("was not written by statehost (no SHS1 header)"))?;
        let (&flags, rest) = rest.split_first().ok_or_else(|| corrupt("is truncated"))?;
        if flags & !(ZSTD | AES_GCM) != 0 {
            return Err(corrupt(&format!(
                "uses codecs this build does not know (flags {flags:#04x})"
            )));
        }
        let plain;
        let mut payload = rest;
        if flags & AES_GCM != 0 {
            let Some(cipher) = &self.cipher else {
                return Err(BackendError::config(format!(
                    "the object at {path} is encrypted; set encryption_key_env in [backends.object_store] to the variable holding its key"
                )));
            };
            if rest.len() < NONCE_LEN {
                return Err(corrupt("is truncated"));
            }
            let (nonce, sealed) = rest.split_at(NONCE_LEN);
            plain = cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: path.as_bytes() })
                .map_err(|_| {
                    BackendError::invalid_input(format!(
                        "the object at {path} does not decrypt: the key is wrong, or the object was altered or moved from another path"
                    ))
                })?;
            payload = &plain;
        }
        if flags & ZSTD != 0 {
            return zstd::decode_all(payload)
                .map_err(|e| corrupt(&format!("does not decompress ({e})")));
        }
        Ok(payload.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn every_combination_round_trips_and_records_itself() {
        let value = br#"{"checkpoint": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        for (level, key) in [
            (None, None),
            (Some(3), None),
            (None, Some(KEY)),
            (Some(19), Some(KEY)),
        ] {
            let writer = Codec::new(level, key);
            let bytes = writer.encode("a/b", value).unwrap();
            // A reader with other write settings still reads it: the object says how.
            let reader = Codec::new(None, Some(KEY));
            assert_eq!(reader.decode("a/b", &bytes).unwrap(), value);
        }
    }

    #[test]
    fn nonces_are_fresh_for_every_write() {
        let codec = Codec::new(None, Some(KEY));
        assert_ne!(
            codec.encode("p", b"same").unwrap(),
            codec.encode("p", b"same").unwrap()
        );
    }

    #[test]
    fn wrong_keys_tampering_and_moves_are_errors() {
        let codec = Codec::new(Some(3), Some(KEY));
        let bytes = codec.encode("task/a", b"\"secret\"").unwrap();
        let wrong = Codec::new(None, Some([8; 32]));
        assert!(
            wrong
                .decode("task/a", &bytes)
                .unwrap_err()
                .message()
                .contains("does not decrypt")
        );
        let mut tampered = bytes.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(codec.decode("task/a", &tampered).is_err());
        assert!(
            codec
                .decode("task/b", &bytes)
                .unwrap_err()
                .message()
                .contains("moved")
        );
        let keyless = Codec::new(None, None);
        assert!(
            keyless
                .decode("task/a", &bytes)
                .unwrap_err()
                .message()
                .contains("encryption_key_env")
        );
        assert!(
            codec
                .decode("task/a", b"{\"plain\": 1}")
                .unwrap_err()
                .message()
                .contains("SHS1")
        );
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex = "07".repeat(32);
        assert_eq!(Codec::parse_key(&hex), Some(KEY));
        assert_eq!(
            Codec::parse_key("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="),
            Some(KEY)
        );
        assert_eq!(Codec::parse_key("too short"), None);
    }
}
