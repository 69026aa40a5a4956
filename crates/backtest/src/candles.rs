//! Reading candles from CSV files for backtests.
//!
//! Two layouts are detected automatically:
//! - Binance's kline dumps: `open_time,open,high,low,close,volume,close_time,quote_volume,count,
//!   taker_buy_volume,taker_buy_quote_volume,ignore`, with or without a header line;
//! - any other CSV with a header line naming its columns, in any case and any order: a time
//!   column (`date`, `time`, `timestamp`, `datetime` or `open_time`, or an unnamed first column
//!   as pandas writes its index) and `open`, `high`, `low`, `close` and `volume`. Other columns
//!   (`Adj Close`, say) are not read: the report names them. So `timestamp,open,high,low,close,
//!   volume`, pandas' `Date,Open,High,Low,Close,Volume` and Yahoo's `Date,Open,High,Low,Close,
//!   Adj Close,Volume` are all read.
//!
//! Timestamps are integers since the epoch in seconds, milliseconds, microseconds or
//! nanoseconds, told apart by their size (see [`TimestampUnit::of`]) and the same for the whole
//! file, or ISO-8601 text: a date (`2004-08-19`, midnight UTC) or a date-time (`2004-08-19
//! 09:30:00`, `2004-08-19T09:30:00Z`; UTC when no offset is given). A malformed row stops the
//! read with the file, the line number and what is wrong, and nothing is run; timestamps must
//! strictly increase.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat};
use keel_kernel::ids::Symbol;
use keel_kernel::market::Candle;
use serde::Serialize;

/// Most candles one file may hold: about 19 years of one-minute candles, 800 MB of memory.
pub const CANDLES_PER_FILE_MAX: usize = 10_000_000;

/// The names a time column may have (compared without case).
const TIME_COLUMN_NAMES: [&str; 5] = ["date", "time", "timestamp", "datetime", "open_time"];
/// The price and volume columns of a file with a header, in the order of [`Candle`]'s fields.
const VALUE_COLUMN_NAMES: [&str; 5] = ["open", "high", "low", "close", "volume"];
/// Columns of a Binance kline dump.
const BINANCE_COLUMNS: usize = 12;

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

/// How a file's timestamps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    /// Integer seconds since the epoch.
    Seconds,
    /// Integer milliseconds since the epoch.
    Milliseconds,
    /// Integer microseconds since the epoch (Binance's dumps since 2025).
    Microseconds,
    /// Integer nanoseconds since the epoch.
    Nanoseconds,
    /// ISO-8601 dates, each read as midnight UTC.
    IsoDate,
    /// ISO-8601 date-times (some may be plain dates), UTC unless an offset is given.
    IsoDateTime,
}

impl TimestampUnit {
    /// The unit of an integer timestamp, by its size: below 10¹¹ seconds (up to the year 5138),
    /// below 10¹⁴ milliseconds, below 10¹⁷ microseconds, nanoseconds above. Each band starts in
    /// 1973 for the next finer unit, so a file of milliseconds from before March 1973 reads as
    /// seconds.
    pub fn of(value: i64) -> TimestampUnit {
        if value < 100_000_000_000 {
            TimestampUnit::Seconds
        } else if value < 100_000_000_000_000 {
            TimestampUnit::Milliseconds
        } else if value < 100_000_000_000_000_000 {
            TimestampUnit::Microseconds
        } else {
            TimestampUnit::Nanoseconds
        }
    }

    /// The words the summary uses for the unit.
    pub fn describe(self) -> &'static str {
        match self {
            TimestampUnit::Seconds => "seconds",
            TimestampUnit::Milliseconds => "milliseconds",
            TimestampUnit::Microseconds => "microseconds",
            TimestampUnit::Nanoseconds => "nanoseconds",
            TimestampUnit::IsoDate => "ISO-8601 dates",
            TimestampUnit::IsoDateTime => "ISO-8601 date-times",
        }
    }

    /// `value` of this (integer) unit in milliseconds, or `None` if it does not fit.
    fn to_ms(self, value: i64) -> Option<i64> {
        match self {
            TimestampUnit::Seconds => value.checked_mul(1_000),
            TimestampUnit::Microseconds => Some(value / 1_000),
            TimestampUnit::Nanoseconds => Some(value / 1_000_000),
            TimestampUnit::Milliseconds | TimestampUnit::IsoDate | TimestampUnit::IsoDateTime => {
                Some(value)
            }
        }
    }

    fn is_text(self) -> bool {
        matches!(self, TimestampUnit::IsoDate | TimestampUnit::IsoDateTime)
    }
}

