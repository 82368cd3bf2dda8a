//! The plugin's metadata as data in its library file, so that a host can
//! list plugins without loading them (loading runs a library's code).
//!
//! [`export_backend!`](crate::export_backend) puts the bytes in the ELF
//! section [`SECTION`], built at compile time from the backend's
//! [`BackendPlugin`](crate::BackendPlugin) constants. The format, version 1:
//!
//! ```text
//! "SHMETA" 0x00 0x01                 magic and format version (8 bytes)
//! 6 x (u16 little-endian length, UTF-8 bytes):
//!     name, version, plugin-api version, description,
//!     capabilities (comma-separated), secret options (comma-separated)
//! ```
//!
//! The plugin's own metadata entry point decodes the same bytes, so what a
//! listing reads is what a load reports.

use crate::{Capabilities, Metadata};

/// The name of the section that holds the metadata.
pub const SECTION: &str = ".statehost_meta";

const MAGIC: &[u8; 8] = b"SHMETA\x00\x01";

/// The fields, in their order.
pub type Fields = [&'static str; 6];

/// The capabilities as the section spells them.
pub const fn capabilities_text(c: Capabilities) -> &'static str {
    match (c.list, c.sweep, c.never_blocks) {
        (false, false, false) => "",
        (true, false, false) => "list",
        (false, true, false) => "sweep",
        (true, true, false) => "list,sweep",
        (false, false, true) => "never_blocks",
        (true, false, true) => "list,never_blocks",
        (false, true, true) => "sweep,never_blocks",
        (true, true, true) => "list,sweep,never_blocks",
    }
}

/// The secret options as the section spells them: comma-separated.
/// `N` must be [`list_len`] of them.
pub const fn list_text<const N: usize>(names: &[&str]) -> [u8; N] {
    assert!(N == list_len(names), "wrong length for the list");
    let mut out = [0u8; N];
    let mut at = 0;
    let mut i = 0;
    while i < names.len() {
        if i > 0 {
            out[at] = b',';
            at += 1;
        }
        let bytes = names[i].as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            out[at] = bytes[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// The length of `names` joined with commas.
pub const fn list_len(names: &[&str]) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < names.len() {
        len += names[i].len() + if i > 0 { 1 } else { 0 };
        i += 1;
    }
    len
}

/// Text from bytes known to be UTF-8 (joined `&str`s), in a const context.
pub const fn as_str(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => panic!("not UTF-8"),
    }
}

/// The length of the encoded fields.
pub const fn encoded_len(fields: &Fields) -> usize {
    let mut len = MAGIC.len();
    let mut i = 0;
    while i < fields.len() {
        assert!(
            fields[i].len() <= u16::MAX as usize,
            "a metadata field is longer than 65535 bytes"
        );
        len += 2 + fields[i].len();
        i += 1;
    }
    len
}

/// The encoded fields; `N` must be [`encoded_len`] of them.
pub const fn encode<const N: usize>(fields: &Fields) -> [u8; N] {
    assert!(N == encoded_len(fields), "wrong length for the metadata");
    let mut out = [0u8; N];
    let mut at = 0;
    while at < MAGIC.len() {
        out[at] = MAGIC[at];
        at += 1;
    }
    let mut i = 0;
    while i < fields.len() {
        let bytes = fields[i].as_bytes();
        let len = bytes.len();
        out[at] = (len & 0xff) as u8;
        out[at + 1] = (len >> 8) as u8;
        at += 2;
        let mut j = 0;
        while j < len {
            out[at] = bytes[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Decodes the section's bytes (any trailing bytes, such as alignment
/// padding, are ignored).
pub fn decode(bytes: &[u8]) -> Result<Metadata, String> {
    let rest = bytes
        .strip_prefix(&MAGIC[..6])
        .ok_or("the metadata section does not start with the statehost magic")?;
    let (format, mut rest) = rest
        .split_at_checked(2)
        .ok_or("the metadata is cut short")?;
    if format != &MAGIC[6..] {
        return Err(format!(
            "the metadata is in format {}, which this host does not read",
            u16::from_be_bytes([format[0], format[1]])
        ));
    }
    let mut fields = Vec::with_capacity(6);
    for _ in 0..6 {
        let (len, after) = rest
            .split_at_checked(2)
            .ok_or("the metadata is cut short")?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let (field, after) = after
            .split_at_checked(len)
            .ok_or("the metadata is cut short")?;
        let field = std::str::from_utf8(field).map_err(|_| "the metadata is not UTF-8")?;
        fields.push(field.to_string());
        rest = after;
    }
    let list = |text: String| -> Vec<String> {
        text.split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let secret_options = list(fields.pop().unwrap_or_default());
    let capabilities = list(fields.pop().unwrap_or_default());
    let mut fields = fields.into_iter();
    let mut next = || fields.next().unwrap_or_default();
    Ok(Metadata {
        name: next(),
        version: next(),
        plugin_api_version: next(),
        description: next(),
        capabilities,
        secret_options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: Fields = [
        "tiny",
        "0.3.1",
        "2.1.0",
        "values in \"memory\" ✓",
        "list,sweep",
        "password,options",
    ];

    #[test]
    fn round_trips_and_tolerates_padding() {
        const LEN: usize = encoded_len(&FIELDS);
        static BYTES: [u8; LEN] = encode(&FIELDS);
        let mut padded = BYTES.to_vec();
        padded.extend([0; 7]);
        for bytes in [&BYTES[..], &padded] {
            let m = decode(bytes).unwrap();
            assert_eq!(m.name, "tiny");
            assert_eq!(m.version, "0.3.1");
            assert_eq!(m.plugin_api_version, "2.1.0");
            assert_eq!(m.description, "values in \"memory\" ✓");
            assert_eq!(m.capabilities, ["list", "sweep"]);
            assert_eq!(m.secret_options, ["password", "options"]);
        }
        const NAMES: &[&str] = &["a", "bc"];
        static JOINED: [u8; list_len(NAMES)] = list_text(NAMES);
        assert_eq!(as_str(&JOINED), "a,bc");
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        const LEN: usize = encoded_len(&FIELDS);
        let bytes: [u8; LEN] = encode(&FIELDS);
        for cut in 0..LEN {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes;
        other[7] = 9;
        assert!(decode(&other).unwrap_err().contains("format"));
        assert_eq!(capabilities_text(Capabilities::NONE.with_sweep()), "sweep");
    }

    #[test]
    fn every_set_of_capabilities_reads_back_from_its_text() {
        for bits in 0..8u8 {
            let c = Capabilities {
                list: bits & 1 != 0,
                sweep: bits & 2 != 0,
                never_blocks: bits & 4 != 0,
            };
            let text = capabilities_text(c);
            let names: Vec<&str> = text.split(',').filter(|n| !n.is_empty()).collect();
            assert_eq!(Capabilities::from_names(&names), c, "{text:?}");
            assert_eq!(c.names(), names);
        }
    }
}
