//! Every backend call goes through here.
//!
//! This folder owns how the host talks to a backend, whatever it is: the
//! [`Backend`] interface (what the host needs from a plugin or an
//! in-process backend), [`Calls`] (the deadline and the in-flight cap every
//! call is subject to, on a fixed set of threads) and [`Reaper`] (objects
//! replaced by a newer write, deleted once a call deadline has passed). It
//! knows nothing of rows, envelopes or the metadata store's schema.

use std::sync::Arc;
use std::time::SystemTime;

use abi_stable::std_types::RVec;
use statehost_plugin_api::{
    BackendError, Capabilities, ErrorKind, Scope, ScopeRef, Serialized, StateBackend, StateKey,
    WriteId,
};

mod calls;
pub(crate) mod reaper;

pub use calls::{Busy, Calls, Limits, Marker};
pub use reaper::Reaper;

/// A value's JSON text as a backend returned it: in the host's memory, or
/// in the plugin's own buffer, lent without a copy (and freed by the
/// plugin's allocator when dropped). The bytes are not checked for UTF-8:
/// a broken plugin can return anything, so they are taken as text through
/// [`utf8`] (or [`Text::into_string`], which uses it), or parsed by a JSON
/// parser that checks as it reads (`serde_json::from_slice`).
#[derive(Debug)]
pub enum Text {
    /// Made by an in-process backend.
    Host(String),
    /// Made by a plugin (its bytes, not yet checked).
    Plugin(RVec<u8>),
}

impl Text {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Host(s) => s.as_bytes(),
            Text::Plugin(s) => s.as_slice(),
        }
    }

    /// The text in the host's memory, checked for UTF-8 (a plugin's bytes
    /// are copied once, after the check).
    pub fn into_string(self) -> Result<String, std::str::Utf8Error> {
        match self {
            Text::Host(s) => Ok(s),
            Text::Plugin(bytes) => utf8(&bytes).map(str::to_owned),
        }
    }
}

/// `bytes` as text if they are UTF-8: the check a plugin's reference, and a
/// value read back that is taken as text rather than parsed as JSON (a
/// string without escapes, a copy, the Python package's `str`), goes
/// through. Text of up to 192 bytes that is all ASCII (a reference, a
/// small value) is told apart by an OR of its words; anything else goes to a
/// vectorised check, and only when that refuses does `std::str::from_utf8`
/// run, for its answer and its error (where the bad sequence is), so the
/// answers are std's. On ASCII this takes about a third of std's time at
/// 16 B, half at a reference's length and from 1 KiB up; on text with
/// non-ASCII characters, a ninth from 96 B up (BENCHMARKS.md, "UTF-8
/// checks").
#[inline]
pub fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.len() <= SHORT && short_ascii(bytes) {
        // SAFETY: every byte is below 0x80, and ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    simdutf8::basic::from_utf8(bytes).or_else(|_| std::str::from_utf8(bytes))
}

/// Up to how many bytes [`utf8`] tries [`short_ascii`] first; above it the
/// vectorised check is as fast.
const SHORT: usize = 192;

/// Whether every byte is below 0x80: the OR of the text's 8-byte words
/// (the last one overlapping the one before, so no byte is read alone),
/// without an early exit or a branch per byte.
#[inline]
fn short_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |eight: &[u8]| u64::from_ne_bytes(eight.try_into().expect("8 bytes"));
    if bytes.len() < 8 {
        return bytes.iter().fold(0, |all, &b| all | b) < 0x80;
    }
    let last = word(&bytes[bytes.len() - 8..]);
    bytes
        .chunks_exact(8)
        .fold(last, |all, eight| all | word(eight))
        & HIGH
        == 0
}

/// A reference a backend returned for a write: in the host's memory, or
/// in the plugin's own buffer, kept without a copy (its bytes checked to be
/// UTF-8 when it crossed; freed by the plugin's allocator when dropped).
#[derive(Debug)]
pub enum Reference {
    /// Made by an in-process backend.
    Host(String),
    /// Made by a plugin.
    Plugin(abi_stable::std_types::RString),
}

