//! Binance USDⓈ-M Futures JSON, field for field: what the adapter reads and the simulator
//! writes. Decimals travel as strings, as on Binance.

use anyhow::{Context, anyhow, bail};
use keel_kernel::exchange::{ExchangeOrderId, Fill, OrderReport, OrderType, SymbolRules, TradeId};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::{Candle, Side};
use keel_kernel::money::{Amount, Price, Qty};
use keel_kernel::order::OrderStatus;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An error body: a code of [`crate::codes`] and a message, as
/// `{"code": NO_SUCH_ORDER, "msg": "Order does not exist."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Binance's error code.
    pub code: i64,
    /// Binance's message.
    pub msg: String,
}

/// `GET /fapi/v1/time`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTime {
    /// Server time, milliseconds since the Unix epoch.
    pub server_time: i64,
}

/// `POST /fapi/v1/listenKey`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenKey {
    /// The key naming the user-data stream.
    pub listen_key: String,
}

/// An order as `POST/GET/DELETE /fapi/v1/order` and `GET /fapi/v1/openOrders` return it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireOrder {
    pub order_id: i64,
    pub symbol: String,
    pub status: String,
    pub client_order_id: String,
    pub price: Decimal,
    pub avg_price: Decimal,
    pub orig_qty: Decimal,
    pub executed_qty: Decimal,
    #[serde(default)]
    pub cum_qty: Decimal,
    pub cum_quote: Decimal,
    pub time_in_force: String,
    #[serde(rename = "type")]
    pub order_type: String,
    pub reduce_only: bool,
    pub close_position: bool,
    pub side: String,
    pub position_side: String,
    pub stop_price: Decimal,
    pub working_type: String,
    pub price_protect: bool,
    pub orig_type: String,
    pub price_match: String,
    pub self_trade_prevention_mode: String,
    pub good_till_date: i64,
    #[serde(default)]
    pub time: i64,
    pub update_time: i64,
}

/// `BUY` / `SELL`.
pub fn side_str(side: Side) -> &'static str {
    match side {
        Side::Buy => "BUY",
        Side::Sell => "SELL",
    }
}

/// Parses `BUY` / `SELL`.
pub fn parse_side(text: &str) -> anyhow::Result<Side> {
    match text {
        "BUY" => Ok(Side::Buy),
        "SELL" => Ok(Side::Sell),
        other => bail!("unknown side {other:?}"),
    }
}

/// Binance's order statuses; `EXPIRED_IN_MATCH` (self-trade prevention) is an expiry.
pub fn parse_status(text: &str) -> anyhow::Result<OrderStatus> {
    match text {
        "EXPIRED_IN_MATCH" => Ok(OrderStatus::Expired),
        "NEW" | "PARTIALLY_FILLED" | "FILLED" | "CANCELED" | "REJECTED" | "EXPIRED" => {
            Ok(OrderStatus::parse(text).expect("listed statuses parse"))
        }
        other => bail!("unknown order status {other:?}"),
    }
}

fn order_type_str(order_type: OrderType) -> &'static str {
    match order_type {
        OrderType::Market => "MARKET",
        OrderType::Limit { .. } => "LIMIT",
    }
}

fn parse_order_type(text: &str, price: Decimal) -> anyhow::Result<OrderType> {
    match text {
        "MARKET" => Ok(OrderType::Market),
        "LIMIT" => Ok(OrderType::Limit {
            price: Price::new(price).context("a limit order's price")?,
        }),
        other => bail!("unsupported order type {other:?}"),
    }
}

