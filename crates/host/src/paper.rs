//! Paper accounts of profiles that trade on no real exchange account: every demo profile, and in
//! `keel serve` every profile without its owner's credentials or the operator's assignment of
//! the host's account. Orders fill against the live candles the host receives; positions and
//! open orders are restored from the store when the profile starts, so a restart or a move to
//! another instance continues where the account was.

use std::sync::Arc;

use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_kernel::exchange::{OrderRequest, OrderType, PlaceOutcome, SymbolRules};
use keel_kernel::ids::{IntentKind, ProfileId, UserId};
use keel_kernel::lifecycle::OrderRecord;
use keel_kernel::market::Side;
use keel_kernel::money::Qty;
use keel_kernel::store::Store;
use rust_decimal::Decimal;

/// A fresh paper account of `rules`' symbols holding the positions and open orders the store
/// says the profile holds, numbering its ids from `first_id`.
pub(crate) async fn restored_paper(
    store: &Store,
    user: UserId,
    profile: ProfileId,
    config: PaperConfig,
    rules: impl IntoIterator<Item = SymbolRules>,
    first_id: i64,
) -> anyhow::Result<Arc<PaperExchange>> {
    let paper = PaperExchange::new(config, rules);
    paper.with_engine(|e| e.start_ids_at(first_id));
    let tenant = store.tenant(user);
    for position in tenant.positions(profile).await? {
        if position.qty_open.is_zero() {
            continue;
        }
        let qty = match position.side {
            Side::Buy => position.qty_open,
            Side::Sell => -position.qty_open,
        };
        let entry_price = position.cost_open / position.qty_open;
        paper.with_engine(|e| e.restore_position(&position.symbol, qty, entry_price))?;
        tracing::info!(profile_id = %profile, symbol = %position.symbol, %qty, "paper position restored from the store");
    }
    for order in tenant.open_orders(profile).await? {
        restore_order(&paper, &order)?;
    }
    Ok(Arc::new(paper))
}

/// Places an order the store holds open into a fresh paper account, under its own client order
/// id, for what is left of it. The store keeps no order type, so the order comes back as a
/// market order (the example plugins send market orders only); its fill then reaches the engine
/// as a live fill would.
fn restore_order(paper: &PaperExchange, order: &OrderRecord) -> anyhow::Result<()> {
    let remaining = order.qty_remaining();
    if !order.status.is_open() || remaining <= Decimal::ZERO {
        return Ok(());
    }
    let request = OrderRequest {
        client_order_id: order.client_order_id.clone(),
        symbol: order.symbol.clone(),
        side: order.side,
        order_type: OrderType::Market,
        qty: Qty::new(remaining)?,
        reduce_only: order.kind == IntentKind::Exit,
    };
    match paper.with_engine(|e| e.place(&request)) {
        PlaceOutcome::Accepted(_) => {
            tracing::info!(client_order_id = %order.client_order_id, "open order restored into the paper account");
            Ok(())
        }
        other => anyhow::bail!(
            "restoring order {} into the paper account: {other:?}",
            order.client_order_id
        ),
    }
}
