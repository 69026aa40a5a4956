//! `keel bench plugin`: the plugin runtime's speed and memory, measured in one run with fuel
//! metering and epoch deadlines on, as in production.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use keel_kernel::engine::VirtualClock;
use keel_kernel::ids::{ProfileId, Symbol};
use keel_kernel::market::Candle;
use keel_kernel::strategy::{AccountView, StrategyRuntime};

use crate::native::NativeSmaCross;
use keel_runtime::{EngineSettings, InstanceSetup, PluginEngine, PluginVersion};

/// Calls measured per on-candle figure (after as many warm-up calls).
const CALLS_MEASURED: usize = 200_000;
/// Instances created for the instantiation figure.
const INSTANTIATIONS_MEASURED: usize = 2_000;
/// Hot-swaps measured.
const SWAPS_MEASURED: usize = 200;
/// The most instances the memory figure may hold.
const INSTANCES_MAX: u32 = 20_000;
/// The sma-cross settings measured.
const SMA_CONFIG: [(&str, &str); 4] = [
    ("fast", "10"),
    ("slow", "30"),
    ("mode", "long-short"),
    ("size_fraction", "0.1"),
];

/// The figures, one JSON object.
#[derive(Debug, serde::Serialize)]
struct PluginBench {
    wasm_on_candle_ns_median: u64,
    wasm_on_candle_ns_p99: u64,
    boundary_ns_median: u64,
    native_on_candle_ns_median: u64,
    instantiate_us_median: f64,
    /// An instance started and dropped: what churn costs, the reset of its slot included.
    instantiate_drop_us_median: f64,
    /// The same two on an engine that returns a freed slot's pages to the kernel
    /// (`keep_resident_bytes` 0), measured in the same run for the ratio.
    released_instantiate_us_median: f64,
    released_instantiate_drop_us_median: f64,
    hot_swap_ms_median: f64,
    instances: u32,
    rss_bytes_per_instance: u64,
    /// What each freed slot still holds once the live instances are dropped.
    rss_bytes_per_freed_slot: i64,
}

pub fn plugin(plugins_dir: &Path, instances: u32, json: bool) -> anyhow::Result<ExitCode> {
    if instances == 0 || instances > INSTANCES_MAX {
        bail!("--instances must be in 1..={INSTANCES_MAX}");
    }
    let settings = EngineSettings {
        instances_max: instances + 64,
        ..EngineSettings::default()
    };
    let released = PluginEngine::new(EngineSettings {
        keep_resident_bytes: 0,
        ..settings.clone()
    })?;
    let released_sma = load(&released, plugins_dir, "sma_cross")?;
    let engine = PluginEngine::new(settings)?;
    let sma = load(&engine, plugins_dir, "sma_cross")?;
    let boundary = load(&engine, plugins_dir, "boundary")?;
    let candles = random_walk(CALLS_MEASURED * 2);
    let (wasm_median, wasm_p99) = on_candle_ns(&mut start(&engine, &sma)?, &candles);
    // The boundary plugin declares no parameters: it starts with none.
    let quiet = InstanceSetup::new(ProfileId::new_random(), Arc::new(VirtualClock::new(0)));
    let mut boundary = engine
        .start(&boundary, quiet)
        .map_err(|fault| anyhow::anyhow!("starting the boundary plugin: {fault}"))?;
    let (boundary_median, _) = on_candle_ns(&mut boundary, &candles);
    let mut native = NativeSmaCross::new();
    native
        .init(&pairs())
        .map_err(|f| anyhow::anyhow!("native init: {f}"))?;
    let (native_median, _) = on_candle_ns(&mut native, &candles);
    let figures = PluginBench {
        wasm_on_candle_ns_median: wasm_median,
        wasm_on_candle_ns_p99: wasm_p99,
        boundary_ns_median: boundary_median,
        native_on_candle_ns_median: native_median,
        instantiate_us_median: instantiate_us(&engine, &sma, Churn::Start)?,
        instantiate_drop_us_median: instantiate_us(&engine, &sma, Churn::StartAndDrop)?,
        released_instantiate_us_median: instantiate_us(&released, &released_sma, Churn::Start)?,
        released_instantiate_drop_us_median: instantiate_us(
            &released,
            &released_sma,
            Churn::StartAndDrop,
        )?,
        hot_swap_ms_median: hot_swap_ms(&engine, &sma, &candles)?,
        instances,
        rss_bytes_per_instance: 0,
        rss_bytes_per_freed_slot: 0,
    };
    let (live, freed) = rss_per_instance(&engine, &sma, instances, &candles)?;
    let figures = PluginBench {
        rss_bytes_per_instance: live,
        rss_bytes_per_freed_slot: freed,
        ..figures
    };
    if json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!("{figures:#?}");
    }
    Ok(ExitCode::SUCCESS)
}

fn load(engine: &PluginEngine, dir: &Path, name: &str) -> anyhow::Result<PluginVersion> {
    let path = dir.join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (build it with scripts/build-plugins)",
            path.display()
        )
    })?;
    engine
        .load(&bytes)
        .with_context(|| format!("loading {}", path.display()))
}

