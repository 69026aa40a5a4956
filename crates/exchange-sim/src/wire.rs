//! The simulator's own Binance JSON: orders, trades and the `ORDER_TRADE_UPDATE` event, written
//! from Binance's documented examples (`tests/fixtures/binance`), not with the adapter's
//! serializer, so a mistake made on one side shows against the other.

use keel_kernel::exchange::{Fill, OrderReport, OrderType};
use keel_kernel::market::Side;
use keel_kernel::money::Price;
use keel_kernel::order::OrderStatus;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::account::{Conditional, KeptOrder, OrderTerms};

/// `BUY` / `SELL`.
pub(crate) fn side(side: Side) -> &'static str {
    match side {
        Side::Buy => "BUY",
        Side::Sell => "SELL",
    }
}

/// Reads `BUY` / `SELL`.
pub(crate) fn parse_side(text: &str) -> Option<Side> {
    match text {
        "BUY" => Some(Side::Buy),
        "SELL" => Some(Side::Sell),
        _ => None,
    }
}

/// The type the matching engine gives an order: what a conditional order became once it
/// triggered, or a plain order's type.
fn engine_type(order_type: OrderType) -> &'static str {
    match order_type {
        OrderType::Market => "MARKET",
        OrderType::Limit { .. } => "LIMIT",
    }
}

/// The order's type as placed (`origType`, and `type` in REST answers).
fn placed_type(report: &OrderReport, terms: &OrderTerms) -> &'static str {
    terms
        .conditional
        .as_ref()
        .map_or(engine_type(report.order_type), |c| c.kind.as_str())
}

/// The type `o` of an `ORDER_TRADE_UPDATE`: the conditional type until it triggers, then the
/// market or limit order it became.
fn current_type(report: &OrderReport, terms: &OrderTerms) -> &'static str {
    match &terms.conditional {
        Some(c) if !c.triggered => c.kind.as_str(),
        _ => engine_type(report.order_type),
    }
}

fn limit_price(report: &OrderReport) -> Decimal {
    report
        .order_type
        .limit_price()
        .map_or(Decimal::ZERO, Price::get)
}

/// `origQty`: a `closePosition` order has no quantity of its own until it triggers.
fn orig_qty(report: &OrderReport, terms: &OrderTerms) -> String {
    match &terms.conditional {
        Some(Conditional {
            close_position: true,
            triggered: false,
            ..
        }) => "0".to_owned(),
        _ => report.orig_qty.get().to_string(),
    }
}

fn stop_price(terms: &OrderTerms) -> String {
    terms
        .conditional
        .as_ref()
        .map_or_else(|| "0".to_owned(), |c| c.stop_price.to_string())
}

/// An order as `POST/GET/DELETE /fapi/v1/order`, `openOrders` and `allOrders` answer it.
pub(crate) fn order(report: &OrderReport, terms: &OrderTerms, created_ms: i64) -> Value {
    let avg = report.avg_price.map_or(Decimal::ZERO, Price::get);
    let conditional = terms.conditional.as_ref();
    let placed = placed_type(report, terms);
    json!({
        "orderId": report.exchange_order_id.0,
        "symbol": report.symbol.as_str(),
        "status": report.status.as_str(),
        "clientOrderId": report.client_order_id.as_str(),
        "price": limit_price(report).to_string(),
        "avgPrice": avg.to_string(),
        "origQty": orig_qty(report, terms),
        "executedQty": report.executed_qty.to_string(),
        "cumQty": report.executed_qty.to_string(),
        "cumQuote": (avg * report.executed_qty).to_string(),
        "timeInForce": terms.time_in_force,
        "type": placed,
        "reduceOnly": report.reduce_only,
        "closePosition": conditional.is_some_and(|c| c.close_position),
        "side": side(report.side),
        "positionSide": "BOTH",
        "stopPrice": stop_price(terms),
        "workingType": conditional.map_or("CONTRACT_PRICE", |c| c.working_type.as_str()),
        "priceProtect": conditional.is_some_and(|c| c.price_protect),
        "origType": placed,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "NONE",
        "goodTillDate": 0,
        "time": created_ms,
        "updateTime": report.update_time_ms,
    })
}

