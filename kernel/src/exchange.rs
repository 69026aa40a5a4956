//! The `Exchange` trait: what the kernel asks of any venue, and the typed answers it gets.
//!
//! Three implementations live in the host: an in-process paper exchange (backtests, paper
//! trading), a Binance USDⓈ-M Futures adapter, and — through that adapter — a local simulator
//! that speaks Binance's wire format. The kernel sees only this trait.
//!
//! # The outcome model
//!
//! Placing an order has seven typed outcomes ([`PlaceOutcome`]): accepted, filled, partially
//! filled, rejected (the exchange said no, with its code and message) and **unknown** (a timeout,
//! a 5xx, an "unknown error": the order may or may not exist). Unknown is never reported as
//! rejected: the caller must ask [`Exchange::order`] about the client order id before doing
//! anything else, and must never resend blind. Two outcomes say the request was not executed and
//! the decision still stands: rate limiting, carrying the delay the exchange asked for, and
//! unavailable (the exchange's documented "not executed, try again" answers); the engine sends
//! such an order again with the same client order id (see `engine::unplaced`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use async_trait::async_trait;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::{ClientOrderId, Symbol};
use crate::market::{Candle, Side};
use crate::money::{Amount, Price, Qty, checked_round_down_to_step, checked_round_to_tick};
use crate::order::{OrderStatus, Transition};

/// How many user events a subscriber's channel holds before the producer waits.
pub const USER_EVENT_QUEUE_MAX: usize = 4096;
/// How many candles a market-data subscriber's channel holds before the producer waits.
pub const CANDLE_QUEUE_MAX: usize = 4096;

/// The exchange's id of one execution (a trade), unique per symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TradeId(pub i64);

impl fmt::Display for TradeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The exchange's own id of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExchangeOrderId(pub i64);

impl fmt::Display for ExchangeOrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How an order is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", tag = "type")]
pub enum OrderType {
    /// Fills at the market's price.
    Market,
    /// Rests at `price` (good till cancelled) until the market crosses it.
    Limit {
        /// The worst price the order accepts.
        price: Price,
    },
}

impl OrderType {
    /// The limit price, if any.
    pub fn limit_price(self) -> Option<Price> {
        match self {
            OrderType::Market => None,
            OrderType::Limit { price } => Some(price),
        }
    }
}

/// A request to place one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The caller's id for the order: the key for queries, de-duplication and recovery.
    pub client_order_id: ClientOrderId,
    /// The instrument.
    pub symbol: Symbol,
    /// Buy or sell.
    pub side: Side,
    /// Market or limit.
    pub order_type: OrderType,
    /// How much base currency.
    pub qty: Qty,
    /// True when the order may only reduce a position (exits).
    pub reduce_only: bool,
}

/// What the exchange says about one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReport {
    /// The caller's id.
    pub client_order_id: ClientOrderId,
    /// The exchange's id.
    pub exchange_order_id: ExchangeOrderId,
    /// The instrument.
    pub symbol: Symbol,
    /// Buy or sell.
    pub side: Side,
    /// Market or limit.
    pub order_type: OrderType,
    /// The status, by the exchange.
    pub status: OrderStatus,
    /// The quantity asked for.
    pub orig_qty: Qty,
    /// The quantity filled so far (zero or more).
    pub executed_qty: Decimal,
    /// The average fill price, once something filled.
    pub avg_price: Option<Price>,
    /// True when the order may only reduce a position.
    pub reduce_only: bool,
    /// When the exchange last changed the order, milliseconds since the Unix epoch.
    pub update_time_ms: i64,
}

/// One execution of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// The exchange's trade id: fills are de-duplicated by (symbol, trade id).
    pub trade_id: TradeId,
    /// The order that filled.
    pub client_order_id: ClientOrderId,
    /// The exchange's id of that order.
    pub exchange_order_id: ExchangeOrderId,
    /// The instrument.
    pub symbol: Symbol,
    /// Buy or sell.
    pub side: Side,
    /// The execution price.
    pub price: Price,
    /// The executed quantity.
    pub qty: Qty,
    /// The fee paid in quote currency (positive is a cost).
    pub fee: Amount,
    /// The profit or loss this fill realised on the position, before fees.
    pub realized_pnl: Amount,
    /// True when the order rested on the book (maker fee).
    pub maker: bool,
    /// When it executed, milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// A net position on one symbol (one-way mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The instrument.
    pub symbol: Symbol,
    /// Signed size: positive long, negative short.
    pub qty: Decimal,
    /// The average entry price, when the position is not flat.
    pub entry_price: Option<Price>,
    /// The profit or loss at the last price.
    pub unrealized_pnl: Amount,
}