fn pairs() -> Vec<(String, String)> {
    SMA_CONFIG
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn setup() -> InstanceSetup {
    InstanceSetup::new(ProfileId::new_random(), Arc::new(VirtualClock::new(0))).config(SMA_CONFIG)
}

fn start(
    engine: &PluginEngine,
    version: &PluginVersion,
) -> anyhow::Result<keel_runtime::WasmStrategy> {
    engine
        .start(version, setup())
        .map_err(|fault| anyhow::anyhow!("starting a plugin: {fault}"))
}

/// A deterministic random walk (xorshift), so every run sees the same prices.
fn random_walk(count: usize) -> Vec<Candle> {
    let symbol = Symbol::new("BTCUSDT").expect("a valid symbol");
    let (mut state, mut price) = (0x2545_f491_4f6c_dd1d_u64, 30_000.0_f64);
    (0..count)
        .map(|index| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            price *= 1.0 + ((state % 2001) as f64 - 1000.0) * 1e-5;
            let open_time_ms = i64::try_from(index).unwrap_or(i64::MAX) * 60_000;
            Candle {
                symbol: symbol.clone(),
                open_time_ms,
                close_time_ms: open_time_ms + 60_000,
                open: price,
                high: price * 1.001,
                low: price * 0.999,
                close: price,
                volume: 10.0,
            }
        })
        .collect()
}

/// Median and 99th percentile of single calls, each timed on its own (the figure includes the
/// ~20 ns of reading the clock twice). The first half of the candles warms up.
fn on_candle_ns(strategy: &mut dyn StrategyRuntime, candles: &[Candle]) -> (u64, u64) {
    let view = AccountView {
        free_capital: 10_000.0,
        equity: 10_000.0,
        ..AccountView::default()
    };
    let (warm, measured) = candles.split_at(candles.len() / 2);
    for candle in warm {
        let _ = std::hint::black_box(strategy.on_candle(candle, &view));
    }
    let mut samples: Vec<u64> = measured
        .iter()
        .map(|candle| {
            let started = Instant::now();
            let _ = std::hint::black_box(strategy.on_candle(candle, &view));
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
        .collect();
    samples.sort_unstable();
    (percentile(&samples, 50), percentile(&samples, 99))
}

fn percentile(sorted: &[u64], pct: usize) -> u64 {
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

fn median_f64(mut samples: Vec<f64>) -> f64 {
    samples.sort_unstable_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// What [`instantiate_us`] times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Churn {
    /// A new store, instantiated from the `InstancePre` and initialised: what starting a
    /// profile costs.
    Start,
    /// That, then dropping the instance (its slot is reset for the next one).
    StartAndDrop,
}

fn instantiate_us(
    engine: &PluginEngine,
    version: &PluginVersion,
    churn: Churn,
) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(INSTANTIATIONS_MEASURED);
    for _ in 0..INSTANTIATIONS_MEASURED {
        let setup = setup();
        let started = Instant::now();
        let prepared = engine
            .prepare(version, setup)
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        if churn == Churn::Start {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        drop(prepared);
        if churn == Churn::StartAndDrop {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(median_f64(samples))
}

/// From asking for a swap to the first candle answered by the new instance.
fn hot_swap_ms(
    engine: &PluginEngine,
    version: &PluginVersion,
    candles: &[Candle],
) -> anyhow::Result<f64> {
    let mut strategy = start(engine, version)?;
    let handle = strategy.swap_handle();
    let view = AccountView::default();
    let mut samples = Vec::with_capacity(SWAPS_MEASURED);
    for candle in candles.iter().take(SWAPS_MEASURED) {
        let mut next = setup();
        next.profile = strategy.profile();
        let started = Instant::now();
        handle
            .hot_swap(version, next)
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        strategy
            .on_candle(candle, &view)
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median_f64(samples))
}

/// Resident memory added by `count` live instances, each initialised and fed candles.
/// Resident bytes per live instance, and per slot once they are all dropped.
fn rss_per_instance(
    engine: &PluginEngine,
    version: &PluginVersion,
    count: u32,
    candles: &[Candle],
) -> anyhow::Result<(u64, i64)> {
    let view = AccountView::default();
    let before = rss_bytes()?;
    let mut live = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut strategy = start(engine, version)?;
        for candle in candles.iter().take(40) {
            strategy
                .on_candle(candle, &view)
                .map_err(|f| anyhow::anyhow!("{f}"))?;
        }
        live.push(strategy);
    }
    let after = rss_bytes()?;
    drop(live);
    let freed = rss_bytes()?;
    let per_freed = (i128::from(freed) - i128::from(before)) / i128::from(count);
    Ok((
        after.saturating_sub(before) / u64::from(count),
        i64::try_from(per_freed).unwrap_or(i64::MAX),
    ))
}

fn rss_bytes() -> anyhow::Result<u64> {
    super::proc_status_bytes("VmRSS")
}
