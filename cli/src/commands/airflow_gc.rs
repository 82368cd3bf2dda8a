//! `gc --airflow-db URL`: the orphans of a storage Airflow's database owns.

use statehost::config::Config;

use crate::output::{Out, Outcome};
use crate::say;

/// `statehost gc --airflow-db URL [--dry-run] [--json]`
pub fn run(config: &Config, airflow_db: &str, dry_run: bool, json: bool, out: &mut Out) -> Outcome {
    let report = statehost::airflow_db::gc(config, airflow_db, dry_run)?;
    if json {
        let value = serde_json::to_value(&report).map_err(std::io::Error::other)?;
        return Ok(out.json(&value)?);
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    say!(
        out,
        "gc {verb}: {} orphaned objects of {} (Airflow's rows reference {}; kept: {} younger than the grace, {} of unknown age)",
        report.orphans,
        report.objects,
        report.referenced,
        report.young,
        report.unknown_age
    )?;
    Ok(())
}
