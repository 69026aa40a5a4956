//! One backtest: a plugin over recorded candles through the whole kernel path.
//!
//! The path is the live one: the Wasm runtime with the live fuel and memory budgets, the
//! [`ProfileEngine`] (validation, risk rules, entry locks, write-ahead, lifecycle, ledger) over a
//! store (the memory store by default, SQLite on request, see [`BacktestStore`]), and the
//! paper exchange, whose market orders fill at the next candle's open, so a decision never sees
//! its own fill price in advance.
//!
//! Risk limits of a backtest (see [`backtest_limits`]): only the backtested symbol, one position
//! per symbol, leverage 1 (so an entry's notional is bounded by the equity, and positions
//! compound as it grows), one entry's notional at most `--notional-max` when it is given, a 5%
//! limit-price band, no intent-rate limit worth hitting (one call per candle), and a daily loss
//! limit equal to the capital (so the run is never silently stopped by it).
//!
//! An entry reserves capital above its notional (see [`backtest_engine_config`]): the fee
//! `--fee-bps` charges, and `--slippage-reserve-bps` for a market order filling above the
//! close it was sized at. The paper account's margin is checked when an order fills (see
//! `PaperConfig::margin_checked_at_fill`): an entry whose next open gapped beyond its reserve,
//! when it took every unit of free capital, expires instead of filling, and the run goes on.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_kernel::engine::{EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, VirtualClock};
use keel_kernel::exchange::{Exchange, Fill, SymbolRules, UserEvent};
use keel_kernel::ids::{ProfileId, Symbol, UserId};
use keel_kernel::lock::OwnerToken;
use keel_kernel::market::{Candle, Side};
use keel_kernel::metrics::Metrics;
use keel_kernel::money::Amount;
use keel_kernel::risk::{ENTRY_NOTIONAL_CEILING, RiskLimits};
use keel_kernel::store::Store;
use keel_kernel::strategy::PluginFault;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive as _;
use tokio::sync::mpsc;

use super::report::{BacktestReport, EquityPoint, Refusals, build_report};
use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_runtime::{EngineSettings, InstanceSetup, PluginEngine, PluginVersion, user_cache_dir};

/// Candles between two redraws of the progress bar.
const PROGRESS_EVERY_CANDLES: u64 = 4_096;
/// Fewest candles for which a progress bar is drawn at all.
const PROGRESS_CANDLES_MIN: usize = 100_000;
/// Tick and step of the backtest instrument: fine enough for any quoted price and any size.
const INCREMENT: Decimal = Decimal::from_parts(1, 0, 0, false, 8);
/// Largest order quantity of the backtest instrument.
const QTY_MAX: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Smallest order notional of the backtest instrument, as on Binance USDⓈ-M futures.
const NOTIONAL_MIN: Decimal = Decimal::from_parts(5, 0, 0, false, 0);

/// Where a backtest keeps its kernel store. The report is the same byte for byte on each: the
/// memory store is proven equal to the SQLite stores (see `docs/store.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BacktestStore {
    /// The memory store: the store's rows in process memory, its invariants checked in Rust.
    #[default]
    Memory,
    /// A private in-memory SQLite database with the live schema, constraints and statements,
    /// run in the backtest's own thread.
    Sqlite,
    /// A database file in a temporary directory, run in the backtest's thread, written without
    /// fsync, deleted after the run.
    File,
    /// A private in-memory database on sqlx's SQLite driver, as `keel serve` runs SQLite: each
    /// statement is handed to the connection's worker thread and back.
    Worker,
}

