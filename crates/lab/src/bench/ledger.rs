//! `keel bench ledger`: what the ledger's two-commit ENTRY lifecycle costs against the cheapest
//! transaction the same server can commit.
//!
//! Two phases in one run, alternating in slices, on the same server and with the same number of
//! workers: (1) plain single-row UPDATE transactions, each worker on its own row, and (2) full
//! ENTRY lifecycles — the write-ahead transaction (order row + reservation, fence checked) and
//! the confirmation transaction (fill, lifecycle row, trade history, ledger moves) — spread over
//! many profiles. Since a lifecycle is two commits, `commit_efficiency = 2 × lifecycles_per_sec ÷
//! raw_update_tx_per_sec` is 1.0 at the physical limit.
//!
//! Run it against a scratch database migrated with `keel migrate`: it adds profiles and orders.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_kernel::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use keel_kernel::lifecycle::{EntryRequest, FillReport};
use keel_kernel::lock::{Lease, LockKey, LockKind, OwnerToken};
use keel_kernel::market::Side;
use keel_kernel::money::{Amount, Price, Qty};
use keel_kernel::store::Store;
use rust_decimal::Decimal;
use serde::Serialize;

/// The most workers a run may ask for.
pub const CONCURRENCY_MAX: usize = 256;
/// The longest phase a run may ask for.
pub const PHASE_MS_MAX: u64 = 600_000;
/// The most alternations of the two phases a run may ask for.
pub const ROUNDS_MAX: u32 = 100;
/// Latency samples kept per run; beyond it the p99 is taken over the first samples.
const LATENCY_SAMPLES_MAX: usize = 2_000_000;
/// Lease TTL of the entry locks the lifecycles run under: longer than any phase.
const BENCH_LOCK_TTL_MS: i64 = 600_000;

/// Options of `keel bench ledger`.
#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// PostgreSQL URL of the host role, on a database migrated with `keel migrate`.
    #[arg(long, env = "KEEL_DATABASE_URL")]
    pub database_url: String,
    /// Workers running transactions at the same time.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Length of each phase, milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub phase_ms: u64,
    /// Profiles the lifecycles are spread over (each its own user).
    #[arg(long, default_value_t = 64)]
    pub profiles: usize,
    /// The phases alternate this many times (each slice `phase_ms / rounds` long), so that both
    /// see the same background load on a shared machine.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct LedgerReport {
    /// Full ENTRY lifecycles (two commits each) per second.
    pub lifecycles_per_sec: f64,
    /// Single-row UPDATE transactions per second.
    pub raw_update_tx_per_sec: f64,
    /// `2 × lifecycles_per_sec ÷ raw_update_tx_per_sec`.
    pub commit_efficiency: f64,
    /// 99th percentile of one lifecycle, milliseconds.
    pub lifecycle_ms_p99: f64,
    /// Median of one lifecycle, milliseconds.
    pub lifecycle_ms_p50: f64,
    /// Workers.
    pub concurrency: usize,
    /// Profiles the lifecycles were spread over.
    pub profiles: usize,
    /// Length of each phase, milliseconds.
    pub phase_ms: u64,
    /// Alternations of the two phases.
    pub rounds: u32,
    /// Lifecycles completed.
    pub lifecycles: u64,
    /// UPDATE transactions completed.
    pub raw_update_txs: u64,
    /// The server's `synchronous_commit` during the run.
    pub synchronous_commit: String,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: LedgerArgs) -> anyhow::Result<()> {
    if !(args.database_url.starts_with("postgres://")
        || args.database_url.starts_with("postgresql://"))
    {
        bail!("the ledger benchmark runs on PostgreSQL: --database-url must be postgres://…");
    }
    if !(1..=CONCURRENCY_MAX).contains(&args.concurrency) {
        bail!(
            "--concurrency must be 1 to {CONCURRENCY_MAX}, got {}",
            args.concurrency
        );
    }
    if !(100..=PHASE_MS_MAX).contains(&args.phase_ms) {
        bail!(
            "--phase-ms must be 100 to {PHASE_MS_MAX}, got {}",
            args.phase_ms
        );
    }
    if !(1..=ROUNDS_MAX).contains(&args.rounds) {
        bail!("--rounds must be 1 to {ROUNDS_MAX}, got {}", args.rounds);
    }
    if args.profiles < args.concurrency {
        bail!(
            "--profiles ({}) must be at least --concurrency ({})",
            args.profiles,
            args.concurrency
        );
    }
    let connections = u32::try_from(args.concurrency + 2).context("concurrency fits u32")?;
    let store = Store::connect_postgres(&args.database_url, connections)
        .await
        .context("connecting to the benchmark database as the host role")?;
    let report = measure(&store, &args).await?;
    store.close().await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}