/// The candles of a file and how the file was read.
#[derive(Debug, Clone, PartialEq)]
pub struct CandleFile {
    /// Every candle, strictly increasing in time.
    pub candles: Vec<Candle>,
    /// What was read from the file, for the report.
    pub info: CandleFileInfo,
}

/// How a candle file was read, as the report states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CandleFileInfo {
    /// The file.
    pub path: String,
    /// `binance_klines` or `header` (columns found by name).
    pub layout: &'static str,
    /// How its timestamps were written.
    pub timestamps: TimestampUnit,
    /// Columns of the header that were not read (e.g. `Adj Close`).
    pub ignored_columns: Vec<String>,
}

/// Where the fields of a candle are in a file's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Binance kline dump: close time in column 7.
    binance: bool,
    /// Column of the open time.
    time: usize,
    /// Columns of open, high, low, close and volume.
    values: [usize; 5],
    /// Columns every row has.
    width: usize,
    /// Header columns not read.
    ignored: Vec<String>,
}

impl Layout {
    fn binance() -> Layout {
        Layout {
            binance: true,
            time: 0,
            values: [1, 2, 3, 4, 5],
            width: BINANCE_COLUMNS,
            ignored: Vec::new(),
        }
    }
}

/// Reads every candle of `path` for `symbol`.
pub fn read_candles(path: &Path, symbol: &Symbol) -> Result<CandleFile, CandleFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| CandleFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let (candles, layout, timestamps) = parse_candles(&text, symbol).map_err(|e| e.at(path))?;
    Ok(CandleFile {
        candles,
        info: CandleFileInfo {
            path: path.display().to_string(),
            layout: if layout.binance {
                "binance_klines"
            } else {
                "header"
            },
            timestamps,
            ignored_columns: layout.ignored,
        },
    })
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

/// The unit of the file's timestamps, set by its first row and checked on every other.
struct Timestamps {
    unit: Option<(TimestampUnit, u64)>,
}

impl Timestamps {
    /// Milliseconds since the epoch of `text`, read in the file's unit.
    fn read(&mut self, text: &str, line: u64) -> Result<i64, ParseError> {
        let (unit, value) = parse_timestamp(text).map_err(|what| row_error(line, what))?;
        let (file_unit, first_line) = *self.unit.get_or_insert((unit, line));
        let unit = match (file_unit, unit) {
            (a, b) if a == b => a,
            // Dates and date-times mix as pandas writes them.
            (a, b) if a.is_text() && b.is_text() => {
                self.unit = Some((TimestampUnit::IsoDateTime, first_line));
                b
            }
            _ => {
                return Err(row_error(
                    line,
                    format!(
                        "timestamp {text:?} is in {}, but the file's timestamps are in {} (line {first_line})",
                        unit.describe(),
                        file_unit.describe()
                    ),
                ));
            }
        };
        unit.to_ms(value)
            .ok_or_else(|| row_error(line, format!("timestamp {text:?} is out of range")))
    }

    fn unit(&self) -> TimestampUnit {
        self.unit
            .map_or(TimestampUnit::Milliseconds, |(unit, _)| unit)
    }
}

/// Parses the text of a candle file: its candles, its layout and its timestamps' unit.
///
/// A large file with integer timestamps is parsed in two halves at once ([`parse_halves`]);
/// whatever it holds, the result is the row-by-row read's, error for error.
pub(crate) fn parse_candles(
    text: &str,
    symbol: &Symbol,
) -> Result<(Vec<Candle>, Layout, TimestampUnit), ParseError> {
    parse_candles_with(text, symbol, HALVES_BYTES_MIN)
}

/// The smallest text parsed in two halves: below it a thread's start is a fair part of the read.
const HALVES_BYTES_MIN: usize = 1 << 20;

/// [`parse_candles`], in two halves from `halves_bytes_min` bytes of text.
fn parse_candles_with(
    text: &str,
    symbol: &Symbol,
    halves_bytes_min: usize,
) -> Result<(Vec<Candle>, Layout, TimestampUnit), ParseError> {
    // A byte-order mark, as spreadsheets write one, is not part of the first column's name.
    let text = text.trim_start_matches('\u{feff}');
    let rows = match parse_halves(text, symbol, halves_bytes_min) {
        Some(rows) => rows,
        None => parse_rows(text, symbol, None)?,
    };
    let Some(layout) = rows.layout.filter(|_| !rows.candles.is_empty()) else {
        return Err(ParseError::Empty);
    };
    let mut candles = rows.candles;
    if !layout.binance {
        infer_close_times(&mut candles);
    }
    Ok((candles, layout, rows.unit))
}