/// The balance of one asset in the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// The asset, such as `USDT`.
    pub asset: String,
    /// Deposits plus realised profit, minus fees.
    pub wallet_balance: Amount,
    /// What is free for new orders.
    pub available_balance: Amount,
}

/// What placing an order led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceOutcome {
    /// The exchange accepted the order; nothing filled yet.
    Accepted(OrderReport),
    /// The order filled completely. `fills` lists the executions the answer identified.
    Filled {
        /// The order's state.
        report: OrderReport,
        /// Executions with their trade ids.
        fills: Vec<Fill>,
    },
    /// Part of the order filled; the rest rests.
    PartiallyFilled {
        /// The order's state.
        report: OrderReport,
        /// Executions with their trade ids.
        fills: Vec<Fill>,
    },
    /// The exchange refused the order; it does not exist.
    Rejected {
        /// The exchange's error code (Binance's negative codes; Keel's local refusals use 0).
        code: i64,
        /// The exchange's message.
        msg: String,
    },
    /// Nobody knows whether the order exists. Query by client order id; never resend blind.
    Unknown {
        /// What made the outcome unknown (timeout, 5xx, "unknown error").
        reason: String,
    },
    /// The exchange refused to look at the request; retry after the delay.
    RateLimited {
        /// How long the exchange asked to wait.
        retry_after_ms: u64,
    },
    /// The exchange could not take the request now and says it did not execute it (Binance's
    /// documented 503 answers, or no connection at all): send it again, with the same client
    /// order id.
    Unavailable {
        /// The exchange's error code (0 when nothing reached it).
        code: i64,
        /// The exchange's message.
        msg: String,
    },
}

impl PlaceOutcome {
    /// The outcome of a report the exchange returned, classified by its status.
    pub fn from_report(report: OrderReport, fills: Vec<Fill>) -> PlaceOutcome {
        match report.status {
            OrderStatus::Filled => PlaceOutcome::Filled { report, fills },
            OrderStatus::PartiallyFilled => PlaceOutcome::PartiallyFilled { report, fills },
            _ => PlaceOutcome::Accepted(report),
        }
    }

