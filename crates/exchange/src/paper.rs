//! The paper exchange: a deterministic matching engine over candles.
//!
//! [`PaperEngine`] is pure, synchronous logic: the caller feeds it candles
//! ([`PaperEngine::on_candle`]) and places orders between candles; the engine's clock is the
//! close time of the last candle fed. Fill rules, chosen so a backtest can never see the future:
//!
//! - a market order fills at the **open of the next candle** that starts at or after the order
//!   became active (placement time plus the configured latency);
//! - a limit buy fills when a candle's low reaches its price (a sell: when the high does), at
//!   the limit price, or at the candle's open when the market opened through it (a gap);
//! - fees are charged in basis points of notional: taker for market orders and gap fills, maker
//!   for limit fills;
//! - with a partial-fill probability above zero, a seeded RNG makes some fills take only part
//!   of the remaining quantity; the rest waits for the next candle;
//! - a client order id is refused with Binance's [`codes::DUPLICATED_CLIENT_TRAN_ID`] while an
//!   order with that id is open, and may be reused once it is closed.
//!
//! The per-candle path does not allocate when the symbol has no open orders. [`PaperExchange`]
//! wraps the engine behind the kernel's `Exchange` trait for paper trading and the simulator.

use std::collections::VecDeque;

/// The engine's maps hash with foldhash: their keys are symbols and client order ids, and
/// SipHash's protection against chosen keys is not needed by a simulation in one process.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Mutex;

use async_trait::async_trait;
use keel_kernel::exchange::{
    Balance, CANDLE_QUEUE_MAX, Exchange, ExchangeError, ExchangeOrderId, Fill, Interval,
    OrderReport, OrderRequest, OrderType, PlaceOutcome, Position, SymbolRules, TradeId,
    USER_EVENT_QUEUE_MAX, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::{Candle, Side};
use keel_kernel::money::{Amount, Price, Qty, decimal_from_f64};
use keel_kernel::order::OrderStatus;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use tokio::sync::mpsc;

use crate::codes;

/// How many closed orders the engine remembers for queries before forgetting the oldest.
pub const CLOSED_ORDERS_REMEMBERED_MAX: usize = 100_000;
/// How many orders may be open at once across all symbols (Binance allows 200 per symbol).
pub const OPEN_ORDERS_MAX: usize = 1_000;
/// Closed candles kept per symbol for [`Exchange::recent_candles`]: as many as one Binance
/// klines request returns.
pub const CANDLES_KEPT: usize = 1_500;

/// Decimal places of settled amounts (fees, realized PnL), as the ledger stores them.
const LEDGER_DECIMALS: u32 = keel_kernel::ledger::AMOUNT_SCALE;
const BPS_PER_UNIT: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

/// How the paper exchange fills orders.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperConfig {
    /// Seeds the RNG behind partial fills: one seed, one history.
    pub seed: u64,
    /// Fee of market orders and gap fills, in basis points of notional.
    pub taker_fee_bps: Decimal,
    /// Fee of limit orders that rested, in basis points of notional.
    pub maker_fee_bps: Decimal,
    /// Delay before a placed order can fill, in milliseconds of candle time.
    pub latency_ms: i64,
    /// The chance, from 0 to 1, that a fill takes only part of the remaining quantity.
    pub partial_fill_probability: f64,
    /// The quote and margin asset, such as `USDT`.
    pub quote_asset: String,
    /// The starting wallet balance.
    pub initial_balance: Amount,
    /// Checks the account's margin when an order fills (leverage 1: the wallet less the cost of
    /// open positions): a fill that would open more than the margin left pays for, fee
    /// included, expires the rest of its order instead. A backtest's market order is priced at
    /// the next candle's open, which may gap beyond what the kernel reserved when it sized the
    /// entry at the close; on Binance the order would have met the margin check at the price
    /// it filled at.
    pub margin_checked_at_fill: bool,
}

impl Default for PaperConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            taker_fee_bps: Decimal::new(4, 0),
            maker_fee_bps: Decimal::new(2, 0),
            latency_ms: 0,
            partial_fill_probability: 0.0,
            quote_asset: "USDT".to_owned(),
            initial_balance: Amount::new(Decimal::new(10_000, 0)).expect("within limits"),
            margin_checked_at_fill: false,
        }
    }
}

