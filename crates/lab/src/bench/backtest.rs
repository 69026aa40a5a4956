//! `keel bench backtest`: candles per second of a whole backtest of sma-cross, the peak memory
//! of the run, and what one order round trip through the same store costs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keel_kernel::ids::{ClientOrderId, IntentKind, Symbol, UserId};
use keel_kernel::lifecycle::{EntryRequest, ExitRequest, FillReport};
use keel_kernel::lock::{LockKey, LockKind, OwnerToken};
use keel_kernel::market::Side;
use keel_kernel::money::{Amount, Price, Qty};
use keel_kernel::store::Store;
use rust_decimal::Decimal;
use serde_json::json;

use keel_backtest::run::{BacktestSpec, BacktestStore, load_inputs, open_store, run_backtest};
use keel_backtest::synthetic::random_walk;

/// Lease TTL of the entry lock the round trips run under: longer than any run.
const ROUND_TRIP_LOCK_TTL_MS: i64 = 600_000;

/// Arguments of `keel bench backtest`.
#[derive(Debug, clap::Args)]
pub struct BacktestBenchArgs {
    /// How many generated one-minute candles the backtest runs over.
    #[arg(long, default_value_t = 1_000_000)]
    pub candles: usize,
    /// Where the example plugins were built.
    #[arg(long, default_value = "plugins-example/target/wasm32-wasip2/release")]
    pub plugins_dir: PathBuf,
    /// Where the backtest's kernel store lives: `memory` (the default), `sqlite`, `file` or
    /// `worker` (see `keel backtest --help`).
    #[arg(long, value_enum, default_value_t = BacktestStore::Memory)]
    pub store: BacktestStore,
    /// Order round trips timed on a fresh store of the same kind after the backtest (0: none).
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs sma-cross over generated candles through the whole path (plugin load and compile, the
/// profile engine, the store, paper exchange, report) and prints candles per second and the
/// process's peak resident memory; then times order round trips through the store alone.
pub async fn run(args: BacktestBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.candles > 0, "--candles must be positive");
    let plugin = args.plugins_dir.join("sma_cross.wasm");
    let (bytes, name) = load_inputs(&plugin).with_context(|| {
        format!(
            "{}: build the plugins with scripts/build-plugins",
            plugin.display()
        )
    })?;
    let symbol = Symbol::new("BTCUSDT").expect("valid");
    let spec = BacktestSpec {
        plugin: bytes,
        plugin_name: name,
        candles: random_walk(&symbol, args.candles, 1),
        symbol,
        config: Vec::new(),
        capital: Decimal::from(10_000),
        fee_bps: Decimal::from(4),
        partial_fill_probability: 0.0,
        store: args.store,
        seed: 1,
        notional_max: None,
        slippage_reserve_bps: 100,
    };
    let started = Instant::now();
    let report = run_backtest(&spec, false).await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = super::proc_status_bytes("VmHWM")? as f64 / (1024.0 * 1024.0);
    drop(spec);
    let candles_per_sec = args.candles as f64 / seconds;
    let round_trip_us = match args.round_trips {
        0 => None,
        count => {
            let (store, _dir) = open_store(args.store).await?;
            let took = order_round_trips(&store, count).await?;
            Some(took.as_secs_f64() * 1e6 / f64::from(count))
        }
    };
    let store = format!("{:?}", args.store).to_lowercase();
    if args.json {
        let out = json!({
            "bench": "backtest",
            "plugin": "sma-cross",
            "candles": args.candles,
            "store": store,
            "trades": report.summary.trades,
            "seconds": seconds,
            "candles_per_sec": candles_per_sec,
            "peak_rss_mib": peak_rss_mib,
            "round_trips": args.round_trips,
            "round_trip_us": round_trip_us,
        });
        println!("{out}");
    } else {
        println!(
            "backtest sma-cross ({store} store): {} candles, {} trades in {seconds:.3} s: \
             {candles_per_sec:.0} candles/s, peak resident memory {peak_rss_mib:.1} MiB",
            args.candles, report.summary.trades
        );
        if let Some(us) = round_trip_us {
            println!(
                "order round trip through the {store} store: {us:.2} µs ({} round trips)",
                args.round_trips
            );
        }
    }
    Ok(())
}

/// Times `count` order round trips through `store` alone, as the engine makes them for one
/// trade: the entry lock taken in the write-ahead's transaction, the ENTRY written ahead,
/// accepted and filled, the lock released, then the EXIT written ahead, accepted and filled.
async fn order_round_trips(store: &Store, count: u32) -> anyhow::Result<Duration> {
    let user = UserId::new_random();
    let tenant = store.tenant(user);
    let profile = tenant.create_profile("bench").await?;
    let capital = Amount::positive(Decimal::from(1_000_000_000_i64))?;
    store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .grant_budget(user, capital.get())
        .await?;
    tenant.allocate(profile, capital).await?;
    let symbol = Symbol::new("BTCUSDT")?;
    let key = LockKey::entry(profile, &symbol);
    let owner = OwnerToken::new_random();
    let qty = Qty::new(Decimal::ONE)?;
    let (buy, sell) = (
        Price::new(Decimal::from(100))?,
        Price::new(Decimal::from(101))?,
    );
    let fee = Decimal::new(4, 2);
    let fill = |order: &ClientOrderId, trade: String, price: Price| FillReport {
        client_order_id: order.clone(),
        exchange_trade_id: trade,
        qty,
        price,
        fee,
        executed_at_ms: 0,
    };
    let started = Instant::now();
    for seq in 0..u64::from(count) {
        let entry = ClientOrderId::derive(profile, &symbol, seq, IntentKind::Entry);
        let mut tx = tenant.begin().await?;
        let lease = tx
            .acquire_lock(LockKind::Entry, &key, owner, ROUND_TRIP_LOCK_TTL_MS)
            .await?
            .context("the entry lock is free between round trips")?;
        tx.write_ahead_entry(&EntryRequest {
            profile,
            client_order_id: entry.clone(),
            symbol: symbol.clone(),
            side: Side::Buy,
            qty,
            price: buy,
            lock: lease.fenced(),
        })
        .await?;
        tx.commit().await?;
        tenant.confirm_accepted(&entry, &format!("e{seq}")).await?;
        tenant
            .record_fill(&fill(&entry, format!("te{seq}"), buy))
            .await?;
        store.locks().release(&lease).await?;
        let exit = ClientOrderId::derive(profile, &symbol, seq, IntentKind::Exit);
        tenant
            .write_ahead_exit(&ExitRequest {
                profile,
                client_order_id: exit.clone(),
                symbol: symbol.clone(),
                qty,
                price: sell,
            })
            .await?;
        tenant.confirm_accepted(&exit, &format!("x{seq}")).await?;
        tenant
            .record_fill(&fill(&exit, format!("tx{seq}"), sell))
            .await?;
    }
    Ok(started.elapsed())
}
