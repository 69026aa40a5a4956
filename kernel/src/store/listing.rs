//! Whole-profile reads: every open order and every open position of a profile, for restart
//! recovery, reconciliation and the account view a strategy sees.

use crate::ids::{ProfileId, Symbol, UserId};
use crate::lifecycle::{OrderRecord, Position};

use super::StoreError;
use super::backend::{RowExt, with_tx};
use super::rows::{
    ORDER_COLUMNS, decode_order, decode_position, memory_position, open_statuses_sql,
};
use super::tenant::TenantTx;

/// Most rows one listing returns: a profile with more open orders than this is refused as
/// corrupt rather than loaded without bound.
pub const LISTING_ROWS_MAX: i64 = 100_000;

impl TenantTx {
    /// Every open order of `profile` ([`crate::order::OrderStatus::is_open`]), oldest first.
    pub async fn open_orders(
        &mut self,
        profile: ProfileId,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let user = self.user_uuid();
        let rows = with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE profile_id = $1 AND user_id = $2 \
                 AND status IN {open} ORDER BY order_id LIMIT $3",
                open = open_statuses_sql(),
            );
            let rows = sqlx::query(&sql).bind(profile.as_uuid()).bind(user).bind(LISTING_ROWS_MAX + 1)
                .fetch_all(&mut **c).await?;
            rows.iter().map(decode_order).collect::<Result<Vec<_>, _>>()
        }, memory m => {
            let orders = m.open_orders(profile, UserId::from_uuid(user));
            Ok::<_, StoreError>(orders.take(LISTING_ROWS_MAX as usize + 1).cloned().collect())
        })?;
        check_bounded("open orders", profile, rows.len())?;
        Ok(rows)
    }

    /// Every open position of `profile` (its open ENTRY lifecycles), by symbol.
    pub async fn positions(&mut self, profile: ProfileId) -> Result<Vec<Position>, StoreError> {
        let user = self.user_uuid();
        let rows = with_tx!(&mut self.tx, c, b => {
            let rows = sqlx::query(
                "SELECT symbol, lifecycle_id, side, qty_open, cost_open FROM lifecycles \
                 WHERE profile_id = $1 AND user_id = $2 AND kind = 'ENTRY' AND is_open \
                 ORDER BY symbol LIMIT $3",
            )
            .bind(profile.as_uuid()).bind(user).bind(LISTING_ROWS_MAX + 1)
            .fetch_all(&mut **c).await?;
            rows.iter()
                .map(|row| {
                    let text = row.text("symbol")?;
                    let symbol = Symbol::new(&text)
                        .map_err(|_| StoreError::Corrupt(format!("symbol {text:?}")))?;
                    decode_position(row, &symbol)
                })
                .collect::<Result<Vec<_>, _>>()
        }, memory m => {
            let rows = m.open_entries(profile, UserId::from_uuid(user));
            rows.into_iter().map(|(id, row)| memory_position(id, row)).collect()
        })?;
        check_bounded("positions", profile, rows.len())?;
        Ok(rows)
    }
}

fn check_bounded(what: &str, profile: ProfileId, rows: usize) -> Result<(), StoreError> {
    if rows as i64 > LISTING_ROWS_MAX {
        return Err(StoreError::Corrupt(format!(
            "profile {profile} has more than {LISTING_ROWS_MAX} {what}"
        )));
    }
    Ok(())
}

impl super::Tenant<'_> {
    /// See [`TenantTx::open_orders`]. Runs in its own transaction.
    pub async fn open_orders(&self, profile: ProfileId) -> Result<Vec<OrderRecord>, StoreError> {
        let mut tx = self.begin().await?;
        let orders = tx.open_orders(profile).await?;
        tx.commit().await?;
        Ok(orders)
    }

    /// See [`TenantTx::positions`]. Runs in its own transaction.
    pub async fn positions(&self, profile: ProfileId) -> Result<Vec<Position>, StoreError> {
        let mut tx = self.begin().await?;
        let positions = tx.positions(profile).await?;
        tx.commit().await?;
        Ok(positions)
    }
}
