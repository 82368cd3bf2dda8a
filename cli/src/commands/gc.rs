//! `gc`: expired rows and their objects, orphaned objects, leftovers.

use std::io::IsTerminal;

use serde_json::json;
use statehost::StateHost;
use statehost::config::Config;

use crate::output::{Out, Outcome, err_line};
use crate::say;

/// `statehost gc [--dry-run] [--json]`
pub fn run(config: &Config, dry_run: bool, json: bool, out: &mut Out) -> Outcome {
    // A dry run only reads: it opens the database read-only.
    let host = if dry_run {
        StateHost::open_read_only(config)?
    } else {
        StateHost::open_existing(config)?
    };
    // Progress is for people watching: only on a terminal.
    let show_progress = std::io::stderr().is_terminal();
    let report = host.gc(dry_run, |rows, _| {
        if show_progress {
            err_line(format_args!("gc: {rows} expired rows so far"));
        }
    })?;
    if json {
        return Ok(out.json(&json!({
            "dry_run": report.dry_run,
            "expired_rows": report.expired_rows,
            "objects": report.objects,
            "orphans": report.orphans,
            "swept": report.swept,
            "unreadable_rows": report.unreadable_rows,
            "orphans_skipped": report.orphans_skipped,
        }))?);
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let orphans = match (report.orphans, &report.orphans_skipped) {
        (Some(n), _) => format!("{n} orphaned objects"),
        (None, Some(why)) => format!("orphans not collected ({why})"),
        (None, None) => "orphans not checked (the backend cannot list)".to_string(),
    };
    let swept = match report.swept {
        Some(n) => format!(", {n} leftover temporary files"),
        None => String::new(),
    };
    say!(
        out,
        "gc {verb}: {} expired rows, {} objects behind them, {orphans}{swept}",
        report.expired_rows,
        report.objects
    )?;
    if report.unreadable_rows > 0 {
        err_line(format_args!(
            "warning: {} rows could not be read and were skipped; fix or delete them in the database",
            report.unreadable_rows
        ));
    }
    Ok(())
}
