//! The user-data events the simulator writes besides `ORDER_TRADE_UPDATE`: `TRADE_LITE`,
//! `ACCOUNT_UPDATE` and `listenKeyExpired`, with Binance's field names and string decimals.
//! They are written here, not by the adapter's wire module, so the adapter reads them as it
//! reads Binance's.

use keel_kernel::exchange::{Fill, OrderReport};
use keel_kernel::ids::Symbol;
use keel_kernel::market::Side;
use keel_kernel::money::Price;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::account::Account;

/// A decimal as Binance writes wallet balances: eight places.
fn dp8(value: Decimal) -> String {
    format!("{:.8}", value.round_dp(8))
}

fn side(side: Side) -> &'static str {
    match side {
        Side::Buy => "BUY",
        Side::Sell => "SELL",
    }
}

/// One symbol's position as `ACCOUNT_UPDATE` reports it.
#[derive(Debug, Clone)]
struct PositionState {
    qty: Decimal,
    entry: Decimal,
    unrealized: Decimal,
    /// Realised PnL of every fill on the symbol, before fees.
    realized: Decimal,
    margin_type: &'static str,
    isolated_wallet: Decimal,
}

/// An account's balance and positions right after its engine emitted fills.
#[derive(Debug, Clone)]
pub(crate) struct AccountState {
    asset: String,
    wallet: Decimal,
    positions: Vec<(Symbol, PositionState)>,
}

impl AccountState {
    /// The state of `account` for the symbols in `traded`.
    pub fn of(account: &Account, traded: &[Symbol]) -> AccountState {
        let balance = account.engine.balance();
        let positions = traded
            .iter()
            .map(|symbol| {
                let position = account
                    .engine
                    .positions()
                    .into_iter()
                    .find(|p| &p.symbol == symbol);
                let (qty, entry, unrealized) =
                    position.map_or((Decimal::ZERO, Decimal::ZERO, Decimal::ZERO), |p| {
                        (
                            p.qty,
                            p.entry_price.map_or(Decimal::ZERO, Price::get),
                            p.unrealized_pnl.get(),
                        )
                    });
                let realized = account
                    .trades
                    .values()
                    .filter(|f| &f.symbol == symbol)
                    .map(|f| f.realized_pnl.get())
                    .sum();
                let margin_type = account.margin_type_of(symbol);
                let isolated_wallet = if margin_type == "isolated" {
                    (qty * entry).abs() / Decimal::from(account.leverage_of(symbol))
                } else {
                    Decimal::ZERO
                };
                let state = PositionState {
                    qty,
                    entry,
                    unrealized,
                    realized,
                    margin_type,
                    isolated_wallet,
                };
                (symbol.clone(), state)
            })
            .collect();
        AccountState {
            asset: balance.asset,
            wallet: balance.wallet_balance.get(),
            positions,
        }
    }
}

/// `TRADE_LITE`: the fill, ahead of the `ORDER_TRADE_UPDATE` that carries it in full.
pub(crate) fn trade_lite(report: &OrderReport, fill: &Fill, now_ms: i64) -> Value {
    let price = report
        .order_type
        .limit_price()
        .map_or(Decimal::ZERO, Price::get);
    json!({
        "e": "TRADE_LITE",
        "E": now_ms,
        "T": fill.time_ms,
        "s": fill.symbol.as_str(),
        "q": report.orig_qty.get().to_string(),
        "p": price.to_string(),
        "m": fill.maker,
        "c": report.client_order_id.as_str(),
        "S": side(fill.side),
        "L": fill.price.get().to_string(),
        "l": fill.qty.get().to_string(),
        "t": fill.trade_id.0,
        "i": fill.exchange_order_id.0,
    })
}

/// `ACCOUNT_UPDATE` with reason `ORDER`: the margin asset's balance and the position of
/// `symbol` after a fill, in one-way mode (`ps` is `BOTH`).
pub(crate) fn account_update(
    state: &AccountState,
    symbol: &Symbol,
    fill_time_ms: i64,
    now_ms: i64,
) -> Value {
    let positions: Vec<Value> = state
        .positions
        .iter()
        .filter(|(s, _)| s == symbol)
        .map(|(s, p)| {
            json!({
                "s": s.as_str(),
                "pa": p.qty.to_string(),
                "ep": p.entry.to_string(),
                // The simulator charges fees without tracking them per position, so the
                // break-even price is the entry price.
                "bep": p.entry.to_string(),
                "cr": dp8(p.realized),
                "up": dp8(p.unrealized),
                "mt": p.margin_type,
                "iw": dp8(p.isolated_wallet),
                "ps": "BOTH",
            })
        })
        .collect();
    json!({
        "e": "ACCOUNT_UPDATE",
        "E": now_ms,
        "T": fill_time_ms,
        "a": {
            "m": "ORDER",
            "B": [{
                "a": state.asset,
                "wb": dp8(state.wallet),
                "cw": dp8(state.wallet),
                // A fill changes the balance only by PnL and commission.
                "bc": "0",
            }],
            "P": positions,
        }
    })
}

/// `listenKeyExpired`, sent on every connection subscribed to a key that expired or was
/// deleted. Binance's example writes the event time as a string.
pub(crate) fn listen_key_expired(key: &str, now_ms: i64) -> Value {
    json!({
        "e": "listenKeyExpired",
        "E": now_ms.to_string(),
        "listenKey": key,
    })
}
