//! `keel simulate`: the deterministic simulation of the kernel under faults.
//!
//! Each seed builds a world (see [`world`]): the real [`ProfileEngine`] over a memory store or a
//! scratch SQLite file (`--store`, see [`database`]), the paper exchange behind a fault injector
//! ([`faults`]), a virtual clock, a seeded
//! strategy and a second host instance. Faults — lost acknowledgements, unknown answers that did
//! execute, dropped requests, failed queries, dropped, duplicated, delayed and reordered events,
//! host crashes before and after a submission and between steps, failed transactions, lapsed
//! locks, a second instance deciding on the same candle — are drawn from generators seeded by
//! the seed, so a seed replays exactly. After every step every invariant of docs/invariants.md
//! is checked ([`invariants`]); at the end faults stop and the database must equal the exchange.
//!
//! `--plant` switches one protection off (see [`keel_kernel::plant`]): the run must then report
//! violations. docs/testing.md says how to run millions of seeds and how to replay one.
//!
//! [`ProfileEngine`]: keel_kernel::engine::ProfileEngine

mod database;
mod faults;
mod invariants;
mod strategy;
mod world;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use keel_kernel::plant::Plant;
use serde::Serialize;

pub use database::StoreKind;
pub use invariants::Violation;

/// The most seeds run at once.
pub const JOBS_MAX: usize = 64;
/// The most steps one seed runs.
pub const STEPS_MAX: u32 = 100_000;
/// Violations printed in full; the rest are counted.
pub const VIOLATIONS_LISTED_MAX: usize = 100;

/// `keel simulate` arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// How many seeds to run, from `--first-seed` up.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed of the range (shard a large run by giving each process its own range).
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Replay exactly this one seed (overrides `--seeds` and `--first-seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps (one candle per symbol each) per seed.
    #[arg(long, default_value_t = 200)]
    pub steps: u32,
    /// Switch one protection off: lock-disabled, ledger-check-disabled or fill-dedup-disabled.
    /// The run then succeeds only if it reports violations.
    #[arg(long)]
    pub plant: Option<Plant>,
    /// Seeds run at once, each in a task of its own (each has its own database and exchange).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// The store the host runs on: the memory store (fast, for depth) or a scratch SQLite file
    /// per seed (the schema's constraints and triggers). Every fault and plant applies to both.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What a run found: the JSON `keel simulate --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulationReport {
    /// Seeds run.
    pub seeds: u64,
    /// The first seed.
    pub first_seed: u64,
    /// Steps per seed asked for.
    pub steps: u32,
    /// Steps run over all seeds (a seed stops at its first violation).
    pub steps_run: u64,
    /// The planted bug, if any.
    pub plant: Option<String>,
    /// The store the host ran on.
    pub store: &'static str,
    /// Faults injected in total.
    pub faults_injected: u64,
    /// Faults injected by kind.
    pub faults_by_kind: BTreeMap<&'static str, u64>,
    /// Invariant evaluations.
    pub invariant_checks: u64,
    /// Orders that reached the exchange.
    pub orders_sent: u64,
    /// Host restarts (crashes included).
    pub restarts: u64,
    /// How many violations were found.
    pub violations_total: u64,
    /// Seeds with at least one violation.
    pub failing_seeds: Vec<u64>,
    /// The violations (the first [`VIOLATIONS_LISTED_MAX`]).
    pub violations: Vec<Violation>,
}

impl SimulationReport {
    /// True when the run did what it should: no violation, or — with a plant — at least one.
    pub fn passed(&self) -> bool {
        match self.plant {
            None => self.violations_total == 0,
            Some(_) => self.violations_total > 0,
        }
    }
}

/// Runs the seeds of `args` and reports.
pub async fn simulate(args: &SimulateArgs) -> anyhow::Result<SimulationReport> {
    let (first_seed, seeds) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.first_seed, args.seeds),
    };
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if first_seed.checked_add(seeds).is_none() {
        bail!("--first-seed {first_seed} plus --seeds {seeds} overflows");
    }
    if args.steps == 0 || args.steps > STEPS_MAX {
        bail!("--steps must be 1 to {STEPS_MAX}, not {}", args.steps);
    }
    if args.jobs == 0 || args.jobs > JOBS_MAX {
        bail!("--jobs must be 1 to {JOBS_MAX}, not {}", args.jobs);
    }
    let dir = tempfile::tempdir().context("creating the simulation's temporary directory")?;
    let mut report = SimulationReport {
        seeds,
        first_seed,
        steps: args.steps,
        steps_run: 0,
        plant: args.plant.map(|p| p.to_string()),
        store: args.store.as_str(),
        faults_injected: 0,
        faults_by_kind: BTreeMap::new(),
        invariant_checks: 0,
        orders_sent: 0,
        restarts: 0,
        violations_total: 0,
        failing_seeds: Vec::new(),
        violations: Vec::new(),
    };
    let plan = Arc::new(world::SeedPlan {
        steps: args.steps,
        plant: args.plant,
        store: args.store,
        dir: Arc::from(dir.path()),
    });
    // Each seed runs on a thread of its own, so seeds use every core; `buffered` starts at most
    // `jobs` at once and hands their outcomes back in seed order.
    let mut outcomes = futures::stream::iter(first_seed..first_seed + seeds)
        .map(|seed| {
            let plan = Arc::clone(&plan);
            let task = tokio::task::spawn_blocking(move || run_seed_on_this_thread(seed, &plan));
            async move {
                let outcome = match task.await {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        Err(anyhow::Error::new(error).context("the seed's thread failed"))
                    }
                };
                (seed, outcome.with_context(|| format!("seed {seed}")))
            }
        })
        .buffered(args.jobs);
    while let Some((seed, outcome)) = outcomes.next().await {
        let outcome = outcome?;
        report.steps_run += u64::from(outcome.steps);
        for (kind, count) in outcome.faults {
            report.faults_injected += count;
            *report.faults_by_kind.entry(kind).or_default() += count;
        }
        report.invariant_checks += outcome.invariant_checks;
        report.orders_sent += outcome.orders_sent;
        report.restarts += u64::from(outcome.restarts);
        if !outcome.violations.is_empty() {
            report.failing_seeds.push(seed);
        }
        report.violations_total += outcome.violations.len() as u64;
        let room = VIOLATIONS_LISTED_MAX.saturating_sub(report.violations.len());
        report
            .violations
            .extend(outcome.violations.into_iter().take(room));
    }
    Ok(report)
}

