//! One trading account of the simulator: the paper engine that matches its orders, and the
//! history Binance keeps beside it.
//!
//! The engine remembers an order by its client order id, so an id reused after its order
//! closed replaces the earlier order there. Binance keeps both: `allOrders`, a query by
//! `orderId` and `userTrades` still show the first one. The account therefore records every
//! order report and fill the engine emits, by exchange order id and trade id.

use std::collections::{BTreeMap, HashMap, HashSet};

use keel_exchange::binance::wire::WireOrder;
use keel_exchange::paper::PaperEngine;
use keel_kernel::exchange::{Fill, OrderReport, UserEvent};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::Candle;

/// Orders an account remembers for `allOrders` and queries by `orderId`; the oldest go first.
pub const ORDER_HISTORY_MAX: usize = 100_000;
/// Trades an account remembers for `userTrades`; the oldest go first.
pub const TRADE_HISTORY_MAX: usize = 100_000;
/// The leverage of a symbol nobody set, as on a fresh Binance account.
pub const LEVERAGE_DEFAULT: u32 = 20;
/// The highest leverage `POST /fapi/v1/leverage` accepts.
pub const LEVERAGE_MAX: u32 = 125;

/// An order as the account remembers it: its last report and when it was created.
#[derive(Debug, Clone)]
pub(crate) struct KeptOrder {
    pub report: OrderReport,
    pub created_ms: i64,
    /// The `timeInForce` it was placed with (`GTC` for every order placed without one).
    pub time_in_force: &'static str,
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
}

impl Account {
    pub fn new(engine: PaperEngine) -> Self {
        Self {
            engine,
            orders: BTreeMap::new(),
            trades: BTreeMap::new(),
            leverage: HashMap::new(),
            isolated: HashSet::new(),
        }
    }

    /// An order's wire form, with the time in force it was placed with.
    pub fn wire_order(&self, report: &OrderReport) -> WireOrder {
        let mut wire = WireOrder::from_report(report);
        if let Some(kept) = self.orders.get(&report.exchange_order_id.0) {
            kept.time_in_force.clone_into(&mut wire.time_in_force);
        }
        wire
    }

    /// Expires the immediate-or-cancel and fill-or-kill orders on `candle`'s symbol that this
    /// candle was the first chance of (placed by its open) and left open: what it did not fill,
    /// it never will.
    pub fn expire_unfilled_immediate(&mut self, candle: &Candle) {
        let due: Vec<ClientOrderId> = self
            .orders
            .values()
            .filter(|kept| {
                matches!(kept.time_in_force, "IOC" | "FOK")
                    && kept.report.symbol == candle.symbol
                    && kept.report.status.is_open()
                    && kept.created_ms <= candle.open_time_ms
            })
            .map(|kept| kept.report.client_order_id.clone())
            .collect();
        for id in due {
            // Open a moment ago, under the same lock: the engine knows it.
            let _ = self.engine.expire(&candle.symbol, &id);
        }
    }

    /// Remembers what the engine emitted, and hands the events back for the stream.
    pub fn drain_and_record(&mut self) -> Vec<UserEvent> {
        let events: Vec<UserEvent> = self.engine.drain_events().collect();
        for event in &events {
            match event {
                UserEvent::Order(report) => {
                    let created_ms = report.update_time_ms;
                    self.orders
                        .entry(report.exchange_order_id.0)
                        .and_modify(|kept| kept.report = report.clone())
                        .or_insert_with(|| KeptOrder {
                            report: report.clone(),
                            created_ms,
                            time_in_force: "GTC",
                        });
                }
                UserEvent::Fill(fill) => {
                    self.trades.insert(fill.trade_id.0, fill.clone());
                }
            }
        }
        while self.orders.len() > ORDER_HISTORY_MAX {
            self.orders.pop_first();
        }
        while self.trades.len() > TRADE_HISTORY_MAX {
            self.trades.pop_first();
        }
        events
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