/// The rows of (part of) a file, as read, before close times are inferred.
struct Rows {
    candles: Vec<Candle>,
    /// `None` when no row but blank ones was read.
    layout: Option<Layout>,
    unit: TimestampUnit,
}

/// Where a file's first data row says a part of it is to be read from: its layout, and the
/// unit and line of its first timestamp.
#[derive(Clone)]
struct Start {
    layout: Layout,
    unit: TimestampUnit,
    line: u64,
}

/// Reads the rows of `text` one by one: the layout from its first row unless `start` gives it
/// (and the timestamps' unit with it).
fn parse_rows(text: &str, symbol: &Symbol, start: Option<Start>) -> Result<Rows, ParseError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let (mut layout, mut timestamps) = match start {
        Some(start) => (
            Some(start.layout),
            Timestamps {
                unit: Some((start.unit, start.line)),
            },
        ),
        None => (None, Timestamps { unit: None }),
    };
    let mut candles: Vec<Candle> = Vec::new();
    // One record, refilled row by row: a row allocates nothing. Fields are trimmed of ASCII
    // white space where they are read (as the reader's own trimming would, without rebuilding
    // the record).
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader.read_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            row_error(line, e.to_string())
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(|field| field.trim_ascii().is_empty()) {
            continue;
        }
        let layout = match &layout {
            Some(layout) => layout,
            None => {
                record.trim();
                let (detected, is_header) = detect_layout(&record, line)?;
                let detected = layout.insert(detected);
                if is_header {
                    continue;
                }
                detected
            }
        };
        if candles.len() == CANDLES_PER_FILE_MAX {
            return Err(ParseError::TooLarge);
        }
        let candle = parse_row(&record, layout, &mut timestamps, symbol, line)?;
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
                    record[layout.time].trim_ascii(),
                    iso_ms(previous.open_time_ms)
                ),
            ));
        }
        candles.push(candle);
    }
    Ok(Rows {
        candles,
        layout,
        unit: timestamps.unit(),
    })
}

/// The layout and first timestamp of `text`'s first data row, and the byte where the row after
/// it starts; `None` if the first rows do not make a file [`parse_rows`] reads.
fn first_data_row(text: &str) -> Option<(Start, usize)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    let mut layout = None;
    while reader.read_record(&mut record).ok()? {
        if record.iter().all(|field| field.trim_ascii().is_empty()) {
            continue;
        }
        let line = record.position()?.line();
        if layout.is_none() {
            record.trim();
            let (detected, is_header) = detect_layout(&record, line).ok()?;
            layout = Some(detected);
            if is_header {
                continue;
            }
        }
        let layout: Layout = layout?;
        let (unit, _) = parse_timestamp(record.get(layout.time)?.trim_ascii()).ok()?;
        let after = usize::try_from(reader.position().byte()).ok()?;
        return Some((Start { layout, unit, line }, after));
    }
    None
}

/// Reads a file of `halves_bytes_min` bytes or more with integer timestamps in two halves at
/// once, split at a line break after its first data row: the second half is read on a thread
/// of its own, with the layout and the timestamps' unit of the first row, while this thread
/// reads the first. Each row is read the same whichever half it is in, so when both halves are
/// read whole, their timestamps go on increasing from one to the other and the candles fit in
/// a file, the candles are the row-by-row read's. In any other case (an error anywhere, text
/// timestamps, whose unit the file's later rows may widen, a quoted field, which may hold a line
/// break) this returns `None`, and the file is read row by row, which finds the error it finds.
fn parse_halves(text: &str, symbol: &Symbol, halves_bytes_min: usize) -> Option<Rows> {
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if text.len() < halves_bytes_min || !two_cores || text.contains('"') {
        return None;
    }
    let (start, after_first_row) = first_data_row(text)?;
    if start.unit.is_text() {
        return None;
    }
    let from = (text.len() / 2).max(after_first_row);
    let split = from + text.get(from..)?.find('\n')? + 1;
    let (head, tail) = text.split_at(split);
    let unit = start.unit;
    let (head, tail) = std::thread::scope(|scope| {
        let tail = std::thread::Builder::new()
            .name("keel-candles".into())
            .spawn_scoped(scope, || parse_rows(tail, symbol, Some(start)))
            .ok()?;
        let head = parse_rows(head, symbol, None);
        Some((head, tail.join().ok()?))
    })?;
    let (mut head, tail) = (head.ok()?, tail.ok()?);
    let in_order = match (head.candles.last(), tail.candles.first()) {
        (Some(last), Some(next)) => next.open_time_ms > last.open_time_ms,
        _ => true,
    };
    let fits = head.candles.len() + tail.candles.len() <= CANDLES_PER_FILE_MAX;
    if head.unit != unit || !in_order || !fits {
        return None;
    }
    head.candles.extend(tail.candles);
    Some(head)
}

