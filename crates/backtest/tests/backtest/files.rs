//! Candle files as strategy authors have them, written to disk and read as `keel backtest` reads
//! them: timestamps in every unit, ISO dates and date-times, pandas' headers, extra and missing
//! columns, and the errors of bad files.

use std::path::Path;

use keel_backtest::candles::{CandleFileError, TimestampUnit, read_candles};
use keel_backtest::cli;
use keel_backtest::synthetic::random_walk;
use keel_kernel::market::Candle;

use crate::common::{args, daily_candles, symbol, write_csv};

const HEADER: &str = "timestamp,open,high,low,close,volume";

fn generated() -> Vec<Candle> {
    random_walk(&symbol(), 50, 1)
}

fn read(path: &Path) -> keel_backtest::candles::CandleFile {
    read_candles(path, &symbol()).unwrap()
}

fn refusal(path: &Path) -> String {
    let error = read_candles(path, &symbol()).unwrap_err();
    assert!(
        matches!(error, CandleFileError::Row { .. }),
        "not a row error: {error}"
    );
    error.to_string()
}

#[test]
fn seconds_milliseconds_and_microseconds_are_detected_and_give_the_same_candles() {
    let dir = tempfile::tempdir().unwrap();
    let candles = generated();
    for (unit, name, scale_num, scale_den) in [
        (TimestampUnit::Seconds, "s.csv", 1, 1_000),
        (TimestampUnit::Milliseconds, "ms.csv", 1, 1),
        (TimestampUnit::Microseconds, "us.csv", 1_000, 1),
    ] {
        let path = write_csv(dir.path(), name, HEADER, &candles, |c| {
            (c.open_time_ms * scale_num / scale_den).to_string()
        });
        let file = read(&path);
        assert_eq!(file.info.timestamps, unit, "{name}");
        assert_eq!(file.candles, candles, "{name}");
    }
}

#[test]
fn iso_dates_and_date_times_are_read_as_utc() {
    let dir = tempfile::tempdir().unwrap();
    let days = daily_candles(10, 2);
    let path = write_csv(
        dir.path(),
        "dates.csv",
        "date,open,high,low,close,volume",
        &days,
        |c| {
            chrono::DateTime::from_timestamp_millis(c.open_time_ms)
                .unwrap()
                .format("%Y-%m-%d")
                .to_string()
        },
    );
    let file = read(&path);
    assert_eq!(file.info.timestamps, TimestampUnit::IsoDate);
    assert_eq!(file.candles, days);
    assert_eq!(
        file.candles[0].open_time_ms, 1_092_873_600_000,
        "2004-08-19"
    );

    let minutes = generated();
    for (name, format) in [
        ("t.csv", "%Y-%m-%dT%H:%M:%SZ"),
        ("space.csv", "%Y-%m-%d %H:%M:%S"),
        ("offset.csv", "%Y-%m-%d %H:%M:%S%:z"),
    ] {
        let path = write_csv(
            dir.path(),
            name,
            "datetime,open,high,low,close,volume",
            &minutes,
            |c| {
                chrono::DateTime::from_timestamp_millis(c.open_time_ms)
                    .unwrap()
                    .format(format)
                    .to_string()
            },
        );
        let file = read(&path);
        assert_eq!(file.info.timestamps, TimestampUnit::IsoDateTime, "{name}");
        assert_eq!(file.candles, minutes, "{name}");
    }
}

#[test]
fn a_pandas_file_with_date_open_high_low_close_volume_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("GOOG.csv");
    std::fs::write(
        &path,
        "Date,Open,High,Low,Close,Volume\n\
         2004-08-19,100.0,104.06,95.96,100.34,22351900\n\
         2004-08-20,101.01,109.08,100.5,108.31,11428600\n\
         2004-08-23,110.75,113.48,109.05,109.4,9137200\n",
    )
    .unwrap();
    let file = read(&path);
    assert_eq!(file.candles.len(), 3);
    assert_eq!(file.info.layout, "header");
    assert_eq!(file.info.timestamps, TimestampUnit::IsoDate);
    assert!(file.info.ignored_columns.is_empty());
    assert_eq!(file.candles[1].close, 108.31);
}

