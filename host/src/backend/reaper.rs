//! [`Reaper`]: objects replaced by a newer write, deleted once a call
//! deadline has passed.
//!
//! A reader that fetched the old row before the swap is still reading the
//! old object; deleting it a deadline later lets that read finish (and a
//! read that still misses it re-reads the row). The queue is bounded: when
//! it is full, the caller deletes at once. What a crash leaves in the queue
//! is left to gc. Before deleting, the reaper makes the database's commits
//! durable (a no-op unless SQLite runs with `synchronous = normal`), so a
//! power loss can never bring back a row whose object is gone.
//!
//! Every object waits the same delay, so the queue is in due order; the
//! thread sleeps until the first is due and is woken only when the queue
//! was empty (or for a flush), not for every object queued.
//!
//! A forked child inherits the queue but not the thread: there the reaper
//! neither queues (a write deletes what it replaced at once) nor flushes
//! nor joins (the parent's thread deletes what the parent queued), so
//! dropping the parent's host in the child does not wait for a thread that
//! is not there. The thread is claimed before it is spawned, so a child
//! forked by another thread at any moment of the start knows this too.
//!
//! If the thread panics, the reaper stops: writes delete what they replaced
//! at once, flushes return, and what was queued is left to gc.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use statehost_plugin_api::{Scope, StateKey};

use super::Calls;

/// Makes committed database changes durable before objects go.
pub type SyncFn = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How many times a delete that failed is tried again.
const RETRIES: usize = 5;

struct Doomed {
    due: Instant,
    reference: String,
    owner: Option<(Scope, String)>,
    tries: usize,
}

#[derive(Default)]
struct Queue {
    doomed: VecDeque<Doomed>,
    /// Objects queued or being deleted.
    pending: usize,
    /// Asked to delete everything now (a count, so flushes never mix up).
    flushes_asked: u64,
    flushes_done: u64,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the thread (work or a flush) and flushers (done).
    wake: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The delayed deleter of replaced objects.
pub struct Reaper {
    calls: Arc<Calls>,
    sync: Arc<SyncFn>,
    delay: Duration,
    capacity: usize,
    shared: Arc<Shared>,
    thread: OnceLock<JoinHandle<()>>,
    /// The process ([`crate::process::identity`]) that claimed the thread
    /// (0: none yet). Stored before the thread is spawned and read before
    /// anything else, so that a child forked at any moment knows the thread
    /// is not its own and never waits for a lock a thread that is not there
    /// may hold.
    owner: AtomicU64,
    /// Whether the owner's thread runs (set once it does).
    running: AtomicBool,
    /// Called at each step of starting the thread (tests fork there).
    #[cfg(test)]
    spawn_hook: OnceLock<SpawnHook>,
}

#[cfg(test)]
type SpawnHook = Box<dyn Fn(&Reaper, SpawnStep) + Send + Sync>;

/// The steps of starting the reaper's thread, for tests that fork there.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpawnStep {
    /// This process has claimed the thread; not spawned yet.
    Claimed,
    /// Spawned; not yet marked running.
    Spawned,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("delay", &self.delay)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

/// Deletes one object, logging what fails (gc collects it).
pub(crate) fn delete_now(calls: &Arc<Calls>, reference: &str, owner: Option<StateKey<'_>>) -> bool {
    match calls.delete_object(reference, owner) {
        Ok(_) => true,
        Err(e) => {
            log::warn!(
                "backend `{}` could not delete the replaced object {reference:?} ({e}); gc will collect it",
                calls.name()
            );
            false
        }
    }
}

impl Reaper {
    /// A reaper that deletes through `calls` after `delay`, keeping at most
    /// `capacity` objects queued, and runs `sync` before each batch.
    pub fn new(calls: Arc<Calls>, sync: SyncFn, delay: Duration, capacity: usize) -> Self {
        Reaper {
            calls,
            sync: Arc::new(sync),
            delay,
            capacity,
            shared: Arc::new(Shared {
                queue: Mutex::default(),
                wake: Condvar::new(),
                done: Condvar::new(),
            }),
            thread: OnceLock::new(),
            owner: AtomicU64::new(0),
            running: AtomicBool::new(false),
            #[cfg(test)]
            spawn_hook: OnceLock::new(),
        }
    }

