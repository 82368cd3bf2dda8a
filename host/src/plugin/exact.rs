//! Handing the dynamic linker exactly the file that was checked.
//!
//! The guards check an open descriptor; `dlopen` takes a path. Loading by
//! the library's own path would let anyone who can swap the path between
//! the check and the load choose what runs. So the library is loaded
//! through its descriptor (`/proc/self/fd/N`) or, where that does not
//! work, from a private copy written from the descriptor into a directory
//! only this user can write. A pinned library (`state_backend_sha256`) is
//! hashed on the very bytes that get loaded, and if neither way is
//! available it is not loaded at all: a pin fails closed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest;

/// Where the ways of loading exactly the checked bytes look. Tests point
/// them elsewhere to take them away.
#[derive(Debug, Clone)]
pub(crate) struct Places {
    /// The directory of this process's descriptors.
    pub proc_fd_dir: PathBuf,
    /// Where a private copy's directory is made.
    pub private_base: PathBuf,
}

impl Default for Places {
    fn default() -> Self {
        Places {
            proc_fd_dir: PathBuf::from("/proc/self/fd"),
            private_base: std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|d| d.is_dir())
                .unwrap_or_else(std::env::temp_dir),
        }
    }
}

/// A path that names exactly the checked bytes, and what keeps it valid.
#[derive(Debug)]
pub(crate) enum Exact {
    /// `/proc/self/fd/N` of the checked, open file.
    Descriptor { path: PathBuf, file: File },
    /// A copy in a directory only this user can write.
    Copy {
        path: PathBuf,
        dir: tempfile::TempDir,
    },
    /// The library's own path: only without a pin, where nothing better
    /// is available.
    Path(PathBuf),
}

/// Why a pinned library cannot be loaded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PinError {
    /// The bytes hash to this, not to the pin.
    Mismatch(String),
    /// Neither way of loading exactly the hashed bytes works here.
    Unavailable(String),
}

impl Exact {
    /// The path to hand to the dynamic linker.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Exact::Descriptor { path, .. } | Exact::Copy { path, .. } | Exact::Path(path) => path,
        }
    }

    /// Called after the dynamic linker opened (or failed to open) the path.
    pub(crate) fn loaded(self, opened: bool) {
        match self {
            // The dynamic linker now knows the library by the name
            // /proc/self/fd/N and would hand it back for any later library
            // that got the same descriptor number: keep the descriptor open
            // for the life of the process (libraries are never unloaded).
            Exact::Descriptor { file, .. } if opened => std::mem::forget(file),
            // The mapping outlives the file: the copy and its directory go.
            Exact::Copy { dir, .. } => drop(dir),
            _ => {}
        }
    }
}

fn sha256_hex(digest: sha2::digest::Output<sha2::Sha256>) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `/proc/self/fd/N` of `file`, if it names that very file.
fn descriptor_path(file: &File, places: &Places) -> Result<PathBuf, String> {
    let path = places.proc_fd_dir.join(file.as_raw_fd().to_string());
    let through = std::fs::metadata(&path).map_err(|e| format!("{} ({e})", path.display()))?;
    let direct = file.metadata().map_err(|e| e.to_string())?;
    if through.dev() == direct.dev() && through.ino() == direct.ino() {
        Ok(path)
    } else {
        Err(format!("{} names another file", path.display()))
    }
}

/// Copies `file` into a fresh private directory, hashing what is written.
fn private_copy(file: &mut File, places: &Places) -> Result<(Exact, String), String> {
    let dir = tempfile::Builder::new()
        .prefix("statehost-plugin-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&places.private_base)
        .map_err(|e| format!("{} ({e})", places.private_base.display()))?;
    let meta = std::fs::symlink_metadata(dir.path()).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a directory only this user can write",
            dir.path().display()
        ));
    }
    let path = dir.path().join("library.so");
    let mut copy = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("{} ({e})", path.display()))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        copy.write_all(&buf[..n])
            .map_err(|e| format!("{} ({e})", path.display()))?;
    }
    Ok((Exact::Copy { path, dir }, sha256_hex(hasher.finalize())))
}

fn hash_file(file: &mut File) -> Result<String, String> {
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(file, &mut hasher).map_err(|e| e.to_string())?;
    Ok(sha256_hex(hasher.finalize()))
}

