//! The budgets a plugin lives under. Every one has a safe default and a name that carries its
//! unit.

pub use super::compile::CompileLimits;
use super::guest::GuestLanguage;

/// The largest plugin file accepted unless configured otherwise, in bytes: room for the
/// componentize-py example (about 18 MB, CPython inside) and its like, not for arbitrary
/// payloads.
pub const PLUGIN_BYTES_MAX_DEFAULT: usize = 32 << 20;

/// Per-instance budgets, checked on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Fuel (roughly, Wasm instructions) one `on-*` call may burn. Deterministic: a backtest and
    /// a live run cut a runaway strategy off at the same point.
    pub fuel_per_call: u64,
    /// Fuel `init` may burn (parsing config, building tables).
    pub fuel_per_init: u64,
    /// Wall-clock backstop for one call, in milliseconds, enforced through epoch interruption.
    pub call_deadline_ms: u64,
    /// Wall-clock budget of one warm-up (the replay of recent candles into a fresh instance),
    /// in milliseconds: the replay stops, short of its window, when it is spent.
    pub warm_up_ms_max: u64,
    /// Linear memory one instance may hold, in bytes.
    pub memory_bytes_max: usize,
    /// Intents one call may return; more is an invalid output.
    pub intents_per_call_max: usize,
    /// Bytes of one intent's tag; more is an invalid output.
    pub tag_bytes_max: usize,
    /// Bytes of a client order id in a cancel; more is an invalid output.
    pub client_order_id_bytes_max: usize,
    /// Bytes of one log line; longer lines are truncated.
    pub log_message_bytes_max: usize,
    /// Log lines kept per call (log calls plus stdout/stderr lines); the rest are dropped and
    /// counted.
    pub log_lines_per_call_max: u32,
    /// Instrument handles one instance may hold.
    pub symbols_max: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            fuel_per_call: 10_000_000,
            fuel_per_init: 100_000_000,
            call_deadline_ms: 250,
            warm_up_ms_max: 2_000,
            memory_bytes_max: 32 << 20,
            intents_per_call_max: 64,
            tag_bytes_max: 64,
            client_order_id_bytes_max: 36,
            log_message_bytes_max: 1024,
            log_lines_per_call_max: 32,
            symbols_max: 256,
        }
    }
}

impl PluginLimits {
    /// The defaults for a Python plugin (a componentize-py component, detected at load): CPython
    /// needs a larger heap than a compiled guest, and interpreting a strategy burns far more
    /// fuel per call. The call deadline and every output bound stay those of
    /// [`PluginLimits::default`].
    pub fn python() -> Self {
        PluginLimits {
            fuel_per_call: PYTHON_FUEL_PER_CALL,
            fuel_per_init: PYTHON_FUEL_PER_INIT,
            memory_bytes_max: PYTHON_MEMORY_BYTES_MAX,
            ..PluginLimits::default()
        }
    }
}

/// Fuel of one `on-*` call of a Python plugin.
const PYTHON_FUEL_PER_CALL: u64 = 100_000_000;
/// Fuel of a Python plugin's `init`.
const PYTHON_FUEL_PER_INIT: u64 = 1_000_000_000;
/// Linear memory of one Python instance, in bytes.
const PYTHON_MEMORY_BYTES_MAX: usize = 128 << 20;

/// Process-wide settings of the plugin engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Live instances the pooling allocator reserves slots for (all profiles together, plus the
    /// instances being prepared for a hot-swap).
    pub instances_max: u32,
    /// How often the epoch ticker advances, in milliseconds; the granularity of deadlines.
    pub epoch_tick_ms: u64,
    /// Where compiled plugins are cached, keyed by content and engine; `None` disables the cache.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Budgets given to every instance of a compiled plugin.
    pub limits: PluginLimits,
    /// Budgets given to every instance of a Python plugin.
    pub python_limits: PluginLimits,
    /// The largest plugin file accepted, in bytes.
    pub plugin_bytes_max: usize,
    /// What a component may hold to be compiled, and what compiling it may take.
    pub compile: CompileLimits,
    /// Bytes at the start of a freed instance slot's linear memory kept mapped for the next
    /// instance: only the pages the instance dirtied are reset (Linux's `PAGEMAP_SCAN`, kernel
    /// 6.7 or later; a `memset` of the whole range elsewhere), so a new instance does not
    /// fault its stack and data pages in again. 0 returns every page to the kernel.
    pub keep_resident_bytes: usize,
}

/// Covers a Rust guest's stack (1 MiB, at the bottom of its memory), data and first heap pages.
pub const KEEP_RESIDENT_BYTES_DEFAULT: usize = 2 << 20;

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            instances_max: 1_100,
            epoch_tick_ms: 5,
            cache_dir: None,
            limits: PluginLimits::default(),
            python_limits: PluginLimits::python(),
            plugin_bytes_max: PLUGIN_BYTES_MAX_DEFAULT,
            compile: CompileLimits::default(),
            keep_resident_bytes: KEEP_RESIDENT_BYTES_DEFAULT,
        }
    }
}

impl EngineSettings {
    /// The budgets of a plugin written in `language`.
    pub fn limits_for(&self, language: GuestLanguage) -> &PluginLimits {
        match language {
            GuestLanguage::Python => &self.python_limits,
            GuestLanguage::Compiled => &self.limits,
        }
    }

    /// The largest linear memory any plugin may hold, in bytes: what the pooling allocator
    /// reserves per slot.
    pub fn memory_bytes_max(&self) -> usize {
        self.limits
            .memory_bytes_max
            .max(self.python_limits.memory_bytes_max)
    }
}
