//! One trading account of the simulator: the paper engine that matches its orders, and what
//! Binance keeps beside it.
//!
//! The engine remembers an order by its client order id, so an id reused after its order
//! closed replaces the earlier order there. Binance keeps both: `allOrders`, a query by
//! `orderId` and `userTrades` still show the first one. The account therefore records every
//! order report and fill the engine emits, by exchange order id and trade id, and answers
//! queries from that record.
//!
//! Conditional orders (`STOP`, `STOP_MARKET`, `TAKE_PROFIT`, `TAKE_PROFIT_MARKET`) wait here,
//! outside the engine, until a candle crosses their stop price; then the market or limit order
//! they become goes to the engine. Binance keeps the order id through the trigger, so the
//! account reserves the id at placement and maps the engine's id of the triggered order to it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use keel_exchange::codes;
use keel_exchange::paper::PaperEngine;
use keel_kernel::exchange::{
    ExchangeOrderId, Fill, OrderReport, OrderRequest, PlaceOutcome, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::{Candle, Side};
use keel_kernel::order::OrderStatus;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive as _;

/// Orders an account remembers for `allOrders` and queries by `orderId`; the oldest go first.
pub const ORDER_HISTORY_MAX: usize = 100_000;
/// Trades an account remembers for `userTrades`; the oldest go first.
pub const TRADE_HISTORY_MAX: usize = 100_000;
/// The leverage of a symbol nobody set, as on a fresh Binance account.
pub const LEVERAGE_DEFAULT: u32 = 20;
/// The highest leverage `POST /fapi/v1/leverage` accepts.
pub const LEVERAGE_MAX: u32 = 125;
/// Conditional orders an account may hold waiting for their trigger, as Binance limits stop
/// orders (`MAX_STOP_ORDER_EXCEEDED` beyond it).
pub const CONDITIONAL_ORDERS_MAX: usize = 200;

/// The conditional order types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConditionalKind {
    Stop,
    StopMarket,
    TakeProfit,
    TakeProfitMarket,
}

impl ConditionalKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "STOP" => Some(Self::Stop),
            "STOP_MARKET" => Some(Self::StopMarket),
            "TAKE_PROFIT" => Some(Self::TakeProfit),
            "TAKE_PROFIT_MARKET" => Some(Self::TakeProfitMarket),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "STOP",
            Self::StopMarket => "STOP_MARKET",
            Self::TakeProfit => "TAKE_PROFIT",
            Self::TakeProfitMarket => "TAKE_PROFIT_MARKET",
        }
    }

    /// Whether it becomes a market order (else a limit order at its `price`).
    pub fn is_market(self) -> bool {
        matches!(self, Self::StopMarket | Self::TakeProfitMarket)
    }

    /// Binance's trigger rule: a stop buys when the price rises to the stop price and sells
    /// when it falls to it; a take-profit the other way round.
    pub fn triggers_when_price_rises(self, side: Side) -> bool {
        let stop = matches!(self, Self::Stop | Self::StopMarket);
        stop == (side == Side::Buy)
    }
}

/// Which price triggers a conditional order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkingType {
    /// The last traded price: the candle's high and low, which the market traded through.
    ContractPrice,
    /// The mark price: the simulator marks at the close, so only closes trigger.
    MarkPrice,
}

impl WorkingType {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "CONTRACT_PRICE" => Some(Self::ContractPrice),
            "MARK_PRICE" => Some(Self::MarkPrice),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContractPrice => "CONTRACT_PRICE",
            Self::MarkPrice => "MARK_PRICE",
        }
    }
}

/// What makes an order conditional.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conditional {
    pub kind: ConditionalKind,
    pub stop_price: Decimal,
    pub working_type: WorkingType,
    /// Closes the whole position when it triggers; it has no quantity of its own.
    pub close_position: bool,
    pub price_protect: bool,
    /// Placed through the Algo Order API (`/fapi/v1/algoOrder`): until it triggers it is an
    /// algo order, listed by the algo endpoints rather than `openOrders`.
    pub algo: bool,
    /// Set once the price crossed the stop price and the order went to the engine.
    pub triggered: bool,
    /// When it triggered (0 until then).
    pub triggered_ms: i64,
}

impl Conditional {
    /// Whether `price` has reached the stop price, in the direction the order waits for.
    pub fn reached_by(&self, side: Side, low: f64, high: f64) -> bool {
        let stop = self.stop_price.to_f64().unwrap_or(f64::NAN);
        if self.kind.triggers_when_price_rises(side) {
            high >= stop
        } else {
            low <= stop
        }
    }