/// For a pinned library: a path naming exactly bytes that hash to `pin`,
/// or why there is none. Never the library's own path.
pub(crate) fn pinned(mut file: File, pin: &str, places: &Places) -> Result<Exact, PinError> {
    let descriptor = descriptor_path(&file, places);
    if let Ok(path) = descriptor {
        let actual = hash_file(&mut file).map_err(PinError::Unavailable)?;
        if actual != pin {
            return Err(PinError::Mismatch(actual));
        }
        return Ok(Exact::Descriptor { path, file });
    }
    let descriptor_problem = descriptor.err().unwrap_or_default();
    match private_copy(&mut file, places) {
        Ok((exact, actual)) if actual == pin => Ok(exact),
        Ok((_, actual)) => Err(PinError::Mismatch(actual)),
        Err(copy_problem) => Err(PinError::Unavailable(format!(
            "it cannot be loaded from exactly the bytes that were hashed: no descriptor path ({descriptor_problem}) and no private copy ({copy_problem})"
        ))),
    }
}

/// For a library without a pin: its descriptor path if there is one, else
/// its own path.
pub(crate) fn unpinned(file: File, path: &Path, places: &Places) -> Exact {
    match descriptor_path(&file, places) {
        Ok(fd_path) => Exact::Descriptor {
            path: fd_path,
            file,
        },
        Err(_) => Exact::Path(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library(dir: &Path, bytes: &[u8]) -> (File, String) {
        let path = dir.join("libstatehost_x.so");
        std::fs::write(&path, bytes).unwrap();
        let mut hasher = sha2::Sha256::new();
        hasher.update(bytes);
        (File::open(&path).unwrap(), sha256_hex(hasher.finalize()))
    }

    #[test]
    fn a_pin_loads_through_the_descriptor_when_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let (file, pin) = library(dir.path(), b"\x7fELF checked bytes");
        let exact = pinned(file, &pin, &Places::default()).unwrap();
        assert!(matches!(exact, Exact::Descriptor { .. }), "{exact:?}");
        assert_eq!(
            std::fs::read(exact.path()).unwrap(),
            b"\x7fELF checked bytes"
        );
    }

    #[test]
    fn without_descriptors_a_pin_loads_a_private_copy_of_the_hashed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (file, pin) = library(dir.path(), b"\x7fELF checked bytes");
        let places = Places {
            proc_fd_dir: dir.path().join("no-proc"),
            private_base: dir.path().to_path_buf(),
        };
        let exact = pinned(file, &pin, &places).unwrap();
        let Exact::Copy {
            path,
            dir: copy_dir,
        } = &exact
        else {
            panic!("{exact:?}");
        };
        assert_eq!(std::fs::read(path).unwrap(), b"\x7fELF checked bytes");
        let mode = std::fs::metadata(copy_dir.path()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        let copy_dir = copy_dir.path().to_path_buf();
        exact.loaded(true);
        assert!(!copy_dir.exists(), "the copy outlived the load");
    }

    #[test]
    fn a_pin_fails_closed_when_neither_way_is_available() {
        let dir = tempfile::tempdir().unwrap();
        let (file, pin) = library(dir.path(), b"\x7fELF checked bytes");
        let places = Places {
            proc_fd_dir: dir.path().join("no-proc"),
            private_base: dir.path().join("no-such-dir"),
        };
        match pinned(file, &pin, &places) {
            Err(PinError::Unavailable(why)) => {
                assert!(why.contains("exactly the bytes that were hashed"), "{why}");
                assert!(
                    why.contains("no-proc") && why.contains("no-such-dir"),
                    "{why}"
                );
            }
            other => panic!("loaded anyway: {other:?}"),
        }
    }

    #[test]
    fn a_mismatch_is_reported_with_the_actual_hash_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = library(dir.path(), b"\x7fELF other bytes");
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"\x7fELF checked bytes");
        let pin = sha256_hex(hasher.finalize());
        assert!(matches!(
            pinned(file, &pin, &Places::default()),
            Err(PinError::Mismatch(_))
        ));
        let (file, _) = library(dir.path(), b"\x7fELF other bytes");
        let places = Places {
            proc_fd_dir: dir.path().join("no-proc"),
            private_base: dir.path().to_path_buf(),
        };
        assert!(matches!(
            pinned(file, &pin, &places),
            Err(PinError::Mismatch(_))
        ));
    }
}
