//! The moving-average cross of `sma-cross`, built against the released `keel:strategy@0.1.0`
//! contract (`wit/0.1.0/strategy.wit`) with wit-bindgen alone, as a plugin written before
//! 0.1.1 was. It declares no parameters and checks its configuration in `init` (a misspelt key
//! is refused there). Keel's tests load it to prove that a 0.1.0 component still links to a
//! host serving 0.1.1 and trades exactly like the current `sma-cross`.

use std::cell::RefCell;

use keel_strategies::{
    Holding, SMA_EXIT_TAG, SMA_LONG_TAG, SMA_SHORT_TAG, SmaCross, SmaCrossConfig, decide,
};

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "keel:strategy/strategy@0.1.0",
});

use keel::strategy::account;
// The world's `use` brings AccountView, Candle, Fill and Intent into scope already.
use keel::strategy::types::{EntryRequest, ExitRequest, PositionSide, Price, Size};

/// How many instruments one instance tracks; a bound on its memory.
const SYMBOLS_MAX: usize = 256;

struct State {
    config: SmaCrossConfig,
    crosses: Vec<Option<SmaCross>>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let config = SmaCrossConfig::from_pairs(&config)?;
        STATE.with(|state| {
            *state.borrow_mut() = Some(State {
                config,
                crosses: Vec::new(),
            })
        });
        Ok(())
    }

    fn on_candle(candle: Candle, _account: AccountView) -> Vec<Intent> {
        STATE.with(|state| match state.borrow_mut().as_mut() {
            Some(state) => state.on_candle(&candle),
            None => Vec::new(),
        })
    }

    fn on_fill(_fill: Fill, _account: AccountView) -> Vec<Intent> {
        Vec::new()
    }

    fn on_timer(_now_ms: i64, _account: AccountView) -> Vec<Intent> {
        Vec::new()
    }
}

impl State {
    fn on_candle(&mut self, candle: &Candle) -> Vec<Intent> {
        let index = candle.symbol as usize;
        if index >= SYMBOLS_MAX {
            return Vec::new();
        }
        if self.crosses.len() <= index {
            self.crosses.resize(index + 1, None);
        }
        let config = self.config;
        let cross = self.crosses[index].get_or_insert_with(|| SmaCross::new(&config));
        let Some(turn) = cross.on_close(candle.close) else {
            return Vec::new();
        };
        let holding = match account::position_of(candle.symbol).map(|p| p.side) {
            None => Holding::Flat,
            Some(PositionSide::Long) => Holding::Long,
            Some(PositionSide::Short) => Holding::Short,
        };
        let signal = decide(turn, holding, config.mode);
        let mut intents = Vec::with_capacity(2);
        if signal.exit.is_some() {
            intents.push(Intent::Exit(ExitRequest {
                symbol: candle.symbol,
                fraction: 1.0,
                price: Price::Market,
                tag: SMA_EXIT_TAG.to_string(),
            }));
        }
        let entry = match signal.enter {
            Some(Holding::Long) => Some((PositionSide::Long, SMA_LONG_TAG)),
            Some(Holding::Short) => Some((PositionSide::Short, SMA_SHORT_TAG)),
            _ => None,
        };
        if let Some((side, tag)) = entry {
            intents.push(Intent::Entry(EntryRequest {
                symbol: candle.symbol,
                side,
                size: Size::FreeCapitalFraction(config.size_fraction),
                price: Price::Market,
                stop_loss: None,
                take_profit: None,
                tag: tag.to_string(),
            }));
        }
        intents
    }
}

export!(Plugin);