/// Why the engine refused a call (not an order: orders get a [`PlaceOutcome`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PaperError {
    /// A candle or request for a symbol the engine has no rules for.
    #[error("unknown symbol {0}: add its rules first")]
    UnknownSymbol(Symbol),
    /// A candle older than one already fed for the same symbol.
    #[error("candle for {symbol} opens at {open_time_ms}, before the last one at {last_ms}")]
    CandleOutOfOrder {
        /// The instrument.
        symbol: Symbol,
        /// The refused candle's open time.
        open_time_ms: i64,
        /// The last accepted candle's open time.
        last_ms: i64,
    },
    /// A candle whose prices are not finite and positive, or whose low/high do not bound it.
    #[error("malformed candle for {symbol} at {open_time_ms}")]
    MalformedCandle {
        /// The instrument.
        symbol: Symbol,
        /// The refused candle's open time.
        open_time_ms: i64,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct PositionState {
    /// Signed size: positive long.
    qty: Decimal,
    entry_price: Decimal,
}

#[derive(Debug)]
struct Book {
    rules: SymbolRules,
    open: Vec<ClientOrderId>,
    last_open_time_ms: i64,
    last_close: f64,
    position: PositionState,
    /// The last closed candles, for [`PaperEngine::recent_candles`].
    history: VecDeque<Bar>,
}

/// A candle kept in a symbol's book (the symbol is the book's).
#[derive(Debug, Clone, Copy)]
struct Bar {
    open_time_ms: i64,
    close_time_ms: i64,
    ohlcv: [f64; 5],
}

impl Bar {
    fn of(candle: &Candle) -> Bar {
        Bar {
            open_time_ms: candle.open_time_ms,
            close_time_ms: candle.close_time_ms,
            ohlcv: [
                candle.open,
                candle.high,
                candle.low,
                candle.close,
                candle.volume,
            ],
        }
    }

    fn candle(&self, symbol: &Symbol) -> Candle {
        let [open, high, low, close, volume] = self.ohlcv;
        Candle {
            symbol: symbol.clone(),
            open_time_ms: self.open_time_ms,
            close_time_ms: self.close_time_ms,
            open,
            high,
            low,
            close,
            volume,
        }
    }
}

#[derive(Debug, Clone)]
struct PaperOrder {
    report: OrderReport,
    active_from_ms: i64,
    fills: Vec<Fill>,
    /// The open time of the candle that last matched the order: a candle matches an order
    /// once, whether at its open ([`PaperEngine::on_open`]) or over its range.
    matched_open_ms: Option<i64>,
}

/// The matching engine. Pure and deterministic: same config, same rules, same candles and
/// calls, same fills.
#[derive(Debug)]
pub struct PaperEngine {
    config: PaperConfig,
    rng: ChaCha8Rng,
    books: HashMap<Symbol, Book>,
    /// Boxed: the map holds up to [`CLOSED_ORDERS_REMEMBERED_MAX`] closed orders besides the
    /// open ones, and growing it moves its entries.
    orders: HashMap<ClientOrderId, Box<PaperOrder>>,
    closed: VecDeque<ClientOrderId>,
    open_count: usize,
    next_order_id: i64,
    next_trade_id: i64,
    wallet: Decimal,
    now_ms: i64,
    events: Vec<UserEvent>,
}

impl PaperEngine {
    /// An engine trading `rules`' symbols under `config`.
    pub fn new(config: PaperConfig, rules: impl IntoIterator<Item = SymbolRules>) -> Self {
        assert!(
            (0.0..=1.0).contains(&config.partial_fill_probability),
            "partial_fill_probability is a probability"
        );
        assert!(config.latency_ms >= 0, "latency is not negative");
        let books = rules
            .into_iter()
            .map(|rules| {
                let book = Book {
                    rules: rules.clone(),
                    open: Vec::new(),
                    last_open_time_ms: i64::MIN,
                    last_close: 0.0,
                    position: PositionState::default(),
                    history: VecDeque::new(),
                };
                (rules.symbol, book)
            })
            .collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            wallet: config.initial_balance.get(),
            config,
            books,
            orders: HashMap::default(),
            closed: VecDeque::new(),
            open_count: 0,
            next_order_id: 1,
            next_trade_id: 1,
            now_ms: 0,
            events: Vec::new(),
        }
    }

    /// The engine's clock: the close time of the last candle fed, or a later time set with
    /// [`PaperEngine::advance_clock`].
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Moves the clock forward (a live feed between candles). Never moves it back.
    pub fn advance_clock(&mut self, now_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The rules of `symbol`.
    pub fn rules(&self, symbol: &Symbol) -> Option<&SymbolRules> {
        self.books.get(symbol).map(|book| &book.rules)
    }

    /// Every symbol the engine trades.
    pub fn symbols(&self) -> impl Iterator<Item = &SymbolRules> {
        self.books.values().map(|book| &book.rules)
    }

    /// The last close price fed for `symbol`.
    pub fn last_price(&self, symbol: &Symbol) -> Option<Price> {
        let book = self.books.get(symbol)?;
        Price::from_f64(book.last_close).ok()
    }

    /// Sets `symbol`'s position to `qty` (signed: positive long) at `entry_price`.
    ///
    /// A paper account lives only in memory: a host restarting over a store that still holds
    /// positions restores them here before recovery, so reconciliation finds what it expects.
    pub fn restore_position(
        &mut self,
        symbol: &Symbol,
        qty: Decimal,
        entry_price: Decimal,
    ) -> Result<(), PaperError> {
        let book = self
            .books
            .get_mut(symbol)
            .ok_or_else(|| PaperError::UnknownSymbol(symbol.clone()))?;
        book.position = PositionState { qty, entry_price };
        Ok(())
    }

    /// Numbers the next exchange order and trade ids from `first_id` (never lower than now).
    ///
    /// A fresh paper account would start both at 1 again; a host restarting over a store that
    /// already recorded trade 1 starts them past everything the store has seen, as a real
    /// exchange never reuses an id.
    pub fn start_ids_at(&mut self, first_id: i64) {
        self.next_order_id = self.next_order_id.max(first_id);
        self.next_trade_id = self.next_trade_id.max(first_id);
    }

    /// Events (order updates and fills) produced since they were last taken, oldest first.
    /// Most candles produce none: taking none costs no allocation.
    pub fn take_events(&mut self) -> Vec<UserEvent> {
        std::mem::take(&mut self.events)
    }

    /// Opens a candle before feeding it: the market orders active by its open fill at the open,
    /// and the clock moves to the open, so an order placed on hearing of those fills (the entry
    /// of a reversal, after its exit) is active at this open too and fills at it when the candle
    /// is fed. Limit orders wait for [`PaperEngine::on_candle`]. A backtest calls this before
    /// each [`PaperEngine::on_candle`]; live paper trading, which hears of candles once they
    /// closed, does not.
    ///
    /// Events go to the queue read by [`PaperEngine::take_events`].
    pub fn on_open(&mut self, candle: &Candle) -> Result<(), PaperError> {
        let Some(book) = self.books.get_mut(&candle.symbol) else {
            return Err(PaperError::UnknownSymbol(candle.symbol.clone()));
        };
        check_candle(candle, book.last_open_time_ms)?;
        let orders_open = !book.open.is_empty();
        self.now_ms = self.now_ms.max(candle.open_time_ms);
        if orders_open {
            self.match_open_orders(candle, |order| order.report.order_type == OrderType::Market);
        }
        Ok(())
    }

    /// Feeds one closed candle: fills what it crosses and moves the clock to its close. Fills are
    /// stamped with the candle's open time (a market order fills at the open).
    ///
    /// Events go to the queue read by [`PaperEngine::take_events`].
    pub fn on_candle(&mut self, candle: &Candle) -> Result<(), PaperError> {
        let Some(book) = self.books.get_mut(&candle.symbol) else {
            return Err(PaperError::UnknownSymbol(candle.symbol.clone()));
        };
        check_candle(candle, book.last_open_time_ms)?;
        book.last_open_time_ms = candle.open_time_ms;
        book.last_close = candle.close;
        if book.history.len() == CANDLES_KEPT {
            book.history.pop_front();
        }
        book.history.push_back(Bar::of(candle));
        let orders_open = !book.open.is_empty();
        self.now_ms = self.now_ms.max(candle.close_time_ms);
        if orders_open {
            self.match_open_orders(candle, |_| true);
        }
        Ok(())
    }

    /// Matches the open orders of `candle`'s symbol that `eligible` picks against it, and
    /// closes those it fills or expires. The open list is taken out and put back so its
    /// capacity is reused: no allocation per candle unless an order closes. Its callers, which
    /// hold the symbol's book already, call it only while an order is open: a candle with none
    /// costs one look-up of the book.
    fn match_open_orders(&mut self, candle: &Candle, eligible: impl Fn(&PaperOrder) -> bool) {
        let Some(book) = self.books.get_mut(&candle.symbol) else {
            return;
        };
        let mut ids = std::mem::take(&mut book.open);
        let mut closed = Vec::new();
        ids.retain(|id| {
            if !eligible(&self.orders[id]) {
                return true;
            }
            self.match_order(id, candle);
            let open = self.orders[id].report.status.is_open();
            if !open {
                closed.push(id.clone());
            }
            open
        });
        if let Some(book) = self.books.get_mut(&candle.symbol) {
            book.open = ids;
        }
        for id in closed {
            self.close(id);
        }
    }

    /// The last `limit` closed candles of `symbol` (at most [`CANDLES_KEPT`]), oldest first;
    /// `None` for a symbol the engine does not trade.
    pub fn recent_candles(&self, symbol: &Symbol, limit: usize) -> Option<Vec<Candle>> {
        let book = self.books.get(symbol)?;
        let skip = book.history.len().saturating_sub(limit);
        Some(
            book.history
                .iter()
                .skip(skip)
                .map(|bar| bar.candle(symbol))
                .collect(),
        )
    }

    /// Places an order. It rests until a later candle fills it (see the module's fill rules).
    pub fn place(&mut self, request: &OrderRequest) -> PlaceOutcome {
        if let Err((code, msg)) = self.check_placement(request) {
            return PlaceOutcome::Rejected { code, msg };
        }
        let report = OrderReport {
            client_order_id: request.client_order_id.clone(),
            exchange_order_id: ExchangeOrderId(self.next_order_id),
            symbol: request.symbol.clone(),
            side: request.side,
            order_type: request.order_type,
            status: OrderStatus::New,
            orig_qty: request.qty,
            executed_qty: Decimal::ZERO,
            avg_price: None,
            reduce_only: request.reduce_only,
            update_time_ms: self.now_ms,
        };
        self.next_order_id += 1;
        let order = PaperOrder {
            report: report.clone(),
            active_from_ms: self.now_ms + self.config.latency_ms,
            fills: Vec::new(),
            matched_open_ms: None,
        };
        // A reused id replaces the closed order it named, as on Binance.
        self.orders
            .insert(request.client_order_id.clone(), Box::new(order));
        let book = self.books.get_mut(&request.symbol).expect("checked");
        book.open.push(request.client_order_id.clone());
        self.open_count += 1;
        self.events.push(UserEvent::Order(report.clone()));
        PlaceOutcome::Accepted(report)
    }

    fn check_placement(&self, request: &OrderRequest) -> Result<(), (i64, String)> {
        let Some(book) = self.books.get(&request.symbol) else {
            return Err((codes::BAD_SYMBOL, "Invalid symbol.".to_owned()));
        };
        if let Some(existing) = self.orders.get(&request.client_order_id)
            && existing.report.status.is_open()
        {
            return Err((
                codes::DUPLICATED_CLIENT_TRAN_ID,
                "Duplicate clientOrderId.".to_owned(),
            ));
        }
        if self.open_count >= OPEN_ORDERS_MAX {
            return Err((
                codes::MAX_OPEN_ORDER_EXCEEDED,
                "Reach max open order limit.".to_owned(),
            ));
        }
        check_filters(&book.rules, request, self.last_price(&request.symbol))?;
        if request.reduce_only && !reduces(book.position.qty, request.side) {
            return Err((
                codes::REDUCE_ONLY_REJECT,
                "ReduceOnly Order is rejected.".to_owned(),
            ));
        }
        Ok(())
    }

    /// Cancels an open order.
    pub fn cancel(
        &mut self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, (i64, String)> {
        self.end(symbol, id, OrderStatus::Canceled)
    }

    /// Expires an open order, as an exchange ends an immediate-or-cancel order it could not fill.
    pub fn expire(
        &mut self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, (i64, String)> {
        self.end(symbol, id, OrderStatus::Expired)
    }

    /// Closes an open order with `status` and reports it.
    fn end(
        &mut self,
        symbol: &Symbol,
        id: &ClientOrderId,
        status: OrderStatus,
    ) -> Result<OrderReport, (i64, String)> {
        let open = self
            .orders
            .get(id)
            .is_some_and(|o| &o.report.symbol == symbol && o.report.status.is_open());
        if !open {
            return Err((codes::CANCEL_REJECTED, "Unknown order sent.".to_owned()));
        }
        let order = self.orders.get_mut(id).expect("checked");
        order.report.status = status;
        order.report.update_time_ms = self.now_ms;
        let report = order.report.clone();
        let book = self
            .books
            .get_mut(symbol)
            .expect("an order's symbol has a book");
        book.open.retain(|open| open != id);
        self.close(id.clone());
        self.events.push(UserEvent::Order(report.clone()));
        Ok(report)
    }

    /// The order with this client order id, if the engine remembers it.
    pub fn order(&self, symbol: &Symbol, id: &ClientOrderId) -> Option<&OrderReport> {
        let order = self.orders.get(id)?;
        (&order.report.symbol == symbol).then_some(&order.report)
    }

    /// The order with this exchange order id, if the engine remembers it.
    pub fn order_by_exchange_id(
        &self,
        symbol: &Symbol,
        id: ExchangeOrderId,
    ) -> Option<&OrderReport> {
        self.orders
            .values()
            .map(|o| &o.report)
            .find(|r| r.exchange_order_id == id && &r.symbol == symbol)
    }

    /// The fills of one order, oldest first.
    pub fn fills(&self, symbol: &Symbol, id: &ClientOrderId) -> Option<&[Fill]> {
        let order = self.orders.get(id)?;
        (&order.report.symbol == symbol).then_some(order.fills.as_slice())
    }

    /// Every open order, on one symbol or all, in placement order.
    pub fn open_orders(&self, symbol: Option<&Symbol>) -> Vec<OrderReport> {
        let mut open: Vec<OrderReport> = self
            .books
            .values()
            .filter(|book| symbol.is_none_or(|s| s == &book.rules.symbol))
            .flat_map(|book| book.open.iter())
            .map(|id| self.orders[id].report.clone())
            .collect();
        open.sort_by_key(|r| r.exchange_order_id);
        open
    }

    /// Every symbol's position, flat ones included, sorted by symbol.
    pub fn positions(&self) -> Vec<Position> {
        let mut positions: Vec<Position> = self.books.values().map(position_of).collect();
        positions.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        positions
    }

    /// The quote asset's balance: wallet (deposits + realised PnL − fees) and available
    /// (wallet + unrealised PnL; the paper exchange keeps no margin model).
    pub fn balance(&self) -> Balance {
        let unrealized: Decimal = self
            .books
            .values()
            .map(|book| position_of(book).unrealized_pnl.get())
            .sum();
        Balance {
            asset: self.config.quote_asset.clone(),
            wallet_balance: Amount::new(self.wallet).expect("wallet within limits"),
            available_balance: Amount::new(self.wallet + unrealized)
                .expect("balance within limits"),
        }
    }

    /// Counts an order out of the open set and remembers it for queries, forgetting the oldest
    /// closed order beyond [`CLOSED_ORDERS_REMEMBERED_MAX`].
    fn close(&mut self, id: ClientOrderId) {
        assert!(
            self.open_count > 0,
            "closing an order that was counted open"
        );
        self.open_count -= 1;
        self.closed.push_back(id);
        if self.closed.len() > CLOSED_ORDERS_REMEMBERED_MAX
            && let Some(oldest) = self.closed.pop_front()
        {
            // The id may since have been reused by an order that is still open: keep that one.
            if self
                .orders
                .get(&oldest)
                .is_some_and(|o| o.report.status.is_terminal())
            {
                self.orders.remove(&oldest);
            }
        }
    }

    fn match_order(&mut self, id: &ClientOrderId, candle: &Candle) {
        let order = &self.orders[id];
        if candle.open_time_ms < order.active_from_ms
            || order.matched_open_ms == Some(candle.open_time_ms)
        {
            return;
        }
        let report = &order.report;
        let Some(price) = fill_price(report.order_type, report.side, candle) else {
            return;
        };
        let maker = report.order_type.limit_price() == Some(price);
        let (side, order_type, reduce_only) = (report.side, report.order_type, report.reduce_only);
        let remaining = report.orig_qty.get() - report.executed_qty;
        let book = &self.books[&candle.symbol];
        let step = match order_type {
            OrderType::Market => book.rules.market_step_size,
            OrderType::Limit { .. } => book.rules.step_size,
        };
        let reducible = reducible_qty(book.position.qty, side);
        let mut qty = self.partial_qty(remaining, step);
        let mut expire = false;
        if reduce_only && reducible < qty {
            // Binance never lets a reduce-only order open a position: the rest expires.
            qty = reducible;
            expire = true;
        }
        if self.config.margin_checked_at_fill && !reduce_only {
            let opening = qty - reducible.min(qty);
            let bps = if maker {
                self.config.maker_fee_bps
            } else {
                self.config.taker_fee_bps
            };
            let needed = opening * price.get() * (BPS_PER_UNIT + bps) / BPS_PER_UNIT;
            if opening > Decimal::ZERO && needed > self.margin_left() {
                // What closes a position still fills; nothing opens beyond the margin.
                qty = reducible.min(qty);
                expire = true;
            }
        }
        self.orders.get_mut(id).expect("open order").matched_open_ms = Some(candle.open_time_ms);
        if qty > Decimal::ZERO {
            // A fill is stamped with the open of the candle that filled it, the bar it belongs
            // to: a market order fills at that open, not at the close that is known only later.
            self.execute(id, price, qty, maker, candle.open_time_ms);
        }
        if expire {
            let order = self.orders.get_mut(id).expect("open order");
            order.report.status = OrderStatus::Expired;
            self.events.push(UserEvent::Order(order.report.clone()));
        }
    }

    /// The wallet less the cost of every open position (leverage 1).
    fn margin_left(&self) -> Decimal {
        let held: Decimal = self
            .books
            .values()
            .map(|b| b.position.qty.abs() * b.position.entry_price)
            .sum();
        self.wallet - held
    }

    fn partial_qty(&mut self, remaining: Decimal, step: Decimal) -> Decimal {
        let p = self.config.partial_fill_probability;
        if p <= 0.0 || !self.rng.gen_bool(p) {
            return remaining;
        }
        let fraction = Decimal::from(self.rng.gen_range(1..100u32)) / Decimal::ONE_HUNDRED;
        let part = keel_kernel::money::round_down_to_step(remaining * fraction, step);
        if part <= Decimal::ZERO || part >= remaining {
            remaining
        } else {
            part
        }
    }

    fn execute(
        &mut self,
        id: &ClientOrderId,
        price: Price,
        qty: Decimal,
        maker: bool,
        time_ms: i64,
    ) {
        let bps = if maker {
            self.config.maker_fee_bps
        } else {
            self.config.taker_fee_bps
        };
        // Fees and PnL are settled to the ledger's scale, as an exchange reports commission: a
        // tick of 0.01 times a step of 0.001 times a fee in basis points has more places than
        // any ledger keeps.
        let fee = (price.get() * qty * bps / BPS_PER_UNIT).round_dp(LEDGER_DECIMALS);
        let order = self.orders.get_mut(id).expect("open order");
        let side = order.report.side;
        let book = self.books.get_mut(&order.report.symbol).expect("book");
        let realized =
            apply_fill(&mut book.position, side, price.get(), qty).round_dp(LEDGER_DECIMALS);
        self.wallet += realized - fee;
        let fill = Fill {
            trade_id: TradeId(self.next_trade_id),
            client_order_id: id.clone(),
            exchange_order_id: order.report.exchange_order_id,
            symbol: order.report.symbol.clone(),
            side,
            price,
            qty: Qty::new(qty).expect("a fill quantity is positive"),
            fee: Amount::new(fee).expect("fee within limits"),
            realized_pnl: Amount::new(realized).expect("pnl within limits"),
            maker,
            time_ms,
        };
        self.next_trade_id += 1;
        let report = &mut order.report;
        let before = report.executed_qty;
        let avg_before = report.avg_price.map_or(Decimal::ZERO, Price::get);
        report.executed_qty += qty;
        let avg = (avg_before * before + price.get() * qty) / report.executed_qty;
        report.avg_price = Price::new(avg.round_dp(8)).ok();
        report.status = if report.executed_qty >= report.orig_qty.get() {
            OrderStatus::Filled
        } else {
            OrderStatus::PartiallyFilled
        };
        report.update_time_ms = time_ms;
        assert!(
            report.executed_qty <= report.orig_qty.get(),
            "never overfills"
        );
        order.fills.push(fill.clone());
        self.events.push(UserEvent::Fill(fill));
        self.events.push(UserEvent::Order(order.report.clone()));
    }
}

fn check_candle(candle: &Candle, last_open_time_ms: i64) -> Result<(), PaperError> {
    if candle.open_time_ms < last_open_time_ms {
        return Err(PaperError::CandleOutOfOrder {
            symbol: candle.symbol.clone(),
            open_time_ms: candle.open_time_ms,
            last_ms: last_open_time_ms,
        });
    }
    let prices = [candle.open, candle.high, candle.low, candle.close];
    let sane = prices.iter().all(|p| p.is_finite() && *p > 0.0)
        && candle.low <= candle.open.min(candle.close)
        && candle.high >= candle.open.max(candle.close);
    if !sane {
        return Err(PaperError::MalformedCandle {
            symbol: candle.symbol.clone(),
            open_time_ms: candle.open_time_ms,
        });
    }
    Ok(())
}

/// Binance-style filter checks: the paper exchange refuses what Binance would refuse.
fn check_filters(
    rules: &SymbolRules,
    request: &OrderRequest,
    last: Option<Price>,
) -> Result<(), (i64, String)> {
    let qty = request.qty.get();
    if rules.round_qty(qty, request.order_type) != qty.normalize() {
        return Err((
            codes::BAD_PRECISION,
            "Precision is over the maximum defined for this asset.".to_owned(),
        ));
    }
    if let Some(price) = request.order_type.limit_price()
        && rules.round_price(price.get()) != price.get().normalize()
    {
        return Err((
            codes::PRICE_NOT_INCREASED_BY_TICK_SIZE,
            "Price not increased by tick size.".to_owned(),
        ));
    }
    rules.apply(request, last).map_err(|violation| {
        let code = match violation {
            keel_kernel::exchange::RuleViolation::NotionalBelowMin { .. } => codes::MIN_NOTIONAL,
            _ => codes::QTY_LESS_THAN_ZERO,
        };
        (code, violation.to_string())
    })?;
    Ok(())
}

fn reduces(position_qty: Decimal, side: Side) -> bool {
    reducible_qty(position_qty, side) > Decimal::ZERO
}

fn reducible_qty(position_qty: Decimal, side: Side) -> Decimal {
    match side {
        Side::Buy if position_qty < Decimal::ZERO => -position_qty,
        Side::Sell if position_qty > Decimal::ZERO => position_qty,
        _ => Decimal::ZERO,
    }
}

/// The price `candle` fills an order at, or `None` when it does not reach the order.
fn fill_price(order_type: OrderType, side: Side, candle: &Candle) -> Option<Price> {
    if let OrderType::Limit { price } = order_type {
        // A float pre-check keeps the common case (not crossed) free of decimal conversions;
        // the slack keeps it from ever refusing what the exact check below would accept.
        let limit = price.get().to_f64()?;
        let slack = limit.abs() * 1e-9;
        let reached = match side {
            Side::Buy => candle.low <= limit + slack,
            Side::Sell => candle.high >= limit - slack,
        };
        if !reached {
            return None;
        }
    }
    let open = decimal_from_f64("open", candle.open).ok()?;
    let price = match order_type {
        OrderType::Market => open,
        OrderType::Limit { price } => {
            let limit = price.get();
            let (low, high) = (
                decimal_from_f64("low", candle.low).ok()?,
                decimal_from_f64("high", candle.high).ok()?,
            );
            match side {
                Side::Buy if open <= limit => open,
                Side::Buy if low <= limit => limit,
                Side::Sell if open >= limit => open,
                Side::Sell if high >= limit => limit,
                _ => return None,
            }
        }
    };
    Price::new(price).ok()
}

/// Applies a fill to a one-way position and returns the profit it realised.
fn apply_fill(position: &mut PositionState, side: Side, price: Decimal, qty: Decimal) -> Decimal {
    let signed = match side {
        Side::Buy => qty,
        Side::Sell => -qty,
    };
    let old = position.qty;
    let same_direction = old.is_zero() || (old > Decimal::ZERO) == (signed > Decimal::ZERO);
    if same_direction {
        let total = old.abs() + qty;
        position.entry_price = (old.abs() * position.entry_price + qty * price) / total;
        position.qty = old + signed;
        return Decimal::ZERO;
    }
    let closed = qty.min(old.abs());
    let direction = if old > Decimal::ZERO {
        Decimal::ONE
    } else {
        Decimal::NEGATIVE_ONE
    };
    let realized = closed * (price - position.entry_price) * direction;
    position.qty = old + signed;
    if position.qty.is_zero() {
        position.entry_price = Decimal::ZERO;
    } else if (position.qty > Decimal::ZERO) != (old > Decimal::ZERO) {
        // The fill flipped the position: the new side was opened at this price.
        position.entry_price = price;
    }
    realized
}

fn position_of(book: &Book) -> Position {
    let state = book.position;
    let last = decimal_from_f64("last price", book.last_close).unwrap_or(Decimal::ZERO);
    let unrealized = if state.qty.is_zero() || last.is_zero() {
        Decimal::ZERO
    } else {
        state.qty * (last - state.entry_price)
    };
    Position {
        symbol: book.rules.symbol.clone(),
        qty: state.qty,
        entry_price: Price::new(state.entry_price.round_dp(8)).ok(),
        unrealized_pnl: Amount::new(unrealized).unwrap_or(Amount::ZERO),
    }
}

/// The paper engine behind the kernel's [`Exchange`] trait, with subscribers.
///
/// Feed it candles with [`PaperExchange::feed_candle`]; order updates and fills go to every
/// [`Exchange::user_events`] subscriber, candles to every [`Exchange::candles`] subscriber of
/// their symbol.
pub struct PaperExchange {
    engine: Mutex<PaperEngine>,
    user_subscribers: Mutex<Vec<mpsc::Sender<UserEvent>>>,
    candle_subscribers: Mutex<Vec<(Symbol, mpsc::Sender<Candle>)>>,
}

impl PaperExchange {
    /// A paper exchange trading `rules`' symbols under `config`.
    pub fn new(config: PaperConfig, rules: impl IntoIterator<Item = SymbolRules>) -> Self {
        Self {
            engine: Mutex::new(PaperEngine::new(config, rules)),
            user_subscribers: Mutex::new(Vec::new()),
            candle_subscribers: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on the engine (for inspection, or to drive it synchronously).
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut PaperEngine) -> R) -> R {
        f(&mut self.engine.lock().expect("paper engine lock poisoned"))
    }

    /// Opens a candle ([`PaperEngine::on_open`]) and delivers the resulting events to
    /// subscribers; the candle itself is delivered when it is fed.
    pub async fn open_candle(&self, candle: &Candle) -> Result<(), PaperError> {
        let events: Vec<UserEvent> = self.with_engine(|engine| {
            engine.on_open(candle)?;
            Ok::<_, PaperError>(engine.take_events())
        })?;
        self.publish(events).await;
        Ok(())
    }

    /// Feeds one closed candle: matches orders, then delivers the resulting events and the
    /// candle to subscribers (waiting when a subscriber's queue is full).
    pub async fn feed_candle(&self, candle: &Candle) -> Result<(), PaperError> {
        let events: Vec<UserEvent> = self.with_engine(|engine| {
            engine.on_candle(candle)?;
            Ok::<_, PaperError>(engine.take_events())
        })?;
        self.publish(events).await;
        let subscribers: Vec<mpsc::Sender<Candle>> = {
            let mut subs = self.candle_subscribers.lock().expect("lock poisoned");
            subs.retain(|(_, tx)| !tx.is_closed());
            subs.iter()
                .filter(|(symbol, _)| symbol == &candle.symbol)
                .map(|(_, tx)| tx.clone())
                .collect()
        };
        for tx in subscribers {
            // A subscriber that went away is pruned on the next candle.
            let _ = tx.send(candle.clone()).await;
        }
        Ok(())
    }

    async fn publish(&self, events: Vec<UserEvent>) {
        if events.is_empty() {
            return;
        }
        let subscribers: Vec<mpsc::Sender<UserEvent>> = {
            let mut subs = self.user_subscribers.lock().expect("lock poisoned");
            subs.retain(|tx| !tx.is_closed());
            subs.clone()
        };
        for tx in subscribers {
            for event in &events {
                let _ = tx.send(event.clone()).await;
            }
        }
    }
}

fn rejected((code, msg): (i64, String)) -> ExchangeError {
    ExchangeError::Rejected { code, msg }
}

#[async_trait]
impl Exchange for PaperExchange {
    fn name(&self) -> &str {
        "paper"
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.with_engine(|e| e.rules(symbol).cloned())
            .ok_or_else(|| ExchangeError::UnknownSymbol(symbol.clone()))
    }

    async fn place(&self, request: &OrderRequest) -> PlaceOutcome {
        let (outcome, events) = self.with_engine(|e| {
            let outcome = e.place(request);
            (outcome, e.take_events())
        });
        self.publish(events).await;
        outcome
    }

    async fn cancel(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, ExchangeError> {
        let (result, events) = self.with_engine(|e| {
            let result = e.cancel(symbol, id);
            (result, e.take_events())
        });
        self.publish(events).await;
        result.map_err(rejected)
    }

    async fn order(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<OrderReport>, ExchangeError> {
        Ok(self.with_engine(|e| e.order(symbol, id).cloned()))
    }

    async fn open_orders(
        &self,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<OrderReport>, ExchangeError> {
        Ok(self.with_engine(|e| e.open_orders(symbol)))
    }

    async fn fills(&self, symbol: &Symbol, id: &ClientOrderId) -> Result<Vec<Fill>, ExchangeError> {
        Ok(self.with_engine(|e| {
            e.fills(symbol, id)
                .map(<[Fill]>::to_vec)
                .unwrap_or_default()
        }))
    }

    async fn positions(&self) -> Result<Vec<Position>, ExchangeError> {
        let all = self.with_engine(|e| e.positions());
        Ok(all.into_iter().filter(|p| !p.qty.is_zero()).collect())
    }

    async fn balances(&self) -> Result<Vec<Balance>, ExchangeError> {
        Ok(vec![self.with_engine(|e| e.balance())])
    }

    async fn user_events(&self) -> Result<mpsc::Receiver<UserEvent>, ExchangeError> {
        let (tx, rx) = mpsc::channel(USER_EVENT_QUEUE_MAX);
        self.user_subscribers
            .lock()
            .expect("lock poisoned")
            .push(tx);
        Ok(rx)
    }

    /// The candles fed so far (whatever their interval: the paper exchange has the one it is fed).
    async fn recent_candles(
        &self,
        symbol: &Symbol,
        _interval: Interval,
        limit: usize,
    ) -> Result<Vec<Candle>, ExchangeError> {
        self.with_engine(|e| e.recent_candles(symbol, limit))
            .ok_or_else(|| ExchangeError::UnknownSymbol(symbol.clone()))
    }

    async fn candles(
        &self,
        symbol: &Symbol,
        _interval: Interval,
    ) -> Result<mpsc::Receiver<Candle>, ExchangeError> {
        if self.with_engine(|e| e.rules(symbol).is_none()) {
            return Err(ExchangeError::UnknownSymbol(symbol.clone()));
        }
        let (tx, rx) = mpsc::channel(CANDLE_QUEUE_MAX);
        let mut subs = self.candle_subscribers.lock().expect("lock poisoned");
        subs.push((symbol.clone(), tx));
        Ok(rx)
    }
}
