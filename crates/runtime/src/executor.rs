//! Where guest code runs: never on a thread of the async runtime.
//!
//! wasmtime-wasi serves WASI's blocking calls (a write to stdout or stderr, a sleep, a `poll`,
//! creating a socket) by blocking on a future with `in_tokio`: inside a tokio context it calls
//! `Handle::block_on`, which panics on a runtime worker thread ("Cannot start a runtime from
//! within a runtime"); outside any tokio context it drives the future on a runtime of its own.
//! So every guest call made from inside a tokio context (a per-profile loop, an upload handler,
//! a `spawn_blocking` task) runs on a plain OS thread of its own, and the caller waits for it
//! without holding up a worker (`block_in_place` on a multi-thread runtime). A call made with no
//! tokio context (a backtest, `keel bench`, `keel plugin check`) runs right where it is: there is
//! nothing to protect, and a candle costs no thread handoff.
//!
//! Every guest call is bounded in wall-clock time (the epoch deadline in Wasm code, the call's
//! deadline in a blocking `poll`), so a caller never waits on a guest without a bound. A panic
//! on the guest's path (a host bug reached by a plugin) becomes a [`PluginFault::Trap`]: the
//! instance involved is dropped by the caller, the process goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};

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
    let on_own_thread = || {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("keel-plugin".to_string())
                .stack_size(GUEST_THREAD_STACK_BYTES)
                .spawn_scoped(scope, job)
                .map_err(|e| PluginFault::Trap(format!("host: starting a plugin thread: {e}")))?;
            thread.join().map_err(panic_fault)
        })
    };
    match handle.runtime_flavor() {
        // Hands this worker's other tasks to another thread while the guest runs.
        RuntimeFlavor::MultiThread => tokio::task::block_in_place(on_own_thread),
        // A current-thread runtime has no other worker to hand tasks to: the wait is bounded by
        // the call's deadline.
        _ => on_own_thread(),
    }
}

fn panic_fault(payload: Box<dyn std::any::Any + Send>) -> PluginFault {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_string());
    tracing::error!(%message, "panic on a plugin's call path: the instance is dropped");
    PluginFault::Trap(format!("host panicked during the call: {message}"))
}