impl WireOrder {
    /// The wire form of a report.
    pub fn from_report(report: &OrderReport) -> WireOrder {
        let avg = report.avg_price.map_or(Decimal::ZERO, Price::get);
        let ty = order_type_str(report.order_type).to_owned();
        WireOrder {
            order_id: report.exchange_order_id.0,
            symbol: report.symbol.to_string(),
            status: report.status.as_str().to_owned(),
            client_order_id: report.client_order_id.to_string(),
            price: report
                .order_type
                .limit_price()
                .map_or(Decimal::ZERO, Price::get),
            avg_price: avg,
            orig_qty: report.orig_qty.get(),
            executed_qty: report.executed_qty,
            cum_qty: report.executed_qty,
            cum_quote: avg * report.executed_qty,
            time_in_force: "GTC".to_owned(),
            order_type: ty.clone(),
            reduce_only: report.reduce_only,
            close_position: false,
            side: side_str(report.side).to_owned(),
            position_side: "BOTH".to_owned(),
            stop_price: Decimal::ZERO,
            working_type: "CONTRACT_PRICE".to_owned(),
            price_protect: false,
            orig_type: ty,
            price_match: "NONE".to_owned(),
            self_trade_prevention_mode: "NONE".to_owned(),
            good_till_date: 0,
            time: report.update_time_ms,
            update_time: report.update_time_ms,
        }
    }

    /// The kernel's form of this order.
    pub fn to_report(&self) -> anyhow::Result<OrderReport> {
        let avg_price = if self.avg_price.is_zero() {
            None
        } else {
            Some(Price::new(self.avg_price)?)
        };
        Ok(OrderReport {
            client_order_id: ClientOrderId::new(&self.client_order_id)?,
            exchange_order_id: ExchangeOrderId(self.order_id),
            symbol: Symbol::new(&self.symbol)?,
            side: parse_side(&self.side)?,
            order_type: parse_order_type(&self.order_type, self.price)?,
            status: parse_status(&self.status)?,
            orig_qty: Qty::new(self.orig_qty)?,
            executed_qty: self.executed_qty,
            avg_price,
            reduce_only: self.reduce_only,
            update_time_ms: self.update_time,
        })
    }
}

/// One row of `GET /fapi/v1/userTrades`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireTrade {
    pub buyer: bool,
    pub commission: Decimal,
    pub commission_asset: String,
    pub id: i64,
    pub maker: bool,
    pub order_id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    pub quote_qty: Decimal,
    pub realized_pnl: Decimal,
    pub side: String,
    pub position_side: String,
    pub symbol: String,
    pub time: i64,
}

impl WireTrade {
    /// The wire form of a fill.
    pub fn from_fill(fill: &Fill, asset: &str) -> WireTrade {
        WireTrade {
            buyer: fill.side == Side::Buy,
            commission: fill.fee.get(),
            commission_asset: asset.to_owned(),
            id: fill.trade_id.0,
            maker: fill.maker,
            order_id: fill.exchange_order_id.0,
            price: fill.price.get(),
            qty: fill.qty.get(),
            quote_qty: fill.price.get() * fill.qty.get(),
            realized_pnl: fill.realized_pnl.get(),
            side: side_str(fill.side).to_owned(),
            position_side: "BOTH".to_owned(),
            symbol: fill.symbol.to_string(),
            time: fill.time_ms,
        }
    }

    /// The kernel's form; the trade list does not carry the client order id, so the caller
    /// supplies it.
    pub fn to_fill(&self, client_order_id: ClientOrderId) -> anyhow::Result<Fill> {
        Ok(Fill {
            trade_id: TradeId(self.id),
            client_order_id,
            exchange_order_id: ExchangeOrderId(self.order_id),
            symbol: Symbol::new(&self.symbol)?,
            side: parse_side(&self.side)?,
            price: Price::new(self.price)?,
            qty: Qty::new(self.qty)?,
            fee: Amount::new(self.commission)?,
            realized_pnl: Amount::new(self.realized_pnl)?,
            maker: self.maker,
            time_ms: self.time,
        })
    }
}

/// One row of `GET /fapi/v2/positionRisk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePosition {
    pub symbol: String,
    pub position_amt: Decimal,
    pub entry_price: Decimal,
    pub mark_price: Decimal,
    pub un_realized_profit: Decimal,
    pub liquidation_price: Decimal,
    pub leverage: String,
    pub max_notional_value: String,
    pub margin_type: String,
    pub isolated_margin: Decimal,
    pub is_auto_add_margin: String,
    pub position_side: String,
    pub notional: Decimal,
    pub isolated_wallet: Decimal,
    pub update_time: i64,
}

