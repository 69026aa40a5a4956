//! The health the loops report: each loop's last run per profile, each profile's last snapshot,
//! and readiness. The host's loops write it; `/internal/health`, `/readyz` and the live feed read
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keel_kernel::engine::ProfileEngine;
use keel_kernel::ids::{ProfileId, escape_unprintable};
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
    faults: Mutex<HashMap<ProfileId, ProfileFault>>,
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
    /// The strategy's last call faulted: its entries wait for a healthy call.
    pub plugin_faulted: bool,
    /// The strategy's last fault, if it ever had one.
    pub plugin_fault: Option<keel_kernel::engine::StrategyFaultRecord>,
    /// Why and since when the profile is quarantined, while it is, as stored.
    pub quarantine: Option<keel_kernel::engine::QuarantineRecord>,
    /// Events about orders it did not place, heard on its account and ignored.
    pub foreign_events: u64,
}

/// A fault as owners and operators read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FaultView {
    /// A plugin fault's kind (`trap`, `deadline`, `fuel`, `memory`, `invalid_output`,
    /// `init_refused`, `config_refused`, `dead`), or the loops' own (`panic`, `error`).
    pub kind: String,
    /// What happened, with control characters escaped.
    pub message: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

impl FaultView {
    fn of_plugin(record: &keel_kernel::engine::StrategyFaultRecord) -> FaultView {
        FaultView {
            kind: record.fault.kind().to_owned(),
            message: escape_unprintable(&record.fault.to_string()).into_owned(),
            at_ms: record.at_ms,
        }
    }
}

/// Why and since when a profile is quarantined, what the pass found, and whether (and by whom)
/// its end was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QuarantineView {
    /// What the reconciliation pass that quarantined it found, by mismatch kind.
    pub reason: String,
    /// Since when, ms since the epoch (kernel time of the pass that first found it).
    pub since_ms: i64,
    /// Each order or position the pass could not explain, with what the store and the
    /// exchange said (at most 32).
    pub evidence: Vec<EvidenceView>,
    /// A request to end it stands: the next reconciliation pass that finds the store and the
    /// exchange in agreement ends it.
    pub clear_requested: bool,
    /// Who asked (the owner by a resume, or an operator).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub clear_requested_by: Option<keel_kernel::ids::UserId>,
    /// When they asked, ms since the epoch.
    pub clear_requested_at_ms: Option<i64>,
}

/// One order or position a reconciliation pass could not explain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EvidenceView {
    /// `missing_in_db`, `missing_on_exchange`, `status_mismatch` or `position_mismatch`.
    pub kind: String,
    /// The client order id of the order, or the symbol of the position.
    pub subject: String,
    /// What the store said.
    pub store: String,
    /// What the exchange said.
    pub exchange: String,
}

impl QuarantineView {
    /// The view of a stored quarantine.
    pub fn of(record: &keel_kernel::engine::QuarantineRecord) -> QuarantineView {
        let text = |t: &str| escape_unprintable(t).into_owned();
        QuarantineView {
            reason: text(&record.reason),
            since_ms: record.since_ms,
            evidence: record
                .evidence
                .iter()
                .map(|e| EvidenceView {
                    kind: text(&e.kind),
                    subject: text(&e.subject),
                    store: text(&e.store),
                    exchange: text(&e.exchange),
                })
                .collect(),
            clear_requested: record.clear_requested_by.is_some(),
            clear_requested_by: record.clear_requested_by,
            clear_requested_at_ms: record.clear_requested_at_ms,
        }
    }
}

/// The state of a profile's plugin and loops in the answering host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProfileHealth {
    /// `ok` (its plugin's last call succeeded), `faulted` (its plugin's last call faulted, or
    /// its loops did and restart: entries wait), `stopped` (its loops stopped after repeated
    /// faults and wait for a resume) or `not_running` (no loop runs it in this host).
    pub state: String,
    /// The plugin's last fault, if it had one since the profile started here.
    pub plugin_fault: Option<FaultView>,
    /// The last fault of the profile's loops (a panic on its path, a failed restart recovery),
    /// until the profile is resumed.
    pub loop_fault: Option<ProfileFault>,
    /// Why and since when it is quarantined, while it is.
    pub quarantine: Option<QuarantineView>,
    /// User events about orders it did not place (another profile's on its exchange account,
    /// or one placed there by hand), heard and ignored since it started here: above zero, the
    /// account is shared with something that is not this profile.
    pub foreign_events: u64,
}

