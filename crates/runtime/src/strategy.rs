//! The instance serving one profile, as the kernel drives it, and its hot-swap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_kernel::ids::ProfileId;
use keel_kernel::market::Candle;
use keel_kernel::strategy::{AccountView, FillView, PluginFault, RawIntent, StrategyRuntime};

use super::PluginDigest;
use super::engine::{InstanceSetup, PluginEngine, PluginVersion};
use super::executor;
use super::instance::PreparedInstance;
use super::log::{LogCounters, LogLine};

/// A plugin serving one profile: the kernel's [`StrategyRuntime`] over a Wasm instance.
///
/// A fault other than [`PluginFault::InvalidOutput`] drops the instance; every later call
/// returns [`PluginFault::Dead`] until a new version (or the same one, fresh) is swapped in.
pub struct WasmStrategy {
    engine: PluginEngine,
    profile: ProfileId,
    digest: PluginDigest,
    current: Option<PreparedInstance>,
    swap: Arc<SwapSlot>,
    /// What the last instance ran, to start afresh after a fault.
    last_version: PluginVersion,
    last_setup: InstanceSetup,
    /// The log of an instance dropped after a fault: what it said before it died.
    dead_log: (Vec<LogLine>, LogCounters),
    /// Set when an instance took over (swap, reconfiguration) and the kernel has not been told.
    fresh: bool,
    /// The fault that kept the first instance from starting, returned by the first call.
    start_fault: Option<PluginFault>,
    /// Whether the profile's calls run at low priority.
    pacing: Pacing,
}

/// A call that keeps a core busy this long marks its profile as heavy: its later calls run at
/// low priority ([`executor::run_guest_low`]). A candle's decision takes microseconds.
const HEAVY_CALL: Duration = Duration::from_millis(2);

/// Low-priority calls in a row that must each use less CPU than [`HEAVY_CALL`] before the
/// profile's calls run at the host's priority again, the first time; each later return to low
/// priority doubles it, up to [`LIGHT_CALLS_TO_RESTORE_MAX`], so a plugin cannot keep most of
/// its heavy calls at the host's priority by spacing them out.
const LIGHT_CALLS_TO_RESTORE: u32 = 16;

/// The most light calls in a row a profile is asked for.
const LIGHT_CALLS_TO_RESTORE_MAX: u32 = 4096;

/// Where a profile's calls run: at the host's priority until one may have taken [`HEAVY_CALL`]
/// of wall time, which the epoch ticker tells without a clock read: a tick came during the call
/// (a tick every 5 ms by default, so a call of [`HEAVY_CALL`] sees one two times in five, one of
/// 5 ms or more always, one of a microsecond once in thousands); the next call then runs at
/// the host's priority with its CPU time measured (wall time includes waiting for a core on a
/// loaded machine, CPU time does not), and only [`HEAVY_CALL`] of CPU moves the profile to low
/// priority. There it stays until enough calls in a row ([`LIGHT_CALLS_TO_RESTORE`], doubled at
/// each return) used less CPU time than that. So a light plugin on a busy machine keeps the
/// host's priority, and a heavy one pays for its own weight.
#[derive(Debug)]
struct Pacing {
    mode: Mode,
    light_in_a_row: u32,
    light_calls_to_restore: u32,
}

/// How the next call of a profile runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// At the host's priority, its wall time measured.
    Normal,
    /// At the host's priority, its CPU time measured: the last call took [`HEAVY_CALL`] of
    /// wall time.
    Probe,
    /// At low priority ([`executor::run_guest_low`]), its CPU time measured.
    Low,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            mode: Mode::Normal,
            light_in_a_row: 0,
            light_calls_to_restore: LIGHT_CALLS_TO_RESTORE,
        }
    }
}

impl Pacing {
    /// Books a call run in `mode` that cost `cost`: its wall time in [`Mode::Normal`], its CPU
    /// time in the others.
    fn after_call(&mut self, mode: Mode, cost: Duration) {
        match mode {
            Mode::Normal => self.after_normal_call(cost),
            Mode::Probe => self.after_probe_call(cost),
            Mode::Low => self.after_low_call(cost),
        }
    }

    /// Books a call run in [`Mode::Normal`] that took `wall`.
    fn after_normal_call(&mut self, wall: Duration) {
        if wall >= HEAVY_CALL {
            self.mode = Mode::Probe;
        }
    }

    /// Books a call run in [`Mode::Probe`] that used `cpu`.
    fn after_probe_call(&mut self, cpu: Duration) {
        if cpu < HEAVY_CALL {
            self.mode = Mode::Normal;
            return;
        }
        self.mode = Mode::Low;
        self.light_in_a_row = 0;
        tracing::info!(
            cpu_ms = cpu.as_secs_f64() * 1e3,
            light_calls_to_restore = self.light_calls_to_restore,
            "plugin calls keep a core busy: they run at low priority from now on"
        );
    }

