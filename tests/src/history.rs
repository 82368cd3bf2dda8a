//! Histories of concurrent operations and a checker for the consistency
//! guarantees, in the spirit of Jepsen's register checker.
//!
//! Workers (threads, and processes that may be killed) run random
//! operations on a small key space through a [`StateHost`] whose backend
//! and store inject faults ([`FaultyBackend`], [`FaultyStore`]). Each
//! operation is recorded when it starts and when it ends, on the machine's
//! monotonic clock (comparable across processes). [`check`] then looks for
//! what the guarantees forbid:
//!
//! * a read that returns a value some acknowledged write had already
//!   replaced, or nothing when an acknowledged write was in place (a lost
//!   write, guarantee 1, or a resurrection, guarantee 3);
//! * a read of a value whose write failed for sure, or that no one wrote;
//! * a read that finds its row pointing at nothing (guarantee 2).
//!
//! Operations that overlap are unordered; an operation whose outcome is
//! unknown (an unknown-outcome error, a killed worker) may take effect at any
//! time after it started. Guarantee 4 is checked on the final store and
//! storage by the test.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;
use statehost::backend::{Backend, Listed, Text};
use statehost::store::{MetadataStore, Put, Row, Rows};
use statehost::{Error, StateHost};
use statehost_plugin_api::{
    AssetScope, BackendError, Capabilities, ScopeRef, Serialized, StateKey, TaskScope, WriteId,
};

/// A small deterministic generator (xorshift64), so runs replay by seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The machine's monotonic clock in ns: the same for every process.
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It returned success.
    Ok,
    /// It failed, and had no effect.
    Fail,
    /// It failed, and may or may not have had its effect.
    Unknown,
    /// A read found a row pointing at nothing: a violation by itself.
    Dangling,
}

/// One operation of a history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The worker that ran it.
    pub worker: String,
    /// `set`, `get`, `delete`, `clear` or `gc`.
    pub op: String,
    /// The keys it writes or reads (`scope/key`).
    pub keys: Vec<String>,
    /// The value a set wrote, or the value a get returned (`None`: absent).
    pub value: Option<String>,
    /// When it started (monotonic ns).
    pub start: i64,
    /// When it ended; `None` if its worker died first.
    pub end: Option<i64>,
    /// How it ended (`Unknown` for a worker that died).
    pub outcome: Outcome,
    /// The error, if any, for the record.
    #[serde(default)]
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------
// The key space and the workers
// ---------------------------------------------------------------------------

/// Where the keys live: a task with keys k0..k4, a mapped task (two map
/// indices) with keys c0..c2, cleared now and then, and an asset with keys
/// a0..a2.
#[derive(Debug, Clone)]
pub struct Keyspace {
    task: TaskScope,
    mapped: [TaskScope; 2],
    asset: AssetScope,
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace {
            task: TaskScope::new("history", "run", "task", -1).expect("valid"),
            mapped: [
                TaskScope::new("history", "run", "mapped", 0).expect("valid"),
                TaskScope::new("history", "run", "mapped", 1).expect("valid"),
            ],
            asset: AssetScope::by_name("history-asset").expect("valid"),
        }
    }
}

/// The scope of a key of the key space.
#[derive(Debug, Clone)]
pub enum SlotScope {
    /// A task's.
    Task(TaskScope),
    /// An asset's.
    Asset(AssetScope),
}

impl Keyspace {
    /// Every key: its name in histories, its scope and the key.
    pub fn slots(&self) -> Vec<(String, SlotScope, String)> {
        Slot::all()
            .into_iter()
            .map(|slot| {
                let scope = match slot {
                    Slot::Task(_) => SlotScope::Task(self.task.clone()),
                    Slot::Mapped(m, _) => SlotScope::Task(self.mapped[m].clone()),
                    Slot::Asset(_) => SlotScope::Asset(self.asset.clone()),
                };
                (slot.name(), scope, slot.key())
            })
            .collect()
    }
}

/// A key of the key space.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Task(usize),
    Mapped(usize, usize),
    Asset(usize),
}

impl Slot {
    fn name(self) -> String {
        match self {
            Slot::Task(k) => format!("task/k{k}"),
            Slot::Mapped(m, k) => format!("mapped{m}/c{k}"),
            Slot::Asset(k) => format!("asset/a{k}"),
        }
    }

    fn key(self) -> String {
        match self {
            Slot::Task(k) => format!("k{k}"),
            Slot::Mapped(_, k) => format!("c{k}"),
            Slot::Asset(k) => format!("a{k}"),
        }
    }

