//! The simulation's strategies: a seeded random source of intents, and the mirror a second
//! instance runs (the same decision on the same candle, as another host would make it).

use std::sync::{Arc, Mutex};

use keel_kernel::market::Candle;
use keel_kernel::strategy::{
    AccountView, FillView, PluginFault, PositionSide, RawEntry, RawExit, RawIntent, RawPrice,
    RawSize, StrategyRuntime,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Fractions of free capital an entry asks for. 1.0 sizes an entry at all free capital, so its
/// reservation (with the slippage allowance) exceeds what is free: the store's capital check
/// must refuse it before the database's CHECK does.
const ENTRY_FRACTIONS: [f64; 4] = [0.1, 0.3, 0.6, 1.0];
/// How far from the close a limit order is priced, in fractions of the price.
const LIMIT_OFFSET_MAX: f64 = 0.004;

/// The entries decided on the current candle, shared with the mirror.
pub type Decisions = Arc<Mutex<Vec<RawIntent>>>;

/// Random entries, exits and cancels, from a seeded generator: the same seed asks for the same
/// things in the same states.
pub struct RandomIntents {
    rng: ChaCha8Rng,
    decided: Decisions,
}

impl RandomIntents {
    /// A source drawing from `rng`, publishing its entries to `decided`.
    pub fn new(rng: ChaCha8Rng, decided: Decisions) -> Self {
        RandomIntents { rng, decided }
    }

    fn price(&mut self, close: f64, below: bool) -> RawPrice {
        if self.rng.gen_bool(0.5) {
            return RawPrice::Market;
        }
        let offset = self.rng.gen_range(0.0..LIMIT_OFFSET_MAX);
        let factor = if below { 1.0 - offset } else { 1.0 + offset };
        RawPrice::Limit(close * factor)
    }

    fn entry(&mut self, candle: &Candle) -> RawIntent {
        let side = if self.rng.gen_bool(0.5) {
            PositionSide::Long
        } else {
            PositionSide::Short
        };
        let fraction = ENTRY_FRACTIONS[self.rng.gen_range(0..ENTRY_FRACTIONS.len())];
        let price = self.price(candle.close, side == PositionSide::Long);
        RawIntent::Entry(RawEntry {
            symbol: candle.symbol.to_string(),
            side,
            size: RawSize::FreeCapitalFraction(fraction),
            price,
            stop_loss: None,
            take_profit: None,
            tag: "sim".to_owned(),
        })
    }

    fn exit(&mut self, symbol: &str, side: PositionSide, close: f64) -> RawIntent {
        let fraction = if self.rng.gen_bool(0.5) { 0.5 } else { 1.0 };
        let price = self.price(close, side == PositionSide::Short);
        RawIntent::Exit(RawExit {
            symbol: symbol.to_owned(),
            fraction,
            price,
            tag: "sim".to_owned(),
        })
    }
}

impl StrategyRuntime for RandomIntents {
    fn init(&mut self, _config: &[(String, String)]) -> Result<(), PluginFault> {
        Ok(())
    }

    fn on_candle(
        &mut self,
        candle: &Candle,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        let symbol = candle.symbol.as_str();
        let position = view.positions.iter().find(|p| p.symbol == symbol);
        let roll = self.rng.gen_range(0..100);
        let intents = match (roll, position) {
            (0..40, _) => vec![self.entry(candle)],
            (40..65, Some(position)) => vec![self.exit(symbol, position.side, candle.close)],
            (65..75, _) if !view.open_orders.is_empty() => {
                let index = self.rng.gen_range(0..view.open_orders.len());
                vec![RawIntent::Cancel {
                    client_order_id: view.open_orders[index].client_order_id.clone(),
                }]
            }
            _ => Vec::new(),
        };
        let entries = intents
            .iter()
            .filter(|i| matches!(i, RawIntent::Entry(_)))
            .cloned()
            .collect();
        *self.decided.lock().expect("decisions lock poisoned") = entries;
        Ok(intents)
    }

    fn on_fill(
        &mut self,
        fill: &FillView,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        // Now and then a fill of an entry is answered at once with an exit: decisions made on
        // fills take the pending-decision path.
        if fill.is_exit || !self.rng.gen_bool(0.1) {
            return Ok(Vec::new());
        }
        let held = view
            .positions
            .iter()
            .find(|p| p.symbol == fill.symbol.as_str());
        Ok(held
            .map(|p| vec![self.exit(fill.symbol.as_str(), p.side, fill.price)])
            .unwrap_or_default())
    }
}

/// What a second instance running the same strategy decides: the primary's entries on the same
/// candle. It carries the same decision sequence, so the same client order ids.
pub struct Mirror {
    decided: Decisions,
}

impl Mirror {
    /// A mirror of the entries published to `decided`.
    pub fn new(decided: Decisions) -> Self {
        Mirror { decided }
    }
}

impl StrategyRuntime for Mirror {
    fn init(&mut self, _config: &[(String, String)]) -> Result<(), PluginFault> {
        Ok(())
    }

    fn on_candle(
        &mut self,
        _candle: &Candle,
        _view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        Ok(self
            .decided
            .lock()
            .expect("decisions lock poisoned")
            .clone())
    }
}
