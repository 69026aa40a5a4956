//! The account endpoints: balances, account, positions, leverage and margin type, computed
//! from the paper account's state with Binance's field names and string decimals.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use keel_exchange::codes;
use keel_kernel::ids::Symbol;
use keel_kernel::money::Price;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{
    ApiError, Params, Reply, account_name, finish, gate, ok, optional_symbol, param, signed,
    symbol_param,
};
use crate::SimState;

signed_handler!(
    /// `GET /fapi/v2/positionRisk`: every listed symbol, flat ones included.
    position_risk,
    5,
    |state: &SimState, account: &str, params: &Params| position_rows(state, account, params, false)
);

signed_handler!(
    /// `GET /fapi/v2/balance`.
    balance,
    5,
    |state: &SimState, account: &str, _: &Params| balance_rows(state, account)
);

fn balance_rows(state: &SimState, account: &str) -> Reply {
    let b = state.with_engine(account, |e| e.balance());
    let wallet = b.wallet_balance.get();
    let available = b.available_balance.get();
    ok(vec![json!({
        "accountAlias": "SgsR",
        "asset": b.asset,
        "balance": dp8(wallet),
        "crossWalletBalance": dp8(wallet),
        "crossUnPnl": dp8(available - wallet),
        "availableBalance": dp8(available),
        "maxWithdrawAmount": dp8(available),
        "marginAvailable": true,
        "updateTime": state.now_ms(),
    })])
}

/// A decimal as Binance writes balances and margins: eight places.
fn dp8(value: Decimal) -> String {
    format!("{:.8}", value.round_dp(8))
}

/// Binance's maintenance margin rate of the first bracket.
const MAINT_MARGIN_RATE: Decimal = Decimal::from_parts(4, 0, 0, false, 3);
/// The notional cap of the one leverage bracket the simulator announces.
const BRACKET_NOTIONAL_CAP: i64 = 50_000_000;

/// What the account endpoints say about one symbol.
struct PositionView {
    symbol: Symbol,
    qty: Decimal,
    entry: Decimal,
    mark: Decimal,
    unrealized: Decimal,
    notional: Decimal,
    leverage: u32,
    margin_type: &'static str,
    initial_margin: Decimal,
    maint_margin: Decimal,
    open_order_margin: Decimal,
    bid_notional: Decimal,
    ask_notional: Decimal,
}

/// The account's state, as the account endpoints report it.
struct AccountView {
    asset: String,
    wallet: Decimal,
    unrealized: Decimal,
    available: Decimal,
    positions: Vec<PositionView>,
}

impl AccountView {
    fn of(state: &SimState, name: &str) -> AccountView {
        state.with_account(name, |account| {
            let balance = account.engine.balance();
            let open = account.engine.open_orders(None);
            let positions = account
                .engine
                .positions()
                .into_iter()
                .map(|p| {
                    let mark = account
                        .engine
                        .last_price(&p.symbol)
                        .map_or(Decimal::ZERO, Price::get);
                    let leverage = account.leverage_of(&p.symbol);
                    let notional = p.qty * mark;
                    let side_notional = |side: keel_kernel::market::Side| -> Decimal {
                        open.iter()
                            .filter(|o| o.symbol == p.symbol && o.side == side)
                            .map(|o| {
                                let price = o.order_type.limit_price().map_or(mark, Price::get);
                                (o.orig_qty.get() - o.executed_qty) * price
                            })
                            .sum()
                    };
                    let bid_notional = side_notional(keel_kernel::market::Side::Buy);
                    let ask_notional = side_notional(keel_kernel::market::Side::Sell);
                    let lev = Decimal::from(leverage);
                    PositionView {
                        symbol: p.symbol.clone(),
                        qty: p.qty,
                        entry: p.entry_price.map_or(Decimal::ZERO, Price::get),
                        mark,
                        unrealized: p.unrealized_pnl.get(),
                        notional,
                        leverage,
                        margin_type: account.margin_type_of(&p.symbol),
                        initial_margin: notional.abs() / lev,
                        maint_margin: notional.abs() * MAINT_MARGIN_RATE,
                        open_order_margin: bid_notional.max(ask_notional) / lev,
                        bid_notional,
                        ask_notional,
                    }
                })
                .collect();
            AccountView {
                asset: balance.asset,
                wallet: balance.wallet_balance.get(),
                unrealized: balance.available_balance.get() - balance.wallet_balance.get(),
                available: balance.available_balance.get(),
                positions,
            }
        })
    }

    fn sum(&self, f: impl Fn(&PositionView) -> Decimal) -> Decimal {
        self.positions.iter().map(f).sum()
    }

