//! A profile's orders, open positions, ledger journal and trade history, for its owner. Lists
//! are newest first and paged by `before` (the last id of the previous page) and `limit`.

use axum::Json;
use axum::extract::State;
use keel_kernel::ids::ProfileId;
use keel_kernel::store::{LedgerRow, OrderRow, PAGE_ROWS_MAX, Page, TradeRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::errors::{ApiPath, ApiQuery};
use super::profiles::found;
use super::{ApiError, ApiState, Auth, ErrorBody};

/// Rows in a page unless `limit` says otherwise.
pub const PAGE_ROWS_DEFAULT: u32 = 100;

pub(super) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_orders))
        .routes(routes!(list_positions))
        .routes(routes!(list_ledger))
        .routes(routes!(list_trades))
}

/// Paging of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Only rows with an id below this one (the last id of the previous page).
    pub before: Option<i64>,
    /// Most rows, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

impl PageQuery {
    fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(PAGE_ROWS_DEFAULT);
        if !(1..=PAGE_ROWS_MAX).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1 to {PAGE_ROWS_MAX}, got {limit}"
            )));
        }
        Ok(Page {
            before: self.before,
            limit,
        })
    }
}

/// An order. Amounts are decimal strings.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    /// Row id (the page cursor).
    pub order_id: i64,
    /// The deterministic client order id.
    pub client_order_id: String,
    /// The instrument.
    pub symbol: String,
    /// `ENTRY` or `EXIT`.
    pub kind: String,
    /// `BUY` or `SELL`.
    pub side: String,
    /// Quantity ordered.
    pub qty: String,
    /// Price (the reference price of a market order).
    pub price: String,
    /// Filled so far.
    pub filled_qty: String,
    /// Capital still reserved by the order.
    pub reserved_remaining: String,
    /// `PENDING_SUBMIT`, `UNKNOWN`, `NEW`, `PARTIALLY_FILLED`, `FILLED`, `CANCELED`, …
    pub status: String,
    /// The exchange's order id, once it acknowledged the order.
    pub exchange_order_id: Option<String>,
    /// Written, ms since the epoch.
    pub created_at_ms: i64,
    /// Last changed, ms since the epoch.
    pub updated_at_ms: i64,
}

/// The serialized name of a unit enum variant (`BUY`, `ENTRY`): the same text the store keeps.
fn json_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        other => unreachable!("a unit variant serializes as a string, not {other:?}"),
    }
}

impl From<OrderRow> for OrderView {
    fn from(row: OrderRow) -> Self {
        let order = row.order;
        OrderView {
            order_id: row.order_id,
            client_order_id: order.client_order_id.to_string(),
            symbol: order.symbol.to_string(),
            kind: json_name(&order.kind),
            side: json_name(&order.side),
            qty: order.qty.to_string(),
            price: order.price.to_string(),
            filled_qty: order.filled_qty.to_string(),
            reserved_remaining: order.reserved_remaining.to_string(),
            status: order.status.as_str().to_owned(),
            exchange_order_id: order.exchange_order_id.as_deref().map(str::to_owned),
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
        }
    }
}

/// An open position.
#[derive(Debug, Serialize, ToSchema)]
pub struct PositionView {
    /// The instrument.
    pub symbol: String,
    /// `BUY` (long) or `SELL` (short).
    pub side: String,
    /// Quantity open.
    pub qty_open: String,
    /// Cost of the open quantity.
    pub cost_open: String,
}

/// One entry of the capital journal.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntryView {
    /// Row id (the page cursor).
    pub entry_id: i64,
    /// `ALLOCATE`, `ENTRY_RESERVE`, `FILL`, `CANCEL_RELEASE`, `EXIT`, `FEE`, `REALIZED_PNL`.
    pub kind: String,
    /// The order it belongs to.
    pub client_order_id: Option<String>,
    /// Change of allocated capital.
    pub d_allocated: String,
    /// Change of capital reserved for orders.
    pub d_reserved_for_orders: String,
    /// Change of capital reserved for positions.
    pub d_reserved_for_positions: String,
    /// Change of realized PnL.
    pub d_realized_pnl: String,
    /// Written, ms since the epoch.
    pub created_at_ms: i64,
}

