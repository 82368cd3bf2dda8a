//! [`Calls`]: the deadline and the in-flight cap of every backend call.
//!
//! A call into a plugin cannot be interrupted. With a deadline
//! (`[workers] state_backend_timeout_ms`), each call runs on a thread of a
//! pool and the caller stops waiting at the deadline; the call is then
//! *abandoned*: it goes on, and when it ends, whatever it made is cleaned up
//! by the pool thread (an object written late is deleted at once). The pool
//! never holds more threads than calls may be in flight
//! (`[workers] state_backend_max_in_flight`), and a call beyond that cap
//! fails at once as "unavailable", so a hung plugin costs errors, never a
//! thread per call. Without a deadline, or for a backend that declares
//! [`Capabilities::never_blocks`](statehost_plugin_api::Capabilities::never_blocks)
//! (its calls end in bounded time without waiting on I/O), calls run on the
//! caller's thread, still counted against the cap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use statehost_plugin_api::{BackendError, StateKey};

use super::Backend;

/// How long an idle pool thread waits for work before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// How long a pool thread that just finished a call, and a caller that just
/// handed one over, poll before they sleep: waking a sleeping thread costs
/// tens of microseconds, many times a fast backend call, and calls come in
/// bursts.
const SPIN: Duration = Duration::from_micros(50);

/// Polls `ready` until it answers `Some` or `SPIN` has passed.
fn spin<T>(mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if let Some(value) = ready() {
                return Some(value);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= SPIN {
            return None;
        }
    }
}

/// The limits every call is subject to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a caller waits for a call; `None` runs calls on the
    /// caller's thread, without a deadline.
    pub deadline: Option<Duration>,
    /// The most calls in flight at once, abandoned ones included.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Some(Duration::from_secs(30)),
            max_in_flight: 64,
        }
    }
}

/// A job gets a function that makes its thread available for the next job
/// (call it just before publishing a result, so that a caller who at once
/// hands over another call finds this thread instead of starting one); the
/// pool calls it after the job if the job did not.
type Job = Box<dyn FnOnce(&mut dyn FnMut()) + Send>;

/// Threads for calls with a deadline: started on demand, at most one per
/// call in flight, ended after a while without work.
struct Pool {
    sender: Sender<Job>,
    receiver: Receiver<Job>,
    /// Threads waiting for work, minus jobs queued for them (see `submit`).
    idle: Arc<AtomicUsize>,
    /// The process that made the pool. A forked child inherits the pool's
    /// memory but none of its threads.
    pid: u32,
}

impl Pool {
    fn new() -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded();
        Pool {
            sender,
            receiver,
            idle: Arc::new(AtomicUsize::new(0)),
            pid: std::process::id(),
        }
    }

    /// Hands `job` to an idle thread, or starts a thread for it. A job is
    /// queued only after reserving an idle thread, so a queued job never
    /// waits behind hung ones; a thread starts only when none is idle, so
    /// the threads are never more than the calls in flight.
    fn submit(&self, job: Job) -> std::io::Result<()> {
        if std::process::id() != self.pid {
            // A forked child: the idle threads counted here are the
            // parent's, so each call gets a thread of its own.
            return std::thread::Builder::new()
                .name("statehost-call".into())
                .spawn(move || job(&mut || {}))
                .map(drop);
        }
        let reserved = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if reserved {
            self.sender
                .send(job)
                .map_err(|_| std::io::Error::other("the call pool is gone"))?;
            return Ok(());
        }
        let receiver = self.receiver.clone();
        let idle = self.idle.clone();
        std::thread::Builder::new()
            .name("statehost-call".into())
            .spawn(move || {
                let run = |job: Job| {
                    let mut available = false;
                    job(&mut || {
                        if !available {
                            available = true;
                            idle.fetch_add(1, Ordering::AcqRel);
                        }
                    });
                    if !available {
                        idle.fetch_add(1, Ordering::AcqRel);
                    }
                };
                run(job);
                loop {
                    if let Some(job) = spin(|| receiver.try_recv().ok()) {
                        run(job);
                        continue;
                    }
                    match receiver.recv_timeout(IDLE_EXIT) {
                        Ok(job) => run(job),
                        Err(_) => {
                            // Leave only if no queued job counts on this
                            // thread; otherwise one is on its way.
                            if idle
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                return;
                            }
                            if let Ok(job) = receiver.recv() {
                                run(job);
                            }
                        }
                    }
                }
            })
            .map(drop)
    }
}

