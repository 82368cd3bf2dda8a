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
    #[inline]
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.as_bytes().try_into().ok().and_then(parse_text) {
            Some(id) => Ok(id),
            None => Err(not_a_write_id(text)),
        }
    }
}

#[cold]
fn not_a_write_id(text: &str) -> BackendError {
    BackendError::invalid_input(format!("{text:?} is not a write id"))
}

/// `byte` in every byte of a word.
const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// Eight ASCII characters (the first in the most significant byte) read as
/// hex digits: their number, and whether each was a lowercase hex digit.
///
/// Every byte is judged by adding to it the distance to a bound and looking
/// at its high bit, for all eight at once: below 0x80 no sum carries into
/// the next byte, and a byte at or above 0x80 fails on its own high bit
/// whatever its neighbours' sums became.
#[inline(always)]
fn hex8(x: u64) -> (u32, bool) {
    const HIGH: u64 = splat(0x80);
    let at_least_0 = x.wrapping_add(splat(0x80 - b'0'));
    let above_9 = x.wrapping_add(splat(0x7f - b'9'));
    let at_least_a = x.wrapping_add(splat(0x80 - b'a'));
    let above_f = x.wrapping_add(splat(0x7f - b'f'));
    let digit = (at_least_0 & !above_9) | (at_least_a & !above_f);
    let ok = digit & !x & HIGH == HIGH;
    // '0'..='9' are 0x30..=0x39 and 'a'..='f' 0x61..=0x66: the low nibble,
    // plus 9 where bit 6 is set.
    let v = (x & splat(0x0f)) + ((x >> 6) & splat(0x01)) * 9;
    // Pack the nibbles: pairs of bytes, then pairs of those, then halves.
    let v = ((v >> 4) & 0x00f0_00f0_00f0_00f0) | (v & 0x000f_000f_000f_000f);
    let v = ((v >> 8) & 0x0000_ff00_0000_ff00) | (v & 0x0000_00ff_0000_00ff);
    let v = ((v >> 16) & 0x0000_0000_ffff_0000) | (v & 0x0000_0000_0000_ffff);
    (v as u32, ok)
}

/// The write id spelled `text`: hyphens at 8, 13, 18 and 23, lowercase hex
/// digits elsewhere, version 7. Every read and every delete of an object
/// parses one, so the 32 digits are read eight at a time.
#[inline]
fn parse_text(text: &[u8; 36]) -> Option<WriteId> {
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&text[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    let half_word = |at: usize| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&text[at..at + 4]);
        u64::from(u32::from_be_bytes(bytes))
    };
    let (a, a_ok) = hex8(word(0));
    let (b, b_ok) = hex8(half_word(9) << 32 | half_word(14));
    let (c, c_ok) = hex8(half_word(19) << 32 | half_word(24));
    let (d, d_ok) = hex8(word(28));
    let hyphens = (text[8] == b'-') & (text[13] == b'-') & (text[18] == b'-') & (text[23] == b'-');
    if !(a_ok & b_ok & c_ok & d_ok & hyphens) {
        return None;
    }
    let high = u64::from(a) << 32 | u64::from(b);
    let low = u64::from(c) << 32 | u64::from(d);
    WriteId::from_u128(u128::from(high) << 64 | u128::from(low))
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

    proptest::proptest! {
        /// A write id's text with up to three bytes changed (to hex digits
        /// of either case, hyphens, or others): the parse accepts exactly
        /// what the `uuid` crate reads as a hyphenated lowercase version 7
        /// UUID, and reads the same id.
        #[test]
        fn the_parse_agrees_with_uuids(
            ms in 0u64..(1 << 48),
            random: u128,
            changes in proptest::collection::vec((0usize..36, proptest::sample::select(b"0123456789abcdefABCDEF-g /".to_vec())), 0..4),
        ) {
            let mut text = WriteId::from_parts(ms, random).to_string().into_bytes();
            for (at, byte) in changes {
                text[at] = byte;
            }
            let text = String::from_utf8(text).unwrap();
            let ours = text.parse::<WriteId>().ok().map(|id| id.as_u128());
            let theirs = uuid::Uuid::try_parse(&text)
                .ok()
                .filter(|id| id.get_version_num() == 7 && id.hyphenated().to_string() == text);
            proptest::prop_assert_eq!(ours, theirs.map(|id| id.as_u128()), "{}", text);
        }
    }

    #[test]
    fn every_byte_in_every_place_is_judged() {
        let text =
            WriteId::from_parts(1_700_000_000_123, 0x1234_5678_9abc_def0_u128 << 40).to_string();
        for at in 0..36 {
            for byte in 0..=255u8 {
                let mut other = text.clone().into_bytes();
                other[at] = byte;
                let Ok(other) = String::from_utf8(other) else {
                    continue;
                };
                let expected = uuid::Uuid::try_parse(&other)
                    .ok()
                    .filter(|id| id.get_version_num() == 7 && id.hyphenated().to_string() == other)
                    .map(|id| id.as_u128());
                assert_eq!(
                    other.parse::<WriteId>().ok().map(|id| id.as_u128()),
                    expected,
                    "{other}"
                );
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