async fn measure(store: &Store, args: &LedgerArgs) -> anyhow::Result<LedgerReport> {
    let pool = store
        .pg_pool()
        .context("the ledger benchmark runs on PostgreSQL")?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await
        .context("reading synchronous_commit")?;
    let slice = Duration::from_millis(args.phase_ms) / args.rounds;
    let profiles = setup_profiles(store, args.profiles).await?;
    let (mut raw_update_txs, mut lifecycles, mut latencies_us) = (0, 0, Vec::new());
    let mut next_symbol = 0;
    for _ in 0..args.rounds {
        raw_update_txs += raw_updates(store, args.concurrency, slice).await?;
        let (done, latencies) =
            run_lifecycles(store, &profiles, args.concurrency, slice, next_symbol).await?;
        lifecycles += done;
        next_symbol += done + 1;
        latencies_us.extend(latencies);
    }
    let phase = slice * args.rounds;
    latencies_us.sort_unstable();
    let seconds = phase.as_secs_f64();
    let lifecycles_per_sec = lifecycles as f64 / seconds;
    let raw_update_tx_per_sec = raw_update_txs as f64 / seconds;
    Ok(LedgerReport {
        lifecycles_per_sec,
        raw_update_tx_per_sec,
        commit_efficiency: 2.0 * lifecycles_per_sec / raw_update_tx_per_sec,
        lifecycle_ms_p99: percentile_ms(&latencies_us, 0.99),
        lifecycle_ms_p50: percentile_ms(&latencies_us, 0.50),
        concurrency: args.concurrency,
        profiles: args.profiles,
        phase_ms: args.phase_ms,
        rounds: args.rounds,
        lifecycles,
        raw_update_txs,
        synchronous_commit,
    })
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us[index] as f64 / 1_000.0
}

/// Phase 1: each worker commits single-row UPDATEs of its own row (a lock row keyed for it).
async fn raw_updates(store: &Store, concurrency: usize, phase: Duration) -> anyhow::Result<u64> {
    let pool = store.pg_pool().context("postgres")?.clone();
    let run = uuid::Uuid::new_v4();
    let keys: Vec<String> = (0..concurrency)
        .map(|w| format!("bench:raw:{run}:{w}"))
        .collect();
    for key in &keys {
        sqlx::query(
            "INSERT INTO entry_locks (lock_key, owner_token, fence, expires_at_ms, acquired_at_ms) \
             VALUES ($1, $2, nextval('lock_fence_seq'), 0, 0)",
        )
        .bind(key)
        .bind(run)
        .execute(&pool)
        .await
        .context("creating the rows of the raw UPDATE phase")?;
    }
    let deadline = Instant::now() + phase;
    let workers = keys.iter().cloned().map(|key| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < deadline {
                sqlx::query("UPDATE entry_locks SET acquired_at_ms = acquired_at_ms + 1 WHERE lock_key = $1")
                    .bind(&key)
                    .execute(&pool)
                    .await?;
                done += 1;
            }
            Ok::<u64, sqlx::Error>(done)
        })
    });
    let mut total = 0;
    for worker in workers.collect::<Vec<_>>() {
        total += worker.await.context("raw UPDATE worker")??;
    }
    sqlx::query("DELETE FROM entry_locks WHERE lock_key LIKE $1")
        .bind(format!("bench:raw:{run}:%"))
        .execute(&pool)
        .await?;
    Ok(total)
}