    /// The order report, when the exchange answered with one.
    pub fn report(&self) -> Option<&OrderReport> {
        match self {
            PlaceOutcome::Accepted(report)
            | PlaceOutcome::Filled { report, .. }
            | PlaceOutcome::PartiallyFilled { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// Why a request other than placing an order failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The exchange answered with an error.
    #[error("exchange refused the request: {code} {msg}")]
    Rejected {
        /// The exchange's error code.
        code: i64,
        /// The exchange's message.
        msg: String,
    },
    /// No usable answer (timeout, 5xx, lost connection); the request may have been executed.
    #[error("exchange answer unknown: {reason}")]
    Unknown {
        /// What went wrong.
        reason: String,
    },
    /// The exchange refused to look at the request.
    #[error("rate limited: retry after {retry_after_ms} ms")]
    RateLimited {
        /// How long the exchange asked to wait.
        retry_after_ms: u64,
    },
    /// The symbol is not traded on this exchange.
    #[error("unknown symbol {0}")]
    UnknownSymbol(Symbol),
}

/// The exchange's trading rules for one symbol (Binance's `exchangeInfo` filters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolRules {
    /// The instrument.
    pub symbol: Symbol,
    /// Prices are whole multiples of this (PRICE_FILTER `tickSize`).
    pub tick_size: Decimal,
    /// Limit quantities are whole multiples of this (LOT_SIZE `stepSize`).
    pub step_size: Decimal,
    /// The smallest limit quantity (LOT_SIZE `minQty`).
    pub min_qty: Decimal,
    /// The largest limit quantity (LOT_SIZE `maxQty`).
    pub max_qty: Decimal,
    /// Market quantities are whole multiples of this (MARKET_LOT_SIZE `stepSize`).
    pub market_step_size: Decimal,
    /// The smallest market quantity (MARKET_LOT_SIZE `minQty`).
    pub market_min_qty: Decimal,
    /// The largest market quantity (MARKET_LOT_SIZE `maxQty`).
    pub market_max_qty: Decimal,
    /// The smallest price × quantity, unless reduce-only (MIN_NOTIONAL `notional`).
    pub min_notional: Decimal,
}

/// Why an order was refused before it reached the exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    /// The request names another symbol than the rules.
    #[error("rules for {rules} applied to an order on {order}")]
    WrongSymbol {
        /// The rules' symbol.
        rules: Symbol,
        /// The order's symbol.
        order: Symbol,
    },
    /// After rounding down to the step, the quantity is below the minimum.
    #[error("quantity {qty} (rounded down to step {step}) is below the minimum {min}")]
    QtyBelowMin {
        /// The rounded quantity.
        qty: Decimal,
        /// The step size.
        step: Decimal,
        /// The minimum quantity.
        min: Decimal,
    },
    /// The quantity is above the maximum.
    #[error("quantity {qty} is above the maximum {max}")]
    QtyAboveMax {
        /// The rounded quantity.
        qty: Decimal,
        /// The maximum quantity.
        max: Decimal,
    },
    /// The price rounds to zero at this tick size.
    #[error("price {price} rounds to zero at tick {tick}")]
    PriceBelowTick {
        /// The price asked for.
        price: Decimal,
        /// The tick size.
        tick: Decimal,
    },
    /// Price × quantity is below the minimum notional (and the order is not reduce-only).
    #[error("notional {notional} is below the minimum {min}")]
    NotionalBelowMin {
        /// Price × quantity.
        notional: Decimal,
        /// The minimum notional.
        min: Decimal,
    },
    /// A filter the exchange supplied cannot round the order: a step or tick that is not
    /// positive, or so small that the rounding leaves the range of a decimal.
    #[error("the exchange's {what} {value} cannot round the order")]
    FilterUnusable {
        /// Which filter.
        what: &'static str,
        /// Its value.
        value: Decimal,
    },
}

impl SymbolRules {
    /// Rounds a quantity down to the step of `order_type` (never more than asked for).
    ///
    /// # Panics
    ///
    /// When the step cannot round `qty` (see [`RuleViolation::FilterUnusable`]), which
    /// [`SymbolRules::apply`] refuses instead.
    pub fn round_qty(&self, qty: Decimal, order_type: OrderType) -> Decimal {
        self.try_round_qty(qty, order_type)
            .expect("the step size rounds the quantity")
    }

    /// Rounds a price to the nearest tick.
    ///
    /// # Panics
    ///
    /// When the tick cannot round `price` (see [`RuleViolation::FilterUnusable`]), which
    /// [`SymbolRules::apply`] refuses instead.
    pub fn round_price(&self, price: Decimal) -> Decimal {
        self.try_round_price(price)
            .expect("the tick size rounds the price")
    }

    fn try_round_qty(&self, qty: Decimal, order_type: OrderType) -> Result<Decimal, RuleViolation> {
        let (what, step) = match order_type {
            OrderType::Market => ("market step size", self.market_step_size),
            OrderType::Limit { .. } => ("step size", self.step_size),
        };
        let rounded = checked_round_down_to_step(qty, step)
            .ok_or(RuleViolation::FilterUnusable { what, value: step })?;
        Ok(rounded.normalize())
    }

    fn try_round_price(&self, price: Decimal) -> Result<Decimal, RuleViolation> {
        let rounded =
            checked_round_to_tick(price, self.tick_size).ok_or(RuleViolation::FilterUnusable {
                what: "tick size",
                value: self.tick_size,
            })?;
        Ok(rounded.normalize())
    }

    /// Applies the filters to `request`: rounds its quantity and price, and refuses it with a
    /// reason when it breaks a minimum or maximum. `reference_price` values market orders for the
    /// notional check (the last price); without it a market order's notional is not checked.
    pub fn apply(
        &self,
        request: &OrderRequest,
        reference_price: Option<Price>,
    ) -> Result<OrderRequest, RuleViolation> {
        if request.symbol != self.symbol {
            return Err(RuleViolation::WrongSymbol {
                rules: self.symbol.clone(),
                order: request.symbol.clone(),
            });
        }
        let order_type = self.rounded_order_type(request.order_type)?;
        let qty = self.checked_qty(request.qty.get(), order_type)?;
        let notional_price = order_type.limit_price().or(reference_price);
        if let Some(price) = notional_price
            && !request.reduce_only
        {
            // Both within MAGNITUDE_MAX: the product fits a decimal; checked all the same.
            let notional =
                (price.get().checked_mul(qty.get())).ok_or(RuleViolation::FilterUnusable {
                    what: "minimum notional",
                    value: self.min_notional,
                })?;
            if notional < self.min_notional {
                return Err(RuleViolation::NotionalBelowMin {
                    notional,
                    min: self.min_notional,
                });
            }
        }
        let prepared = OrderRequest {
            order_type,
            qty,
            ..request.clone()
        };
        assert!(prepared.qty <= request.qty, "rounding never adds quantity");
        Ok(prepared)
    }