    fn totals(&self, now: i64, v3: bool) -> Value {
        let initial = self.sum(|p| p.initial_margin + p.open_order_margin);
        let maint = self.sum(|p| p.maint_margin);
        let position_initial = self.sum(|p| p.initial_margin);
        let order_initial = self.sum(|p| p.open_order_margin);
        let margin_balance = self.wallet + self.unrealized;
        let mut asset = json!({
            "asset": self.asset,
            "walletBalance": dp8(self.wallet),
            "unrealizedProfit": dp8(self.unrealized),
            "marginBalance": dp8(margin_balance),
            "maintMargin": dp8(maint),
            "initialMargin": dp8(initial),
            "positionInitialMargin": dp8(position_initial),
            "openOrderInitialMargin": dp8(order_initial),
            "crossWalletBalance": dp8(self.wallet),
            "crossUnPnl": dp8(self.unrealized),
            "availableBalance": dp8(self.available),
            "maxWithdrawAmount": dp8(self.available),
            "updateTime": now,
        });
        if !v3 {
            asset["marginAvailable"] = json!(true);
        }
        json!({
            "totalInitialMargin": dp8(initial),
            "totalMaintMargin": dp8(maint),
            "totalWalletBalance": dp8(self.wallet),
            "totalUnrealizedProfit": dp8(self.unrealized),
            "totalMarginBalance": dp8(margin_balance),
            "totalPositionInitialMargin": dp8(position_initial),
            "totalOpenOrderInitialMargin": dp8(order_initial),
            "totalCrossWalletBalance": dp8(self.wallet),
            "totalCrossUnPnl": dp8(self.unrealized),
            "availableBalance": dp8(self.available),
            "maxWithdrawAmount": dp8(self.available),
            "assets": [asset],
        })
    }
}

/// `GET /fapi/v2/account` and `/fapi/v3/account`: totals, the margin asset and positions (v3
/// lists only symbols with a position or open orders, as Binance does).
fn account_json(state: &SimState, account: &str, v3: bool) -> Reply {
    let view = AccountView::of(state, account);
    let now = state.now_ms();
    let mut answer = view.totals(now, v3);
    let positions: Vec<Value> = view
        .positions
        .iter()
        .filter(|p| !v3 || !p.qty.is_zero() || !(p.bid_notional + p.ask_notional).is_zero())
        .map(|p| {
            let mut row = json!({
                "symbol": p.symbol.as_str(),
                "positionSide": "BOTH",
                "positionAmt": p.qty.to_string(),
                "unrealizedProfit": dp8(p.unrealized),
                "initialMargin": dp8(p.initial_margin + p.open_order_margin),
                "maintMargin": dp8(p.maint_margin),
                "updateTime": now,
            });
            let extra = if v3 {
                json!({
                    "isolatedMargin": "0.00000000",
                    "notional": dp8(p.notional),
                    "isolatedWallet": "0",
                })
            } else {
                json!({
                    "positionInitialMargin": dp8(p.initial_margin),
                    "openOrderInitialMargin": dp8(p.open_order_margin),
                    "leverage": p.leverage.to_string(),
                    "isolated": p.margin_type == "isolated",
                    "entryPrice": p.entry.to_string(),
                    "breakEvenPrice": p.entry.to_string(),
                    "maxNotional": BRACKET_NOTIONAL_CAP.to_string(),
                    "bidNotional": dp8(p.bid_notional),
                    "askNotional": dp8(p.ask_notional),
                })
            };
            merge(&mut row, extra);
            row
        })
        .collect();
    answer["positions"] = json!(positions);
    if !v3 {
        let extra = json!({
            "feeTier": 0, "canTrade": true, "canDeposit": true, "canWithdraw": true,
            "updateTime": 0, "multiAssetsMargin": false, "tradeGroupId": -1,
        });
        merge(&mut answer, extra);
    }
    ok(answer)
}

/// Adds `extra`'s fields to the object `row`.
fn merge(row: &mut Value, extra: Value) {
    let (Value::Object(row), Value::Object(extra)) = (row, extra) else {
        unreachable!("both are objects");
    };
    row.extend(extra);
}

signed_handler!(
    /// `GET /fapi/v2/account`.
    account_v2,
    5,
    |state: &SimState, account: &str, _: &Params| account_json(state, account, false)
);

signed_handler!(
    /// `GET /fapi/v3/account`.
    account_v3,
    5,
    |state: &SimState, account: &str, _: &Params| account_json(state, account, true)
);

signed_handler!(
    /// `GET /fapi/v3/balance` (the same rows as v2).
    balance_v3,
    5,
    |state: &SimState, account: &str, _: &Params| balance_rows(state, account)
);

signed_handler!(
    /// `GET /fapi/v3/positionRisk`: symbols with a position or open orders.
    position_risk_v3,
    5,
    |state: &SimState, account: &str, params: &Params| position_rows(state, account, params, true)
);