/// A profile the lifecycles run on, with the entry lock they run under.
#[derive(Clone)]
struct BenchProfile {
    user: UserId,
    profile: ProfileId,
    lease: Lease,
}

async fn setup_profiles(store: &Store, count: usize) -> anyhow::Result<Vec<BenchProfile>> {
    let allocation = Amount::positive(Decimal::from(1_000_000_000_i64))?;
    let mut profiles = Vec::with_capacity(count);
    for _ in 0..count {
        let user = UserId::new_random();
        let tenant = store.tenant(user);
        let profile = tenant.create_profile("bench").await?;
        store
            .operator(keel_kernel::store::HOST_OPERATOR)
            .grant_budget(user, allocation.get())
            .await?;
        tenant.allocate(profile, allocation).await?;
        let key = LockKey::new(&format!("bench:entry:{profile}"))?;
        let lease = store
            .locks()
            .acquire(
                LockKind::Entry,
                &key,
                OwnerToken::new_random(),
                BENCH_LOCK_TTL_MS,
            )
            .await?
            .context("a fresh benchmark lock is free")?;
        profiles.push(BenchProfile {
            user,
            profile,
            lease,
        });
    }
    Ok(profiles)
}

/// Phase 2: each worker runs full ENTRY lifecycles on its share of the profiles, each on a new
/// symbol so that no two lifecycles of a profile collide.
async fn run_lifecycles(
    store: &Store,
    profiles: &[BenchProfile],
    concurrency: usize,
    phase: Duration,
    first_symbol: u64,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let deadline = Instant::now() + phase;
    let shares: Vec<Vec<BenchProfile>> = (0..concurrency)
        .map(|w| {
            profiles
                .iter()
                .skip(w)
                .step_by(concurrency)
                .cloned()
                .collect()
        })
        .collect();
    let samples_per_worker = LATENCY_SAMPLES_MAX / concurrency / ROUNDS_MAX as usize;
    let workers = shares.into_iter().enumerate().map(|(w, share)| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0_u64;
            while Instant::now() < deadline {
                let target = &share[n as usize % share.len()];
                let started = Instant::now();
                one_lifecycle(&store, target, w, first_symbol + n).await?;
                if latencies.len() < samples_per_worker {
                    latencies
                        .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
                n += 1;
            }
            Ok::<(u64, Vec<u64>), anyhow::Error>((n, latencies))
        })
    });
    let mut total = 0;
    let mut all = Vec::new();
    for worker in workers.collect::<Vec<_>>() {
        let (n, latencies) = worker.await.context("lifecycle worker")??;
        total += n;
        all.extend(latencies);
    }
    Ok((total, all))
}

async fn one_lifecycle(
    store: &Store,
    target: &BenchProfile,
    worker: usize,
    n: u64,
) -> anyhow::Result<()> {
    let symbol = Symbol::new(&format!("B{worker}X{n}"))?;
    let coid = ClientOrderId::derive(target.profile, &symbol, n, IntentKind::Entry);
    let request = EntryRequest {
        profile: target.profile,
        client_order_id: coid.clone(),
        symbol,
        side: Side::Buy,
        qty: Qty::new(Decimal::ONE)?,
        price: Price::new(Decimal::from(100))?,
        lock: target.lease.fenced(),
    };
    let tenant = store.tenant(target.user);
    tenant.write_ahead_entry(&request).await?;
    let fill = FillReport {
        client_order_id: coid,
        exchange_trade_id: format!("bench-{worker}-{n}"),
        qty: request.qty,
        price: request.price,
        fee: Decimal::new(4, 2),
        executed_at_ms: 0,
    };
    tenant.record_fill(&fill).await?;
    Ok(())
}
