//! What a report says about a run: refused intents (summary, JSON, plot, `--strict`), fills at
//! the time they happened, bars and ISO times, and the plot's panels.

use keel_backtest::cli;
use keel_backtest::report::BacktestReport;
use keel_backtest::run::run_backtest;
use keel_backtest::synthetic::to_plain_csv;
use rust_decimal::Decimal;

use crate::common::{args, spec};

/// With 40 of capital, sma-cross's entries (a tenth of free capital: 4) are below the
/// instrument's minimum notional of 5, so the kernel refuses every one.
async fn refused_run(seed: u64) -> BacktestReport {
    let mut spec = spec("sma-cross", seed);
    spec.candles.truncate(3_000);
    spec.capital = Decimal::from(40);
    run_backtest(&spec, false).await.unwrap()
}

#[tokio::test]
async fn every_refusal_is_counted_by_rule_and_listed_with_its_bar_and_intent() {
    let report = refused_run(31).await;
    let s = &report.summary;
    assert_eq!(
        s.trades, 0,
        "an entry below the minimum notional went through"
    );
    assert!(s.refusals > 10, "{s:?}");
    assert_eq!(report.refusals.len(), s.refusals, "every refusal is listed");
    assert_eq!(s.refusals_by_rule.values().sum::<usize>(), s.refusals);
    for refusal in &report.refusals {
        assert!(s.refusals_by_rule.contains_key(&refusal.rule));
        let candle = &spec("sma-cross", 31).candles[refusal.bar];
        assert_eq!(refusal.time_ms, candle.close_time_ms, "{refusal:?}");
        assert!(refusal.time.ends_with('Z') && refusal.time.starts_with("2024-01-"));
        assert!(!refusal.message.is_empty());
        assert_eq!(refusal.what(), "entry long BTCUSDT");
    }
    assert!(report.refusals.windows(2).all(|w| w[0].bar <= w[1].bar));
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let first = &json["refusals"][0];
    assert_eq!(first["intent"]["kind"], "entry");
    assert_eq!(first["intent"]["side"], "long");
    assert_eq!(first["intent"]["symbol"], "BTCUSDT");
    assert!(first["bar"].is_u64() && first["time"].is_string() && first["rule"].is_string());
    assert_eq!(
        json["summary"]["refusals"].as_u64(),
        Some(s.refusals as u64)
    );
    let table = keel_backtest::report::summary_table(&report);
    assert!(table.contains("refusals"), "{table}");
    for rule in s.refusals_by_rule.keys() {
        assert!(table.contains(&format!("refused by {rule}")), "{table}");
    }
}

/// More refusals than the engine keeps in memory (256) are all in the report.
#[tokio::test]
async fn refusals_beyond_the_engines_memory_are_all_reported() {
    let mut spec = spec("sma-cross", 32);
    spec.capital = Decimal::from(40);
    // Fast averages cross often: a refused entry at nearly every upward cross.
    spec.config = vec![("fast".into(), "2".into()), ("slow".into(), "3".into())];
    let report = run_backtest(&spec, false).await.unwrap();
    assert!(report.summary.refusals > 256, "{:?}", report.summary);
    assert_eq!(report.refusals.len(), report.summary.refusals);
}

#[tokio::test]
async fn strict_fails_naming_the_count_and_the_first_refusal_after_writing_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut candles = spec("sma-cross", 33).candles;
    candles.truncate(3_000);
    let path = dir.path().join("candles.csv");
    std::fs::write(&path, to_plain_csv(&candles)).unwrap();
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let mut strict = args("sma-cross", &path);
    strict.capital = Decimal::from(40);
    strict.strict = true;
    strict.json = Some(json.clone());
    strict.plot = Some(svg.clone());
    let error = format!("{:#}", cli::run(strict).await.unwrap_err());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let count = report["summary"]["refusals"].as_u64().unwrap();
    let first = &report["refusals"][0];
    assert!(
        error.starts_with(&format!("--strict: the kernel refused {count} intents; the first, at {} (bar {}): entry long BTCUSDT refused by {}: ",
            first["time"].as_str().unwrap(),
            first["bar"],
            first["rule"].as_str().unwrap())),
        "{error}"
    );
    assert!(svg.exists(), "the plot is drawn before --strict fails");

    // Without refusals --strict passes.
    let mut clean = args("sma-cross", &path);
    clean.strict = true;
    cli::run(clean).await.unwrap();
}

