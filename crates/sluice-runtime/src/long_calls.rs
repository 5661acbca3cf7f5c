//! Long calls: guest calls still running after their first milliseconds of CPU.
//!
//! A filter call is usually a few microseconds and runs on the proxy's worker thread, inline in
//! the request. One that keeps running (a filter that spins, or a heavy but legitimate one) is
//! moved, at its next pause, to threads of its own that run at the lowest CPU priority (by
//! default; see [`LongCallPriority`]): on a busy machine the proxy's workers, with everyone's
//! short calls, always come first, and a tenant whose filters spin only gets CPU that nobody
//! else wants. A call's CPU time is the kernel's count for its thread ([`CallClock`]), so a call
//! that waits for a CPU is neither charged for the wait nor taken for a long one.
//!
//! A call moves as a whole: its future (which owns the instance) is handed over between two
//! polls, and the caller awaits its end. Dropping the caller cancels it there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::metering::nanos;
use tokio::task::JoinHandle;

/// What a call's future shares with its epoch callback and its host calls.
#[derive(Debug)]
pub(crate) struct CallClock {
    /// Set by the epoch callback once the call is long: it moves at its next pause.
    move_requested: AtomicBool,
    /// Set when the call has moved to a long-call thread.
    moved: AtomicBool,
    /// The thread's CPU time (in ns, plus one) when the call was last charged or resumed on it;
    /// 0 before the first measurement on a worker.
    measured_from: AtomicU64,
    /// When the call started or last resumed on a worker, in wall-clock time (ns after
    /// [`wall_nanos`]'s origin): the start of a stretch the kernel's count has not measured yet.
    resumed_at: AtomicU64,
    /// Guest time charged to the current call so far.
    used_ns: AtomicU64,
    /// Whether the current call reads the kernel's count when it starts and resumes, rather
    /// than taking wall-clock time for the stretch until its first charge (see [`Self::restart`]).
    exact: AtomicBool,
    /// The runtime the call came from: callouts made from a long-call thread are sent from there,
    /// so that the connections they open and pool are driven by the proxy's workers.
    home: Mutex<Option<Handle>>,
    /// Where the call moves to.
    threads: Arc<LongCallThreads>,
}

impl CallClock {
    /// A clock for calls that move to `threads` when they turn long.
    pub(crate) fn new(threads: Arc<LongCallThreads>) -> Self {
        Self {
            move_requested: AtomicBool::new(false),
            moved: AtomicBool::new(false),
            measured_from: AtomicU64::new(0),
            resumed_at: AtomicU64::new(0),
            used_ns: AtomicU64::new(0),
            exact: AtomicBool::new(false),
            home: Mutex::new(None),
            threads,
        }
    }

    /// Readies the clock for a call, which starts at `started`: on the worker, not asked to
    /// move. Reading the kernel's count costs a system call (about half a microsecond here),
    /// more than many whole calls, so an `exact` call (one of a filter whose calls usually take
    /// long enough for that not to matter, see `metering::Usage::typical_call`) reads it now,
    /// and another is measured in wall-clock time until its first epoch tick, if it has one.
    /// On a worker that was not preempted that is its CPU time; on an overloaded machine it
    /// charges the wait for a CPU too, at most one tick of it, and only to a call that is short.
    pub(crate) fn restart(&self, started: Instant, exact: bool) {
        self.move_requested.store(false, Ordering::Relaxed);
        self.moved.store(false, Ordering::Relaxed);
        self.exact.store(exact, Ordering::Relaxed);
        self.used_ns.store(0, Ordering::Relaxed);
        self.start_stretch(started);
    }

    /// A stretch on a worker starts: measured from here.
    fn start_stretch(&self, at: Instant) {
        if self.exact.load(Ordering::Relaxed) {
            self.measured_from.store(thread_cpu_nanos() + 1, Ordering::Relaxed);
        } else {
            self.measured_from.store(0, Ordering::Relaxed);
            self.resumed_at.store(wall_nanos(at), Ordering::Relaxed);
        }
    }

