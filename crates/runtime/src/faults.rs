//! Fault counts per profile and plugin version, shared by every instance of one engine.

use std::collections::BTreeMap;
use std::sync::Mutex;

use keel_kernel::ids::ProfileId;
use keel_kernel::strategy::PluginFault;

use super::PluginDigest;

/// How many faults of each kind one (profile, plugin version) has had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounts {
    /// [`PluginFault::FuelExhausted`].
    pub fuel: u64,
    /// [`PluginFault::Deadline`].
    pub deadline: u64,
    /// [`PluginFault::MemoryLimit`].
    pub memory: u64,
    /// [`PluginFault::Trap`].
    pub trap: u64,
    /// [`PluginFault::InvalidOutput`].
    pub invalid_output: u64,
    /// [`PluginFault::InitRefused`].
    pub init_refused: u64,
    /// [`PluginFault::ConfigRefused`]: a configuration refused against the declared parameters.
    pub config_refused: u64,
    /// [`PluginFault::Dead`]: calls refused because the instance had faulted.
    pub dead: u64,
}

impl FaultCounts {
    fn add(&mut self, fault: &PluginFault) {
        let slot = match fault {
            PluginFault::FuelExhausted => &mut self.fuel,
            PluginFault::Deadline => &mut self.deadline,
            PluginFault::MemoryLimit => &mut self.memory,
            PluginFault::Trap(_) => &mut self.trap,
            PluginFault::InvalidOutput(_) => &mut self.invalid_output,
            PluginFault::InitRefused(_) => &mut self.init_refused,
            PluginFault::ConfigRefused(_) => &mut self.config_refused,
            PluginFault::Dead => &mut self.dead,
        };
        *slot += 1;
    }

    /// All faults together.
    pub fn total(&self) -> u64 {
        self.fuel
            + self.deadline
            + self.memory
            + self.trap
            + self.invalid_output
            + self.init_refused
            + self.config_refused
            + self.dead
    }
}

/// The engine-wide fault ledger. Written only when a fault happens, so it costs nothing on the
/// hot path.
#[derive(Debug, Default)]
pub(crate) struct FaultLedger {
    counts: Mutex<BTreeMap<(ProfileId, PluginDigest), FaultCounts>>,
}

impl FaultLedger {
    pub fn record(&self, profile: ProfileId, digest: &PluginDigest, fault: &PluginFault) {
        let mut counts = self.counts.lock().unwrap();
        counts
            .entry((profile, digest.clone()))
            .or_default()
            .add(fault);
    }

    pub fn for_profile(&self, profile: ProfileId) -> Vec<(PluginDigest, FaultCounts)> {
        let counts = self.counts.lock().unwrap();
        counts
            .iter()
            .filter(|((p, _), _)| *p == profile)
            .map(|((_, digest), c)| (digest.clone(), *c))
            .collect()
    }
}