    /// Whether `candle` triggers the order: its range for the contract price, its close for
    /// the mark price.
    fn triggered_by(&self, side: Side, candle: &Candle) -> bool {
        match self.working_type {
            WorkingType::ContractPrice => self.reached_by(side, candle.low, candle.high),
            WorkingType::MarkPrice => self.reached_by(side, candle.close, candle.close),
        }
    }
}

/// How an order was placed, beyond what the engine's report says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrderTerms {
    /// The `timeInForce` it was placed with (`GTC` for every order placed without one).
    pub time_in_force: &'static str,
    pub conditional: Option<Conditional>,
}

impl Default for OrderTerms {
    fn default() -> Self {
        Self {
            time_in_force: "GTC",
            conditional: None,
        }
    }
}

/// An order as the account remembers it: its last report, how it was placed and when.
#[derive(Debug, Clone)]
pub(crate) struct KeptOrder {
    pub report: OrderReport,
    pub created_ms: i64,
    pub terms: OrderTerms,
}

impl KeptOrder {
    /// Whether it was placed through the Algo Order API.
    pub fn is_algo(&self) -> bool {
        self.terms.conditional.as_ref().is_some_and(|c| c.algo)
    }

    /// A conditional order still waiting for its trigger.
    pub fn is_waiting(&self) -> bool {
        self.report.status.is_open()
            && self
                .terms
                .conditional
                .as_ref()
                .is_some_and(|c| !c.triggered)
    }
}

/// An event for the user-data stream, with the order's terms as they were when it happened.
pub(crate) struct Update {
    pub event: UserEvent,
    pub terms: OrderTerms,
}

/// The engine of one account and what Binance remembers besides.
pub(crate) struct Account {
    pub engine: PaperEngine,
    /// Every order, by exchange order id.
    pub orders: BTreeMap<i64, KeptOrder>,
    /// Every fill, by trade id.
    pub trades: BTreeMap<i64, Fill>,
    /// Leverage set per symbol; absent means [`LEVERAGE_DEFAULT`].
    pub leverage: HashMap<Symbol, u32>,
    /// Symbols switched to isolated margin; the others are cross.
    pub isolated: HashSet<Symbol>,
    /// Conditional orders waiting for their trigger, by order id.
    waiting: BTreeSet<i64>,
    /// The engine's id of each triggered conditional order, mapped to the order's own id.
    aliases: HashMap<i64, i64>,
    /// Above every order id the engine or the account handed out.
    next_id: i64,
    /// The terms of the order the engine is about to accept.
    terms_for_new: Option<OrderTerms>,
    /// Events recorded and not yet streamed, oldest first.
    updates: Vec<Update>,
}

impl Account {
    /// An account over `engine`, whose order ids start at `first_id`.
    pub fn new(engine: PaperEngine, first_id: i64) -> Self {
        Self {
            engine,
            orders: BTreeMap::new(),
            trades: BTreeMap::new(),
            leverage: HashMap::new(),
            isolated: HashSet::new(),
            waiting: BTreeSet::new(),
            aliases: HashMap::new(),
            next_id: first_id,
            terms_for_new: None,
            updates: Vec::new(),
        }
    }

    /// The order's own id for an id the engine reported.
    fn own_id(&self, engine_id: i64) -> i64 {
        self.aliases.get(&engine_id).copied().unwrap_or(engine_id)
    }

    /// An order's answer in REST form, for a report the engine or the account made.
    pub fn order_json(&self, report: &OrderReport) -> serde_json::Value {
        let id = self.own_id(report.exchange_order_id.0);
        match self.orders.get(&id) {
            Some(kept) => crate::wire::order(&kept.report, &kept.terms, kept.created_ms),
            None => crate::wire::order(report, &OrderTerms::default(), report.update_time_ms),
        }
    }

    /// The order named by `orderId`, or else the newest with `origClientOrderId`, on `symbol`.
    pub fn find(
        &self,
        symbol: &Symbol,
        order_id: Option<i64>,
        client_order_id: Option<&ClientOrderId>,
    ) -> Option<&KeptOrder> {
        let found = match (order_id, client_order_id) {
            (Some(id), _) => self.orders.get(&id),
            (None, Some(cid)) => self
                .orders
                .values()
                .rev()
                .find(|k| &k.report.client_order_id == cid && &k.report.symbol == symbol),
            (None, None) => None,
        };
        found.filter(|k| &k.report.symbol == symbol)
    }

