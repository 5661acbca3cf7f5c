//! Which worker thread the code runs on, and state kept once per worker ([`PerWorker`]).
//!
//! A Sluice process serves on worker threads that each own a single-threaded runtime and the
//! connections accepted on it. State that a request touches on every exchange, such as an
//! upstream's pool of idle connections, is kept once per worker: a request reaches its own
//! worker's copy without a lock, and a pooled connection is only ever driven by the thread that
//! opened it, so reusing it wakes no other thread. Threads that are not workers (the control
//! plane: admin, reloads, health checks; tests) share one further slot.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// 0 on threads that are not workers; worker `n` has slot `n + 1`.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Worker threads this process runs; 0 until [`set_workers`] is called.
static WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Records how many worker threads the process runs, before any [`PerWorker`] is made; later
/// calls are ignored, as values made already were sized by the first.
pub fn set_workers(workers: usize) {
    let _ = WORKERS.compare_exchange(0, workers.max(1), Ordering::AcqRel, Ordering::Acquire);
}

/// How many worker threads the process runs: as set, else one per available core.
pub fn workers() -> usize {
    match WORKERS.load(Ordering::Acquire) {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        set => set,
    }
}

/// Marks the calling thread as worker `index` (from 0) for the rest of its life.
pub fn enter(index: usize) {
    SLOT.with(|slot| slot.set(index + 1));
}

/// The calling thread's worker index, or `None` off the workers.
pub fn current() -> Option<usize> {
    SLOT.with(Cell::get).checked_sub(1)
}

/// One `T` per worker thread plus one shared by the other threads, each made on first use
/// from the thread that uses it.
pub struct PerWorker<T> {
    slots: Box<[OnceLock<T>]>,
    make: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T> PerWorker<T> {
    /// Slots for every worker of the process ([`workers`]), filled by `make` on first use.
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        let slots = (0..=workers()).map(|_| OnceLock::new()).collect();
        Self { slots, make: Box::new(make) }
    }

    /// One `T` shared by every thread: for state that must not be split between workers.
    pub fn shared(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self { slots: vec![OnceLock::new()].into_boxed_slice(), make: Box::new(make) }
    }

    /// The calling thread's `T`. A worker beyond the count this was sized for (none in a
    /// process that called [`set_workers`] first) shares a slot rather than failing.
    pub fn get(&self) -> &T {
        let slot = SLOT.with(Cell::get) % self.slots.len();
        self.slots[slot].get_or_init(|| (self.make)())
    }
}

impl<T> std::fmt::Debug for PerWorker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerWorker").field("slots", &self.slots.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn each_worker_gets_its_own_value_and_other_threads_share_one() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let values = Arc::new(PerWorker::new(move || counter.fetch_add(1, Ordering::Relaxed)));
        let shared = *values.get();
        assert_eq!(*values.get(), shared, "the same thread gets the same value");
        let on_other_thread = {
            let values = values.clone();
            std::thread::spawn(move || *values.get()).join().unwrap()
        };
        assert_eq!(on_other_thread, shared, "threads that are not workers share a slot");
        let on_worker = {
            let values = values.clone();
            std::thread::spawn(move || {
                enter(0);
                assert_eq!(current(), Some(0));
                (*values.get(), *values.get())
            })
            .join()
            .unwrap()
        };
        assert_ne!(on_worker.0, shared, "a worker has its own value");
        assert_eq!(on_worker.0, on_worker.1);
        assert_eq!(made.load(Ordering::Relaxed), 2);
        assert_eq!(current(), None);
    }
}