    /// Books a call run in [`Mode::Low`] that used `cpu`.
    fn after_low_call(&mut self, cpu: Duration) {
        if cpu >= HEAVY_CALL {
            self.light_in_a_row = 0;
            return;
        }
        self.light_in_a_row += 1;
        if self.light_in_a_row >= self.light_calls_to_restore {
            self.mode = Mode::Normal;
            self.light_in_a_row = 0;
            self.light_calls_to_restore = self
                .light_calls_to_restore
                .saturating_mul(2)
                .min(LIGHT_CALLS_TO_RESTORE_MAX);
            tracing::info!("plugin calls are light again: they run at the host's priority");
        }
    }
}

/// A replacement waiting for the next call boundary, and what runs now.
struct SwapSlot {
    pending: AtomicBool,
    instance: Mutex<Option<PreparedInstance>>,
    running: Mutex<RunningVersion>,
}

impl SwapSlot {
    /// No replacement waiting; `running` runs.
    fn new(running: RunningVersion) -> Self {
        SwapSlot {
            pending: AtomicBool::new(false),
            instance: Mutex::new(None),
            running: Mutex::new(running),
        }
    }
}

/// The plugin a strategy runs (or ran last, if its instance is dead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVersion {
    /// The plugin's name ([`InstanceSetup::name`]).
    pub name: Arc<str>,
    /// Its version.
    pub digest: PluginDigest,
    /// How many instances took over after the first (hot-swaps and reconfigurations): a change
    /// tells that a new instance runs, even of the same version.
    pub takeovers: u64,
}

/// Hands a new instance to a [`WasmStrategy`] from any thread; the strategy takes it at its
/// next call boundary, so the call in progress finishes on the old instance and no event is
/// delivered twice or skipped. Cheap to clone.
#[derive(Clone)]
pub struct SwapHandle {
    engine: PluginEngine,
    profile: ProfileId,
    slot: Arc<SwapSlot>,
}

impl SwapHandle {
    /// Validates nothing more: `version` is already loaded. Instantiates it, runs `init` with
    /// `setup`, and only if that succeeds queues it for the swap. On a fault the running
    /// instance is untouched and the fault is returned.
    pub fn hot_swap(
        &self,
        version: &PluginVersion,
        setup: InstanceSetup,
    ) -> Result<(), PluginFault> {
        assert_eq!(
            setup.profile, self.profile,
            "a swap must target the strategy's own profile"
        );
        let prepared = self.engine.prepare_replacement(version, setup)?;
        self.offer(prepared);
        Ok(())
    }

    /// Queues a prepared instance; a replacement queued earlier and not yet taken is dropped.
    pub fn offer(&self, prepared: PreparedInstance) {
        *self.slot.instance.lock().unwrap() = Some(prepared);
        self.slot.pending.store(true, Ordering::Release);
    }

    /// True while a queued replacement has not been taken.
    pub fn is_pending(&self) -> bool {
        self.slot.pending.load(Ordering::Acquire)
    }

    /// The plugin the strategy runs now: a queued replacement counts once it is taken.
    pub fn running(&self) -> RunningVersion {
        self.slot.running.lock().unwrap().clone()
    }
}

impl WasmStrategy {
    pub(crate) fn new(
        engine: PluginEngine,
        profile: ProfileId,
        prepared: PreparedInstance,
    ) -> Self {
        let running = RunningVersion {
            name: prepared.setup().name.clone(),
            digest: prepared.digest().clone(),
            takeovers: 0,
        };
        WasmStrategy {
            engine,
            profile,
            digest: prepared.digest().clone(),
            last_version: prepared.version().clone(),
            last_setup: prepared.setup().clone(),
            current: Some(prepared),
            swap: Arc::new(SwapSlot::new(running)),
            dead_log: (Vec::new(), LogCounters::default()),
            // The kernel treats a strategy it was just given as fresh anyway.
            fresh: false,
            start_fault: None,
            pacing: Pacing::default(),
        }
    }