/// One row of `GET /fapi/v2/balance`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireBalance {
    pub account_alias: String,
    pub asset: String,
    pub balance: Decimal,
    pub cross_wallet_balance: Decimal,
    pub cross_un_pnl: Decimal,
    pub available_balance: Decimal,
    pub max_withdraw_amount: Decimal,
    pub margin_available: bool,
    pub update_time: i64,
}

/// The `exchangeInfo` entry of one symbol, with its filters.
pub fn symbol_info(rules: &SymbolRules) -> Value {
    let (base, quote) = rules
        .symbol
        .as_str()
        .split_at(rules.symbol.as_str().len() - 4);
    json!({
        "symbol": rules.symbol.as_str(),
        "pair": rules.symbol.as_str(),
        "contractType": "PERPETUAL",
        "deliveryDate": 4_133_404_800_000_i64,
        "onboardDate": 1_569_398_400_000_i64,
        "status": "TRADING",
        "baseAsset": base,
        "quoteAsset": quote,
        "marginAsset": quote,
        "pricePrecision": rules.tick_size.scale(),
        "quantityPrecision": rules.step_size.scale(),
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": rules.tick_size.to_string(),
             "maxPrice": "4529764", "tickSize": rules.tick_size.to_string()},
            {"filterType": "LOT_SIZE", "minQty": rules.min_qty.to_string(),
             "maxQty": rules.max_qty.to_string(), "stepSize": rules.step_size.to_string()},
            {"filterType": "MARKET_LOT_SIZE", "minQty": rules.market_min_qty.to_string(),
             "maxQty": rules.market_max_qty.to_string(),
             "stepSize": rules.market_step_size.to_string()},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": rules.min_notional.to_string()},
        ],
        "orderTypes": ["LIMIT", "MARKET"],
        "timeInForce": ["GTC"],
    })
}

fn filter_decimal(filter: &Value, field: &str) -> anyhow::Result<Decimal> {
    let text = filter[field]
        .as_str()
        .ok_or_else(|| anyhow!("filter field {field} missing"))?;
    text.parse()
        .with_context(|| format!("filter field {field} = {text:?}"))
}

/// Reads a symbol's rules from its `exchangeInfo` entry.
pub fn parse_symbol_rules(info: &Value) -> anyhow::Result<SymbolRules> {
    let name = info["symbol"]
        .as_str()
        .ok_or_else(|| anyhow!("symbol missing"))?;
    let filters = info["filters"]
        .as_array()
        .ok_or_else(|| anyhow!("filters missing"))?;
    let find = |kind: &str| {
        filters
            .iter()
            .find(|f| f["filterType"] == kind)
            .ok_or_else(|| anyhow!("{name} has no {kind} filter"))
    };
    let (price, lot, market, notional) = (
        find("PRICE_FILTER")?,
        find("LOT_SIZE")?,
        find("MARKET_LOT_SIZE")?,
        find("MIN_NOTIONAL")?,
    );
    Ok(SymbolRules {
        symbol: Symbol::new(name)?,
        tick_size: filter_decimal(price, "tickSize")?,
        step_size: filter_decimal(lot, "stepSize")?,
        min_qty: filter_decimal(lot, "minQty")?,
        max_qty: filter_decimal(lot, "maxQty")?,
        market_step_size: filter_decimal(market, "stepSize")?,
        market_min_qty: filter_decimal(market, "minQty")?,
        market_max_qty: filter_decimal(market, "maxQty")?,
        min_notional: filter_decimal(notional, "notional")?,
    })
}

