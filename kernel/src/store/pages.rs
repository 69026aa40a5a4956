//! Paged reads of a profile's history for its owner: every order, the ledger journal and trade
//! history, newest first, by keyset (`before` an id) so a page never shifts under the reader.

use rust_decimal::Decimal;

use crate::ids::{ClientOrderId, IntentKind, ProfileId, Symbol};
use crate::ledger::CapitalDelta;
use crate::lifecycle::OrderRecord;
use crate::market::Side;

use super::StoreError;
use super::backend::{RowExt, with_tx};
use super::rows::{ORDER_COLUMNS, corrupt, decode_order, parse_kind, parse_side};
use super::tenant::TenantTx;

/// Most rows one page holds.
pub const PAGE_ROWS_MAX: u32 = 500;

/// Which page: at most `limit` rows with ids below `before` (all when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Only rows with a smaller id.
    pub before: Option<i64>,
    /// Most rows, 1 to [`PAGE_ROWS_MAX`].
    pub limit: u32,
}

impl Page {
    fn bounds(&self) -> (i64, i64) {
        assert!(
            (1..=PAGE_ROWS_MAX).contains(&self.limit),
            "page limits are checked by the caller"
        );
        (self.before.unwrap_or(i64::MAX), i64::from(self.limit))
    }
}

/// An order with its row id and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// The row id (the page cursor).
    pub order_id: i64,
    /// The order.
    pub order: OrderRecord,
    /// Written, ms since the epoch.
    pub created_at_ms: i64,
    /// Last changed, ms since the epoch.
    pub updated_at_ms: i64,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// The row id (the page cursor).
    pub entry_id: i64,
    /// `ALLOCATE`, `ENTRY_RESERVE`, `FILL`, …
    pub kind: String,
    /// The order it belongs to (none for an allocation).
    pub client_order_id: Option<String>,
    /// What it changed.
    pub delta: CapitalDelta,
    /// Written, ms since the epoch.
    pub created_at_ms: i64,
}

/// One fill in trade history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRow {
    /// The row id (the page cursor).
    pub trade_id: i64,
    /// The instrument.
    pub symbol: Symbol,
    /// ENTRY or EXIT.
    pub kind: IntentKind,
    /// BUY or SELL.
    pub side: Side,
    /// The order filled.
    pub client_order_id: ClientOrderId,
    /// The exchange's trade id.
    pub exchange_trade_id: String,
    /// Quantity filled.
    pub qty: Decimal,
    /// Fill price.
    pub price: Decimal,
    /// Fee charged.
    pub fee: Decimal,
    /// Realized PnL of the fill (EXIT fills).
    pub realized_pnl: Decimal,
    /// When the exchange executed it, ms since the epoch.
    pub executed_at_ms: i64,
}

impl TenantTx {
    /// A page of the profile's orders, newest first.
    pub async fn orders_page(
        &mut self,
        profile: ProfileId,
        page: Page,
    ) -> Result<Vec<OrderRow>, StoreError> {
        let user = self.user_uuid();
        let (before, limit) = page.bounds();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT order_id, created_at_ms, updated_at_ms, {ORDER_COLUMNS} FROM orders \
                 WHERE profile_id = $1 AND user_id = $2 AND order_id < $3 \
                 ORDER BY order_id DESC LIMIT $4"
            );
            let rows = sqlx::query(&sql).bind(profile.as_uuid()).bind(user).bind(before).bind(limit)
                .fetch_all(&mut **c).await?;
            rows.iter()
                .map(|row| {
                    Ok(OrderRow {
                        order_id: row.int("order_id")?,
                        order: decode_order(row)?,
                        created_at_ms: row.int("created_at_ms")?,
                        updated_at_ms: row.int("updated_at_ms")?,
                    })
                })
                .collect()
        }, memory => unsupported("orders page"))
    }

    /// A page of the profile's ledger journal, newest first.
    pub async fn ledger_page(
        &mut self,
        profile: ProfileId,
        page: Page,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let user = self.user_uuid();
        let (before, limit) = page.bounds();
        with_tx!(&mut self.tx, c, b => {
            let rows = sqlx::query(
                "SELECT entry_id, entry_kind, client_order_id, d_allocated, d_reserved_for_orders, \
                 d_reserved_for_positions, d_realized_pnl, created_at_ms FROM ledger_entries \
                 WHERE profile_id = $1 AND user_id = $2 AND entry_id < $3 \
                 ORDER BY entry_id DESC LIMIT $4",
            )
            .bind(profile.as_uuid()).bind(user).bind(before).bind(limit)
            .fetch_all(&mut **c).await?;
            rows.iter()
                .map(|row| {
                    Ok(LedgerRow {
                        entry_id: row.int("entry_id")?,
                        kind: row.text("entry_kind")?,
                        client_order_id: row.opt_text("client_order_id")?,
                        delta: CapitalDelta {
                            allocated: row.money("d_allocated")?,
                            reserved_for_orders: row.money("d_reserved_for_orders")?,
                            reserved_for_positions: row.money("d_reserved_for_positions")?,
                            realized_pnl: row.money("d_realized_pnl")?,
                        },
                        created_at_ms: row.int("created_at_ms")?,
                    })
                })
                .collect()
        }, memory => unsupported("ledger page"))
    }

    /// A page of the profile's trade history, newest first.
    pub async fn trades_page(
        &mut self,
        profile: ProfileId,
        page: Page,
    ) -> Result<Vec<TradeRow>, StoreError> {
        let user = self.user_uuid();
        let (before, limit) = page.bounds();
        with_tx!(&mut self.tx, c, b => {
            let rows = sqlx::query(
                "SELECT trade_id, symbol, kind, side, client_order_id, exchange_trade_id, qty, price, \
                 fee, realized_pnl, executed_at_ms FROM trade_history \
                 WHERE profile_id = $1 AND user_id = $2 AND trade_id < $3 \
                 ORDER BY trade_id DESC LIMIT $4",
            )
            .bind(profile.as_uuid()).bind(user).bind(before).bind(limit)
            .fetch_all(&mut **c).await?;
            rows.iter()
                .map(|row| {
                    let coid = row.text("client_order_id")?;
                    Ok(TradeRow {
                        trade_id: row.int("trade_id")?,
                        symbol: Symbol::new(&row.text("symbol")?).map_err(|e| corrupt("symbol", e))?,
                        kind: parse_kind(&row.text("kind")?)?,
                        side: parse_side(&row.text("side")?)?,
                        client_order_id: ClientOrderId::new(&coid)
                            .map_err(|e| corrupt("client order id", e))?,
                        exchange_trade_id: row.text("exchange_trade_id")?,
                        qty: row.money("qty")?,
                        price: row.money("price")?,
                        fee: row.money("fee")?,
                        realized_pnl: row.money("realized_pnl")?,
                        executed_at_ms: row.int("executed_at_ms")?,
                    })
                })
                .collect()
        }, memory => unsupported("trades page"))
    }
}
