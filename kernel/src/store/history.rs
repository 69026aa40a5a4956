//! Statements for the rows that appear only after the exchange reports a fill: ENTRY and EXIT
//! lifecycle rows and trade history.

use rust_decimal::Decimal;

use crate::ids::IntentKind;
use crate::lifecycle::{FillReport, OrderRecord, Position};
use crate::money::FilledQty;

use super::StoreError;
use super::backend::with_tx;
use super::memory::{self, LifecycleRow};
use super::rows::{kind_str, side_str};
use super::tenant::TenantTx;

/// The amounts one fill adds to a lifecycle row.
pub(crate) struct LifecycleAdd {
    pub qty: Decimal,
    pub cost: Decimal,
    pub proceeds: Decimal,
    pub realized_pnl: Decimal,
}

impl TenantTx {
    /// Adds an ENTRY fill to the order's ENTRY row (the position), creating it on the first fill.
    pub(crate) async fn add_entry_fill(
        &mut self,
        order: &OrderRecord,
        add: &LifecycleAdd,
    ) -> Result<(), StoreError> {
        let first = order.filled_qty == FilledQty::ZERO;
        with_tx!(&mut self.tx, c, b => {
            if first {
                sqlx::query(
                    "INSERT INTO lifecycles (user_id, profile_id, symbol, kind, side, client_order_id, \
                     qty, cost, qty_open, cost_open, is_open) \
                     VALUES ($1, $2, $3, 'ENTRY', $4, $5, $6, $7, $6, $7, TRUE)",
                )
                .bind(order.user.as_uuid()).bind(order.profile.as_uuid()).bind(order.symbol.as_str())
                .bind(side_str(order.side)).bind(order.client_order_id.as_str())
                .bind(b::money(add.qty)).bind(b::money(add.cost))
                .execute(&mut **c).await?;
            } else {
                let sql = format!(
                    "UPDATE lifecycles SET qty = qty + $3, cost = cost + $4, qty_open = qty_open + $3, \
                     cost_open = cost_open + $4, is_open = TRUE, updated_at_ms = {} \
                     WHERE client_order_id = $1 AND user_id = $2",
                    b::NOW_MS
                );
                sqlx::query(&sql)
                    .bind(order.client_order_id.as_str()).bind(order.user.as_uuid())
                    .bind(b::money(add.qty)).bind(b::money(add.cost))
                    .execute(&mut **c).await?;
            }
        }, memory m => {
            let (qty, cost) = (memory::money(add.qty), memory::money(add.cost));
            if first {
                m.insert_lifecycle(LifecycleRow {
                    user: order.user,
                    profile: order.profile,
                    symbol: order.symbol.clone(),
                    kind: IntentKind::Entry,
                    side: order.side,
                    client_order_id: order.client_order_id.clone(),
                    entry_lifecycle_id: None,
                    qty,
                    cost,
                    proceeds: Decimal::ZERO,
                    realized_pnl: Decimal::ZERO,
                    qty_open: qty,
                    cost_open: cost,
                    is_open: true,
                })?;
            } else if let Some((id, _)) = m.lifecycle(&order.client_order_id, order.user) {
                m.update_lifecycle(id, order.user, |l| {
                    l.qty += qty;
                    l.cost += cost;
                    l.qty_open += qty;
                    l.cost_open += cost;
                    l.is_open = true;
                })?;
            }
        });
        Ok(())
    }