impl Reference {
    /// The reference.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Host(s) => s,
            Reference::Plugin(s) => s.as_str(),
        }
    }
}

impl std::ops::Deref for Reference {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// One object a backend holds, as garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The reference that reads and deletes it.
    pub reference: String,
    /// The write that made it, when the reference carries one.
    pub write_id: Option<WriteId>,
    /// When the storage last modified it.
    pub modified: Option<SystemTime>,
    /// Its scope and key, when the backend says (plugin-api 1.x backends
    /// do; gc deletes their objects by key).
    pub owner: Option<(Scope, String)>,
}

/// What the host needs from a backend: the operations of the plugin-api
/// trait, with reads that lend the plugin's buffer, plus what the backend
/// can do. Implemented by loaded plugins
/// ([`LoadedBackend`](crate::plugin::LoadedBackend)) and by in-process
/// backends ([`InProcess`]).
pub trait Backend: Send + Sync + 'static {
    /// Whether each write is an object of its own (plugin-api 2.x). A
    /// plugin-api 1.x backend overwrites one object per key in place, and
    /// the host then serves it with in-process fencing.
    fn unique_references(&self) -> bool;
    /// The optional operations it declared.
    fn capabilities(&self) -> Capabilities;
    /// [`StateBackend::serialize`]; 1.x backends ignore the write id.
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError>;
    /// [`serialize`](Backend::serialize) with the reference lent as the
    /// backend made it (`None`: keep the value inline). A loaded plugin's
    /// reference stays in its buffer instead of being copied.
    fn serialize_lent(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Option<Reference>, BackendError> {
        Ok(match self.serialize(at, write_id, value)? {
            Serialized::Reference(r) => Some(Reference::Host(r)),
            Serialized::Inline => None,
        })
    }
    /// [`StateBackend::deserialize`].
    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<Text, BackendError>;
    /// [`StateBackend::delete_object`]; unsupported by 1.x backends.
    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError>;
    /// [`StateBackend::delete`].
    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError>;
    /// [`StateBackend::clear`].
    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError>;
    /// [`StateBackend::list`].
    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<Listed>, BackendError>;
    /// [`StateBackend::sweep`].
    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError>;
}

impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("unique_references", &self.unique_references())
            .finish_non_exhaustive()
    }
}

/// A backend running in this process (tests, embedding): any
/// [`StateBackend`], with the capabilities it supports.
#[derive(Debug)]
pub struct InProcess<B> {
    backend: B,
    capabilities: Capabilities,
}

impl<B: StateBackend + 'static> InProcess<B> {
    /// `backend`, which implements the optional operations `capabilities`
    /// names.
    pub fn new(backend: B, capabilities: Capabilities) -> Self {
        InProcess {
            backend,
            capabilities,
        }
    }

    /// The backend itself.
    pub fn inner(&self) -> &B {
        &self.backend
    }
}

impl<B: StateBackend + 'static> Backend for InProcess<B> {
    fn unique_references(&self) -> bool {
        true
    }
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        self.backend.serialize(at, write_id, value)
    }
    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<Text, BackendError> {
        self.backend.deserialize(reference, owner).map(Text::Host)
    }
    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        self.backend.delete_object(reference, owner)
    }
    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        self.backend.delete(at)
    }
    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
        self.backend.clear(scope, all_map_indices)
    }
    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<Listed>, BackendError> {
        Ok(self
            .backend
            .list(scope)?
            .into_iter()
            .map(|o| Listed {
                reference: o.reference,
                write_id: o.write_id,
                modified: o.modified,
                owner: None,
            })
            .collect())
    }
    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        self.backend.sweep(older_than)
    }
}

