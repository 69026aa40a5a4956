//! Where guest code runs: never on a thread of the async runtime.
//!
//! wasmtime-wasi serves WASI's blocking calls (a write to stdout or stderr, a sleep, a `poll`,
//! creating a socket) by blocking on a future with `in_tokio`: inside a tokio context it calls
//! `Handle::block_on`, which panics on a runtime worker thread ("Cannot start a runtime from
//! within a runtime"); outside any tokio context it drives the future on a runtime of its own.
//! So a guest call made from inside a multi-thread runtime (a per-profile loop, an upload
//! handler, a `spawn_blocking` task, a backtest under `#[tokio::main]`) runs in
//! `block_in_place`: out of the runtime's context, with the worker's other tasks handed to
//! another thread, so a slow plugin delays only its own profile. Inside a current-thread runtime
//! it runs on a plain OS thread of its own. A call made with no tokio context runs right where
//! it is: there is nothing to protect, and a candle costs no thread handoff.
//!
//! A profile whose calls keep a core busy (a legal plugin that computes, or calls the host,
//! for milliseconds per candle) would share the cores evenly with the host's own threads and
//! its neighbours' calls, and every one of them would wait for its turn. So such a profile's
//! calls run at low priority ([`run_guest_low`]): on a thread of their own under the kernel's
//! `SCHED_IDLE` policy, which any thread of the host or a light plugin preempts the moment it
//! wakes up (a lower niceness alone does not: the scheduler lets the running thread finish its
//! slice first, a millisecond or more per wake-up). With the cores otherwise idle the call still
//! gets them all; on a saturated machine it waits, and its deadline may end it: a heavy plugin
//! pays for its own weight. Any thread may take `SCHED_IDLE`, only a privileged one may leave
//! it, hence a thread per call (a few tens of microseconds beside a call of milliseconds).
//!
//! Every guest call is bounded in wall-clock time (the epoch deadline in Wasm code, the call's
//! deadline in a blocking `poll`), so a caller never waits on a guest without a bound. A panic
//! on the guest's path (a host bug reached by a plugin) becomes a [`PluginFault::Trap`]: the
//! instance involved is dropped by the caller, the process goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use keel_kernel::strategy::PluginFault;
use tokio::runtime::{Handle, RuntimeFlavor};

/// Stack of a guest thread, in bytes: wasmtime's Wasm stack (512 KiB by default) plus the host
/// frames around it, with room to spare.
const GUEST_THREAD_STACK_BYTES: usize = 4 << 20;

/// Runs `job`, which calls into a guest, off the async runtime's threads, and returns what it
/// returned; a panic inside `job` is caught and returned as a trap.
pub(crate) fn run_guest<R: Send>(job: impl FnOnce() -> R + Send) -> Result<R, PluginFault> {
    let Ok(handle) = Handle::try_current() else {
        return catch_unwind(AssertUnwindSafe(job)).map_err(panic_fault);
    };
    match handle.runtime_flavor() {
        // Leaves the runtime's context for the call: on a worker, the worker's other tasks move
        // to another thread first; on a thread blocked in `Runtime::block_on` (a backtest, a
        // benchmark) it costs next to nothing. WASI's blocking calls may then block here.
        RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| catch_unwind(AssertUnwindSafe(job)).map_err(panic_fault))
        }
        // A current-thread runtime has no other worker to hand its tasks to: the call runs on a
        // thread of its own, and the wait is bounded by the call's deadline.
        _ => on_thread_of_its_own("keel-plugin", job),
    }
}

/// [`run_guest`] at low priority, with the CPU time the call took: inside a tokio runtime `job`
/// runs on a thread of its own under `SCHED_IDLE`, which ends with the call. With no
/// tokio context there is nothing to protect and it runs where it is, like [`run_guest`].
pub(crate) fn run_guest_low<R: Send>(
    job: impl FnOnce() -> R + Send,
) -> Result<(R, Duration), PluginFault> {
    let Ok(handle) = Handle::try_current() else {
        return catch_unwind(AssertUnwindSafe(|| with_cpu_time(job))).map_err(panic_fault);
    };
    let low = || {
        on_thread_of_its_own("keel-plugin-low", || {
            lower_this_threads_priority();
            with_cpu_time(job)
        })
    };
    match handle.runtime_flavor() {
        RuntimeFlavor::MultiThread => tokio::task::block_in_place(low),
        _ => low(),
    }
}

/// Runs `job` on a new thread named `name` and waits for it; a panic inside `job` is caught
/// and returned as a trap.
fn on_thread_of_its_own<R: Send>(
    name: &str,
    job: impl FnOnce() -> R + Send,
) -> Result<R, PluginFault> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(GUEST_THREAD_STACK_BYTES)
            .spawn_scoped(scope, job)
            .map_err(|e| PluginFault::Trap(format!("host: starting a plugin thread: {e}")))?;
        thread.join().map_err(panic_fault)
    })
}

/// Runs `job` and returns what it returned with the CPU time the calling thread spent in it
/// (two system calls, unlike `Instant::now`).
pub(crate) fn with_cpu_time<R>(job: impl FnOnce() -> R) -> (R, Duration) {
    let started = thread_cpu_time();
    let value = job();
    (value, thread_cpu_time().saturating_sub(started))
}

/// Puts the calling thread under `SCHED_IDLE` (at the lowest niceness, which that policy
/// ignores); a refusal leaves it as it was (the call runs, at the host's priority).
fn lower_this_threads_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(error) =
        set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle)
    {
        tracing::debug!(?error, "could not lower a plugin thread's priority");
    }
}

/// CPU time the calling thread has used so far.
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_string())
}

fn panic_fault(payload: Box<dyn std::any::Any + Send>) -> PluginFault {
    let message = panic_message(payload.as_ref());
    tracing::error!(%message, "panic on a plugin's call path: the instance is dropped");
    PluginFault::Trap(format!("host panicked during the call: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> bool {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        thread_priority::thread_schedule_policy().unwrap()
            == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
    }

    fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
        if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        }
    }

    #[test]
    fn a_low_priority_call_runs_idle_and_leaves_the_callers_priority_alone() {
        for multi_thread in [true, false] {
            let (during, after, normal) = runtime(multi_thread).block_on(async {
                let (during, _cpu) = run_guest_low(idle).unwrap();
                (during, idle(), run_guest(idle).unwrap())
            });
            assert_eq!(
                (during, after, normal),
                (true, false, false),
                "multi-thread: {multi_thread}"
            );
        }
    }

    #[test]
    fn a_low_priority_call_reports_its_cpu_time_and_survives_a_panic() {
        let spin = || {
            let started = std::time::Instant::now();
            let mut turns = 0_u64;
            while started.elapsed() < Duration::from_millis(30) {
                turns = std::hint::black_box(turns + 1);
            }
            turns
        };
        let (turns, cpu) = runtime(true)
            .block_on(async { run_guest_low(spin) })
            .unwrap();
        assert!(turns > 0);
        assert!(cpu > Duration::from_millis(1), "a busy call used {cpu:?}");
        let fault = runtime(true)
            .block_on(async { run_guest_low(|| panic!("a host bug")) })
            .unwrap_err();
        assert!(matches!(fault, PluginFault::Trap(message) if message.contains("a host bug")));
    }
}