/// `time_ms` as ISO-8601 UTC text (`2024-01-01T00:00:00Z`, with milliseconds when it has them).
///
/// RFC 3339 text (written field by field, with no format string to parse: a report has one per
/// trade and a JSON report one per equity point), the same as `%Y-%m-%dT%H:%M:%SZ` and
/// `%Y-%m-%dT%H:%M:%S%.3fZ` write.
pub fn iso_ms(time_ms: i64) -> String {
    let seconds = if time_ms % 1_000 == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    match DateTime::from_timestamp_millis(time_ms) {
        Some(time) => time.to_rfc3339_opts(seconds, true),
        None => time_ms.to_string(),
    }
}

fn detect_layout(first: &csv::StringRecord, line: u64) -> Result<(Layout, bool), ParseError> {
    let columns = first.len();
    let is_header = first.get(1).is_some_and(|c| c.parse::<f64>().is_err());
    let names: Vec<String> = first.iter().map(str::to_ascii_lowercase).collect();
    if columns == BINANCE_COLUMNS && (!is_header || names[6] == "close_time") {
        return Ok((Layout::binance(), is_header));
    }
    if !is_header {
        return Err(row_error(
            line,
            format!(
                "{columns} columns and no header: a file without a header must be a Binance \
                 kline dump ({BINANCE_COLUMNS} columns); any other needs a header line such as \
                 timestamp,open,high,low,close,volume"
            ),
        ));
    }
    Ok((named_layout(first, &names, line)?, true))
}

