//! The kernel's clock as plugins see it: through `clock.now-ms` and WASI's wall and monotonic
//! clocks alike, so a backtest replays with its virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_kernel::engine::Clock;

/// WASI's wall clock, reading the kernel's clock.
pub(crate) struct WasiWallClock(pub Arc<dyn Clock>);

impl wasmtime_wasi::HostWallClock for WasiWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.now_ms()).unwrap_or(0))
    }
}

/// WASI's monotonic clock, in nanoseconds of kernel time. A kernel clock moved backwards
/// (a replay restarted) never makes it go back: it holds at the highest value shown.
pub(crate) struct WasiMonotonicClock {
    pub clock: Arc<dyn Clock>,
    pub highest_ns: AtomicU64,
}

impl wasmtime_wasi::HostMonotonicClock for WasiMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        let ms = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        let ns = ms.saturating_mul(1_000_000);
        self.highest_ns.fetch_max(ns, Ordering::AcqRel).max(ns)
    }
}
