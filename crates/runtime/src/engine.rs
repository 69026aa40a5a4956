//! The process-wide plugin engine: configuration, validation at load, instantiation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use keel_kernel::ids::ProfileId;
use keel_kernel::metrics::Metrics;
use keel_kernel::strategy::PluginFault;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::PluginDigest;
use super::cache::{CompileSource, CompiledCache};
use super::compile::{self, CompileCancel, CompileSlots};
use super::deadline::Ticks;
use super::executor;
use super::faults::{FaultCounts, FaultLedger};
use super::guest::GuestLanguage;
use super::instance::PreparedInstance;
use super::limits::{EngineSettings, PluginLimits};
use super::params::{self, ParamSpec};
use super::state::PluginState;
use super::strategy::WasmStrategy;
use super::wit::{Strategy, StrategyPre};
use keel_kernel::engine::Clock;

/// The functions a `keel:strategy` component must export.
pub const STRATEGY_EXPORTS: [&str; 4] = ["init", "on-candle", "on-fill", "on-timer"];

/// The function a component of the `strategy-with-params` world (0.1.1) exports besides.
pub const PARAMS_EXPORT: &str = "params";

/// The versions of `keel:strategy` this host serves, oldest first; the last is
/// `wit/strategy.wit`. A component built against any of them links to the newest by semantic
/// versioning (`0.1.x` imports are served by the `0.1.1` definitions).
pub const CONTRACT_VERSIONS: [&str; 2] = ["0.1.0", "0.1.1"];

/// The interfaces of the `strategy` world a plugin may import (at any of [`CONTRACT_VERSIONS`]).
const STRATEGY_INTERFACES: [&str; 4] = ["types", "log", "clock", "account"];

/// Core instances one component may create (a Rust guest makes three or four, a componentize-py
/// guest, which links CPython and its libraries as separate modules, about fifteen).
const CORE_INSTANCES_PER_COMPONENT_MAX: u32 = 32;
/// Core instances the pool reserves per component instance on average: most plugins are small.
const CORE_INSTANCES_PER_COMPONENT_AVERAGE: u32 = 4;
/// Tables one component may create (a Rust guest makes two).
const TABLES_PER_COMPONENT_MAX: u32 = 8;

/// The engine every plugin of this process runs on. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    pub settings: EngineSettings,
    pub faults: FaultLedger,
    /// Fuel every call of every instance used: `keel_plugin_fuel_consumed_total`.
    pub fuel_consumed: prometheus::IntCounter,
    /// Hot-swaps by result: `keel_plugin_hot_swaps_total`.
    pub hot_swaps: prometheus::IntCounterVec,
    /// Calls run at low priority: `keel_plugin_low_priority_calls_total`.
    pub low_priority_calls: prometheus::IntCounter,
    cache: Option<CompiledCache>,
    ticker: EpochTicker,
    /// Compiles running now, at most `settings.compile.compiles_concurrent_max`.
    compile_slots: CompileSlots,
}

impl EngineInner {
    /// The epoch ticker's count: calls' deadlines are ticks of it.
    pub(crate) fn ticks(&self) -> &Arc<Ticks> {
        &self.ticker.ticks
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// A validated, compiled plugin version, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct PluginVersion {
    pub(crate) digest: PluginDigest,
    pub(crate) pre: StrategyPre<PluginState>,
    /// The budgets of this version's instances (by the language it was written in).
    pub(crate) limits: PluginLimits,
    /// Shared: every instance holds its version, and the report's strings are not small.
    report: Arc<LoadReport>,
}

impl PluginVersion {
    /// The sha256 of the plugin file.
    pub fn digest(&self) -> &PluginDigest {
        &self.digest
    }

