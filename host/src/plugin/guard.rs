//! The checks made before a library is loaded: loading runs its code, so
//! everything that can be checked is checked first, on the file that will
//! be loaded.

use std::path::Path;

use super::LoadPolicy;
use crate::error::{Error, Result};

pub(super) fn refused(path: &Path, reason: String) -> Error {
    Error::PluginRefused {
        path: path.to_path_buf(),
        reason,
    }
}

/// Ownership and write permissions of the library or its directory.
fn check_permissions(
    path: &Path,
    what: &str,
    meta: &std::fs::Metadata,
    policy: &LoadPolicy,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let problem = if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "the {what} {} is owned by uid {}, neither you (uid {me}) nor root; `chown` it",
            path.display(),
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "the {what} {} is writable by group or others (mode {:o}); run `chmod go-w {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) if policy.allow_insecure_permissions => {
            log::warn!(
                "loading anyway because [core] allow_insecure_plugin_permissions = true: {problem}"
            );
            Ok(())
        }
        Some(problem) => Err(refused(
            path,
            format!(
                "{problem}, or set [core] allow_insecure_plugin_permissions = true to load it anyway"
            ),
        )),
    }
}

/// Everything that must hold before the library's code may run. Returns the
/// opened file: the bytes that were checked are the bytes that get loaded.
pub(super) fn guard(path: &Path, policy: &LoadPolicy) -> Result<std::fs::File> {
    use std::io::Read;
    let canonical = std::fs::canonicalize(path).map_err(|e| Error::PluginUnreadable {
        path: path.to_path_buf(),
        message: format!("cannot open it ({e})"),
    })?;
    if let Some(dir) = &policy.confine_to {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        if !canonical.starts_with(&dir) {
            return Err(refused(
                path,
                format!(
                    "it leads to {}, outside the plugin directory {}; install the library itself there, or name it by path",
                    canonical.display(),
                    dir.display()
                ),
            ));
        }
    }
    // Checked to be a regular file before it is opened: opening a FIFO
    // would hang.
    let (mut file, meta) = crate::files::open_regular(&canonical).map_err(|message| {
        if std::fs::metadata(&canonical).is_ok_and(|m| !m.is_file()) {
            refused(path, message)
        } else {
            Error::PluginUnreadable {
                path: path.to_path_buf(),
                message,
            }
        }
    })?;
    check_permissions(&canonical, "library", &meta, policy)?;
    if let Some(dir) = canonical.parent()
        && let Ok(dir_meta) = std::fs::metadata(dir)
    {
        check_permissions(dir, "directory", &dir_meta, policy)?;
    }
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == *b"\x7fELF" => {}
        Ok(()) => {
            return Err(Error::NotSharedLibrary {
                path: path.to_path_buf(),
                reason: "the file has no ELF header".to_string(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(Error::NotSharedLibrary {
                path: path.to_path_buf(),
                reason: "the file is too short to be one".to_string(),
            });
        }
        Err(e) => {
            return Err(Error::PluginUnreadable {
                path: path.to_path_buf(),
                message: format!("cannot read it ({e})"),
            });
        }
    }
    Ok(file)
}
