//! `keel bench engine`: the kernel's own costs on the decision path.
//!
//! Three measurements in one run:
//!
//! 1. **Decision to wire.** One profile engine over the store (PostgreSQL with `--database-url`,
//!    else a scratch SQLite file) and an exchange whose `place` signs the order as Binance's REST
//!    API takes it — the query-string bytes that would leave the host — and notes the instant.
//!    A strategy asks for one market entry per candle. Latency is from handing the engine the
//!    candle to the order's bytes existing. On the way: validation and risk rules, one
//!    transaction holding the entry lock's acquisition and the write-ahead (order row +
//!    reservation + journal, one commit). After the bytes, the exchange refuses the order, so the
//!    engine releases it (not timed) and the next candle starts clean. Beside every decision, the
//!    same connection pool commits a one-row UPDATE: the store's commit latency in the same run.
//!    The process's CPU clock is read at both ends too: what the host itself spends on a
//!    decision, apart from waiting for the database.
//! 2. **Fan-out.** One candle to many profile engines with no orders (the native sma-cross
//!    strategy on a flat market never crosses), split over two threads: the time until every
//!    engine has decided.
//! 3. **Reconciliation.** One profile with many open orders in the store, listed as open by the
//!    exchange too: one full pass (lock, both sets compared, book reloaded). The exchange's
//!    answer time is measured inside the exchange and subtracted.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use futures::StreamExt as _;
use keel_kernel::engine::{
    CandleHistory, EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, VirtualClock,
    WARM_UP_CANDLES_DEFAULT,
};
use keel_kernel::exchange::{
    Balance, Exchange, ExchangeError, ExchangeOrderId, Fill, Interval, OrderReport, OrderRequest,
    OrderType, PlaceOutcome, Position, SymbolRules, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use keel_kernel::lifecycle::EntryRequest;
use keel_kernel::lock::{LockKey, LockKind, OwnerToken};
use keel_kernel::market::{Candle, Side};
use keel_kernel::metrics::Metrics;
use keel_kernel::money::{Amount, Price, Qty};
use keel_kernel::order::OrderStatus;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::Store;
use keel_kernel::strategy::{
    AccountView, PluginFault, PositionSide, RawEntry, RawIntent, RawPrice, RawSize, StrategyRuntime,
};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::native::NativeSmaCross;
use keel_exchange::binance::order_params;
use keel_exchange::binance::sign::hmac_sha256_hex;
use keel_exchange::codes;

/// The most decisions, fan-out candles, profiles or orders a run may ask for.
pub const COUNT_MAX: u32 = 1_000_000;
/// Decisions run before measuring (connections warm, caches filled).
const WARM_UP_DECISIONS: u32 = 50;
/// Threads the fan-out is split over (the target is stated for two cores).
const FAN_OUT_THREADS: usize = 2;
/// Reconciliation passes measured.
const RECONCILE_PASSES: usize = 5;
/// Write-ahead transactions in flight while the reconciliation benchmark fills the store.
const SETUP_CONCURRENCY: usize = 8;
/// Lease TTL of the benchmark's entry locks: longer than any run.
const LOCK_TTL_MS: i64 = 600_000;

/// Options of `keel bench engine`.
#[derive(Debug, clap::Args)]
pub struct EngineBenchArgs {
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// PostgreSQL URL of the host role on a database migrated with `keel migrate`; without it
    /// the store is a scratch SQLite file.
    #[arg(long, env = "KEEL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Decisions measured for the decision-to-wire latency.
    #[arg(long, default_value_t = 2_000)]
    pub decisions: u32,
    /// Profiles one candle fans out to.
    #[arg(long, default_value_t = 10_000)]
    pub profiles: u32,
    /// Candles measured for the fan-out.
    #[arg(long, default_value_t = 200)]
    pub fan_out_candles: u32,
    /// Open orders of the reconciled profile.
    #[arg(long, default_value_t = 10_000)]
    pub orders: u32,
}

/// Percentiles of one measurement, microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Percentiles {
        assert!(!samples.is_empty(), "percentiles of no samples");
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[index].as_secs_f64() * 1e6
        };
        Percentiles {
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct EngineBenchReport {
    /// `postgres` or `sqlite`.
    pub store: &'static str,
    /// Decisions measured.
    pub decisions: u32,
    /// Candle in → order bytes out.
    pub decision_to_wire: Percentiles,
    /// A one-row UPDATE committed on the same pool, beside each decision.
    pub commit: Percentiles,
    /// Per decision: decision-to-wire minus the commit measured beside it. The path commits
    /// once before the bytes (entry lock, order row and reservation in one transaction), so this
    /// is the kernel's own time and its other round trips.
    pub overhead_beyond_one_commit: Percentiles,
    /// Per decision: the CPU time the whole process spent from the candle to the order's bytes
    /// (every thread, user and system: the kernel's checks and bookkeeping, the store client's
    /// encoding and decoding, socket calls, signing). The rest of the decision's wall time is
    /// waiting for the database.
    pub process_cpu_per_decision: Percentiles,
    /// Profiles one candle reached.
    pub fan_out_profiles: u32,
    /// Threads the fan-out ran on.
    pub fan_out_threads: usize,
    /// One candle to every profile.
    pub fan_out: Percentiles,
    /// Open orders reconciled.
    pub reconcile_orders: u32,
    /// One reconciliation pass, the exchange's answer time excluded.
    pub reconcile_excluding_exchange: Percentiles,
    /// The exchange's answer time within a pass (listing the open orders).
    pub reconcile_exchange: Percentiles,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: EngineBenchArgs) -> anyhow::Result<()> {
    for (name, value) in [
        ("--decisions", args.decisions),
        ("--profiles", args.profiles),
        ("--fan-out-candles", args.fan_out_candles),
        ("--orders", args.orders),
    ] {
        if !(1..=COUNT_MAX).contains(&value) {
            bail!("{name} must be 1 to {COUNT_MAX}, got {value}");
        }
    }
    let dir = tempfile::tempdir().context("creating the benchmark's temporary directory")?;
    let store = open_store(args.database_url.as_deref(), dir.path()).await?;
    // In a task of the runtime, as `keel serve` runs each profile's loops: the task is polled
    // by the worker thread that also waits on the sockets.
    let latency = {
        let (store, dir, decisions) = (store.clone(), dir.path().to_owned(), args.decisions);
        tokio::spawn(async move { decision_to_wire(&store, &dir, decisions).await })
            .await
            .context("the decision-to-wire task panicked")??
    };
    let fan_out = fan_out(&store, args.profiles, args.fan_out_candles)?;
    let reconcile = reconciliation(&store, args.orders).await?;
    let report = EngineBenchReport {
        store: if store.pg_pool().is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        decisions: args.decisions,
        decision_to_wire: latency.decision_to_wire,
        commit: latency.commit,
        overhead_beyond_one_commit: latency.beyond_one,
        process_cpu_per_decision: latency.cpu,
        fan_out_profiles: args.profiles,
        fan_out_threads: FAN_OUT_THREADS,
        fan_out,
        reconcile_orders: args.orders,
        reconcile_excluding_exchange: reconcile.0,
        reconcile_exchange: reconcile.1,
    };
    store.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &EngineBenchReport) {
    let line = |what: &str, p: &Percentiles| {
        println!(
            "{what:<44} p50 {:>10.1} µs   p99 {:>10.1} µs   max {:>10.1} µs",
            p.p50_us, p.p99_us, p.max_us
        );
    };
    println!("store: {}, {} decisions", r.store, r.decisions);
    line("decision to wire", &r.decision_to_wire);
    line("one-row commit, same pool", &r.commit);
    line("overhead beyond one commit", &r.overhead_beyond_one_commit);
    line("process CPU per decision", &r.process_cpu_per_decision);
    line(
        &format!(
            "fan-out: 1 candle → {} profiles, {} threads",
            r.fan_out_profiles, r.fan_out_threads
        ),
        &r.fan_out,
    );
    line(
        &format!(
            "reconcile {} open orders, exchange excluded",
            r.reconcile_orders
        ),
        &r.reconcile_excluding_exchange,
    );
    line("  the exchange's part of it", &r.reconcile_exchange);
}

async fn open_store(url: Option<&str>, dir: &Path) -> anyhow::Result<Store> {
    match url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Store::connect_postgres(url, 4)
                .await
                .context("connecting to PostgreSQL")
        }
        Some(url) => bail!("--database-url must be postgres://…, not {url:?}"),
        None => Store::open_sqlite_scratch(&dir.join("bench.db"))
            .await
            .context("opening the scratch SQLite store"),
    }
}

