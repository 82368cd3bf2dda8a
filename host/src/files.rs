//! Opening files named by operators (configs, plugin libraries, databases)
//! without trusting what they are: a FIFO, a device or a directory under a
//! file's name is a one-line error, never a hang, and a file is read only up
//! to a size cap.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What a file that is not a regular file is, for messages.
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading only if it is a regular file: checked with
/// stat before opening (opening a FIFO would block), opened without
/// blocking, and checked again on the open descriptor (the same file, still
/// regular). The error is one line without the path (callers add it).
pub fn open_regular(path: &Path) -> Result<(File, Metadata), String> {
    let before = std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?;
    if !before.is_file() {
        return Err(format!("it is {}, not a regular file", kind_of(&before)));
    }
    let file = OpenOptions::new()
        .read(true)
        // A FIFO put there after the check must not block the open.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open it ({e})"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read its metadata ({e})"))?;
    if !meta.is_file() || meta.dev() != before.dev() || meta.ino() != before.ino() {
        return Err("it was replaced while being opened; try again".to_string());
    }
    Ok((file, meta))
}

/// Reads the regular file at `path` as UTF-8 text of at most `cap` bytes.
pub fn read_text(path: &Path, cap: u64) -> Result<String, String> {
    let (file, meta) = open_regular(path)?;
    if meta.len() > cap {
        return Err(format!(
            "it is {} bytes, more than the {cap} a file of this kind may have",
            meta.len()
        ));
    }
    let mut text = String::new();
    // The size can change after the check: never read past the cap.
    file.take(cap + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it ({e})"))?;
    if text.len() as u64 > cap {
        return Err(format!(
            "it grew past the {cap} bytes a file of this kind may have"
        ));
    }
    Ok(text)
}

/// `Ok` when nothing is at `path` or a regular file is; an error naming
/// what is there otherwise (for files the caller creates or opens by path
/// through a library, like a SQLite database).
pub fn regular_or_absent(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) => Err(format!("it is {}, not a regular file", kind_of(&meta))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read it ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo(dir.path());
        assert_eq!(
            read_text(&fifo, 100).unwrap_err(),
            "it is a FIFO, not a regular file"
        );
        assert_eq!(
            read_text(Path::new("/dev/zero"), 100).unwrap_err(),
            "it is a character device, not a regular file"
        );
        assert_eq!(
            read_text(dir.path(), 100).unwrap_err(),
            "it is a directory, not a regular file"
        );
        assert!(regular_or_absent(&fifo).is_err());
        assert!(regular_or_absent(&dir.path().join("absent")).is_ok());
    }

    #[test]
    fn files_over_the_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, "x".repeat(101)).unwrap();
        assert!(read_text(&path, 100).unwrap_err().contains("101 bytes"));
        assert_eq!(read_text(&path, 101).unwrap().len(), 101);
    }
}
