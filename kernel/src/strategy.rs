//! What the kernel sees of a strategy: the [`StrategyRuntime`] trait and the untrusted requests it
//! returns.
//!
//! Everything here is *raw*: numbers are `f64` exactly as a plugin produced them, strings are
//! unchecked. The kernel validates every request before anything touches money or an exchange.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientOrderId, Symbol};
use crate::market::Candle;

/// A strategy as the kernel drives it: a Wasm component in production, or a native Rust
/// strategy in kernel tests. One instance serves one profile.
///
/// Calls are synchronous and bounded by the runtime's budgets (fuel, deadline, memory): a call
/// either returns the strategy's requests or a [`PluginFault`]. After a fault other than
/// [`PluginFault::InvalidOutput`] the instance is dead and every later call returns
/// [`PluginFault::Dead`]; it is never re-entered.
pub trait StrategyRuntime: Send {
    /// Configures the strategy once, before the first candle. An `Err` from the strategy is a
    /// [`PluginFault::InitRefused`].
    fn init(&mut self, config: &[(String, String)]) -> Result<(), PluginFault>;

    /// A closed candle for one of the profile's symbols.
    fn on_candle(
        &mut self,
        candle: &Candle,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault>;

    /// One of the profile's orders filled (fully or partly). A strategy that decides on candles
    /// only asks for nothing here; a wrapper around another strategy must forward it.
    fn on_fill(
        &mut self,
        fill: &FillView,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        let _ = (fill, view);
        Ok(Vec::new())
    }

    /// A timer the strategy asked for has come due (kernel clock, milliseconds since the epoch).
    /// A strategy that sets no timers asks for nothing here; a wrapper must forward it.
    fn on_timer(&mut self, now_ms: i64, view: &AccountView) -> Result<Vec<RawIntent>, PluginFault> {
        let _ = (now_ms, view);
        Ok(Vec::new())
    }

    /// Replays `candles` (oldest first) into a fresh strategy and discards what it asks for, so
    /// its first live decision is made with a full window. Returns how many candles it saw and
    /// the fault that ended the replay early, if one did. A runtime may also stop early, with
    /// no fault, when the replay used up its time budget. A wrapper must forward it.
    fn warm_up(&mut self, candles: &[Candle], view: &AccountView) -> (u64, Option<PluginFault>) {
        let mut replayed = 0_u64;
        for candle in candles {
            if let Err(fault) = self.on_candle(candle, view) {
                return (replayed, Some(fault));
            }
            replayed += 1;
        }
        (replayed, None)
    }

    /// True once after a new instance took over inside this runtime (a hot-swap taken at this
    /// call boundary, or a reconfiguration): the kernel then replays the recent candles into it,
    /// discarding what it asks for, before its first live call. A runtime that never replaces
    /// its instance answers false; a wrapper must forward it.
    fn take_fresh(&mut self) -> bool {
        false
    }
}

/// Why a strategy call produced no usable answer. Returned as data, never a panic of the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum PluginFault {
    /// The call used up its fuel (deterministic instruction budget).
    #[error("fuel exhausted")]
    FuelExhausted,
    /// The call ran past its wall-clock deadline.
    #[error("deadline exceeded")]
    Deadline,
    /// The instance asked for more memory than its cap.
    #[error("memory limit exceeded")]
    MemoryLimit,
    /// The instance trapped (panic, unreachable, out-of-bounds access, stack overflow, ...).
    #[error("trap: {0}")]
    Trap(String),
    /// The call returned something the kernel will not take (too many intents, oversized strings).
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// `init` returned an error.
    #[error("init refused: {0}")]
    InitRefused(String),
    /// The configuration does not fit the parameters the plugin declares (an unknown key, a
    /// value of the wrong type or out of range); `init` was not called.
    #[error("configuration refused: {0}")]
    ConfigRefused(String),
    /// The instance faulted earlier and is never re-entered.
    #[error("instance is dead after an earlier fault")]
    Dead,
}

impl PluginFault {
    /// A short, stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginFault::FuelExhausted => "fuel",
            PluginFault::Deadline => "deadline",
            PluginFault::MemoryLimit => "memory",
            PluginFault::Trap(_) => "trap",
            PluginFault::InvalidOutput(_) => "invalid_output",
            PluginFault::InitRefused(_) => "init_refused",
            PluginFault::ConfigRefused(_) => "config_refused",
            PluginFault::Dead => "dead",
        }
    }
}

/// Long or short, as a strategy asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionSide {
    /// Profits when the price rises.
    Long,
    /// Profits when the price falls.
    Short,
}

/// How big an entry should be, as the strategy asks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum RawSize {
    /// Quote currency to commit (e.g. 100 USDT).
    QuoteNotional(f64),
    /// Base quantity (e.g. 0.01 BTC).
    BaseQty(f64),
    /// A fraction, in (0, 1], of the profile's free capital.
    FreeCapitalFraction(f64),
}

/// The price a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum RawPrice {
    /// Whatever the market gives (market order).
    Market,
    /// At this price or better (limit order).
    Limit(f64),
}

/// A request to open a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEntry {
    /// The instrument, unchecked.
    pub symbol: String,
    /// Long or short.
    pub side: PositionSide,
    /// How much.
    pub size: RawSize,
    /// At what price.
    pub price: RawPrice,
    /// Optional protective stop price.
    pub stop_loss: Option<f64>,
    /// Optional profit-taking price.
    pub take_profit: Option<f64>,
    /// Free text the strategy attaches for its own bookkeeping, shown in reports.
    pub tag: String,
}

