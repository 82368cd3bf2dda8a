//! The directory tree under the root, reached only through directory
//! handles: a path below the root is opened with `openat2` and
//! `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH` (one call), or, where the kernel
//! lacks it, one component at a time relative to its parent with
//! `O_NOFOLLOW`. Either way no operation follows a symbolic link below the
//! root, whoever put it there, and nothing outside the root is ever read,
//! written or removed.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// Prefix of temporary files; the layout never makes a name starting with
/// `.`.
pub const TEMP_PREFIX: &str = ".tmp-";

/// How often an operation is retried when a concurrent clear or delete
/// removes a directory under it (or a write adds a file to one being
/// removed).
const RACE_RETRIES: usize = 5;

/// A refusal to follow a link or to use something that is not a directory
/// where the layout puts one.
fn not_followed(at: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is a symbolic link or not a directory; the backend never follows links below its root",
            at.display()
        ),
    )
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// The root directory, held open.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    /// The root, opened; empty while the root does not exist (it is made
    /// by the first write, so that reading never creates anything).
    fd: OnceLock<OwnedFd>,
    fsync: bool,
    /// Never use `openat2` (tests of the component walk).
    walk_only: bool,
}

/// The components of a relative layout path; anything that could step out
/// of a directory (`..`, `.`, empty, a `/` at either end) is refused.
fn components(relative: &str) -> io::Result<Vec<&str>> {
    let parts: Vec<&str> = relative.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{relative:?} is not a relative path of plain names"),
        ));
    }
    Ok(parts)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A fresh temporary name: the prefix and 16 hex digits.
fn temp_name() -> String {
    // std's hasher keys are random per process and advance per instance.
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{TEMP_PREFIX}{:016x}", hasher.finish())
}

/// Whether `name` is one of this backend's temporary files: the prefix and
/// 16 hex digits, or (written by earlier versions) 6 letters or digits.
pub fn is_temp_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX.as_bytes()) else {
        return false;
    };
    (rest.len() == 16 && rest.iter().all(|b| b.is_ascii_hexdigit()))
        || (rest.len() == 6 && rest.iter().all(u8::is_ascii_alphanumeric))
}

impl Tree {
    /// Opens the root, if it exists; a missing one is made by the first
    /// write. The root's own path is the operator's and may contain
    /// links; below it, none is followed.
    pub fn open(root: &Path, fsync: bool) -> io::Result<Tree> {
        let tree = Tree {
            root: root.to_path_buf(),
            fd: OnceLock::new(),
            fsync,
            walk_only: false,
        };
        tree.root_fd(false)?;
        Ok(tree)
    }

    /// The root's descriptor: `None` when it does not exist and `create`
    /// is false.
    fn root_fd(&self, create: bool) -> io::Result<Option<&OwnedFd>> {
        if let Some(fd) = self.fd.get() {
            return Ok(Some(fd));
        }
        if create {
            std::fs::create_dir_all(&self.root)?;
        }
        match rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(self.fd.get_or_init(|| fd))),
            Err(Errno::NOENT) if !create => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Opens every path one component at a time, as on kernels without
    /// `openat2`.
    #[cfg(test)]
    pub fn walk_only(&mut self) {
        self.walk_only = true;
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path for messages.
    pub fn shown(&self, parts: &[&str]) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(parts);
        path
    }

    /// Opens `parts` below the root with `flags`, following no link: with
    /// `openat2` in one call where the kernel has it, else `None` (the
    /// caller walks the components).
    fn open_beneath(&self, parts: &[&str], flags: OFlags) -> Option<Result<OwnedFd, Errno>> {
        static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
        if self.walk_only || UNAVAILABLE.load(Ordering::Relaxed) {
            return None;
        }
        // No root yet: nothing below it either.
        let root = match self.root_fd(false) {
            Ok(Some(root)) => root,
            Ok(None) => return Some(Err(Errno::NOENT)),
            Err(_) => return None,
        };
        let path = if parts.is_empty() {
            ".".to_string()
        } else {
            parts.join("/")
        };
        match rustix::fs::openat2(
            root,
            path.as_str(),
            flags,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            // An old kernel, or a sandbox that forbids the call.
            Err(Errno::NOSYS | Errno::PERM) => {
                UNAVAILABLE.store(true, Ordering::Relaxed);
                None
            }
            // Interrupted by a rename elsewhere in the tree: walk instead.
            Err(Errno::AGAIN) => None,
            other => Some(other),
        }
    }

