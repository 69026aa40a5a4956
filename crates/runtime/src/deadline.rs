//! The call's wall-clock deadline, in Wasm code and inside WASI's blocking calls.
//!
//! A call's deadline is a tick of the engine's epoch ticker ([`Ticks`]): epoch interruption
//! stops Wasm code there, and starting a call reads no clock (a candle's call takes a fraction
//! of a microsecond, and two clock reads were a tenth of it). Epoch interruption does not stop a
//! guest blocked in the host: a `thread::sleep`, a `poll` or a `pollable.block` waits in
//! wasmtime-wasi for as long as the guest asked. This module shadows those two blocking
//! functions of `wasi:io/poll` with versions that give up when the call's deadline tick is due;
//! the call then ends with
//! [`PluginFault::Deadline`](keel_kernel::strategy::PluginFault::Deadline).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

use super::state::PluginState;

/// The `wasi:io/poll` instance wasmtime-wasi links (imports of older 0.2 versions resolve to
/// it).
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

/// A blocking WASI call reached the deadline of the call in progress.
#[derive(Debug, thiserror::Error)]
#[error("a blocking WASI call reached the call's deadline")]
pub(crate) struct CallDeadlineExceeded;

/// Replaces `poll` and `[method]pollable.block` of `wasi:io/poll` in `linker` (which already
/// holds WASI 0.2) with versions bounded by the call's deadline.
pub(crate) fn bound_blocking_polls(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    poll.func_wrap(
        "poll",
        |mut store, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state: &mut PluginState = store.data_mut();
            let deadline = state.deadline.due();
            until(deadline, state.table().poll(pollables)).map(|ready| (ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            let state: &mut PluginState = store.data_mut();
            let deadline = state.deadline.due();
            until(deadline, state.table().block(pollable))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Drives `work` to completion or to `deadline`, whichever comes first.
fn until<T>(
    deadline: Instant,
    work: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let deadline = tokio::time::Instant::from_std(deadline);
    in_tokio(async { tokio::time::timeout_at(deadline, work).await })
        .unwrap_or_else(|_| Err(CallDeadlineExceeded.into()))
}

/// The epoch ticker's count of ticks and when the last one came, shared by the engine's
/// instances: a call that starts at tick `n` with a deadline of `d` ticks ends at tick `n + d`
/// (wasmtime's epoch deadline, counted from the engine's epoch, which this count follows).
#[derive(Debug)]
pub(crate) struct Ticks {
    origin: Instant,
    period: Duration,
    count: AtomicU64,
    /// Nanoseconds from `origin` to the last tick.
    last_ns: AtomicU64,
}

impl Ticks {
    /// No tick yet; one is due every `period`.
    pub(crate) fn new(period: Duration) -> Self {
        Ticks {
            origin: Instant::now(),
            period,
            count: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Ticks so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// The time between two ticks.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    /// Counts a tick that came now (the ticker, once it advanced the engine's epoch).
    pub(crate) fn advance(&self) {
        let since_origin = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(since_origin, Ordering::Release);
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// When tick `number` is due: the last tick's instant plus a period for each tick still to
    /// come (the last tick's instant for one that came).
    pub(crate) fn due(&self, number: u64) -> Instant {
        let count = self.count();
        let since_origin = Duration::from_nanos(self.last_ns.load(Ordering::Acquire));
        let last = self.origin.checked_add(since_origin).unwrap_or(self.origin);
        let to_come = u32::try_from(number.saturating_sub(count)).unwrap_or(u32::MAX);
        last.checked_add(self.period.saturating_mul(to_come))
            .unwrap_or(last)
    }
}

/// The deadline of a store's calls: a tick of the engine's epoch ticker, set at each call's
/// start from the ticks a call may take.
#[derive(Debug)]
pub(crate) struct CallDeadline {
    ticks: Arc<Ticks>,
    /// The tick at which the call in progress must end.
    tick: u64,
}

impl CallDeadline {
    /// A deadline `allowed` ticks from now (instantiation may run guest code: a component's
    /// start functions).
    pub(crate) fn new(ticks: Arc<Ticks>, allowed: u64) -> Self {
        let tick = ticks.count().saturating_add(allowed);
        CallDeadline { ticks, tick }
    }

    /// Starts a call that may take `allowed` ticks; returns the tick it started at.
    pub(crate) fn start(&mut self, allowed: u64) -> u64 {
        let started = self.ticks.count();
        self.tick = started.saturating_add(allowed);
        started
    }

    /// When the call in progress must end.
    pub(crate) fn due(&self) -> Instant {
        self.ticks.due(self.tick)
    }

    /// The ticker the deadline counts on.
    pub(crate) fn ticks(&self) -> &Ticks {
        &self.ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_to_come_is_due_a_period_apart_from_the_last_one() {
        let ticks = Ticks::new(Duration::from_millis(5));
        ticks.advance();
        ticks.advance();
        let last = ticks.due(2);
        assert_eq!(ticks.count(), 2);
        assert_eq!(
            ticks.due(1),
            last,
            "a tick that came is due at the last one"
        );
        assert_eq!(ticks.due(5) - last, Duration::from_millis(15));
        assert!(last <= Instant::now());
    }
}