    fn all() -> Vec<Slot> {
        let mut all: Vec<Slot> = (0..5).map(Slot::Task).collect();
        for m in 0..2 {
            all.extend((0..3).map(|k| Slot::Mapped(m, k)));
        }
        all.extend((0..3).map(Slot::Asset));
        all
    }
}

/// How a set's error counts: a failure that proves nothing was applied, or
/// one whose outcome is unknown.
fn set_outcome(e: &Error) -> Outcome {
    if e.outcome_unknown() {
        Outcome::Unknown
    } else {
        Outcome::Fail
    }
}

/// A delete or clear that failed after its rows changed (a backend error)
/// had its effect; one the store reported failed had none.
fn removal_outcome(e: &Error) -> Outcome {
    match e {
        Error::Store { .. } => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// Runs `ops` random operations on the key space, reporting each one to
/// `record` when it starts (with `end: None`) and when it ends.
pub fn drive(
    host: &StateHost,
    worker: &str,
    seed: u64,
    ops: usize,
    keyspace: &Keyspace,
    record: &mut dyn FnMut(&Event),
) {
    let mut rng = Rng::new(seed);
    let task = host.task_state(keyspace.task.clone());
    let mapped = [
        host.task_state(keyspace.mapped[0].clone()),
        host.task_state(keyspace.mapped[1].clone()),
    ];
    let asset = host
        .asset_state(&keyspace.asset)
        .expect("the asset's name is valid");
    let slots = Slot::all();
    for n in 0..ops {
        let roll = rng.below(100);
        let slot = slots[rng.below(slots.len() as u64) as usize];
        let mut event = Event {
            worker: worker.to_string(),
            op: String::new(),
            keys: vec![slot.name()],
            value: None,
            start: 0,
            end: None,
            outcome: Outcome::Unknown,
            error: None,
        };
        let key = slot.key();
        enum Op {
            Set(String),
            Get,
            Delete,
            Clear(usize, bool),
            ClearAsset,
            Gc,
        }
        let op = match roll {
            0..=47 => Op::Set(format!("{worker}:{n}")),
            48..=84 => Op::Get,
            85..=93 => Op::Delete,
            94..=96 => Op::Clear(rng.below(2) as usize, rng.chance(500)),
            97..=98 => Op::ClearAsset,
            _ => Op::Gc,
        };
        match &op {
            Op::Set(v) => {
                event.op = "set".into();
                event.value = Some(v.clone());
            }
            Op::Get => event.op = "get".into(),
            Op::Delete => event.op = "delete".into(),
            Op::Clear(m, all) => {
                event.op = "clear".into();
                event.keys = (0..2)
                    .filter(|i| *all || i == m)
                    .flat_map(|i| (0..3).map(move |k| Slot::Mapped(i, k).name()))
                    .collect();
            }
            Op::ClearAsset => {
                event.op = "clear".into();
                event.keys = (0..3).map(|k| Slot::Asset(k).name()).collect();
            }
            Op::Gc => {
                event.op = "gc".into();
                event.keys = Vec::new();
            }
        }
        event.start = monotonic_ns();
        record(&event);
        let result: Result<Option<Option<String>>, Error> = match &op {
            Op::Set(v) => {
                let value = json!(v);
                match slot {
                    Slot::Task(_) => task.set(&key, &value),
                    Slot::Mapped(m, _) => mapped[m].set(&key, &value),
                    Slot::Asset(_) => asset.set(&key, &value),
                }
                .map(|()| None)
            }
            Op::Get => match slot {
                Slot::Task(_) => task.get(&key),
                Slot::Mapped(m, _) => mapped[m].get(&key),
                Slot::Asset(_) => asset.get(&key),
            }
            .map(|v| Some(v.and_then(|v| v.as_str().map(str::to_string)))),
            Op::Delete => match slot {
                Slot::Task(_) => task.delete(&key),
                Slot::Mapped(m, _) => mapped[m].delete(&key),
                Slot::Asset(_) => asset.delete(&key),
            }
            .map(|()| None),
            Op::Clear(m, all) => mapped[*m].clear(*all).map(|()| None),
            Op::ClearAsset => asset.clear().map(|()| None),
            Op::Gc => host.gc(false, |_, _| {}).map(|_| None),
        };
        event.end = Some(monotonic_ns());
        match result {
            Ok(read) => {
                event.outcome = Outcome::Ok;
                if let Some(read) = read {
                    event.value = read;
                }
            }
            Err(e) => {
                event.error = Some(e.to_string());
                event.outcome = match (&op, &e) {
                    (Op::Get, Error::Corrupt { .. }) => Outcome::Dangling,
                    (Op::Get | Op::Gc, _) => Outcome::Fail,
                    (Op::Set(_), e) => set_outcome(e),
                    (_, e) => removal_outcome(e),
                };
                if event.op == "get" {
                    event.value = None;
                }
            }
        }
        record(&event);
    }
}

/// Writes events as JSON lines, each flushed at once (a killed worker
/// leaves every line it wrote).
#[derive(Debug)]
pub struct EventLog {
    file: std::fs::File,
}

impl EventLog {
    /// A log at `path`.
    pub fn create(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(EventLog {
            file: std::fs::File::create(path)?,
        })
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) {
        let mut line = serde_json::to_vec(event).expect("an event is JSON");
        line.push(b'\n');
        self.file.write_all(&line).expect("write the history");
    }
}

/// Reads a log: the last record of each operation (start lines without an
/// end stay unknown).
pub fn read_log(path: &std::path::Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_op: Vec<Event> = Vec::new();
    let mut index: HashMap<(String, i64), usize> = HashMap::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Event>(line) else {
            continue; // a line cut by the kill
        };
        let id = (event.worker.clone(), event.start);
        match index.get(&id) {
            Some(&i) => by_op[i] = event,
            None => {
                index.insert(id, by_op.len());
                by_op.push(event);
            }
        }
    }
    by_op
}

/// A host for `config`'s backend and store with `faults` injected into
/// both and write ids minted `skew_ms` off the system's clock.
pub fn faulty_host(
    config: &statehost::config::Config,
    faults: Faults,
    seed: u64,
    skew_ms: i64,
) -> statehost::Result<StateHost> {
    let store = statehost::state::open_store(config)?;
    let deadline = config.limits.deadline.unwrap_or(Duration::from_secs(1));
    let faults = faults.with_stalls(config.state_store.orphan_grace);
    let mut builder = StateHost::builder(Arc::new(FaultyStore::new(store, faults, seed ^ 0x5eed)))
        .settings(config.state_store.clone())
        .limits(config.limits)
        .clock(Arc::new(statehost::state::SkewedClock { skew_ms }));
    // Every other seed lets only a few replaced objects wait their delay,
    // so most are deleted by the write that replaced them, while reads of
    // them may be on the way; the others keep them the whole delay.
    if seed.is_multiple_of(2) {
        builder = builder.reaper_capacity(3);
    }
    // The history's deadline is for calls; starting the backend (a runtime,
    // a client) on a busy machine may take longer, and is not under test.
    let mut loading = config.clone();
    loading.limits.deadline = Some(Duration::from_secs(30));
    if let Some(backend) = statehost::plugin::load_configured(&loading)? {
        let name = backend.metadata().name.clone();
        let backend: Arc<dyn Backend> = Arc::new(backend);
        builder = builder.backend(
            name,
            Arc::new(FaultyBackend::new(backend, faults, deadline, seed)),
        );
    }
    Ok(builder.build())
}

/// Runs `threads` workers (`<worker>-t<i>`) on `host`, recording into the
/// log at `path`.
pub fn drive_into_log(
    host: &StateHost,
    worker: &str,
    seed: u64,
    ops: usize,
    threads: usize,
    path: &std::path::Path,
) -> std::io::Result<()> {
    let log = Mutex::new(EventLog::create(path)?);
    let keyspace = Keyspace::default();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (log, keyspace) = (&log, &keyspace);
            s.spawn(move || {
                drive(
                    host,
                    &format!("{worker}-t{t}"),
                    seed.wrapping_add(t as u64 * 7919),
                    ops,
                    keyspace,
                    &mut |event| log.lock().unwrap_or_else(|p| p.into_inner()).write(event),
                );
            });
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------

/// A write to one key, as the checker sees it.
#[derive(Debug, Clone)]
struct Change {
    value: Option<String>,
    start: i64,
    /// When it surely had its effect, if it did (`i64::MAX`: unknown).
    end: i64,
    acknowledged: bool,
    failed: bool,
    worker: String,
}

/// What the guarantees forbid, found in `events`; empty when the history
/// is consistent.
pub fn check(events: &[Event]) -> Vec<String> {
    let mut writes: HashMap<&str, Vec<Change>> = HashMap::new();
    let mut reads: Vec<(&str, &Event)> = Vec::new();
    let mut violations = Vec::new();
    for event in events {
        let end = event.end.unwrap_or(i64::MAX);
        match event.op.as_str() {
            "set" | "delete" | "clear" => {
                for key in &event.keys {
                    writes.entry(key).or_default().push(Change {
                        value: if event.op == "set" {
                            event.value.clone()
                        } else {
                            None
                        },
                        start: event.start,
                        end: if event.outcome == Outcome::Unknown {
                            i64::MAX
                        } else {
                            end
                        },
                        acknowledged: event.outcome == Outcome::Ok,
                        failed: event.outcome == Outcome::Fail,
                        worker: event.worker.clone(),
                    });
                }
            }
            "get" => {
                if event.outcome == Outcome::Dangling {
                    violations.push(format!(
                        "guarantee 2: {} read {} and found a row pointing at nothing: {}",
                        event.worker,
                        event.keys[0],
                        event.error.as_deref().unwrap_or("")
                    ));
                } else if event.outcome == Outcome::Ok {
                    reads.push((&event.keys[0], event));
                }
            }
            _ => {}
        }
    }
    let none = Vec::new();
    for (key, read) in reads {
        let writes = writes.get(key).unwrap_or(&none);
        let read_end = read.end.unwrap_or(i64::MAX);
        // A write w is superseded for this read if an acknowledged write
        // began after w surely ended and ended before the read began.
        let superseded = |w_end: i64| {
            writes
                .iter()
                .any(|o| o.acknowledged && w_end < o.start && o.end < read.start)
        };
        match &read.value {
            Some(v) => {
                let Some(w) = writes.iter().find(|w| w.value.as_deref() == Some(v)) else {
                    violations.push(format!(
                        "{} read {key} = {v:?}, which no one wrote",
                        read.worker
                    ));
                    continue;
                };
                if w.failed {
                    violations.push(format!(
                        "{} read {key} = {v:?}, whose set ({}) failed for sure",
                        read.worker, w.worker
                    ));
                } else if w.start > read_end {
                    violations.push(format!(
                        "{} read {key} = {v:?} before anyone wrote it",
                        read.worker
                    ));
                } else if superseded(w.end) {
                    violations.push(format!(
                        "guarantee 1/3: {} read {key} = {v:?} after an acknowledged write replaced it",
                        read.worker
                    ));
                }
            }
            None => {
                // Absent: the initial state, or a delete/clear, not superseded.
                let initial = !superseded(i64::MIN);
                let removed = writes.iter().any(|w| {
                    w.value.is_none() && !w.failed && w.start < read_end && !superseded(w.end)
                });
                if !initial && !removed {
                    violations.push(format!(
                        "guarantee 1: {} read {key} as absent though an acknowledged write was in place",
                        read.worker
                    ));
                }
            }
        }
    }
    violations
}

// ---------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------

/// How often faults are injected, per mille of calls.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Faults {
    /// Backend calls that take twice the deadline (abandoned, then finish).
    pub slow: u64,
    /// Backend calls that take ten times the deadline.
    pub hung: u64,
    /// Backend calls that fail.
    pub failing: u64,
    /// Row writes that fail before they apply.
    pub store_fail: u64,
    /// Row writes that apply, then report an unknown outcome.
    pub store_unknown_applied: u64,
    /// Row writes that do not apply, and report an unknown outcome.
    pub store_unknown_dropped: u64,
    /// Row writes that stall for `stall_ms` first (a paused process, a
    /// stalled disk), so the write's fence is tested.
    pub store_stalled: u64,
    /// How long a stalled row write stalls.
    pub stall_ms: u64,
}

impl Faults {
    /// The faults the history tests inject.
    pub fn standard() -> Self {
        Faults {
            slow: 15,
            hung: 4,
            failing: 15,
            store_fail: 15,
            store_unknown_applied: 10,
            store_unknown_dropped: 10,
            store_stalled: 0,
            stall_ms: 0,
        }
    }

    /// These faults, with row writes stalling past `grace` now and then.
    pub fn with_stalls(self, grace: Duration) -> Self {
        Faults {
            store_stalled: 8,
            stall_ms: (grace.as_millis() as u64) * 6 / 5,
            ..self
        }
    }
}

/// A backend that is slow, hangs or fails on some calls.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Faults,
    deadline: Duration,
    rng: Mutex<Rng>,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultyBackend {
    /// `inner`, with `faults` (timed against `deadline`), seeded.
    pub fn new(inner: Arc<dyn Backend>, faults: Faults, deadline: Duration, seed: u64) -> Self {
        FaultyBackend {
            inner,
            faults,
            deadline,
            rng: Mutex::new(Rng::new(seed)),
        }
    }

    fn fault(&self, op: &str) -> Result<(), BackendError> {
        let (slow, hung, failing) = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            (
                rng.chance(self.faults.slow),
                rng.chance(self.faults.hung),
                rng.chance(self.faults.failing),
            )
        };
        if hung {
            std::thread::sleep(self.deadline * 10);
        } else if slow {
            std::thread::sleep(self.deadline * 2);
        }
        if failing {
            return Err(BackendError::unavailable(format!(
                "injected failure of {op}"
            )));
        }
        Ok(())
    }
}

