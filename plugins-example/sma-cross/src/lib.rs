//! Moving-average cross: long when the fast average crosses above the slow one, out (or short,
//! in `long-short` mode) when it crosses below.
//!
//! Parameters (declared in `PARAMS`, shown by `keel plugin check`): `fast` (default 10), `slow`
//! (default 30), `mode` (`long-only` | `long-short`, default `long-only`), `size_fraction`
//! (default 0.1).

use keel_guest::{AccountView, Candle, Config, Intent, Param, PositionSide, Strategy};
use keel_strategies::{
    Holding, Mode, SMA_EXIT_TAG, SMA_LONG_TAG, SMA_SHORT_TAG, SmaCross, SmaCrossConfig, Turn,
    WINDOW_MAX, decide,
};

/// How many instruments one instance tracks; a bound on its memory.
const SYMBOLS_MAX: usize = 256;

struct SmaCrossPlugin {
    config: SmaCrossConfig,
    /// Indexed by symbol handle (handles are small and dense).
    crosses: Vec<Option<SmaCross>>,
}

impl Strategy for SmaCrossPlugin {
    const PARAMS: &'static [Param] = &[
        Param::int("fast", 10, "Length of the fast moving average, in candles.")
            .range(1.0, WINDOW_MAX as f64),
        Param::int("slow", 30, "Length of the slow moving average, in candles; above fast.")
            .range(2.0, WINDOW_MAX as f64),
        Param::text("mode", "long-only", "Long only, or long and short.")
            .choices(&["long-only", "long-short"]),
        Param::float("size_fraction", 0.1, "Fraction of free capital committed per entry.")
            .range(0.001, 1.0),
    ];

    fn init(config: &Config) -> Result<Self, String> {
        // Fast below slow is the one rule the declared ranges cannot say.
        let config = SmaCrossConfig {
            fast: config.parse("fast")?,
            slow: config.parse("slow")?,
            mode: Mode::parse(&config.text("mode")?)?,
            size_fraction: config.parse("size_fraction")?,
        }
        .validate()?;
        Ok(SmaCrossPlugin {
            config,
            crosses: Vec::new(),
        })
    }

    fn on_candle(&mut self, candle: &Candle, _account: &AccountView) -> Vec<Intent> {
        let Some(turn) = self
            .cross(candle.symbol)
            .and_then(|c| c.on_close(candle.close))
        else {
            return Vec::new();
        };
        signal_intents(
            candle.symbol,
            turn,
            self.config.mode,
            self.config.size_fraction,
        )
    }
}

impl SmaCrossPlugin {
    fn cross(&mut self, symbol: u32) -> Option<&mut SmaCross> {
        let index = symbol as usize;
        if index >= SYMBOLS_MAX {
            return None;
        }
        if self.crosses.len() <= index {
            self.crosses.resize(index + 1, None);
        }
        Some(self.crosses[index].get_or_insert_with(|| SmaCross::new(&self.config)))
    }
}

/// The requests for one turn, given the position held (read only when a turn happens).
fn signal_intents(symbol: u32, turn: Turn, mode: Mode, fraction: f64) -> Vec<Intent> {
    let holding = match keel_guest::position(symbol).map(|p| p.side) {
        None => Holding::Flat,
        Some(PositionSide::Long) => Holding::Long,
        Some(PositionSide::Short) => Holding::Short,
    };
    let signal = decide(turn, holding, mode);
    let mut intents = Vec::with_capacity(2);
    if signal.exit.is_some() {
        intents.push(keel_guest::exit_market(symbol, SMA_EXIT_TAG));
    }
    match signal.enter {
        Some(Holding::Long) => intents.push(keel_guest::enter_market(
            symbol,
            PositionSide::Long,
            fraction,
            SMA_LONG_TAG,
        )),
        Some(Holding::Short) => intents.push(keel_guest::enter_market(
            symbol,
            PositionSide::Short,
            fraction,
            SMA_SHORT_TAG,
        )),
        _ => {}
    }
    intents
}

keel_guest::export_strategy!(SmaCrossPlugin);