    /// Opens the directory `parts` below the root, never following a link;
    /// with `create`, makes what is missing.
    fn open_dir(&self, parts: &[&str], create: bool) -> io::Result<OwnedFd> {
        match self.open_beneath(parts, dir_flags()) {
            Some(Ok(dir)) => return Ok(dir),
            Some(Err(Errno::LOOP | Errno::NOTDIR | Errno::XDEV)) => {
                return Err(not_followed(&self.shown(parts)));
            }
            Some(Err(Errno::NOENT)) if !create => return Err(errno(Errno::NOENT)),
            Some(Err(Errno::NOENT)) | None => {}
            Some(Err(e)) => return Err(errno(e)),
        }
        let Some(root) = self.root_fd(create)? else {
            return Err(errno(Errno::NOENT));
        };
        let mut dir = rustix::fs::openat(root, ".", dir_flags(), Mode::empty()).map_err(errno)?;
        for (i, part) in parts.iter().enumerate() {
            let next = match rustix::fs::openat(&dir, *part, dir_flags(), Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) if self.fsync => rustix::fs::fsync(&dir).map_err(errno)?,
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno(e)),
                    }
                    rustix::fs::openat(&dir, *part, dir_flags(), Mode::empty())
                }
                other => other,
            };
            dir = match next {
                Ok(fd) => fd,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(not_followed(&self.shown(&parts[..=i])));
                }
                Err(e) => return Err(errno(e)),
            };
        }
        Ok(dir)
    }

    /// Writes `bytes` as the new file `relative`: a temporary file in the
    /// same directory, flushed, renamed into place without replacing
    /// anything, the directory flushed; a reader sees all or nothing.
    pub fn write_new(&self, relative: &str, bytes: &[u8]) -> io::Result<()> {
        let parts = components(relative)?;
        let (name, dir_parts) = parts.split_last().expect("split gives one part at least");
        let mut attempt = 0;
        loop {
            match self.write_once(dir_parts, name, bytes) {
                // A concurrent clear or delete removed the directory between
                // creating it and renaming into it: do it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < RACE_RETRIES => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn write_once(&self, dir_parts: &[&str], name: &str, bytes: &[u8]) -> io::Result<()> {
        let dir = self.open_dir(dir_parts, true)?;
        let temp = temp_name();
        let fd = rustix::fs::openat(
            &dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno)?;
        let written = (|| {
            let mut file = File::from(fd);
            file.write_all(bytes)?;
            if self.fsync {
                file.sync_all()?;
            }
            // The name is the write id's: nothing is ever there to replace.
            match rustix::fs::renameat_with(&dir, temp.as_str(), &dir, name, RenameFlags::NOREPLACE)
            {
                Err(Errno::INVAL | Errno::NOSYS) => {
                    rustix::fs::renameat(&dir, temp.as_str(), &dir, name).map_err(errno)
                }
                other => other.map_err(errno),
            }
        })();
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
            return Err(e);
        }
        if self.fsync {
            // Make the rename itself durable.
            rustix::fs::fsync(&dir).map_err(errno)?;
        }
        Ok(())
    }

    /// Reads the regular file `relative`. A link, a FIFO, a device is an
    /// error, never followed or waited on.
    pub fn read(&self, relative: &str) -> io::Result<String> {
        let parts = components(relative)?;
        let (name, dir_parts) = parts.split_last().expect("split gives one part at least");
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let opened = match self.open_beneath(&parts, flags) {
            Some(opened) => opened,
            None => {
                let dir = self.open_dir(dir_parts, false)?;
                rustix::fs::openat(&dir, *name, flags, Mode::empty())
            }
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::XDEV) => return Err(not_followed(&self.shown(&parts))),
            Err(Errno::NOTDIR) => return Err(not_followed(&self.shown(dir_parts))),
            Err(e) => return Err(errno(e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(errno)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", self.shown(&parts).display()),
            ));
        }
        read_all(&fd, u64::try_from(stat.st_size).unwrap_or(0))
    }

    /// Removes the file `relative` (a link there is removed, not followed);
    /// answers whether it was there. Empty directories above it go too,
    /// down to the layout's top (`keep` components are never removed).
    pub fn remove(&self, relative: &str, keep: usize) -> io::Result<bool> {
        let parts = components(relative)?;
        let (name, dir_parts) = parts.split_last().expect("split gives one part at least");
        let dir = match self.open_dir(dir_parts, false) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&dir, *name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(errno(e)),
        }
        if self.fsync {
            // A delete that survives a power loss: no deleted value comes
            // back.
            rustix::fs::fsync(&dir).map_err(errno)?;
        }
        drop(dir);
        self.prune(dir_parts, keep);
        Ok(true)
    }

    /// Removes empty directories from `parts` upwards, keeping the first
    /// `keep` components. Best effort: a directory that is not empty (or
    /// that another thread removed) ends the walk.
    fn prune(&self, parts: &[&str], keep: usize) {
        let mut end = parts.len();
        while end > keep {
            let Ok(parent) = self.open_dir(&parts[..end - 1], false) else {
                return;
            };
            if rustix::fs::unlinkat(&parent, parts[end - 1], AtFlags::REMOVEDIR).is_err() {
                return;
            }
            end -= 1;
        }
    }

    /// Removes the directory `relative` and everything in it, links
    /// included (never followed), then the empty directories above it down
    /// to `keep` components.
    pub fn remove_tree(&self, relative: &str, keep: usize) -> io::Result<()> {
        let parts = components(relative)?;
        let (name, dir_parts) = parts.split_last().expect("split gives one part at least");
        let parent = match self.open_dir(dir_parts, false) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut attempt = 0;
        loop {
            match remove_entry(&parent, name.as_ref()) {
                Ok(()) => break,
                Err(Errno::NOENT) => break,
                // A concurrent write added a file while the tree was being
                // removed: go again.
                Err(Errno::NOTEMPTY) if attempt < RACE_RETRIES => attempt += 1,
                Err(e) => return Err(errno(e)),
            }
        }
        drop(parent);
        self.prune(dir_parts, keep);
        Ok(())
    }

    /// Every regular file under the directory `relative`, by its path
    /// relative to the root, with when it was last written. Links and
    /// special files are not reported (and not entered).
    pub fn files_under(&self, relative: &str) -> io::Result<Vec<(String, Option<SystemTime>)>> {
        let parts = components(relative)?;
        let dir = match self.open_dir(&parts, false) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        walk(&dir, relative, &mut |path, stat, _, _| {
            if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
                out.push((path.to_string(), Some(modified(stat))));
            }
        })
        .map_err(errno)?;
        Ok(out)
    }

    /// Removes this backend's temporary files last written before
    /// `older_than`, in the directories under `relative` (a top directory
    /// of the layout); answers how many.
    pub fn sweep(&self, relative: &str, older_than: SystemTime) -> io::Result<usize> {
        let parts = components(relative)?;
        let dir = match self.open_dir(&parts, false) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        let mut failure = None;
        walk(&dir, relative, &mut |_, stat, parent, name| {
            if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
                && is_temp_name(name.to_bytes())
                && modified(stat) < older_than
            {
                match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) => removed += 1,
                    Err(Errno::NOENT) => {}
                    Err(e) => failure = Some(e),
                }
            }
        })
        .map_err(errno)?;
        match failure {
            Some(e) => Err(errno(e)),
            None => Ok(removed),
        }
    }
}

