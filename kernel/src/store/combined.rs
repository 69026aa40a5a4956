//! PostgreSQL: the writes of the hot path (write-ahead ENTRY, ENTRY fill) as one statement each.
//!
//! Every round trip to the server costs about as much as a commit's share of CPU, so the
//! two-commit lifecycle is kept at four round trips per transaction (begin with claims, read,
//! write, commit). The kernel has already decided and checked every value written here; the
//! statement only applies them, and the database's constraints and triggers still check each row.
//! SQLite runs the same writes as separate statements (in-process, no round trips).

use crate::ledger::Capital;
use crate::lifecycle::{FillReport, OrderRecord};

use super::StoreError;
use super::backend::Tx;
use super::rows::{Move, side_str};
use super::tenant::TenantTx;

impl TenantTx {
    fn pg(&mut self) -> &mut sqlx::PgConnection {
        match &mut self.tx {
            Tx::Pg(tx) => tx,
            Tx::Lite(_) | Tx::InThread(_) | Tx::Memory(_) => {
                unreachable!("combined statements run on PostgreSQL only")
            }
        }
    }

    /// Inserts the write-ahead order and, only if it was new, writes the planned capital row and
    /// the reservation's journal entry. False when the client order id already existed.
    pub(crate) async fn pg_write_entry(
        &mut self,
        order: &OrderRecord,
        capital: &Capital,
        reserve: &Move,
    ) -> Result<bool, StoreError> {
        let lock = order
            .lock
            .as_ref()
            .expect("a write-ahead ENTRY carries its lock");
        let inserted: i64 = sqlx::query_scalar(
            "WITH o AS (INSERT INTO orders (client_order_id, user_id, profile_id, symbol, kind, side, \
             qty, price, reserved, reserved_remaining, filled_qty, status, lock_key, fence) \
             VALUES ($1, $2, $3, $4, 'ENTRY', $5, $6, $7, $8, $8, 0, 'PENDING_SUBMIT', $9, $10) \
             ON CONFLICT (client_order_id) DO NOTHING RETURNING client_order_id), \
             c AS (UPDATE capital_accounts SET allocated = $11, reserved_for_orders = $12, \
             reserved_for_positions = $13, realized_pnl = $14, updated_at_ms = keel_now_ms() \
             WHERE profile_id = $3 AND user_id = $2 AND EXISTS (SELECT 1 FROM o)), \
             j AS (INSERT INTO ledger_entries (user_id, profile_id, client_order_id, entry_kind, \
             d_reserved_for_orders, dedup_key) SELECT $2, $3, o.client_order_id, $15, $8, $16 FROM o) \
             SELECT count(*) FROM o",
        )
        .bind(order.client_order_id.as_str())
        .bind(order.user.as_uuid())
        .bind(order.profile.as_uuid())
        .bind(order.symbol.as_str())
        .bind(side_str(order.side))
        .bind(order.qty.get())
        .bind(order.price.get())
        .bind(order.reserved.get())
        .bind(lock.key.as_str())
        .bind(lock.fence.0)
        .bind(capital.allocated.get())
        .bind(capital.reserved_for_orders.get())
        .bind(capital.reserved_for_positions.get())
        .bind(capital.realized_pnl.get())
        .bind(reserve.kind.as_str())
        .bind(reserve.dedup_key.as_str())
        .fetch_one(self.pg())
        .await?;
        assert_eq!(reserve.delta.reserved_for_orders, order.reserved.get());
        Ok(inserted == 1)
    }

    /// Writes an ENTRY fill: the fill, the ENTRY lifecycle row, the planned capital row, the
    /// journal moves (zero moves skipped), the order's new state and the trade history row.
    pub(crate) async fn pg_write_entry_fill(
        &mut self,
        after: &OrderRecord,
        first_fill: bool,
        fill: &FillReport,
        cost: rust_decimal::Decimal,
        capital: &Capital,
        moves: &[Move; 2],
    ) -> Result<(), StoreError> {
        let lifecycle = if first_fill {
            "INSERT INTO lifecycles (user_id, profile_id, symbol, kind, side, client_order_id, qty, \
             cost, qty_open, cost_open, is_open) VALUES ($1, $2, $3, 'ENTRY', $29, $4, $6, $30, $6, $30, TRUE)"
        } else {
            "UPDATE lifecycles SET qty = qty + $6, cost = cost + $30, qty_open = qty_open + $6, \
             cost_open = cost_open + $30, is_open = TRUE, updated_at_ms = keel_now_ms() \
             WHERE client_order_id = $4 AND user_id = $1"
        };
        let sql = format!(
            "WITH f AS (INSERT INTO fills (user_id, profile_id, symbol, client_order_id, \
             exchange_trade_id, qty, price, fee, executed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)), \
             l AS ({lifecycle}), \
             c AS (UPDATE capital_accounts SET allocated = $10, reserved_for_orders = $11, \
             reserved_for_positions = $12, realized_pnl = $13, updated_at_ms = keel_now_ms() \
             WHERE profile_id = $2 AND user_id = $1), \
             j AS (INSERT INTO ledger_entries (user_id, profile_id, client_order_id, entry_kind, \
             d_allocated, d_reserved_for_orders, d_reserved_for_positions, d_realized_pnl, dedup_key) \
             SELECT $1, $2, $4, v.kind, v.da, v.dro, v.drp, v.dpnl, v.dedup FROM (VALUES \
             ($14, $15::numeric, $16::numeric, $17::numeric, $18::numeric, $19), \
             ($20, $21::numeric, $22::numeric, $23::numeric, $24::numeric, $25)) \
             AS v(kind, da, dro, drp, dpnl, dedup) \
             WHERE v.da <> 0 OR v.dro <> 0 OR v.drp <> 0 OR v.dpnl <> 0), \
             o AS (UPDATE orders SET status = $26, filled_qty = $27, reserved_remaining = $28, \
             updated_at_ms = keel_now_ms() WHERE client_order_id = $4 AND user_id = $1), \
             t AS (INSERT INTO trade_history (user_id, profile_id, symbol, kind, side, client_order_id, \
             exchange_trade_id, qty, price, fee, realized_pnl, executed_at_ms) \
             VALUES ($1, $2, $3, 'ENTRY', $29, $4, $5, $6, $7, $8, 0, $9)) \
             SELECT 1"
        );
        let mut query = sqlx::query(&sql)
            .bind(after.user.as_uuid())
            .bind(after.profile.as_uuid())
            .bind(after.symbol.as_str())
            .bind(after.client_order_id.as_str())
            .bind(fill.exchange_trade_id.as_str())
            .bind(fill.qty.get())
            .bind(fill.price.get())
            .bind(fill.fee)
            .bind(fill.executed_at_ms)
            .bind(capital.allocated.get())
            .bind(capital.reserved_for_orders.get())
            .bind(capital.reserved_for_positions.get())
            .bind(capital.realized_pnl.get());
        for entry in moves {
            let d = entry.delta;
            query = query
                .bind(entry.kind.as_str())
                .bind(d.allocated)
                .bind(d.reserved_for_orders)
                .bind(d.reserved_for_positions)
                .bind(d.realized_pnl)
                .bind(entry.dedup_key.as_str());
        }
        query
            .bind(after.status.as_str())
            .bind(after.filled_qty.get())
            .bind(after.reserved_remaining.get())
            .bind(side_str(after.side))
            .bind(cost)
            .execute(self.pg())
            .await?;
        Ok(())
    }
}
