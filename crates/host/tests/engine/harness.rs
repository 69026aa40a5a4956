//! A profile engine wired to the paper exchange, a SQLite store in a temporary directory, a
//! virtual clock and a scripted native strategy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_kernel::engine::{
    EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, StepOutcome, VirtualClock,
};
use keel_kernel::exchange::{Exchange, SymbolRules, UserEvent};
use keel_kernel::ids::{ProfileId, Symbol, UserId};
use keel_kernel::lock::OwnerToken;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use keel_kernel::money::Amount;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::Store;
use keel_kernel::strategy::{AccountView, FillView, PluginFault, RawIntent, StrategyRuntime};
use rust_decimal_macros::dec;
use tokio::sync::mpsc;

pub fn btc() -> Symbol {
    Symbol::new("BTCUSDT").unwrap()
}

pub fn rules() -> SymbolRules {
    SymbolRules {
        symbol: btc(),
        tick_size: dec!(0.1),
        step_size: dec!(0.001),
        min_qty: dec!(0.001),
        max_qty: dec!(1000),
        market_step_size: dec!(0.001),
        market_min_qty: dec!(0.001),
        market_max_qty: dec!(1000),
        min_notional: dec!(5),
    }
}

pub fn candle(minute: i64, open: f64, close: f64) -> Candle {
    Candle {
        symbol: btc(),
        open_time_ms: minute * 60_000,
        close_time_ms: (minute + 1) * 60_000,
        open,
        high: open.max(close) + 1.0,
        low: open.min(close) - 1.0,
        close,
        volume: 10.0,
    }
}

/// A strategy that answers candle N with the intents scripted for N, and records what it saw.
#[derive(Clone, Default)]
pub struct Scripted {
    pub script: Arc<Mutex<BTreeMap<i64, Vec<RawIntent>>>>,
    pub fills_seen: Arc<Mutex<Vec<FillView>>>,
    pub candles_seen: Arc<Mutex<Vec<i64>>>,
    pub fault_at: Option<i64>,
}

impl Scripted {
    pub fn at(self, minute: i64, intents: Vec<RawIntent>) -> Self {
        self.script.lock().unwrap().insert(minute * 60_000, intents);
        self
    }
}

impl StrategyRuntime for Scripted {
    fn init(&mut self, _config: &[(String, String)]) -> Result<(), PluginFault> {
        Ok(())
    }
    fn on_candle(
        &mut self,
        candle: &Candle,
        _view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.candles_seen.lock().unwrap().push(candle.open_time_ms);
        if self.fault_at == Some(candle.open_time_ms) {
            return Err(PluginFault::FuelExhausted);
        }
        Ok(self
            .script
            .lock()
            .unwrap()
            .get(&candle.open_time_ms)
            .cloned()
            .unwrap_or_default())
    }
    fn on_fill(
        &mut self,
        fill: &FillView,
        _view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.fills_seen.lock().unwrap().push(fill.clone());
        Ok(Vec::new())
    }
}

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub exchange: Arc<PaperExchange>,
    pub events: mpsc::Receiver<UserEvent>,
    pub clock: Arc<VirtualClock>,
    pub metrics: Arc<Metrics>,
    pub switches: Arc<HostSwitches>,
    pub user: UserId,
    pub profile: ProfileId,
    pub engine: ProfileEngine,
}

impl Harness {
    pub async fn new(strategy: Scripted) -> Harness {
        Harness::with(Box::new(strategy), EngineConfig::default()).await
    }

    /// A harness around any strategy, under `config`.
    pub async fn with(strategy: Box<dyn StrategyRuntime>, config: EngineConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("keel.db"))
            .await
            .unwrap();
        let user = UserId::new_random();
        let tenant = store.tenant(user);
        let profile = tenant.create_profile("engine-test").await.unwrap();
        tenant
            .allocate(profile, Amount::positive(dec!(10000)).unwrap())
            .await
            .unwrap();
        let exchange = Arc::new(PaperExchange::new(PaperConfig::default(), [rules()]));
        let events = exchange.user_events().await.unwrap();
        let clock = Arc::new(VirtualClock::new(0));
        let metrics = Arc::new(Metrics::new());
        let switches = Arc::new(HostSwitches::default());
        let mut engine = build_engine(
            &store, &exchange, &clock, &metrics, &switches, user, profile, strategy, config,
        );
        engine.recover().await.unwrap();
        Harness {
            _dir: dir,
            store,
            exchange,
            events,
            clock,
            metrics,
            switches,
            user,
            profile,
            engine,
        }
    }

    /// A fresh engine over the same store and exchange, as after a restart.
    pub fn restart(&mut self, strategy: Scripted) {
        self.engine = build_engine(
            &self.store,
            &self.exchange,
            &self.clock,
            &self.metrics,
            &self.switches,
            self.user,
            self.profile,
            Box::new(strategy),
            EngineConfig::default(),
        );
    }

    /// The exchange sees the candle first (fills of resting orders), then the engine hears the
    /// resulting events, then the strategy decides on the candle.
    pub async fn step(&mut self, candle: &Candle) -> StepOutcome {
        self.clock.advance_to(candle.close_time_ms);
        self.exchange.feed_candle(candle).await.unwrap();
        self.drain_events().await;
        self.engine.on_candle(candle).await.unwrap()
    }

    pub async fn drain_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.engine.on_user_event(&event).await.unwrap();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_engine(
    store: &Store,
    exchange: &Arc<PaperExchange>,
    clock: &Arc<VirtualClock>,
    metrics: &Arc<Metrics>,
    switches: &Arc<HostSwitches>,
    user: UserId,
    profile: ProfileId,
    strategy: Box<dyn StrategyRuntime>,
    config: EngineConfig,
) -> ProfileEngine {
    let exchange: Arc<dyn Exchange> = exchange.clone();
    ProfileEngine::new(
        ProfileSpec {
            profile,
            user,
            limits: RiskLimits::conservative([btc()]),
        },
        config,
        store.clone(),
        exchange,
        strategy,
        clock.clone(),
        metrics.clone(),
        switches.clone(),
        OwnerToken::new_random(),
    )
}