/// Where a call's result meets its caller.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
    /// Set once the result is in `state`, for a caller that polls.
    done: std::sync::atomic::AtomicBool,
    /// Whether the caller sleeps on `ready` (only then is it woken: a wake
    /// is a system call). Read and written under `state`'s lock.
    sleeping: std::sync::atomic::AtomicBool,
}

enum SlotState<T> {
    Waiting,
    Done(T),
    Abandoned,
    Taken,
}

/// What an abandoned call is still working on (a scope and key).
pub type Marker = (statehost_plugin_api::Scope, String);

/// The things abandoned calls are still working on.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<Mutex<std::collections::HashSet<Marker>>>);

impl Busy {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Marker>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an abandoned call is still working on `marker`.
    pub fn contains(&self, marker: &Marker) -> bool {
        self.lock().contains(marker)
    }
}

/// A backend with the deadline and the in-flight cap applied to every call.
pub struct Calls {
    name: String,
    backend: Arc<dyn Backend>,
    limits: Limits,
    /// Calls run on the caller's thread: no deadline, or a backend that
    /// never blocks.
    on_caller: bool,
    in_flight: Arc<AtomicUsize>,
    pool: Pool,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Gives the in-flight slot back when the call really ends: a call on a
/// pool thread owns the counter (it may outlive its caller); one on the
/// caller's thread borrows it, and spares two atomic operations a call.
struct InFlight<C: std::ops::Deref<Target = AtomicUsize>>(C);

impl<C: std::ops::Deref<Target = AtomicUsize>> Drop for InFlight<C> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight<&AtomicUsize> {
    /// The same slot, held by a job that may outlive its caller.
    fn outliving(self, counter: &Arc<AtomicUsize>) -> InFlight<Arc<AtomicUsize>> {
        debug_assert!(std::ptr::eq(self.0, &**counter));
        std::mem::forget(self);
        InFlight(counter.clone())
    }
}

impl Calls {
    /// `backend`, named `name` in messages, under `limits`.
    pub fn new(name: impl Into<String>, backend: Arc<dyn Backend>, limits: Limits) -> Self {
        Calls {
            name: name.into(),
            on_caller: limits.deadline.is_none() || backend.capabilities().never_blocks,
            backend,
            limits: Limits {
                max_in_flight: limits.max_in_flight.max(1),
                ..limits
            },
            in_flight: Arc::new(AtomicUsize::new(0)),
            pool: Pool::new(),
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend itself (no deadline, no cap).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The limits configured.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether calls run on the caller's thread, without a deadline: none
    /// is configured, or the backend never blocks. Only then may a call
    /// borrow its arguments ([`run_here`](Calls::run_here)).
    pub fn on_callers_thread(&self) -> bool {
        self.on_caller
    }

    /// Calls running now, abandoned ones included.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes an in-flight slot, or refuses the call at the cap.
    fn acquire(&self, op: &str) -> Result<InFlight<&AtomicUsize>, BackendError> {
        let max = self.limits.max_in_flight;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|n| {
                BackendError::unavailable(format!(
                    "{n} calls to the backend are in flight, the most [workers] state_backend_max_in_flight = {max} allows (the backend is slow or hung); {op} was not started, try again later"
                ))
            })?;
        Ok(InFlight(&self.in_flight))
    }

    /// Runs `job` on the backend under the limits. If the caller stops
    /// waiting at the deadline, `late` gets the job's result when it ends,
    /// on the thread that ran it, to undo what it did.
    pub fn run<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        job: impl FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
        late: impl FnOnce(&dyn Backend, Result<T, BackendError>) + Send + 'static,
    ) -> Result<T, BackendError> {
        self.run_marking(op, None, job, late)
    }

    /// As [`run`](Calls::run); if the call is abandoned, `mark` is entered
    /// in its set from the moment the caller gives up until the call (and
    /// `late`) has ended, so callers can refuse to start another call on
    /// the same thing meanwhile.
    pub fn run_marking<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        mark: Option<(Busy, Marker)>,
        job: impl FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
        late: impl FnOnce(&dyn Backend, Result<T, BackendError>) + Send + 'static,
    ) -> Result<T, BackendError> {
        self.run_within(op, self.limits.deadline, mark, job, late)
    }

