//! Whether a string can stand between the quotes of a JSON string as it
//! is. Every set of a string value asks it of the value (to copy it
//! between quotes instead of escaping it byte by byte), and every get asks
//! it of what the plugin returned, so it runs over every byte of every
//! value twice.

/// Whether `bytes` can stand between the quotes of a JSON string as they
/// are: no quote, backslash or control character.
///
/// On x86-64 with AVX2 (checked once, at run time) a text of 32 bytes or
/// more is judged 32 bytes an instruction; anything else by a portable
/// check, 64 bytes a step.
#[inline]
pub fn needs_no_escape(bytes: &[u8]) -> bool {
    if bytes.len() < 32 {
        return portable(bytes);
    }
    long(bytes)
}

/// [`needs_no_escape`] of 32 bytes or more.
fn long(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 32 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 and `bytes` is long enough, as just
        // checked.
        return unsafe { avx2::needs_no_escape(bytes) };
    }
    portable(bytes)
}

/// [`needs_no_escape`] for any CPU: 64 bytes at a time without a branch per
/// byte, whether each byte needs escaping OR-ed into one byte, which the
/// compiler turns into a few vector instructions per 16 bytes. (Blocks of
/// a fixed size need no tail handling inside the loop, which halved the
/// instructions of a fold over `chunks`.)
#[inline(always)]
fn portable(bytes: &[u8]) -> bool {
    #[inline(always)]
    fn flags(block: &[u8]) -> u8 {
        block.iter().fold(0, |any, &b| {
            any | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
        })
    }
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        if flags(block) != 0 {
            return false;
        }
    }
    flags(blocks.remainder()) == 0
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_or_si256,
        _mm256_set1_epi8, _mm256_testz_si256,
    };

    /// The bytes of one 32-byte load that need escaping, as all-ones bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn flags(v: __m256i) -> __m256i {
        // A byte below 0x20 is its own minimum with 0x1f.
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v);
        let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
        _mm256_or_si256(control, _mm256_or_si256(quote, backslash))
    }

    /// [`super::needs_no_escape`] for `bytes` of 32 or more: four loads
    /// OR-ed per step of 128 bytes, then 32 at a time, then the last 32
    /// bytes again (overlapping what came before) for the tail.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, and `bytes` must be 32 bytes or longer.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn needs_no_escape(bytes: &[u8]) -> bool {
        debug_assert!(bytes.len() >= 32);
        // SAFETY (of every load): each reads 32 bytes of `bytes`, at an
        // offset at most `bytes.len() - 32`; unaligned loads are allowed.
        let load = |at: usize| unsafe { _mm256_loadu_si256(bytes.as_ptr().add(at).cast()) };
        let clean = |v: __m256i| _mm256_testz_si256(v, v) == 1;
        let mut at = 0;
        while at + 128 <= bytes.len() {
            let any = _mm256_or_si256(
                _mm256_or_si256(flags(load(at)), flags(load(at + 32))),
                _mm256_or_si256(flags(load(at + 64)), flags(load(at + 96))),
            );
            if !clean(any) {
                return false;
            }
            at += 128;
        }
        while at + 32 <= bytes.len() {
            if !clean(flags(load(at))) {
                return false;
            }
            at += 32;
        }
        at == bytes.len() || clean(flags(load(bytes.len() - 32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether one byte needs escaping, as 0 or 1: the definition.
    fn escapes(b: u8) -> u8 {
        u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    }

    /// Every check this CPU can run on `text`.
    fn every_check(text: &[u8]) -> Vec<(&'static str, bool)> {
        let mut answers = vec![
            ("needs_no_escape", needs_no_escape(text)),
            ("portable", portable(text)),
        ];
        #[cfg(target_arch = "x86_64")]
        if text.len() >= 32 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 and the text is long enough.
            answers.push(("avx2", unsafe { avx2::needs_no_escape(text) }));
        }
        answers
    }

    /// Every byte value at every place of texts of lengths around each
    /// step of the checks, at two alignments, between quotes that a read
    /// past either end would find: each check answers as a byte-by-byte
    /// one does.
    #[test]
    fn every_byte_in_every_place_is_judged_as_one_at_a_time() {
        let lengths = [
            1, 15, 16, 31, 32, 33, 63, 64, 65, 95, 96, 127, 128, 129, 160, 200, 255, 256, 257,
        ];
        for offset in [1, 32] {
            for len in lengths {
                let mut buffer = vec![b'"'; offset + len + 64];
                buffer[offset..offset + len].fill(b'a');
                for at in 0..len {
                    for byte in 0..=255u8 {
                        buffer[offset + at] = byte;
                        let text = &buffer[offset..offset + len];
                        let expected = escapes(byte) == 0;
                        for (check, answer) in every_check(text) {
                            assert_eq!(
                                answer, expected,
                                "{check}: byte {byte:#04x} at {at} of {len} (offset {offset})"
                            );
                        }
                    }
                    buffer[offset + at] = b'a';
                }
            }
        }
        assert!(needs_no_escape(b""));
        assert!(portable(b""));
    }

    #[test]
    fn quotes_backslashes_and_control_characters_need_escaping() {
        for bytes in [&b"a\"b"[..], b"a\\b", b"a\nb", b"\x1f", b"\x00"] {
            assert!(!needs_no_escape(bytes), "{bytes:?}");
        }
        let long = "x".repeat(200) + "\"";
        assert!(!needs_no_escape(long.as_bytes()));
        // DEL and every byte of multi-byte characters stand as they are.
        let wide = "é 🦀 ~\x7f".repeat(20);
        assert!(needs_no_escape(wide.as_bytes()));
    }
}