    /// The budgets this version's instances run under.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// What loading found.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }
}

/// What loading a plugin found: shown by `keel plugin check`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// The world the plugin implements.
    pub world: String,
    /// The language the plugin was written in, which picks its budgets.
    pub language: GuestLanguage,
    /// Names the component exports.
    pub exports: Vec<String>,
    /// Interfaces the component imports.
    pub imports: Vec<String>,
    /// Size of the plugin file, in bytes.
    pub size_bytes: usize,
    /// Time to compile (or load from the cache) and link, in milliseconds.
    pub compile_ms: f64,
    /// Whether the compiled code came from the cache.
    pub from_cache: bool,
    /// The parameters the plugin declares (`strategy-with-params`), or none for a plugin of the
    /// plain `strategy` world, which checks its configuration in `init` alone.
    pub params: Option<Vec<ParamSpec>>,
}

/// Everything one instance is set up with, besides the plugin version.
#[derive(Clone)]
pub struct InstanceSetup {
    /// The profile the instance serves: faults are counted under it.
    pub profile: ProfileId,
    /// The strategy's settings, handed to `init`.
    pub config: Arc<[(String, String)]>,
    /// Seed of the guest's randomness: the same seed gives the same replay. Drawn from the
    /// operating system unless set, so no two live instances share a stream.
    pub random_seed: u64,
    /// The kernel's clock (virtual in a backtest).
    pub clock: Arc<dyn Clock>,
    /// What operators call the plugin (its upload name, or its file name): shown beside its
    /// version wherever the running plugin is reported.
    pub name: Arc<str>,
}

/// The name of a plugin nobody named (the API's default upload name).
pub const PLUGIN_NAME_DEFAULT: &str = "plugin";

impl InstanceSetup {
    /// A setup with no config, a random seed from the operating system (a backtest or a
    /// simulation sets its run's seed with [`InstanceSetup::random_seed`]) and the name
    /// [`PLUGIN_NAME_DEFAULT`].
    pub fn new(profile: ProfileId, clock: Arc<dyn Clock>) -> Self {
        InstanceSetup {
            profile,
            config: Arc::new([]),
            random_seed: rand::RngCore::next_u64(&mut rand::rngs::OsRng),
            clock,
            name: Arc::from(PLUGIN_NAME_DEFAULT),
        }
    }

    /// Sets the plugin's name.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the config pairs.
    pub fn config<K: Into<String>, V: Into<String>>(
        mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.config = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sets the random seed.
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.random_seed = seed;
        self
    }
}

impl PluginEngine {
    /// Builds the engine, its linker and its epoch ticker; fuel and hot-swaps are counted by the
    /// engine alone ([`PluginEngine::fuel_consumed_total`]).
    pub fn new(settings: EngineSettings) -> anyhow::Result<Self> {
        Self::reporting_to(settings, &Metrics::new())
    }

