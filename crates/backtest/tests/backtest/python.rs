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

/// The Rust and the Python plugins declare their parameters: the host refuses the key before
/// `init`, with one message. The 0.1.0 plugin declares none and refuses it in its own `init`.
#[tokio::test]
async fn a_misspelt_config_key_stops_the_run_naming_it_in_every_language_and_version() {
    for (plugin, refusal) in [
        (
            "sma-cross",
            "configuration refused: plugin sma_cross has no parameter `fats` (did you mean \
             `fast`?); its parameters are fast, slow, mode, size_fraction",
        ),
        (
            "sma-cross-py",
            "configuration refused: plugin sma_cross_py has no parameter `fats` (did you mean \
             `fast`?); its parameters are fast, slow, mode, size_fraction",
        ),
        (
            "sma-cross-0-1-0",
            "init refused: unknown config key `fats` (did you mean `fast`?)",
        ),
    ] {
        let mut run = spec(plugin, 0);
        run.config = vec![("fats".to_owned(), "10".to_owned())];
        let error = run_backtest(&run, false).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains(refusal), "{plugin}: {message}");
    }
}

/// Values out of the declared range or of the wrong type are refused before `init`, in both
/// languages, naming the key and what it takes.
#[tokio::test]
async fn an_out_of_range_or_mistyped_value_stops_the_run_naming_the_range() {
    for plugin in ["sma-cross", "sma-cross-py"] {
        for (key, value, takes) in [
            ("fast", "0", "takes int in [1, 10000], not \"0\""),
            ("slow", "thirty", "takes an int, not \"thirty\""),
            (
                "size_fraction",
                "1.5",
                "takes float in [0.001, 1], not \"1.5\"",
            ),
        ] {
            let mut run = spec(plugin, 0);
            run.config = vec![(key.to_owned(), value.to_owned())];
            let error = run_backtest(&run, false).await.unwrap_err();
            let message = format!("{error:#}");
            // The plugin is named by its file (`sma_cross.wasm`).
            let file = plugin.replace('-', "_");
            let expected = format!("plugin {file}: parameter `{key}` {takes}");
            assert!(message.contains(&expected), "{plugin}: {message}");
        }
    }
}

/// A component built against the released 0.1.0 contract runs on the 0.1.1 host and trades
/// decision for decision like the current `sma-cross`.
#[tokio::test]
async fn a_0_1_0_plugin_trades_exactly_like_the_current_one() {
    let config = vec![("mode".to_string(), "long-short".to_string())];
    let mut old = spec("sma-cross-0-1-0", 3);
    old.config = config.clone();
    let mut current = spec("sma-cross", 3);
    current.config = config;
    let old = run_backtest(&old, false).await.unwrap();
    let current = run_backtest(&current, false).await.unwrap();
    assert!(old.summary.trades > 10, "{:?}", old.summary);
    assert_eq!(old.trades, current.trades);
    assert_eq!(old.summary, current.summary);
}
