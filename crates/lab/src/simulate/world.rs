//! One seed's world: the real kernel ([`ProfileEngine`]) over a memory or scratch SQLite store, the paper
//! exchange behind the fault injector, a virtual clock, a seeded strategy and a second instance.
//! Every choice is drawn from generators seeded by the seed; nothing reads the wall clock to
//! decide, and nothing iterates a hash map to decide.

use std::path::Path;
use std::sync::{Arc, Mutex};

use keel_kernel::engine::{EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, VirtualClock};
use keel_kernel::exchange::{Exchange, SymbolRules, UserEvent};
use keel_kernel::ids::{ProfileId, Symbol, UserId};
use keel_kernel::lock::{LOCK_TTL_MS_MAX, LockKind, OwnerToken};
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use keel_kernel::money::Amount;
use keel_kernel::plant::Plant;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::Store;
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use super::database::{Database, StoreKind};
use super::faults::{FaultRates, FaultyExchange, Injector};
use super::invariants::{CONVERGENCE, Checker, Violation};
use super::strategy::{Decisions, Mirror, RandomIntents};
use keel_exchange::paper::{PaperConfig, PaperExchange};

/// One candle per symbol per step, a minute apart.
pub(super) const STEP_MS: i64 = 60_000;
/// The capital the profile trades.
const CAPITAL: i64 = 10_000;
/// Where the virtual clock starts: 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;
/// Steps between two scheduled reconciliation passes (more run at random).
const RECONCILE_EVERY_STEPS: u32 = 5;
/// Per-step chances of the world's own faults.
const EVENT_DROPPED: f64 = 0.05;
const EVENT_DUPLICATED: f64 = 0.06;
const EVENT_DELAYED: f64 = 0.08;
const EVENTS_REORDERED: f64 = 0.15;
const TRANSACTION_FAILS: f64 = 0.05;
const LOCKS_EXPIRE: f64 = 0.03;
const HOST_RESTARTS: f64 = 0.02;
const RECONCILE_EXTRA: f64 = 0.1;

/// What one seed did.
#[derive(Debug, Default)]
pub struct SeedOutcome {
    /// Steps run (fewer than asked when a violation stopped the seed).
    pub steps: u32,
    /// Faults injected, by kind.
    pub faults: super::faults::FaultCounts,
    /// Invariant evaluations.
    pub invariant_checks: u64,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Orders that reached the exchange.
    pub orders_sent: u64,
    /// Host restarts.
    pub restarts: u32,
}

pub(super) struct World {
    pub(super) seed: u64,
    plant: Option<Plant>,
    pub(super) database: Database,
    rng: ChaCha8Rng,
    pub(super) paper: Arc<PaperExchange>,
    exchange: Arc<dyn Exchange>,
    pub(super) injector: Arc<Injector>,
    events: mpsc::Receiver<UserEvent>,
    delayed: Vec<UserEvent>,
    clock: Arc<VirtualClock>,
    pub(super) metrics: Arc<Metrics>,
    switches: Arc<HostSwitches>,
    pub(super) user: UserId,
    pub(super) profile: ProfileId,
    pub(super) store: Store,
    pub(super) engine: ProfileEngine,
    decided: Decisions,
    recovered: bool,
    restarts: u32,
    prices: Vec<(Symbol, f64)>,
    pub(super) now_ms: i64,
}

/// What a seed runs with besides its number.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    /// Steps to run.
    pub steps: u32,
    /// The protection switched off, if any.
    pub plant: Option<Plant>,
    /// The store the host runs on.
    pub store: StoreKind,
    /// Where a SQLite store keeps its file.
    pub dir: Arc<Path>,
}

/// Runs one seed as `plan` says and reports what broke.
pub async fn run_seed(seed: u64, plan: &SeedPlan) -> anyhow::Result<SeedOutcome> {
    let steps = plan.steps;
    let mut world = World::new(seed, plan).await?;
    let mut checker = Checker::default();
    let mut outcome = SeedOutcome::default();
    for step in 1..=steps {
        world.step(&mut checker, step).await?;
        checker.check_step(&mut world, step).await?;
        outcome.steps = step;
        if !checker.violations.is_empty() {
            break;
        }
    }
    if checker.violations.is_empty() {
        world.converge(&mut checker).await?;
        checker.check_step(&mut world, CONVERGENCE).await?;
        checker.check_converged(&mut world).await?;
    }
    world.injector.set_twin(None).await;
    outcome.faults = world.injector.counts();
    outcome.invariant_checks = checker.checks;
    outcome.violations = checker.violations;
    outcome.orders_sent = world.injector.sent().values().map(|&n| u64::from(n)).sum();
    outcome.restarts = world.restarts;
    world.store.close().await;
    world.database.remove().await;
    Ok(outcome)
}

