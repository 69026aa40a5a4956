//! The kernel's clock as plugins see it: through `clock.now-ms` and WASI's wall and monotonic
//! clocks alike, so a backtest replays with its virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of kernel time, milliseconds since the Unix epoch.
pub trait KernelClock: Send + Sync {
    /// The current kernel time.
    fn now_ms(&self) -> i64;
}

/// Wall time of the machine, for live and paper trading.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl KernelClock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock the kernel moves by hand: backtests and tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock {
            now_ms: AtomicI64::new(now_ms),
        }
    }

    /// Moves the clock to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::Release);
    }
}

impl KernelClock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::Acquire)
    }
}

/// WASI's wall clock, reading the kernel's clock.
pub(crate) struct WasiWallClock(pub Arc<dyn KernelClock>);

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
    pub clock: Arc<dyn KernelClock>,
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
