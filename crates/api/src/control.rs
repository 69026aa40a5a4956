//! What the API asks of the profiles running in this process.
//!
//! The store is the record: the API writes a change there first (a profile's switches, its
//! risk limits, its plugin binding), then tells the running loop, if this process runs one for
//! the profile. A profile no loop runs here keeps the stored setting for when one does. Telling
//! a loop never waits for it: the change is recorded, and the loop applies it at its next step.

use std::sync::Arc;

use keel_kernel::engine::Clock;
use keel_kernel::ids::ProfileId;
use keel_kernel::risk::RiskLimits;
use serde::Serialize;

use keel_runtime::{PreparedInstance, RunningVersion};

/// A change to a running profile, applied between two of its steps.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlChange {
    /// Pause (true) or resume (false) new entries.
    Paused(bool),
    /// Engage (true) or release (false) the profile's kill switch.
    Killed(bool),
    /// Replace the risk rules.
    Limits(RiskLimits),
    /// A resume by the profile's owner: it acknowledges a fault of the profile's loops, and
    /// the request to end its quarantine it stored (`profile_quarantines`) is read by a
    /// reconciliation pass run at once, which ends it when it finds the store and the exchange
    /// in agreement (a pass that finds drift keeps it).
    ClearQuarantine,
    /// A request to end the quarantine was stored by an operator, or through another instance:
    /// a reconciliation pass runs at once to read it (nothing else changes).
    QuarantineClearRequested,
}

/// The result of one forced reconciliation pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReconcileOutcome {
    /// The profile reconciled.
    #[schema(value_type = String, format = Uuid)]
    pub profile_id: ProfileId,
    /// `clean`, `repaired`, `quarantined`, … (the `result` label of the reconciliation metric),
    /// or `error`.
    pub result: String,
    /// Why the pass failed, when it did.
    pub error: Option<String>,
}

/// The running profiles of this process, as the API controls them.
#[async_trait::async_trait]
pub trait ProfileControl: Send + Sync {
    /// Whether a loop runs `profile` in this process.
    fn is_running(&self, profile: ProfileId) -> bool;

    /// The clock the profile's plugin reads (`None` when it does not run here).
    fn clock(&self, profile: ProfileId) -> Option<Arc<dyn Clock>>;

    /// Hands an initialised instance to the running profile, which swaps to it at its next
    /// call boundary. False (and the instance dropped) when the profile does not run here or
    /// its strategy cannot be swapped.
    fn offer_strategy(&self, profile: ProfileId, instance: PreparedInstance) -> bool;

    /// The plugin the profile's strategy runs now (a queued swap counts once taken); `None`
    /// when the profile does not run here or its strategy is not a plugin.
    fn running_plugin(&self, profile: ProfileId) -> Option<RunningVersion>;

    /// Records a change for the running profile, which applies it between two of its steps;
    /// returns at once, whatever the loop is doing. False when it does not run here.
    fn apply(&self, profile: ProfileId, change: ControlChange) -> bool;

    /// Runs a reconciliation pass of every running profile now, and reports each.
    async fn reconcile_all(&self) -> Vec<ReconcileOutcome>;

    /// Engages or releases the host-wide kill switch: no new entries on any profile.
    fn set_host_kill(&self, engaged: bool);

    /// Whether the host-wide kill switch is engaged.
    fn host_kill(&self) -> bool;

    /// The profile's exchange account changed through this process: its owner's credentials
    /// were stored, replaced or removed, or an operator assigned or took back the host's
    /// account. A host whose store cannot tell it (SQLite) re-reads the profile's settings and
    /// moves a running profile to the account they name.
    fn account_changed(&self, profile: ProfileId);
}