    /// A strategy whose first instance faulted while starting (`fault`, already counted): no
    /// instance serves until a hot-swap or a reconfiguration brings one.
    pub(crate) fn faulted(
        engine: PluginEngine,
        version: PluginVersion,
        setup: InstanceSetup,
        fault: PluginFault,
    ) -> Self {
        // What the profile was to run: it runs nothing until a swap brings an instance.
        let running = RunningVersion {
            name: setup.name.clone(),
            digest: version.digest.clone(),
            takeovers: 0,
        };
        WasmStrategy {
            engine,
            profile: setup.profile,
            digest: version.digest.clone(),
            last_version: version,
            last_setup: setup,
            current: None,
            swap: Arc::new(SwapSlot::new(running)),
            dead_log: (Vec::new(), LogCounters::default()),
            fresh: false,
            start_fault: Some(fault),
            pacing: Pacing::default(),
        }
    }

    /// The profile served.
    pub fn profile(&self) -> ProfileId {
        self.profile
    }

    /// The plugin version serving now (or that served last, if the instance is dead).
    pub fn digest(&self) -> &PluginDigest {
        &self.digest
    }

    /// False once a fault dropped the instance.
    pub fn is_alive(&self) -> bool {
        self.current.is_some()
    }

    /// A handle to hot-swap this strategy from another thread.
    pub fn swap_handle(&self) -> SwapHandle {
        SwapHandle {
            engine: self.engine.clone(),
            profile: self.profile,
            slot: self.swap.clone(),
        }
    }

    /// Replaces the instance now (the caller holds the strategy, so no call is in progress).
    pub fn replace(&mut self, prepared: PreparedInstance) {
        {
            let mut running = self.swap.running.lock().unwrap();
            running.name = prepared.setup().name.clone();
            running.digest = prepared.digest().clone();
            running.takeovers += 1;
        }
        self.digest = prepared.digest().clone();
        self.last_version = prepared.version().clone();
        self.last_setup = prepared.setup().clone();
        self.current = Some(prepared);
        self.fresh = true;
        self.start_fault = None;
    }

    /// The last lines of the current instance's log (of the dropped one, after a fault).
    pub fn log_lines(&self) -> Vec<LogLine> {
        match &self.current {
            Some(instance) => instance.log_lines(),
            None => self.dead_log.0.clone(),
        }
    }

    /// The log counters of the current instance (of the dropped one, after a fault).
    pub fn log_counters(&self) -> LogCounters {
        match &self.current {
            Some(instance) => instance.log_counters(),
            None => self.dead_log.1,
        }
    }

    fn take_swap(&mut self) {
        if self.swap.pending.load(Ordering::Acquire) {
            self.swap.pending.store(false, Ordering::Release);
            let taken = self.swap.instance.lock().unwrap().take();
            if let Some(prepared) = taken {
                let span = prepared.span().clone();
                let _entered = span.enter();
                tracing::info!(from_sha256 = %self.digest, "plugin hot-swapped");
                self.engine.inner.hot_swaps.with_label_values(&["ok"]).inc();
                self.replace(prepared);
            }
        }
    }

    /// Runs one call (or a batch of calls) on the live instance, off the async runtime's
    /// threads, at the priority the profile's [`Pacing`] says, and books its fault, if any.
    /// A call's cost is booked in the pacing only if `paced` (a warm-up's batch of calls is
    /// no measure of one).
    fn call<T: Send>(
        &mut self,
        paced: bool,
        run: impl FnOnce(&mut PreparedInstance) -> Result<T, PluginFault> + Send,
    ) -> Result<T, PluginFault> {
        self.take_swap();
        let result = match self.current.as_mut() {
            Some(instance) => {
                // A start left by a call the pacing timed otherwise (a probe, a low-priority
                // call) is not this one's.
                instance.take_call_wall();
                let span = instance.span().clone();
                let job = || {
                    let _entered = span.enter();
                    run(instance)
                };
                let mode = self.pacing.mode;
                let ran = match mode {
                    Mode::Normal => executor::run_guest(job).map(|result| {
                        let took = instance.take_call_wall().unwrap_or(Duration::ZERO);
                        (result, took)
                    }),
                    Mode::Probe => executor::run_guest(|| executor::with_cpu_time(job)),
                    Mode::Low => {
                        self.engine.inner.low_priority_calls.inc();
                        executor::run_guest_low(job)
                    }
                };
                ran.and_then(|(result, cost)| {
                    if paced {
                        self.pacing.after_call(mode, cost);
                    }
                    result
                })
            }
            // The start's fault was counted when it happened: said once more, not counted.
            None => match self.start_fault.take() {
                Some(fault) => return Err(fault),
                None => Err(PluginFault::Dead),
            },
        };
        if let Err(fault) = &result {
            self.engine
                .inner
                .faults
                .record(self.profile, &self.digest, fault);
            if !matches!(fault, PluginFault::InvalidOutput(_))
                && let Some(dead) = self.current.take()
            {
                let _entered = dead.span().enter();
                tracing::warn!(%fault, "plugin instance dropped after a fault");
                self.dead_log = (dead.log_lines(), dead.log_counters());
            }
        }
        result
    }
}

