//! A profile engine wired to the paper exchange, a SQLite store in a temporary directory, a
//! virtual clock and a scripted native strategy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_kernel::engine::{
    EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, StepOutcome, VirtualClock,
};
use keel_kernel::exchange::Interval;
use keel_kernel::exchange::{
    Balance, Exchange, ExchangeError, Fill, OrderReport, OrderRequest, PlaceOutcome, Position,
    SymbolRules, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, ProfileId, Symbol, UserId};
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

/// The paper exchange behind a gate that answers the next placements with a refusal of the
/// kind set in `refuse` (how many) and `outcome` (what), without executing them.
pub struct Gated {
    pub paper: Arc<PaperExchange>,
    pub refuse: AtomicU32,
    pub outcome: Mutex<PlaceOutcome>,
    /// Every placement the engine attempted, refused or not, by client order id.
    pub attempts: Mutex<Vec<ClientOrderId>>,
}

impl Gated {
    /// Refuses the next `count` placements with `outcome`.
    pub fn refuse_next(&self, count: u32, outcome: PlaceOutcome) {
        *self.outcome.lock().unwrap() = outcome;
        self.refuse.store(count, Ordering::SeqCst);
    }
}

#[async_trait]
impl Exchange for Gated {
    fn name(&self) -> &str {
        "gated-paper"
    }
    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.paper.symbol_rules(symbol).await
    }
    async fn place(&self, request: &OrderRequest) -> PlaceOutcome {
        self.attempts
            .lock()
            .unwrap()
            .push(request.client_order_id.clone());
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return self.outcome.lock().unwrap().clone();
        }
        self.paper.place(request).await
    }
    async fn cancel(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, ExchangeError> {
        self.paper.cancel(symbol, id).await
    }
    async fn order(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<OrderReport>, ExchangeError> {
        self.paper.order(symbol, id).await
    }
    async fn open_orders(
        &self,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<OrderReport>, ExchangeError> {
        self.paper.open_orders(symbol).await
    }
    async fn fills(&self, symbol: &Symbol, id: &ClientOrderId) -> Result<Vec<Fill>, ExchangeError> {
        self.paper.fills(symbol, id).await
    }
    async fn positions(&self) -> Result<Vec<Position>, ExchangeError> {
        self.paper.positions().await
    }
    async fn balances(&self) -> Result<Vec<Balance>, ExchangeError> {
        self.paper.balances().await
    }
    async fn user_events(&self) -> Result<mpsc::Receiver<UserEvent>, ExchangeError> {
        self.paper.user_events().await
    }
    async fn recent_candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
        limit: usize,
    ) -> Result<Vec<Candle>, ExchangeError> {
        self.paper.recent_candles(symbol, interval, limit).await
    }
    async fn candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
    ) -> Result<mpsc::Receiver<Candle>, ExchangeError> {
        self.paper.candles(symbol, interval).await
    }
}

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub exchange: Arc<PaperExchange>,
    pub gate: Arc<Gated>,
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
        store
            .operator(keel_kernel::store::HOST_OPERATOR)
            .grant_budget(user, dec!(10000))
            .await
            .unwrap();
        tenant
            .allocate(profile, Amount::positive(dec!(10000)).unwrap())
            .await
            .unwrap();
        let exchange = Arc::new(PaperExchange::new(PaperConfig::default(), [rules()]));
        let events = exchange.user_events().await.unwrap();
        let gate = Arc::new(Gated {
            paper: exchange.clone(),
            refuse: AtomicU32::new(0),
            outcome: Mutex::new(PlaceOutcome::RateLimited { retry_after_ms: 0 }),
            attempts: Mutex::new(Vec::new()),
        });
        let clock = Arc::new(VirtualClock::new(0));
        let metrics = Arc::new(Metrics::new());
        let switches = Arc::new(HostSwitches::default());
        let mut engine = build_engine(
            &store, &gate, &clock, &metrics, &switches, user, profile, strategy, config,
        );
        engine.recover().await.unwrap();
        Harness {
            _dir: dir,
            store,
            exchange,
            gate,
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
            &self.gate,
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

    /// Runs `sql` on the store's SQLite file from a connection of its own, beside the engine:
    /// what an outage or an operator does to the database from outside.
    pub async fn sql_outside(&self, sql: &str) {
        let path = self._dir.path().join("keel.db");
        let database = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query(sql).execute(&database).await.unwrap();
        database.close().await;
    }

    /// From now on the database refuses every update of an order, as a lost connection would.
    pub async fn refuse_order_updates(&self) {
        self.sql_outside(
            "CREATE TRIGGER refuse_order_updates BEFORE UPDATE ON orders \
             BEGIN SELECT RAISE(ABORT, 'order updates refused'); END",
        )
        .await;
    }

    /// Ends [`Harness::refuse_order_updates`].
    pub async fn allow_order_updates(&self) {
        self.sql_outside("DROP TRIGGER refuse_order_updates").await;
    }

    pub async fn drain_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.engine.on_user_event(&event).await.unwrap();
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn build_engine(
    store: &Store,
    exchange: &Arc<Gated>,
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