    /// Runs a call that walks the whole storage (listing, sweeping): its
    /// deadline is twenty call deadlines, at least five minutes.
    pub fn run_long<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        job: impl FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let deadline = self
            .limits
            .deadline
            .map(|d| (d * 20).max(Duration::from_secs(300)));
        self.run_within(op, deadline, None, job, |_, _| {})
    }

    fn run_within<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        deadline: Option<Duration>,
        mark: Option<(Busy, Marker)>,
        job: impl FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
        late: impl FnOnce(&dyn Backend, Result<T, BackendError>) + Send + 'static,
    ) -> Result<T, BackendError> {
        let slot_guard = self.acquire(op)?;
        let Some(deadline) = deadline.filter(|_| !self.on_caller) else {
            let result = job(self.backend.as_ref());
            drop(slot_guard);
            return result;
        };
        let slot_guard = slot_guard.outliving(&self.in_flight);
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting),
            ready: Condvar::new(),
            done: std::sync::atomic::AtomicBool::new(false),
            sleeping: std::sync::atomic::AtomicBool::new(false),
        });
        // The job keeps these calls (their in-flight count, their pool)
        // alive while it runs, abandoned or not: another host on the same
        // backend then meets the same cap.
        let this = self.clone();
        let theirs = slot.clone();
        let their_mark = mark.clone();
        self.pool
            .submit(Box::new(move |available: &mut dyn FnMut()| {
                let backend = this.backend.clone();
                let result = job(backend.as_ref());
                let mut state = theirs.state.lock().unwrap_or_else(|p| p.into_inner());
                match *state {
                    SlotState::Waiting => {
                        // The call is over: free its slot and this thread
                        // before the caller sees the answer.
                        drop(slot_guard);
                        available();
                        *state = SlotState::Done(result);
                        theirs.done.store(true, Ordering::Release);
                        if theirs.sleeping.load(Ordering::Relaxed) {
                            theirs.ready.notify_one();
                        }
                        return;
                    }
                    _ => {
                        drop(state);
                        late(backend.as_ref(), result);
                        // Entered by the caller (under the slot's lock)
                        // before the state read above said Abandoned.
                        if let Some((busy, marker)) = their_mark {
                            busy.lock().remove(&marker);
                        }
                    }
                }
                drop(slot_guard);
            }))
            .map_err(|e| {
                BackendError::unavailable(format!("cannot start a thread for {op}: {e}"))
            })?;
        let until = Instant::now() + deadline;
        let _ = spin(|| slot.done.load(Ordering::Acquire).then_some(()));
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let SlotState::Done(_) = *state {
                let SlotState::Done(result) = std::mem::replace(&mut *state, SlotState::Taken)
                else {
                    unreachable!("just matched")
                };
                return result;
            }
            let now = Instant::now();
            if now >= until {
                *state = SlotState::Abandoned;
                if let Some((busy, marker)) = mark {
                    busy.lock().insert(marker);
                }
                return Err(BackendError::unavailable(format!(
                    "no answer to {op} within {} ms ([workers] state_backend_timeout_ms); the call was abandoned, and anything it writes late is deleted when it ends",
                    deadline.as_millis()
                )));
            }
            slot.sleeping.store(true, Ordering::Relaxed);
            state = slot
                .ready
                .wait_timeout(state, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Runs `job` on the caller's thread, under the in-flight cap only: for
    /// calls that run there anyway ([`on_callers_thread`](Calls::on_callers_thread)),
    /// which can then borrow their arguments.
    pub fn run_here<T>(
        &self,
        op: &'static str,
        job: impl FnOnce(&dyn Backend) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let _slot = self.acquire(op)?;
        job(self.backend.as_ref())
    }

    /// Runs a call with nothing to undo if it ends late.
    pub fn run_plain<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        job: impl FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        self.run(op, job, |_, _| {})
    }

    /// `delete_object` under the limits: on the caller's thread with the
    /// arguments borrowed when there is no deadline, else on the pool with
    /// copies of them.
    pub fn delete_object(
        self: &Arc<Self>,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        if self.on_caller {
            return self.run_here("delete_object", |b| b.delete_object(reference, owner));
        }
        let reference = reference.to_string();
        let owner = owner.map(|at| (at.scope.to_owned(), at.key.to_string()));
        self.run_plain("delete_object", move |b| {
            let at = owner.as_ref().map(|(scope, key)| StateKey {
                scope: scope.as_ref(),
                key,
            });
            b.delete_object(&reference, at)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::InProcess;
    use statehost_plugin_api::Capabilities;

    fn calls(deadline_ms: Option<u64>, max: usize) -> Arc<Calls> {
        #[derive(Debug)]
        struct Nothing;
        impl statehost_plugin_api::StateBackend for Nothing {
            fn serialize(
                &self,
                _: statehost_plugin_api::StateKey<'_>,
                _: statehost_plugin_api::WriteId,
                _: &str,
            ) -> Result<statehost_plugin_api::Serialized, BackendError> {
                Ok(statehost_plugin_api::Serialized::Inline)
            }
            fn deserialize(
                &self,
                _: &str,
                _: Option<statehost_plugin_api::StateKey<'_>>,
            ) -> Result<String, BackendError> {
                Ok("1".into())
            }
            fn delete_object(
                &self,
                _: &str,
                _: Option<statehost_plugin_api::StateKey<'_>>,
            ) -> Result<bool, BackendError> {
                Ok(true)
            }
            fn delete(&self, _: statehost_plugin_api::StateKey<'_>) -> Result<(), BackendError> {
                Ok(())
            }
            fn clear(
                &self,
                _: statehost_plugin_api::ScopeRef<'_>,
                _: bool,
            ) -> Result<(), BackendError> {
                Ok(())
            }
        }
        Arc::new(Calls::new(
            "test",
            Arc::new(InProcess::new(Nothing, Capabilities::NONE)),
            Limits {
                deadline: deadline_ms.map(Duration::from_millis),
                max_in_flight: max,
            },
        ))
    }

    pub(super) fn calls_for_probe() -> Arc<Calls> {
        calls(Some(5_000), 4)
    }

    #[test]
    fn answers_within_the_deadline_come_back() {
        let calls = calls(Some(5_000), 4);
        assert_eq!(calls.run_plain("op", |_| Ok(7)).unwrap(), 7);
        assert_eq!(calls.in_flight(), 0);
        let inline = super::tests::calls(None, 4);
        assert_eq!(inline.run_plain("op", |_| Ok(8)).unwrap(), 8);
    }

    #[test]
    fn late_answers_go_to_the_undo_and_the_cap_holds() {
        let calls = calls(Some(20), 3);
        let undone = Arc::new(AtomicUsize::new(0));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        for _ in 0..3 {
            let (undone, release) = (undone.clone(), release.clone());
            let err = calls
                .run(
                    "hang",
                    move |_| {
                        let (lock, cv) = &*release;
                        let mut go = lock.lock().unwrap();
                        while !*go {
                            go = cv.wait(go).unwrap();
                        }
                        Ok(1)
                    },
                    move |_, result| {
                        assert_eq!(result.unwrap(), 1);
                        undone.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .unwrap_err();
            assert!(err.message().contains("within 20 ms"), "{err}");
        }
        // Three calls hang: the fourth fails at once, without a thread.
        let started = Instant::now();
        let err = calls.run_plain("more", |_| Ok(2)).unwrap_err();
        assert!(
            err.message().contains("state_backend_max_in_flight = 3"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_millis(20));
        {
            let (lock, cv) = &*release;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        let until = Instant::now() + Duration::from_secs(10);
        while undone.load(Ordering::SeqCst) < 3 || calls.in_flight() > 0 {
            assert!(Instant::now() < until, "the late calls never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The threads of the hung calls serve the next ones.
        assert_eq!(calls.run_plain("after", |_| Ok(3)).unwrap(), 3);
    }
}
#[cfg(test)]
mod handoff_probe {
    use super::*;
    #[test]
    #[ignore]
    fn probe() {
        let calls = super::tests::calls_for_probe();
        for _ in 0..3 {
            let n = 20000;
            let mut times = Vec::with_capacity(n);
            for i in 0..n {
                let start = Instant::now();
                let _ = calls.run_plain("op", move |_| Ok(i));
                times.push(start.elapsed());
            }
            let total: Duration = times.iter().sum();
            times.sort();
            eprintln!(
                "handoff: mean {:?} p50 {:?} p90 {:?} p99 {:?} max {:?}",
                total / n as u32,
                times[n / 2],
                times[n * 9 / 10],
                times[n * 99 / 100],
                times[n - 1]
            );
        }
    }
}
