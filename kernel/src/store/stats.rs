//! Counters the store keeps for the metrics layer: lock contention, latency and TTL expiries,
//! stale fences, capital-invariant refusals and replays. Plain atomics, read with
//! [`StoreStats::snapshot`]; [`crate::metrics::Metrics::observe_store`] exposes them at
//! `/metrics` by reading a snapshot at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::lifecycle::LifecycleError;
use crate::lock::LockKind;

use super::{Constraint, StoreError};

/// Upper bounds (inclusive, microseconds) of the lock acquisition latency histogram buckets.
/// The last bucket counts everything slower.
pub const LOCK_LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Live counters of one [`Store`](super::Store), shared by all its clones.
#[derive(Debug, Default)]
pub struct StoreStats {
    lock_acquired: [AtomicU64; 3],
    lock_contended: [AtomicU64; 3],
    lock_lost: [AtomicU64; 3],
    lock_ttl_expiries: [AtomicU64; 3],
    lock_latency_buckets: [[AtomicU64; LOCK_LATENCY_BUCKETS_US.len() + 1]; 3],
    lock_latency_sum_us: [AtomicU64; 3],
    lock_latency_count: [AtomicU64; 3],
    stale_fence_rejections: AtomicU64,
    capital_check_refusals: AtomicU64,
    capital_constraint_violations: AtomicU64,
    budget_check_refusals: AtomicU64,
    budget_constraint_violations: AtomicU64,
    replay_duplicates: AtomicU64,
    replay_mismatches: AtomicU64,
    ledger_rebuild_differences: AtomicU64,
}

/// A copy of the counters at one moment. Histogram buckets are per bucket, not cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStatsSnapshot {
    /// Leases granted, by kind (entry, reconciliation, profile lease).
    pub lock_acquired: [u64; 3],
    /// Acquisitions refused because another owner held the lease, by kind.
    pub lock_contended: [u64; 3],
    /// Renewals that found the lease expired or taken over, by kind.
    pub lock_lost: [u64; 3],
    /// Grants that took over a lease its holder had let expire (it neither renewed nor
    /// released it), by kind.
    pub lock_ttl_expiries: [u64; 3],
    /// Acquisition attempts per latency bucket ([`LOCK_LATENCY_BUCKETS_US`], then overflow), by
    /// kind.
    pub lock_latency_buckets: [Vec<u64>; 3],
    /// Sum of acquisition latencies, microseconds, by kind.
    pub lock_latency_sum_us: [u64; 3],
    /// Number of acquisition attempts timed, by kind.
    pub lock_latency_count: [u64; 3],
    /// Writes refused because they carried a stale fence (kernel check or database trigger).
    pub stale_fence_rejections: u64,
    /// Operations the kernel refused because they would break the capital invariant.
    pub capital_check_refusals: u64,
    /// Writes the database refused by the `capital_invariant` or a `capital_*_nonnegative` CHECK
    /// (the kernel check missed).
    pub capital_constraint_violations: u64,
    /// Allocations and grants the kernel refused because they would break a capital budget.
    pub budget_check_refusals: u64,
    /// Writes the database refused by a `capital_budgets` CHECK or its trigger (the kernel
    /// check missed).
    pub budget_constraint_violations: u64,
    /// Replayed write-aheads, fills and status reports that changed nothing.
    pub replay_duplicates: u64,
    /// Replays refused because their payload differed from the original.
    pub replay_mismatches: u64,
    /// Ledger rebuilds that found the capital row different from its journal.
    pub ledger_rebuild_differences: u64,
}

