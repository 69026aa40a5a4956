//! Backtests of the example plugins through the library entry point.

use keel_backtest::report::BacktestReport;
use keel_backtest::run::{BacktestStore, run_backtest};
use keel_backtest::synthetic::random_walk;
use keel_exchange::paper::CLOSED_ORDERS_REMEMBERED_MAX;
use rust_decimal::Decimal;

use crate::common::{CANDLES, spec, symbol};

fn assert_sane(report: &BacktestReport) {
    let s = &report.summary;
    assert_eq!(report.candles, CANDLES);
    assert_eq!(report.equity.len(), CANDLES);
    assert!(s.trades > 0, "{} never traded", report.plugin);
    assert!(s.final_equity.is_finite() && s.final_equity > 0.0, "{s:?}");
    assert!((0.0..1.0).contains(&s.max_drawdown), "{s:?}");
    assert!(
        (0.0..=1.0).contains(&s.exposure) && s.exposure > 0.0,
        "{s:?}"
    );
    assert!((0.0..=1.0).contains(&s.win_rate), "{s:?}");
    assert!(
        s.sharpe.is_finite() && s.annualised_return.is_finite(),
        "{s:?}"
    );
    assert!(s.fees_paid > Decimal::ZERO, "{s:?}");
    let fees: Decimal = report.trades.iter().map(|t| t.fees).sum();
    assert_eq!(fees, s.fees_paid, "every fee belongs to a trade");
    for trade in &report.trades {
        if let Some(exit_ms) = trade.exit_time_ms {
            assert!(exit_ms > trade.entry_time_ms, "{trade:?}");
        }
        assert!(trade.qty > Decimal::ZERO && trade.entry_price > Decimal::ZERO);
    }
    // Equity is capital + realized + unrealized: with no position open at the end it is exactly
    // capital + realized PnL.
    if !report.equity.last().unwrap().in_position {
        let expected = 10_000.0 + s.realized_pnl.to_string().parse::<f64>().unwrap();
        assert!((s.final_equity - expected).abs() < 1e-6, "{s:?}");
    }
}

#[tokio::test]
async fn sma_cross_backtest_trades_and_reports_a_sane_summary() {
    let report = run_backtest(&spec("sma-cross", 1), false).await.unwrap();
    assert_sane(&report);
}

#[tokio::test]
async fn rsi_reversion_backtest_trades_and_reports_a_sane_summary() {
    let report = run_backtest(&spec("rsi-reversion", 2), false)
        .await
        .unwrap();
    assert_sane(&report);
}

#[tokio::test]
async fn long_short_mode_reports_short_trades() {
    let mut spec = spec("sma-cross", 3);
    spec.config = vec![("mode".into(), "long-short".into())];
    let report = run_backtest(&spec, false).await.unwrap();
    assert_sane(&report);
    assert!(report.trades.iter().any(|t| t.side == "short"));
}

#[tokio::test]
async fn trade_pnl_less_fees_reconciles_with_the_ledger() {
    for (plugin, seed) in [("sma-cross", 4), ("rsi-reversion", 5)] {
        let report = run_backtest(&spec(plugin, seed), false).await.unwrap();
        let net: Decimal = report.trades.iter().map(|t| t.pnl - t.fees).sum();
        assert_eq!(net, report.summary.realized_pnl, "{plugin}");
        let by_field: Decimal = report.trades.iter().map(|t| t.net_pnl).sum();
        assert_eq!(by_field, net, "{plugin}");
    }
}

#[tokio::test]
async fn the_same_inputs_give_byte_identical_json() {
    let first = run_backtest(&spec("sma-cross", 6), false).await.unwrap();
    let second = run_backtest(&spec("sma-cross", 6), false).await.unwrap();
    let a = serde_json::to_vec_pretty(&first).unwrap();
    let b = serde_json::to_vec_pretty(&second).unwrap();
    assert!(a == b, "two runs of the same inputs differ");
    let other = run_backtest(&spec("sma-cross", 7), false).await.unwrap();
    assert_ne!(a, serde_json::to_vec_pretty(&other).unwrap());
}

#[tokio::test]
async fn a_higher_fee_costs_more_and_is_reported() {
    let cheap = run_backtest(&spec("sma-cross", 8), false).await.unwrap();
    let mut dear_spec = spec("sma-cross", 8);
    dear_spec.fee_bps = Decimal::from(20);
    let dear = run_backtest(&dear_spec, false).await.unwrap();
    assert!(dear.summary.fees_paid > cheap.summary.fees_paid * Decimal::from(4));
    assert!(dear.summary.realized_pnl < cheap.summary.realized_pnl);
}

