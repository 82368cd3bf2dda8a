//! This process's id without a system call, for the reaper, which asks on
//! every replacing write whether it runs in a forked child of the process
//! that started its thread (a child has none of it), and `getpid` is a
//! system call each time (BENCHMARKS.md, "Eighth pass", measures it). The
//! id is read once and again in each child, by a handler `pthread_atfork`
//! runs in the child before `fork` returns there (Python's `os.fork`
//! included).
//!
//! A child made without the C library's `fork` (`_Fork`, `vfork`, a raw
//! `fork` or `clone` system call) runs no handler and reads its parent's
//! id here. Such a child of a process with threads (as any host with a
//! reaper is) may only call async-signal-safe functions until it execs,
//! which rules out the host; still, the paths that must hold in any child
//! (dropping or flushing the reaper, the call pool, loading a plugin) ask
//! the kernel.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The id, once known (0: not yet).
static PID: AtomicU32 = AtomicU32::new(0);
/// Whether a thread has started registering the handler.
static REGISTERING: AtomicBool = AtomicBool::new(false);

extern "C" fn in_forked_child() {
    // SAFETY: getpid is async-signal-safe, as a child of a multithreaded
    // process needs; so is an atomic store.
    let pid = unsafe { libc::getpid() };
    PID.store(pid as u32, Ordering::Release);
}

/// What [`std::process::id`] returns, from memory once the fork handler is
/// in place.
pub(crate) fn id() -> u32 {
    let pid = PID.load(Ordering::Acquire);
    if pid != 0 {
        return pid;
    }
    if !REGISTERING.swap(true, Ordering::AcqRel) {
        // SAFETY: the handler only stores getpid's answer.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(in_forked_child)) } == 0;
        if registered {
            // (A child forked before this store has its own id from the
            // handler; one forked before the handler was in place keeps
            // asking the kernel, and is right too.)
            let _ =
                PID.compare_exchange(0, std::process::id(), Ordering::AcqRel, Ordering::Acquire);
        }
    }
    std::process::id()
}

#[cfg(test)]
mod tests {
    use super::id;

    #[test]
    fn the_id_is_the_kernels_in_this_process_and_in_a_forked_child() {
        let parent = id();
        assert_eq!(parent, std::process::id());
        assert_eq!(id(), parent, "read from memory the second time");
        // SAFETY: the child only reads memory, calls getpid and exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let own = unsafe { libc::getpid() } as u32;
            let code = if id() == own && own != parent { 0 } else { 1 };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "the child did not exit: {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the forked child read its parent's id"
        );
    }
}
