//! Reading candles from CSV files for backtests.
//!
//! Two layouts are detected automatically:
//! - Binance's kline dumps: `open_time,open,high,low,close,volume,close_time,quote_volume,count,
//!   taker_buy_volume,taker_buy_quote_volume,ignore`, with or without a header line;
//! - a plain `timestamp,open,high,low,close,volume` file with a header.
//!
//! Timestamps are milliseconds since the epoch (microsecond values, as in newer dumps, are
//! recognised by their size) or ISO-8601 / RFC 3339 text (UTC when no offset is given). A
//! malformed row stops the read with the file, the line number and what is wrong; timestamps must
//! strictly increase.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime};
use keel_kernel::ids::Symbol;
use keel_kernel::market::Candle;

/// Most candles one file may hold: about 19 years of one-minute candles, 800 MB of memory.
pub const CANDLES_PER_FILE_MAX: usize = 10_000_000;

/// Why a candle file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CandleFileError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A row is malformed or out of order.
    #[error("{path}:{line}: {what}")]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        what: String,
    },
    /// The file holds no candles.
    #[error("{path}: no candles in the file")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file holds more than [`CANDLES_PER_FILE_MAX`] candles.
    #[error("{path}: more than {CANDLES_PER_FILE_MAX} candles")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Binance kline dump: close time in column 7.
    Binance,
    /// `timestamp,open,high,low,close,volume`: close time inferred from the spacing.
    Plain,
}

/// Reads every candle of `path` for `symbol`.
pub fn read_candles(path: &Path, symbol: &Symbol) -> Result<Vec<Candle>, CandleFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| CandleFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_candles(&text, symbol).map_err(|error| error.at(path))
}

/// A row error before the file name is attached.
#[derive(Debug)]
pub(crate) enum ParseError {
    Row { line: u64, what: String },
    Empty,
    TooLarge,
}

impl ParseError {
    fn at(self, path: &Path) -> CandleFileError {
        let path = path.to_owned();
        match self {
            ParseError::Row { line, what } => CandleFileError::Row { path, line, what },
            ParseError::Empty => CandleFileError::Empty { path },
            ParseError::TooLarge => CandleFileError::TooLarge { path },
        }
    }
}

fn row_error(line: u64, what: impl Into<String>) -> ParseError {
    ParseError::Row {
        line,
        what: what.into(),
    }
}

/// Parses the text of a candle file.
pub(crate) fn parse_candles(text: &str, symbol: &Symbol) -> Result<Vec<Candle>, ParseError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut layout = None;
    let mut candles: Vec<Candle> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            row_error(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let layout = match layout {
            Some(layout) => layout,
            None => {
                let (detected, is_header) = detect_layout(&record, line)?;
                layout = Some(detected);
                if is_header {
                    continue;
                }
                detected
            }
        };
        if candles.len() == CANDLES_PER_FILE_MAX {
            return Err(ParseError::TooLarge);
        }
        let candle = parse_row(&record, layout, symbol, line)?;
        if let Some(previous) = candles.last()
            && candle.open_time_ms <= previous.open_time_ms
        {
            let what = if candle.open_time_ms == previous.open_time_ms {
                "duplicated"
            } else {
                "unsorted"
            };
            return Err(row_error(
                line,
                format!(
                    "{what} timestamp {}: the previous row is at {}",
                    candle.open_time_ms, previous.open_time_ms
                ),
            ));
        }
        candles.push(candle);
    }
    if candles.is_empty() {
        return Err(ParseError::Empty);
    }
    if layout == Some(Layout::Plain) {
        infer_close_times(&mut candles);
    }
    Ok(candles)
}