impl Backend for FaultyBackend {
    fn unique_references(&self) -> bool {
        self.inner.unique_references()
    }
    fn capabilities(&self) -> Capabilities {
        // Its faults are slow and hung calls: they must go through the
        // deadline, whatever the backend underneath promises.
        Capabilities {
            never_blocks: false,
            ..self.inner.capabilities()
        }
    }
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        self.fault("serialize")?;
        self.inner.serialize(at, write_id, value)
    }
    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<Text, BackendError> {
        self.fault("deserialize")?;
        self.inner.deserialize(reference, owner)
    }
    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        self.fault("delete_object")?;
        self.inner.delete_object(reference, owner)
    }
    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        self.inner.delete(at)
    }
    fn clear(&self, scope: ScopeRef<'_>, all: bool) -> Result<(), BackendError> {
        self.inner.clear(scope, all)
    }
    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<Listed>, BackendError> {
        self.fault("list")?;
        self.inner.list(scope)
    }
    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        self.inner.sweep(older_than)
    }
}

/// A metadata store whose row writes sometimes fail, or report an unknown
/// outcome (having applied or not).
pub struct FaultyStore {
    inner: Arc<dyn MetadataStore>,
    faults: Faults,
    rng: Mutex<Rng>,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

enum StoreFault {
    None,
    Fail,
    UnknownApplied,
    UnknownDropped,
    Stalled,
}

impl FaultyStore {
    /// `inner`, with `faults`, seeded.
    pub fn new(inner: Arc<dyn MetadataStore>, faults: Faults, seed: u64) -> Self {
        FaultyStore {
            inner,
            faults,
            rng: Mutex::new(Rng::new(seed)),
        }
    }