    /// The open orders, on one symbol or all, by order id: the engine's and the conditional
    /// orders waiting for their trigger (algo orders wait apart, in [`Self::open_algo_orders`]).
    pub fn open_orders(&self, symbol: Option<&Symbol>) -> Vec<&KeptOrder> {
        let mut ids: Vec<i64> = self
            .engine
            .open_orders(symbol)
            .iter()
            .map(|r| self.own_id(r.exchange_order_id.0))
            .chain(
                self.waiting
                    .iter()
                    .copied()
                    .filter(|id| !self.orders[id].is_algo()),
            )
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.iter()
            .filter_map(|id| self.orders.get(id))
            .filter(|k| symbol.is_none_or(|s| &k.report.symbol == s))
            .collect()
    }

    /// The algo orders waiting for their trigger, on one symbol or all, by algo id.
    pub fn open_algo_orders(&self, symbol: Option<&Symbol>) -> Vec<&KeptOrder> {
        self.waiting
            .iter()
            .map(|id| &self.orders[id])
            .filter(|k| k.is_algo() && symbol.is_none_or(|s| &k.report.symbol == s))
            .collect()
    }

    /// Whether the triggered conditional order `id` went to the engine as an order (rather
    /// than expiring at its trigger with nothing to reduce).
    pub fn was_placed_at_trigger(&self, id: i64) -> bool {
        self.aliases.values().any(|own| *own == id)
    }

    /// Whether an open order (in the engine or waiting) already uses `cid`.
    fn client_order_id_in_use(&self, cid: &ClientOrderId) -> bool {
        self.waiting
            .iter()
            .any(|id| self.orders[id].report.client_order_id == *cid)
            || self
                .engine
                .open_orders(None)
                .iter()
                .any(|r| r.client_order_id == *cid)
    }

    /// Places a plain order in the engine, remembering the terms it was placed with.
    pub fn place(&mut self, request: &OrderRequest, terms: OrderTerms) -> PlaceOutcome {
        if self.client_order_id_in_use(&request.client_order_id) {
            return duplicate();
        }
        self.absorb_engine_events();
        self.terms_for_new = Some(terms);
        let outcome = self.engine.place(request);
        self.absorb_engine_events();
        self.terms_for_new = None;
        outcome
    }

    /// Accepts a conditional order: it waits, under an id of its own, for its trigger.
    /// `request.qty` is ignored for a `closePosition` order, which takes the position's.
    pub fn place_conditional(
        &mut self,
        request: &OrderRequest,
        terms: OrderTerms,
        now_ms: i64,
    ) -> PlaceOutcome {
        assert!(
            terms.conditional.is_some(),
            "a conditional order has its condition"
        );
        if self.client_order_id_in_use(&request.client_order_id) {
            return duplicate();
        }
        if self.waiting.len() >= CONDITIONAL_ORDERS_MAX {
            return PlaceOutcome::Rejected {
                code: codes::MAX_STOP_ORDER_EXCEEDED,
                msg: "Reach max stop order limit.".to_owned(),
            };
        }
        self.absorb_engine_events();
        let id = self.next_id;
        self.next_id += 1;
        // The engine numbers its orders past the reserved id.
        self.engine.start_ids_at(self.next_id);
        let report = OrderReport {
            client_order_id: request.client_order_id.clone(),
            exchange_order_id: ExchangeOrderId(id),
            symbol: request.symbol.clone(),
            side: request.side,
            order_type: request.order_type,
            status: OrderStatus::New,
            orig_qty: request.qty,
            executed_qty: Decimal::ZERO,
            avg_price: None,
            reduce_only: request.reduce_only,
            update_time_ms: now_ms,
        };
        self.orders.insert(
            id,
            KeptOrder {
                report: report.clone(),
                created_ms: now_ms,
                terms,
            },
        );
        self.waiting.insert(id);
        self.record(UserEvent::Order(report.clone()));
        PlaceOutcome::Accepted(report)
    }

    /// Cancels an open order: a waiting conditional order here, any other in the engine.
    pub fn cancel(&mut self, kept_id: i64, now_ms: i64) -> Result<OrderReport, (i64, String)> {
        let unknown = || (codes::CANCEL_REJECTED, "Unknown order sent.".to_owned());
        let kept = self.orders.get(&kept_id).ok_or_else(unknown)?;
        if !kept.report.status.is_open() {
            return Err(unknown());
        }
        if kept.is_waiting() {
            return Ok(self.end_waiting(kept_id, OrderStatus::Canceled, now_ms));
        }
        let (symbol, cid) = (
            kept.report.symbol.clone(),
            kept.report.client_order_id.clone(),
        );
        let report = self.engine.cancel(&symbol, &cid)?;
        self.absorb_engine_events();
        Ok(OrderReport {
            exchange_order_id: ExchangeOrderId(self.own_id(report.exchange_order_id.0)),
            ..report
        })
    }