    fn rounded_order_type(&self, order_type: OrderType) -> Result<OrderType, RuleViolation> {
        match order_type {
            OrderType::Market => Ok(OrderType::Market),
            OrderType::Limit { price } => {
                let rounded = self.try_round_price(price.get())?;
                let price = Price::new(rounded).map_err(|_| RuleViolation::PriceBelowTick {
                    price: price.get(),
                    tick: self.tick_size,
                })?;
                Ok(OrderType::Limit { price })
            }
        }
    }

    fn checked_qty(&self, qty: Decimal, order_type: OrderType) -> Result<Qty, RuleViolation> {
        let (step, min, max) = match order_type {
            OrderType::Market => (
                self.market_step_size,
                self.market_min_qty,
                self.market_max_qty,
            ),
            OrderType::Limit { .. } => (self.step_size, self.min_qty, self.max_qty),
        };
        let rounded = self.try_round_qty(qty, order_type)?;
        if rounded < min || rounded <= Decimal::ZERO {
            return Err(RuleViolation::QtyBelowMin {
                qty: rounded,
                step,
                min,
            });
        }
        if rounded > max {
            return Err(RuleViolation::QtyAboveMax { qty: rounded, max });
        }
        Ok(Qty::new(rounded).expect("a quantity at or above a positive minimum is positive"))
    }
}

/// Something the exchange tells about the account, pushed on the user-data stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserEvent {
    /// An order changed status or filled quantity.
    Order(OrderReport),
    /// An order executed (carries the exchange's trade id).
    Fill(Fill),
}

/// The width of one candle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Interval {
    /// One second (simulators and tests).
    S1,
    /// One minute.
    M1,
    /// Five minutes.
    M5,
    /// Fifteen minutes.
    M15,
    /// One hour.
    H1,
    /// Four hours.
    H4,
    /// One day.
    D1,
}

impl Interval {
    /// Every interval.
    pub const ALL: [Interval; 7] = [
        Interval::S1,
        Interval::M1,
        Interval::M5,
        Interval::M15,
        Interval::H1,
        Interval::H4,
        Interval::D1,
    ];

    /// Binance's name of the interval (`1m`, `1h`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::S1 => "1s",
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::H1 => "1h",
            Interval::H4 => "4h",
            Interval::D1 => "1d",
        }
    }

    /// Parses Binance's name of an interval.
    pub fn parse(text: &str) -> Option<Interval> {
        Interval::ALL.into_iter().find(|i| i.as_str() == text)
    }

    /// The width in milliseconds.
    pub fn as_ms(self) -> i64 {
        match self {
            Interval::S1 => 1_000,
            Interval::M1 => 60_000,
            Interval::M5 => 300_000,
            Interval::M15 => 900_000,
            Interval::H1 => 3_600_000,
            Interval::H4 => 14_400_000,
            Interval::D1 => 86_400_000,
        }
    }
}

/// A venue the kernel trades on. Implementations are shared as `Arc<dyn Exchange>`.
#[async_trait]
pub trait Exchange: Send + Sync {
    /// A short name for logs and metrics (`paper`, `binance-usdm`).
    fn name(&self) -> &str;

    /// The trading rules of `symbol`.
    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError>;

    /// Places an order under the caller's client order id. See [`PlaceOutcome`]: on
    /// [`PlaceOutcome::Unknown`] the caller must query [`Exchange::order`], never resend blind.
    async fn place(&self, request: &OrderRequest) -> PlaceOutcome;

