//! The engine's in-memory mirror of one profile's account: capital, positions and open orders
//! as last read from the store, and the view a strategy is shown.
//!
//! The store is the record; the book is a cache of it, refreshed after every write, so that the
//! hot path (a candle with no decision) touches no database.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::ids::{ClientOrderId, IntentKind, Symbol};
use crate::ledger::Capital;
use crate::lifecycle::{OrderRecord, Position};
use crate::market::Side;
use crate::metrics::Metrics;
use crate::order::OrderStatus;
use crate::strategy::{AccountView, OrderView, PositionSide, PositionView};

/// One profile's account as the engine last saw it in the store.
#[derive(Debug, Default, Clone)]
pub struct Book {
    /// The capital row.
    pub capital: Capital,
    /// Open positions by symbol.
    pub positions: BTreeMap<Symbol, Position>,
    /// Open orders by client order id.
    pub open_orders: BTreeMap<ClientOrderId, OrderRecord>,
    view: Option<AccountView>,
}

/// The side of the position an order opens or reduces.
pub fn position_side(order_side: Side, kind: IntentKind) -> PositionSide {
    match (order_side, kind) {
        (Side::Buy, IntentKind::Entry) | (Side::Sell, IntentKind::Exit) => PositionSide::Long,
        (Side::Sell, IntentKind::Entry) | (Side::Buy, IntentKind::Exit) => PositionSide::Short,
    }
}

/// The order side that opens a position of `side`.
pub fn entry_side(side: PositionSide) -> Side {
    match side {
        PositionSide::Long => Side::Buy,
        PositionSide::Short => Side::Sell,
    }
}

/// The average entry price the strategy is shown. Shown as a float, it is divided as floats
/// when the decimal quotient would leave a decimal's range (a large stored cost over a tiny
/// quantity).
fn entry_price(position: &Position) -> f64 {
    if position.qty_open.is_zero() {
        return 0.0;
    }
    match position.cost_open.checked_div(position.qty_open) {
        Some(price) => float(price),
        None => float(position.cost_open) / float(position.qty_open),
    }
}

fn float(value: Decimal) -> f64 {
    value.to_f64().expect("a bounded decimal converts to f64")
}

impl Book {
    /// Replaces everything with what the store holds.
    pub fn reset(&mut self, capital: Capital, positions: Vec<Position>, orders: Vec<OrderRecord>) {
        self.capital = capital;
        self.positions = positions
            .into_iter()
            .map(|p| (p.symbol.clone(), p))
            .collect();
        self.open_orders = orders
            .into_iter()
            .map(|o| (o.client_order_id.clone(), o))
            .collect();
        self.view = None;
    }

    /// Records the latest state of one order (dropped from the book once terminal).
    pub fn update_order(&mut self, order: OrderRecord) {
        if order.status.is_terminal() {
            self.open_orders.remove(&order.client_order_id);
        } else {
            self.open_orders
                .insert(order.client_order_id.clone(), order);
        }
        self.view = None;
    }

    /// Records the latest state of the position in `symbol` (`None` once closed).
    pub fn update_position(&mut self, symbol: &Symbol, position: Option<Position>) {
        match position {
            Some(position) => self.positions.insert(symbol.clone(), position),
            None => self.positions.remove(symbol),
        };
        self.view = None;
    }

    /// Records the capital row.
    pub fn update_capital(&mut self, capital: Capital) {
        assert!(
            capital.holds_invariant(),
            "the store returned a capital row breaking the invariant: {capital}"
        );
        self.capital = capital;
        self.view = None;
    }

    /// Open positions plus pending entries, as the risk rules count them.
    pub fn positions_open(&self) -> u32 {
        let pending = self
            .open_orders
            .values()
            .filter(|o| o.kind == IntentKind::Entry && !self.positions.contains_key(&o.symbol))
            .count();
        u32::try_from(self.positions.len() + pending).unwrap_or(u32::MAX)
    }

    /// Notional of open positions (at cost) and of open entry orders (their reservations).
    pub fn exposure(&self) -> Decimal {
        self.capital.reserved()
    }

    /// Allocated capital plus realized PnL.
    pub fn equity(&self) -> Decimal {
        self.capital.equity()
    }

    /// True while an ENTRY order for `symbol` is open.
    pub fn entry_in_flight(&self, symbol: &Symbol) -> bool {
        self.open_orders
            .values()
            .any(|o| o.kind == IntentKind::Entry && &o.symbol == symbol)
    }

    /// The view handed to the strategy, rebuilt only after the book changed.
    pub fn view(&mut self) -> &AccountView {
        if self.view.is_none() {
            self.view = Some(self.build_view());
        }
        self.view.as_ref().expect("the view was just built")
    }

    fn build_view(&self) -> AccountView {
        let positions = self
            .positions
            .values()
            .map(|p| PositionView {
                symbol: p.symbol.to_string(),
                side: position_side(p.side, IntentKind::Entry),
                qty: float(p.qty_open),
                entry_price: entry_price(p),
            })
            .collect();
        let open_orders = self
            .open_orders
            .values()
            .map(|o| OrderView {
                client_order_id: o.client_order_id.to_string(),
                symbol: o.symbol.to_string(),
                is_exit: o.kind == IntentKind::Exit,
                side: position_side(o.side, o.kind),
                qty: float(o.qty.get()),
                filled_qty: float(o.filled_qty.get()),
                limit_price: Some(float(o.price.get())),
            })
            .collect();
        AccountView {
            free_capital: float(self.capital.free()),
            equity: float(self.equity()),
            positions,
            open_orders,
        }
    }
}

/// This engine's share of `keel_orders_open{status}`: the gauge is shared by every profile of
/// the process, so each engine adds the difference between what its book holds now and what it
/// published last, and takes its share back when it is dropped.
pub(super) struct OpenOrdersGauge {
    metrics: Arc<Metrics>,
    published: [i64; OrderStatus::ALL.len()],
}

impl OpenOrdersGauge {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        OpenOrdersGauge {
            metrics,
            published: [0; OrderStatus::ALL.len()],
        }
    }

    /// Brings the gauge in line with the open orders of `book`.
    pub(super) fn publish(&mut self, book: &Book) {
        let mut counts = [0i64; OrderStatus::ALL.len()];
        for order in book.open_orders.values() {
            counts[status_index(order.status)] += 1;
        }
        self.apply(counts);
    }

    fn apply(&mut self, counts: [i64; OrderStatus::ALL.len()]) {
        for (index, status) in OrderStatus::ALL.into_iter().enumerate() {
            let delta = counts[index] - self.published[index];
            if delta != 0 {
                assert!(status.is_open(), "the book holds only open orders");
                self.metrics
                    .orders_open
                    .with_label_values(&[status.as_str()])
                    .add(delta);
            }
        }
        self.published = counts;
    }
}

impl Drop for OpenOrdersGauge {
    fn drop(&mut self) {
        self.apply([0; OrderStatus::ALL.len()]);
    }
}

fn status_index(status: OrderStatus) -> usize {
    OrderStatus::ALL
        .iter()
        .position(|&s| s == status)
        .expect("ALL lists every status")
}
