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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use statehost_plugin_api::{Scope, StateKey};

use super::Calls;

/// Makes committed database changes durable before objects go.
pub type SyncFn = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How many times a delete refused by the in-flight cap is tried again.
const RETRIES: usize = 5;

struct Doomed {
    due: Instant,
    reference: String,
    owner: Option<(Scope, String)>,
    tries: usize,
}

enum Message {
    Delete(Doomed),
    /// Delete everything queued now, then answer.
    Flush(Sender<()>),
}

/// The delayed deleter of replaced objects.
pub struct Reaper {
    calls: Arc<Calls>,
    sync: Arc<SyncFn>,
    delay: Duration,
    capacity: usize,
    pending: Arc<AtomicUsize>,
    thread: Mutex<Option<(Sender<Message>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("delay", &self.delay)
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Deletes one object, logging what fails (gc collects it).
pub(crate) fn delete_now(
    calls: &Arc<Calls>,
    reference: String,
    owner: Option<(Scope, String)>,
) -> bool {
    let shown = reference.clone();
    let result = calls.run_plain("delete_object", move |backend| {
        let at = owner.as_ref().map(|(scope, key)| StateKey {
            scope: scope.as_ref(),
            key,
        });
        backend.delete_object(&reference, at)
    });
    match result {
        Ok(_) => true,
        Err(e) => {
            log::warn!(
                "backend `{}` could not delete the replaced object {shown:?} ({e}); gc will collect it",
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
            pending: Arc::new(AtomicUsize::new(0)),
            thread: Mutex::new(None),
        }
    }

    /// Queues the object at `reference` for deletion after the delay.
    /// `false` when the queue is full: delete it now instead.
    pub fn schedule(&self, reference: String, owner: Option<(Scope, String)>) -> bool {
        let capacity = self.capacity;
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_err()
        {
            return false;
        }
        let doomed = Doomed {
            due: Instant::now() + self.delay,
            reference,
            owner,
            tries: 0,
        };
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if thread.is_none() {
            match self.start() {
                Ok(started) => *thread = Some(started),
                Err(e) => {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    log::warn!("cannot start the thread that deletes replaced objects: {e}");
                    return false;
                }
            }
        }
        let sent = thread
            .as_ref()
            .is_some_and(|(sender, _)| sender.send(Message::Delete(doomed)).is_ok());
        if !sent {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Deletes everything queued now and waits until it is done.
    pub fn flush(&self) {
        let sender = self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(sender, _)| sender.clone());
        if let Some(sender) = sender {
            let (done, wait) = crossbeam_channel::bounded(1);
            if sender.send(Message::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// Objects waiting to be deleted.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    fn start(&self) -> std::io::Result<(Sender<Message>, JoinHandle<()>)> {
        let (sender, receiver) = crossbeam_channel::unbounded::<Message>();
        let calls = self.calls.clone();
        let sync = self.sync.clone();
        let pending = self.pending.clone();
        let handle = std::thread::Builder::new()
            .name("statehost-reaper".into())
            .spawn(move || {
                let mut queue: VecDeque<Doomed> = VecDeque::new();
                let reap = |queue: &mut VecDeque<Doomed>, all: bool| {
                    let now = Instant::now();
                    let due = queue
                        .iter()
                        .take_while(|d| all || d.due <= now)
                        .count();
                    if due == 0 {
                        return;
                    }
                    if let Err(e) = sync() {
                        log::warn!(
                            "cannot make the database's changes durable ({e}); replaced objects are left to gc"
                        );
                        pending.fetch_sub(due, Ordering::AcqRel);
                        queue.drain(..due);
                        return;
                    }
                    for mut doomed in queue.drain(..due).collect::<Vec<_>>() {
                        let (reference, owner) = (doomed.reference.clone(), doomed.owner.clone());
                        let result = calls.run_plain("delete_object", move |backend| {
                            let at = owner.as_ref().map(|(scope, key)| StateKey {
                                scope: scope.as_ref(),
                                key,
                            });
                            backend.delete_object(&reference, at)
                        });
                        match result {
                            Ok(_) => {}
                            Err(e) if doomed.tries < RETRIES && !all => {
                                log::debug!("deleting {:?} failed ({e}); trying again", doomed.reference);
                                doomed.tries += 1;
                                doomed.due = Instant::now() + Duration::from_secs(1 << doomed.tries);
                                queue.push_back(doomed);
                                continue;
                            }
                            Err(e) => log::warn!(
                                "backend `{}` could not delete the replaced object {:?} ({e}); gc will collect it",
                                calls.name(),
                                doomed.reference
                            ),
                        }
                        pending.fetch_sub(1, Ordering::AcqRel);
                    }
                };
                loop {
                    let message = match queue.front() {
                        Some(first) => {
                            let wait = first.due.saturating_duration_since(Instant::now());
                            match receiver.recv_timeout(wait) {
                                Ok(message) => Some(message),
                                Err(RecvTimeoutError::Timeout) => None,
                                Err(RecvTimeoutError::Disconnected) => {
                                    reap(&mut queue, true);
                                    return;
                                }
                            }
                        }
                        None => match receiver.recv() {
                            Ok(message) => Some(message),
                            Err(_) => return,
                        },
                    };
                    match message {
                        Some(Message::Delete(doomed)) => queue.push_back(doomed),
                        Some(Message::Flush(done)) => {
                            reap(&mut queue, true);
                            let _ = done.send(());
                        }
                        None => {}
                    }
                    reap(&mut queue, false);
                }
            })?;
        Ok((sender, handle))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((sender, handle)) = thread {
            // Closing the channel makes the thread delete what is queued
            // and end.
            drop(sender);
            let _ = handle.join();
        }
    }
}