    fn roll(&self) -> StoreFault {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let n = rng.below(1000);
        let f = &self.faults;
        if n < f.store_fail {
            StoreFault::Fail
        } else if n < f.store_fail + f.store_unknown_applied {
            StoreFault::UnknownApplied
        } else if n < f.store_fail + f.store_unknown_applied + f.store_unknown_dropped {
            StoreFault::UnknownDropped
        } else if n < f.store_fail
            + f.store_unknown_applied
            + f.store_unknown_dropped
            + f.store_stalled
        {
            StoreFault::Stalled
        } else {
            StoreFault::None
        }
    }

    /// A write through the faults.
    fn write<T>(
        &self,
        what: &str,
        apply: impl FnOnce() -> statehost::Result<T>,
    ) -> statehost::Result<T> {
        match self.roll() {
            StoreFault::None => apply(),
            StoreFault::Fail => Err(Error::Store {
                message: format!("injected failure of {what}; nothing was written"),
            }),
            StoreFault::UnknownApplied => {
                apply()?;
                Err(Error::OutcomeUnknown {
                    message: format!("injected: the connection dropped after {what} was committed"),
                })
            }
            StoreFault::UnknownDropped => Err(Error::OutcomeUnknown {
                message: format!("injected: the connection dropped before {what} was committed"),
            }),
            StoreFault::Stalled => {
                std::thread::sleep(Duration::from_millis(self.faults.stall_ms));
                apply()
            }
        }
    }
}

impl MetadataStore for FaultyStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn now(&self) -> statehost::Result<i64> {
        self.inner.now()
    }
    fn gc_epoch(&self) -> statehost::Result<i64> {
        self.inner.gc_epoch()
    }
    fn get_task(&self, scope: &TaskScope, key: &str) -> statehost::Result<Option<String>> {
        self.inner.get_task(scope, key)
    }
    fn put_task(
        &self,
        scope: &TaskScope,
        key: &str,
        put: &Put<'_>,
    ) -> statehost::Result<Option<String>> {
        self.write("a task row write", || self.inner.put_task(scope, key, put))
    }
    fn delete_task(&self, scope: &TaskScope, key: &str) -> statehost::Result<Option<String>> {
        self.write("a task row delete", || self.inner.delete_task(scope, key))
    }
    fn clear_task(&self, scope: &TaskScope, all: bool) -> statehost::Result<Vec<Row>> {
        self.write("a task clear", || self.inner.clear_task(scope, all))
    }
    fn find_asset(&self, asset: &AssetScope) -> statehost::Result<Option<AssetScope>> {
        self.inner.find_asset(asset)
    }
    fn get_asset(&self, asset: &AssetScope, key: &str) -> statehost::Result<Option<String>> {
        self.inner.get_asset(asset, key)
    }
    fn put_asset(
        &self,
        named: &AssetScope,
        canonical: &AssetScope,
        key: &str,
        put: &Put<'_>,
    ) -> statehost::Result<Option<String>> {
        self.write("an asset row write", || {
            self.inner.put_asset(named, canonical, key, put)
        })
    }
    fn delete_asset(&self, asset: &AssetScope, key: &str) -> statehost::Result<Option<String>> {
        self.write("an asset row delete", || {
            self.inner.delete_asset(asset, key)
        })
    }
    fn clear_asset(&self, asset: &AssetScope) -> statehost::Result<Vec<Row>> {
        self.write("an asset clear", || self.inner.clear_asset(asset))
    }
    fn rows(&self) -> statehost::Result<Rows> {
        self.inner.rows()
    }
    fn for_each_stored(&self, visit: &mut dyn FnMut(&str)) -> statehost::Result<usize> {
        self.inner.for_each_stored(visit)
    }
    fn expired_task_rows(&self, limit: usize) -> statehost::Result<Rows> {
        self.inner.expired_task_rows(limit)
    }
    fn delete_expired_task_rows(&self, limit: usize) -> statehost::Result<Rows> {
        self.inner.delete_expired_task_rows(limit)
    }
    fn delete_task_if_expired(
        &self,
        scope: &TaskScope,
        key: &str,
    ) -> statehost::Result<Option<String>> {
        self.inner.delete_task_if_expired(scope, key)
    }
    fn sync(&self) -> statehost::Result<()> {
        self.inner.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        op: &str,
        key: &str,
        value: Option<&str>,
        start: i64,
        end: i64,
        outcome: Outcome,
    ) -> Event {
        Event {
            worker: "w".into(),
            op: op.into(),
            keys: vec![key.into()],
            value: value.map(Into::into),
            start,
            end: Some(end),
            outcome,
            error: None,
        }
    }

