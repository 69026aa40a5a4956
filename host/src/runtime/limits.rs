//! The budgets a plugin lives under. Every one has a safe default and a name that carries its
//! unit.

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
    /// Budgets given to every instance.
    pub limits: PluginLimits,
    /// The largest plugin file accepted, in bytes.
    pub plugin_bytes_max: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            instances_max: 1_100,
            epoch_tick_ms: 5,
            cache_dir: None,
            limits: PluginLimits::default(),
            plugin_bytes_max: 64 << 20,
        }
    }
}
