//! The one error type a backend returns.

use std::fmt;

/// What went wrong, in terms the host can act on.
///
/// Pick the kind by what the operator should do: fix the config
/// ([`Config`](ErrorKind::Config)), wait and retry
/// ([`Unavailable`](ErrorKind::Unavailable)), fix the input
/// ([`InvalidInput`](ErrorKind::InvalidInput)). New kinds may be added in
/// later minor versions.
///
/// # The error contract
///
#[doc = include_str!("../docs/error-contract.md")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend's options are wrong (unknown key, bad value, unusable path).
    Config,
    /// The referenced value does not exist.
    NotFound,
    /// The storage could not be reached or refused the operation; retrying
    /// later may succeed.
    Unavailable,
    /// The input cannot be handled by this backend (a malformed reference, a
    /// key it cannot store).
    InvalidInput,
    /// The backend does not implement this operation.
    Unsupported,
    /// The backend panicked; the panic was caught at the plugin boundary.
    Panicked,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short lowercase name, as used in messages and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::NotFound => "not found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Other => "other",
        }
    }

    // Stable wire codes: never renumber, only append.
    pub(crate) fn code(self) -> u32 {
        match self {
            ErrorKind::Config => 1,
            ErrorKind::NotFound => 2,
            ErrorKind::Unavailable => 3,
            ErrorKind::InvalidInput => 4,
            ErrorKind::Unsupported => 5,
            ErrorKind::Panicked => 6,
            ErrorKind::Other => 7,
        }
    }

    pub(crate) fn from_code(code: u32) -> Self {
        match code {
            1 => ErrorKind::Config,
            2 => ErrorKind::NotFound,
            3 => ErrorKind::Unavailable,
            4 => ErrorKind::InvalidInput,
            5 => ErrorKind::Unsupported,
            6 => ErrorKind::Panicked,
            _ => ErrorKind::Other,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest message an error keeps, in bytes; longer ones are cut and
/// end in `…`.
pub const MAX_MESSAGE_BYTES: usize = 4096;

fn is_one_line(text: &str) -> bool {
    text.len() <= MAX_MESSAGE_BYTES && !text.chars().any(char::is_control)
}

/// `text` as one line: lines trimmed and joined with `; `, tabs as spaces,
/// other control characters escaped, at most [`MAX_MESSAGE_BYTES`].
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_BYTES));
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        for c in line.chars() {
            match c {
                '\t' => out.push(' '),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        if out.len() > MAX_MESSAGE_BYTES {
            break;
        }
    }
    if out.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// An error from a backend: a [kind](ErrorKind) and a one-line message.
///
/// Messages are shown to operators as they are, so write them as a sentence
/// that says what failed and, where possible, how to fix it
/// (`"unknown option `rooot`; known options: root, inline_threshold_bytes"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    kind: ErrorKind,
    message: String,
}

impl BackendError {
    /// An error of the given kind. The message is folded into one line
    /// (line breaks become `; `, other control characters are escaped) and
    /// cut at [`MAX_MESSAGE_BYTES`].
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = if is_one_line(&message) {
            message
        } else {
            one_line(&message)
        };
        BackendError { kind, message }
    }

    /// A [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// A [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// A [`ErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// A [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// A [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// A [`ErrorKind::Other`] error.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }

    /// Turns an I/O error into a backend error, keeping "not found" apart
    /// from everything else. `context` says what was being done
    /// (`"writing /var/state/x"`).
    pub fn from_io(context: impl fmt::Display, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Config,
            _ => ErrorKind::Unavailable,
        };
        Self::new(kind, format!("{context}: {err}"))
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}