/// An algo order's `algoStatus`: `NEW` while it waits, `CANCELED` if cancelled then,
/// `TRIGGERED` once its order went to the matching engine and `FINISHED` once that order
/// closed; `EXPIRED` when the trigger found nothing to do (a `closePosition` or reduce-only
/// order with no position to reduce).
fn algo_status(kept: &KeptOrder, placed_at_trigger: bool) -> &'static str {
    let triggered = kept.terms.conditional.as_ref().is_some_and(|c| c.triggered);
    match (triggered, placed_at_trigger, kept.report.status) {
        (false, _, OrderStatus::Canceled) => "CANCELED",
        (false, _, s) if s.is_open() => "NEW",
        (false, _, _) => "EXPIRED",
        (true, false, _) => "EXPIRED",
        (true, true, s) if s.is_open() => "TRIGGERED",
        (true, true, _) => "FINISHED",
    }
}

/// An algo order as the Algo Order API (`/fapi/v1/algoOrder`, `openAlgoOrders`,
/// `allAlgoOrders`) answers it. Its `algoId` is the order id the simulator keeps through the
/// trigger, so `actualOrderId` (once triggered) is the same number.
pub(crate) fn algo_order(kept: &KeptOrder, placed_at_trigger: bool) -> Value {
    let (report, terms) = (&kept.report, &kept.terms);
    let conditional = terms.conditional.as_ref();
    let triggered_ms = conditional.map_or(0, |c| c.triggered_ms);
    let actual_order_id = if placed_at_trigger {
        report.exchange_order_id.0.to_string()
    } else {
        String::new()
    };
    let actual_price = report.avg_price.map_or(Decimal::ZERO, Price::get);
    json!({
        "algoId": report.exchange_order_id.0,
        "clientAlgoId": report.client_order_id.as_str(),
        "algoType": "CONDITIONAL",
        "orderType": placed_type(report, terms),
        "symbol": report.symbol.as_str(),
        "side": side(report.side),
        "positionSide": "BOTH",
        "timeInForce": terms.time_in_force,
        "quantity": orig_qty(report, terms),
        "algoStatus": algo_status(kept, placed_at_trigger),
        "actualOrderId": actual_order_id,
        "actualPrice": actual_price.to_string(),
        "triggerPrice": stop_price(terms),
        "price": limit_price(report).to_string(),
        "icebergQuantity": null,
        "tpTriggerPrice": "0",
        "tpPrice": "0",
        "slTriggerPrice": "0",
        "slPrice": "0",
        "tpOrderType": "",
        "selfTradePreventionMode": "NONE",
        "workingType": conditional.map_or("CONTRACT_PRICE", |c| c.working_type.as_str()),
        "priceMatch": "NONE",
        "closePosition": conditional.is_some_and(|c| c.close_position),
        "priceProtect": conditional.is_some_and(|c| c.price_protect),
        "reduceOnly": report.reduce_only,
        "createTime": kept.created_ms,
        "updateTime": report.update_time_ms,
        "triggerTime": triggered_ms,
        "goodTillDate": 0,
    })
}

/// The execution type of an order update: `TRADE` for a fill, else what happened to it.
fn execution(report: &OrderReport, fill: Option<&Fill>) -> &'static str {
    match (fill, report.status) {
        (Some(_), _) => "TRADE",
        (None, OrderStatus::Canceled) => "CANCELED",
        (None, OrderStatus::Expired) => "EXPIRED",
        (None, OrderStatus::Rejected) => "REJECTED",
        (None, _) => "NEW",
    }
}

