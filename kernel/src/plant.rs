//! Planted bugs: protections the deterministic simulation (`keel simulate --plant`) switches off,
//! one at a time, to show that it catches what each protection prevents.
//!
//! A [`Plant`] is not configuration. No config file, environment variable, API field or
//! serialized type carries one (it implements neither `Deserialize` nor `Default`), and the only
//! code that constructs one is `keel simulate --plant` and the simulation's tests. Only a build
//! with the `lab` feature can set one on a store or an engine; release builds leave it out. A store or an
//! engine without a plant — every production store and engine — runs every protection.

use std::fmt;
use std::str::FromStr;

/// One protection switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// The entry lock no longer excludes: an engine takes it even while another owner's lease
    /// is live (invariant 2's lease lock).
    LockDisabled,
    /// The store's capital check before the database's `capital_invariant` CHECK is skipped:
    /// the kernel writes whatever the planned capital row is (invariant 1's Rust check).
    LedgerCheckDisabled,
    /// The store no longer recognises a fill it already recorded by its exchange trade id
    /// (invariant 3's de-duplication in the kernel; the database's UNIQUE key stays).
    FillDedupDisabled,
}

impl Plant {
    /// Every plant, in the order the simulation's self-check runs them.
    pub const ALL: [Plant; 3] = [
        Plant::LockDisabled,
        Plant::LedgerCheckDisabled,
        Plant::FillDedupDisabled,
    ];

    /// The name `keel simulate --plant` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Plant::LockDisabled => "lock-disabled",
            Plant::LedgerCheckDisabled => "ledger-check-disabled",
            Plant::FillDedupDisabled => "fill-dedup-disabled",
        }
    }
}

impl fmt::Display for Plant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plant a store or an engine runs with. Without the `lab` feature it holds nothing and
/// [`Planted::is`] is false at compile time, so no planted path is in the build.
#[derive(Debug, Clone, Copy, Default)]
pub struct Planted(#[cfg(feature = "lab")] Option<Plant>);

impl Planted {
    /// `plant` switched off.
    #[cfg(feature = "lab")]
    pub(crate) fn new(plant: Plant) -> Self {
        Planted(Some(plant))
    }

    /// Whether `plant` is the protection switched off.
    pub(crate) fn is(self, plant: Plant) -> bool {
        #[cfg(feature = "lab")]
        {
            self.0 == Some(plant)
        }
        #[cfg(not(feature = "lab"))]
        {
            let _ = plant;
            false
        }
    }
}

/// A plant name that is not one of [`Plant::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown plant {0:?}: expected lock-disabled, ledger-check-disabled or fill-dedup-disabled"
)]
pub struct UnknownPlant(String);

impl FromStr for Plant {
    type Err = UnknownPlant;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Plant::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| UnknownPlant(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plant_names_round_trip() {
        for plant in Plant::ALL {
            assert_eq!(plant.as_str().parse::<Plant>(), Ok(plant));
        }
        assert!("lock".parse::<Plant>().is_err());
    }
}