fn modified(stat: &rustix::fs::Stat) -> SystemTime {
    let secs = u64::try_from(stat.st_mtime).unwrap_or(0);
    let nanos = u32::try_from(stat.st_mtime_nsec).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Calls `visit(path, stat, parent, name)` for every entry below `dir`
/// (not following links), entering subdirectories.
fn walk(
    dir: &OwnedFd,
    path: &str,
    visit: &mut dyn FnMut(&str, &rustix::fs::Stat, &OwnedFd, &CStr),
) -> Result<(), Errno> {
    let entries = rustix::fs::Dir::read_from(dir)?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Removed meanwhile.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e),
        };
        let child = format!(
            "{path}/{}",
            OsStr::from_bytes(name.to_bytes()).to_string_lossy()
        );
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
                Ok(sub) => walk(&sub, &child, visit)?,
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                Err(e) => return Err(e),
            }
        } else {
            visit(&child, &stat, dir, name);
        }
    }
    Ok(())
}

/// Removes `name` in `parent`: a directory with everything in it, anything
/// else (a file, a link) by unlinking it.
fn remove_entry(parent: &impl AsFd, name: &OsStr) -> Result<(), Errno> {
    let sub = match rustix::fs::openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(sub) => sub,
        // A link or a file, not a directory: unlink it, never follow it.
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return rustix::fs::unlinkat(parent, name, AtFlags::empty());
        }
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name();
        if n != c"." && n != c".." {
            names.push(OsStr::from_bytes(n.to_bytes()).to_os_string());
        }
    }
    for n in names {
        match remove_entry(&sub, &n) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    drop(sub);
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// The whole text of an open file whose size is `size_hint` (from the
/// `fstat` already done): read into a buffer of that size, without the
/// size and position queries `File::read_to_string` makes first (two system
/// calls per read). A file that grew meanwhile is still read to its end.
fn read_all(fd: &OwnedFd, size_hint: u64) -> io::Result<String> {
    // Reserved fallibly: a sparse or damaged file claiming terabytes is an
    // error, not an allocation failure that aborts the host.
    let too_big = |_| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("the file is too large to read into memory ({size_hint} bytes)"),
        )
    };
    let mut bytes: Vec<u8> = Vec::new();
    let wanted = usize::try_from(size_hint)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    bytes.try_reserve_exact(wanted).map_err(too_big)?;
    loop {
        if bytes.len() == bytes.capacity() {
            bytes
                .try_reserve(bytes.capacity().max(8192))
                .map_err(too_big)?;
        }
        match rustix::io::read(fd, rustix::buffer::spare_capacity(&mut bytes)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(e) => return Err(errno(e)),
        }
    }
    // The vectorised check: a large read spends a third of its time here
    // with std's.
    if simdutf8::basic::from_utf8(&bytes).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ));
    }
    // SAFETY: the bytes were just checked to be UTF-8.
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(bytes: &[u8]) -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let fd = rustix::fs::open(&path, OFlags::RDONLY, Mode::empty()).unwrap();
        (dir, fd)
    }

    #[test]
    fn a_read_takes_the_whole_file_whatever_size_it_was_told() {
        let text = "x".repeat(20_000);
        for hint in [0, 1, 19_999, 20_000, 20_001, 1 << 20] {
            let (_dir, fd) = opened(text.as_bytes());
            assert_eq!(read_all(&fd, hint).unwrap(), text, "hint {hint}");
        }
        let (_dir, fd) = opened(b"");
        assert_eq!(read_all(&fd, 0).unwrap(), "");
    }

    #[test]
    fn a_size_too_large_to_hold_is_an_error_not_an_abort() {
        let (_dir, fd) = opened(b"\"v\"");
        let e = read_all(&fd, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
        assert!(e.to_string().contains("too large"), "{e}");
        let (_dir, fd) = opened(b"\xff");
        assert_eq!(
            read_all(&fd, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_long_file_is_checked_for_utf8_to_its_last_byte() {
        let good = "é🦀x".repeat(5000);
        let (_dir, fd) = opened(good.as_bytes());
        assert_eq!(read_all(&fd, good.len() as u64).unwrap(), good);
        for at in [0, 64, 10_000, good.len() - 1] {
            let mut bytes = good.clone().into_bytes();
            bytes[at] = 0xff;
            let (_dir, fd) = opened(&bytes);
            assert_eq!(
                read_all(&fd, bytes.len() as u64).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "bad byte at {at}"
            );
        }
        // A character cut short as the file ends, at and beside the
        // vectorised check's block edges.
        for len in [63, 64, 65, 1024, 65_536] {
            let mut bytes = "x".repeat(len - 2).into_bytes();
            bytes.extend_from_slice(&"🦀".as_bytes()[..2]);
            let (_dir, fd) = opened(&bytes);
            assert_eq!(
                read_all(&fd, bytes.len() as u64).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "cut at the end of {len} bytes"
            );
        }
    }
}