    /// Wall-clock time since the call started or resumed on a worker, at most one epoch tick:
    /// the first tick comes within one unless the thread waited for a CPU (or the ticker did),
    /// and a call is not charged, nor failed for its CPU limit, for waiting.
    fn since_resumed(&self) -> Duration {
        let now = wall_nanos(Instant::now());
        Duration::from_nanos(now.saturating_sub(self.resumed_at.load(Ordering::Relaxed))).min(crate::EPOCH_TICK)
    }

    /// Asks for the call to move to a long-call thread at its next pause; false if it already
    /// had.
    pub(crate) fn request_move(&self) -> bool {
        !self.move_requested.swap(true, Ordering::Relaxed)
    }

    /// The guest time used since the last charge, as the kernel counts this thread's CPU time
    /// (the first charge of a stretch that is not exact: the wall-clock time since it started).
    pub(crate) fn charge(&self) -> Duration {
        let now = thread_cpu_nanos() + 1;
        let used = match self.measured_from.swap(now, Ordering::Relaxed) {
            0 => self.since_resumed(),
            from => Duration::from_nanos(now.saturating_sub(from)),
        };
        self.used_ns.fetch_add(nanos(used), Ordering::Relaxed);
        used
    }

    /// The guest time the call used in all, as it returns (on the thread it ran on last): what
    /// it was charged, and the stretch since its last charge. Measuring starts over from here,
    /// for a next call on the same clock.
    pub(crate) fn finish(&self) -> Duration {
        let rest = match self.measured_from.load(Ordering::Relaxed) {
            0 => {
                let rest = self.since_resumed();
                self.resumed_at.store(wall_nanos(Instant::now()), Ordering::Relaxed);
                rest
            }
            from => {
                let now = thread_cpu_nanos() + 1;
                self.measured_from.store(now, Ordering::Relaxed);
                Duration::from_nanos(now.saturating_sub(from))
            }
        };
        Duration::from_nanos(self.used_ns.swap(0, Ordering::Relaxed)) + rest
    }

    /// The proxy runtime to send callouts from, when the call runs on a long-call thread.
    pub(crate) fn home(&self) -> Option<Handle> {
        if !self.moved.load(Ordering::Relaxed) {
            return None;
        }
        self.home.lock().ok()?.clone()
    }
}

/// The lanes a long call holds (see `LongCallLane`).
pub(crate) struct LongCallPermits {
    _tenant: tokio::sync::OwnedSemaphorePermit,
    _everyone: tokio::sync::OwnedSemaphorePermit,
}

impl LongCallPermits {
    /// Waits (paused, not spinning) for `tenant`'s lane and then for one of everyone's.
    pub(crate) async fn acquire(
        tenant: Arc<tokio::sync::Semaphore>,
        everyone: Arc<tokio::sync::Semaphore>,
    ) -> Option<Self> {
        let tenant = tenant.acquire_owned().await.ok()?;
        let everyone = everyone.acquire_owned().await.ok()?;
        Some(Self { _tenant: tenant, _everyone: everyone })
    }
}

/// Runs a guest call: inline, and on a long-call thread from the pause after the epoch callback
/// asked for it (see [`CallClock::request_move`]).
pub(crate) fn run<T: Send + 'static>(
    clock: Arc<CallClock>,
    exact: bool,
    call: impl Future<Output = T> + Send + 'static,
) -> impl Future<Output = T> + Send {
    clock.restart(Instant::now(), exact);
    GuestCall { clock, place: Place::Inline(Box::pin(call)) }
}

/// Whether this thread is a long-call thread.
#[cfg(test)]
fn on_long_call_thread() -> bool {
    ON_LONG_CALL_THREAD.get()
}