    #[test]
    fn the_checker_finds_lost_writes_resurrections_and_failed_values() {
        use Outcome::*;
        let ok = [
            event("set", "k", Some("a"), 0, 10, Ok),
            event("get", "k", Some("a"), 20, 30, Ok),
            // Overlapping a set: either value is fine.
            event("set", "k", Some("b"), 40, 60, Ok),
            event("get", "k", Some("a"), 50, 55, Ok),
            event("get", "k", Some("b"), 50, 55, Ok),
            event("delete", "k", None, 70, 80, Ok),
            event("get", "k", None, 90, 95, Ok),
            // A set of unknown outcome may show up any time later.
            event("set", "k", Some("u"), 100, 110, Unknown),
            event("get", "k", Some("u"), 500, 510, Ok),
        ];
        assert_eq!(check(&ok), Vec::<String>::new());

        let lost = [
            event("set", "k", Some("a"), 0, 10, Ok),
            event("set", "k", Some("b"), 20, 30, Ok),
            event("get", "k", Some("a"), 40, 50, Ok),
        ];
        assert_eq!(check(&lost).len(), 1, "{:?}", check(&lost));
        let resurrected = [
            event("set", "k", Some("a"), 0, 10, Ok),
            event("delete", "k", None, 20, 30, Ok),
            event("get", "k", Some("a"), 40, 50, Ok),
        ];
        assert_eq!(check(&resurrected).len(), 1);
        let absent = [
            event("set", "k", Some("a"), 0, 10, Ok),
            event("get", "k", None, 40, 50, Ok),
        ];
        assert_eq!(check(&absent).len(), 1);
        let failed = [
            event("set", "k", Some("f"), 0, 10, Fail),
            event("get", "k", Some("f"), 40, 50, Ok),
        ];
        assert_eq!(check(&failed).len(), 1);
        let dangling = [event("get", "k", None, 0, 1, Dangling)];
        assert_eq!(check(&dangling).len(), 1);
    }
}