    /// Ends a waiting conditional order with `status`, and reports it.
    fn end_waiting(&mut self, id: i64, status: OrderStatus, now_ms: i64) -> OrderReport {
        self.absorb_engine_events();
        self.waiting.remove(&id);
        let kept = self.orders.get_mut(&id).expect("a waiting order is kept");
        kept.report.status = status;
        kept.report.update_time_ms = now_ms;
        let report = kept.report.clone();
        self.record(UserEvent::Order(report.clone()));
        report
    }

    /// Expires the immediate-or-cancel and fill-or-kill orders on `candle`'s symbol that this
    /// candle was the first chance of (placed by its open) and left open: what it did not fill,
    /// it never will.
    pub fn expire_unfilled_immediate(&mut self, candle: &Candle) {
        let due: Vec<ClientOrderId> = self
            .engine
            .open_orders(Some(&candle.symbol))
            .into_iter()
            .filter(|report| {
                let kept = self.orders.get(&self.own_id(report.exchange_order_id.0));
                kept.is_some_and(|k| {
                    matches!(k.terms.time_in_force, "IOC" | "FOK")
                        && k.created_ms <= candle.open_time_ms
                })
            })
            .map(|report| report.client_order_id)
            .collect();
        for id in due {
            // Open a moment ago, under the same lock: the engine knows it.
            let _ = self.engine.expire(&candle.symbol, &id);
        }
    }

    /// Triggers the conditional orders on `candle`'s symbol that it crossed (those placed by
    /// its open). As on Binance, the conditional order is reported `EXPIRED`, then the order it
    /// became `NEW` under the same id; it fills from the next candle on. One that cannot become
    /// an order (a `closePosition` with no position to close, a reduce-only order that would
    /// not reduce) stays expired.
    pub fn trigger_conditionals(&mut self, candle: &Candle) {
        let due: Vec<i64> = self
            .waiting
            .iter()
            .filter(|id| {
                let kept = &self.orders[id];
                let condition = kept
                    .terms
                    .conditional
                    .as_ref()
                    .expect("waiting is conditional");
                kept.report.symbol == candle.symbol
                    && kept.created_ms <= candle.open_time_ms
                    && condition.triggered_by(kept.report.side, candle)
            })
            .copied()
            .collect();
        for id in due {
            self.trigger(id, candle.close_time_ms);
        }
    }

    fn trigger(&mut self, id: i64, now_ms: i64) {
        let expired = self.end_waiting(id, OrderStatus::Expired, now_ms);
        let kept = self.orders.get_mut(&id).expect("kept");
        let condition = kept.terms.conditional.as_mut().expect("conditional");
        condition.triggered = true;
        condition.triggered_ms = now_ms;
        let close_position = condition.close_position;
        let position = self
            .engine
            .positions()
            .into_iter()
            .find(|p| p.symbol == expired.symbol)
            .map_or(Decimal::ZERO, |p| p.qty);
        let qty = if close_position {
            match expired.side {
                Side::Buy if position < Decimal::ZERO => -position,
                Side::Sell if position > Decimal::ZERO => position,
                _ => return,
            }
        } else {
            expired.orig_qty.get()
        };
        let Ok(qty) = keel_kernel::money::Qty::new(qty) else {
            return;
        };
        let request = OrderRequest {
            client_order_id: expired.client_order_id.clone(),
            symbol: expired.symbol.clone(),
            side: expired.side,
            order_type: expired.order_type,
            qty,
            reduce_only: expired.reduce_only || close_position,
        };
        let terms = kept.terms.clone();
        self.terms_for_new = Some(terms);
        let outcome = self.engine.place(&request);
        if let PlaceOutcome::Accepted(report) = &outcome {
            self.aliases.insert(report.exchange_order_id.0, id);
        }
        self.absorb_engine_events();
        self.terms_for_new = None;
    }

    /// Records what the engine emitted, under the orders' own ids.
    fn absorb_engine_events(&mut self) {
        let events = self.engine.take_events();
        for event in events {
            let event = match event {
                UserEvent::Order(mut report) => {
                    self.next_id = self.next_id.max(report.exchange_order_id.0 + 1);
                    report.exchange_order_id.0 = self.own_id(report.exchange_order_id.0);
                    UserEvent::Order(report)
                }
                UserEvent::Fill(mut fill) => {
                    fill.exchange_order_id.0 = self.own_id(fill.exchange_order_id.0);
                    UserEvent::Fill(fill)
                }
            };
            self.record(event);
        }
    }

