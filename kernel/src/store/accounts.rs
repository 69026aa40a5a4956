//! Which exchange account a profile trades on (migration 0010): its owner's (the credentials of
//! `profile_credentials`), the host's own when an operator assigned it (`host_account_assignments`),
//! else a paper account. Only an operator assigns the host's account.

use crate::ids::{ProfileId, UserId};

use super::backend::with_tx;
use super::profiles::Access;
use super::tenant::TenantTx;
use super::{Operator, StoreError};

impl TenantTx {
    /// Whether an operator assigned the host's exchange account to the profile.
    pub async fn host_account_assigned(&mut self, profile: ProfileId) -> Result<bool, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let row = sqlx::query(
                "SELECT 1 AS assigned FROM host_account_assignments WHERE profile_id = $1 AND user_id = $2",
            )
            .bind(profile.as_uuid()).bind(user)
            .fetch_optional(&mut **c).await?;
            Ok(row.is_some())
        }, memory => unsupported("host account assignments"))
    }
}

impl Operator<'_> {
    /// The owner of a profile that is not deleted.
    pub async fn profile_owner(&self, profile: ProfileId) -> Result<Option<UserId>, StoreError> {
        let mut tx = self.begin(Access::ReadOnly).await?;
        let owner = with_tx!(&mut tx, c, b => {
            let owner: Option<uuid::Uuid> = sqlx::query_scalar(
                "SELECT user_id FROM profiles WHERE profile_id = $1 AND deleted_at_ms IS NULL",
            )
            .bind(profile.as_uuid())
            .fetch_optional(&mut **c).await?;
            owner.map(UserId::from_uuid)
        }, memory => unsupported("profile owner"));
        tx.commit().await?;
        Ok(owner)
    }

    /// Assigns the host's exchange account to a profile (or, with `assigned` false, takes it
    /// back: the profile trades on paper unless its owner gave credentials). Answers whether
    /// anything changed; an unknown or deleted profile is [`StoreError::UnknownProfile`].
    pub async fn assign_host_account(
        &self,
        profile: ProfileId,
        assigned: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(Access::ReadWrite).await?;
        let operator = self.operator.as_uuid();
        let changed = with_tx!(&mut tx, c, b => {
            let exists = sqlx::query(
                "SELECT 1 AS found FROM profiles WHERE profile_id = $1 AND deleted_at_ms IS NULL",
            )
            .bind(profile.as_uuid())
            .fetch_optional(&mut **c).await?;
            if exists.is_none() {
                return Err(StoreError::UnknownProfile(profile));
            }
            let done = if assigned {
                sqlx::query(
                    "INSERT INTO host_account_assignments (profile_id, user_id, operator_id) \
                     SELECT profile_id, user_id, $2 FROM profiles WHERE profile_id = $1 \
                     ON CONFLICT (profile_id) DO NOTHING",
                )
                .bind(profile.as_uuid()).bind(operator)
                .execute(&mut **c).await?
            } else {
                sqlx::query("DELETE FROM host_account_assignments WHERE profile_id = $1")
                    .bind(profile.as_uuid())
                    .execute(&mut **c).await?
            };
            done.rows_affected() > 0
        }, memory => unsupported("host account assignments"));
        tx.commit().await?;
        Ok(changed)
    }
}
