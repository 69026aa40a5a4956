//! Golden runs against backtesting.py, the library Python strategy authors already use: its
//! SmaCross(10, 20) on its own GOOG data (`peer_sma_cross.py`) and the example `sma-cross`
//! plugin through the whole kernel make the same trades (side, entry and exit bar, entry and
//! exit price): long only and long-short at a tenth of the capital, and long only with the
//! whole of it. The test command installs backtesting.py (pip).

use std::collections::BTreeMap;
use std::path::Path;

use keel_backtest::candles::read_candles;
use keel_backtest::report::Trade;
use keel_backtest::run::run_backtest;
use keel_kernel::market::Candle;
use rust_decimal::prelude::ToPrimitive as _;
use rust_decimal_macros::dec;

use crate::common::{spec, symbol};

/// A closed trade as backtesting.py lists it, or as the kernel's fills make it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct PeerTrade {
    side: String,
    entry_bar: usize,
    exit_bar: usize,
    entry_price: f64,
    exit_price: f64,
}

/// How long the peer may take (three backtests of 2,148 candles: seconds).
const PEER_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs the peer: the GOOG candles and each case's closed trades.
async fn peer(dir: &Path) -> (Vec<Candle>, BTreeMap<String, Vec<PeerTrade>>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/backtest/peer_sma_cross.py");
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PEER_WAIT_MAX, run)
        .await
        .unwrap_or_else(|_| panic!("{} ran past {PEER_WAIT_MAX:?}", script.display()))
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{} failed (pip install backtesting==0.6.6): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let candles = read_candles(&dir.join("goog.csv"), &symbol())
        .unwrap()
        .candles;
    let trades = std::fs::read(dir.join("trades.json")).unwrap();
    (candles, serde_json::from_slice(&trades).unwrap())
}

/// The closed trades of a kernel run, as the peer lists them.
fn closed(trades: &[Trade]) -> Vec<PeerTrade> {
    trades
        .iter()
        .filter_map(|t| {
            Some(PeerTrade {
                side: t.side.to_owned(),
                entry_bar: t.entry_bar,
                exit_bar: t.exit_bar?,
                entry_price: t.entry_price.to_f64().unwrap(),
                exit_price: t.exit_price?.to_f64().unwrap(),
            })
        })
        .collect()
}

#[tokio::test]
async fn sma_cross_on_goog_makes_backtesting_py_s_trades() {
    let dir = tempfile::tempdir().unwrap();
    let (candles, peer_cases) = peer(dir.path()).await;
    let cases = [
        ("long_only_tenth", "long-only", "0.1"),
        ("long_short_tenth", "long-short", "0.1"),
        ("long_only_whole", "long-only", "1"),
    ];
    for (case, mode, fraction) in cases {
        let mut run = spec("sma-cross", 0);
        run.candles = candles.clone();
        run.capital = dec!(1000000);
        run.fee_bps = dec!(0);
        // GOOG's opens after the entry signals gap up to 2.1% above the close: with the whole
        // equity committed, a reserve that covers them lets every entry fill.
        run.slippage_reserve_bps = 300;
        run.config = [("fast", "10"), ("slow", "20"), ("mode", mode)]
            .into_iter()
            .chain([("size_fraction", fraction)])
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let report = run_backtest(&run, false).await.unwrap();
        let ours = closed(&report.trades);
        let theirs = &peer_cases[case];
        assert!(theirs.len() > 40, "{case}: {} trades", theirs.len());
        for (index, (a, b)) in ours.iter().zip(theirs).enumerate() {
            assert_eq!(a, b, "{case}: trade {index} differs");
        }
        assert_eq!(ours.len(), theirs.len(), "{case}: trade counts differ");
    }
}