    /// Takes an EXIT fill off the position and adds it to the order's EXIT row.
    pub(crate) async fn add_exit_fill(
        &mut self,
        order: &OrderRecord,
        position: &Position,
        add: &LifecycleAdd,
    ) -> Result<(), StoreError> {
        let qty_open = position.qty_open.get() - add.qty;
        let cost_open = position.cost_open.get() - add.cost;
        assert!(qty_open >= Decimal::ZERO && cost_open >= Decimal::ZERO);
        let first = order.filled_qty == FilledQty::ZERO;
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "UPDATE lifecycles SET qty_open = $3, cost_open = $4, is_open = $5, updated_at_ms = {} \
                 WHERE lifecycle_id = $1 AND user_id = $2",
                b::NOW_MS
            );
            sqlx::query(&sql)
                .bind(position.lifecycle_id).bind(order.user.as_uuid())
                .bind(b::money(qty_open)).bind(b::money(cost_open)).bind(qty_open > Decimal::ZERO)
                .execute(&mut **c).await?;
            if first {
                sqlx::query(
                    "INSERT INTO lifecycles (user_id, profile_id, symbol, kind, side, client_order_id, \
                     entry_lifecycle_id, qty, cost, proceeds, realized_pnl, is_open) \
                     VALUES ($1, $2, $3, 'EXIT', $4, $5, $6, $7, $8, $9, $10, FALSE)",
                )
                .bind(order.user.as_uuid()).bind(order.profile.as_uuid()).bind(order.symbol.as_str())
                .bind(side_str(order.side)).bind(order.client_order_id.as_str())
                .bind(position.lifecycle_id)
                .bind(b::money(add.qty)).bind(b::money(add.cost))
                .bind(b::money(add.proceeds)).bind(b::money(add.realized_pnl))
                .execute(&mut **c).await?;
            } else {
                let sql = format!(
                    "UPDATE lifecycles SET qty = qty + $3, cost = cost + $4, proceeds = proceeds + $5, \
                     realized_pnl = realized_pnl + $6, updated_at_ms = {} \
                     WHERE client_order_id = $1 AND user_id = $2",
                    b::NOW_MS
                );
                sqlx::query(&sql)
                    .bind(order.client_order_id.as_str()).bind(order.user.as_uuid())
                    .bind(b::money(add.qty)).bind(b::money(add.cost))
                    .bind(b::money(add.proceeds)).bind(b::money(add.realized_pnl))
                    .execute(&mut **c).await?;
            }
        }, memory m => {
            let (qty_open, cost_open) = (memory::money(qty_open), memory::money(cost_open));
            m.update_lifecycle(position.lifecycle_id, order.user, |l| {
                l.qty_open = qty_open;
                l.cost_open = cost_open;
                l.is_open = qty_open > Decimal::ZERO;
            })?;
            let (qty, cost) = (memory::money(add.qty), memory::money(add.cost));
            let (proceeds, pnl) = (memory::money(add.proceeds), memory::money(add.realized_pnl));
            if first {
                m.insert_lifecycle(LifecycleRow {
                    user: order.user,
                    profile: order.profile,
                    symbol: order.symbol.clone(),
                    kind: IntentKind::Exit,
                    side: order.side,
                    client_order_id: order.client_order_id.clone(),
                    entry_lifecycle_id: Some(position.lifecycle_id),
                    qty,
                    cost,
                    proceeds,
                    realized_pnl: pnl,
                    qty_open: Decimal::ZERO,
                    cost_open: Decimal::ZERO,
                    is_open: false,
                })?;
            } else if let Some((id, _)) = m.lifecycle(&order.client_order_id, order.user) {
                m.update_lifecycle(id, order.user, |l| {
                    l.qty += qty;
                    l.cost += cost;
                    l.proceeds += proceeds;
                    l.realized_pnl += pnl;
                })?;
            }
        });
        Ok(())
    }

    /// Appends the fill to the owner's trade history.
    pub(crate) async fn insert_trade(
        &mut self,
        order: &OrderRecord,
        fill: &FillReport,
        realized_pnl: Decimal,
    ) -> Result<(), StoreError> {
        with_tx!(&mut self.tx, c, b => {
            sqlx::query(
                "INSERT INTO trade_history (user_id, profile_id, symbol, kind, side, client_order_id, \
                 exchange_trade_id, qty, price, fee, realized_pnl, executed_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(order.user.as_uuid()).bind(order.profile.as_uuid()).bind(order.symbol.as_str())
            .bind(kind_str(order.kind)).bind(side_str(order.side))
            .bind(order.client_order_id.as_str()).bind(fill.exchange_trade_id.as_str())
            .bind(b::money(fill.qty.get())).bind(b::money(fill.price.get()))
            .bind(b::money(fill.fee)).bind(b::money(realized_pnl)).bind(fill.executed_at_ms)
            .execute(&mut **c).await?;
        }, memory m => {
            m.insert_trade(order, fill.exchange_trade_id.as_str())?;
        });
        Ok(())
    }
}
