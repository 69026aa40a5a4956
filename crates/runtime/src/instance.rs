//! One instance of a plugin in its own `Store`: the calls, their budgets, and how a failure
//! becomes a typed fault.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_kernel::market::Candle;
use keel_kernel::strategy::{AccountView, FillView, PluginFault, RawIntent};
use rand_wasi::SeedableRng as _;
use rand_wasi::rngs::StdRng;
use wasmtime::component::{ComponentNamedList, Instance, Lift, Lower, TypedFunc};
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use super::PluginDigest;
use keel_kernel::engine::{Clock, SystemClock};
use keel_kernel::ids::ProfileId;
use keel_kernel::ids::escape_unprintable;

use super::clock::{WasiMonotonicClock, WasiWallClock};
use super::convert;
use super::deadline::{CallDeadline, CallDeadlineExceeded};
use super::engine::{InstanceSetup, PARAMS_EXPORT, PluginEngine, PluginVersion};
use super::limits::PluginLimits;
use super::log::{LogCounters, LogLevel, LogLine, LogPipe, PluginLog};
use super::state::{MemoryCap, MemoryCapExceeded, PluginState, SymbolTable};
use super::wit::keel::strategy::types as wit;

/// Longest `init` error kept, in bytes.
const INIT_ERROR_BYTES_MAX: usize = 1024;

type CallOutput = (Vec<wit::Intent>,);

/// Where an instance's calls are logged and their fuel counted.
struct CallAccounting {
    span: tracing::Span,
    fuel_consumed: prometheus::IntCounter,
}

/// An instantiated, initialised plugin in its own store, ready to serve a profile.
pub struct PreparedInstance {
    store: Store<PluginState>,
    on_candle: TypedFunc<(wit::Candle, wit::AccountView), CallOutput>,
    on_fill: TypedFunc<(wit::Fill, wit::AccountView), CallOutput>,
    on_timer: TypedFunc<(i64, wit::AccountView), CallOutput>,
    version: PluginVersion,
    setup: InstanceSetup,
    limits: PluginLimits,
    deadline_ticks: u64,
    /// Carries `profile_id` and `plugin_sha256` into every log line of this instance's calls.
    /// Made once per instance, entered per call: entering costs no allocation.
    span: tracing::Span,
    /// `keel_plugin_fuel_consumed_total`, or the engine's own counter when no registry is used.
    fuel_consumed: prometheus::IntCounter,
    /// The tick at which the last call began, until taken.
    call_started_tick: Option<u64>,
}

impl PreparedInstance {
    pub(crate) fn new(
        engine: &PluginEngine,
        version: &PluginVersion,
        setup: InstanceSetup,
    ) -> Result<Self, PluginFault> {
        let settings = engine.settings();
        let limits = version.limits;
        // No parent: the instance outlives the step that happened to create it.
        let span = tracing::info_span!(parent: None, "plugin",
            profile_id = %setup.profile, plugin_sha256 = %version.digest);
        let _entered = span.enter();
        let store = new_store(engine, version, &setup, &limits);
        let accounting = CallAccounting {
            span: span.clone(),
            fuel_consumed: engine.inner.fuel_consumed.clone(),
        };
        let (mut instance, init) = Self::instantiate(
            store,
            version,
            &setup,
            &limits,
            settings.epoch_tick_ms,
            accounting,
        )?;
        instance.init(init, &setup.config)?;
        tracing::info!("plugin instance initialised");
        Ok(instance)
    }

    fn instantiate(
        mut store: Store<PluginState>,
        version: &PluginVersion,
        setup: &InstanceSetup,
        limits: &PluginLimits,
        epoch_tick_ms: u64,
        accounting: CallAccounting,
    ) -> Result<(Self, InitFunc), PluginFault> {
        let deadline_ticks = deadline_ticks(limits, epoch_tick_ms);
        let instance = instantiate(&mut store, version, limits, deadline_ticks)?;
        let init = typed_export(&instance, &mut store, "init")?;
        let prepared = PreparedInstance {
            on_candle: typed_export(&instance, &mut store, "on-candle")?,
            on_fill: typed_export(&instance, &mut store, "on-fill")?,
            on_timer: typed_export(&instance, &mut store, "on-timer")?,
            store,
            version: version.clone(),
            setup: setup.clone(),
            limits: *limits,
            deadline_ticks,
            span: accounting.span,
            fuel_consumed: accounting.fuel_consumed,
            call_started_tick: None,
        };
        Ok((prepared, init))
    }