impl<T: Backend + ?Sized> Backend for Arc<T> {
    fn unique_references(&self) -> bool {
        (**self).unique_references()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        (**self).serialize(at, write_id, value)
    }
    fn serialize_lent(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Option<Reference>, BackendError> {
        (**self).serialize_lent(at, write_id, value)
    }
    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<Text, BackendError> {
        (**self).deserialize(reference, owner)
    }
    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        (**self).delete_object(reference, owner)
    }
    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        (**self).delete(at)
    }
    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
        (**self).clear(scope, all_map_indices)
    }
    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<Listed>, BackendError> {
        (**self).list(scope)
    }
    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        (**self).sweep(older_than)
    }
}

/// The error of an operation a backend cannot do.
pub(crate) fn unsupported(what: &str) -> BackendError {
    BackendError::new(ErrorKind::Unsupported, what.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Text, and text with bytes overwritten: valid or not, with bad
    /// sequences anywhere, past the vectorised check's 64-byte blocks.
    fn text_and_damage() -> impl Strategy<Value = Vec<u8>> {
        (
            "(?s).{0,200}",
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        )
            .prop_map(|(text, damage)| {
                let mut bytes = text.into_bytes();
                if !bytes.is_empty() {
                    for (at, byte) in damage {
                        let at = at.index(bytes.len());
                        bytes[at] = byte;
                    }
                }
                bytes
            })
    }

    proptest! {
        /// The check gives std's answer, and std's error, for every input.
        #[test]
        fn utf8_answers_as_std_does(bytes in text_and_damage()) {
            prop_assert_eq!(super::utf8(&bytes), std::str::from_utf8(&bytes));
        }
    }

    /// The sequences a UTF-8 check most easily gets wrong (surrogates,
    /// overlong forms, code points past U+10FFFF, stray or missing
    /// continuation bytes, and a valid four-byte character), at and beside
    /// the vectorised check's block edges.
    #[test]
    fn utf8_answers_as_std_does_on_hard_sequences() {
        let sequences: [&[u8]; 14] = [
            b"\xed\xa0\x80",
            b"\xed\xbf\xbf",
            b"\xc0\x80",
            b"\xc1\xbf",
            b"\xe0\x80\x80",
            b"\xe0\x9f\xbf",
            b"\xf0\x80\x80\x80",
            b"\xf0\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80",
            b"\x80",
            b"\xe2\x82",
            b"\xf0\x9f\xa6",
            "🦀".as_bytes(),
        ];
        let mut refused = 0;
        for sequence in sequences {
            for at in [0, 30, 31, 32, 62, 63, 64, 127, 196] {
                for len in [at + sequence.len(), 200] {
                    let mut bytes = vec![b'x'; len.max(at + sequence.len())];
                    bytes[at..at + sequence.len()].copy_from_slice(sequence);
                    let std = std::str::from_utf8(&bytes);
                    refused += usize::from(std.is_err());
                    assert_eq!(super::utf8(&bytes), std, "{sequence:x?} at {at} of {len}");
                }
            }
        }
        // All but the crab are refused, wherever they stand.
        assert_eq!(refused, 13 * 9 * 2);
    }

    /// The short path: one byte of 0x80 or above anywhere in text of any
    /// length up to past `SHORT` sends it to the full check.
    #[test]
    fn one_high_byte_anywhere_leaves_the_ascii_path() {
        for len in 0..=super::SHORT + 9 {
            let ascii = vec![b'a'; len];
            assert_eq!(super::utf8(&ascii), std::str::from_utf8(&ascii));
            assert!(len > super::SHORT || super::short_ascii(&ascii));
            for at in 0..len {
                for high in [0x80, 0xc3, 0xff] {
                    let mut bytes = ascii.clone();
                    bytes[at] = high;
                    assert!(!super::short_ascii(&bytes), "{high:x} at {at} of {len}");
                    assert_eq!(
                        super::utf8(&bytes),
                        std::str::from_utf8(&bytes),
                        "{high:x} at {at} of {len}"
                    );
                }
            }
        }
    }
}