/// Runs one seed to its end on the calling thread. A world is driven by one task and is not
/// shared (its engine's strategy is `Send` but not `Sync`), so each seed gets a runtime of its
/// own rather than a task on the caller's.
fn run_seed_on_this_thread(
    seed: u64,
    plan: &world::SeedPlan,
) -> anyhow::Result<world::SeedOutcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the seed's runtime")?;
    runtime.block_on(world::run_seed(seed, plan))
}

/// `keel simulate`: prints the report (the text adds the wall time, seeds per second and the
/// ratio of simulated to wall time); fails when the run did not pass (see
/// [`SimulationReport::passed`]).
pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let report = simulate(&args).await?;
    let wall = started.elapsed();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report, wall);
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl SimulationReport {
    /// Simulated time over all seeds: a minute of market per step run.
    pub fn virtual_time(&self) -> Duration {
        let step_ms = u64::try_from(world::STEP_MS).expect("a positive step");
        Duration::from_millis(self.steps_run.saturating_mul(step_ms))
    }

    /// The command that replays `seed` of this run.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut command = format!(
            "keel simulate --seed {seed} --steps {} --store {}",
            self.steps, self.store
        );
        if let Some(plant) = &self.plant {
            command.push_str(&format!(" --plant {plant}"));
        }
        command
    }
}

fn print_text(report: &SimulationReport, wall: Duration) {
    let plant = report.plant.as_deref().unwrap_or("none");
    println!(
        "seeds {}..{} × {} steps (store: {}, plant: {plant}): {} steps run, {} faults injected, {} invariant checks, {} orders sent, {} restarts",
        report.first_seed,
        report.first_seed + report.seeds,
        report.steps,
        report.store,
        report.steps_run,
        report.faults_injected,
        report.invariant_checks,
        report.orders_sent,
        report.restarts,
    );
    let wall_s = wall.as_secs_f64().max(f64::EPSILON);
    println!(
        "wall {wall_s:.1} s: {:.1} seeds/s, {:.0}× virtual time",
        report.seeds as f64 / wall_s,
        report.virtual_time().as_secs_f64() / wall_s,
    );
    for (kind, count) in &report.faults_by_kind {
        println!("  {kind:<28} {count}");
    }
    println!("violations: {}", report.violations_total);
    for v in &report.violations {
        let at = v.step.map_or("end".to_owned(), |s| format!("step {s}"));
        println!("  seed {} {at}: {}: {}", v.seed, v.invariant, v.detail);
    }
    println!("failing seeds: {}", report.failing_seeds.len());
    for &seed in report.failing_seeds.iter().take(VIOLATIONS_LISTED_MAX) {
        println!("  replay: {}", report.replay_command(seed));
    }
    let unlisted = report
        .failing_seeds
        .len()
        .saturating_sub(VIOLATIONS_LISTED_MAX);
    if unlisted > 0 {
        println!("  … and {unlisted} more (every one is in --json's failing_seeds)");
    }
}