/// An `ORDER_TRADE_UPDATE` event of the user-data stream; `fill` makes it a `TRADE` execution.
pub fn order_trade_update(
    report: &OrderReport,
    fill: Option<&Fill>,
    asset: &str,
    now_ms: i64,
) -> Value {
    let execution = match (fill, report.status) {
        (Some(_), _) => "TRADE",
        (None, OrderStatus::Canceled) => "CANCELED",
        (None, OrderStatus::Expired) => "EXPIRED",
        (None, _) => "NEW",
    };
    let zero = Decimal::ZERO;
    json!({
        "e": "ORDER_TRADE_UPDATE",
        "E": now_ms,
        "T": now_ms,
        "o": {
            "s": report.symbol.as_str(),
            "c": report.client_order_id.as_str(),
            "S": side_str(report.side),
            "o": order_type_str(report.order_type),
            "f": "GTC",
            "q": report.orig_qty.get().to_string(),
            "p": report.order_type.limit_price().map_or(zero, Price::get).to_string(),
            "ap": report.avg_price.map_or(zero, Price::get).to_string(),
            "sp": "0",
            "x": execution,
            "X": report.status.as_str(),
            "i": report.exchange_order_id.0,
            "l": fill.map_or(zero, |f| f.qty.get()).to_string(),
            "z": report.executed_qty.to_string(),
            "L": fill.map_or(zero, |f| f.price.get()).to_string(),
            "N": asset,
            "n": fill.map_or(zero, |f| f.fee.get()).to_string(),
            "T": fill.map_or(report.update_time_ms, |f| f.time_ms),
            "t": fill.map_or(0, |f| f.trade_id.0),
            "b": "0",
            "a": "0",
            "m": fill.is_some_and(|f| f.maker),
            "R": report.reduce_only,
            "wt": "CONTRACT_PRICE",
            "ot": order_type_str(report.order_type),
            "ps": "BOTH",
            "cp": false,
            "rp": fill.map_or(zero, |f| f.realized_pnl.get()).to_string(),
            "pP": false,
            "si": 0,
            "ss": 0,
            "V": "NONE",
            "pm": "NONE",
            "gtd": 0
        }
    })
}

fn field_decimal(o: &Value, field: &str) -> anyhow::Result<Decimal> {
    let text = o[field]
        .as_str()
        .ok_or_else(|| anyhow!("field {field} missing"))?;
    text.parse()
        .with_context(|| format!("field {field} = {text:?}"))
}

fn field_str<'a>(o: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    o[field]
        .as_str()
        .ok_or_else(|| anyhow!("field {field} missing"))
}

fn field_i64(o: &Value, field: &str) -> anyhow::Result<i64> {
    o[field]
        .as_i64()
        .ok_or_else(|| anyhow!("field {field} missing"))
}

/// Reads an `ORDER_TRADE_UPDATE` event: the order's new state and, for a `TRADE`, the fill.
pub fn parse_order_trade_update(event: &Value) -> anyhow::Result<(OrderReport, Option<Fill>)> {
    let o = &event["o"];
    let avg = field_decimal(o, "ap")?;
    let report = OrderReport {
        client_order_id: ClientOrderId::new(field_str(o, "c")?)?,
        exchange_order_id: ExchangeOrderId(field_i64(o, "i")?),
        symbol: Symbol::new(field_str(o, "s")?)?,
        side: parse_side(field_str(o, "S")?)?,
        order_type: parse_order_type(field_str(o, "o")?, field_decimal(o, "p")?)?,
        status: parse_status(field_str(o, "X")?)?,
        orig_qty: Qty::new(field_decimal(o, "q")?)?,
        executed_qty: field_decimal(o, "z")?,
        avg_price: if avg.is_zero() {
            None
        } else {
            Some(Price::new(avg)?)
        },
        reduce_only: o["R"].as_bool().unwrap_or(false),
        update_time_ms: field_i64(o, "T")?,
    };
    if field_str(o, "x")? != "TRADE" {
        return Ok((report, None));
    }
    let fill = Fill {
        trade_id: TradeId(field_i64(o, "t")?),
        client_order_id: report.client_order_id.clone(),
        exchange_order_id: report.exchange_order_id,
        symbol: report.symbol.clone(),
        side: report.side,
        price: Price::new(field_decimal(o, "L")?)?,
        qty: Qty::new(field_decimal(o, "l")?)?,
        fee: Amount::new(field_decimal(o, "n")?)?,
        realized_pnl: Amount::new(field_decimal(o, "rp")?)?,
        maker: o["m"].as_bool().unwrap_or(false),
        time_ms: field_i64(o, "T")?,
    };
    Ok((report, Some(fill)))
}