fn position_rows(state: &SimState, account: &str, params: &Params, v3: bool) -> Reply {
    let symbol = optional_symbol(params)?;
    let view = AccountView::of(state, account);
    let now = state.now_ms();
    let rows: Vec<Value> = view
        .positions
        .iter()
        .filter(|p| symbol.as_ref().is_none_or(|s| s == &p.symbol))
        .filter(|p| !v3 || !p.qty.is_zero() || !(p.bid_notional + p.ask_notional).is_zero())
        .map(|p| {
            let mut row = json!({
                "symbol": p.symbol.as_str(),
                "positionSide": "BOTH",
                "positionAmt": p.qty.to_string(),
                "entryPrice": p.entry.to_string(),
                "breakEvenPrice": p.entry.to_string(),
                "markPrice": dp8(p.mark),
                "unRealizedProfit": dp8(p.unrealized),
                "liquidationPrice": "0",
                "isolatedMargin": "0",
                "notional": dp8(p.notional),
                "isolatedWallet": "0",
                "updateTime": now,
            });
            let extra = if v3 {
                json!({
                    "marginAsset": view.asset,
                    "initialMargin": dp8(p.initial_margin + p.open_order_margin),
                    "maintMargin": dp8(p.maint_margin),
                    "positionInitialMargin": dp8(p.initial_margin),
                    "openOrderInitialMargin": dp8(p.open_order_margin),
                    "adl": 0,
                    "bidNotional": dp8(p.bid_notional),
                    "askNotional": dp8(p.ask_notional),
                })
            } else {
                json!({
                    "leverage": p.leverage.to_string(),
                    "maxNotionalValue": BRACKET_NOTIONAL_CAP.to_string(),
                    "marginType": p.margin_type,
                    "isAutoAddMargin": "false",
                })
            };
            merge(&mut row, extra);
            row
        })
        .collect();
    ok(rows)
}

fn bracket(symbol: &Symbol) -> Value {
    json!({
        "symbol": symbol.as_str(),
        "notionalCoef": 1.0,
        "brackets": [{
            "bracket": 1,
            "initialLeverage": crate::account::LEVERAGE_MAX,
            "notionalCap": BRACKET_NOTIONAL_CAP,
            "notionalFloor": 0,
            "maintMarginRatio": 0.004,
            "cum": 0.0,
        }],
    })
}

signed_handler!(
    /// `GET /fapi/v1/leverageBracket`: one bracket per symbol; an object when `symbol` is sent.
    leverage_bracket,
    1,
    |_: &SimState, _: &str, params: &Params| -> Reply {
        let listed: Vec<Symbol> = crate::sim_symbols().into_iter().map(|(r, _)| r.symbol).collect();
        match optional_symbol(params)? {
            Some(symbol) if listed.contains(&symbol) => ok(bracket(&symbol)),
            Some(_) => Err(ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol.")),
            None => ok(listed.iter().map(bracket).collect::<Vec<_>>()),
        }
    }
);

fn listed_symbol(state: &SimState, params: &Params) -> Result<Symbol, ApiError> {
    let symbol = symbol_param(params)?;
    if state.with_engine(crate::MAIN_ACCOUNT, |e| e.rules(&symbol).is_none()) {
        return Err(ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."));
    }
    Ok(symbol)
}

signed_handler!(
    /// `POST /fapi/v1/leverage`.
    set_leverage,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let symbol = listed_symbol(state, params)?;
        let text = param(params, "leverage")?;
        let leverage: u32 = text
            .parse()
            .ok()
            .filter(|l| (1..=crate::account::LEVERAGE_MAX).contains(l))
            .ok_or_else(|| ApiError::bad(codes::INVALID_LEVERAGE, format!("Leverage {text} is not valid")))?;
        state.with_account(account, |a| a.leverage.insert(symbol.clone(), leverage));
        ok(json!({
            "leverage": leverage,
            "maxNotionalValue": BRACKET_NOTIONAL_CAP.to_string(),
            "symbol": symbol.as_str(),
        }))
    }
);

signed_handler!(
    /// `POST /fapi/v1/marginType`: `ISOLATED` or `CROSSED`; `NO_NEED_TO_CHANGE_MARGIN_TYPE` when nothing
    /// changes.
    set_margin_type,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let symbol = listed_symbol(state, params)?;
        let isolated = match param(params, "marginType")? {
            "ISOLATED" => true,
            "CROSSED" => false,
            _ => return Err(ApiError::bad(codes::INVALID_MARGIN_TYPE, "The margin type is invalid.")),
        };
        let changed = state.with_account(account, |a| {
            if isolated {
                a.isolated.insert(symbol.clone())
            } else {
                a.isolated.remove(&symbol)
            }
        });
        if !changed {
            return Err(ApiError::bad(codes::NO_NEED_TO_CHANGE_MARGIN_TYPE, "No need to change margin type."));
        }
        ok(json!({"code": 200, "msg": "success"}))
    }
);