impl ProfileHealth {
    /// What `health` knows of `profile`.
    pub fn of(health: &LoopHealth, profile: ProfileId) -> ProfileHealth {
        let snapshot = health.profile_snapshot(profile);
        let loop_fault = health.profile_fault(profile);
        let state = match (&snapshot, &loop_fault) {
            (_, Some(fault)) if fault.state == "stopped" => "stopped",
            (_, Some(_)) => "faulted",
            (Some(snapshot), None) if snapshot.plugin_faulted => "faulted",
            (Some(_), None) => "ok",
            (None, None) => "not_running",
        };
        let quarantine = snapshot
            .as_ref()
            .and_then(|s| s.quarantine.as_ref().map(QuarantineView::of));
        ProfileHealth {
            state: state.to_owned(),
            plugin_fault: snapshot
                .as_ref()
                .and_then(|s| s.plugin_fault.as_ref().map(FaultView::of_plugin)),
            loop_fault,
            quarantine,
            foreign_events: snapshot.as_ref().map_or(0, |s| s.foreign_events),
        }
    }
}

/// A fault of a profile's loops themselves (not of its strategy): a panic on the profile's
/// path, or a restart recovery that failed. The profile's entries stop until its owner resumes
/// it; its loops restart after a backoff, at most [`PROFILE_RESTARTS_MAX`] times in
/// [`PROFILE_FAULT_WINDOW_MS`], after which they stay stopped until the profile is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProfileFault {
    /// `panic` or `error` (the `kind` label of `keel_profile_faults_total`).
    pub kind: String,
    /// What failed, with control characters escaped.
    pub message: String,
    /// Wall time of the fault, ms since the epoch.
    pub at_ms: i64,
    /// Faults of the profile's loops within the window, this one included.
    pub faults_in_window: u32,
    /// `restarting` (the loops start again after a backoff) or `stopped` (they wait for the
    /// profile to be resumed).
    pub state: String,
}

/// Restarts of a profile's loops after faults within [`PROFILE_FAULT_WINDOW_MS`] before they
/// stay stopped.
pub const PROFILE_RESTARTS_MAX: u32 = 3;

/// The window [`PROFILE_RESTARTS_MAX`] counts in.
pub const PROFILE_FAULT_WINDOW_MS: i64 = 10 * 60 * 1000;

/// How many of this instance's profiles are in trouble, for the health endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProfileCounts {
    /// Profiles this instance runs.
    pub running: usize,
    /// Profiles whose loops faulted, or whose strategy's last call did.
    pub faulted: usize,
    /// Profiles in quarantine.
    pub quarantined: usize,
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
        self.forget_loops(profile);
        self.faults.lock().expect("lock poisoned").remove(&profile);
        let mut snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.remove(&profile);
        drop(snapshots);
        let mut recovered = self.recovered.lock().expect("lock poisoned");
        recovered.retain(|p| *p != profile);
    }

    /// Forgets the last runs of a profile's loops (they stopped after repeated faults): the
    /// loop states speak of the loops that run, the profile's fault of the ones that do not.
    pub fn forget_loops(&self, profile: ProfileId) {
        let mut runs = self.runs.lock().expect("lock poisoned");
        runs.retain(|(p, _), _| *p != profile);
    }

    /// Records a fault of the profile's loops (the last one is kept).
    pub fn fault(&self, profile: ProfileId, fault: ProfileFault) {
        let mut faults = self.faults.lock().expect("lock poisoned");
        faults.insert(profile, fault);
    }

    /// Forgets the fault of the profile's loops (its owner resumed it).
    pub fn clear_fault(&self, profile: ProfileId) {
        let mut faults = self.faults.lock().expect("lock poisoned");
        faults.remove(&profile);
    }

    /// The last fault of the profile's loops, while it stands.
    pub fn profile_fault(&self, profile: ProfileId) -> Option<ProfileFault> {
        let faults = self.faults.lock().expect("lock poisoned");
        faults.get(&profile).cloned()
    }

    /// The profile's last snapshot, if this instance runs it.
    pub fn profile_snapshot(&self, profile: ProfileId) -> Option<ProfileSnapshot> {
        let snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.get(&profile).cloned()
    }

    /// How many of the profiles this instance runs (those with a snapshot: a profile's task
    /// takes one as it starts) are faulted or quarantined.
    pub fn profile_counts(&self) -> ProfileCounts {
        let snapshots = self.snapshots.lock().expect("lock poisoned");
        let faults = self.faults.lock().expect("lock poisoned");
        let faulted = snapshots
            .iter()
            .filter(|(p, s)| s.plugin_faulted || faults.contains_key(p))
            .count();
        ProfileCounts {
            running: snapshots.len(),
            faulted,
            quarantined: snapshots
                .values()
                .filter(|s| s.controls.quarantined)
                .count(),
        }
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
            plugin_faulted: engine.strategy_faulted(),
            plugin_fault: engine.last_fault().cloned(),
            quarantine: engine.quarantine().cloned(),
            foreign_events: engine.foreign_events(),
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
    /// `ok`, `stalled`, `failing`, or `idle` when no profile's loop of this name runs here (a
    /// standby instance, or every profile's loops stopped after faults).
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
                "idle"
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