fn symbols() -> [(Symbol, f64); 2] {
    [
        (Symbol::new("BTCUSDT").expect("a valid symbol"), 100.0),
        (Symbol::new("ETHUSDT").expect("a valid symbol"), 40.0),
    ]
}

fn rules(symbol: &Symbol) -> SymbolRules {
    let tick = Decimal::new(1, 2);
    let step = Decimal::new(1, 3);
    SymbolRules {
        symbol: symbol.clone(),
        tick_size: tick,
        step_size: step,
        min_qty: step,
        max_qty: Decimal::from(1_000_000),
        market_step_size: step,
        market_min_qty: step,
        market_max_qty: Decimal::from(1_000_000),
        min_notional: Decimal::from(5),
    }
}

/// `price` rounded to the 0.01 tick of [`rules`].
fn on_tick(price: f64) -> f64 {
    (price * 100.0).round() / 100.0
}

fn limits() -> RiskLimits {
    RiskLimits {
        symbols_allowed: symbols().into_iter().map(|(s, _)| s).collect(),
        entry_notional_max: Decimal::from(CAPITAL),
        positions_open_max: 2,
        leverage_max: Decimal::ONE,
        limit_price_band_bps: 500,
        intents_per_minute_max: 600,
        daily_loss_max: Decimal::from(CAPITAL),
    }
}

/// A generator for one purpose of one seed: separate streams, so adding a draw in one place does
/// not shift every other choice.
fn stream(seed: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose);
    rng
}