/// What to backtest.
#[derive(Debug, Clone)]
pub struct BacktestSpec {
    /// The plugin component's bytes.
    pub plugin: Vec<u8>,
    /// The plugin's name, for the report.
    pub plugin_name: String,
    /// Closed candles of one symbol, strictly increasing in time.
    pub candles: Vec<Candle>,
    /// The traded symbol.
    pub symbol: Symbol,
    /// Config pairs handed to the plugin's `init`.
    pub config: Vec<(String, String)>,
    /// Capital allocated to the profile, in quote currency.
    pub capital: Decimal,
    /// Fee of every fill, in basis points of notional.
    pub fee_bps: Decimal,
    /// The chance, from 0 to 1, that a fill of the paper exchange takes only part of the
    /// remaining quantity (the rest fills on later candles).
    pub partial_fill_probability: f64,
    /// Where the kernel store lives.
    pub store: BacktestStore,
    /// Seed of the plugin's randomness (live instances draw theirs from the operating system).
    pub seed: u64,
    /// Most notional one entry may have; `None` leaves the equity (leverage 1) as the bound.
    pub notional_max: Option<Decimal>,
    /// Capital an entry reserves for a fill above the price it was sized at, in basis points.
    pub slippage_reserve_bps: u32,
}

/// The risk limits a backtest runs under (documented at the top of this module).
pub fn backtest_limits(
    symbol: &Symbol,
    capital: Decimal,
    notional_max: Option<Decimal>,
) -> RiskLimits {
    RiskLimits {
        symbols_allowed: [symbol.clone()].into_iter().collect(),
        entry_notional_max: notional_max.unwrap_or(Decimal::from(ENTRY_NOTIONAL_CEILING)),
        positions_open_max: 1,
        leverage_max: Decimal::ONE,
        limit_price_band_bps: 500,
        intents_per_minute_max: 60,
        daily_loss_max: capital,
    }
}

/// The engine settings of a backtest: the live defaults, with an entry's reserves set from the
/// run's fee (rounded up to whole basis points) and slippage reserve.
pub fn backtest_engine_config(fee_bps: Decimal, slippage_reserve_bps: u32) -> EngineConfig {
    let fee_reserve_bps = fee_bps.ceil().to_u32().unwrap_or(u32::MAX);
    EngineConfig {
        fee_reserve_bps,
        slippage_reserve_bps,
        ..EngineConfig::default()
    }
}

/// Trading rules of the backtest instrument: 10⁻⁸ tick and step, a notional of at least 5.
pub fn backtest_rules(symbol: &Symbol) -> SymbolRules {
    SymbolRules {
        symbol: symbol.clone(),
        tick_size: INCREMENT,
        step_size: INCREMENT,
        min_qty: INCREMENT,
        max_qty: QTY_MAX,
        market_step_size: INCREMENT,
        market_min_qty: INCREMENT,
        market_max_qty: QTY_MAX,
        min_notional: NOTIONAL_MIN,
    }
}

/// Everything one run needs, wired as the live host wires it.
struct Rig {
    /// The directory of a file store, deleted with the rig.
    _dir: Option<tempfile::TempDir>,
    exchange: Arc<PaperExchange>,
    events: mpsc::Receiver<UserEvent>,
    clock: Arc<VirtualClock>,
    engine: ProfileEngine,
    /// Allocated capital plus realized PnL as last summed: it stays the same from one candle
    /// to the next until a trade changes it.
    equity_base: Option<EquityBase>,
    /// Every fill of the run, in the order the engine heard them: the report's trades are
    /// rebuilt from them (the paper exchange forgets closed orders beyond
    /// `CLOSED_ORDERS_REMEMBERED_MAX`, and their fills with them).
    fills: Vec<Fill>,
}

/// Allocated capital plus realized PnL, summed exactly and then taken as a float, the first
/// term of every equity point, with the two values it was summed from, each as its exact bytes.
struct EquityBase {
    allocated: [u8; 16],
    realized_pnl: [u8; 16],
    /// The sum as a float: the equity out of the market.
    flat: f64,
}

/// Runs the backtest; `progress` draws a bar on stderr when it is a terminal.
pub async fn run_backtest(spec: &BacktestSpec, progress: bool) -> anyhow::Result<BacktestReport> {
    run_backtest_with(spec, &spec.config, progress).await
}