fn detect_layout(first: &csv::StringRecord, line: u64) -> Result<(Layout, bool), ParseError> {
    let columns = first.len();
    let is_header = first.get(1).is_some_and(|c| c.parse::<f64>().is_err());
    if columns >= 12 {
        return Ok((Layout::Binance, is_header));
    }
    if columns == 6 {
        if !is_header {
            return Err(row_error(
                line,
                "a 6-column file needs the header timestamp,open,high,low,close,volume",
            ));
        }
        let names: Vec<String> = first.iter().map(str::to_ascii_lowercase).collect();
        let expected = ["open", "high", "low", "close", "volume"];
        if names[1..] != expected {
            return Err(row_error(
                line,
                format!(
                    "unexpected header {:?}: expected timestamp,open,high,low,close,volume",
                    first.iter().collect::<Vec<_>>()
                ),
            ));
        }
        return Ok((Layout::Plain, true));
    }
    Err(row_error(
        line,
        format!(
            "{columns} columns: expected 12 (Binance klines) or 6 (timestamp,open,high,low,close,volume)"
        ),
    ))
}

fn parse_row(
    record: &csv::StringRecord,
    layout: Layout,
    symbol: &Symbol,
    line: u64,
) -> Result<Candle, ParseError> {
    let expected = if layout == Layout::Binance { 12 } else { 6 };
    if record.len() != expected {
        return Err(row_error(
            line,
            format!("{} columns, expected {expected}", record.len()),
        ));
    }
    let number = |index: usize, name: &str| -> Result<f64, ParseError> {
        let text = &record[index];
        let value: f64 = text
            .parse()
            .map_err(|_| row_error(line, format!("{name} {text:?} is not a number")))?;
        if !value.is_finite() || value < 0.0 {
            return Err(row_error(
                line,
                format!("{name} {text:?} is not a finite, non-negative number"),
            ));
        }
        Ok(value)
    };
    let open_time_ms = parse_timestamp(&record[0]).map_err(|what| row_error(line, what))?;
    let close_time_ms = match layout {
        // Binance's close time is the last millisecond of the interval; ours is exclusive.
        Layout::Binance => parse_timestamp(&record[6]).map_err(|what| row_error(line, what))? + 1,
        Layout::Plain => open_time_ms,
    };
    let candle = Candle {
        symbol: symbol.clone(),
        open_time_ms,
        close_time_ms,
        open: number(1, "open")?,
        high: number(2, "high")?,
        low: number(3, "low")?,
        close: number(4, "close")?,
        volume: number(5, "volume")?,
    };
    check_prices(&candle).map_err(|what| row_error(line, what))?;
    Ok(candle)
}

fn check_prices(candle: &Candle) -> Result<(), String> {
    if candle.open <= 0.0 || candle.close <= 0.0 || candle.low <= 0.0 {
        return Err("prices must be positive".into());
    }
    let inside = |p: f64| candle.low <= p && p <= candle.high;
    if !(inside(candle.open) && inside(candle.close)) {
        return Err(format!(
            "open {} and close {} must lie between low {} and high {}",
            candle.open, candle.close, candle.low, candle.high
        ));
    }
    if candle.close_time_ms < candle.open_time_ms {
        return Err(format!(
            "close time {} is before open time {}",
            candle.close_time_ms, candle.open_time_ms
        ));
    }
    Ok(())
}

/// Sets each plain candle's close time to its open time plus the file's interval (the smallest
/// spacing between rows), so a gap in the data does not stretch a candle.
fn infer_close_times(candles: &mut [Candle]) {
    let interval_ms = candles
        .windows(2)
        .map(|pair| pair[1].open_time_ms - pair[0].open_time_ms)
        .min()
        .unwrap_or(60_000);
    for candle in candles {
        candle.close_time_ms = candle.open_time_ms + interval_ms;
    }
}

