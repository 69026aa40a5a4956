//! The `keel` binary's one-shot commands, run as a user runs them: `plugin check`, `plugin new`,
//! `backtest`, `bench`, `exchange-sim` and `config check`.

mod backtest;
mod bench;
mod config_check;
mod exchange_sim;
mod plugin;
mod scaffold;

mod common {
    use std::path::{Path, PathBuf};

    use keel_backtest::synthetic::{random_walk, to_plain_csv};
    use keel_kernel::ids::Symbol;
    pub use keel_testkit::example_plugin_path as plugin_path;

    /// Candles of the generated files: two weeks of minutes.
    pub const CANDLES: usize = 20_000;

    /// Writes `CANDLES` generated candles on BTCUSDT as a plain CSV into `dir`.
    pub fn candle_file(dir: &Path, seed: u64) -> PathBuf {
        let path = dir.join(format!("candles-{seed}.csv"));
        let symbol = Symbol::new("BTCUSDT").unwrap();
        std::fs::write(&path, to_plain_csv(&random_walk(&symbol, CANDLES, seed))).unwrap();
        path
    }
}