    /// Cancels an open order.
    async fn cancel(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, ExchangeError>;

    /// The order with this client order id, or `None` when the exchange has no such order.
    async fn order(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<OrderReport>, ExchangeError>;

    /// Every open order, on one symbol or on all.
    async fn open_orders(&self, symbol: Option<&Symbol>)
    -> Result<Vec<OrderReport>, ExchangeError>;

    /// The executions of one order, oldest first.
    async fn fills(&self, symbol: &Symbol, id: &ClientOrderId) -> Result<Vec<Fill>, ExchangeError>;

    /// Every non-flat position.
    async fn positions(&self) -> Result<Vec<Position>, ExchangeError>;

    /// The account's balances.
    async fn balances(&self) -> Result<Vec<Balance>, ExchangeError>;

    /// A new subscription to order updates and fills. Updates are already filtered: a stale
    /// status never follows a newer one, and each trade id arrives once.
    async fn user_events(&self) -> Result<mpsc::Receiver<UserEvent>, ExchangeError>;

    /// The last closed candles of `symbol` (at most `limit`), oldest first: what a strategy
    /// starting now would have seen. A candle still open is not included.
    async fn recent_candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
        limit: usize,
    ) -> Result<Vec<Candle>, ExchangeError>;

    /// A new subscription to closed candles of `symbol`.
    async fn candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
    ) -> Result<mpsc::Receiver<Candle>, ExchangeError>;
}

/// Keeps a user-event stream monotonic: drops order reports that would move an order backwards
/// (by [`OrderStatus::apply`]) and fills whose trade id was already seen.
///
/// Memory is bounded: at most `remembered_max` orders and trade ids are remembered, the oldest
/// forgotten first.
#[derive(Debug)]
pub struct UpdateFilter {
    remembered_max: usize,
    statuses: HashMap<ClientOrderId, (OrderStatus, Decimal)>,
    status_order: VecDeque<ClientOrderId>,
    trades: HashSet<(Symbol, TradeId)>,
    trade_order: VecDeque<(Symbol, TradeId)>,
    dropped_count: u64,
}

impl UpdateFilter {
    /// A filter remembering up to `remembered_max` orders and as many trade ids.
    pub fn new(remembered_max: usize) -> Self {
        assert!(remembered_max > 0, "a filter remembers something");
        Self {
            remembered_max,
            statuses: HashMap::new(),
            status_order: VecDeque::new(),
            trades: HashSet::new(),
            trade_order: VecDeque::new(),
            dropped_count: 0,
        }
    }

    /// True when `event` carries news and should be passed on.
    pub fn admit(&mut self, event: &UserEvent) -> bool {
        let admitted = match event {
            UserEvent::Order(report) => self.admit_report(report),
            UserEvent::Fill(fill) => self.admit_fill(fill),
        };
        if !admitted {
            self.dropped_count += 1;
        }
        admitted
    }

    /// How many events were dropped as stale or duplicate.
    pub fn dropped_count(&self) -> u64 {
        self.dropped_count
    }

    fn admit_report(&mut self, report: &OrderReport) -> bool {
        let id = &report.client_order_id;
        let Some(&(known, executed)) = self.statuses.get(id) else {
            self.remember_status(report);
            return true;
        };
        let news = match known.apply(report.status) {
            Ok(Transition::Advance(_)) => true,
            // Same status, more filled quantity: a partial fill moved on.
            Ok(Transition::Same) => report.executed_qty > executed,
            Ok(Transition::Stale) | Err(_) => false,
        };
        if news {
            self.statuses
                .insert(id.clone(), (report.status, report.executed_qty));
        }
        news
    }

    fn remember_status(&mut self, report: &OrderReport) {
        if self.status_order.len() >= self.remembered_max
            && let Some(oldest) = self.status_order.pop_front()
        {
            self.statuses.remove(&oldest);
        }
        self.statuses.insert(
            report.client_order_id.clone(),
            (report.status, report.executed_qty),
        );
        self.status_order.push_back(report.client_order_id.clone());
    }