// Per thread, as the kernel schedules them: whether this OS thread is one of the long-call
// threads (set when each starts).
thread_local! {
    static ON_LONG_CALL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

type BoxedCall<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct GuestCall<T> {
    clock: Arc<CallClock>,
    place: Place<T>,
}

enum Place<T> {
    Inline(BoxedCall<T>),
    Moved(JoinHandle<T>),
    Done,
}

impl<T: Send + 'static> Future for GuestCall<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        loop {
            match &mut this.place {
                Place::Inline(call) => {
                    if this.clock.measured_from.load(Ordering::Relaxed) == 0 {
                        this.clock.start_stretch(Instant::now());
                    }
                    if let Poll::Ready(value) = call.as_mut().poll(cx) {
                        this.place = Place::Done;
                        return Poll::Ready(value);
                    }
                    // Paused on a worker, the call may resume on another one, whose CPU clock is
                    // not this one's: measuring starts over when it resumes.
                    this.clock.measured_from.store(0, Ordering::Relaxed);
                    if !this.clock.move_requested.load(Ordering::Relaxed) {
                        return Poll::Pending;
                    }
                    let Some(threads) = this.clock.threads.runtime() else { return Poll::Pending };
                    let Place::Inline(call) = std::mem::replace(&mut this.place, Place::Done) else { unreachable!() };
                    if let Ok(mut home) = this.clock.home.lock() {
                        *home = Handle::try_current().ok();
                    }
                    this.clock.moved.store(true, Ordering::Relaxed);
                    this.place = Place::Moved(threads.spawn(OnLongCallThread { clock: this.clock.clone(), call }));
                }
                Place::Moved(handle) => {
                    return match Pin::new(handle).poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(finished) => {
                            this.place = Place::Done;
                            match finished {
                                Ok(value) => Poll::Ready(value),
                                // The guest call itself panicked: carry the panic to the caller.
                                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                                Err(err) => panic!("a long call was cancelled while awaited: {err}"),
                            }
                        }
                    };
                }
                Place::Done => panic!("a guest call polled after it ended"),
            }
        }
    }
}

impl<T> Drop for GuestCall<T> {
    fn drop(&mut self) {
        // The request went away: the call (and the instance it owns) ends at its next pause.
        if let Place::Moved(handle) = &self.place {
            handle.abort();
        }
    }
}

/// A call on a long-call thread: notes the thread's CPU time at each resumption (each poll may
/// be on another of the threads).
struct OnLongCallThread<T> {
    clock: Arc<CallClock>,
    call: BoxedCall<T>,
}

impl<T> Future for OnLongCallThread<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.clock.measured_from.store(thread_cpu_nanos() + 1, Ordering::Relaxed);
        self.call.as_mut().poll(cx)
    }
}

/// One runtime's long-call threads: one per CPU, at the chosen priority, started with the first
/// long call and kept until the runtime is dropped.
#[derive(Debug)]
pub struct LongCallThreads {
    /// The priority the threads take when they start.
    priority: Mutex<LongCallPriority>,
    /// The threads, once started, with the priority they started at (`None`: they could not
    /// start, and long calls stay on the workers).
    started: OnceLock<(LongCallPriority, Option<tokio::runtime::Runtime>)>,
}

impl LongCallThreads {
    pub(crate) fn new() -> Self {
        Self { priority: Mutex::new(LongCallPriority::Idle), started: OnceLock::new() }
    }

    /// How many long calls run at once, all tenants together: one per CPU.
    pub(crate) fn count() -> usize {
        std::thread::available_parallelism().map_or(1, |cpus| cpus.get())
    }

    /// Sets the priority of the long-call threads. It holds from their start, with the first long
    /// call: an unprivileged thread may lower its priority but never raise it again, so a change
    /// after that takes a restart. Returns whether the running threads have it.
    pub fn set_priority(&self, priority: LongCallPriority) -> bool {
        if let Ok(mut chosen) = self.priority.lock() {
            *chosen = priority;
        }
        match self.started.get() {
            None => true,
            Some((started, _)) => *started == priority,
        }
    }

    fn runtime(&self) -> Option<&tokio::runtime::Runtime> {
        let (_, threads) = self.started.get_or_init(|| {
            let priority = self.priority.lock().map_or(LongCallPriority::Idle, |chosen| *chosen);
            let threads = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(Self::count())
                .thread_name("sluice-long-call")
                .on_thread_start(move || {
                    ON_LONG_CALL_THREAD.set(true);
                    lower_this_threads_priority(priority);
                })
                .enable_all()
                .build()
                .inspect_err(|err| tracing::error!(error = %err, "cannot start long-call threads: long calls stay on the workers"))
                .ok();
            (priority, threads)
        });
        threads.as_ref()
    }
}

impl Drop for LongCallThreads {
    fn drop(&mut self) {
        // The last handle may go inside an async context, where a runtime may not block on its
        // threads: let them end on their own.
        if let Some((_, Some(threads))) = self.started.take() {
            threads.shutdown_background();
        }
    }
}