/// One balance of an `ACCOUNT_UPDATE` event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountUpdateBalance {
    /// The asset.
    #[serde(rename = "a")]
    pub asset: String,
    /// The wallet balance.
    #[serde(rename = "wb")]
    pub wallet_balance: Decimal,
    /// The cross wallet balance.
    #[serde(rename = "cw")]
    pub cross_wallet_balance: Decimal,
    /// The change other than PnL and commission.
    #[serde(rename = "bc")]
    pub balance_change: Decimal,
}

/// One position of an `ACCOUNT_UPDATE` event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountUpdatePosition {
    /// The symbol.
    #[serde(rename = "s")]
    pub symbol: String,
    /// The signed position amount.
    #[serde(rename = "pa")]
    pub position_amt: Decimal,
    /// The entry price.
    #[serde(rename = "ep")]
    pub entry_price: Decimal,
    /// The unrealised PnL.
    #[serde(rename = "up")]
    pub unrealized_pnl: Decimal,
    /// `cross` or `isolated`.
    #[serde(rename = "mt")]
    pub margin_type: String,
    /// `BOTH`, `LONG` or `SHORT`.
    #[serde(rename = "ps")]
    pub position_side: String,
}

/// The update data of an `ACCOUNT_UPDATE` event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountUpdateData {
    /// Why it was pushed: `ORDER`, `FUNDING_FEE`, `DEPOSIT`...
    #[serde(rename = "m")]
    pub reason: String,
    /// The balances that changed.
    #[serde(rename = "B")]
    pub balances: Vec<AccountUpdateBalance>,
    /// The positions that changed.
    #[serde(rename = "P", default)]
    pub positions: Vec<AccountUpdatePosition>,
}

/// An `ACCOUNT_UPDATE` event of the user-data stream: balances and positions after a change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountUpdate {
    /// The event time.
    #[serde(rename = "E")]
    pub event_time: i64,
    /// The transaction time.
    #[serde(rename = "T")]
    pub transaction_time: i64,
    /// What changed.
    #[serde(rename = "a")]
    pub data: AccountUpdateData,
}

/// A `TRADE_LITE` event of the user-data stream: a fill without its fee or realised PnL,
/// sent ahead of the `ORDER_TRADE_UPDATE` that carries it in full.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TradeLite {
    /// The transaction time.
    #[serde(rename = "T")]
    pub transaction_time: i64,
    /// The symbol.
    #[serde(rename = "s")]
    pub symbol: String,
    /// The client order id.
    #[serde(rename = "c")]
    pub client_order_id: String,
    /// `BUY` or `SELL`.
    #[serde(rename = "S")]
    pub side: String,
    /// The order's quantity.
    #[serde(rename = "q")]
    pub orig_qty: Decimal,
    /// The order's price (`0` for a market order).
    #[serde(rename = "p")]
    pub price: Decimal,
    /// The fill's price.
    #[serde(rename = "L")]
    pub last_price: Decimal,
    /// The fill's quantity.
    #[serde(rename = "l")]
    pub last_qty: Decimal,
    /// Whether the fill was on the maker side.
    #[serde(rename = "m")]
    pub maker: bool,
    /// The trade id.
    #[serde(rename = "t")]
    pub trade_id: i64,
    /// The exchange order id.
    #[serde(rename = "i")]
    pub order_id: i64,
}

/// Reads an `ACCOUNT_UPDATE` event.
pub fn parse_account_update(event: &Value) -> anyhow::Result<AccountUpdate> {
    AccountUpdate::deserialize(event).context("ACCOUNT_UPDATE")
}

/// Reads a `TRADE_LITE` event.
pub fn parse_trade_lite(event: &Value) -> anyhow::Result<TradeLite> {
    TradeLite::deserialize(event).context("TRADE_LITE")
}