fn symbol(i: u32) -> Symbol {
    Symbol::new(&format!("B{i}USDT")).expect("a valid symbol")
}

fn rules(symbol: &Symbol) -> SymbolRules {
    let increment = Decimal::new(1, 3);
    SymbolRules {
        symbol: symbol.clone(),
        tick_size: increment,
        step_size: increment,
        min_qty: increment,
        max_qty: Decimal::from(1_000_000),
        market_step_size: increment,
        market_min_qty: increment,
        market_max_qty: Decimal::from(1_000_000),
        min_notional: Decimal::ONE,
    }
}

fn candle(symbol: &Symbol, minute: i64, close: f64) -> Candle {
    Candle {
        symbol: symbol.clone(),
        open_time_ms: minute * 60_000,
        close_time_ms: minute * 60_000 + 59_999,
        open: close,
        high: close,
        low: close,
        close,
        volume: 1.0,
    }
}

async fn new_profile(store: &Store, capital: i64) -> anyhow::Result<(UserId, ProfileId)> {
    let user = UserId::new_random();
    let tenant = store.tenant(user);
    let profile = tenant.create_profile("bench-engine").await?;
    let amount = Amount::positive(Decimal::from(capital)).context("capital")?;
    store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .grant_budget(user, amount.get())
        .await?;
    tenant.allocate(profile, amount).await?;
    Ok((user, profile))
}

