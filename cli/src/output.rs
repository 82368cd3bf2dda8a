//! Where commands print, and how every failure becomes one line and an exit
//! code.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use statehost::Error;

/// Exit codes, as the README's table lists them.
pub mod code {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// The answer is no: `get` of a key without a value, a backend that
    /// fails the conformance suite.
    pub const NO: u8 = 1;
    /// Bad input or configuration: fix the command line or the config.
    pub const BAD_INPUT: u8 = 2;
    /// The backend, the metadata store or the plugin failed.
    pub const FAILED: u8 = 3;
    /// The output could not be written (a full disk, a closed file).
    pub const OUTPUT: u8 = 4;
}

/// Why a command stopped.
#[derive(Debug)]
pub enum Failure {
    /// An error of the library.
    Host(Error),
    /// The command line asks for something that cannot be done.
    Input(String),
    /// The answer is no; the message (if any) says why.
    No(Option<String>),
    /// Writing the output failed.
    Output(io::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Host(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

/// A command's result.
pub type Outcome = Result<(), Failure>;

/// The exit code of a library error: see the error contract in the
/// plugin-api docs for the backend kinds.
pub fn exit_code(e: &Error) -> u8 {
    if e.is_bad_input() {
        code::BAD_INPUT
    } else {
        code::FAILED
    }
}

impl Failure {
    /// Reports the failure on stderr (one line) and gives the exit code.
    pub fn report(self) -> ExitCode {
        let (code, message) = match self {
            Failure::Host(e) => (exit_code(&e), Some(e.to_string())),
            Failure::Input(message) => (code::BAD_INPUT, Some(message)),
            Failure::No(message) => (code::NO, message),
            // The reader went away (`statehost rows | head -1`): it has all
            // it wanted. Stop quietly, as `ls | head` does.
            Failure::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => (code::OK, None),
            Failure::Output(e) => (code::OUTPUT, Some(format!("cannot write the output: {e}"))),
        };
        if let Some(message) = message {
            let message = one_line(&message);
            err_line(format_args!(
                "error: {}",
                statehost::secrets::redact(&message)
            ));
        }
        ExitCode::from(code)
    }
}

/// Text for a terminal: one line, control characters escaped.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        escape_into(&mut out, line);
    }
    out
}

/// Appends `text` with its control characters (but tabs) escaped.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

/// Writes a line on stderr; a stderr that cannot be written is ignored
/// (there is nowhere left to complain).
pub fn err_line(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(escaped(args).as_bytes());
    let _ = err.write_all(b"\n");
}

/// A line for a terminal: control characters (a newline or an escape
/// sequence in a path or a key) are written escaped, never raw.
fn escaped(args: fmt::Arguments<'_>) -> std::borrow::Cow<'static, str> {
    let text = match args.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(args.to_string()),
    };
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    escape_into(&mut out, &text);
    std::borrow::Cow::Owned(out)
}

/// Standard output, with every write checked.
pub struct Out {
    inner: io::BufWriter<io::StdoutLock<'static>>,
}

impl Out {
    /// Locks standard output.
    pub fn new() -> Out {
        Out {
            inner: io::BufWriter::new(io::stdout().lock()),
        }
    }

    /// Writes one line.
    pub fn line(&mut self, args: fmt::Arguments<'_>) -> io::Result<()> {
        self.inner.write_all(escaped(args).as_bytes())?;
        self.inner.write_all(b"\n")
    }

    /// Writes `value` as pretty JSON, one document.
    pub fn json(&mut self, value: &serde_json::Value) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut self.inner, value).map_err(io::Error::other)?;
        self.inner.write_all(b"\n")
    }

    /// Flushes what is buffered; a failure here is a failure of the command.
    pub fn finish(mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `writeln!`-like: `say!(out, "format", args)?`.
#[macro_export]
macro_rules! say {
    ($out:expr) => { $out.line(format_args!("")) };
    ($out:expr, $($arg:tt)*) => { $out.line(format_args!($($arg)*)) };
}

/// The first millisecond RFC 3339 cannot write (year 10000).
const RFC3339_END_MS: u64 = 253_402_300_800_000;

/// A time as RFC 3339 (UTC, milliseconds); one outside years 1970 to 9999
/// (only a tampered row holds one) as milliseconds since the epoch.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let time = u64::try_from(unix_ms)
        .ok()
        .filter(|ms| *ms < RFC3339_END_MS)
        .and_then(|ms| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms)));
    match time {
        Some(t) => humantime::format_rfc3339_millis(t).to_string(),
        None => format!("{unix_ms} ms since the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_495_000_123), "2025-11-30T09:30:00.123Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        for odd in [253_402_300_800_000, i64::MAX, -1, i64::MIN] {
            assert_eq!(rfc3339_ms(odd), format!("{odd} ms since the epoch"));
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let path = "/tmp/a\nb\u{1b}[31m";
        assert_eq!(
            escaped(format_args!("at {path}\tok")),
            "at /tmp/a\\nb\\u{1b}[31m\tok"
        );
        assert_eq!(escaped(format_args!("plain")), "plain");
    }

    #[test]
    fn messages_become_one_line() {
        assert_eq!(one_line("a\n  b\r\nc\u{1b}[0m"), "a;   b; c\\u{1b}[0m");
    }
}