    #[cfg(test)]
    fn spawn_step(&self, step: SpawnStep) {
        if let Some(hook) = self.spawn_hook.get() {
            hook(self, step);
        }
    }

    /// Whether this process claimed the thread. Asked of the kernel: this
    /// must hold in any child, however it was made.
    fn owns_thread(&self) -> bool {
        self.owner.load(Ordering::Acquire) == crate::process::kernel_identity()
    }

    /// Queues the object at `reference` for deletion after the delay.
    /// `false` when the queue is full: delete it now instead.
    /// (The arguments are copied only once there is room for them.)
    pub fn schedule(&self, reference: &str, owner: Option<StateKey<'_>>) -> bool {
        if !self.started() {
            return false;
        }
        let mut queue = self.shared.lock();
        if queue.pending >= self.capacity || queue.stopping {
            return false;
        }
        let was_empty = queue.doomed.is_empty();
        queue.pending += 1;
        queue.doomed.push_back(Doomed {
            due: Instant::now() + self.delay,
            reference: reference.to_string(),
            owner: owner.map(|at| (at.scope.to_owned(), at.key.to_string())),
            tries: 0,
        });
        drop(queue);
        if was_empty {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Deletes everything queued now and waits until it is done.
    pub fn flush(&self) {
        // Not started (nothing is queued), or started in the parent of
        // this forked child.
        if !self.owns_thread() || !self.running.load(Ordering::Acquire) {
            return;
        }
        let mut queue = self.shared.lock();
        queue.flushes_asked += 1;
        let ticket = queue.flushes_asked;
        self.shared.wake.notify_one();
        while queue.flushes_done < ticket && !queue.stopping {
            queue = self
                .shared
                .done
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Objects waiting to be deleted.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending
    }

    /// Whether the thread runs, started on first use: `false` if it
    /// cannot start, is being started by another thread, or is the parent's
    /// of this forked child (which has none of it).
    fn started(&self) -> bool {
        // Every replacing write comes here: the identity from memory, and
        // no lock once the thread runs.
        let me = crate::process::identity();
        match self.owner.load(Ordering::Acquire) {
            owner if owner == me => return self.running.load(Ordering::Acquire),
            0 => {}
            _ => return false,
        }
        // Claimed as the kernel knows this process, as `flush` and `drop`
        // check it: a child made without the C library's `fork` reads its
        // parent's identity from memory, and must then neither start a
        // thread its flush and drop would not own, nor queue for it.
        if me != crate::process::kernel_identity()
            || self
                .owner
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            // Another thread of this process is starting it.
            return false;
        }
        #[cfg(test)]
        self.spawn_step(SpawnStep::Claimed);
        let (calls, sync, shared) = (self.calls.clone(), self.sync.clone(), self.shared.clone());
        match std::thread::Builder::new()
            .name("statehost-reaper".into())
            .spawn(move || run(&calls, &sync, &shared))
        {
            Ok(handle) => {
                // Set once: only the claim's winner gets here, once.
                let _ = self.thread.set(handle);
                #[cfg(test)]
                self.spawn_step(SpawnStep::Spawned);
                self.running.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                log::warn!("cannot start the thread that deletes replaced objects: {e}");
                // The next write tries again.
                self.owner.store(0, Ordering::Release);
                false
            }
        }
    }
}

/// The reaper's thread: sleeps until the first object is due (or a flush),
/// then deletes what is due.
fn run(calls: &Arc<Calls>, sync: &SyncFn, shared: &Shared) {
    /// If the thread panics, the reaper stops: writes delete at once, and
    /// flushes stop waiting (what is queued is left to gc).
    struct Died<'a>(&'a Shared);
    impl Drop for Died<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.lock().stopping = true;
                self.0.done.notify_all();
            }
        }
    }
    let _died = Died(shared);
    let mut queue = shared.lock();
    loop {
        let flushing = queue.flushes_asked > queue.flushes_done;
        let now = Instant::now();
        let due = if flushing || queue.stopping {
            queue.doomed.len()
        } else {
            queue.doomed.iter().take_while(|d| d.due <= now).count()
        };
        if due == 0 {
            if queue.stopping {
                return;
            }
            if flushing {
                // Nothing queued: the flush is done already.
                queue.flushes_done = queue.flushes_asked;
                shared.done.notify_all();
                continue;
            }
            let wait = queue
                .doomed
                .front()
                .map(|first| first.due.saturating_duration_since(now));
            queue = match wait {
                Some(wait) => {
                    shared
                        .wake
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner()),
            };
            continue;
        }
        let batch: Vec<Doomed> = queue.doomed.drain(..due).collect();
        let asked = queue.flushes_asked;
        // Flushing or stopping, nothing waits for a retry: what fails now
        // is left to gc.
        let last_try = flushing || queue.stopping;
        drop(queue);
        let retry = reap(calls, sync, batch, last_try);
        queue = shared.lock();
        queue.pending -= retry.len();
        for doomed in retry.into_iter().flatten() {
            queue.pending += 1;
            queue.doomed.push_back(doomed);
        }
        if flushing {
            queue.flushes_done = asked;
            shared.done.notify_all();
        }
    }
}