#[test]
fn an_adj_close_column_is_not_read_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("yahoo.csv");
    std::fs::write(
        &path,
        "Date,Open,High,Low,Close,Adj Close,Volume\n\
         2024-01-02,10,12,9,11,10.5,500\n\
         2024-01-03,11,13,10,12,11.5,600\n",
    )
    .unwrap();
    let file = read(&path);
    assert_eq!(file.info.ignored_columns, ["Adj Close"]);
    assert_eq!(file.candles[0].close, 11.0, "Close is read, not Adj Close");
    assert_eq!(file.candles[1].volume, 600.0);
}

#[test]
fn wrong_columns_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "no_time.csv",
            "when,open,high,low,close,volume\n1700000000,1,2,0.5,1.5,10\n",
            ":1: no time column",
        ),
        (
            "no_volume.csv",
            "Date,Open,High,Low,Close\n2024-01-02,10,12,9,11\n",
            ":1: no volume column",
        ),
        (
            "headerless.csv",
            "1700000000,1,2,0.5,1.5,10\n",
            ":1: 6 columns and no header",
        ),
        (
            "extra_value.csv",
            "Date,Open,High,Low,Close,Volume\n2024-01-02,10,12,9,11,5\n2024-01-03,10,12,9,11,5,7\n",
            ":3: 7 columns, expected 6",
        ),
        (
            "mixed_units.csv",
            "timestamp,open,high,low,close,volume\n1700000000,1,2,0.5,1.5,10\n1700000060000,1,2,0.5,1.5,10\n",
            ":3: timestamp \"1700000060000\" is in milliseconds, but the file's timestamps are in seconds (line 2)",
        ),
        (
            "bad_date.csv",
            "Date,Open,High,Low,Close,Volume\n2024-01-02,10,12,9,11,5\n2024-02-30,10,12,9,11,5\n",
            ":3: timestamp \"2024-02-30\" is neither",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let message = refusal(&path);
        assert!(
            message.contains(&format!("{name}{expected}")),
            "{name}: {message}"
        );
    }
}

/// A bad row anywhere refuses the whole file before anything runs: the JSON report is not
/// written.
#[tokio::test]
async fn a_bad_file_runs_nothing_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut candles = daily_candles(300, 3);
    candles[250].high = candles[250].low / 2.0;
    let path = write_csv(
        dir.path(),
        "bad.csv",
        "Date,Open,High,Low,Close,Volume",
        &candles,
        |c| {
            chrono::DateTime::from_timestamp_millis(c.open_time_ms)
                .unwrap()
                .format("%Y-%m-%d")
                .to_string()
        },
    );
    let json = dir.path().join("out.json");
    let mut args = args("sma-cross", &path);
    args.json = Some(json.clone());
    let error = cli::run(args).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("bad.csv:252: open"),
        "{error:#}"
    );
    assert!(!json.exists(), "a report was written for a bad file");
}

/// A daily pandas file through the whole command: the report states how the file was read and
/// stamps trades with dates.
#[tokio::test]
async fn a_daily_pandas_file_backtests_with_dated_trades() {
    let dir = tempfile::tempdir().unwrap();
    let candles = daily_candles(400, 4);
    // As Yahoo writes it: an Adj Close column between Close and Volume.
    let mut text = String::from("Date,Open,High,Low,Close,Adj Close,Volume\n");
    for c in &candles {
        let date = chrono::DateTime::from_timestamp_millis(c.open_time_ms).unwrap();
        text.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            date.format("%Y-%m-%d"),
            c.open,
            c.high,
            c.low,
            c.close,
            c.close * 0.9,
            c.volume
        ));
    }
    let path = dir.path().join("GOOG.csv");
    std::fs::write(&path, text).unwrap();
    let json = dir.path().join("out.json");
    let mut args = args("sma-cross", &path);
    args.json = Some(json.clone());
    cli::run(args).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["candle_file"]["timestamps"], "iso_date");
    assert_eq!(report["candle_file"]["ignored_columns"][0], "Adj Close");
    assert_eq!(report["start"], "2004-08-19T00:00:00Z");
    let trades = report["trades"].as_array().unwrap();
    assert!(!trades.is_empty(), "no trades over 400 days");
    for trade in trades {
        let time = trade["entry_time"].as_str().unwrap();
        assert!(time.ends_with("T00:00:00Z"), "{time}");
    }
}
