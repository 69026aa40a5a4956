//! The Python example (`plugins-example/python/sma_cross_py`, built by componentize-py) trades
//! through the whole kernel path, decision for decision like the Rust `sma-cross`: the WIT
//! contract, not Rust, is the interface.

use keel_backtest::run::run_backtest;
use keel_runtime::{EngineSettings, GuestLanguage, PluginEngine, PluginLimits};

use crate::common::{plugin_path, spec};

#[tokio::test]
async fn python_sma_cross_trades_exactly_like_the_rust_one() {
    // Seed 3 in long-short mode makes short trades (see runs.rs).
    let config = vec![("mode".to_string(), "long-short".to_string())];
    let mut python = spec("sma-cross-py", 3);
    python.config = config.clone();
    let mut rust = spec("sma-cross", 3);
    rust.config = config;
    let python = run_backtest(&python, false).await.unwrap();
    let rust = run_backtest(&rust, false).await.unwrap();
    assert!(python.summary.trades > 10, "{:?}", python.summary);
    assert!(python.trades.iter().any(|t| t.side == "short"));
    assert!(python.trades.iter().any(|t| t.exit_time_ms.is_some()));
    assert_eq!(python.trades, rust.trades);
    assert_eq!(python.equity, rust.equity);
    assert_eq!(python.summary, rust.summary);
}

#[test]
fn a_python_plugin_is_detected_and_gets_the_python_budgets() {
    let engine = PluginEngine::new(EngineSettings {
        instances_max: 2,
        cache_dir: keel_runtime::user_cache_dir(),
        ..EngineSettings::default()
    })
    .unwrap();
    let python = engine
        .load(&std::fs::read(plugin_path("sma-cross-py")).unwrap())
        .unwrap();
    assert_eq!(python.report().language, GuestLanguage::Python);
    assert_eq!(*python.limits(), PluginLimits::python());
    let rust = engine
        .load(&std::fs::read(plugin_path("sma-cross")).unwrap())
        .unwrap();
    assert_eq!(rust.report().language, GuestLanguage::Compiled);
    assert_eq!(*rust.limits(), PluginLimits::default());
}

#[tokio::test]
async fn a_misspelt_config_key_stops_the_run_naming_it_in_both_languages() {
    for plugin in ["sma-cross", "sma-cross-py"] {
        let mut run = spec(plugin, 0);
        run.config = vec![("fats".to_owned(), "10".to_owned())];
        let error = run_backtest(&run, false).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("unknown config key `fats` (did you mean `fast`?)"),
            "{plugin}: {message}"
        );
    }
}