/// Parses milliseconds (or microseconds), or ISO-8601 text, into milliseconds since the epoch.
fn parse_timestamp(text: &str) -> Result<i64, String> {
    // Ten trillion milliseconds is the year 2286; anything larger is in microseconds.
    const MICROS_ABOVE: i64 = 10_000_000_000_000;
    if let Ok(value) = text.parse::<i64>() {
        if value < 0 {
            return Err(format!("timestamp {text:?} is negative"));
        }
        return Ok(if value >= MICROS_ABOVE {
            value / 1000
        } else {
            value
        });
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(time.and_utc().timestamp_millis());
        }
    }
    Err(format!(
        "timestamp {text:?} is neither milliseconds nor ISO-8601"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btc() -> Symbol {
        Symbol::new("BTCUSDT").unwrap()
    }

    fn parse(text: &str) -> Result<Vec<Candle>, String> {
        parse_candles(text, &btc()).map_err(|e| e.at(Path::new("f.csv")).to_string())
    }

    const BINANCE_ROWS: &str = "\
1700000000000,100.0,101.0,99.0,100.5,12.5,1700000059999,1256.2,42,6.1,612.0,0
1700000060000,100.5,102.0,100.0,101.5,8.0,1700000119999,812.0,30,4.0,406.0,0
";

    #[test]
    fn binance_dump_without_header_is_read() {
        let candles = parse(BINANCE_ROWS).unwrap();
        assert_eq!(candles.len(), 2);
        assert_eq!(candles[0].open_time_ms, 1_700_000_000_000);
        assert_eq!(candles[0].close_time_ms, 1_700_000_060_000);
        assert_eq!(candles[1].close, 101.5);
    }

    #[test]
    fn binance_dump_with_header_is_read() {
        let header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n";
        assert_eq!(parse(&format!("{header}{BINANCE_ROWS}")).unwrap().len(), 2);
    }

    #[test]
    fn plain_file_with_iso_timestamps_is_read_and_close_times_inferred() {
        let text = "timestamp,open,high,low,close,volume\n\
                    2024-01-01T00:00:00Z,1,2,0.5,1.5,10\n\
                    2024-01-01T00:05:00Z,1.5,2,1,1.8,10\n\
                    2024-01-01 00:10:00,1.8,2,1,1.9,10\n";
        let candles = parse(text).unwrap();
        assert_eq!(candles[1].open_time_ms - candles[0].open_time_ms, 300_000);
        assert_eq!(candles[2].close_time_ms - candles[2].open_time_ms, 300_000);
    }

    #[test]
    fn microsecond_timestamps_become_milliseconds() {
        let text = "1700000000000000,100,101,99,100.5,1,1700000059999999,0,0,0,0,0\n";
        assert_eq!(parse(text).unwrap()[0].open_time_ms, 1_700_000_000_000);
    }

    #[test]
    fn malformed_row_names_file_line_and_problem() {
        let text = "timestamp,open,high,low,close,volume\n1,1,2,0.5,1.5,10\n2,1,2,0.5,abc,10\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "f.csv:3: close \"abc\" is not a number"
        );
    }

    #[test]
    fn unsorted_and_duplicated_timestamps_are_refused() {
        let dup = "timestamp,open,high,low,close,volume\n5,1,2,0.5,1.5,10\n5,1,2,0.5,1.5,10\n";
        assert!(
            parse(dup)
                .unwrap_err()
                .contains("f.csv:3: duplicated timestamp 5")
        );
        let unsorted = "timestamp,open,high,low,close,volume\n5,1,2,0.5,1.5,10\n4,1,2,0.5,1.5,10\n";
        assert!(
            parse(unsorted)
                .unwrap_err()
                .contains("f.csv:3: unsorted timestamp 4")
        );
    }

    #[test]
    fn impossible_prices_and_wrong_widths_are_refused() {
        let high_below_close = "timestamp,open,high,low,close,volume\n1,1,1.2,0.5,1.5,10\n";
        assert!(
            parse(high_below_close)
                .unwrap_err()
                .contains("must lie between")
        );
        let short_row = "timestamp,open,high,low,close,volume\n1,1,2,0.5,1.5\n";
        assert!(
            parse(short_row)
                .unwrap_err()
                .contains("f.csv:2: 5 columns, expected 6")
        );
        let headerless_plain = "1,1,2,0.5,1.5,10\n";
        assert!(
            parse(headerless_plain)
                .unwrap_err()
                .contains("needs the header")
        );
        assert!(parse("").unwrap_err().contains("no candles"));
        let nan = "timestamp,open,high,low,close,volume\n1,NaN,2,0.5,1.5,10\n";
        assert!(
            parse(nan)
                .unwrap_err()
                .contains("open \"NaN\" is not a finite")
        );
    }
}
