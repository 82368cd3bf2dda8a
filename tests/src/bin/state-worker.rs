//! A worker process for the crash, concurrency and resource tests: drives a
//! `StateHost` opened from a config file and reports what it saw.
//!
//! ```text
//! state-worker CONFIG crash SEED
//!     sets and deletes keys k0..k49 of one task forever, until killed
//! state-worker CONFIG hammer WORKER THREADS OPS LOG
//!     THREADS threads, OPS operations each, on shared keys s0..s19 and
//!     keys of their own; every read is checked; each acknowledged write is
//!     appended to LOG as `key<TAB>id`; every 50 operations a thread also
//!     fills and clears a scratch task of its own, and writes a key of the
//!     `expiring` task that expires at once; exit 1 on any error
//! state-worker CONFIG big MIB
//!     sets and reads back one value of MIB MiB, prints peak RSS in KiB
//! state-worker CONFIG history WORKER SEED OPS THREADS SKEW_MS LOG
//!     THREADS workers of the history test (statehost_tests::history), with
//!     faults injected into the backend and the store and write ids minted
//!     SKEW_MS off the system's clock; every operation is appended to LOG
//! ```

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use statehost::StateHost;
use statehost::config::Config;
use statehost_plugin_api::TaskScope;
use statehost_tests::{check_value, history, make_value};

/// A small deterministic generator (xorshift), so runs can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn scope() -> TaskScope {
    TaskScope::new("crash_dag", "run", "task", -1).expect("valid scope")
}

fn crash(host: &StateHost, seed: u64) -> ! {
    let mut rng = Rng(seed | 1);
    let state = host.task_state(scope());
    let mut n = 0u64;
    loop {
        n += 1;
        let key = format!("k{}", rng.below(50));
        if rng.below(10) < 7 {
            let len = rng.below(8192) as usize;
            state
                .set(&key, &make_value(&format!("{seed}-{n}"), len))
                .expect("set");
        } else {
            state.delete(&key).expect("delete");
        }
    }
}

fn hammer(
    host: &StateHost,
    worker: &str,
    threads: usize,
    ops: usize,
    log: &Path,
) -> Result<(), String> {
    let acks = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<(String, String)>, String> {
                    let mut rng =
                        Rng(((t as u64 + 1) * 0x9e37_79b9) ^ u64::from(std::process::id()));
                    let state = host.task_state(scope());
                    let scratch = host.task_state(
                        TaskScope::new("crash_dag", "run", format!("{worker}-t{t}-scratch"), -1)
                            .map_err(|e| e.to_string())?,
                    );
                    let expiring = host.task_state(
                        TaskScope::new("crash_dag", "run", "expiring", -1)
                            .map_err(|e| e.to_string())?,
                    );
                    let mut acks = Vec::new();
                    for n in 0..ops {
                        if n % 50 == 49 {
                            for k in 0..3 {
                                scratch
                                    .set(&format!("x{k}"), &make_value("scratch", 16))
                                    .map_err(|e| format!("scratch set: {e}"))?;
                            }
                            scratch.clear(false).map_err(|e| format!("clear: {e}"))?;
                            if scratch
                                .get("x0")
                                .map_err(|e| format!("scratch get: {e}"))?
                                .is_some()
                            {
                                return Err("a cleared key is still there".to_string());
                            }
                            expiring
                                .set_with_retention(
                                    &format!("{worker}-t{t}-{n}"),
                                    &make_value("expiring", 32),
                                    statehost::Retention::For(std::time::Duration::from_millis(1)),
                                )
                                .map_err(|e| format!("expiring set: {e}"))?;
                        }
                        let key = if rng.below(2) == 0 {
                            format!("s{}", rng.below(20))
                        } else {
                            format!("{worker}-t{t}-k{}", rng.below(10))
                        };
                        match rng.below(10) {
                            0..=5 => {
                                let id = format!("{worker}-{t}-{n}");
                                let len = rng.below(2048) as usize;
                                state
                                    .set(&key, &make_value(&id, len))
                                    .map_err(|e| format!("set {key}: {e}"))?;
                                acks.push((key, id));
                            }
                            6..=8 => {
                                if let Some(value) =
                                    state.get(&key).map_err(|e| format!("get {key}: {e}"))?
                                {
                                    check_value(&value).map_err(|e| format!("get {key}: {e}"))?;
                                }
                            }
                            _ => {
                                // Deleting only own keys keeps the final
                                // state of shared keys checkable.
                                if key.starts_with(worker) {
                                    state
                                        .delete(&key)
                                        .map_err(|e| format!("delete {key}: {e}"))?;
                                    acks.push((key, "-".to_string()));
                                }
                            }
                        }
                    }
                    Ok(acks)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a thread panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;
    let mut file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    for (key, id) in acks.into_iter().flatten() {
        writeln!(file, "{key}\t{id}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn big(host: &StateHost, mib: usize) -> Result<(), String> {
    let state = host.task_state(scope());
    let value = make_value("big", mib << 20);
    state.set("big", &value).map_err(|e| e.to_string())?;
    drop(value);
    let back = state
        .get("big")
        .map_err(|e| e.to_string())?
        .ok_or("the value is gone")?;
    check_value(&back)?;
    drop(back);
    println!("{}", peak_rss_kib());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: state-worker CONFIG (crash SEED | hammer WORKER THREADS OPS LOG | big MIB | history WORKER SEED OPS THREADS SKEW_MS LOG)";
    if args.len() < 3 {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<i64>().ok());
    if args[2] == "history" && args.len() == 9 {
        let result = Config::load(Path::new(&args[1])).and_then(|config| {
            history::faulty_host(
                &config,
                history::Faults::standard(),
                number(4).unwrap_or(1) as u64,
                number(7).unwrap_or(0),
            )
        });
        let host = match result {
            Ok(host) => host,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(3);
            }
        };
        return match history::drive_into_log(
            &host,
            &args[3],
            number(4).unwrap_or(1) as u64,
            number(5).unwrap_or(100) as usize,
            number(6).unwrap_or(2) as usize,
            Path::new(&args[8]),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let host = match Config::load(Path::new(&args[1])).and_then(|c| StateHost::open(&c)) {
        Ok(host) => host,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let result = match (args[2].as_str(), args.len()) {
        ("crash", 4) => crash(&host, number(3).unwrap_or(1)),
        ("hammer", 7) => hammer(
            &host,
            &args[3],
            number(4).unwrap_or(4) as usize,
            number(5).unwrap_or(1000) as usize,
            Path::new(&args[6]),
        ),
        ("big", 4) => big(&host, number(3).unwrap_or(100) as usize),
        _ => Err(usage.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