/// A market order decided at a candle's close fills at the next candle's open: the fill is
/// stamped with that candle's open time and price, and the trade carries its bar.
#[tokio::test]
async fn fills_are_stamped_at_the_open_of_the_next_candle() {
    let spec = spec("sma-cross", 34);
    let report = run_backtest(&spec, false).await.unwrap();
    assert!(report.trades.len() > 5);
    for trade in &report.trades {
        let entry = &spec.candles[trade.entry_bar];
        assert_eq!(trade.entry_time_ms, entry.open_time_ms, "{trade:?}");
        assert_eq!(
            trade.entry_price.to_string(),
            entry.open.to_string(),
            "{trade:?}"
        );
        assert_eq!(
            trade.entry_time,
            keel_backtest::candles::iso_ms(entry.open_time_ms)
        );
        assert!(
            trade.entry_bar > 0,
            "a decision needs a closed candle first"
        );
        if let (Some(exit_ms), Some(bar)) = (trade.exit_time_ms, trade.exit_bar) {
            let exit = &spec.candles[bar];
            assert_eq!(exit_ms, exit.open_time_ms, "{trade:?}");
            assert_eq!(
                trade.exit_price.unwrap().to_string(),
                exit.open.to_string(),
                "{trade:?}"
            );
            assert!(bar > trade.entry_bar);
        }
    }
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let point = &json["equity"][7];
    assert_eq!(point["bar"], 7);
    assert_eq!(
        point["time"], "2024-01-01T00:08:00Z",
        "the close of the 8th minute"
    );
    assert_eq!(json["start"], "2024-01-01T00:00:00Z");
}

#[tokio::test]
async fn the_summary_states_period_buy_and_hold_exposure_and_trades_closed_and_open() {
    let spec = spec("sma-cross", 35);
    let report = run_backtest(&spec, false).await.unwrap();
    let s = &report.summary;
    let (first, last) = (&spec.candles[0], spec.candles.last().unwrap());
    assert_eq!(s.buy_and_hold_return, last.close / first.open - 1.0);
    assert_eq!(s.trades, s.trades_closed + s.trades_open);
    assert!(s.trades_open <= 1);
    let in_position = report.equity.iter().filter(|p| p.in_position).count();
    assert_eq!(s.exposure, in_position as f64 / report.equity.len() as f64);
    let table = keel_backtest::report::summary_table(&report);
    for row in [
        "period",
        "2024-01-01T00:00:00Z to 2024-01-14T21:19:00Z",
        "buy and hold return",
        "exposure",
        "win rate (closed)",
        &format!("{} closed, {} open", s.trades_closed, s.trades_open),
        "10,000",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
}

#[tokio::test]
async fn the_plot_has_price_equity_and_drawdown_with_marks_in_its_legend() {
    let dir = tempfile::tempdir().unwrap();
    let mut long_short = spec("sma-cross", 36);
    long_short.config = vec![("mode".into(), "long-short".into())];
    let report = run_backtest(&long_short, false).await.unwrap();
    let svg = dir.path().join("plot.svg");
    keel_backtest::plot::plot(&report, &long_short.candles, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "price",
        "close",
        "long entries",
        "short entries",
        "exits (",
        "refused intents",
        "equity",
        "drawdown",
        "2024-01-0",
    ] {
        assert!(text.contains(label), "{label} missing from the plot");
    }
    // Refused entries are marked and counted in the legend.
    let refused = refused_run(38).await;
    assert!((1..=500).contains(&refused.summary.refusals));
    let refused_svg = dir.path().join("refused.svg");
    let mut candles = spec("sma-cross", 38).candles;
    candles.truncate(3_000);
    keel_backtest::plot::plot(&refused, &candles, &refused_svg).unwrap();
    let text = std::fs::read_to_string(&refused_svg).unwrap();
    let label = format!("refused intents ({})", refused.summary.refusals);
    assert!(text.contains(&label), "{label} missing from the plot");
    let png = dir.path().join("plot.png");
    keel_backtest::plot::plot(&report, &long_short.candles, &png).unwrap();
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");

    // Thousands of trades: the markers are thinned and the legend says so.
    let mut busy = spec("sma-cross", 37);
    busy.config = vec![
        ("fast".into(), "2".into()),
        ("slow".into(), "3".into()),
        ("mode".into(), "long-short".into()),
    ];
    let report = run_backtest(&busy, false).await.unwrap();
    assert!(report.trades.len() > 1_000, "{}", report.trades.len());
    let svg = dir.path().join("busy.svg");
    keel_backtest::plot::plot(&report, &busy.candles, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains(" drawn)"),
        "the legend does not say markers were thinned"
    );
}