/// Runs the backtest of `spec` with the plugin given `config` instead of `spec.config` (a
/// sweep's runs share one spec: its candles and plugin are not copied per run).
pub async fn run_backtest_with(
    spec: &BacktestSpec,
    config: &[(String, String)],
    progress: bool,
) -> anyhow::Result<BacktestReport> {
    if spec.capital <= Decimal::ZERO {
        bail!("--capital must be positive, not {}", spec.capital);
    }
    if spec.fee_bps < Decimal::ZERO {
        bail!("--fee-bps must not be negative, not {}", spec.fee_bps);
    }
    if let Some(max) = spec.notional_max
        && !(max > Decimal::ZERO && max <= Decimal::from(ENTRY_NOTIONAL_CEILING))
    {
        bail!("--notional-max must be positive and at most {ENTRY_NOTIONAL_CEILING}, not {max}");
    }
    if spec.fee_bps > Decimal::from(10_000) {
        bail!(
            "--fee-bps must be at most 10000 (100%), not {}",
            spec.fee_bps
        );
    }
    if spec.slippage_reserve_bps > 10_000 {
        bail!(
            "--slippage-reserve-bps must be at most 10000 (100%), not {}",
            spec.slippage_reserve_bps
        );
    }
    if !(0.0..=1.0).contains(&spec.partial_fill_probability) {
        bail!(
            "--partial-fill-probability must be between 0 and 1, not {}",
            spec.partial_fill_probability
        );
    }
    let Some(first) = spec.candles.first() else {
        bail!("no candles to backtest");
    };
    let mut rig = Rig::new(spec, config, first.open_time_ms, progress).await?;
    let bar = progress_bar(spec.candles.len(), progress);
    let mut equity = Vec::with_capacity(spec.candles.len());
    let mut refusals = Refusals::default();
    for (index, candle) in spec.candles.iter().enumerate() {
        rig.step(candle).await?;
        // Taken after every candle, so the engine's bounded queue never drops one.
        refusals.extend(index, rig.engine.take_refusals());
        equity.push(rig.equity_point(candle));
        if (index as u64).is_multiple_of(PROGRESS_EVERY_CANDLES) {
            bar.set_position(index as u64);
        }
    }
    bar.finish_and_clear();
    let fills = std::mem::take(&mut rig.fills);
    let realized_pnl = rig.engine.book().capital.realized_pnl.get();
    let mut report = build_report(spec, &fills, equity, realized_pnl, refusals);
    report.config = config.to_vec();
    Ok(report)
}

impl Rig {
    async fn new(
        spec: &BacktestSpec,
        config: &[(String, String)],
        start_ms: i64,
        progress: bool,
    ) -> anyhow::Result<Rig> {
        let (store, dir) = open_store(spec.store)
            .await
            .context("opening the backtest's store")?;
        let user = UserId::new_random();
        let tenant = store.tenant(user);
        let profile = tenant.create_profile("backtest").await?;
        let capital = Amount::positive(spec.capital).context("--capital")?;
        store
            .operator(keel_kernel::store::HOST_OPERATOR)
            .grant_budget(user, capital.get())
            .await?;
        tenant.allocate(profile, capital).await?;
        let exchange = Arc::new(PaperExchange::new(
            PaperConfig {
                taker_fee_bps: spec.fee_bps,
                maker_fee_bps: spec.fee_bps,
                initial_balance: capital,
                partial_fill_probability: spec.partial_fill_probability,
                margin_checked_at_fill: true,
                ..PaperConfig::default()
            },
            [backtest_rules(&spec.symbol)],
        ));
        let events = exchange.user_events().await?;
        let clock = Arc::new(VirtualClock::new(start_ms));
        // The plugin reads the same virtual clock as the engine.
        let strategy = start_plugin(spec, config, profile, clock.clone(), progress)?;
        let exchange_dyn: Arc<dyn Exchange> = exchange.clone();
        let mut engine = ProfileEngine::new(
            ProfileSpec {
                profile,
                user,
                limits: backtest_limits(&spec.symbol, spec.capital, spec.notional_max),
            },
            // The refusals are taken after every candle: the queue holds one candle's.
            EngineConfig {
                refusals_kept_max: usize::MAX,
                ..backtest_engine_config(spec.fee_bps, spec.slippage_reserve_bps)
            },
            store,
            exchange_dyn,
            Box::new(strategy),
            clock.clone(),
            Arc::new(Metrics::new()),
            Arc::new(HostSwitches::default()),
            OwnerToken::new_random(),
        );
        engine
            .recover()
            .await
            .context("starting the profile engine")?;
        Ok(Rig {
            _dir: dir,
            exchange,
            events,
            clock,
            engine,
            equity_base: None,
            fills: Vec::new(),
        })
    }