/// Deletes a batch; returns what to try again (`None`: done with it).
fn reap(
    calls: &Arc<Calls>,
    sync: &SyncFn,
    batch: Vec<Doomed>,
    last_try: bool,
) -> Vec<Option<Doomed>> {
    if let Err(e) = sync() {
        log::warn!(
            "cannot make the database's changes durable ({e}); {} replaced objects are left to gc",
            batch.len()
        );
        return batch.into_iter().map(|_| None).collect();
    }
    batch
        .into_iter()
        .map(|mut doomed| {
            let owner = doomed.owner.as_ref().map(|(scope, key)| StateKey {
                scope: scope.as_ref(),
                key,
            });
            let result = calls.delete_object(&doomed.reference, owner);
            match result {
                Ok(_) => None,
                Err(e) if doomed.tries < RETRIES && !last_try => {
                    log::debug!("deleting {:?} failed ({e}); trying again", doomed.reference);
                    doomed.tries += 1;
                    doomed.due = Instant::now() + Duration::from_secs(1 << doomed.tries);
                    Some(doomed)
                }
                Err(e) => {
                    log::warn!(
                        "backend `{}` could not delete the replaced object {:?} ({e}); gc will collect it",
                        calls.name(),
                        doomed.reference
                    );
                    None
                }
            }
        })
        .collect()
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(handle) = self.thread.take() {
            if !self.owns_thread() {
                // The parent's thread: not this process's to stop or join.
                std::mem::forget(handle);
                return;
            }
            // The thread deletes what is queued, then ends.
            self.shared.lock().stopping = true;
            self.shared.wake.notify_one();
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{InProcess, Limits};
    use statehost_memory::MemoryBackend;
    use statehost_plugin_api::{Capabilities, StateBackend, TaskScope};

    #[test]
    fn replaced_objects_go_after_the_delay_or_at_a_flush() {
        let backend = Arc::new(MemoryBackend::new());
        let calls = memory_calls(backend.clone());
        let reaper = Reaper::new(calls, Box::new(|| Ok(())), Duration::from_millis(200), 2);
        // A flush with nothing queued returns (before and after the thread
        // started).
        reaper.flush();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        let write = |key: &str| match backend
            .serialize(
                StateKey::task(&scope, key),
                statehost_plugin_api::WriteId::from_parts(1, u128::from(key.as_bytes()[0])),
                "1",
            )
            .unwrap()
        {
            statehost_plugin_api::Serialized::Reference(r) => r,
            _ => unreachable!(),
        };
        let owner = |key| Some(StateKey::task(&scope, key));
        assert!(reaper.schedule(&write("a"), owner("a")));
        assert!(reaper.schedule(&write("b"), owner("b")));
        assert!(
            !reaper.schedule(&write("c"), owner("c")),
            "the queue is full"
        );
        assert_eq!(reaper.pending(), 2);
        reaper.flush();
        assert_eq!(reaper.pending(), 0);
        reaper.flush();
        assert!(reaper.schedule(&write("d"), owner("d")));
        let until = Instant::now() + Duration::from_secs(5);
        while reaper.pending() > 0 {
            assert!(Instant::now() < until, "the delayed delete never happened");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only "c" (refused by the full queue) is left.
        assert_eq!(backend.list(None).unwrap().len(), 1);
    }

    fn memory_calls(backend: Arc<MemoryBackend>) -> Arc<Calls> {
        Arc::new(Calls::new(
            "memory",
            Arc::new(InProcess::new(backend, Capabilities::LIST)),
            Limits::default(),
        ))
    }

    /// A memory backend whose deletes all fail, counted.
    #[derive(Default)]
    struct Refusing {
        inner: MemoryBackend,
        deletes: std::sync::atomic::AtomicUsize,
    }

    impl StateBackend for Refusing {
        fn serialize(
            &self,
            at: StateKey<'_>,
            write_id: statehost_plugin_api::WriteId,
            value: &str,
        ) -> Result<statehost_plugin_api::Serialized, statehost_plugin_api::BackendError> {
            self.inner.serialize(at, write_id, value)
        }
        fn deserialize(
            &self,
            reference: &str,
            owner: Option<StateKey<'_>>,
        ) -> Result<String, statehost_plugin_api::BackendError> {
            self.inner.deserialize(reference, owner)
        }
        fn delete_object(
            &self,
            _reference: &str,
            _owner: Option<StateKey<'_>>,
        ) -> Result<bool, statehost_plugin_api::BackendError> {
            self.deletes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(statehost_plugin_api::BackendError::unavailable("refused"))
        }
        fn delete(&self, at: StateKey<'_>) -> Result<(), statehost_plugin_api::BackendError> {
            self.inner.delete(at)
        }
        fn clear(
            &self,
            scope: statehost_plugin_api::ScopeRef<'_>,
            all_map_indices: bool,
        ) -> Result<(), statehost_plugin_api::BackendError> {
            self.inner.clear(scope, all_map_indices)
        }
    }

    /// A child forked at any step of starting the thread neither blocks
    /// nor queues (its writes delete at once), and would not join the
    /// parent's thread when dropped.
    #[test]
    fn a_child_forked_while_the_thread_starts_deletes_at_once() {
        for step in [SpawnStep::Claimed, SpawnStep::Spawned] {
            let calls = memory_calls(Arc::new(MemoryBackend::new()));
            let reaper = Reaper::new(calls, Box::new(|| Ok(())), Duration::from_secs(3600), 8);
            let children = Arc::new(std::sync::Mutex::new(Vec::new()));
            let forked = children.clone();
            let scope = TaskScope::new("d", "r", "t", -1).unwrap();
            let _ = reaper.spawn_hook.set(Box::new(move |reaper, at| {
                if at != step {
                    return;
                }
                // SAFETY: the child calls only what must be safe in a
                // forked child of a threaded process (atomics, a signal
                // timer, _exit), or blocks, and the timer ends it.
                let child = unsafe { libc::fork() };
                assert!(child >= 0, "fork failed");
                if child == 0 {
                    unsafe { libc::alarm(10) };
                    let code = if reaper.schedule("r", Some(StateKey::task(&scope, "k"))) {
                        2
                    } else if reaper.owns_thread() {
                        3
                    } else {
                        reaper.flush();
                        0
                    };
                    unsafe { libc::_exit(code) };
                }
                forked.lock().unwrap().push(child);
                // Meanwhile in the parent, whose thread does not run yet:
                // a write deletes at once, a flush has nothing to wait for.
                assert!(
                    !reaper.schedule("r", Some(StateKey::task(&scope, "k"))),
                    "{step:?}: queued for a thread that does not run yet"
                );
                reaper.flush();
            }));
            let scope = TaskScope::new("d", "r", "t", -1).unwrap();
            // The parent's first replacing write starts the thread.
            assert!(reaper.schedule("r", Some(StateKey::task(&scope, "k"))));
            let children = std::mem::take(&mut *children.lock().unwrap());
            assert_eq!(children.len(), 1, "{step:?}: the hook did not fork");
            assert_eq!(
                crate::process::exit_code(children[0]),
                0,
                "{step:?}: 2 = the child queued, 3 = it would join the parent's thread"
            );
            assert!(reaper.owns_thread());
        }
    }

    /// A child made by a raw system call reads its parent's identity from
    /// memory (no fork handler ran): it must not start a thread that its
    /// flush and drop, which ask the kernel, would take for another's.
    #[test]
    fn a_child_made_without_the_c_librarys_fork_deletes_at_once() {
        let calls = memory_calls(Arc::new(MemoryBackend::new()));
        let reaper = Reaper::new(calls, Box::new(|| Ok(())), Duration::from_secs(3600), 8);
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        // The identity is cached in the parent before the child is made.
        let _ = crate::process::identity();
        // SAFETY: a fork by the clone system call (no handlers run); the
        // child calls atomics, getpid and _exit, or blocks until the timer
        // ends it.
        let child = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) } as i32;
        assert!(child >= 0, "clone failed");
        if child == 0 {
            unsafe { libc::alarm(10) };
            let code = if reaper.schedule("r", Some(StateKey::task(&scope, "k"))) {
                2
            } else if reaper.owns_thread() {
                3
            } else {
                0
            };
            unsafe { libc::_exit(code) };
        }
        assert_eq!(
            crate::process::exit_code(child),
            0,
            "2 = the child queued for a thread it does not own, 3 = it owns one"
        );
        // The parent is not affected.
        assert!(reaper.schedule("r", Some(StateKey::task(&scope, "k"))));
        assert!(reaper.owns_thread());
    }

    /// If the thread dies, writes delete at once and a flush returns.
    #[test]
    fn a_reaper_whose_thread_panicked_refuses_work_and_flushes() {
        let calls = memory_calls(Arc::new(MemoryBackend::new()));
        let reaper = Arc::new(Reaper::new(
            calls,
            Box::new(|| panic!("a sync that panics")),
            Duration::from_secs(3600),
            8,
        ));
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        assert!(reaper.schedule("r", Some(StateKey::task(&scope, "k"))));
        // The flush runs the batch, whose sync panics on the thread.
        let (done, flushed) = std::sync::mpsc::channel();
        let flusher = reaper.clone();
        std::thread::spawn(move || {
            flusher.flush();
            let _ = done.send(());
        });
        assert!(
            flushed.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the flush waits for a thread that died"
        );
        assert!(
            !reaper.schedule("r", Some(StateKey::task(&scope, "k"))),
            "queued for a thread that died"
        );
    }

    #[test]
    fn a_stopping_reaper_tries_each_delete_once() {
        let backend = Arc::new(Refusing::default());
        let calls = Arc::new(Calls::new(
            "refusing",
            Arc::new(InProcess::new(backend.clone(), Capabilities::LIST)),
            Limits::default(),
        ));
        let reaper = Reaper::new(calls, Box::new(|| Ok(())), Duration::from_secs(3600), 4);
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        let at = StateKey::task(&scope, "k");
        let reference = match backend
            .serialize(at, statehost_plugin_api::WriteId::from_parts(1, 1), "1")
            .unwrap()
        {
            statehost_plugin_api::Serialized::Reference(r) => r,
            _ => unreachable!(),
        };
        assert!(reaper.schedule(&reference, Some(at)));
        drop(reaper);
        // Tried once and left to gc, not retried back to back.
        assert_eq!(backend.deletes.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
