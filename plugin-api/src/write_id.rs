//! Write ids: the host's name for one write of one value.

use std::fmt;
use std::str::FromStr;

use crate::BackendError;

/// The id the host gives each write of a value: a UUIDv7 (48 bits of Unix
/// milliseconds, then random bits), minted by the host for every `set` and
/// never reused, not even when a write is retried.
///
/// A backend stores each write as an object of its own and makes the id
/// recoverable from the reference (the [`layout`](crate::layout) puts it in
/// the last path segment), so the host can tell every object's age by one
/// clock and no write ever lands on another write's object.
///
/// Its text form is the hyphenated lowercase UUID
/// (`0192e4a0-7b1a-7c3e-9f00-3b5d2e8c1a47`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteId(uuid::Uuid);

impl WriteId {
    /// The write id with these 128 bits, if they are a UUIDv7.
    #[inline]
    pub fn from_u128(bits: u128) -> Option<WriteId> {
        // The version is bits 76..80 (the high nibble of byte 6).
        ((bits >> 76) & 0xf == 7).then(|| WriteId(uuid::Uuid::from_u128(bits)))
    }

    /// Its 128 bits.
    #[inline]
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    /// When it was minted, in milliseconds since the Unix epoch, by the
    /// clock of the host that minted it.
    pub fn unix_ms(&self) -> u64 {
        (self.0.as_u128() >> 80) as u64
    }

    /// A write id minted at `unix_ms` with the given random bits (74 of
    /// them are used). The host mints ids; backends only read them.
    pub fn from_parts(unix_ms: u64, random: u128) -> WriteId {
        let bytes = random.to_be_bytes();
        let mut tail = [0u8; 10];
        tail.copy_from_slice(&bytes[6..]);
        WriteId(uuid::Builder::from_unix_timestamp_millis(unix_ms, &tail).into_uuid())
    }
}

impl WriteId {
    /// The text form, written into `buf` (no allocation: every write
    /// names its object with it).
    pub(crate) fn encode(self, buf: &mut [u8; 36]) -> &str {
        self.0.hyphenated().encode_lower(buf)
    }
}

impl fmt::Display for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteId({self})")
    }
}

impl FromStr for WriteId {
    type Err = BackendError;

    /// Parses the text form only: 36 characters, hyphenated, lowercase, and
    /// a version 7 UUID; so one write id has exactly one spelling.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BackendError::invalid_input(format!("{text:?} is not a write id"));
        // At 36 bytes `try_parse` accepts only the hyphenated form, so with
        // capitals refused this is the one spelling `encode` writes.
        // (A fold, not `any`: without a branch per byte it vectorizes.)
        let capitals = text
            .bytes()
            .fold(false, |seen, b| seen | b.is_ascii_uppercase());
        if text.len() != 36 || capitals {
            return Err(bad());
        }
        let id = uuid::Uuid::try_parse(text).map_err(|_| bad())?;
        if id.get_version_num() != 7 {
            return Err(bad());
        }
        Ok(WriteId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ids_carry_their_time_and_have_one_spelling() {
        let id = WriteId::from_parts(1_700_000_000_123, 0xdead_beef_u128 << 40);
        assert_eq!(id.unix_ms(), 1_700_000_000_123);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(id.encode(&mut [0; 36]), text);
        assert_eq!(text.parse::<WriteId>().unwrap(), id);
        assert_eq!(WriteId::from_u128(id.as_u128()), Some(id));
        for bad in [
            text.to_uppercase(),
            text.replace('-', ""),
            format!("{{{text}}}"),
            "0192e4a0-7b1a-4c3e-9f00-3b5d2e8c1a47".to_string(), // version 4
            String::new(),
        ] {
            assert!(bad.parse::<WriteId>().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_text_form_is_uuids_and_reads_back(ms in 0u64..(1 << 48), random: u128, at in 0usize..36) {
            let id = WriteId::from_parts(ms, random);
            let text = id.encode(&mut [0; 36]).to_string();
            proptest::prop_assert_eq!(&text, &uuid::Uuid::from_u128(id.as_u128()).hyphenated().to_string());
            proptest::prop_assert_eq!(text.parse::<WriteId>().unwrap(), id);
            // Any one capital letter is another spelling: refused.
            let mut other = text.into_bytes();
            if other[at].is_ascii_lowercase() {
                other[at].make_ascii_uppercase();
                let other = String::from_utf8(other).unwrap();
                proptest::prop_assert!(other.parse::<WriteId>().is_err(), "{}", other);
            }
        }
    }

    #[test]
    fn different_random_bits_give_different_ids() {
        let a = WriteId::from_parts(5, 1);
        let b = WriteId::from_parts(5, 2);
        assert_ne!(a, b);
        assert_eq!(a.unix_ms(), b.unix_ms());
    }
}