fn engine(
    store: &Store,
    exchange: Arc<dyn Exchange>,
    strategy: Box<dyn StrategyRuntime>,
    (user, profile): (UserId, ProfileId),
    symbols: impl IntoIterator<Item = Symbol>,
    metrics: &Arc<Metrics>,
) -> ProfileEngine {
    let limits = RiskLimits {
        symbols_allowed: symbols.into_iter().collect(),
        entry_notional_max: Decimal::from(1_000_000),
        positions_open_max: 1_000_000,
        leverage_max: Decimal::ONE,
        limit_price_band_bps: 500,
        intents_per_minute_max: 1_000_000,
        daily_loss_max: Decimal::from(1_000_000),
    };
    ProfileEngine::new(
        ProfileSpec {
            profile,
            user,
            limits,
        },
        EngineConfig {
            entry_lock_ttl_ms: LOCK_TTL_MS,
            ..EngineConfig::default()
        },
        store.clone(),
        exchange,
        strategy,
        Arc::new(VirtualClock::new(0)),
        metrics.clone(),
        Arc::new(HostSwitches::default()),
        OwnerToken::new_random(),
    )
}

/// The exchange of the benchmarks: `place` produces the signed REST request and refuses the
/// order; `open_orders` answers from a prepared list and times itself.
struct WireExchange {
    rules: Vec<SymbolRules>,
    wired_at: Mutex<Option<Stamp>>,
    wire_bytes: Mutex<usize>,
    open: Vec<OrderReport>,
    answering: Mutex<Duration>,
}

impl WireExchange {
    fn new(rules: Vec<SymbolRules>, open: Vec<OrderReport>) -> Self {
        WireExchange {
            rules,
            wired_at: Mutex::new(None),
            wire_bytes: Mutex::new(0),
            open,
            answering: Mutex::new(Duration::ZERO),
        }
    }

    fn take_wired(&self) -> Option<Stamp> {
        self.wired_at.lock().expect("lock poisoned").take()
    }

    fn take_answering(&self) -> Duration {
        std::mem::take(&mut *self.answering.lock().expect("lock poisoned"))
    }
}

/// A moment of a decision (its start, or its order's bytes existing): the wall clock, and the
/// CPU time the process had used by then.
#[derive(Clone, Copy)]
struct Stamp {
    at: Instant,
    cpu: Duration,
}

impl Stamp {
    fn now() -> Stamp {
        Stamp {
            at: Instant::now(),
            cpu: process_cpu(),
        }
    }
}

/// CPU time the whole process has used so far: every thread, user and system time.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The HMAC secret the benchmark signs with (nothing is sent anywhere).
const BENCH_SECRET: &str = "keel-bench-engine";

