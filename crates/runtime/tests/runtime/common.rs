//! Shared helpers: the engine, the plugins, candles and a neighbour that must keep working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use keel_kernel::engine::VirtualClock;
use keel_kernel::ids::{ProfileId, Symbol};
use keel_kernel::market::Candle;
use keel_kernel::strategy::{AccountView, RawIntent, StrategyRuntime};
use keel_runtime::{
    EngineSettings, InstanceSetup, PluginEngine, PluginLimits, PluginVersion, WasmStrategy,
};

/// Kernel time at the start of every test stream.
pub const T0_MS: i64 = 1_700_000_000_000;
/// One-minute candles.
pub const CANDLE_MS: i64 = 60_000;

pub use keel_testkit::example_plugin_bytes as plugin_bytes;

/// The engine shared by the tests of this binary, as production shares one per process.
pub fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let settings = EngineSettings {
            instances_max: 256,
            ..EngineSettings::default()
        };
        PluginEngine::new(settings).expect("building the test engine")
    })
}

/// An engine of the test's own with the default settings, reporting to metrics the test reads.
pub fn metered_engine() -> (keel_kernel::metrics::Metrics, PluginEngine) {
    let metrics = keel_kernel::metrics::Metrics::new();
    let engine = PluginEngine::reporting_to(EngineSettings::default(), &metrics)
        .expect("building a metered engine");
    (metrics, engine)
}

/// An engine whose fuel never runs out, so only the wall-clock deadline can stop a call.
pub fn deadline_only_engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let limits = PluginLimits {
            fuel_per_call: u64::MAX / 4,
            call_deadline_ms: 50,
            ..PluginLimits::default()
        };
        let settings = EngineSettings {
            instances_max: 16,
            limits,
            ..EngineSettings::default()
        };
        PluginEngine::new(settings).expect("building the deadline-only engine")
    })
}

/// Each plugin compiled once per engine. Only for the engines that live as long as the test
/// process (the cache knows an engine by its address); a test's own engine uses [`load`].
pub fn version(engine: &PluginEngine, name: &str) -> PluginVersion {
    static VERSIONS: OnceLock<Mutex<HashMap<(usize, String), PluginVersion>>> = OnceLock::new();
    let key = (engine as *const PluginEngine as usize, name.to_string());
    let mut versions = VERSIONS.get_or_init(Default::default).lock().unwrap();
    versions
        .entry(key)
        .or_insert_with(|| {
            engine
                .load(&plugin_bytes(name))
                .expect("loading an example plugin")
        })
        .clone()
}

/// Compiles an example plugin on `engine`, uncached.
pub fn load(engine: &PluginEngine, name: &str) -> PluginVersion {
    engine
        .load(&plugin_bytes(name))
        .expect("loading an example plugin")
}

/// A setup for a fresh profile with a manual clock at [`T0_MS`].
pub fn setup(config: &[(&str, &str)]) -> InstanceSetup {
    InstanceSetup::new(ProfileId::new_random(), Arc::new(VirtualClock::new(T0_MS)))
        .config(config.iter().copied())
}

/// Starts a plugin for a fresh profile.
pub fn start(engine: &PluginEngine, name: &str, config: &[(&str, &str)]) -> WasmStrategy {
    engine
        .start(&version(engine, name), setup(config))
        .expect("starting a plugin")
}

/// Candle number `index` of a stream on BTCUSDT.
pub fn candle(index: i64, close: f64) -> Candle {
    let open_time_ms = T0_MS + index * CANDLE_MS;
    Candle {
        symbol: Symbol::new("BTCUSDT").unwrap(),
        open_time_ms,
        close_time_ms: open_time_ms + CANDLE_MS,
        open: close,
        high: close,
        low: close,
        close,
        volume: 1.0,
    }
}

/// A view with some free capital and nothing open.
pub fn flat_view() -> AccountView {
    AccountView {
        free_capital: 1_000.0,
        equity: 1_000.0,
        ..AccountView::default()
    }
}

/// A well-behaved neighbour in its own store: an sma-cross that must answer a known price path
/// exactly, whatever its neighbours do.
pub struct Neighbour {
    strategy: WasmStrategy,
    next_index: i64,
}

impl Neighbour {
    pub fn start() -> Self {
        let strategy = start(engine(), "sma-cross", &[("fast", "2"), ("slow", "4")]);
        Neighbour {
            strategy,
            next_index: 0,
        }
    }

    /// Feeds a fall then a rise: exactly one long entry, on the rise (the fall of the next round
    /// turns the averages down again, which a flat long-only strategy ignores).
    pub fn assert_trades_normally(&mut self) {
        let mut intents: Vec<RawIntent> = Vec::new();
        for close in [10.0, 9.0, 8.0, 7.0, 6.0, 8.0, 10.0, 12.0] {
            let candle = candle(self.next_index, close);
            self.next_index += 1;
            intents.extend(
                self.strategy
                    .on_candle(&candle, &flat_view())
                    .expect("neighbour call"),
            );
        }
        assert_eq!(
            intents.len(),
            1,
            "the neighbour should enter once: {intents:?}"
        );
        assert!(matches!(&intents[0], RawIntent::Entry(e) if e.tag == "sma-cross long"));
    }
}