    /// Instantiates `version` in a store of its own (under the `init` budgets, as any
    /// instantiation) and calls its `params` under the budgets of an ordinary call: what the
    /// plugin declares, not yet checked. The instance is dropped after.
    ///
    /// The per-call fuel also bounds what lifting the answer may copy into the host (wasmtime
    /// charges fuel per byte of string it lifts), as it does for the intents of any call.
    pub(crate) fn read_params(
        engine: &PluginEngine,
        version: &PluginVersion,
    ) -> Result<Vec<wit::ParamSpec>, PluginFault> {
        let limits = version.limits;
        // Declaring parameters needs no profile, no seed and no particular clock.
        let setup =
            InstanceSetup::new(ProfileId::new_random(), Arc::new(SystemClock)).random_seed(0);
        let mut store = new_store(engine, version, &setup, &limits);
        let deadline_ticks = deadline_ticks(&limits, engine.settings().epoch_tick_ms);
        let instance = instantiate(&mut store, version, &limits, deadline_ticks)?;
        let params: ParamsFunc = typed_export(&instance, &mut store, PARAMS_EXPORT)?;
        store
            .data_mut()
            .begin_call(&AccountView::default(), deadline_ticks);
        store.set_fuel(limits.fuel_per_call).map_err(host_error)?;
        store.set_epoch_deadline(deadline_ticks);
        let (declared,) = params.call(&mut store, ()).map_err(classify)?;
        Ok(declared)
    }

    /// Runs `init` under the init budget; an `Err` from the plugin is [`PluginFault::InitRefused`].
    fn init(&mut self, init: InitFunc, config: &[(String, String)]) -> Result<(), PluginFault> {
        self.store
            .data_mut()
            .begin_call(&AccountView::default(), self.deadline_ticks);
        self.store
            .set_fuel(self.limits.fuel_per_init)
            .map_err(host_error)?;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let output = init.call(&mut self.store, (config.to_vec(),));
        self.count_fuel(self.limits.fuel_per_init);
        let (outcome,) = output.map_err(classify)?;
        // The plugin's own text, printed by `keel plugin check` and answered by the API.
        outcome.map_err(|message| {
            let message = truncate(message, INIT_ERROR_BYTES_MAX);
            PluginFault::InitRefused(escape_unprintable(&message).into_owned())
        })
    }

    /// The plugin version this instance runs.
    pub fn digest(&self) -> &PluginDigest {
        &self.version.digest
    }

    /// The loaded plugin this instance runs.
    pub fn version(&self) -> &PluginVersion {
        &self.version
    }

    /// What the instance was set up with.
    pub fn setup(&self) -> &InstanceSetup {
        &self.setup
    }

    /// The last lines of the plugin's log, oldest first.
    pub fn log_lines(&self) -> Vec<LogLine> {
        self.store.data().log.lock().unwrap().lines()
    }

    /// What happened to the plugin's log so far.
    pub fn log_counters(&self) -> LogCounters {
        self.store.data().log.lock().unwrap().counters()
    }

    fn begin_call(&mut self, view: &AccountView) -> Result<(), PluginFault> {
        let started = self.store.data_mut().begin_call(view, self.deadline_ticks);
        self.call_started_tick = Some(started);
        self.store
            .set_fuel(self.limits.fuel_per_call)
            .map_err(host_error)?;
        self.store.set_epoch_deadline(self.deadline_ticks);
        Ok(())
    }

    /// The wall time of the last call, if one began since this was last asked, in epoch ticks:
    /// a period for each tick that came during it, none when none came. A call that saw a tick
    /// may have taken as long as a period (or a moment), one that saw none took less; the
    /// pacing reads no clock around a call.
    pub(crate) fn take_call_wall(&mut self) -> Option<Duration> {
        let started = self.call_started_tick.take()?;
        let ticks = self.store.data().deadline.ticks();
        let came = u32::try_from(ticks.count().saturating_sub(started)).unwrap_or(u32::MAX);
        Some(ticks.period().saturating_mul(came))
    }

    /// The span of this instance, entered around each call.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Adds what the call just made used (its budget minus what is left) to the fuel counter.
    fn count_fuel(&self, budget: u64) {
        // A trap other than running out may leave the store unable to report: count nothing.
        if let Ok(left) = self.store.get_fuel() {
            self.fuel_consumed.inc_by(budget.saturating_sub(left));
        }
    }

    fn finish(
        &mut self,
        output: wasmtime::Result<CallOutput>,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.count_fuel(self.limits.fuel_per_call);
        let (intents,) = output.map_err(classify)?;
        if intents.is_empty() {
            return Ok(Vec::new());
        }
        convert::intents(intents, &self.store.data().symbols, &self.limits)
            .map_err(PluginFault::InvalidOutput)
    }

    pub(crate) fn on_candle(
        &mut self,
        candle: &Candle,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        let Some(symbol) = self.store.data_mut().symbols.intern(candle.symbol.as_str()) else {
            // The instance tracks as many instruments as it may; this one it never sees.
            return Ok(Vec::new());
        };
        self.begin_call(view)?;
        let args = (convert::candle(symbol, candle), convert::account_view(view));
        let output = self.on_candle.call(&mut self.store, args);
        self.finish(output)
    }

    pub(crate) fn on_fill(
        &mut self,
        fill: &FillView,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        let Some(symbol) = self.store.data_mut().symbols.intern(fill.symbol.as_str()) else {
            return Ok(Vec::new());
        };
        self.begin_call(view)?;
        let args = (convert::fill(symbol, fill), convert::account_view(view));
        let output = self.on_fill.call(&mut self.store, args);
        self.finish(output)
    }

