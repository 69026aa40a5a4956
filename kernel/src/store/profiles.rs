//! Profile settings (risk limits, the owner's switches, deletion) and the operator's read of
//! every profile.
//!
//! A deleted profile keeps its rows — the ledger is append-only — and is hidden from every read
//! here: to its owner it answers like a profile that never existed.

use crate::ids::{ProfileId, UserId};
use crate::risk::RiskLimits;

use super::backend::{RowExt, Tx, with_tx};
use super::tenant::TenantTx;
use super::{Pool, Store, StoreError};

/// Most profiles one listing returns.
pub const PROFILES_LISTED_MAX: i64 = 1_000;

/// A profile's row: who owns it and how it is set.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    /// The profile.
    pub profile: ProfileId,
    /// Its owner.
    pub user: UserId,
    /// Its name.
    pub name: String,
    /// When it was created, ms since the epoch (database clock).
    pub created_at_ms: i64,
    /// Its risk rules, once set.
    pub risk_limits: Option<RiskLimits>,
    /// The owner's pause switch.
    pub paused: bool,
    /// The owner's kill switch.
    pub killed: bool,
}

const PROFILE_COLUMNS: &str =
    "profile_id, user_id, name, created_at_ms, risk_limits, paused, killed";

fn decode_profile(row: &impl RowExt) -> Result<ProfileRow, StoreError> {
    let risk_limits = match row.opt_text("risk_limits")? {
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("risk limits: {e}")))?,
        ),
        None => None,
    };
    Ok(ProfileRow {
        profile: ProfileId::from_uuid(row.uuid("profile_id")?),
        user: UserId::from_uuid(row.uuid("user_id")?),
        name: row.text("name")?,
        created_at_ms: row.int("created_at_ms")?,
        risk_limits,
        paused: row.flag("paused")?,
        killed: row.flag("killed")?,
    })
}

impl TenantTx {
    /// Creates a profile with its risk limits.
    pub async fn create_profile_with_limits(
        &mut self,
        name: &str,
        limits: &RiskLimits,
    ) -> Result<ProfileId, StoreError> {
        let profile = self.create_profile(name).await?;
        let updated = self.set_risk_limits(profile, limits).await?;
        assert!(updated, "a profile just created is found");
        Ok(profile)
    }

    /// This user's profiles that are not deleted, oldest first.
    pub async fn profiles(&mut self) -> Result<Vec<ProfileRow>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT {PROFILE_COLUMNS} FROM profiles WHERE user_id = $1 AND deleted_at_ms IS NULL \
                 ORDER BY created_at_ms, profile_id LIMIT $2"
            );
            let rows = sqlx::query(&sql).bind(user).bind(PROFILES_LISTED_MAX)
                .fetch_all(&mut **c).await?;
            rows.iter().map(decode_profile).collect()
        }, memory => unsupported("profiles"))
    }

    /// This user's oldest `limit` profiles in the profile directory, oldest first: the ones a
    /// running quota of `limit` per user lets run (the directory's order, as
    /// [`crate::store::Store::profile_directory`] lists it to the instances that share them out).
    pub async fn oldest_profiles(&mut self, limit: usize) -> Result<Vec<ProfileId>, StoreError> {
        let user = self.user_uuid();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_tx!(&mut self.tx, c, b => {
            let sql = "SELECT profile_id FROM profile_directory WHERE user_id = $1 \
                       ORDER BY created_at_ms, profile_id LIMIT $2";
            let rows = sqlx::query(sql).bind(user).bind(limit).fetch_all(&mut **c).await?;
            rows.iter()
                .map(|r| r.uuid("profile_id").map(ProfileId::from_uuid))
                .collect()
        }, memory => unsupported("oldest_profiles"))
    }

    /// The profile, unless it is deleted or another user's. With `lock`, the row is held until
    /// commit (PostgreSQL), so a concurrent delete or update waits.
    pub async fn profile(
        &mut self,
        profile: ProfileId,
        lock: bool,
    ) -> Result<Option<ProfileRow>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT {PROFILE_COLUMNS} FROM profiles \
                 WHERE profile_id = $1 AND user_id = $2 AND deleted_at_ms IS NULL {}",
                if lock { b::FOR_UPDATE } else { "" }
            );
            let row = sqlx::query(&sql).bind(profile.as_uuid()).bind(user)
                .fetch_optional(&mut **c).await?;
            row.as_ref().map(decode_profile).transpose()
        }, memory => unsupported("profile"))
    }

    /// Replaces the profile's risk limits; false when there is no such profile.
    pub async fn set_risk_limits(
        &mut self,
        profile: ProfileId,
        limits: &RiskLimits,
    ) -> Result<bool, StoreError> {
        let user = self.user_uuid();
        let json = serde_json::to_string(limits).expect("risk limits serialize");
        with_tx!(&mut self.tx, c, b => {
            let done = sqlx::query(
                "UPDATE profiles SET risk_limits = $3 \
                 WHERE profile_id = $1 AND user_id = $2 AND deleted_at_ms IS NULL",
            )
            .bind(profile.as_uuid()).bind(user).bind(json)
            .execute(&mut **c).await?;
            Ok(done.rows_affected() == 1)
        }, memory => unsupported("set risk limits"))
    }

    /// Sets the owner's pause switch; false when there is no such profile.
    pub async fn set_paused(
        &mut self,
        profile: ProfileId,
        paused: bool,
    ) -> Result<bool, StoreError> {
        self.set_flag("paused", profile, paused).await
    }

    /// Sets the owner's kill switch; false when there is no such profile.
    pub async fn set_killed(
        &mut self,
        profile: ProfileId,
        killed: bool,
    ) -> Result<bool, StoreError> {
        self.set_flag("killed", profile, killed).await
    }

    /// Marks the profile deleted; false when there is no such profile. Its rows stay.
    pub async fn delete_profile(&mut self, profile: ProfileId) -> Result<bool, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "UPDATE profiles SET deleted_at_ms = {} \
                 WHERE profile_id = $1 AND user_id = $2 AND deleted_at_ms IS NULL",
                b::NOW_MS
            );
            let done = sqlx::query(&sql).bind(profile.as_uuid()).bind(user)
                .execute(&mut **c).await?;
            Ok(done.rows_affected() == 1)
        }, memory => unsupported("delete profile"))
    }

    async fn set_flag(
        &mut self,
        column: &'static str,
        profile: ProfileId,
        value: bool,
    ) -> Result<bool, StoreError> {
        assert!(matches!(column, "paused" | "killed"));
        let user = self.user_uuid();
        let sql = format!(
            "UPDATE profiles SET {column} = $3 \
             WHERE profile_id = $1 AND user_id = $2 AND deleted_at_ms IS NULL"
        );
        with_tx!(&mut self.tx, c, b => {
            let done = sqlx::query(&sql)
                .bind(profile.as_uuid()).bind(user).bind(value)
                .execute(&mut **c).await?;
            Ok(done.rows_affected() == 1)
        }, memory => unsupported("set flag"))
    }
}