/// How one acquisition attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockGrant {
    /// Another owner's lease was live.
    Refused,
    /// Granted: nobody held the lock.
    Free,
    /// Granted over a lease whose holder let its TTL run out.
    TookOverExpired,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl StoreStats {
    /// Records one lock acquisition attempt and how long it took.
    pub(crate) fn lock_attempt(&self, kind: LockKind, grant: LockGrant, latency: Duration) {
        let k = kind.index();
        match grant {
            LockGrant::Refused => bump(&self.lock_contended[k]),
            LockGrant::Free => bump(&self.lock_acquired[k]),
            LockGrant::TookOverExpired => {
                bump(&self.lock_acquired[k]);
                bump(&self.lock_ttl_expiries[k]);
            }
        }
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LOCK_LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| latency_us <= bound)
            .unwrap_or(LOCK_LATENCY_BUCKETS_US.len());
        bump(&self.lock_latency_buckets[k][bucket]);
        self.lock_latency_sum_us[k].fetch_add(latency_us, Ordering::Relaxed);
        bump(&self.lock_latency_count[k]);
    }

    /// Records a renewal that found the lease gone.
    pub(crate) fn lock_lost(&self, kind: LockKind) {
        bump(&self.lock_lost[kind.index()]);
    }

    /// Records a replay that changed nothing.
    pub(crate) fn replay_duplicate(&self) {
        bump(&self.replay_duplicates);
    }

    /// Records a rebuild that found a difference.
    pub(crate) fn rebuild_difference(&self) {
        bump(&self.ledger_rebuild_differences);
    }

    /// Counts what an operation's error says about the invariants, then hands it back.
    pub(crate) fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            match error {
                StoreError::Ledger(crate::ledger::LedgerError::InsufficientCapital { .. }) => {
                    bump(&self.capital_check_refusals)
                }
                StoreError::Constraint(
                    Constraint::CapitalInvariant | Constraint::CapitalNonNegative(_),
                ) => bump(&self.capital_constraint_violations),
                StoreError::Ledger(
                    crate::ledger::LedgerError::OverBudget { .. }
                    | crate::ledger::LedgerError::GrantOutOfRange { .. },
                ) => bump(&self.budget_check_refusals),
                StoreError::Constraint(Constraint::Budget(_)) => {
                    bump(&self.budget_constraint_violations)
                }
                StoreError::Lock(crate::lock::LockError::StaleFence { .. })
                | StoreError::Constraint(Constraint::CurrentFence) => {
                    bump(&self.stale_fence_rejections)
                }
                StoreError::Lifecycle(
                    LifecycleError::ReplayMismatch(_) | LifecycleError::FillReplayMismatch(_),
                ) => bump(&self.replay_mismatches),
                _ => {}
            }
        }
        result
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StoreStatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreStatsSnapshot {
            lock_acquired: self.lock_acquired.each_ref().map(load),
            lock_contended: self.lock_contended.each_ref().map(load),
            lock_lost: self.lock_lost.each_ref().map(load),
            lock_ttl_expiries: self.lock_ttl_expiries.each_ref().map(load),
            lock_latency_buckets: self
                .lock_latency_buckets
                .each_ref()
                .map(|buckets| buckets.iter().map(load).collect()),
            lock_latency_sum_us: self.lock_latency_sum_us.each_ref().map(load),
            lock_latency_count: self.lock_latency_count.each_ref().map(load),
            stale_fence_rejections: load(&self.stale_fence_rejections),
            capital_check_refusals: load(&self.capital_check_refusals),
            capital_constraint_violations: load(&self.capital_constraint_violations),
            budget_check_refusals: load(&self.budget_check_refusals),
            budget_constraint_violations: load(&self.budget_constraint_violations),
            replay_duplicates: load(&self.replay_duplicates),
            replay_mismatches: load(&self.replay_mismatches),
            ledger_rebuild_differences: load(&self.ledger_rebuild_differences),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_its_bucket() {
        let stats = StoreStats::default();
        stats.lock_attempt(LockKind::Entry, LockGrant::Free, Duration::from_micros(300));
        stats.lock_attempt(LockKind::Entry, LockGrant::Refused, Duration::from_secs(5));
        stats.lock_attempt(
            LockKind::ProfileLease,
            LockGrant::TookOverExpired,
            Duration::from_micros(50),
        );
        let snap = stats.snapshot();
        assert_eq!(snap.lock_acquired, [1, 0, 1]);
        assert_eq!(snap.lock_contended, [1, 0, 0]);
        assert_eq!(snap.lock_ttl_expiries, [0, 0, 1]);
        assert_eq!(snap.lock_latency_buckets[0][2], 1);
        assert_eq!(
            snap.lock_latency_buckets[0][LOCK_LATENCY_BUCKETS_US.len()],
            1
        );
        assert_eq!(snap.lock_latency_buckets[2][0], 1);
        assert_eq!(snap.lock_latency_count, [2, 0, 1]);
    }

    #[test]
    fn a_budget_refused_by_the_database_is_counted_apart_from_the_kernels() {
        let stats = StoreStats::default();
        let database: Result<(), StoreError> = Err(StoreError::Constraint(Constraint::from_name(
            "capital_budgets_within_grant",
        )));
        let _ = stats.observe(database);
        let kernel: Result<(), StoreError> =
            Err(StoreError::Ledger(crate::ledger::LedgerError::OverBudget {
                requested: 2.into(),
                available: 1.into(),
                granted: 1.into(),
                allocated: 0.into(),
            }));
        let _ = stats.observe(kernel);
        let snap = stats.snapshot();
        assert_eq!(snap.budget_constraint_violations, 1);
        assert_eq!(snap.budget_check_refusals, 1);
        assert_eq!(snap.capital_constraint_violations, 0);
    }
}