/// The layout a header names.
fn named_layout(
    header: &csv::StringRecord,
    names: &[String],
    line: u64,
) -> Result<Layout, ParseError> {
    let find = |wanted: &str| names.iter().position(|n| n == wanted);
    if let Some(index) =
        (0..names.len()).find(|&i| !names[i].is_empty() && names[..i].contains(&names[i]))
    {
        return Err(row_error(
            line,
            format!(
                "column {:?} appears twice (column {})",
                &header[index],
                index + 1
            ),
        ));
    }
    let times: Vec<usize> = (0..names.len())
        .filter(|&i| TIME_COLUMN_NAMES.contains(&names[i].as_str()))
        .collect();
    if let [_, _, ..] = times[..] {
        // A date in one column and a time of day in another, say: which one is meant is not
        // for the reader to guess.
        return Err(row_error(
            line,
            format!(
                "several time columns ({}): keep one, holding the whole date and time",
                times
                    .iter()
                    .map(|&i| &header[i])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let time = times
        .first()
        .copied()
        .or_else(|| names[0].is_empty().then_some(0))
        .ok_or_else(|| {
            row_error(
                line,
                format!(
                    "no time column in the header {:?}: name one date, time, timestamp, \
                     datetime or open_time",
                    header.iter().collect::<Vec<_>>()
                ),
            )
        })?;
    let mut values = [0; 5];
    for (slot, wanted) in values.iter_mut().zip(VALUE_COLUMN_NAMES) {
        *slot = find(wanted).ok_or_else(|| {
            row_error(
                line,
                format!(
                    "no {wanted} column in the header {:?}: the columns open, high, low, close \
                     and volume are needed (in any order and case)",
                    header.iter().collect::<Vec<_>>()
                ),
            )
        })?;
    }
    let ignored = (0..names.len())
        .filter(|i| *i != time && !values.contains(i))
        .map(|i| header[i].to_owned())
        .collect();
    Ok(Layout {
        binance: false,
        time,
        values,
        width: names.len(),
        ignored,
    })
}

fn parse_row(
    record: &csv::StringRecord,
    layout: &Layout,
    timestamps: &mut Timestamps,
    symbol: &Symbol,
    line: u64,
) -> Result<Candle, ParseError> {
    let expected = layout.width;
    if record.len() != expected {
        return Err(row_error(
            line,
            format!("{} columns, expected {expected}", record.len()),
        ));
    }
    let number = |index: usize, name: &str| -> Result<f64, ParseError> {
        let text = record[layout.values[index]].trim_ascii();
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
    let open_time_ms = timestamps.read(record[layout.time].trim_ascii(), line)?;
    let close_time_ms = if layout.binance {
        // Binance's close time is the last millisecond of the interval; ours is exclusive.
        timestamps
            .read(record[6].trim_ascii(), line)?
            .saturating_add(1)
    } else {
        open_time_ms
    };
    let candle = Candle {
        symbol: symbol.clone(),
        open_time_ms,
        close_time_ms,
        open: number(0, "open")?,
        high: number(1, "high")?,
        low: number(2, "low")?,
        close: number(3, "close")?,
        volume: number(4, "volume")?,
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

/// Sets each candle's close time to its open time plus the file's interval (the smallest
/// spacing between rows), so a gap in the data (a weekend in daily data) does not stretch a
/// candle. A file of one candle gets one minute.
fn infer_close_times(candles: &mut [Candle]) {
    let interval_ms = candles
        .windows(2)
        .map(|pair| pair[1].open_time_ms - pair[0].open_time_ms)
        .min()
        .unwrap_or(60_000);
    for candle in candles {
        candle.close_time_ms = candle.open_time_ms.saturating_add(interval_ms);
    }
}

/// Parses an integer timestamp (its unit by [`TimestampUnit::of`], the value as written) or
/// ISO-8601 text (the value in milliseconds).
fn parse_timestamp(text: &str) -> Result<(TimestampUnit, i64), String> {
    if let Ok(value) = text.parse::<i64>() {
        if value < 0 {
            return Err(format!("timestamp {text:?} is negative"));
        }
        return Ok((TimestampUnit::of(value), value));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis());
        return midnight
            .map(|ms| (TimestampUnit::IsoDate, ms))
            .ok_or_else(|| format!("date {text:?} is out of range"));
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok((TimestampUnit::IsoDateTime, time.timestamp_millis()));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(time) = DateTime::parse_from_str(text, format) {
            return Ok((TimestampUnit::IsoDateTime, time.timestamp_millis()));
        }
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Ok((
                TimestampUnit::IsoDateTime,
                time.and_utc().timestamp_millis(),
            ));
        }
    }
    Err(format!(
        "timestamp {text:?} is neither an integer (seconds, milliseconds, microseconds or \
         nanoseconds since the epoch) nor an ISO-8601 date or date-time"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btc() -> Symbol {
        Symbol::new("BTCUSDT").unwrap()
    }

    fn read(text: &str) -> Result<(Vec<Candle>, Layout, TimestampUnit), String> {
        parse_candles(text, &btc()).map_err(|e| e.at(Path::new("f.csv")).to_string())
    }

    fn parse(text: &str) -> Result<Vec<Candle>, String> {
        read(text).map(|(candles, _, _)| candles)
    }

    const BINANCE_ROWS: &str = "\
1700000000000,100.0,101.0,99.0,100.5,12.5,1700000059999,1256.2,42,6.1,612.0,0
1700000060000,100.5,102.0,100.0,101.5,8.0,1700000119999,812.0,30,4.0,406.0,0
";

    #[test]
    fn binance_dump_without_header_is_read() {
        let (candles, layout, unit) = read(BINANCE_ROWS).unwrap();
        assert_eq!(candles.len(), 2);
        assert_eq!(candles[0].open_time_ms, 1_700_000_000_000);
        assert_eq!(candles[0].close_time_ms, 1_700_000_060_000);
        assert_eq!(candles[1].close, 101.5);
        assert!(layout.binance);
        assert_eq!(unit, TimestampUnit::Milliseconds);
    }

    #[test]
    fn white_space_around_fields_and_blank_lines_are_ignored() {
        let spaced = "\
 timestamp ,\tOpen, high,low ,close,volume\r
1700000000000 , 100.0,101.0,\t99.0, 100.5 ,12.5
 , ,\t, , ,
1700000060000,100.5 ,102.0,100.0,101.5,8.0
";
        let plain = "\
timestamp,open,high,low,close,volume
1700000000000,100.0,101.0,99.0,100.5,12.5
1700000060000,100.5,102.0,100.0,101.5,8.0
";
        assert_eq!(parse(spaced).unwrap(), parse(plain).unwrap());
        let error = read("timestamp,open,high,low,close,volume\n1700000000000, abc ,1,1,1,1\n")
            .unwrap_err();
        assert_eq!(error, "f.csv:2: open \"abc\" is not a number");
    }

    #[test]
    fn binance_dump_with_header_is_read() {
        let header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n";
        let (candles, layout, _) = read(&format!("{header}{BINANCE_ROWS}")).unwrap();
        assert_eq!(candles.len(), 2);
        assert!(layout.binance);
        assert_eq!(candles[0].close_time_ms, 1_700_000_060_000);
    }

    #[test]
    fn plain_file_with_iso_timestamps_is_read_and_close_times_inferred() {
        let text = "timestamp,open,high,low,close,volume\n\
                    2024-01-01T00:00:00Z,1,2,0.5,1.5,10\n\
                    2024-01-01T00:05:00Z,1.5,2,1,1.8,10\n\
                    2024-01-01 00:10:00,1.8,2,1,1.9,10\n";
        let (candles, _, unit) = read(text).unwrap();
        assert_eq!(candles[1].open_time_ms - candles[0].open_time_ms, 300_000);
        assert_eq!(candles[2].close_time_ms - candles[2].open_time_ms, 300_000);
        assert_eq!(unit, TimestampUnit::IsoDateTime);
    }

    /// The same three minutes written in each integer unit.
    #[test]
    fn integer_timestamps_in_each_unit_are_told_apart_by_size() {
        for (unit, scale) in [
            (TimestampUnit::Seconds, 1_i64),
            (TimestampUnit::Milliseconds, 1_000),
            (TimestampUnit::Microseconds, 1_000_000),
            (TimestampUnit::Nanoseconds, 1_000_000_000),
        ] {
            let mut text = String::from("timestamp,open,high,low,close,volume\n");
            for minute in 0..3 {
                let t = (1_700_000_000 + minute * 60) * scale;
                text.push_str(&format!("{t},1,2,0.5,1.5,10\n"));
            }
            let (candles, _, found) = read(&text).unwrap();
            assert_eq!(found, unit);
            assert_eq!(candles[0].open_time_ms, 1_700_000_000_000, "{unit:?}");
            assert_eq!(candles[2].close_time_ms, 1_700_000_180_000, "{unit:?}");
        }
    }

    #[test]
    fn microsecond_binance_dumps_become_milliseconds() {
        let text = "1700000000000000,100,101,99,100.5,1,1700000059999999,0,0,0,0,0\n";
        let (candles, _, unit) = read(text).unwrap();
        assert_eq!(candles[0].open_time_ms, 1_700_000_000_000);
        assert_eq!(candles[0].close_time_ms, 1_700_000_060_000);
        assert_eq!(unit, TimestampUnit::Microseconds);
    }

    #[test]
    fn a_row_in_another_unit_than_the_first_is_refused_with_its_line() {
        let text = "timestamp,open,high,low,close,volume\n\
                    1700000000,1,2,0.5,1.5,10\n\
                    1700000060000,1,2,0.5,1.5,10\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "f.csv:3: timestamp \"1700000060000\" is in milliseconds, but the file's timestamps \
             are in seconds (line 2)"
        );
        let text = "timestamp,open,high,low,close,volume\n\
                    2024-01-01,1,2,0.5,1.5,10\n\
                    1704153600,1,2,0.5,1.5,10\n";
        assert!(parse(text).unwrap_err().starts_with("f.csv:3: timestamp"));
    }

    /// What pandas writes for daily data (`df.to_csv()` of backtesting.py's GOOG).
    #[test]
    fn a_pandas_daily_file_with_dates_and_capitalised_header_is_read() {
        let text = "Date,Open,High,Low,Close,Volume\n\
                    2004-08-19,100.0,104.06,95.96,100.34,22351900\n\
                    2004-08-20,101.01,109.08,100.5,108.31,11428600\n\
                    2004-08-23,110.75,113.48,109.05,109.4,9137200\n";
        let (candles, layout, unit) = read(text).unwrap();
        assert_eq!(unit, TimestampUnit::IsoDate);
        assert!(!layout.binance && layout.ignored.is_empty());
        assert_eq!(candles[0].open_time_ms, 1_092_873_600_000);
        // The weekend does not stretch Friday's candle: the interval is the smallest spacing.
        assert_eq!(
            candles[1].close_time_ms - candles[1].open_time_ms,
            86_400_000
        );
        assert_eq!(candles[2].volume, 9_137_200.0);
    }

    #[test]
    fn columns_are_found_by_name_and_other_columns_are_named_as_ignored() {
        let yahoo = "Date,Open,High,Low,Close,Adj Close,Volume\n\
                     2024-01-02,10,12,9,11,10.8,500\n\
                     2024-01-03,11,13,10,12,11.8,600\n";
        let (candles, layout, _) = read(yahoo).unwrap();
        assert_eq!(layout.ignored, ["Adj Close"]);
        assert_eq!(candles[0].close, 11.0);
        assert_eq!(candles[1].volume, 600.0);
        let reordered = "close,volume,open_time,low,high,open\n1.5,10,1700000000000,0.5,2,1\n";
        let candles = parse(reordered).unwrap();
        assert_eq!((candles[0].open, candles[0].close), (1.0, 1.5));
        // pandas writes an unnamed index column first.
        let unnamed = ",Open,High,Low,Close,Volume\n2024-01-02 09:30:00,10,12,9,11,500\n";
        assert_eq!(parse(unnamed).unwrap()[0].open_time_ms, 1_704_187_800_000);
    }

    #[test]
    fn a_header_without_a_needed_column_is_refused_naming_it() {
        let no_time = "when,open,high,low,close,volume\n1700000000,1,2,0.5,1.5,10\n";
        assert!(
            parse(no_time)
                .unwrap_err()
                .starts_with("f.csv:1: no time column"),
        );
        let no_volume = "Date,Open,High,Low,Close\n2024-01-02,10,12,9,11\n";
        assert!(
            parse(no_volume)
                .unwrap_err()
                .starts_with("f.csv:1: no volume column")
        );
        let split = "Date,Time,Open,High,Low,Close,Volume\n2024-01-02,09:30,10,12,9,11,5\n";
        assert_eq!(
            parse(split).unwrap_err(),
            "f.csv:1: several time columns (Date, Time): keep one, holding the whole date and time"
        );
        let twice = "date,open,high,low,close,close,volume\n2024-01-02,10,12,9,11,11,5\n";
        assert!(
            parse(twice)
                .unwrap_err()
                .contains("\"close\" appears twice")
        );
    }

    #[test]
    fn malformed_row_names_file_line_and_problem() {
        let text = "timestamp,open,high,low,close,volume\n1,1,2,0.5,1.5,10\n2,1,2,0.5,abc,10\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "f.csv:3: close \"abc\" is not a number"
        );
        let text = "date,open,high,low,close,volume\n2024-13-01,1,2,0.5,1.5,10\n";
        assert!(
            parse(text)
                .unwrap_err()
                .starts_with("f.csv:2: timestamp \"2024-13-01\" is neither")
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
        let extra_value = "timestamp,open,high,low,close,volume\n1,1,2,0.5,1.5,10,7\n";
        assert!(
            parse(extra_value)
                .unwrap_err()
                .contains("f.csv:2: 7 columns, expected 6")
        );
        let headerless_plain = "1,1,2,0.5,1.5,10\n";
        assert!(
            parse(headerless_plain)
                .unwrap_err()
                .contains("needs a header line")
        );
        assert!(parse("").unwrap_err().contains("no candles"));
        assert!(
            parse("timestamp,open,high,low,close,volume\n")
                .unwrap_err()
                .contains("no candles")
        );
        let nan = "timestamp,open,high,low,close,volume\n1,NaN,2,0.5,1.5,10\n";
        assert!(
            parse(nan)
                .unwrap_err()
                .contains("open \"NaN\" is not a finite")
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_header() {
        let text = "\u{feff}Date,Open,High,Low,Close,Volume\n2024-01-02,10,12,9,11,500\n";
        assert_eq!(parse(text).unwrap().len(), 1);
    }

    /// What a read gives, errors as their text, for comparing two ways of reading.
    fn outcome(text: &str, halves_bytes_min: usize) -> String {
        match parse_candles_with(text, &btc(), halves_bytes_min) {
            Ok(read) => format!("{read:?}"),
            Err(error) => error.at(Path::new("f.csv")).to_string(),
        }
    }

    /// A row of a file with a header (`binance` false) or of a headerless Binance dump, at
    /// `time_ms`; `defect` plants one fault in it.
    fn row(binance: bool, time_ms: i64, close: f64, defect: u8) -> String {
        let (open, high, low) = (close - 0.5, close + 1.0, close - 1.0);
        let time = match defect {
            1 => (time_ms / 1000).to_string(), // seconds among milliseconds
            2 => "2024-01-02".to_string(),     // text among integers
            _ => time_ms.to_string(),
        };
        let close = match defect {
            3 => "x".to_string(),
            4 => (high + 5.0).to_string(), // above the high
            _ => close.to_string(),
        };
        let mut row = if binance {
            format!(
                "{time},{open},{high},{low},{close},3.5,{},1,2,3,4,0",
                time_ms + 59_999
            )
        } else {
            format!("{time},{open},{high},{low},{close},3.5")
        };
        if defect == 5 {
            row.push_str(",7"); // a column too many
        }
        row
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Read in two halves or row by row, a file gives the same candles or the same error,
        /// wherever its faults are: in either half, at the split, or in the order of rows.
        #[test]
        fn a_file_read_in_two_halves_reads_as_row_by_row(
            binance in proptest::bool::ANY,
            header in proptest::bool::ANY,
            crlf in proptest::bool::ANY,
            steps in proptest::collection::vec((-2_i64..40, 0_u8..40, 0_u8..12), 1..120),
        ) {
            let newline = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            if header {
                text.push_str(if binance {
                    "open_time,open,high,low,close,volume,close_time,quote_volume,count,\
                     taker_buy_volume,taker_buy_quote_volume,ignore"
                } else {
                    "timestamp,open,high,low,close,volume"
                });
                text.push_str(newline);
            }
            let mut time_ms = 1_700_000_000_000_i64;
            for (index, (step, defect, blank)) in steps.into_iter().enumerate() {
                // Mostly increasing; a step of 0 or less repeats or reverses the time.
                time_ms += step.signum().max(-1) * 60_000 * step.abs().max(1);
                if step == 0 {
                    time_ms -= 60_000;
                }
                if blank == 0 {
                    text.push_str(newline);
                }
                let close = 100.0 + (index % 7) as f64;
                // Most rows are sound: a defect is planted in about one row in eight.
                let defect = if defect < 35 { 0 } else { defect - 34 };
                text.push_str(&row(binance, time_ms, close, defect));
                text.push_str(newline);
            }
            proptest::prop_assert_eq!(outcome(&text, 0), outcome(&text, usize::MAX));
        }
    }

    #[test]
    fn a_large_file_is_read_in_halves_and_gives_the_candles_read_row_by_row() {
        let mut text = String::from("timestamp,open,high,low,close,volume\n");
        for minute in 0..40_000_i64 {
            text.push_str(&row(false, 1_700_000_000_000 + minute * 60_000, 100.0, 0));
            text.push('\n');
        }
        assert!(text.len() > HALVES_BYTES_MIN);
        let halves = parse_halves(text.trim_start_matches('\u{feff}'), &btc(), 0)
            .expect("a sound file with integer timestamps is read in two halves");
        assert_eq!(halves.candles.len(), 40_000);
        assert_eq!(outcome(&text, 0), outcome(&text, usize::MAX));
        // The row after the split repeats the time before it: the read by halves gives way,
        // and the row-by-row read names the row.
        let split = text.len() / 2 + text[text.len() / 2..].find('\n').unwrap() + 1;
        let previous_time = text[..split - 1]
            .rsplit('\n')
            .next()
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let mut broken = text[..split].to_string();
        broken.push_str(&row(false, previous_time.parse().unwrap(), 100.0, 0));
        broken.push('\n');
        broken.push_str(&text[split..]);
        assert!(parse_halves(&broken, &btc(), 0).is_none());
        let error = outcome(&broken, 0);
        assert!(error.contains("duplicated timestamp"), "{error}");
        assert_eq!(error, outcome(&broken, usize::MAX));
    }

    #[test]
    fn iso_ms_writes_utc_text() {
        assert_eq!(iso_ms(1_092_873_600_000), "2004-08-19T00:00:00Z");
        assert_eq!(iso_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_ms(i64::MAX), i64::MAX.to_string());
    }

    /// The text chrono's strftime writes for the formats `iso_ms` names.
    fn strftime_iso_ms(time_ms: i64) -> String {
        match DateTime::from_timestamp_millis(time_ms) {
            Some(time) if time_ms % 1_000 == 0 => time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            Some(time) => time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            None => time_ms.to_string(),
        }
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Before year 0, after 9999, in whole seconds or not: as strftime writes it.
        #[test]
        fn iso_ms_writes_what_strftime_writes(
            time_ms in proptest::prop_oneof![
                proptest::prelude::any::<i64>(),
                // chrono's range: about 262,000 years either side of year 0.
                -8_300_000_000_000_000_i64..8_300_000_000_000_000,
                (-8_300_000_000_000_i64..8_300_000_000_000).prop_map(|s| s * 1_000),
                -100_000_000_000_000_i64..400_000_000_000_000,
            ]
        ) {
            proptest::prop_assert_eq!(iso_ms(time_ms), strftime_iso_ms(time_ms));
        }
    }
}
