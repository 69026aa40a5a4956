//! The `keel backtest` command line, spawned as the real binary.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{candle_file, plugin_path};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("keel runs")
}

fn backtest(candles: &Path, extra: &[&str]) -> Output {
    let plugin = plugin_path("sma-cross");
    let mut args = vec![
        "backtest",
        "--plugin",
        plugin.to_str().unwrap(),
        "--candles",
        candles.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    keel(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cli_prints_the_summary_and_writes_json_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let candles = candle_file(dir.path(), 11);
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let png = dir.path().join("out.png");
    let out = backtest(
        &candles,
        &[
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    for row in [
        "total return",
        "annualised return",
        "max drawdown",
        "sharpe",
        "trades",
        "win rate",
        "fees paid",
        "exposure",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(!report["trades"].as_array().unwrap().is_empty());
    assert!(report["trades"][0]["entry_price"].is_string());
    assert_eq!(report["equity"].as_array().unwrap().len(), 20_000);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("drawdown"));
    let out = backtest(&candles, &["--plot", png.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}

#[test]
fn cli_json_is_byte_identical_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let candles = candle_file(dir.path(), 12);
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    for path in [&a, &b] {
        let out = backtest(&candles, &["--json", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

/// Writes `text` as a candle file and runs the CLI over it.
fn refused(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, text).unwrap();
    let out = backtest(&path, &[]);
    assert!(!out.status.success(), "a bad file was accepted");
    assert!(
        out.stdout.is_empty(),
        "a summary was printed for a bad file"
    );
    stderr(&out)
}

const HEADER: &str = "timestamp,open,high,low,close,volume\n";

#[test]
fn cli_refuses_a_malformed_row_with_file_and_line() {
    let text =
        format!("{HEADER}1704067200000,100,101,99,100.5,10\n1704067260000,100.5,abc,99,100,10\n");
    let message = refused(&text);
    assert!(message.contains("bad.csv:3:"), "{message}");
}

#[test]
fn cli_refuses_unsorted_timestamps_with_file_and_line() {
    let text =
        format!("{HEADER}1704067260000,100,101,99,100.5,10\n1704067200000,100.5,101,99,100,10\n");
    let message = refused(&text);
    assert!(message.contains("bad.csv:3:"), "{message}");
}

#[test]
fn cli_refuses_duplicated_timestamps_with_file_and_line() {
    let text =
        format!("{HEADER}1704067200000,100,101,99,100.5,10\n1704067200000,100.5,101,99,100,10\n");
    let message = refused(&text);
    assert!(message.contains("bad.csv:3:"), "{message}");
}

#[test]
fn cli_refuses_a_short_row_with_file_and_line() {
    let text = format!("{HEADER}1704067200000,100,101,99,100.5,10\n1704067260000,100.5,101\n");
    let message = refused(&text);
    assert!(message.contains("bad.csv:3:"), "{message}");
}

#[test]
fn cli_refuses_an_empty_file() {
    let message = refused(HEADER);
    assert!(message.contains("no candles"), "{message}");
}

#[test]
fn cli_refuses_a_plot_path_that_is_neither_svg_nor_png() {
    let dir = tempfile::tempdir().unwrap();
    let candles = candle_file(dir.path(), 13);
    let out = backtest(&candles, &["--plot", "/tmp/out.jpg"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(".svg or .png"), "{}", stderr(&out));
}

/// With 40 of capital every sma-cross entry is below the minimum notional and refused: under
/// `--strict` the command prints its summary, then fails naming the count and the first refusal.
#[test]
fn cli_strict_fails_on_a_refusal_after_printing_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let candles = candle_file(dir.path(), 14);
    let out = backtest(&candles, &["--capital", "40", "--strict"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("refusals"), "{table}");
    assert!(
        message.contains("--strict: the kernel refused ") && message.contains("(bar "),
        "{message}"
    );
    let out = backtest(&candles, &["--capital", "40"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn cli_reads_a_pandas_daily_file_and_states_its_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("GOOG.csv");
    let mut text = String::from("Date,Open,High,Low,Close,Volume\n");
    let mut close: f64 = 100.0;
    for day in 0..200_i64 {
        let date = chrono::DateTime::from_timestamp(1_092_873_600 + day * 86_400, 0).unwrap();
        let open = close;
        // A slow wave, so the averages cross.
        close = 100.0 + 20.0 * ((day as f64) / 9.0).sin();
        let (high, low) = (open.max(close) + 1.0, open.min(close) - 1.0);
        text.push_str(&format!(
            "{},{open:.2},{high:.2},{low:.2},{close:.2},1000000\n",
            date.format("%Y-%m-%d")
        ));
        close = (close * 100.0).round() / 100.0;
    }
    std::fs::write(&path, text).unwrap();
    let out = backtest(&path, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("ISO-8601 dates"), "{table}");
    assert!(table.contains("2004-08-19 to 2005-03-06"), "{table}");
}

/// A sweep through the binary: the ranking on stdout, every run in the JSON, a heatmap, and a
/// clear refusal of a malformed `--sweep` or of `--strict` with a sweep.
#[test]
fn cli_sweeps_ranks_and_writes_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let candles = candle_file(dir.path(), 15);
    let json = dir.path().join("sweep.json");
    let svg = dir.path().join("sweep.svg");
    let out = backtest(
        &candles,
        &[
            "--sweep",
            "fast=2..4:2",
            "--sweep",
            "slow=6,9",
            "--jobs",
            "2",
            "--rank-by",
            "sharpe",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("4 runs ranked by sharpe"), "{table}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 4);
    assert_eq!(report["rank_by"], "sharpe");
    assert!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .contains("sharpe by fast and slow")
    );

    let out = backtest(&candles, &["--sweep", "fast=9..2:1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("below the start"), "{}", stderr(&out));
    let out = backtest(&candles, &["--sweep", "fast=2,3", "--strict"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--strict judges a single run"),
        "{}",
        stderr(&out)
    );
}

/// The plugin declares its parameters: a misspelt key, a value out of range or of the wrong
/// type stops the run before `init`, with the key and what it takes, on the command line and in
/// a sweep alike.
#[test]
fn cli_refuses_an_unknown_or_out_of_range_parameter_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let candles = candle_file(dir.path(), 16);
    for (args, refusal) in [
        (
            ["--config", "fats=10"],
            "configuration refused: plugin sma_cross has no parameter `fats` (did you mean \
             `fast`?); its parameters are fast, slow, mode, size_fraction",
        ),
        (
            ["--config", "size_fraction=2"],
            "configuration refused: plugin sma_cross: parameter `size_fraction` takes float in \
             [0.001, 1], not \"2\"",
        ),
        (
            ["--config", "fast=ten"],
            "configuration refused: plugin sma_cross: parameter `fast` takes an int, not \"ten\"",
        ),
        (
            ["--sweep", "slwo=10,20"],
            "plugin sma_cross has no parameter `slwo` (did you mean `slow`?)",
        ),
    ] {
        let out = backtest(&candles, &args);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(stderr(&out).contains(refusal), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}: no summary is printed");
    }
}