#[async_trait]
impl Exchange for WireExchange {
    fn name(&self) -> &str {
        "bench-wire"
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.rules
            .iter()
            .find(|r| &r.symbol == symbol)
            .cloned()
            .ok_or_else(|| ExchangeError::UnknownSymbol(symbol.clone()))
    }

    async fn place(&self, request: &OrderRequest) -> PlaceOutcome {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in order_params(request) {
            query.append_pair(key, &value);
        }
        query.append_pair("recvWindow", "5000");
        query.append_pair("timestamp", "1704067200000");
        let mut query = query.finish();
        let signature = hmac_sha256_hex(BENCH_SECRET, &query);
        query.push_str("&signature=");
        query.push_str(&signature);
        let bytes = query.into_bytes();
        *self.wired_at.lock().expect("lock poisoned") = Some(Stamp::now());
        *self.wire_bytes.lock().expect("lock poisoned") = bytes.len();
        PlaceOutcome::Rejected {
            code: codes::MARGIN_NOT_SUFFICIEN,
            msg: "Margin is insufficient.".to_owned(),
        }
    }

    async fn cancel(
        &self,
        _symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, ExchangeError> {
        Err(ExchangeError::Rejected {
            code: codes::CANCEL_REJECTED,
            msg: format!("unknown order {id}"),
        })
    }

    async fn order(
        &self,
        _symbol: &Symbol,
        _id: &ClientOrderId,
    ) -> Result<Option<OrderReport>, ExchangeError> {
        Ok(None)
    }

    async fn open_orders(
        &self,
        _symbol: Option<&Symbol>,
    ) -> Result<Vec<OrderReport>, ExchangeError> {
        let started = Instant::now();
        let open = self.open.clone();
        *self.answering.lock().expect("lock poisoned") += started.elapsed();
        Ok(open)
    }

    async fn fills(
        &self,
        _symbol: &Symbol,
        _id: &ClientOrderId,
    ) -> Result<Vec<Fill>, ExchangeError> {
        Ok(Vec::new())
    }

    async fn positions(&self) -> Result<Vec<Position>, ExchangeError> {
        Ok(Vec::new())
    }

    async fn balances(&self) -> Result<Vec<Balance>, ExchangeError> {
        Ok(Vec::new())
    }

    async fn user_events(&self) -> Result<mpsc::Receiver<UserEvent>, ExchangeError> {
        Ok(mpsc::channel(1).1)
    }

    async fn recent_candles(
        &self,
        symbol: &Symbol,
        _interval: Interval,
        _limit: usize,
    ) -> Result<Vec<Candle>, ExchangeError> {
        Err(ExchangeError::UnknownSymbol(symbol.clone()))
    }

    async fn candles(
        &self,
        symbol: &Symbol,
        _interval: Interval,
    ) -> Result<mpsc::Receiver<Candle>, ExchangeError> {
        Err(ExchangeError::UnknownSymbol(symbol.clone()))
    }
}

/// A strategy asking for one small market entry on every candle.
struct EnterEveryCandle;

impl StrategyRuntime for EnterEveryCandle {
    fn init(&mut self, _config: &[(String, String)]) -> Result<(), PluginFault> {
        Ok(())
    }

    fn on_candle(
        &mut self,
        candle: &Candle,
        _view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        Ok(vec![RawIntent::Entry(RawEntry {
            symbol: candle.symbol.to_string(),
            side: PositionSide::Long,
            size: RawSize::QuoteNotional(100.0),
            price: RawPrice::Market,
            stop_loss: None,
            take_profit: None,
            tag: "bench".to_owned(),
        })])
    }
}

struct Latency {
    decision_to_wire: Percentiles,
    commit: Percentiles,
    beyond_one: Percentiles,
    cpu: Percentiles,
}

/// A one-row UPDATE committed on its own, on the store's database.
struct Committer {
    pg: Option<sqlx::PgPool>,
    lite: Option<sqlx::SqlitePool>,
    key: String,
}

impl Committer {
    async fn new(store: &Store, dir: &Path) -> anyhow::Result<Committer> {
        let key = format!("bench-commit-{}", uuid::Uuid::new_v4());
        let insert = |fence: &str| {
            format!(
                "INSERT INTO entry_locks (lock_key, owner_token, fence, expires_at_ms, \
                 acquired_at_ms) VALUES ($1, $2, {fence}, 0, 0)"
            )
        };
        let owner = uuid::Uuid::new_v4();
        if let Some(pool) = store.pg_pool() {
            let pool = pool.clone();
            sqlx::query(&insert("nextval('lock_fence_seq')"))
                .bind(&key)
                .bind(owner)
                .execute(&pool)
                .await?;
            return Ok(Committer {
                pg: Some(pool),
                lite: None,
                key,
            });
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("bench.db"))
            .synchronous(sqlx::sqlite::SqliteSynchronous::Off)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::SqlitePool::connect_with(options).await?;
        sqlx::query(&insert("0"))
            .bind(&key)
            .bind(owner)
            .execute(&pool)
            .await?;
        Ok(Committer {
            pg: None,
            lite: Some(pool),
            key,
        })
    }

