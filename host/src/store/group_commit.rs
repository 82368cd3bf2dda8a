//! Group commit for the SQLite store: the writers of one process share a
//! transaction, and so its flush to disk.
//!
//! With `synchronous = FULL` every commit waits for the disk, and SQLite
//! lets one writer in at a time, so N threads writing at once would wait
//! for N flushes one after the other. Here a write runs in a savepoint of
//! the one open transaction of the process's writer connection; a writer
//! that finishes while others wait for the lock leaves the transaction
//! open and waits for one of them to commit it (up to [`MAX_BATCH`] writes
//! a transaction). Each write is acknowledged only once the commit that
//! holds it is durable; a write that fails rolls back its own savepoint
//! and nothing else; a commit that fails fails every write in it, with
//! the same "may or may not have been applied" a lone commit would give.
//! A single writer commits at once, as before.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use rusqlite::{Connection, ErrorCode};

use crate::error::{Error, Result};

/// The most writes one transaction holds: a bound on how long the first
/// of them waits for its commit.
pub(super) const MAX_BATCH: usize = 64;

/// How a batch ended, for every writer in it.
type Outcome = Arc<OnceLock<Result<()>>>;

/// The process's writer connection and the batch being filled.
pub(super) struct GroupCommit {
    state: Mutex<State>,
    committed: Condvar,
    /// Writers waiting for the lock: while there are any, a finished write
    /// leaves the transaction open for one of them to commit.
    waiting: AtomicUsize,
}

struct State {
    conn: Option<Connection>,
    /// A transaction is open.
    open: bool,
    /// Writes done in it (failed ones not counted).
    writes: usize,
    /// Where the open batch's outcome goes.
    outcome: Outcome,
}

/// How the store words SQLite errors.
pub(super) struct Errors<'a> {
    /// The database, as messages name it.
    pub location: &'a str,
    /// `BEGIN IMMEDIATE` failed (the lock held elsewhere, or the disk).
    pub begin: &'a (dyn Fn(rusqlite::Error) -> Error + Sync),
}

