//! This process's identity without a system call, for the reaper, which
//! asks on every replacing write whether it runs in a forked child of the
//! process that started its thread (a child has none of it), and `getpid`
//! is a system call each time (BENCHMARKS.md, "Eighth pass", measures it).
//! The identity is the id and a count of forks: read once, and again in
//! each child by a handler `pthread_atfork` runs there before `fork`
//! returns (Python's `os.fork` included). The count tells a child apart
//! from an ancestor that had the same id.
//!
//! A child made without the C library's `fork` (`_Fork`, `vfork`, a raw
//! `fork` or `clone` system call) runs no handler and reads its parent's
//! id here. Such a child of a process with threads (as any host with a
//! reaper is) may only call async-signal-safe functions until it execs,
//! which rules out the host; still, the paths that must hold in any child
//! (dropping or flushing the reaper, the call pool, loading a plugin) ask
//! the kernel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// This process: how many forks by the C library made it from the
/// process that first asked (the high half) and its id (the low half);
/// 0 until first asked. The count tells a process from an earlier one
/// whose id the kernel gave out again.
static ME: AtomicU64 = AtomicU64::new(0);
/// Whether a thread has started registering the handler.
static REGISTERING: AtomicBool = AtomicBool::new(false);

const ID_BITS: u64 = 0xffff_ffff;

extern "C" fn in_forked_child() {
    // SAFETY: getpid is async-signal-safe, as a child of a multithreaded
    // process needs; so are atomic loads and stores.
    let pid = unsafe { libc::getpid() } as u32;
    let forks = (ME.load(Ordering::Acquire) >> 32) + 1;
    ME.store((forks << 32) | u64::from(pid), Ordering::Release);
}

/// What [`std::process::id`] returns, from memory once the fork handler is
/// in place.
#[cfg(test)]
pub(crate) fn id() -> u32 {
    (identity() & ID_BITS) as u32
}

/// This process, from memory once the fork handler is in place: unequal in
/// every child made by the C library's `fork`, even one that the kernel
/// gave the id of an ancestor that has exited.
pub(crate) fn identity() -> u64 {
    let me = ME.load(Ordering::Acquire);
    if me != 0 {
        return me;
    }
    if !REGISTERING.swap(true, Ordering::AcqRel) {
        // SAFETY: the handler only stores getpid's answer.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(in_forked_child)) } == 0;
        if registered {
            // (A child forked before this store has its own identity from
            // the handler; one forked before the handler was in place
            // keeps asking the kernel, and is right too.)
            let _ = ME.compare_exchange(
                0,
                u64::from(std::process::id()),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
    with_kernels_id()
}

/// [`identity`] with the id asked of the kernel: unequal to its parent's
/// also in a child made without the C library's `fork`.
pub(crate) fn kernel_identity() -> u64 {
    if ME.load(Ordering::Acquire) == 0 {
        // The fork handler in place first, so that the count is kept.
        let _ = identity();
    }
    with_kernels_id()
}

fn with_kernels_id() -> u64 {
    (ME.load(Ordering::Acquire) & !ID_BITS) | u64::from(std::process::id())
}

/// A value dropped only in the process that made it. A forked child holds
/// a copy of its parent's memory: dropping a host there would close the
/// parent's connections (a PostgreSQL client says goodbye on the socket
/// both share) or wait for locks that the parent's threads held at the
/// fork and that no thread of the child will release (the call pool's
/// channel, SQLite's own). In any other process the value is left as it
/// is, a leak of one copy per fork, after `leave` (see
/// [`with_leave`](ProcessOwned::with_leave)).
pub struct ProcessOwned<T> {
    value: std::mem::ManuallyDrop<T>,
    /// The identity, as the kernel knows it, of the process that made it.
    owner: u64,
    leave: fn(&T),
}

impl<T: std::fmt::Debug> std::fmt::Debug for ProcessOwned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (*self.value).fmt(f)
    }
}

impl<T> ProcessOwned<T> {
    /// `value`, owned by this process.
    pub fn new(value: T) -> Self {
        Self::with_leave(value, |_| {})
    }

    /// `value`, owned by this process; where it is left instead of dropped,
    /// `leave` runs on it first (what the child itself started, it may
    /// still have to finish).
    pub fn with_leave(value: T, leave: fn(&T)) -> Self {
        ProcessOwned {
            value: std::mem::ManuallyDrop::new(value),
            owner: kernel_identity(),
            leave,
        }
    }
}

impl<T> std::ops::Deref for ProcessOwned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for ProcessOwned<T> {
    fn drop(&mut self) {
        // Asked of the kernel: this must hold in any child, however made.
        if self.owner == kernel_identity() {
            // SAFETY: dropped once, here, and never used after.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.value) };
        } else {
            (self.leave)(&self.value);
        }
    }
}

/// Waits for the child `child` of this process and answers its exit code;
/// fails the test if it did not exit (a signal, such as the timer of a
/// child that hung, ended it).
#[cfg(test)]
pub(crate) fn exit_code(child: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for a child of this process.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(
        libc::WIFEXITED(status),
        "the child did not exit (it hung, or a signal ended it): status {status}"
    );
    libc::WEXITSTATUS(status)
}

#[cfg(test)]
mod tests {
    use super::{ProcessOwned, exit_code, id, identity, kernel_identity};

    /// Counts its drops in this process's memory.
    struct Counted;

    static DROPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_process_owned_value_is_dropped_only_where_it_was_made() {
        use std::sync::atomic::Ordering::SeqCst;
        let before = DROPS.load(SeqCst);
        let kept = ProcessOwned::new(Counted);
        // SAFETY: the child drops the value, reads an atomic and exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            drop(kept);
            let code = if DROPS.load(SeqCst) == before { 0 } else { 1 };
            unsafe { libc::_exit(code) };
        }
        assert_eq!(exit_code(child), 0, "the child dropped its parent's value");
        drop(kept);
        assert_eq!(DROPS.load(SeqCst), before + 1, "the parent did not drop it");
    }

    #[test]
    fn the_id_is_the_kernels_in_this_process_and_in_a_forked_child() {
        let parent = id();
        assert_eq!(parent, std::process::id());
        assert_eq!(id(), parent, "read from memory the second time");
        let parent_identity = identity();
        assert_eq!(kernel_identity(), parent_identity);
        // SAFETY: the child only reads memory, calls getpid and exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let own = unsafe { libc::getpid() } as u32;
            let code = if id() != own || own == parent {
                1
            } else if identity() != kernel_identity()
                || identity() >> 32 != (parent_identity >> 32) + 1
            {
                2
            } else {
                0
            };
            unsafe { libc::_exit(code) };
        }
        assert_eq!(
            exit_code(child),
            0,
            "1: the forked child read its parent's id; 2: its fork count is not its parent's plus one"
        );
    }
}