    async fn commit(&self) -> anyhow::Result<Duration> {
        let sql = "UPDATE entry_locks SET acquired_at_ms = acquired_at_ms + 1 WHERE lock_key = $1";
        let started = Instant::now();
        if let Some(pool) = &self.pg {
            sqlx::query(sql).bind(&self.key).execute(pool).await?;
        } else if let Some(pool) = &self.lite {
            sqlx::query(sql).bind(&self.key).execute(pool).await?;
        }
        Ok(started.elapsed())
    }
}

async fn decision_to_wire(store: &Store, dir: &Path, decisions: u32) -> anyhow::Result<Latency> {
    let btc = symbol(0);
    let exchange = Arc::new(WireExchange::new(vec![rules(&btc)], Vec::new()));
    let metrics = Arc::new(Metrics::new());
    let ids = new_profile(store, 1_000_000).await?;
    let mut engine = engine(
        store,
        exchange.clone(),
        Box::new(EnterEveryCandle),
        ids,
        [btc.clone()],
        &metrics,
    );
    engine
        .recover()
        .await
        .context("recovering the benchmark profile")?;
    let committer = Committer::new(store, dir).await?;
    let (mut wire, mut commit, mut beyond_one, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for minute in 0..i64::from(WARM_UP_DECISIONS + decisions) {
        let candle = candle(&btc, minute, 100.0);
        let started = Stamp::now();
        let outcome = engine.on_candle(&candle).await?;
        let wired = exchange
            .take_wired()
            .with_context(|| format!("decision {minute} sent nothing: {outcome:?}"))?;
        let latency = wired.at - started.at;
        let committed = committer.commit().await?;
        if minute >= i64::from(WARM_UP_DECISIONS) {
            wire.push(latency);
            commit.push(committed);
            beyond_one.push(latency.saturating_sub(committed));
            cpu.push(wired.cpu.saturating_sub(started.cpu));
        }
    }
    Ok(Latency {
        decision_to_wire: Percentiles::of(wire),
        commit: Percentiles::of(commit),
        beyond_one: Percentiles::of(beyond_one),
        cpu: Percentiles::of(cpu),
    })
}

fn fan_out(store: &Store, profiles: u32, candles: u32) -> anyhow::Result<Percentiles> {
    let btc = symbol(0);
    let exchange: Arc<dyn Exchange> = Arc::new(WireExchange::new(vec![rules(&btc)], Vec::new()));
    let metrics = Arc::new(Metrics::new());
    // As in `keel serve`: engines fed the same candles share one warm-up history.
    let history = Arc::new(CandleHistory::new(WARM_UP_CANDLES_DEFAULT));
    let mut engines = Vec::with_capacity(profiles as usize);
    for _ in 0..profiles {
        let mut strategy = NativeSmaCross::new();
        strategy
            .init(&[])
            .map_err(|fault| anyhow::anyhow!("sma-cross init: {fault}"))?;
        let ids = (UserId::new_random(), ProfileId::new_random());
        let mut engine = engine(
            store,
            exchange.clone(),
            Box::new(strategy),
            ids,
            [btc.clone()],
            &metrics,
        );
        engine.share_history(history.clone());
        engines.push(engine);
    }
    let chunk = engines.len().div_ceil(FAN_OUT_THREADS);
    let mut samples = Vec::with_capacity(candles as usize);
    for minute in 0..i64::from(candles) {
        let candle = candle(&btc, minute, 100.0);
        let started = Instant::now();
        let sent = std::thread::scope(|scope| {
            let workers: Vec<_> = engines
                .chunks_mut(chunk)
                .map(|group| {
                    let candle = &candle;
                    scope.spawn(move || {
                        let mut sent = 0;
                        for engine in group {
                            let outcome = futures::executor::block_on(engine.on_candle(candle));
                            sent += outcome.map_or(1, |o| o.orders_sent.len());
                        }
                        sent
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a fan-out worker panicked"))
                .sum::<usize>()
        });
        samples.push(started.elapsed());
        if sent != 0 {
            bail!(
                "the fan-out candle {minute} led to {sent} orders or errors; it must lead to none"
            );
        }
    }
    Ok(Percentiles::of(samples))
}

/// Fills the store with `orders` open ENTRY orders of one profile (one symbol each), accepted
/// by the exchange, and returns the exchange's matching open-order list.
async fn open_orders(
    store: &Store,
    (user, profile): (UserId, ProfileId),
    orders: u32,
) -> anyhow::Result<Vec<OrderReport>> {
    let owner = OwnerToken::new_random();
    let one = |i: u32| async move {
        let symbol = symbol(i);
        let id = ClientOrderId::derive(profile, &symbol, u64::from(i), IntentKind::Entry);
        let key = LockKey::entry(profile, &symbol);
        let lease = store
            .locks()
            .acquire(LockKind::Entry, &key, owner, LOCK_TTL_MS)
            .await?
            .context("a fresh entry lock is free")?;
        let price = Price::new(Decimal::ONE)?;
        let qty = Qty::new(Decimal::ONE)?;
        let tenant = store.tenant(user);
        tenant
            .write_ahead_entry(&EntryRequest {
                profile,
                client_order_id: id.clone(),
                symbol: symbol.clone(),
                side: Side::Buy,
                qty,
                price,
                lock: lease.fenced(),
            })
            .await?;
        let exchange_id = ExchangeOrderId(i64::from(i) + 1);
        tenant
            .confirm_accepted(&id, &exchange_id.to_string())
            .await?;
        store.locks().release(&lease).await?;
        anyhow::Ok(OrderReport {
            client_order_id: id,
            exchange_order_id: exchange_id,
            symbol,
            side: Side::Buy,
            order_type: OrderType::Limit { price },
            status: OrderStatus::New,
            orig_qty: qty,
            executed_qty: Decimal::ZERO,
            avg_price: None,
            reduce_only: false,
            update_time_ms: 0,
        })
    };
    let reports: Vec<anyhow::Result<OrderReport>> = futures::stream::iter(0..orders)
        .map(one)
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let mut reports = reports.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    reports.sort_by_key(|r| r.exchange_order_id);
    Ok(reports)
}

async fn reconciliation(store: &Store, orders: u32) -> anyhow::Result<(Percentiles, Percentiles)> {
    let ids = new_profile(store, i64::from(orders) * 2).await?;
    let reports = open_orders(store, ids, orders).await?;
    let symbols: BTreeSet<Symbol> = reports.iter().map(|r| r.symbol.clone()).collect();
    let rules_list = symbols.iter().map(rules).collect();
    let exchange = Arc::new(WireExchange::new(rules_list, reports));
    let metrics = Arc::new(Metrics::new());
    let mut engine = engine(
        store,
        exchange.clone(),
        Box::new(EnterEveryCandle),
        ids,
        symbols,
        &metrics,
    );
    let (mut kernel, mut answering) = (Vec::new(), Vec::new());
    for pass in 0..=RECONCILE_PASSES {
        exchange.take_answering();
        let started = Instant::now();
        let report = engine.reconcile().await?;
        let total = started.elapsed();
        let exchange_time = exchange.take_answering();
        if !report.is_clean() {
            bail!("reconciliation pass {pass} was not clean: {report:?}");
        }
        if engine.book().open_orders.len() != orders as usize {
            bail!(
                "the book holds {} open orders after the pass, not {orders}",
                engine.book().open_orders.len()
            );
        }
        // The first pass warms the connection and the statement cache.
        if pass > 0 {
            kernel.push(total.saturating_sub(exchange_time));
            answering.push(exchange_time);
        }
    }
    Ok((Percentiles::of(kernel), Percentiles::of(answering)))
}