impl From<LedgerRow> for LedgerEntryView {
    fn from(row: LedgerRow) -> Self {
        LedgerEntryView {
            entry_id: row.entry_id,
            kind: row.kind,
            client_order_id: row.client_order_id,
            d_allocated: row.delta.allocated.to_string(),
            d_reserved_for_orders: row.delta.reserved_for_orders.to_string(),
            d_reserved_for_positions: row.delta.reserved_for_positions.to_string(),
            d_realized_pnl: row.delta.realized_pnl.to_string(),
            created_at_ms: row.created_at_ms,
        }
    }
}

/// One fill in trade history.
#[derive(Debug, Serialize, ToSchema)]
pub struct TradeView {
    /// Row id (the page cursor).
    pub trade_id: i64,
    /// The instrument.
    pub symbol: String,
    /// `ENTRY` or `EXIT`.
    pub kind: String,
    /// `BUY` or `SELL`.
    pub side: String,
    /// The order filled.
    pub client_order_id: String,
    /// The exchange's trade id.
    pub exchange_trade_id: String,
    /// Quantity filled.
    pub qty: String,
    /// Fill price.
    pub price: String,
    /// Fee charged.
    pub fee: String,
    /// Realized PnL of the fill.
    pub realized_pnl: String,
    /// Executed, ms since the epoch.
    pub executed_at_ms: i64,
}

impl From<TradeRow> for TradeView {
    fn from(row: TradeRow) -> Self {
        TradeView {
            trade_id: row.trade_id,
            symbol: row.symbol.to_string(),
            kind: json_name(&row.kind),
            side: json_name(&row.side),
            client_order_id: row.client_order_id.to_string(),
            exchange_trade_id: row.exchange_trade_id,
            qty: row.qty.to_string(),
            price: row.price.to_string(),
            fee: row.fee.to_string(),
            realized_pnl: row.realized_pnl.to_string(),
            executed_at_ms: row.executed_at_ms,
        }
    }
}

/// Lists the profile's orders, newest first.
#[utoipa::path(get, path = "/profiles/{profile_id}/orders", tag = "history",
    params(("profile_id" = Uuid, Path, description = "the profile"), PageQuery),
    responses((status = 200, body = [OrderView]), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_orders(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<OrderView>>, ApiError> {
    let (profile, page) = (ProfileId::from_uuid(profile), query.page()?);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, false).await?;
    let rows = tx.orders_page(profile, page).await?;
    tx.commit().await?;
    Ok(Json(rows.into_iter().map(OrderView::from).collect()))
}

/// Lists the profile's open positions.
#[utoipa::path(get, path = "/profiles/{profile_id}/positions", tag = "history",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = [PositionView]), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_positions(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<Vec<PositionView>>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, false).await?;
    let positions = tx.positions(profile).await?;
    tx.commit().await?;
    let views = positions
        .into_iter()
        .map(|p| PositionView {
            symbol: p.symbol.to_string(),
            side: json_name(&p.side),
            qty_open: p.qty_open.to_string(),
            cost_open: p.cost_open.to_string(),
        })
        .collect();
    Ok(Json(views))
}

/// Lists the profile's capital journal, newest first.
#[utoipa::path(get, path = "/profiles/{profile_id}/ledger", tag = "history",
    params(("profile_id" = Uuid, Path, description = "the profile"), PageQuery),
    responses((status = 200, body = [LedgerEntryView]), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_ledger(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<LedgerEntryView>>, ApiError> {
    let (profile, page) = (ProfileId::from_uuid(profile), query.page()?);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, false).await?;
    let rows = tx.ledger_page(profile, page).await?;
    tx.commit().await?;
    Ok(Json(rows.into_iter().map(LedgerEntryView::from).collect()))
}

/// Lists the profile's trade history (one row per fill), newest first.
#[utoipa::path(get, path = "/profiles/{profile_id}/trades", tag = "history",
    params(("profile_id" = Uuid, Path, description = "the profile"), PageQuery),
    responses((status = 200, body = [TradeView]), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_trades(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<TradeView>>, ApiError> {
    let (profile, page) = (ProfileId::from_uuid(profile), query.page()?);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, false).await?;
    let rows = tx.trades_page(profile, page).await?;
    tx.commit().await?;
    Ok(Json(rows.into_iter().map(TradeView::from).collect()))
}