/// The memory store against the SQLite store, whole backtests compared byte for byte: every
/// example strategy, long-only and long-short, with fees and without, with partial fills and
/// without, over several random walks.
#[tokio::test]
async fn the_memory_store_gives_byte_identical_json_to_sqlite() {
    const DIFFERENTIAL_CANDLES: usize = 5_000;
    let mut compared = 0;
    for plugin in ["sma-cross", "rsi-reversion", "sma-cross-py"] {
        for mode in ["long-only", "long-short"] {
            for (seed, fee_bps, partial_fill_probability) in
                [(21, 4, 0.0), (22, 0, 0.5), (23, 10, 0.2)]
            {
                let mut memory = spec(plugin, seed);
                memory.candles.truncate(DIFFERENTIAL_CANDLES);
                memory.config = vec![("mode".into(), mode.into())];
                memory.fee_bps = Decimal::from(fee_bps);
                memory.partial_fill_probability = partial_fill_probability;
                let mut sqlite = memory.clone();
                sqlite.store = BacktestStore::Sqlite;
                let on_memory = run_backtest(&memory, false).await.unwrap();
                let on_sqlite = run_backtest(&sqlite, false).await.unwrap();
                let case = format!(
                    "{plugin} {mode} seed {seed} fee {fee_bps} bps partial {partial_fill_probability}"
                );
                assert!(on_sqlite.summary.trades > 0, "{case}: no trades");
                let (a, b) = (
                    serde_json::to_vec_pretty(&on_memory).unwrap(),
                    serde_json::to_vec_pretty(&on_sqlite).unwrap(),
                );
                assert!(a == b, "{case}: the memory store changed the report");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 18);
}

#[tokio::test]
async fn every_store_gives_byte_identical_json() {
    let memory = run_backtest(&spec("sma-cross", 10), false).await.unwrap();
    assert!(memory.summary.trades > 0);
    let expected = serde_json::to_vec_pretty(&memory).unwrap();
    for store in [
        BacktestStore::Sqlite,
        BacktestStore::File,
        BacktestStore::Worker,
    ] {
        let mut other = spec("sma-cross", 10);
        other.store = store;
        let report = run_backtest(&other, false).await.unwrap();
        let got = serde_json::to_vec_pretty(&report).unwrap();
        assert!(got == expected, "the {store:?} store changed the report");
    }
}

#[test]
fn a_sweeps_best_row_is_the_single_run_with_its_values() {
    use keel_backtest::sweep::{RankBy, SweepAxis, run_sweep};
    let mut base = spec("sma-cross", 3);
    base.config = vec![("mode".into(), "long-short".into())];
    let axes: Vec<SweepAxis> = vec![
        "fast=2..6:2".parse().unwrap(),
        "slow=8,12,5".parse().unwrap(),
    ];
    let report = run_sweep(&base, &axes, 2, RankBy::TotalReturn, false).unwrap();
    assert_eq!(report.rows.len(), 9);
    // slow=5 is not above fast=6: the plugin refuses it, and the row says so, ranked last.
    let refused = report.rows.last().unwrap();
    assert_eq!(refused.params[1].1, "5", "{refused:?}");
    assert!(
        refused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("must be less than slow")),
        "{refused:?}"
    );
    let ranked: Vec<f64> = report
        .rows
        .iter()
        .filter_map(|r| r.summary.as_ref().map(|s| s.total_return))
        .collect();
    assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{ranked:?}");

    let best = report.best().unwrap();
    let mut single = base.clone();
    single.config.extend(best.params.iter().cloned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let alone = runtime
        .block_on(keel_backtest::run::run_backtest(&single, false))
        .unwrap();
    assert_eq!(best.summary.as_ref(), Some(&alone.summary));

    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    keel_backtest::sweep::heatmap(&report, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("total_return by fast and slow"),
        "{text:.400}"
    );
}

/// A run of more orders than the paper exchange remembers once they are closed
/// ([`CLOSED_ORDERS_REMEMBERED_MAX`]) still reports every trade, from the first: the report is
/// rebuilt from the fills the engine heard, not from those the exchange still holds. (Rebuilt
/// from the exchange's, the trades of the forgotten orders were missing and the first exit
/// left was read as opening a short.)
#[tokio::test]
async fn a_run_of_more_orders_than_the_paper_exchange_remembers_reports_every_trade() {
    let mut spec = spec("sma-cross", 6);
    // Long and short, so that each cross is an exit and an entry.
    spec.candles = random_walk(&symbol(), 120_000, 6);
    spec.config = vec![
        ("fast".into(), "1".into()),
        ("slow".into(), "2".into()),
        ("mode".into(), "long-short".into()),
    ];
    let report = run_backtest(&spec, false).await.unwrap();
    let trades = &report.trades;
    assert!(
        trades.len() * 2 > CLOSED_ORDERS_REMEMBERED_MAX,
        "{} trades: too few orders to outrun the exchange's memory",
        trades.len()
    );
    assert!(trades[0].entry_bar < 10, "{:?}", trades[0]);
    let net: Decimal = trades.iter().map(|t| t.net_pnl).sum();
    assert_eq!(net, report.summary.realized_pnl);
}

/// A position open while the price leaves the range of the kernel's decimals is valued at that
/// price: its equity point is the float of quantity times close. (Valued through a decimal of
/// the close, such a close read as zero, and the equity fell below the capital.)
#[tokio::test]
async fn a_position_is_valued_at_a_close_beyond_the_decimal_range() {
    const WALK: usize = 2_000;
    let walk = spec("sma-cross", 11);
    let mut short = walk.clone();
    short.candles.truncate(WALK);
    let plain = run_backtest(&short, false).await.unwrap();
    // A bar in position: from the next one on, every price is 10^30.
    let at = (0..WALK - 1)
        .rev()
        .find(|&bar| plain.equity[bar].in_position)
        .expect("sma-cross enters a position on the walk");
    let mut jumped = short.clone();
    jumped.candles.truncate(at + 1);
    let far = 1e30;
    for bar in &walk.candles[at + 1..at + 60] {
        jumped.candles.push(keel_kernel::market::Candle {
            open: far,
            high: far,
            low: far,
            close: far,
            ..bar.clone()
        });
    }
    let report = run_backtest(&jumped, false).await.unwrap();
    assert_eq!(report.equity[at].equity, plain.equity[at].equity);
    let next = &report.equity[at + 1];
    assert!(next.in_position, "{next:?}");
    assert!(next.equity.is_finite() && next.equity > 1e20, "{next:?}");
}