    fn admit_fill(&mut self, fill: &Fill) -> bool {
        let key = (fill.symbol.clone(), fill.trade_id);
        if self.trades.contains(&key) {
            return false;
        }
        if self.trade_order.len() >= self.remembered_max
            && let Some(oldest) = self.trade_order.pop_front()
        {
            self.trades.remove(&oldest);
        }
        self.trades.insert(key.clone());
        self.trade_order.push_back(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn rules() -> SymbolRules {
        SymbolRules {
            symbol: Symbol::new("BTCUSDT").unwrap(),
            tick_size: dec!(0.1),
            step_size: dec!(0.001),
            min_qty: dec!(0.001),
            max_qty: dec!(1000),
            market_step_size: dec!(0.001),
            market_min_qty: dec!(0.001),
            market_max_qty: dec!(120),
            min_notional: dec!(100),
        }
    }

    fn request(qty: Decimal, order_type: OrderType, reduce_only: bool) -> OrderRequest {
        OrderRequest {
            client_order_id: ClientOrderId::new("t-1").unwrap(),
            symbol: Symbol::new("BTCUSDT").unwrap(),
            side: Side::Buy,
            order_type,
            qty: Qty::new(qty).unwrap(),
            reduce_only,
        }
    }

    fn limit(price: Decimal) -> OrderType {
        OrderType::Limit {
            price: Price::new(price).unwrap(),
        }
    }

    #[test]
    fn filters_round_quantity_down_and_price_to_tick() {
        let prepared = rules()
            .apply(&request(dec!(0.0129), limit(dec!(30000.26)), false), None)
            .unwrap();
        assert_eq!(prepared.qty.get(), dec!(0.012));
        assert_eq!(prepared.order_type, limit(dec!(30000.3)));
    }

    #[test]
    fn order_below_min_qty_is_refused_with_the_numbers() {
        let err = rules()
            .apply(&request(dec!(0.0009), OrderType::Market, false), None)
            .unwrap_err();
        assert!(matches!(err, RuleViolation::QtyBelowMin { .. }));
        assert!(err.to_string().contains("below the minimum 0.001"), "{err}");
    }

    #[test]
    fn order_below_min_notional_is_refused_unless_reduce_only() {
        let small = request(dec!(0.001), limit(dec!(30000)), false);
        assert!(matches!(
            rules().apply(&small, None),
            Err(RuleViolation::NotionalBelowMin { .. })
        ));
        let exit = OrderRequest {
            reduce_only: true,
            ..small
        };
        assert!(rules().apply(&exit, None).is_ok());
        let market = request(dec!(0.001), OrderType::Market, false);
        let last = Price::new(dec!(30000)).ok();
        assert!(matches!(
            rules().apply(&market, last),
            Err(RuleViolation::NotionalBelowMin { .. })
        ));
    }

    #[test]
    fn market_orders_use_market_lot_size() {
        let err = rules()
            .apply(&request(dec!(121), OrderType::Market, false), None)
            .unwrap_err();
        assert!(matches!(err, RuleViolation::QtyAboveMax { .. }));
        assert!(
            rules()
                .apply(&request(dec!(121), limit(dec!(1)), false), None)
                .is_ok()
        );
    }

    fn report(status: OrderStatus, executed: Decimal) -> OrderReport {
        OrderReport {
            client_order_id: ClientOrderId::new("t-1").unwrap(),
            exchange_order_id: ExchangeOrderId(1),
            symbol: Symbol::new("BTCUSDT").unwrap(),
            side: Side::Buy,
            order_type: OrderType::Market,
            status,
            orig_qty: Qty::new(dec!(2)).unwrap(),
            executed_qty: executed,
            avg_price: None,
            reduce_only: false,
            update_time_ms: 0,
        }
    }

    #[test]
    fn filter_drops_stale_reports_and_duplicate_trades() {
        let mut filter = UpdateFilter::new(16);
        let new = UserEvent::Order(report(OrderStatus::New, dec!(0)));
        let partial = UserEvent::Order(report(OrderStatus::PartiallyFilled, dec!(1)));
        let filled = UserEvent::Order(report(OrderStatus::Filled, dec!(2)));
        assert!(filter.admit(&new));
        assert!(filter.admit(&partial));
        assert!(
            !filter.admit(&partial),
            "a repeated partial fill is no news"
        );
        assert!(filter.admit(&filled));
        assert!(!filter.admit(&new), "a late NEW never moves FILLED back");
        let fill = Fill {
            trade_id: TradeId(7),
            client_order_id: ClientOrderId::new("t-1").unwrap(),
            exchange_order_id: ExchangeOrderId(1),
            symbol: Symbol::new("BTCUSDT").unwrap(),
            side: Side::Buy,
            price: Price::new(dec!(1)).unwrap(),
            qty: Qty::new(dec!(1)).unwrap(),
            fee: Amount::ZERO,
            realized_pnl: Amount::ZERO,
            maker: false,
            time_ms: 0,
        };
        assert!(filter.admit(&UserEvent::Fill(fill.clone())));
        assert!(!filter.admit(&UserEvent::Fill(fill)));
        assert_eq!(filter.dropped_count(), 3);
    }

    proptest::proptest! {
        #[test]
        fn applied_filters_never_add_quantity_and_land_on_the_grid(
            qty_ten_thousandths in 1u64..5_000_000,
            price_cents in 1u64..10_000_000,
            market in proptest::bool::ANY,
        ) {
            let qty = Decimal::new(qty_ten_thousandths as i64, 4);
            let price = Decimal::new(price_cents as i64, 2);
            let order_type = if market { OrderType::Market } else { limit(price) };
            let asked = request(qty, order_type, true);
            if let Ok(prepared) = rules().apply(&asked, None) {
                proptest::prop_assert!(prepared.qty <= asked.qty);
                proptest::prop_assert!(prepared.qty.get() >= dec!(0.001));
                proptest::prop_assert_eq!(prepared.qty.get() % dec!(0.001), Decimal::ZERO);
                if let Some(p) = prepared.order_type.limit_price() {
                    proptest::prop_assert_eq!(p.get() % dec!(0.1), Decimal::ZERO);
                    proptest::prop_assert!((p.get() - price).abs() <= dec!(0.05));
                }
            }
        }
    }

    /// A filter value as an exchange may report it: plain, zero, negative, or at the edges of
    /// a decimal.
    fn any_filter() -> impl proptest::strategy::Strategy<Value = Decimal> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1..1_000_000_i64, 0..=8_u32).prop_map(|(units, scale)| Decimal::new(units, scale)),
            1 => Just(Decimal::ZERO),
            1 => Just(Decimal::new(-1, 2)),
            1 => Just(Decimal::new(1, 28)),
            1 => Just(Decimal::MAX),
            1 => (any::<i64>(), 0..=28_u32).prop_map(|(m, scale)| Decimal::new(m, scale)),
        ]
    }

    #[test]
    fn unusable_step_or_tick_is_a_violation_not_a_panic() {
        let mut rules = rules();
        rules.step_size = Decimal::ZERO;
        let asked = request(dec!(1), limit(dec!(100)), false);
        assert!(matches!(
            rules.apply(&asked, None),
            Err(RuleViolation::FilterUnusable {
                what: "step size",
                ..
            })
        ));
        let mut rules = self::rules();
        rules.tick_size = Decimal::new(1, 28);
        let asked = request(dec!(1), limit(crate::money::MAGNITUDE_MAX), false);
        assert!(matches!(
            rules.apply(&asked, None),
            Err(RuleViolation::FilterUnusable {
                what: "tick size",
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn filters_the_exchange_reports_never_panic(
            filters in proptest::collection::vec(any_filter(), 8),
            qty in any_filter(),
            price in any_filter(),
            reference in any_filter(),
            market in proptest::bool::ANY,
            reduce_only in proptest::bool::ANY,
        ) {
            let rules = SymbolRules {
                tick_size: filters[0],
                step_size: filters[1],
                min_qty: filters[2],
                max_qty: filters[3],
                market_step_size: filters[4],
                market_min_qty: filters[5],
                market_max_qty: filters[6],
                min_notional: filters[7],
                ..rules()
            };
            let (Ok(qty), Ok(price)) = (Qty::new(qty), Price::new(price)) else {
                return Ok(());
            };
            let order_type = if market { OrderType::Market } else { OrderType::Limit { price } };
            let asked = OrderRequest { order_type, qty, ..request(dec!(1), order_type, reduce_only) };
            if let Ok(prepared) = rules.apply(&asked, Price::new(reference).ok()) {
                proptest::prop_assert!(prepared.qty <= asked.qty);
            }
        }
    }

    #[test]
    fn filter_forgets_the_oldest_beyond_its_limit() {
        let mut filter = UpdateFilter::new(2);
        let report_of = |id: &str| {
            let mut r = report(OrderStatus::Filled, dec!(2));
            r.client_order_id = ClientOrderId::new(id).unwrap();
            UserEvent::Order(r)
        };
        for id in ["a", "b", "c"] {
            assert!(filter.admit(&report_of(id)));
        }
        assert!(!filter.admit(&report_of("c")), "remembered");
        assert!(filter.admit(&report_of("a")), "forgotten, so news again");
    }

    #[test]
    fn interval_names_round_trip() {
        for interval in Interval::ALL {
            assert_eq!(Interval::parse(interval.as_str()), Some(interval));
        }
    }
}
