//! The kernel's clock: the system clock live, a virtual clock in backtests and simulations.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the kernel sees them.
pub trait Clock: Send + Sync {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the system clock is after 1970");
        i64::try_from(since_epoch.as_millis()).expect("milliseconds fit i64 until year 292 million")
    }
}

/// A clock that moves only when told: backtests and simulations replay exactly.
#[derive(Debug, Default)]
pub struct VirtualClock {
    now_ms: AtomicI64,
}

impl VirtualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        VirtualClock {
            now_ms: AtomicI64::new(now_ms),
        }
    }

    /// Moves the clock to `now_ms`; it never moves backwards.
    pub fn advance_to(&self, now_ms: i64) {
        self.now_ms.fetch_max(now_ms, Ordering::SeqCst);
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_never_moves_backwards() {
        let clock = VirtualClock::new(10);
        clock.advance_to(5);
        assert_eq!(clock.now_ms(), 10);
        clock.advance_to(20);
        assert_eq!(clock.now_ms(), 20);
    }
}