    pub(crate) fn on_timer(
        &mut self,
        now_ms: i64,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.begin_call(view)?;
        let output = self
            .on_timer
            .call(&mut self.store, (now_ms, convert::account_view(view)));
        self.finish(output)
    }
}

/// The call deadline in epoch ticks (at least one).
fn deadline_ticks(limits: &PluginLimits, epoch_tick_ms: u64) -> u64 {
    limits
        .call_deadline_ms
        .div_ceil(epoch_tick_ms.max(1))
        .max(1)
}

/// Instantiates `version` in `store` under the `init` budgets (instantiation may run guest
/// code: a component's start functions).
fn instantiate(
    store: &mut Store<PluginState>,
    version: &PluginVersion,
    limits: &PluginLimits,
    deadline_ticks: u64,
) -> Result<Instance, PluginFault> {
    store.set_fuel(limits.fuel_per_init).map_err(host_error)?;
    store.set_epoch_deadline(deadline_ticks);
    version
        .pre
        .instance_pre()
        .instantiate(&mut *store)
        .map_err(classify)
}

type InitFunc = TypedFunc<(Vec<(String, String)>,), (Result<(), String>,)>;
type ParamsFunc = TypedFunc<(), (Vec<wit::ParamSpec>,)>;

/// Looks up an export and checks its type once, so each call skips both.
fn typed_export<P, R>(
    instance: &Instance,
    store: &mut Store<PluginState>,
    name: &str,
) -> Result<TypedFunc<P, R>, PluginFault>
where
    P: ComponentNamedList + Lower,
    R: ComponentNamedList + Lift,
{
    let index = instance
        .get_export_index(&mut *store, None, name)
        .ok_or_else(|| PluginFault::Trap(format!("the plugin does not export `{name}`")))?;
    instance
        .get_typed_func(&mut *store, index)
        .map_err(|e| PluginFault::Trap(format!("export `{name}` has the wrong type: {e:#}")))
}

/// A failure of the host around a call (not of the plugin); reported as a trap so the instance
/// is not trusted again.
fn host_error(error: wasmtime::Error) -> PluginFault {
    PluginFault::Trap(format!("host: {error:#}"))
}

/// A store with no authority: WASI sees no files, no network, no environment; its clocks read
/// the kernel's clock and its randomness is seeded by the kernel.
fn new_store(
    engine: &PluginEngine,
    version: &PluginVersion,
    setup: &InstanceSetup,
    limits: &PluginLimits,
) -> Store<PluginState> {
    let call_seq = Arc::new(AtomicU64::new(0));
    let label = format!("{}/{}", setup.profile, version.digest.short());
    let log = Arc::new(Mutex::new(PluginLog::new(
        label,
        limits,
        setup.clock.clone(),
        call_seq.clone(),
    )));
    let wasi = no_authority_wasi(&log, setup.clock.clone(), setup.random_seed);
    let state = PluginState::new(
        wasi,
        MemoryCap {
            cap_bytes: limits.memory_bytes_max,
        },
        SymbolTable::new(limits.symbols_max),
        log,
        setup.clock.clone(),
        call_seq,
        CallDeadline::new(
            engine.inner.ticks().clone(),
            deadline_ticks(limits, engine.settings().epoch_tick_ms),
        ),
    );
    let mut store = Store::new(&engine.inner.engine, state);
    store.limiter(|state| &mut state.memory);
    store
}

fn no_authority_wasi(
    log: &Arc<Mutex<PluginLog>>,
    clock: Arc<dyn Clock>,
    seed: u64,
) -> wasmtime_wasi::WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    // The builder starts with no preopened directory, no environment and no arguments; network
    // access is switched off explicitly.
    builder
        .stdout(LogPipe::new(log.clone(), LogLevel::Info))
        .stderr(LogPipe::new(log.clone(), LogLevel::Warn))
        .wall_clock(WasiWallClock(clock.clone()))
        .monotonic_clock(WasiMonotonicClock {
            clock,
            highest_ns: AtomicU64::new(0),
        })
        .secure_random(StdRng::seed_from_u64(seed))
        .insecure_random(StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15))
        .insecure_random_seed(u128::from(seed) << 64 | u128::from(!seed))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.build()
}

/// Names what stopped a call.
pub(crate) fn classify(error: wasmtime::Error) -> PluginFault {
    if error.downcast_ref::<MemoryCapExceeded>().is_some() {
        return PluginFault::MemoryLimit;
    }
    if error.downcast_ref::<CallDeadlineExceeded>().is_some() {
        return PluginFault::Deadline;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginFault::FuelExhausted,
        Some(Trap::Interrupt) => PluginFault::Deadline,
        Some(trap) => PluginFault::Trap(trap.to_string()),
        None => PluginFault::Trap(format!("{error:#}")),
    }
}

pub(crate) fn truncate(mut text: String, bytes_max: usize) -> String {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