impl Errors<'_> {
    /// An error of `what`, which applied nothing.
    fn failed(&self, what: &str, e: rusqlite::Error) -> Error {
        Error::Store {
            message: format!("{} ({what}): {e}", self.location),
        }
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    pub(super) fn new() -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                conn: None,
                open: false,
                writes: 0,
                outcome: Outcome::default(),
            }),
            committed: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the write `f` in the shared transaction (connecting with
    /// `connect` the first time) and returns once it is durable, or failed.
    pub(super) fn write<T>(
        &self,
        what: &str,
        errors: &Errors<'_>,
        connect: impl FnOnce() -> Result<Connection>,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if state.conn.is_none() {
            state.conn = Some(connect()?);
        }
        if !state.open {
            let conn = state.conn.as_ref().expect("connected above");
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| (errors.begin)(e))?;
            state.open = true;
        }
        let conn = state.conn.as_ref().expect("connected above");
        let ran = match conn.execute_batch("SAVEPOINT statehost_write") {
            Ok(()) => catch_unwind(AssertUnwindSafe(|| f(conn))),
            Err(e) => Ok(Err(errors.failed(what, e))),
        };
        let done = matches!(ran, Ok(Ok(_)));
        let kept = if done {
            conn.execute_batch("RELEASE statehost_write")
        } else {
            conn.execute_batch("ROLLBACK TO statehost_write; RELEASE statehost_write")
        };
        if let Err(e) = kept {
            // The transaction is in no known state: give it all up.
            let error = errors.failed(what, e);
            self.abandon(&mut state, error.clone());
            return match ran {
                Err(panic) => resume_unwind(panic),
                Ok(Ok(_)) => Err(error),
                Ok(Err(own)) => Err(own),
            };
        }
        if done {
            state.writes += 1;
        }
        let outcome = state.outcome.clone();
        let others_waiting = self.waiting.load(Ordering::SeqCst) > 0;
        if state.writes > 0 && others_waiting && state.writes < MAX_BATCH {
            // One of the waiting writers commits this batch.
            if done {
                while outcome.get().is_none() {
                    state = self
                        .committed
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
        } else {
            self.finish(&mut state, what, errors);
        }
        drop(state);
        match ran {
            Err(panic) => resume_unwind(panic),
            Ok(Err(own)) => Err(own),
            Ok(Ok(value)) => outcome
                .get()
                .cloned()
                .expect("a batch with a write in it ends with an outcome")
                .map(|()| value),
        }
    }

    /// Commits the open batch (or rolls back an empty one) and tells its
    /// writers.
    fn finish(&self, state: &mut State, what: &str, errors: &Errors<'_>) {
        let conn = state.conn.as_ref().expect("a batch has a connection");
        let result = if state.writes == 0 {
            conn.execute_batch("ROLLBACK")
                .map_err(|e| errors.failed(what, e))
        } else {
            match conn.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                // Still uncommitted: rolled back, nothing applied.
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) =>
                {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(errors.failed(what, e))
                }
                Err(e) => {
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    Err(Error::OutcomeUnknown {
                        message: format!(
                            "{} ({what}): the commit (of {} writes) failed: {e}",
                            errors.location, state.writes
                        ),
                    })
                }
            }
        };
        self.end(state, result);
    }

    /// Rolls the open batch back after an error that leaves it unusable.
    fn abandon(&self, state: &mut State, error: Error) {
        if let Some(conn) = &state.conn
            && !conn.is_autocommit()
        {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.end(state, Err(error));
    }

    fn end(&self, state: &mut State, result: Result<()>) {
        let _ = state.outcome.set(result);
        state.outcome = Outcome::default();
        state.open = false;
        state.writes = 0;
        self.committed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Writers that insert a row each, some failing and some panicking
    /// at random (a fixed seed; `STATEHOST_GROUP_SEED` and
    /// `STATEHOST_GROUP_WRITES` for longer runs), from several threads at
    /// once: every acknowledged write is in the database after it is
    /// reopened, and nothing else is.
    #[test]
    fn acknowledged_writes_land_and_failed_ones_leave_nothing() {
        let seed: u64 = std::env::var("STATEHOST_GROUP_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2026);
        let per_thread: u64 = std::env::var("STATEHOST_GROUP_WRITES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(150);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("group.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY)")
                .unwrap();
        }
        let group = GroupCommit::new();
        let begin = |e: rusqlite::Error| Error::Store {
            message: e.to_string(),
        };
        let errors = Errors {
            location: "group.db",
            begin: &begin,
        };
        let connect = || {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "synchronous", "FULL").unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(30))
                .unwrap();
            Ok(conn)
        };
        let acknowledged = Mutex::new(Vec::new());
        let threads = 8;
        std::thread::scope(|s| {
            for t in 0..threads {
                let (group, errors, acknowledged) = (&group, &errors, &acknowledged);
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ t);
                    for i in 0..per_thread {
                        let n = t * 1_000_000 + i;
                        let fate = rng.random_range(0..20);
                        let result = catch_unwind(AssertUnwindSafe(|| {
                            group.write("inserting", errors, connect, |c| {
                                c.execute("INSERT INTO t (n) VALUES (?1)", [n as i64])
                                    .map_err(|e| Error::Store {
                                        message: e.to_string(),
                                    })?;
                                match fate {
                                    0 => Err(Error::Store {
                                        message: "refused".into(),
                                    }),
                                    1 => panic!("a write that panics"),
                                    _ => Ok(n),
                                }
                            })
                        }));
                        match result {
                            Ok(Ok(n)) => acknowledged.lock().unwrap().push(n),
                            Ok(Err(e)) => assert_eq!(fate, 0, "{e}"),
                            Err(_) => assert_eq!(fate, 1),
                        }
                    }
                });
            }
        });
        drop(group);
        let mut expected = acknowledged.into_inner().unwrap();
        expected.sort_unstable();
        let conn = Connection::open(&path).unwrap();
        let stored: Vec<u64> = conn
            .prepare("SELECT n FROM t ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get::<_, i64>(0).map(|n| n as u64))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(stored, expected);
        assert!(expected.len() as u64 > threads * per_thread * 3 / 4);
    }

    /// Two writers: the first leaves the transaction open for the second,
    /// which commits both; the first returns only after that commit.
    #[test]
    fn a_waiting_writer_commits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER)")
            .unwrap();
        let group = GroupCommit::new();
        let begin = |e: rusqlite::Error| Error::Store {
            message: e.to_string(),
        };
        let errors = Errors {
            location: "two.db",
            begin: &begin,
        };
        let connect = || Ok(Connection::open(&path).unwrap());
        let count = || -> i64 {
            Connection::open(&path)
                .unwrap()
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        let (entered, go) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                group.write("first", &errors, connect, |c| {
                    c.execute("INSERT INTO t VALUES (1)", []).unwrap();
                    entered.wait();
                    // The second writer is now waiting for the lock.
                    while group.waiting.load(Ordering::SeqCst) == 0 {
                        std::thread::yield_now();
                    }
                    Ok(())
                })
            });
            entered.wait();
            let second = s.spawn(|| {
                group.write("second", &errors, connect, |c| {
                    // The first write is done but not committed.
                    assert_eq!(count(), 0);
                    go.wait();
                    c.execute("INSERT INTO t VALUES (2)", []).unwrap();
                    Ok(())
                })
            });
            go.wait();
            first.join().unwrap().unwrap();
            assert_eq!(count(), 2, "the first returned before its commit");
            second.join().unwrap().unwrap();
        });
    }
}
