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
    match handle.runtime_flavor() {
        // Leaves the runtime's context for the call: on a worker, the worker's other tasks move
        // to another thread first; on a thread blocked in `Runtime::block_on` (a backtest, a
        // benchmark) it costs next to nothing. WASI's blocking calls may then block here.
        RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| catch_unwind(AssertUnwindSafe(job)).map_err(panic_fault))
        }
        // A current-thread runtime has no other worker to hand its tasks to: the call runs on a
        // thread of its own, and the wait is bounded by the call's deadline.
        _ => std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("keel-plugin".to_string())
                .stack_size(GUEST_THREAD_STACK_BYTES)
                .spawn_scoped(scope, job)
                .map_err(|e| PluginFault::Trap(format!("host: starting a plugin thread: {e}")))?;
            thread.join().map_err(panic_fault)
        }),
    }
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