impl StrategyRuntime for WasmStrategy {
    /// Reconfigures: a fresh instance of the same plugin version runs `init` with `config` and
    /// replaces the current one only if `init` succeeds (a plugin's `init` runs once per
    /// instance). [`PluginEngine::start`] already ran `init` with the setup's config.
    fn init(&mut self, config: &[(String, String)]) -> Result<(), PluginFault> {
        let (version, mut setup) = match &self.current {
            Some(current) => (current.version().clone(), current.setup().clone()),
            None => (self.last_version.clone(), self.last_setup.clone()),
        };
        setup.config = config.into();
        let prepared = self.engine.prepare(&version, setup)?;
        self.replace(prepared);
        Ok(())
    }

    fn on_candle(
        &mut self,
        candle: &Candle,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.call(true, |instance| instance.on_candle(candle, view))
    }

    fn on_fill(
        &mut self,
        fill: &FillView,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.call(true, |instance| instance.on_fill(fill, view))
    }

    fn on_timer(&mut self, now_ms: i64, view: &AccountView) -> Result<Vec<RawIntent>, PluginFault> {
        self.call(true, |instance| instance.on_timer(now_ms, view))
    }

    /// Replays the candles in one batch on the guest's thread, within the version's warm-up
    /// budget ([`PluginLimits::warm_up_ms_max`](super::PluginLimits::warm_up_ms_max)); each
    /// call keeps its own budgets. A replay cut short by the budget is no fault.
    fn warm_up(&mut self, candles: &[Candle], view: &AccountView) -> (u64, Option<PluginFault>) {
        let budget = Duration::from_millis(self.last_version.limits.warm_up_ms_max);
        let mut replayed = 0_u64;
        // At the profile's priority: a heavy plugin's warm-up runs at low priority.
        let result = self.call(false, |instance| {
            let started = Instant::now();
            for candle in candles {
                if started.elapsed() >= budget {
                    tracing::warn!(
                        replayed,
                        candles = candles.len(),
                        "warm-up stopped: its time budget is spent"
                    );
                    break;
                }
                instance.on_candle(candle, view)?;
                replayed += 1;
            }
            Ok(())
        });
        (replayed, result.err())
    }

    /// Takes a queued hot-swap now (this is a call boundary), so the kernel warms the new
    /// instance up before its first live call.
    fn take_fresh(&mut self) -> bool {
        self.take_swap();
        std::mem::take(&mut self.fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavy_call_confirmed_by_cpu_lowers_the_priority_and_a_run_of_light_ones_restores_it() {
        let mut pacing = Pacing::default();
        pacing.after_normal_call(HEAVY_CALL / 2);
        assert_eq!(pacing.mode, Mode::Normal, "a light call changes nothing");
        pacing.after_normal_call(HEAVY_CALL);
        assert_eq!(pacing.mode, Mode::Probe);
        pacing.after_probe_call(HEAVY_CALL / 2);
        assert_eq!(
            pacing.mode,
            Mode::Normal,
            "a call slow only by the wall clock (waiting for a core) is no heavy call"
        );
        pacing.after_normal_call(HEAVY_CALL);
        pacing.after_probe_call(HEAVY_CALL);
        assert_eq!(pacing.mode, Mode::Low);
        for _ in 1..LIGHT_CALLS_TO_RESTORE {
            pacing.after_low_call(HEAVY_CALL / 4);
        }
        pacing.after_low_call(HEAVY_CALL);
        assert_eq!(
            pacing.mode,
            Mode::Low,
            "a heavy call breaks the run of light ones"
        );
        for _ in 1..LIGHT_CALLS_TO_RESTORE {
            pacing.after_low_call(Duration::ZERO);
        }
        assert_eq!(pacing.mode, Mode::Low, "one light call short of the run");
        pacing.after_low_call(Duration::ZERO);
        assert_eq!(pacing.mode, Mode::Normal);
    }

    #[test]
    fn a_plugin_that_spaces_its_heavy_calls_out_waits_longer_each_time() {
        let mut pacing = Pacing::default();
        let mut runs = Vec::new();
        for _ in 0..12 {
            pacing.after_normal_call(HEAVY_CALL);
            pacing.after_probe_call(HEAVY_CALL);
            let mut light = 0;
            while pacing.mode == Mode::Low {
                pacing.after_low_call(Duration::ZERO);
                light += 1;
            }
            runs.push(light);
        }
        assert_eq!(
            runs,
            [
                16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 4096, 4096, 4096
            ]
        );
    }
}