    /// Builds the engine reporting to `metrics`: every call's fuel (its budget minus what is
    /// left after it, `init` included) is added to `keel_plugin_fuel_consumed_total`, and every
    /// hot-swap is counted in `keel_plugin_hot_swaps_total` (`ok` when the new instance takes
    /// over, `failed` when preparing it failed and the running one stays).
    pub fn reporting_to(settings: EngineSettings, metrics: &Metrics) -> anyhow::Result<Self> {
        let fuel_consumed = metrics.plugin_fuel_consumed_total.clone();
        let hot_swaps = metrics.plugin_hot_swaps_total.clone();
        let low_priority_calls = metrics.plugin_low_priority_calls_total.clone();
        let engine = Engine::new(&wasmtime_config(&settings))
            .map_err(|e| e.context("creating the wasm engine"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| e.context("linking WASI 0.2"))?;
        super::deadline::bound_blocking_polls(&mut linker)
            .map_err(|e| e.context("bounding WASI's blocking calls by the call deadline"))?;
        Strategy::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| e.context("linking the strategy world"))?;
        let cache = match &settings.cache_dir {
            Some(dir) => Some(CompiledCache::new(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(
            engine.clone(),
            Duration::from_millis(settings.epoch_tick_ms),
        );
        let inner = EngineInner {
            engine,
            linker,
            settings,
            faults: FaultLedger::default(),
            fuel_consumed,
            hot_swaps,
            low_priority_calls,
            cache,
            ticker,
            compile_slots: CompileSlots::default(),
        };
        Ok(PluginEngine {
            inner: Arc::new(inner),
        })
    }

    /// The settings the engine was built with.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// Validates and compiles a plugin exactly as it will run: a component of the
    /// `keel:strategy` world (any of [`CONTRACT_VERSIONS`]) importing nothing outside that
    /// world and WASI 0.2, within the engine's [`CompileLimits`]. A plugin that declares its
    /// parameters has them read (its `params` called once) and checked here.
    pub fn load(&self, bytes: &[u8]) -> anyhow::Result<PluginVersion> {
        self.load_cancellable(bytes, &CompileCancel::new())
    }

    /// [`PluginEngine::load`], given up (the compiling child killed) once `cancel` is.
    pub fn load_cancellable(
        &self,
        bytes: &[u8],
        cancel: &CompileCancel,
    ) -> anyhow::Result<PluginVersion> {
        let started = Instant::now();
        check_header(bytes, self.inner.settings.plugin_bytes_max)?;
        let digest = PluginDigest::of(bytes);
        let (component, source) = self.compile(&digest, bytes, cancel)?;
        let language = GuestLanguage::detect(bytes);
        let imports = check_imports(&self.inner.engine, &component)?;
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("plugin imports something this host does not serve: {e:#}")
        })?;
        let exports = check_exports(&self.inner.engine, &component)?;
        let pre = StrategyPre::new(instance_pre).map_err(|e| {
            anyhow::anyhow!("exports do not match the keel:strategy/strategy world: {e:#}")
        })?;
        let declares = exports.iter().any(|e| e == PARAMS_EXPORT);
        let report = LoadReport {
            world: world_of(&imports, declares),
            language,
            exports,
            imports,
            size_bytes: bytes.len(),
            compile_ms: started.elapsed().as_secs_f64() * 1e3,
            from_cache: source == CompileSource::Cache,
            params: None,
        };
        let mut version = PluginVersion {
            digest,
            pre,
            limits: *self.inner.settings.limits_for(language),
            report: Arc::new(report),
        };
        if declares {
            let params = self.read_params(&version)?;
            Arc::make_mut(&mut version.report).params = Some(params);
        }
        Ok(version)
    }

    /// Calls the plugin's `params` in an instance of its own (under a call's budgets) and
    /// checks the declaration; the error says what is wrong with it.
    fn read_params(&self, version: &PluginVersion) -> anyhow::Result<Vec<ParamSpec>> {
        let declared = executor::run_guest(|| PreparedInstance::read_params(self, version))
            .and_then(|declared| declared)
            .map_err(|fault| anyhow::anyhow!("calling the plugin's `params`: {fault}"))?;
        params::check_declared(declared)
            .map_err(|problem| anyhow::anyhow!("the plugin's declared parameters: {problem}"))
    }

    fn compile(
        &self,
        digest: &PluginDigest,
        bytes: &[u8],
        cancel: &CompileCancel,
    ) -> anyhow::Result<(Component, CompileSource)> {
        let limits = &self.inner.settings.compile;
        compile::check_structure(bytes, limits)?;
        let engine = &self.inner.engine;
        let run = || -> anyhow::Result<Component> {
            let deadline = Instant::now() + Duration::from_millis(limits.compile_ms_max);
            let _slot = self
                .inner
                .compile_slots
                .take(limits.compiles_concurrent_max, deadline)?;
            compile::compile(engine, bytes, limits, cancel)
        };
        match &self.inner.cache {
            Some(cache) => cache.load_or_compile(engine, digest, run),
            None => run().map(|c| (c, CompileSource::Compiled)),
        }
    }

    /// Checks the setup's configuration against the parameters `version` declares (if it
    /// declares any), then instantiates it in a new store and runs `init` with that
    /// configuration, each absent parameter filled with its default; the instance serves no
    /// profile yet. A fault (a refused configuration, `init` refusing it, ...) is counted under
    /// the profile.
    pub fn prepare(
        &self,
        version: &PluginVersion,
        setup: InstanceSetup,
    ) -> Result<PreparedInstance, PluginFault> {
        let profile = setup.profile;
        checked_setup(version, setup)
            .and_then(|setup| {
                // Instantiation and `init` run guest code: off the async runtime, like every call.
                executor::run_guest(|| PreparedInstance::new(self, version, setup))
                    .and_then(|prepared| prepared)
            })
            .inspect_err(|fault| {
                self.inner.faults.record(profile, &version.digest, fault);
            })
    }

    /// [`PluginEngine::prepare`] for a hot-swap: a failure is counted as a failed hot-swap (the
    /// running instance stays); the swap itself is counted when the strategy takes the instance.
    pub fn prepare_replacement(
        &self,
        version: &PluginVersion,
        setup: InstanceSetup,
    ) -> Result<PreparedInstance, PluginFault> {
        self.prepare(version, setup).inspect_err(|_| {
            self.inner.hot_swaps.with_label_values(&["failed"]).inc();
        })
    }

    /// Prepares an instance and puts it to work for its profile.
    pub fn start(
        &self,
        version: &PluginVersion,
        setup: InstanceSetup,
    ) -> Result<WasmStrategy, PluginFault> {
        let profile = setup.profile;
        let prepared = self.prepare(version, setup)?;
        Ok(WasmStrategy::new(self.clone(), profile, prepared))
    }

    /// [`PluginEngine::start`] for a profile that runs whatever its plugin does (a host
    /// restoring a profile's binding): when instantiation or `init` faults, the strategy starts
    /// dead instead — its first call returns that fault and every later one
    /// [`PluginFault::Dead`], so the kernel blocks its entries while exits and reconciliation
    /// go on — and a hot-swap brings it back. The fault is returned too, for the log.
    pub fn start_or_faulted(
        &self,
        version: &PluginVersion,
        setup: InstanceSetup,
    ) -> (WasmStrategy, Option<PluginFault>) {
        let profile = setup.profile;
        match self.prepare(version, setup.clone()) {
            Ok(prepared) => (WasmStrategy::new(self.clone(), profile, prepared), None),
            Err(fault) => {
                let strategy =
                    WasmStrategy::faulted(self.clone(), version.clone(), setup, fault.clone());
                (strategy, Some(fault))
            }
        }
    }

    /// Fuel used by every call so far.
    pub fn fuel_consumed_total(&self) -> u64 {
        self.inner.fuel_consumed.get()
    }

    /// Fault counts of one profile, per plugin version it ran.
    pub fn fault_counts(&self, profile: ProfileId) -> Vec<(PluginDigest, FaultCounts)> {
        self.inner.faults.for_profile(profile)
    }
}

/// `setup` with its configuration checked against the parameters `version` declares and
/// completed with their defaults; unchanged for a plugin that declares none.
fn checked_setup(
    version: &PluginVersion,
    mut setup: InstanceSetup,
) -> Result<InstanceSetup, PluginFault> {
    let Some(specs) = &version.report.params else {
        return Ok(setup);
    };
    let config = params::check_config(&setup.name, specs, &setup.config)
        .map_err(|error| PluginFault::ConfigRefused(error.to_string()))?;
    setup.config = config.into();
    Ok(setup)
}

/// The world a component implements, at the contract version its imports name (the newest
/// when they name several; the first version with `params` when it imports none and declares
/// parameters, else the first).
fn world_of(imports: &[String], declares_params: bool) -> String {
    let imported = imports
        .iter()
        .filter_map(|name| name.strip_prefix("keel:strategy/"))
        .filter_map(|name| name.split_once('@'))
        .filter_map(|(_, version)| CONTRACT_VERSIONS.iter().position(|v| *v == version))
        .max();
    let (world, first) = if declares_params {
        ("strategy-with-params", 1)
    } else {
        ("strategy", 0)
    };
    let version = CONTRACT_VERSIONS[imported.unwrap_or(first).max(first)];
    format!("keel:strategy/{world}@{version}")
}

fn wasmtime_config(settings: &EngineSettings) -> Config {
    let instances = settings.instances_max;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        // At least two of the largest components fit, so a small engine (a backtest's, `plugin
        // check`'s) can run any plugin and prepare its replacement.
        .total_core_instances(
            instances
                .saturating_mul(CORE_INSTANCES_PER_COMPONENT_AVERAGE)
                .max(2 * CORE_INSTANCES_PER_COMPONENT_MAX),
        )
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT_MAX)
        .total_memories(instances)
        .max_memories_per_component(1)
        .total_tables(instances.saturating_mul(3))
        .max_tables_per_component(TABLES_PER_COMPONENT_MAX)
        .max_memory_size(settings.memory_bytes_max())
        .linear_memory_keep_resident(settings.keep_resident_bytes)
        .pagemap_scan(Enabled::Auto);
    let mut config = compiler_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// What decides the compiled code: the engine's own configuration without its instance
/// allocator, which the compiling child process (`keel plugin compile-worker`) builds alone.
pub(crate) fn compiler_config() -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .wasm_component_model(true)
        // A strategy's data segments are a few KiB: copying them at instantiation gave lower
        // call latency in most benchmark runs than mapping a copy-on-write image, for the same
        // resident memory (docs/benchmarks.md).
        .memory_init_cow(false);
    config
}