/// How long calls run next to the proxy's workers (`[server] long_call_priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongCallPriority {
    /// Linux `SCHED_IDLE`: only CPU nobody else wants, and any other thread that wakes takes the
    /// CPU at once. The strongest isolation; on a host shared with other busy processes, long
    /// calls wait for them too.
    #[default]
    Idle,
    /// Ordinary scheduling at this niceness (0 to 19): a share of the CPU against the workers'
    /// 0, about 10% of theirs at 10 and 1.5% at 19.
    Niceness(u8),
}

fn lower_this_threads_priority(priority: LongCallPriority) {
    let lowered = match priority {
        LongCallPriority::Idle => {
            use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            let thread = thread_priority::thread_native_id();
            thread_priority::set_thread_priority_and_policy(thread, ThreadPriority::Min, idle)
                .map_err(|err| format!("{err:?}"))
        }
        // On Linux a thread id names one thread for `setpriority`: only this thread is lowered.
        LongCallPriority::Niceness(niceness) => {
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), i32::from(niceness.min(19)))
                .map_err(|err| err.to_string())
        }
    };
    if let Err(err) = lowered {
        tracing::warn!(error = %err, ?priority, "cannot lower the priority of a long-call thread");
    }
}

/// `at` in nanoseconds after a fixed origin of this process, to keep in an atomic.
fn wall_nanos(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    nanos(at.saturating_duration_since(origin)) + 1
}

/// CPU time this thread has used, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins on its thread for `spin` of CPU, yielding to the executor every 100 µs, and says
    /// where it ran.
    async fn spin(spin: Duration, clock: Arc<CallClock>, move_after: usize) -> (bool, Duration) {
        let mut charged = Duration::ZERO;
        let mut rounds = 0;
        while charged < spin {
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_micros(100) {
                std::hint::spin_loop();
            }
            charged += clock.charge();
            rounds += 1;
            if rounds == move_after {
                clock.request_move();
            }
            tokio::task::yield_now().await;
        }
        (on_long_call_thread(), charged)
    }

    /// These tests are about where calls run, not their priority: at the default (idle) one they
    /// would wait for any busy process on the machine.
    fn clock_at_ordinary_priority() -> Arc<CallClock> {
        let threads = Arc::new(LongCallThreads::new());
        threads.set_priority(LongCallPriority::Niceness(0));
        Arc::new(CallClock::new(threads))
    }

    #[tokio::test]
    async fn a_call_that_asks_to_move_finishes_on_a_long_call_thread_and_is_charged_its_cpu_time() {
        let clock = clock_at_ordinary_priority();
        let (moved, charged) = run(clock.clone(), false, spin(Duration::from_millis(5), clock.clone(), 3)).await;
        assert!(moved, "the call ended on a long-call thread");
        assert!(charged >= Duration::from_millis(5));
        assert!(clock.home().is_some(), "callouts go back to the runtime the call came from");

        // The same clock, reused for the next call, starts on the worker again.
        let (moved, _) = run(clock.clone(), false, spin(Duration::from_millis(1), clock.clone(), usize::MAX)).await;
        assert!(!moved, "a call that never asks stays inline");
        assert!(clock.home().is_none());
    }

    #[tokio::test]
    async fn dropping_a_moved_call_cancels_it_there() {
        let clock = clock_at_ordinary_priority();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let endless = {
            let clock = clock.clone();
            async move {
                let _tell_when_dropped = dropped_tx;
                clock.request_move();
                loop {
                    tokio::task::yield_now().await;
                }
            }
        };
        let mut call = Box::pin(run(clock, false, endless));
        // Poll until it has moved (its first pause), then drop it.
        std::future::poll_fn(|cx| {
            let _ = call.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
        drop(call);
        assert!(dropped_rx.await.is_err(), "the moved call was dropped on its thread");
    }

    #[tokio::test]
    #[should_panic(expected = "guest host bug")]
    async fn a_panic_in_a_moved_call_reaches_the_caller() {
        let clock = clock_at_ordinary_priority();
        let panicking = {
            let clock = clock.clone();
            async move {
                clock.request_move();
                tokio::task::yield_now().await;
                panic!("guest host bug");
            }
        };
        run(clock, false, panicking).await;
    }
}