/// An operator's view of the store: reads across tenants and grants capital budgets, never
/// writes to tenant tables.
pub struct Operator<'s> {
    pub(super) store: &'s Store,
    pub(super) operator: UserId,
}

impl Store {
    /// The operator scope of `operator` (a caller whose token carries the operator role). On
    /// PostgreSQL its transactions carry claims with `app_metadata.keel_role = "operator"`, which
    /// the `profiles_operator_read` policy lets read every profile row.
    pub fn operator(&self, operator: UserId) -> Operator<'_> {
        Operator {
            store: self,
            operator,
        }
    }
}

/// What an operator transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Reads only (`BEGIN READ ONLY` on PostgreSQL; a deferred transaction on SQLite).
    ReadOnly,
    /// Writes too (a SQLite writer takes the database from the start).
    ReadWrite,
}

impl Operator<'_> {
    /// A transaction under operator claims: on PostgreSQL `app_metadata.keel_role` is
    /// `operator`, which the operator policies (`profiles_operator_read`, `budget_grants_operator`,
    /// `host_account_assignments_operator`, …) let through.
    pub(super) async fn begin(&self, access: Access) -> Result<Tx, StoreError> {
        let writes = access == Access::ReadWrite;
        Ok(match self.store.pool() {
            Pool::Pg(pool) => {
                let begin = format!(
                    "BEGIN{}; SELECT set_config('request.jwt.claims', \
                     '{{\"sub\":\"{}\",\"role\":\"authenticated\",\"app_metadata\":{{\"keel_role\":\"operator\"}}}}', true)",
                    if writes { "" } else { " READ ONLY" },
                    self.operator.as_uuid().hyphenated()
                );
                Tx::Pg(pool.begin_with(begin).await?)
            }
            Pool::Lite(pool) if writes => Tx::Lite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Lite(pool) => Tx::Lite(pool.begin().await?),
            Pool::InThread(pool) if writes => {
                Tx::InThread(pool.begin_with("BEGIN IMMEDIATE").await?)
            }
            Pool::InThread(pool) => Tx::InThread(pool.begin().await?),
            Pool::Memory(pool) => Tx::Memory(pool.begin().await?),
        })
    }

    /// Every profile that is not deleted, of every user, oldest first.
    pub async fn all_profiles(&self) -> Result<Vec<ProfileRow>, StoreError> {
        let mut tx = self.begin(Access::ReadOnly).await?;
        let rows = with_tx!(&mut tx, c, b => {
            let sql = format!(
                "SELECT {PROFILE_COLUMNS} FROM profiles WHERE deleted_at_ms IS NULL \
                 ORDER BY created_at_ms, profile_id LIMIT $1"
            );
            let rows = sqlx::query(&sql).bind(PROFILES_LISTED_MAX * 100)
                .fetch_all(&mut **c).await?;
            rows.iter().map(decode_profile).collect::<Result<Vec<_>, _>>()
        }, memory => unsupported("all profiles"))?;
        tx.commit().await?;
        Ok(rows)
    }
}
