//! The `sma-cross` example strategy compiled natively: the same logic crate as the plugin, behind
//! the same [`StrategyRuntime`] trait. Kernel tests can drive it where a Wasm engine is not
//! wanted, and `keel bench plugin` compares it with the sandboxed plugin.

use keel_kernel::market::Candle;
use keel_kernel::strategy::{
    AccountView, PluginFault, PositionSide, RawExit, RawIntent, RawPrice, RawSize, StrategyRuntime,
};
use keel_strategies::{
    Holding, SMA_EXIT_TAG, SMA_LONG_TAG, SMA_SHORT_TAG, SmaCross, SmaCrossConfig, decide,
};

/// Instruments one native strategy tracks, as in the plugin.
const SYMBOLS_MAX: usize = 256;

/// The moving-average cross, natively.
#[derive(Debug, Default)]
pub struct NativeSmaCross {
    config: Option<SmaCrossConfig>,
    crosses: Vec<(String, SmaCross)>,
}

impl NativeSmaCross {
    /// A strategy awaiting `init`.
    pub fn new() -> Self {
        NativeSmaCross::default()
    }

    fn cross(&mut self, symbol: &str) -> Option<&mut SmaCross> {
        let config = self.config.as_ref()?;
        let index = match self.crosses.iter().position(|(s, _)| s == symbol) {
            Some(index) => index,
            None if self.crosses.len() < SYMBOLS_MAX => {
                self.crosses
                    .push((symbol.to_string(), SmaCross::new(config)));
                self.crosses.len() - 1
            }
            None => return None,
        };
        Some(&mut self.crosses[index].1)
    }
}

impl StrategyRuntime for NativeSmaCross {
    fn init(&mut self, config: &[(String, String)]) -> Result<(), PluginFault> {
        self.config = Some(SmaCrossConfig::from_pairs(config).map_err(PluginFault::InitRefused)?);
        self.crosses.clear();
        Ok(())
    }

    fn on_candle(
        &mut self,
        candle: &Candle,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        let symbol = candle.symbol.as_str();
        let Some(turn) = self.cross(symbol).and_then(|c| c.on_close(candle.close)) else {
            return Ok(Vec::new());
        };
        let config = self.config.expect("a cross exists only after init");
        let holding = match view
            .positions
            .iter()
            .find(|p| p.symbol == symbol)
            .map(|p| p.side)
        {
            None => Holding::Flat,
            Some(PositionSide::Long) => Holding::Long,
            Some(PositionSide::Short) => Holding::Short,
        };
        let signal = decide(turn, holding, config.mode);
        let mut intents = Vec::with_capacity(2);
        if signal.exit.is_some() {
            intents.push(RawIntent::Exit(RawExit {
                symbol: symbol.to_string(),
                fraction: 1.0,
                price: RawPrice::Market,
                tag: SMA_EXIT_TAG.to_string(),
            }));
        }
        let entry = match signal.enter {
            Some(Holding::Long) => Some((PositionSide::Long, SMA_LONG_TAG)),
            Some(Holding::Short) => Some((PositionSide::Short, SMA_SHORT_TAG)),
            _ => None,
        };
        if let Some((side, tag)) = entry {
            intents.push(RawIntent::Entry(keel_kernel::strategy::RawEntry {
                symbol: symbol.to_string(),
                side,
                size: RawSize::FreeCapitalFraction(config.size_fraction),
                price: RawPrice::Market,
                stop_loss: None,
                take_profit: None,
                tag: tag.to_string(),
            }));
        }
        Ok(intents)
    }
}