fn decimal_text(value: f64) -> String {
    Decimal::from_f64_retain(value)
        .map(|d| d.round_dp(8).normalize().to_string())
        .unwrap_or_else(|| "0".to_owned())
}

/// A `kline` event of a kline stream.
pub fn kline_event(candle: &Candle, interval: &str, closed: bool, now_ms: i64) -> Value {
    json!({
        "e": "kline",
        "E": now_ms,
        "s": candle.symbol.as_str(),
        "k": {
            "t": candle.open_time_ms,
            "T": candle.close_time_ms - 1,
            "s": candle.symbol.as_str(),
            "i": interval,
            "f": 0, "L": 0,
            "o": decimal_text(candle.open),
            "c": decimal_text(candle.close),
            "h": decimal_text(candle.high),
            "l": decimal_text(candle.low),
            "v": decimal_text(candle.volume),
            "n": 0,
            "x": closed,
            "q": "0", "V": "0", "Q": "0", "B": "0"
        }
    })
}

fn field_f64(o: &Value, field: &str) -> anyhow::Result<f64> {
    field_decimal(o, field)?
        .to_f64()
        .ok_or_else(|| anyhow!("field {field} out of range"))
}

/// The most candles one `GET /fapi/v1/klines` returns.
pub const KLINES_LIMIT_MAX: usize = 1_500;

/// The request weight of `GET /fapi/v1/klines` for `limit` rows, as Binance documents it.
pub fn klines_weight(limit: usize) -> u32 {
    match limit {
        0..100 => 1,
        100..500 => 2,
        500..=1000 => 5,
        _ => 10,
    }
}

/// One row of `GET /fapi/v1/klines`: `[openTime, "open", "high", "low", "close", "volume",
/// closeTime, ...]`, close time being the last millisecond of the interval.
pub fn kline_row(candle: &Candle) -> Value {
    json!([
        candle.open_time_ms,
        decimal_text(candle.open),
        decimal_text(candle.high),
        decimal_text(candle.low),
        decimal_text(candle.close),
        decimal_text(candle.volume),
        candle.close_time_ms - 1,
        "0",
        0,
        "0",
        "0",
        "0"
    ])
}

/// Reads one row of `GET /fapi/v1/klines` (see [`kline_row`]).
pub fn parse_kline_row(symbol: &Symbol, row: &Value) -> anyhow::Result<Candle> {
    let fields = row.as_array().context("a kline row is an array")?;
    let time = |i: usize| {
        fields
            .get(i)
            .and_then(Value::as_i64)
            .ok_or_else(|| anyhow!("kline field {i} is not a time"))
    };
    let number = |i: usize| -> anyhow::Result<f64> {
        let text = fields
            .get(i)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("kline field {i} is not a decimal string"))?;
        let value: f64 = text
            .parse()
            .with_context(|| format!("kline field {i}: {text:?}"))?;
        anyhow::ensure!(value.is_finite(), "kline field {i}: {text:?}");
        Ok(value)
    };
    Ok(Candle {
        symbol: symbol.clone(),
        open_time_ms: time(0)?,
        close_time_ms: time(6)? + 1,
        open: number(1)?,
        high: number(2)?,
        low: number(3)?,
        close: number(4)?,
        volume: number(5)?,
    })
}

/// Reads a `kline` event: the candle, and whether it is closed.
pub fn parse_kline(event: &Value) -> anyhow::Result<(Candle, bool)> {
    let k = &event["k"];
    let candle = Candle {
        symbol: Symbol::new(field_str(k, "s")?)?,
        open_time_ms: field_i64(k, "t")?,
        // Binance's close time is the last millisecond of the interval; Keel's is exclusive.
        close_time_ms: field_i64(k, "T")? + 1,
        open: field_f64(k, "o")?,
        high: field_f64(k, "h")?,
        low: field_f64(k, "l")?,
        close: field_f64(k, "c")?,
        volume: field_f64(k, "v")?,
    };
    Ok((candle, k["x"].as_bool().unwrap_or(false)))
}
