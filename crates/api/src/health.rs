//! The health the loops report: each loop's last run per profile, each profile's last snapshot,
//! and readiness. The host's loops write it; `/internal/health`, `/readyz` and the live feed read
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keel_kernel::engine::ProfileEngine;
use keel_kernel::ids::ProfileId;
use keel_kernel::metrics::Metrics;
use serde::Serialize;

/// The loops every profile runs; their names are the `loop` label of the loop metrics.
pub const LOOP_NAMES: [&str; 3] = ["trading", "monitor", "reconciliation"];

/// Timing of the loops.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// Time between reconciliation passes (one also runs at start, inside recovery).
    pub reconcile_interval_ms: u64,
    /// A loop whose last iteration is older than this is reported stalled (per loop name).
    pub trading_stall_ms: u64,
    /// Stall threshold of the monitor loop.
    pub monitor_stall_ms: u64,
    /// Stall threshold of the reconciliation loop.
    pub reconciliation_stall_ms: u64,
}

impl LoopConfig {
    /// The stall threshold of the loop `name`.
    pub fn stall_ms(&self, name: &str) -> u64 {
        match name {
            "trading" => self.trading_stall_ms,
            "monitor" => self.monitor_stall_ms,
            _ => self.reconciliation_stall_ms,
        }
    }
}

/// The last iteration of one loop of one profile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopRun {
    /// Wall time of the end of the last iteration, ms since the epoch (0: never ran).
    pub last_run_ms: i64,
    /// The error of the last iteration, if it failed.
    pub last_error: Option<String>,
}

/// What the loops report to the health endpoint, shared between the tasks and the server.
#[derive(Debug, Default)]
pub struct LoopHealth {
    runs: Mutex<HashMap<(ProfileId, &'static str), LoopRun>>,
    snapshots: Mutex<HashMap<ProfileId, ProfileSnapshot>>,
    recovered: Mutex<Vec<ProfileId>>,
    expected_profiles: Mutex<usize>,
    ready: AtomicBool,
    live: std::sync::OnceLock<Arc<crate::live::Bus>>,
}

/// What one profile looked like after its last step.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSnapshot {
    /// The profile's owner.
    pub user: keel_kernel::ids::UserId,
    /// Paused, killed or quarantined.
    pub controls: keel_kernel::engine::ProfileControls,
    /// Why entries are blocked, if they are.
    pub entry_block: Option<keel_kernel::risk::EntryBlock>,
    /// Free capital after the step.
    pub capital_free: rust_decimal::Decimal,
}

impl LoopHealth {
    /// Health for `profiles` profiles: ready once each has recovered.
    pub fn new(profiles: usize) -> Self {
        let health = LoopHealth::default();
        *health.expected_profiles.lock().expect("lock poisoned") = profiles;
        health
    }

    /// Makes the loops started with this health publish their steps to `bus`.
    pub fn publish_to(&self, bus: Arc<crate::live::Bus>) {
        let _ = self.live.set(bus);
    }

    /// The live feed of a profile, when the loops publish to a bus.
    pub fn feed(
        &self,
        profile: ProfileId,
        user: keel_kernel::ids::UserId,
    ) -> Option<crate::live::ProfileFeed> {
        self.live.get().map(|bus| bus.feed(profile, user))
    }

    /// Sets how many profiles must recover before the host is ready (an instance of several
    /// learns it after its first look at the directory); ready at once when they already have.
    pub fn expect_profiles(&self, profiles: usize, metrics: &Metrics) {
        *self.expected_profiles.lock().expect("lock poisoned") = profiles;
        if self.recovered.lock().expect("lock poisoned").len() >= profiles {
            self.ready.store(true, Ordering::Release);
            metrics.ready.set(1);
        }
    }

    /// Forgets a profile this instance no longer runs (its lease moved to another instance).
    pub fn forget(&self, profile: ProfileId) {
        let mut runs = self.runs.lock().expect("lock poisoned");
        runs.retain(|(p, _), _| *p != profile);
        drop(runs);
        let mut snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.remove(&profile);
        drop(snapshots);
        let mut recovered = self.recovered.lock().expect("lock poisoned");
        recovered.retain(|p| *p != profile);
    }

    /// Whether every profile has finished restart recovery.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The last run of every loop of every profile.
    pub fn runs(&self) -> Vec<(ProfileId, &'static str, LoopRun)> {
        let runs = self.runs.lock().expect("lock poisoned");
        runs.iter().map(|((p, l), r)| (*p, *l, r.clone())).collect()
    }

    /// The last snapshot of every profile.
    pub fn snapshots(&self) -> Vec<(ProfileId, ProfileSnapshot)> {
        let snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.iter().map(|(p, s)| (*p, s.clone())).collect()
    }

    pub fn record(&self, profile: ProfileId, name: &'static str, error: Option<String>) -> LoopRun {
        let run = LoopRun {
            last_run_ms: wall_now_ms(),
            last_error: error,
        };
        let mut runs = self.runs.lock().expect("lock poisoned");
        runs.insert((profile, name), run.clone());
        run
    }

    pub fn snapshot(&self, engine: &ProfileEngine) {
        let snapshot = ProfileSnapshot {
            user: engine.user(),
            controls: engine.controls(),
            entry_block: engine.entry_block(),
            capital_free: engine.book().capital.free(),
        };
        let mut snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.insert(engine.profile(), snapshot);
    }

    pub fn mark_recovered(&self, profile: ProfileId, metrics: &Metrics) {
        let mut recovered = self.recovered.lock().expect("lock poisoned");
        if !recovered.contains(&profile) {
            recovered.push(profile);
        }
        if recovered.len() >= *self.expected_profiles.lock().expect("lock poisoned") {
            self.ready.store(true, Ordering::Release);
            metrics.ready.set(1);
        }
    }
}

/// Wall time in ms since the epoch.
pub fn wall_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The health of one loop name across profiles: the oldest last run decides.
#[derive(Debug, Clone, Serialize)]
pub struct LoopStatus {
    /// `ok`, `stalled`, `failing` or `not_started`.
    pub state: &'static str,
    /// The oldest last run over the profiles, ms since the epoch.
    pub last_run_ms: i64,
    /// How long ago that was.
    pub lag_ms: i64,
    /// The stall threshold.
    pub stall_ms: u64,
    /// The last error, if a profile's last iteration failed.
    pub last_error: Option<String>,
}

/// The status of each loop name.
pub fn loop_statuses(health: &LoopHealth, config: &LoopConfig) -> Vec<(&'static str, LoopStatus)> {
    let now_ms = wall_now_ms();
    let runs = health.runs();
    LOOP_NAMES
        .iter()
        .map(|name| {
            let mine: Vec<&LoopRun> = runs
                .iter()
                .filter(|(_, l, _)| l == name)
                .map(|(_, _, r)| r)
                .collect();
            let stall_ms = config.stall_ms(name);
            let oldest = mine.iter().map(|r| r.last_run_ms).min().unwrap_or(0);
            let last_error = mine.iter().find_map(|r| r.last_error.clone());
            let lag_ms = if oldest == 0 { 0 } else { now_ms - oldest };
            let state = if mine.is_empty() {
                "not_started"
            } else if last_error.is_some() {
                "failing"
            } else if lag_ms > stall_ms as i64 {
                "stalled"
            } else {
                "ok"
            };
            let status = LoopStatus {
                state,
                last_run_ms: oldest,
                lag_ms,
                stall_ms,
                last_error,
            };
            (*name, status)
        })
        .collect()
}