    /// At the candle's open the market orders sent on the previous candle fill, and the engine
    /// hears of them (the entry of a reversal is sent once its exit filled, and fills at the
    /// same open); then the exchange matches the rest of the candle, the engine hears those
    /// fills, and the strategy decides on the closed candle.
    async fn step(&mut self, candle: &Candle) -> anyhow::Result<()> {
        self.clock.advance_to(candle.open_time_ms);
        self.exchange.open_candle(candle).await?;
        self.hear_events().await?;
        self.clock.advance_to(candle.close_time_ms);
        self.exchange.feed_candle(candle).await?;
        self.hear_events().await?;
        self.engine.on_candle(candle).await?;
        Ok(())
    }

    /// Hands the exchange's events to the engine.
    async fn hear_events(&mut self) -> anyhow::Result<()> {
        let Ok(first) = self.events.try_recv() else {
            return Ok(());
        };
        // Boxed, once for the candle's events (a fill comes with its order's report): most
        // candles bring none, and the future of one is large.
        Box::pin(async {
            let mut event = first;
            loop {
                if let UserEvent::Fill(fill) = &event {
                    self.fills.push(fill.clone());
                }
                self.engine.on_user_event(&event).await?;
                match self.events.try_recv() {
                    Ok(next) => event = next,
                    Err(_) => return Ok(()),
                }
            }
        })
        .await
    }

    /// Equity at the candle's close: allocated + realized PnL (fees included) + unrealized PnL.
    fn equity_point(&mut self, candle: &Candle) -> EquityPoint {
        let book = self.engine.book();
        let (allocated, realized_pnl) = (
            book.capital.allocated.get(),
            book.capital.realized_pnl.get(),
        );
        let in_position = !book.positions.is_empty();
        let key = (allocated.serialize(), realized_pnl.serialize());
        let base = match self.equity_base.take() {
            Some(base) if (base.allocated, base.realized_pnl) == key => base,
            _ => EquityBase {
                allocated: key.0,
                realized_pnl: key.1,
                flat: equity_f64(allocated + realized_pnl),
            },
        };
        let equity = if in_position {
            // The unrealized PnL in floats: the report's equity is a float, an exact decimal of
            // every close (28 digits of its binary value) costs more than the rest of the
            // point, and a close beyond the decimals' range has none.
            let unrealized: f64 = book
                .positions
                .values()
                .map(|p| {
                    let (qty, cost) = (equity_f64(p.qty_open.get()), equity_f64(p.cost_open.get()));
                    match p.side {
                        Side::Buy => qty * candle.close - cost,
                        Side::Sell => cost - qty * candle.close,
                    }
                })
                .sum();
            base.flat + unrealized
        } else {
            base.flat
        };
        self.equity_base = Some(base);
        EquityPoint {
            time_ms: candle.close_time_ms,
            equity,
            in_position,
        }
    }
}

/// A term of an equity as the report has it, as a float.
fn equity_f64(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(f64::NAN)
}

