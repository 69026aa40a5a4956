//! Capital budgets: what operators grant each user, and what the user's allocations draw on
//! (`capital_budgets` and `budget_grants`, migration 0009).
//!
//! An allocation is refused three times over when it goes beyond the budget: by the kernel
//! ([`Budget::draw`], counted as `budget_check_refusals`), by the database (the
//! `ledger_entries_draw_budget` trigger and the `capital_budgets_within_grant` CHECK, counted as
//! `budget_constraint_violations`), and both counters are exported as metrics.

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::ids::UserId;
use crate::ledger::Budget;

use super::backend::{RowExt, Tx, with_tx};
use super::profiles::Access;
use super::tenant::TenantTx;
use super::{Operator, StoreError};

/// The grants of a host that is its own operator — the demo, backtests, simulations — are made
/// under this id (the nil UUID), as are the grants migration 0009 made for earlier allocations.
pub const HOST_OPERATOR: UserId = UserId::from_uuid(Uuid::nil());

/// `user`'s budget row, if an operator ever granted them one.
async fn budget_row(tx: &mut Tx, user: Uuid) -> Result<Option<Budget>, StoreError> {
    with_tx!(tx, c, b => {
        let row = sqlx::query("SELECT granted, allocated FROM capital_budgets WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&mut **c).await?;
        row.map(|r| Ok(Budget {
            granted: r.checked_money("granted")?,
            allocated: r.checked_money("allocated")?,
        }))
            .transpose()
    }, memory m => {
        Ok(m.budget(UserId::from_uuid(user)))
    })
}

impl TenantTx {
    /// This user's capital budget (nothing granted: zero).
    pub async fn budget(&mut self) -> Result<Budget, StoreError> {
        let user = self.user_uuid();
        Ok(budget_row(&mut self.tx, user).await?.unwrap_or_default())
    }
}

impl Operator<'_> {
    /// `user`'s capital budget (nothing granted: zero).
    pub async fn budget(&self, user: UserId) -> Result<Budget, StoreError> {
        let mut tx = self.begin(Access::ReadOnly).await?;
        let budget = budget_row(&mut tx, user.as_uuid()).await?;
        tx.commit().await?;
        Ok(budget.unwrap_or_default())
    }

    /// Grants `user` `amount` more capital to allocate (negative: takes back what their profiles
    /// were not allocated), journalled in `budget_grants` under this operator. Refused, writing
    /// nothing, when the budget would fall below what is allocated or beyond
    /// [`crate::ledger::CAPITAL_MAX`].
    pub async fn grant_budget(&self, user: UserId, amount: Decimal) -> Result<Budget, StoreError> {
        let result = self.grant_budget_inner(user, amount).await;
        self.store.stats().observe(result)
    }

    async fn grant_budget_inner(
        &self,
        user: UserId,
        amount: Decimal,
    ) -> Result<Budget, StoreError> {
        let mut tx = self.begin(Access::ReadWrite).await?;
        lock_budget(&mut tx, user).await?;
        let before = budget_row(&mut tx, user.as_uuid())
            .await?
            .unwrap_or_default();
        let after = before.grant(amount)?;
        let operator = self.operator.as_uuid();
        with_tx!(&mut tx, c, b => {
            sqlx::query("INSERT INTO budget_grants (user_id, operator_id, amount) VALUES ($1, $2, $3)")
                .bind(user.as_uuid()).bind(operator).bind(b::money(amount))
                .execute(&mut **c).await?;
        }, memory m => {
            m.insert_grant(user, amount)?;
        });
        let stored = budget_row(&mut tx, user.as_uuid()).await?;
        assert_eq!(stored, Some(after), "the budget row follows its grants");
        tx.commit().await?;
        Ok(after)
    }
}

/// Serialises the budget changes of one user on PostgreSQL (a transaction advisory lock, the
/// one [`TenantTx::lock_user_quota`] takes): a grant and an allocation that read the budget
/// before writing take turns. A SQLite writer and a memory transaction hold the whole database.
pub(super) async fn lock_budget(tx: &mut Tx, user: UserId) -> Result<(), StoreError> {
    if let Tx::Pg(tx) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("keel_user_quota:{}", user.as_uuid()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