/// Refuses what is not a component before the compiler sees it, with a message that says what
/// the file is instead.
fn check_header(bytes: &[u8], bytes_max: usize) -> anyhow::Result<()> {
    if bytes.len() > bytes_max {
        bail!(
            "plugin is {} bytes, more than the {bytes_max} allowed",
            bytes.len()
        );
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no `\\0asm` header)");
    }
    match [bytes[4], bytes[5], bytes[6], bytes[7]] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => bail!(
            "a core WebAssembly module, not a component: build the plugin with \
             `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
        ),
        other => bail!("unsupported WebAssembly version or layer {other:02x?}"),
    }
}

/// Every import must belong to the `strategy` world or to WASI 0.2; the first that does not is
/// named in the error.
fn check_imports(engine: &Engine, component: &Component) -> anyhow::Result<Vec<String>> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for name in &names {
        let allowed =
            is_strategy_import(name) || (name.starts_with("wasi:") && name.contains("@0.2."));
        if !allowed {
            bail!(
                "plugin imports `{name}`, which is outside the keel:strategy world (versions \
                 {}) and WASI 0.2; a strategy may import only those",
                CONTRACT_VERSIONS.join(", ")
            );
        }
    }
    Ok(names)
}

/// Whether `name` is an interface of the `strategy` world at a version this host serves.
fn is_strategy_import(name: &str) -> bool {
    name.strip_prefix("keel:strategy/")
        .and_then(|rest| rest.split_once('@'))
        .is_some_and(|(interface, version)| {
            STRATEGY_INTERFACES.contains(&interface) && CONTRACT_VERSIONS.contains(&version)
        })
}

fn check_exports(engine: &Engine, component: &Component) -> anyhow::Result<Vec<String>> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let missing: Vec<&str> = STRATEGY_EXPORTS
        .iter()
        .copied()
        .filter(|e| !names.iter().any(|n| n == e))
        .collect();
    if !missing.is_empty() {
        bail!(
            "not a keel:strategy strategy: it exports [{}] and lacks [{}]",
            names.join(", "),
            missing.join(", ")
        );
    }
    Ok(names)
}

/// Advances the engine's epoch at a fixed interval, and counts its ticks in [`Ticks`]: the
/// wall-clock backstop of every call.
struct EpochTicker {
    ticks: Arc<Ticks>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = stop.clone();
        let ticks = Arc::new(Ticks::new(tick));
        let counted = ticks.clone();
        let thread = std::thread::Builder::new()
            .name("keel-epoch".to_string())
            .spawn(move || {
                while !stop_seen.load(Ordering::Acquire) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    counted.advance();
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker {
            ticks,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