/// Opens a backtest's store of `kind`, with the temporary directory of a file store (the
/// database is deleted with it).
pub async fn open_store(kind: BacktestStore) -> anyhow::Result<(Store, Option<tempfile::TempDir>)> {
    match kind {
        BacktestStore::Memory => Ok((Store::open_memory(), None)),
        BacktestStore::Sqlite => Ok((Store::open_sqlite_in_thread(None).await?, None)),
        BacktestStore::File => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let path = dir.path().join("backtest.db");
            let store = Store::open_sqlite_in_thread(Some(&path)).await?;
            Ok((store, Some(dir)))
        }
        BacktestStore::Worker => Ok((Store::open_sqlite_memory().await?, None)),
    }
}

/// Loads the spec's plugin on an engine of its own: the live budgets (fuel, memory, deadlines)
/// with room for one instance; compiled code is cached as for `keel plugin check`.
pub fn load_plugin(
    spec: &BacktestSpec,
    progress: bool,
) -> anyhow::Result<(PluginEngine, PluginVersion)> {
    let runtime = PluginEngine::new(EngineSettings {
        instances_max: 2,
        cache_dir: user_cache_dir(),
        ..EngineSettings::default()
    })?;
    let spinner = compile_spinner(&spec.plugin_name, spec.plugin.len(), progress);
    let version = runtime
        .load(&spec.plugin)
        .with_context(|| format!("loading plugin {}", spec.plugin_name));
    spinner.finish_and_clear();
    Ok((runtime, version?))
}

fn start_plugin(
    spec: &BacktestSpec,
    config: &[(String, String)],
    profile: ProfileId,
    clock: Arc<VirtualClock>,
    progress: bool,
) -> anyhow::Result<keel_runtime::WasmStrategy> {
    let (runtime, version) = load_plugin(spec, progress)?;
    runtime
        .start(
            &version,
            InstanceSetup::new(profile, clock)
                .config(config.to_vec())
                .random_seed(spec.seed)
                .name(spec.plugin_name.as_str()),
        )
        .map_err(|fault| match fault {
            // The message names the plugin, the key and what it takes.
            PluginFault::ConfigRefused(_) => anyhow::anyhow!("{fault}"),
            _ => anyhow::anyhow!("plugin {}: init: {fault}", spec.plugin_name),
        })
}

/// A spinner on stderr (when it is a terminal and `wanted`) while a plugin of `bytes` compiles:
/// a Python component takes a minute or more the first time, with nothing else to show. It is
/// drawn only after a second, so a plugin compiled from the cache shows nothing.
pub fn compile_spinner(name: &str, bytes: usize, wanted: bool) -> ProgressBar {
    use std::io::IsTerminal as _;
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
        spinner.set_style(style);
    }
    spinner.set_message(format!(
        "compiling {name} ({:.1} MB; cached once compiled)",
        bytes as f64 / 1e6
    ));
    spinner.enable_steady_tick(SPINNER_TICK);
    let shown = spinner.clone();
    std::thread::spawn(move || {
        std::thread::sleep(SPINNER_DELAY);
        if !shown.is_finished() {
            shown.set_draw_target(ProgressDrawTarget::stderr());
        }
    });
    spinner
}

/// How long a compile runs before its spinner appears, and how often the spinner turns.
const SPINNER_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
const SPINNER_TICK: std::time::Duration = std::time::Duration::from_millis(120);

fn progress_bar(candles: usize, wanted: bool) -> ProgressBar {
    use std::io::IsTerminal as _;
    if !wanted || candles < PROGRESS_CANDLES_MIN || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(candles as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} candles ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Reads the plugin file and candle file for a run.
pub fn load_inputs(plugin: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(plugin).with_context(|| format!("reading {}", plugin.display()))?;
    let name = plugin
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| plugin.display().to_string());
    Ok((bytes, name))
}

/// Total fees of `fills`.
pub fn fees_paid(fills: &[Fill]) -> Decimal {
    fills.iter().map(|f| f.fee.get()).sum()
}
