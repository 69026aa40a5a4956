//! A strategy wrapper that counts and times every call into the plugin.

use std::sync::Arc;
use std::time::Instant;

use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use keel_kernel::strategy::{AccountView, FillView, PluginFault, RawIntent, StrategyRuntime};

/// Records `keel_plugin_calls_total{export}` and `keel_plugin_call_duration_seconds{export}`
/// around each call of the wrapped strategy. Faults pass through unchanged.
pub struct MeteredStrategy {
    inner: Box<dyn StrategyRuntime>,
    metrics: Arc<Metrics>,
}

impl MeteredStrategy {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn StrategyRuntime>, metrics: Arc<Metrics>) -> Self {
        MeteredStrategy { inner, metrics }
    }

    fn timed<T>(&mut self, export: &str, call: impl FnOnce(&mut dyn StrategyRuntime) -> T) -> T {
        let started = Instant::now();
        let out = call(self.inner.as_mut());
        self.metrics
            .plugin_calls_total
            .with_label_values(&[export])
            .inc();
        self.metrics
            .plugin_call_duration_seconds
            .with_label_values(&[export])
            .observe(started.elapsed().as_secs_f64());
        out
    }
}

impl StrategyRuntime for MeteredStrategy {
    fn init(&mut self, config: &[(String, String)]) -> Result<(), PluginFault> {
        self.timed("init", |s| s.init(config))
    }

    fn on_candle(
        &mut self,
        candle: &Candle,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.timed("on-candle", |s| s.on_candle(candle, view))
    }

    fn on_fill(
        &mut self,
        fill: &FillView,
        view: &AccountView,
    ) -> Result<Vec<RawIntent>, PluginFault> {
        self.timed("on-fill", |s| s.on_fill(fill, view))
    }

    fn on_timer(&mut self, now_ms: i64, view: &AccountView) -> Result<Vec<RawIntent>, PluginFault> {
        self.timed("on-timer", |s| s.on_timer(now_ms, view))
    }

    fn warm_up(&mut self, candles: &[Candle], view: &AccountView) -> (u64, Option<PluginFault>) {
        self.timed("warm-up", |s| s.warm_up(candles, view))
    }

    fn take_fresh(&mut self) -> bool {
        self.inner.take_fresh()
    }
}
