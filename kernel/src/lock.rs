//! Lease locks with a TTL, an owner token and a fencing token.
//!
//! Three kinds share one mechanism: entry locks (one ENTRY decision in flight per profile and
//! symbol), reconciliation locks (one reconciliation per profile) and profile leases (which host
//! instance runs a profile). Expiry is measured by the database clock, so host clocks may drift.
//! Every acquisition takes a new fence from a sequence that only grows; a write made under a lock
//! carries its [`FencedLock`] and is refused inside its own transaction when the fence is stale.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{Fence, ProfileId, Symbol};

/// The shortest TTL a lease may ask for.
pub const LOCK_TTL_MS_MIN: i64 = 1;
/// The longest TTL a lease may ask for (ten minutes): a dead holder blocks no longer than this.
pub const LOCK_TTL_MS_MAX: i64 = 600_000;
/// The longest lock key.
pub const LOCK_KEY_LEN_MAX: usize = 128;

/// Why a lock operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The lease expired or was taken over: the holder must stop writing under it.
    #[error("lock {key} is no longer held by this owner with fence {fence}")]
    Lost {
        /// The lock.
        key: LockKey,
        /// The fence the caller held.
        fence: Fence,
    },
    /// A write carried a fence that is not the lock's current, unexpired one.
    #[error("stale fence {fence} for lock {key} (current: {current:?})")]
    StaleFence {
        /// The lock.
        key: LockKey,
        /// The fence the write carried.
        fence: Fence,
        /// The lock's current fence, if the lock is held at all.
        current: Option<Fence>,
    },
    /// The TTL is outside `[LOCK_TTL_MS_MIN, LOCK_TTL_MS_MAX]`.
    #[error("lock ttl {ttl_ms} ms is outside {LOCK_TTL_MS_MIN}..={LOCK_TTL_MS_MAX}")]
    TtlOutOfRange {
        /// The refused TTL.
        ttl_ms: i64,
    },
    /// The key is empty, too long or not printable ASCII.
    #[error("invalid lock key {0:?}")]
    InvalidKey(String),
}

/// Which lock table a lease lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// `entry_locks`: one ENTRY decision in flight per (profile, symbol).
    Entry,
    /// `reconciliation_locks`: one reconciliation per profile.
    Reconciliation,
    /// `profile_leases`: which host instance runs a profile.
    ProfileLease,
}

impl LockKind {
    /// Every kind.
    pub const ALL: [LockKind; 3] = [
        LockKind::Entry,
        LockKind::Reconciliation,
        LockKind::ProfileLease,
    ];

    /// The table that holds leases of this kind.
    pub fn table(self) -> &'static str {
        match self {
            LockKind::Entry => "entry_locks",
            LockKind::Reconciliation => "reconciliation_locks",
            LockKind::ProfileLease => "profile_leases",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            LockKind::Entry => 0,
            LockKind::Reconciliation => 1,
            LockKind::ProfileLease => 2,
        }
    }
}

/// The name of a lock. Shared, not copied, when cloned: every order written under an entry lock
/// carries its key, and the order is copied in and out of the store several times a trade.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LockKey(Arc<str>);

impl LockKey {
    /// Checks that `text` is 1 to [`LOCK_KEY_LEN_MAX`] printable ASCII characters.
    pub fn new(text: &str) -> Result<Self, LockError> {
        let ok = !text.is_empty()
            && text.len() <= LOCK_KEY_LEN_MAX
            && text.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(Arc::from(text)))
        } else {
            Err(LockError::InvalidKey(text.to_owned()))
        }
    }

    /// The entry lock of (profile, symbol).
    pub fn entry(profile: ProfileId, symbol: &Symbol) -> Self {
        Self(format!("entry:{profile}:{symbol}").into())
    }

    /// The reconciliation lock of a profile.
    pub fn reconciliation(profile: ProfileId) -> Self {
        Self(format!("reconcile:{profile}").into())
    }

    /// The instance lease of a profile.
    pub fn profile(profile: ProfileId) -> Self {
        Self(format!("profile:{profile}").into())
    }

    /// The key prefix of instance presence leases ([`LockKey::instance`]).
    pub const INSTANCE_PREFIX: &str = "instance:";

    /// The presence lease of a `keel serve` instance: held while it runs, counted by the others
    /// to share the profiles out evenly.
    pub fn instance(owner: OwnerToken) -> Self {
        Self(format!("{}{}", Self::INSTANCE_PREFIX, owner.as_uuid()).into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LockKey {
    type Error = LockError;
    fn try_from(text: String) -> Result<Self, LockError> {
        Self::new(&text)
    }
}

impl From<LockKey> for String {
    fn from(key: LockKey) -> String {
        key.0.to_string()
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds a lease: one per host instance (or per task that must not share a lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OwnerToken(Uuid);

impl OwnerToken {
    /// A fresh random token.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

/// Checks a TTL against `[LOCK_TTL_MS_MIN, LOCK_TTL_MS_MAX]`.
pub fn check_ttl_ms(ttl_ms: i64) -> Result<i64, LockError> {
    if (LOCK_TTL_MS_MIN..=LOCK_TTL_MS_MAX).contains(&ttl_ms) {
        Ok(ttl_ms)
    } else {
        Err(LockError::TtlOutOfRange { ttl_ms })
    }
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Which table.
    pub kind: LockKind,
    /// The lock.
    pub key: LockKey,
    /// The holder.
    pub owner: OwnerToken,
    /// The fence of this acquisition.
    pub fence: Fence,
    /// Expiry by the database clock, milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

impl Lease {
    /// What a write made under this lease carries.
    pub fn fenced(&self) -> FencedLock {
        FencedLock {
            key: self.key.clone(),
            fence: self.fence,
        }
    }
}

/// A lock key and the fence a write was made under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FencedLock {
    /// The lock.
    pub key: LockKey,
    /// Its fence when the decision was made.
    pub fence: Fence,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds_are_enforced() {
        assert!(check_ttl_ms(0).is_err());
        assert!(check_ttl_ms(LOCK_TTL_MS_MAX + 1).is_err());
        assert_eq!(check_ttl_ms(30_000), Ok(30_000));
    }

    #[test]
    fn derived_keys_are_valid_keys() {
        let profile = ProfileId::new_random();
        let symbol = Symbol::new("BTCUSDT").unwrap();
        for key in [
            LockKey::entry(profile, &symbol),
            LockKey::reconciliation(profile),
            LockKey::profile(profile),
        ] {
            assert_eq!(LockKey::new(key.as_str()), Ok(key.clone()));
        }
        assert!(LockKey::new("has space").is_err());
    }
}