/// An `ORDER_TRADE_UPDATE` event of the user-data stream; `fill` makes it a `TRADE` execution.
pub(crate) fn order_trade_update(
    report: &OrderReport,
    terms: &OrderTerms,
    fill: Option<&Fill>,
    asset: &str,
    now_ms: i64,
) -> Value {
    let zero = || "0".to_owned();
    let conditional = terms.conditional.as_ref();
    let time_ms = fill.map_or(report.update_time_ms, |f| f.time_ms);
    json!({
        "e": "ORDER_TRADE_UPDATE",
        "E": now_ms,
        "T": time_ms,
        "o": {
            "s": report.symbol.as_str(),
            "c": report.client_order_id.as_str(),
            "S": side(report.side),
            "o": current_type(report, terms),
            "f": terms.time_in_force,
            "q": orig_qty(report, terms),
            "p": limit_price(report).to_string(),
            "ap": report.avg_price.map_or(Decimal::ZERO, Price::get).to_string(),
            "sp": stop_price(terms),
            "x": execution(report, fill),
            "X": report.status.as_str(),
            "i": report.exchange_order_id.0,
            "l": fill.map_or_else(zero, |f| f.qty.get().to_string()),
            "z": report.executed_qty.to_string(),
            "L": fill.map_or_else(zero, |f| f.price.get().to_string()),
            "N": asset,
            "n": fill.map_or_else(zero, |f| f.fee.get().to_string()),
            "T": time_ms,
            "t": fill.map_or(0, |f| f.trade_id.0),
            "b": "0",
            "a": "0",
            "m": fill.is_some_and(|f| f.maker),
            "R": report.reduce_only,
            "wt": conditional.map_or("CONTRACT_PRICE", |c| c.working_type.as_str()),
            "ot": placed_type(report, terms),
            "ps": "BOTH",
            "cp": conditional.is_some_and(|c| c.close_position),
            "rp": fill.map_or_else(zero, |f| f.realized_pnl.get().to_string()),
            "pP": conditional.is_some_and(|c| c.price_protect),
            "si": 0,
            "ss": 0,
            "V": "NONE",
            "pm": "NONE",
            "gtd": 0
        }
    })
}

/// One row of `GET /fapi/v1/userTrades`.
pub(crate) fn trade(fill: &Fill, asset: &str) -> Value {
    let (price, qty) = (fill.price.get(), fill.qty.get());
    json!({
        "buyer": fill.side == Side::Buy,
        "commission": fill.fee.get().to_string(),
        "commissionAsset": asset,
        "id": fill.trade_id.0,
        "maker": fill.maker,
        "orderId": fill.exchange_order_id.0,
        "price": price.to_string(),
        "qty": qty.to_string(),
        "quoteQty": (price * qty).to_string(),
        "realizedPnl": fill.realized_pnl.get().to_string(),
        "side": side(fill.side),
        "positionSide": "BOTH",
        "symbol": fill.symbol.as_str(),
        "time": fill.time_ms,
    })
}

/// The `exchangeInfo` entry of one symbol, with its filters.
pub(crate) fn symbol_info(rules: &keel_kernel::exchange::SymbolRules) -> Value {
    let name = rules.symbol.as_str();
    let (base, quote) = name.split_at(name.len() - 4);
    json!({
        "symbol": name,
        "pair": name,
        "contractType": "PERPETUAL",
        "deliveryDate": 4_133_404_800_000_i64,
        "onboardDate": 1_569_398_400_000_i64,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": base,
        "quoteAsset": quote,
        "marginAsset": quote,
        "pricePrecision": rules.tick_size.scale(),
        "quantityPrecision": rules.step_size.scale(),
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": rules.tick_size.to_string(),
             "maxPrice": "4529764", "tickSize": rules.tick_size.to_string()},
            {"filterType": "LOT_SIZE", "minQty": rules.min_qty.to_string(),
             "maxQty": rules.max_qty.to_string(), "stepSize": rules.step_size.to_string()},
            {"filterType": "MARKET_LOT_SIZE", "minQty": rules.market_min_qty.to_string(),
             "maxQty": rules.market_max_qty.to_string(),
             "stepSize": rules.market_step_size.to_string()},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": crate::account::CONDITIONAL_ORDERS_MAX},
            {"filterType": "MIN_NOTIONAL", "notional": rules.min_notional.to_string()},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                       "TAKE_PROFIT_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    })
}