/// A request to reduce or close a position (always reduce-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawExit {
    /// The instrument, unchecked.
    pub symbol: String,
    /// Fraction, in (0, 1], of the open position to close.
    pub fraction: f64,
    /// At what price.
    pub price: RawPrice,
    /// Free text, as for entries.
    pub tag: String,
}

/// Anything a strategy may ask of the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RawIntent {
    /// Open a position.
    Entry(RawEntry),
    /// Reduce or close a position.
    Exit(RawExit),
    /// Cancel one of the profile's open orders, by its client order id (unchecked).
    Cancel {
        /// The client order id, as seen in the account view.
        client_order_id: String,
    },
    /// Call `on_timer` at or after this kernel time (milliseconds since the epoch).
    SetTimer {
        /// When.
        at_ms: i64,
    },
}

/// A read-only snapshot of the profile's account, handed to every call.
///
/// `clone_from` reuses the copy's buffers field by field (a runtime copies the view into its
/// instance on every call): the derived one would build a new copy and drop the old.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountView {
    /// Capital not reserved by orders or positions, in quote currency.
    pub free_capital: f64,
    /// Capital allocated to the profile plus realized PnL.
    pub equity: f64,
    /// Open positions.
    pub positions: Vec<PositionView>,
    /// Orders still open on the exchange (or not yet answered).
    pub open_orders: Vec<OrderView>,
}

impl Clone for AccountView {
    fn clone(&self) -> Self {
        AccountView {
            free_capital: self.free_capital,
            equity: self.equity,
            positions: self.positions.clone(),
            open_orders: self.open_orders.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.free_capital = source.free_capital;
        self.equity = source.equity;
        self.positions.clone_from(&source.positions);
        self.open_orders.clone_from(&source.open_orders);
    }
}

/// One open position, as a strategy sees it (`clone_from` reuses the symbol's buffer).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionView {
    /// The instrument.
    pub symbol: String,
    /// Long or short.
    pub side: PositionSide,
    /// Base quantity held.
    pub qty: f64,
    /// Average entry price.
    pub entry_price: f64,
}

impl Clone for PositionView {
    fn clone(&self) -> Self {
        PositionView {
            symbol: self.symbol.clone(),
            side: self.side,
            qty: self.qty,
            entry_price: self.entry_price,
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.symbol.clone_from(&source.symbol);
        self.side = source.side;
        self.qty = source.qty;
        self.entry_price = source.entry_price;
    }
}

/// One open order, as a strategy sees it (`clone_from` reuses the text buffers).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    /// The kernel's id for the order; a strategy cancels by it.
    pub client_order_id: String,
    /// The instrument.
    pub symbol: String,
    /// True for an exit (reduce-only) order.
    pub is_exit: bool,
    /// Long or short (the position the order opens or reduces).
    pub side: PositionSide,
    /// Base quantity ordered.
    pub qty: f64,
    /// Base quantity filled so far.
    pub filled_qty: f64,
    /// Limit price, if any.
    pub limit_price: Option<f64>,
}

impl Clone for OrderView {
    fn clone(&self) -> Self {
        OrderView {
            client_order_id: self.client_order_id.clone(),
            symbol: self.symbol.clone(),
            is_exit: self.is_exit,
            side: self.side,
            qty: self.qty,
            filled_qty: self.filled_qty,
            limit_price: self.limit_price,
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.client_order_id.clone_from(&source.client_order_id);
        self.symbol.clone_from(&source.symbol);
        self.is_exit = source.is_exit;
        self.side = source.side;
        self.qty = source.qty;
        self.filled_qty = source.filled_qty;
        self.limit_price = source.limit_price;
    }
}

/// A fill of one of the profile's orders, as a strategy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FillView {
    /// The order that filled.
    pub client_order_id: ClientOrderId,
    /// The instrument.
    pub symbol: Symbol,
    /// True for an exit order.
    pub is_exit: bool,
    /// Long or short.
    pub side: PositionSide,
    /// Price of this fill.
    pub price: f64,
    /// Quantity of this fill.
    pub qty: f64,
    /// Fee charged for this fill, in quote currency.
    pub fee: f64,
    /// Exchange time of the fill, milliseconds since the epoch.
    pub time_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(symbol: &str, qty: f64) -> PositionView {
        PositionView {
            symbol: symbol.into(),
            side: PositionSide::Short,
            qty,
            entry_price: 101.5,
        }
    }

    fn order(id: &str, limit_price: Option<f64>) -> OrderView {
        OrderView {
            client_order_id: id.into(),
            symbol: "ETHUSDT".into(),
            is_exit: true,
            side: PositionSide::Long,
            qty: 2.0,
            filled_qty: 0.5,
            limit_price,
        }
    }

    #[test]
    fn a_view_cloned_into_another_equals_its_source_whatever_the_other_held() {
        let full = AccountView {
            free_capital: 10.0,
            equity: 25.0,
            positions: vec![position("BTCUSDT", 1.0), position("SOLUSDT", 3.0)],
            open_orders: vec![order("kE1-a", Some(99.0)), order("kX2-b", None)],
        };
        let small = AccountView {
            free_capital: 1.0,
            equity: 2.0,
            positions: vec![position("ETHUSDT", 9.0)],
            open_orders: Vec::new(),
        };
        for (source, target) in [
            (&full, &small),
            (&small, &full),
            (&full, &AccountView::default()),
            (&AccountView::default(), &full),
        ] {
            let mut copy = target.clone();
            copy.clone_from(source);
            assert_eq!(&copy, source);
            assert_eq!(&source.clone(), source);
        }
        let mut copy = full.clone();
        let buffer = copy.positions[0].symbol.as_ptr();
        copy.clone_from(&small);
        assert_eq!(
            copy.positions[0].symbol.as_ptr(),
            buffer,
            "a symbol's buffer is reused"
        );
    }
}
