//! What several host instances share besides lease locks: the directory of profiles (ids only,
//! readable across tenants), and the guard that carries a profile lease's fence into every
//! transaction of that profile.

use crate::ids::{Fence, ProfileId, UserId};
use crate::lock::{Lease, LockKey, LockKind};

use super::backend::{RowExt, lite, sqlite_fns, with_pool};
use super::{Constraint, Store, StoreError};

/// The PostgreSQL channel on which a change of the profile directory is announced; the payload
/// is the profile id.
pub const PROFILES_CHANNEL: &str = "keel_profiles";

/// The PostgreSQL channel on which a change of a profile's switches, risk rules or bound plugin
/// is announced (`migrations/postgres/0005_profile_settings.sql`); the payload is the profile id.
pub const SETTINGS_CHANNEL: &str = "keel_profile_settings";

/// Most profiles one directory read returns; more are refused rather than loaded without bound.
pub const DIRECTORY_ROWS_MAX: i64 = 1_000_000;

/// One profile as the directory lists it: who owns it, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The profile.
    pub profile: ProfileId,
    /// Its owner, whose tenant scope its work runs in.
    pub user: UserId,
}

/// The profile lease a store's tenant transactions are made under (see [`Store::guarded_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGuard {
    /// The profile the lease is of.
    pub profile: ProfileId,
    /// The fence of the acquisition the writes belong to.
    pub fence: Fence,
}

impl LeaseGuard {
    /// The guard of a granted profile lease.
    ///
    /// # Panics
    /// When `lease` is not the profile lease of `profile`: a programmer error.
    pub fn of(profile: ProfileId, lease: &Lease) -> LeaseGuard {
        assert_eq!(lease.kind, LockKind::ProfileLease, "not a profile lease");
        assert_eq!(
            lease.key,
            LockKey::profile(profile),
            "the lease of another profile"
        );
        LeaseGuard {
            profile,
            fence: lease.fence,
        }
    }

    /// The check on PostgreSQL, first in the transaction: it raises `profile_lease_current`
    /// when the lease is no longer this fence's, and holds the lease row until commit.
    pub(crate) async fn check_pg(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT keel_require_profile_lease($1, $2)")
            .bind(LockKey::profile(self.profile).as_str())
            .bind(self.fence.0)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The same check on SQLite, inside a transaction that already holds the write lock.
    pub(crate) async fn check_lite(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        check_lite(tx, self).await
    }

    /// The same check on a memory store, inside a transaction that holds its database.
    pub(crate) fn check_memory(&self, tx: &super::memory::Transaction) -> Result<(), StoreError> {
        let key = LockKey::profile(self.profile);
        let now = super::memory::now_ms();
        match tx.live_fence(LockKind::ProfileLease, key.as_str(), now) {
            Some(fence) if fence == self.fence.0 => Ok(()),
            _ => Err(StoreError::Constraint(Constraint::StaleProfileLease)),
        }
    }

    /// [`LeaseGuard::check_lite`] on an in-thread store.
    pub(crate) async fn check_in_thread(
        &self,
        tx: &mut super::in_thread::Transaction,
    ) -> Result<(), StoreError> {
        check_in_thread(tx, self).await
    }
}

sqlite_fns! {
async fn check_lite / check_in_thread(conn, guard: &LeaseGuard) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT 1 FROM profile_leases WHERE lock_key = $1 AND fence = $2 AND expires_at_ms > {}",
        lite::NOW_MS
    );
    let found = sqlx::query(&sql)
        .bind(LockKey::profile(guard.profile).as_str())
        .bind(guard.fence.0)
        .fetch_optional(&mut *conn)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::Constraint(Constraint::StaleProfileLease)),
    }
}
}

impl Store {
    /// Every profile of every tenant, oldest first: ids and owners only. On PostgreSQL it reads
    /// `profile_directory`, which a trigger on `profiles` keeps, since row-level security hides
    /// the profiles themselves from the host role outside a tenant scope.
    pub async fn profile_directory(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let sql = "SELECT profile_id, user_id FROM profile_directory \
                   ORDER BY created_at_ms, profile_id LIMIT $1";
        let entries = with_pool!(self.pool(), pool, b => {
            let rows = sqlx::query(sql).bind(DIRECTORY_ROWS_MAX + 1).fetch_all(pool).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?
        }, memory pool => {
            let tx = pool.begin().await?;
            let rows = tx.directory().into_iter();
            rows.map(|(profile, user)| DirectoryEntry { profile, user }).collect::<Vec<_>>()
        });
        if entries.len() as i64 > DIRECTORY_ROWS_MAX {
            return Err(StoreError::Corrupt(format!(
                "the profile directory lists more than {DIRECTORY_ROWS_MAX} profiles"
            )));
        }
        Ok(entries)
    }
}

fn decode(row: &impl RowExt) -> Result<DirectoryEntry, StoreError> {
    Ok(DirectoryEntry {
        profile: ProfileId::from_uuid(row.uuid("profile_id")?),
        user: UserId::from_uuid(row.uuid("user_id")?),
    })
}
