//! RSI mean reversion: long when the RSI enters the oversold zone, out (or short, in
//! `long-short` mode) when it enters the overbought zone.
//!
//! Parameters (declared in `PARAMS`): `period` (default 14), `oversold` (default 30),
//! `overbought` (default 70), `mode` (`long-only` | `long-short`, default `long-only`),
//! `size_fraction` (default 0.1).

use keel_guest::{AccountView, Candle, Config, Intent, Param, PositionSide, Strategy};
use keel_strategies::{Holding, Mode, RsiConfig, RsiReversion, WINDOW_MAX, decide};

/// How many instruments one instance tracks; a bound on its memory.
const SYMBOLS_MAX: usize = 256;

struct RsiPlugin {
    config: RsiConfig,
    indicators: Vec<Option<RsiReversion>>,
}

impl Strategy for RsiPlugin {
    const PARAMS: &'static [Param] = &[
        Param::int("period", 14, "RSI period, in candles.").range(2.0, WINDOW_MAX as f64),
        Param::float("oversold", 30.0, "Below this RSI the market is oversold: a turn up.")
            .range(0.0, 100.0),
        Param::float("overbought", 70.0, "Above this RSI the market is overbought: a turn down.")
            .range(0.0, 100.0),
        Param::text("mode", "long-only", "Long only, or long and short.")
            .choices(&["long-only", "long-short"]),
        Param::float("size_fraction", 0.1, "Fraction of free capital committed per entry.")
            .range(0.001, 1.0),
    ];

    fn init(config: &Config) -> Result<Self, String> {
        // oversold below overbought is the one rule the declared ranges cannot say.
        let config = RsiConfig {
            period: config.parse("period")?,
            oversold: config.parse("oversold")?,
            overbought: config.parse("overbought")?,
            mode: Mode::parse(&config.text("mode")?)?,
            size_fraction: config.parse("size_fraction")?,
        }
        .validate()?;
        Ok(RsiPlugin {
            config,
            indicators: Vec::new(),
        })
    }

    fn on_candle(&mut self, candle: &Candle, _account: &AccountView) -> Vec<Intent> {
        let index = candle.symbol as usize;
        if index >= SYMBOLS_MAX {
            return Vec::new();
        }
        if self.indicators.len() <= index {
            self.indicators.resize(index + 1, None);
        }
        let config = self.config;
        let indicator = self.indicators[index].get_or_insert_with(|| RsiReversion::new(config));
        let Some(turn) = indicator.on_close(candle.close) else {
            return Vec::new();
        };
        let holding = match keel_guest::position(candle.symbol).map(|p| p.side) {
            None => Holding::Flat,
            Some(PositionSide::Long) => Holding::Long,
            Some(PositionSide::Short) => Holding::Short,
        };
        let signal = decide(turn, holding, config.mode);
        let mut intents = Vec::with_capacity(2);
        if signal.exit.is_some() {
            intents.push(keel_guest::exit_market(candle.symbol, "rsi exit"));
        }
        let side = match signal.enter {
            Some(Holding::Long) => Some(PositionSide::Long),
            Some(Holding::Short) => Some(PositionSide::Short),
            _ => None,
        };
        if let Some(side) = side {
            intents.push(keel_guest::enter_market(
                candle.symbol,
                side,
                config.size_fraction,
                "rsi entry",
            ));
        }
        intents
    }
}

keel_guest::export_strategy!(RsiPlugin);