    /// Remembers one event and queues it for the stream with the order's terms.
    fn record(&mut self, event: UserEvent) {
        let terms = match &event {
            UserEvent::Order(report) => {
                let created_ms = report.update_time_ms;
                let terms_for_new = &mut self.terms_for_new;
                let kept = self
                    .orders
                    .entry(report.exchange_order_id.0)
                    .and_modify(|kept| kept.report = report.clone())
                    .or_insert_with(|| KeptOrder {
                        report: report.clone(),
                        created_ms,
                        terms: terms_for_new.take().unwrap_or_default(),
                    });
                kept.terms.clone()
            }
            UserEvent::Fill(fill) => {
                self.trades.insert(fill.trade_id.0, fill.clone());
                self.orders
                    .get(&fill.exchange_order_id.0)
                    .map(|k| k.terms.clone())
                    .unwrap_or_default()
            }
        };
        self.updates.push(Update { event, terms });
    }

    /// Records what the engine emitted, and hands every update since the last call to the
    /// stream.
    pub fn drain_and_record(&mut self) -> Vec<Update> {
        self.absorb_engine_events();
        while self.orders.len() > ORDER_HISTORY_MAX {
            if let Some((id, _)) = self.orders.pop_first() {
                self.waiting.remove(&id);
            }
        }
        while self.trades.len() > TRADE_HISTORY_MAX {
            self.trades.pop_first();
        }
        std::mem::take(&mut self.updates)
    }

    /// The leverage in force on `symbol`.
    pub fn leverage_of(&self, symbol: &Symbol) -> u32 {
        self.leverage
            .get(symbol)
            .copied()
            .unwrap_or(LEVERAGE_DEFAULT)
    }

    /// `cross` or `isolated`, as `positionRisk` spells it.
    pub fn margin_type_of(&self, symbol: &Symbol) -> &'static str {
        if self.isolated.contains(symbol) {
            "isolated"
        } else {
            "cross"
        }
    }
}

fn duplicate() -> PlaceOutcome {
    PlaceOutcome::Rejected {
        code: codes::DUPLICATED_CLIENT_TRAN_ID,
        msg: "Duplicate clientOrderId.".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConditionalKind::{Stop, StopMarket, TakeProfit, TakeProfitMarket};

    fn condition(kind: ConditionalKind, stop: i64, working_type: WorkingType) -> Conditional {
        Conditional {
            kind,
            stop_price: Decimal::from(stop),
            working_type,
            close_position: false,
            price_protect: false,
            algo: false,
            triggered: false,
            triggered_ms: 0,
        }
    }

    /// Binance's table: STOP and STOP_MARKET buy when the price is at or above the stop price
    /// and sell when at or below it; TAKE_PROFIT and TAKE_PROFIT_MARKET the other way round.
    #[test]
    fn every_conditional_type_triggers_in_the_direction_binance_documents() {
        let table = [
            (Stop, Side::Buy, true),
            (StopMarket, Side::Buy, true),
            (Stop, Side::Sell, false),
            (StopMarket, Side::Sell, false),
            (TakeProfit, Side::Buy, false),
            (TakeProfitMarket, Side::Buy, false),
            (TakeProfit, Side::Sell, true),
            (TakeProfitMarket, Side::Sell, true),
        ];
        for (kind, side, rises) in table {
            let c = condition(kind, 100, WorkingType::ContractPrice);
            assert_eq!(
                kind.triggers_when_price_rises(side),
                rises,
                "{kind:?} {side:?}"
            );
            assert!(c.reached_by(side, 100.0, 100.0), "at the stop price");
            assert_eq!(
                c.reached_by(side, 101.0, 101.0),
                rises,
                "{kind:?} {side:?} above"
            );
            assert_eq!(
                c.reached_by(side, 99.0, 99.0),
                !rises,
                "{kind:?} {side:?} below"
            );
        }
    }

    #[test]
    fn the_contract_price_triggers_on_the_candles_range_and_the_mark_price_on_its_close() {
        let candle = Candle {
            symbol: Symbol::new("BTCUSDT").unwrap(),
            open_time_ms: 0,
            close_time_ms: 1_000,
            open: 100.0,
            high: 103.0,
            low: 99.0,
            close: 100.0,
            volume: 1.0,
        };
        let contract = condition(StopMarket, 102, WorkingType::ContractPrice);
        let mark = condition(StopMarket, 102, WorkingType::MarkPrice);
        assert!(contract.triggered_by(Side::Buy, &candle));
        assert!(!mark.triggered_by(Side::Buy, &candle));
        let closing_above = Candle {
            close: 102.5,
            ..candle
        };
        assert!(mark.triggered_by(Side::Buy, &closing_above));
    }
}