impl World {
    async fn new(seed: u64, plan: &SeedPlan) -> anyhow::Result<World> {
        let plant = plan.plant;
        let (database, store) = Database::create(plan.store, &plan.dir, seed, plant).await?;
        let user = UserId::from_uuid(uuid::Uuid::from_u64_pair(seed, 1));
        let profile = ProfileId::from_uuid(uuid::Uuid::from_u64_pair(seed, 2));
        let tenant = store.tenant(user);
        tenant.create_profile_with_id(profile, "simulated").await?;
        let capital = Amount::positive(Decimal::from(CAPITAL)).expect("a positive capital");
        store
            .operator(keel_kernel::store::HOST_OPERATOR)
            .grant_budget(user, capital.get())
            .await?;
        tenant.allocate(profile, capital).await?;
        let paper = Arc::new(PaperExchange::new(
            PaperConfig {
                seed,
                partial_fill_probability: 0.3,
                initial_balance: capital,
                ..PaperConfig::default()
            },
            symbols().iter().map(|(s, _)| rules(s)),
        ));
        let injector = Arc::new(Injector::new(stream(seed, 1), FaultRates::DEFAULT));
        injector.set_store(store.clone());
        let exchange: Arc<dyn Exchange> =
            Arc::new(FaultyExchange::new(paper.clone(), injector.clone()));
        let events = paper.user_events().await?;
        let clock = Arc::new(VirtualClock::new(START_MS));
        let metrics = Arc::new(Metrics::new());
        let switches = Arc::new(HostSwitches::default());
        let decided: Decisions = Arc::new(Mutex::new(Vec::new()));
        let engine = build_engine(
            &Parts {
                store: &store,
                exchange: &exchange,
                clock: &clock,
                metrics: &metrics,
                switches: &switches,
                user,
                profile,
                plant,
            },
            Box::new(RandomIntents::new(stream(seed, 100), decided.clone())),
        );
        let mut world = World {
            seed,
            plant,
            database,
            rng: stream(seed, 2),
            paper,
            exchange,
            injector,
            events,
            delayed: Vec::new(),
            clock,
            metrics,
            switches,
            user,
            profile,
            store,
            engine,
            decided,
            recovered: false,
            restarts: 0,
            prices: symbols().to_vec(),
            now_ms: START_MS,
        };
        world.start_instances().await;
        world.injector.arm(true);
        Ok(world)
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            store: &self.store,
            exchange: &self.exchange,
            clock: &self.clock,
            metrics: &self.metrics,
            switches: &self.switches,
            user: self.user,
            profile: self.profile,
            plant: self.plant,
        }
    }

    /// Recovers the engine, then starts the second instance over what it recovered.
    async fn start_instances(&mut self) {
        self.try_recover().await;
        let twin = build_engine(&self.parts(), Box::new(Mirror::new(self.decided.clone())));
        self.injector.set_twin(Some(twin)).await;
        // The second instance's own start may fail on the store; it then stays stale.
        let _ = self.injector.recover_twin().await;
    }

    async fn try_recover(&mut self) {
        if self.recovered || self.injector.crashed() {
            return;
        }
        // Recovery asks the exchange, which may fail: decisions wait until it succeeds.
        self.recovered = self.engine.recover().await.is_ok();
    }

    fn next_candles(&mut self) -> Vec<Candle> {
        let open_time_ms = self.now_ms;
        let mut candles = Vec::with_capacity(self.prices.len());
        for (symbol, price) in &mut self.prices {
            // Market data moves on the tick grid, as an exchange's does.
            let open = *price;
            let close = on_tick(open * (1.0 + self.rng.gen_range(-0.006..0.006)));
            let high = on_tick(open.max(close) * (1.0 + self.rng.gen_range(0.0..0.003)));
            let low = on_tick(open.min(close) * (1.0 - self.rng.gen_range(0.0..0.003)));
            *price = close;
            candles.push(Candle {
                symbol: symbol.clone(),
                open_time_ms,
                close_time_ms: open_time_ms + STEP_MS - 1,
                open,
                high,
                low,
                close,
                volume: 1_000.0,
            });
        }
        candles
    }

    async fn step(&mut self, checker: &mut Checker, step: u32) -> anyhow::Result<()> {
        let candles = self.next_candles();
        self.now_ms += STEP_MS;
        self.clock.advance_to(self.now_ms);
        self.try_recover().await;
        for candle in &candles {
            self.paper.feed_candle(candle).await?;
        }
        let fail_writes = self.rng.gen_bool(TRANSACTION_FAILS);
        if fail_writes {
            self.injector.count("transaction_failed");
            self.set_writes_failing(true).await?;
        }
        self.deliver_events(checker, step, true).await;
        if self.recovered && !self.injector.crashed() {
            for candle in &candles {
                if self.injector.crashed() {
                    break;
                }
                self.injector.set_candle(candle);
                let result = self.engine.on_candle(candle).await;
                checker.note(self, step, result.map(|_| ()));
            }
        }
        if fail_writes {
            self.set_writes_failing(false).await?;
        }
        let scheduled = step.is_multiple_of(RECONCILE_EVERY_STEPS);
        if self.recovered && (scheduled || self.rng.gen_bool(RECONCILE_EXTRA)) {
            let result = self.engine.reconcile().await;
            checker.note(self, step, result.map(|_| ()));
        }
        for error in self.injector.take_twin_errors() {
            checker.note(self, step, Err(error));
        }
        if self.rng.gen_bool(LOCKS_EXPIRE) {
            self.injector.count("lock_expired");
            self.expire_entry_locks().await?;
        }
        if self.injector.crashed() || self.rng.gen_bool(HOST_RESTARTS) {
            if !self.injector.crashed() {
                self.injector.count("host_restart");
            }
            self.restart().await?;
        }
        Ok(())
    }

    /// Hands the exchange's events to the engine, losing, repeating, delaying and reordering
    /// some when `faulty`. While the host is down, events are lost.
    async fn deliver_events(&mut self, checker: &mut Checker, step: u32, faulty: bool) {
        let mut batch = std::mem::take(&mut self.delayed);
        while let Ok(event) = self.events.try_recv() {
            batch.push(event);
        }
        if !self.recovered || self.injector.crashed() {
            return;
        }
        if faulty && self.rng.gen_bool(EVENTS_REORDERED) {
            self.injector.count("events_reordered");
            batch.shuffle(&mut self.rng);
        }
        for event in batch {
            let mut times = 1;
            if faulty {
                if self.rng.gen_bool(EVENT_DROPPED) {
                    self.injector.count("event_dropped");
                    continue;
                }
                if self.rng.gen_bool(EVENT_DELAYED) {
                    self.injector.count("event_delayed");
                    self.delayed.push(event);
                    continue;
                }
                if self.rng.gen_bool(EVENT_DUPLICATED) {
                    self.injector.count("event_duplicated");
                    times = 2;
                }
            }
            for _ in 0..times {
                if self.injector.crashed() {
                    return;
                }
                let result = self.engine.on_user_event(&event).await;
                checker.note(self, step, result.map(|_| ()));
            }
        }
    }

    async fn set_writes_failing(&self, failing: bool) -> anyhow::Result<()> {
        self.database.set_writes_failing(failing).await
    }

    /// Every entry lease lapses, as when its holder stalls past the TTL.
    async fn expire_entry_locks(&self) -> anyhow::Result<()> {
        self.database.expire_leases(LockKind::Entry).await
    }

    /// The host dies and starts again over the same database and exchange: a new engine (new
    /// owner), recovery, and a new second instance.
    async fn restart(&mut self) -> anyhow::Result<()> {
        self.restarts += 1;
        self.injector.set_twin(None).await;
        self.store.close().await;
        self.delayed.clear();
        while self.events.try_recv().is_ok() {}
        if self.rng.gen_bool(0.5) {
            // The restart took longer than the entry locks' TTL.
            self.expire_entry_locks().await?;
        }
        self.store = self.database.open_store(self.plant).await?;
        self.injector.set_store(self.store.clone());
        let strategy = RandomIntents::new(
            stream(self.seed, 100 + u64::from(self.restarts)),
            self.decided.clone(),
        );
        self.engine = build_engine(&self.parts(), Box::new(strategy));
        self.recovered = false;
        self.start_instances().await;
        Ok(())
    }

    /// Faults stop; every event is delivered; the clock moves past the window after which an
    /// order the exchange never saw is declared never placed; two reconciliation passes run.
    async fn converge(&mut self, checker: &mut Checker) -> anyhow::Result<()> {
        self.injector.arm(false);
        let step = CONVERGENCE;
        if self.injector.crashed() {
            self.restart().await?;
        }
        for _ in 0..3 {
            self.try_recover().await;
        }
        self.deliver_events(checker, step, false).await;
        let window_ms = EngineConfig::default().unknown_resolve_after_ms;
        self.now_ms += 2 * window_ms;
        self.clock.advance_to(self.now_ms);
        // That long, every lease a dead owner left lapses too (their TTLs run by the database's
        // clock, which a replayable run does not wait for): a host that died inside a
        // reconciliation pass no longer holds it.
        self.database.expire_leases(LockKind::Entry).await?;
        self.database
            .expire_leases(LockKind::Reconciliation)
            .await?;
        for _ in 0..2 {
            let result = self.engine.reconcile().await;
            checker.note(self, step, result.map(|_| ()));
            self.deliver_events(checker, step, false).await;
        }
        Ok(())
    }
}

struct Parts<'a> {
    store: &'a Store,
    exchange: &'a Arc<dyn Exchange>,
    clock: &'a Arc<VirtualClock>,
    metrics: &'a Arc<Metrics>,
    switches: &'a Arc<HostSwitches>,
    user: UserId,
    profile: ProfileId,
    plant: Option<Plant>,
}

fn build_engine(
    parts: &Parts<'_>,
    strategy: Box<dyn keel_kernel::strategy::StrategyRuntime>,
) -> ProfileEngine {
    let config = EngineConfig {
        // Leases lapse only when the simulation says so (the database's clock is the wall
        // clock, which must not decide anything in a replayable run).
        entry_lock_ttl_ms: LOCK_TTL_MS_MAX,
        ..EngineConfig::default()
    };
    let mut engine = ProfileEngine::new(
        ProfileSpec {
            profile: parts.profile,
            user: parts.user,
            limits: limits(),
        },
        config,
        parts.store.clone(),
        parts.exchange.clone(),
        strategy,
        parts.clock.clone(),
        parts.metrics.clone(),
        parts.switches.clone(),
        OwnerToken::new_random(),
    );
    if let Some(plant) = parts.plant {
        engine.set_plant(plant);
    }
    engine
}
