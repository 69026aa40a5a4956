//! Market data: klines of every USDⓈ-M interval, tickers, the order book and the mark price.
//!
//! Candles of the simulator's own width are the ones it played. Every other interval is built
//! from the minute bars of the played market and, before the market started, from a deterministic synthetic history
//! (a sum of slow waves ending at each symbol's first price), so a bot can page back through
//! days of klines and get the same answer each time.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use keel_exchange::codes;
use keel_kernel::ids::Symbol;
use keel_kernel::market::Candle;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::SimState;
use super::rest::{ApiError, Gate, Params, Reply, finish, gate, ok, optional_symbol, param};

/// Candles `GET /fapi/v1/klines` returns without a `limit`, as on Binance.
const KLINES_LIMIT_DEFAULT: usize = 500;
/// The most candles one `GET /fapi/v1/klines` returns.
const KLINES_LIMIT_MAX: usize = 1_500;

/// The request weight of `GET /fapi/v1/klines` for `limit` rows, as Binance documents it.
fn klines_weight(limit: usize) -> u32 {
    match limit {
        0..100 => 1,
        100..500 => 2,
        500..=1000 => 5,
        _ => 10,
    }
}
/// No kline opens before this time: the listed symbols' `onboardDate`.
const HISTORY_START_MS: i64 = 1_569_398_400_000;
/// Points sampled inside a synthetic candle to find its high and low.
const SYNTHETIC_SAMPLES: i64 = 16;
/// Contracts traded per minute in the synthetic history, on average.
const SYNTHETIC_VOLUME_PER_MINUTE: f64 = 40.0;
/// Trades per contract of volume, for the trade-count field.
const TRADES_PER_CONTRACT: f64 = 8.0;
/// Price levels `GET /fapi/v1/depth` returns without a `limit`.
const DEPTH_LIMIT_DEFAULT: usize = 500;
/// The limits `GET /fapi/v1/depth` accepts.
const DEPTH_LIMITS: [usize; 7] = [5, 10, 20, 50, 100, 500, 1000];
/// Funding is every eight hours.
const FUNDING_INTERVAL_MS: i64 = 8 * 3_600_000;
const MINUTE_MS: i64 = 60_000;
/// How far past now a klines request's times are taken as they are (a year and a month).
const KLINES_FUTURE_MS: i64 = 400 * DAY_MS;
const DAY_MS: i64 = 86_400_000;

/// How a kline interval cuts time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Span {
    /// Fixed width, aligned to the epoch plus an offset (weeks start on Monday).
    Fixed { width_ms: i64, offset_ms: i64 },
    /// Calendar months, in UTC.
    Month,
}

/// The intervals Binance USDⓈ-M serves.
const INTERVALS: [(&str, i64); 14] = [
    ("1m", 60_000),
    ("3m", 180_000),
    ("5m", 300_000),
    ("15m", 900_000),
    ("30m", 1_800_000),
    ("1h", 3_600_000),
    ("2h", 7_200_000),
    ("4h", 14_400_000),
    ("6h", 21_600_000),
    ("8h", 28_800_000),
    ("12h", 43_200_000),
    ("1d", DAY_MS),
    ("3d", 3 * DAY_MS),
    ("1w", 7 * DAY_MS),
];

fn span_of(name: &str, own: (&str, i64)) -> Option<Span> {
    if name == "1M" {
        return Some(Span::Month);
    }
    let width_ms = if name == own.0 {
        own.1
    } else {
        INTERVALS.iter().find(|(n, _)| *n == name)?.1
    };
    // 1970-01-01 was a Thursday; Binance's weeks start on Monday.
    let offset_ms = if name == "1w" { 4 * DAY_MS } else { 0 };
    Some(Span::Fixed {
        width_ms,
        offset_ms,
    })
}

impl Span {
    fn start(self, t: i64) -> i64 {
        match self {
            Span::Fixed {
                width_ms,
                offset_ms,
            } => t - (t - offset_ms).rem_euclid(width_ms),
            Span::Month => {
                let (y, m, _) = civil_from_days(t.div_euclid(DAY_MS));
                days_from_civil(y, m, 1) * DAY_MS
            }
        }
    }

    fn next(self, start: i64) -> i64 {
        match self {
            Span::Fixed { width_ms, .. } => start + width_ms,
            Span::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(DAY_MS));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY_MS
            }
        }
    }

    fn prev(self, start: i64) -> i64 {
        self.start(start - 1)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// A number in `[0, 1)` fixed by its inputs (splitmix64).
fn noise(parts: &[i64]) -> f64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for part in parts {
        x ^= *part as u64;
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn symbol_key(symbol: &Symbol) -> i64 {
    symbol
        .as_str()
        .bytes()
        .fold(0i64, |h, b| h.wrapping_mul(31).wrapping_add(i64::from(b)))
}

/// What the market data is built from: the played candles and the synthetic history's anchor.
struct Tape {
    symbol: Symbol,
    /// Played candles, oldest first.
    played: Vec<Candle>,
    /// Played minute bars from the earliest time asked about, oldest first.
    bars: Vec<Candle>,
    market_start_ms: i64,
    anchor: f64,
    tick: f64,
    seed: i64,
}

impl Tape {
    fn of(state: &SimState, symbol: &Symbol, since_ms: i64) -> Option<Tape> {
        let anchor = *state.0.anchors.get(symbol)?;
        // Every account is fed the same candles: the main one stands for the market.
        let (played, tick) = state.with_engine(super::MAIN_ACCOUNT, |e| {
            let tick = e.rules(symbol).map(|r| r.tick_size);
            (
                e.recent_candles(symbol, keel_exchange::paper::CANDLES_KEPT),
                tick,
            )
        });
        let tick: f64 = tick?.try_into().ok()?;
        Some(Tape {
            symbol: symbol.clone(),
            played: played?,
            bars: state.bars_since(symbol, since_ms),
            market_start_ms: state.0.market_start_ms,
            anchor,
            tick,
            seed: state.0.config.seed as i64,
        })
    }

    /// The synthetic price at `t`, equal to the anchor when the market starts.
    fn wave(&self, t: i64) -> f64 {
        let days = (t - self.market_start_ms) as f64 / DAY_MS as f64;
        let phase = (symbol_key(&self.symbol) % 1000) as f64;
        let tau = std::f64::consts::TAU;
        let swing = |period_days: f64, amplitude: f64| {
            amplitude * ((tau * days / period_days + phase).sin() - phase.sin())
        };
        let ratio = 1.0 + swing(41.0, 0.08) + swing(3.3, 0.025) + swing(0.23, 0.006);
        self.on_tick(self.anchor * ratio)
    }

    fn on_tick(&self, price: f64) -> f64 {
        (price / self.tick).round() * self.tick
    }

    /// The synthetic candle of `[from, to)`, before the market started.
    fn synthetic(&self, from: i64, to: i64) -> Candle {
        let (open, close) = (self.wave(from), self.wave(to));
        let (mut high, mut low) = (open.max(close), open.min(close));
        for i in 1..SYNTHETIC_SAMPLES {
            let price = self.wave(from + (to - from) * i / SYNTHETIC_SAMPLES);
            high = high.max(price);
            low = low.min(price);
        }
        let key = symbol_key(&self.symbol);
        let wick = 0.0005 + 0.0015 * noise(&[self.seed, key, from, to, 1]);
        let minutes = (to - from) as f64 / 60_000.0;
        Candle {
            symbol: self.symbol.clone(),
            open_time_ms: from,
            close_time_ms: to,
            open,
            high: self.on_tick(high * (1.0 + wick)),
            low: self.on_tick(low * (1.0 - wick)),
            close,
            volume: SYNTHETIC_VOLUME_PER_MINUTE
                * minutes
                * (0.5 + noise(&[self.seed, key, from, to, 2])),
        }
    }

    /// The candle of `[from, to)`: the synthetic part before the market started, then the
    /// played minute bars that open inside it. `None` when nothing happened in it yet.
    fn candle(&self, from: i64, to: i64, now_ms: i64) -> Option<Candle> {
        let mut parts = Vec::new();
        if from < self.market_start_ms {
            parts.push(self.synthetic(from, to.min(self.market_start_ms)));
        }
        let first = self.bars.partition_point(|c| c.open_time_ms < from);
        let last = self.bars.partition_point(|c| c.open_time_ms < to);
        parts.extend(self.bars[first..last].iter().cloned());
        let mut candle = parts.first()?.clone();
        for part in &parts[1..] {
            candle.high = candle.high.max(part.high);
            candle.low = candle.low.min(part.low);
            candle.close = part.close;
            candle.volume += part.volume;
        }
        candle.open_time_ms = from;
        candle.close_time_ms = to;
        debug_assert!(from <= now_ms, "a candle has begun");
        Some(candle)
    }
}

/// One row of `GET /fapi/v1/klines`, with quote volume, trade count and taker volumes.
fn kline_row(candle: &Candle, seed: i64) -> Value {
    let numbers = KlineNumbers::of(candle, seed);
    json!([
        candle.open_time_ms,
        text(candle.open),
        text(candle.high),
        text(candle.low),
        text(candle.close),
        text(candle.volume),
        candle.close_time_ms - 1,
        decimal(numbers.quote_volume, 5),
        numbers.trades,
        text(numbers.taker_volume),
        decimal(numbers.taker_quote_volume, 5),
        "0"
    ])
}

/// What a kline says beyond prices and volume, derived from the candle and the seed so the
/// `klines` row and the stream event of a candle agree.
struct KlineNumbers {
    quote_volume: f64,
    trades: i64,
    taker_volume: f64,
    taker_quote_volume: f64,
    /// The id of the candle's first trade: trades are numbered by time, a tenth of a second
    /// apart at most.
    first_trade_id: i64,
}

impl KlineNumbers {
    fn of(candle: &Candle, seed: i64) -> Self {
        let volume = candle.volume;
        let quote_volume = volume * (candle.open + candle.close) / 2.0;
        let taker = 0.35 + 0.3 * noise(&[seed, candle.open_time_ms, 3]);
        Self {
            quote_volume,
            trades: (volume * TRADES_PER_CONTRACT).ceil().max(1.0) as i64,
            taker_volume: volume * taker,
            taker_quote_volume: quote_volume * taker,
            first_trade_id: candle.open_time_ms / 100,
        }
    }
}

fn text(price: f64) -> String {
    decimal(price, 8)
}

fn decimal(value: f64, places: u32) -> String {
    Decimal::from_f64_retain(value)
        .map(|d| d.round_dp(places).normalize().to_string())
        .unwrap_or_else(|| "0".to_owned())
}

fn number(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::bad(
                    codes::ILLEGAL_CHARS,
                    format!("Illegal characters found in parameter '{name}'."),
                )
            })
        })
        .transpose()
}

/// The kline limit of a request, checked before the gate so the weight follows it.
fn klines_limit(query: &str) -> Result<usize, ApiError> {
    let limit = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "limit")
        .map(|(_, v)| {
            v.parse::<usize>()
                .ok()
                .filter(|l| (1..=KLINES_LIMIT_MAX).contains(l))
        });
    match limit {
        Some(None) => Err(ApiError::bad(
            codes::INVALID_PARAMETER,
            "Data sent for parameter 'limit' is not valid.",
        )),
        limit => Ok(limit.flatten().unwrap_or(KLINES_LIMIT_DEFAULT)),
    }
}

/// `GET /fapi/v1/klines`: candles of any USDⓈ-M interval, honouring `startTime`, `endTime`
/// and `limit` as Binance does (from `startTime` forward, else back from `endTime` or now).
pub(crate) async fn klines(State(state): State<SimState>, RawQuery(query): RawQuery) -> Response {
    klines_answer(&state, query, |_| Ok(())).await
}

/// The candles a klines request asks for, once `name_symbol` has named the symbol in its
/// parameters.
async fn klines_answer(
    state: &SimState,
    query: Option<String>,
    name_symbol: impl FnOnce(&mut Params) -> Result<(), ApiError>,
) -> Response {
    let query = query.unwrap_or_default();
    let reply = match klines_limit(&query) {
        Err(e) => Err(e),
        Ok(limit) => {
            let spec = Gate::public_query(klines_weight(limit), Some(&query));
            match gate(state, &HeaderMap::new(), spec).await {
                Ok(mut params) => {
                    name_symbol(&mut params).and_then(|()| klines_rows(state, &params, limit))
                }
                Err(e) => Err(e),
            }
        }
    };
    finish(state, reply)
}

/// `GET /fapi/v1/continuousKlines`: the perpetual contract's candles of `pair`, as `klines`
/// answers them for the symbol (the simulator lists perpetuals only).
pub(crate) async fn continuous_klines(
    State(state): State<SimState>,
    RawQuery(query): RawQuery,
) -> Response {
    klines_answer(&state, query, perpetual_of_pair).await
}

/// Names the perpetual of `pair` as the symbol `klines_rows` reads, or refuses another
/// contract type as Binance refuses a parameter it does not accept.
fn perpetual_of_pair(params: &mut Params) -> Result<(), ApiError> {
    let pair = param(params, "pair")?.to_owned();
    let contract = param(params, "contractType")?;
    if contract != "PERPETUAL" {
        return Err(ApiError::bad(
            codes::INVALID_PARAMETER,
            "Data sent for parameter 'contractType' is not valid.",
        ));
    }
    params.insert("symbol".to_owned(), pair);
    Ok(())
}

/// Most funding rows one `fundingRate` answer holds, and how many it holds by default.
const FUNDING_ROWS_MAX: i64 = 1_000;
const FUNDING_ROWS_DEFAULT: i64 = 100;

/// `GET /fapi/v1/fundingRate`: the funding times (every eight hours) with the rate
/// `premiumIndex` quotes and the mark price then: from `startTime` forward, else the newest
/// `limit` up to `endTime` or now, oldest first. The simulator quotes funding; it charges none.
pub(crate) async fn funding_rate(
    State(state): State<SimState>,
    RawQuery(query): RawQuery,
) -> Response {
    let spec = Gate::public_query(1, query.as_deref());
    let reply = match gate(&state, &HeaderMap::new(), spec).await {
        Ok(params) => funding_rows(&state, &params),
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

fn funding_rows(state: &SimState, params: &Params) -> Reply {
    let (symbols, _) = symbols(params)?;
    let limit = match number(params, "limit")? {
        None => FUNDING_ROWS_DEFAULT,
        Some(limit) if (1..=FUNDING_ROWS_MAX).contains(&limit) => limit,
        Some(_) => {
            return Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                "Data sent for parameter 'limit' is not valid.",
            ));
        }
    };
    let now = state.now_ms();
    let (start, end) = (number(params, "startTime")?, number(params, "endTime")?);
    // Any i64 may be sent: the times are held to the simulated history first, so the
    // arithmetic below stays far inside the range.
    let within = |t: i64| t.clamp(HISTORY_START_MS, now);
    let end = within(end.unwrap_or(now));
    let last = end - end.rem_euclid(FUNDING_INTERVAL_MS);
    let first = match start {
        Some(start) => {
            let start = within(start);
            start
                + (FUNDING_INTERVAL_MS - start.rem_euclid(FUNDING_INTERVAL_MS))
                    % FUNDING_INTERVAL_MS
        }
        None => (last - (limit - 1) * FUNDING_INTERVAL_MS).max(HISTORY_START_MS),
    };
    let times: Vec<i64> = (0..limit)
        .map(|i| first + i * FUNDING_INTERVAL_MS)
        .take_while(|&t| t <= last)
        .collect();
    let mut rows = Vec::new();
    for symbol in &symbols {
        let Some(&first_time) = times.first() else {
            break;
        };
        let tape = Tape::of(state, symbol, first_time - MINUTE_MS)
            .ok_or_else(|| ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."))?;
        for &time in &times {
            // The mark price at a funding time: the close of the minute that ends there.
            let Some(candle) = tape.candle(time - MINUTE_MS, time, now) else {
                continue;
            };
            rows.push(json!({
                "symbol": symbol.as_str(),
                "fundingRate": "0.00010000",
                "fundingTime": time,
                "markPrice": text(candle.close),
            }));
        }
    }
    ok(rows)
}

fn klines_rows(state: &SimState, params: &Params, limit: usize) -> Reply {
    let symbol = super::rest::symbol_param(params)?;
    let own = (state.0.interval_name, state.0.config.candle_ms as i64);
    let name = param(params, "interval")?;
    let span = span_of(name, own)
        .ok_or_else(|| ApiError::bad(codes::BAD_INTERVAL, "Invalid interval."))?;
    let now = state.now_ms();
    // Any i64 may be sent: times before 1970 ask for what 1970 asks for (nothing played
    // then), times past next year for what next year does (nothing yet), so the interval
    // arithmetic below stays inside the range.
    let within = |t: i64| t.clamp(0, now.saturating_add(KLINES_FUTURE_MS));
    let (start, end) = (number(params, "startTime")?, number(params, "endTime")?);
    let (start, end) = (start.map(within), end.map(within));
    let own_only = name == own.0;
    let last_open = span.start(end.unwrap_or(now).min(now));
    // The earliest bucket the answer can need, so only the bars from there are copied.
    let since = match start {
        Some(start) => span.start(start),
        None => (0..limit).fold(last_open, |from, _| span.prev(from)),
    };
    let tape = Tape::of(state, &symbol, since)
        .ok_or_else(|| ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."))?;
    let row = |from: i64| -> Option<Candle> {
        let to = span.next(from);
        if own_only {
            // The simulator's own width: only the candles it played, all closed.
            let at = tape.played.partition_point(|c| c.open_time_ms < from);
            return tape
                .played
                .get(at)
                .filter(|c| c.open_time_ms == from)
                .cloned();
        }
        tape.candle(from, to, now)
    };
    let mut candles = Vec::with_capacity(limit);
    match start {
        Some(start) => {
            let mut from = span.start(start.max(HISTORY_START_MS));
            if from < start {
                from = span.next(from);
            }
            while from <= last_open && candles.len() < limit {
                candles.extend(row(from));
                from = span.next(from);
            }
        }
        None => {
            let mut from = last_open;
            let oldest = if own_only {
                tape.played.first().map_or(from, |c| c.open_time_ms)
            } else {
                HISTORY_START_MS
            };
            while from >= oldest && candles.len() < limit {
                candles.extend(row(from));
                from = span.prev(from);
            }
            candles.reverse();
        }
    }
    ok(candles
        .iter()
        .map(|c| kline_row(c, tape.seed))
        .collect::<Vec<_>>())
}

/// The symbols a market-data request names: the one in `symbol`, else all listed.
fn symbols(params: &Params) -> Result<(Vec<Symbol>, bool), ApiError> {
    let listed: Vec<Symbol> = super::sim_symbols()
        .into_iter()
        .map(|(r, _)| r.symbol)
        .collect();
    match optional_symbol(params)? {
        Some(symbol) if listed.contains(&symbol) => Ok((vec![symbol], true)),
        Some(_) => Err(ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol.")),
        None => Ok((listed, false)),
    }
}

/// One object for a named symbol, a list for all, as Binance answers.
fn one_or_all(params: &Params, state: &SimState, row: impl Fn(&SimState, &Tape) -> Value) -> Reply {
    let (symbols, one) = symbols(params)?;
    let rows: Vec<Value> = symbols
        .iter()
        .filter_map(|s| Tape::of(state, s, state.now_ms() - DAY_MS))
        .map(|tape| row(state, &tape))
        .collect();
    if one {
        ok(rows.into_iter().next().unwrap_or(Value::Null))
    } else {
        ok(rows)
    }
}

impl Tape {
    fn last_price(&self) -> f64 {
        self.played.last().map_or(self.anchor, |c| c.close)
    }
}

macro_rules! public_handler {
    ($(#[$doc:meta])* $name:ident, $weight:expr, $body:expr) => {
        $(#[$doc])*
        pub(crate) async fn $name(
            State(state): State<SimState>,
            RawQuery(query): RawQuery,
        ) -> Response {
            let spec = Gate::public_query($weight, query.as_deref());
            let reply = match gate(&state, &HeaderMap::new(), spec).await {
                Ok(params) => $body(&state, &params),
                Err(e) => Err(e),
            };
            finish(&state, reply)
        }
    };
}

public_handler!(
    /// `GET /fapi/v1/ticker/price` (and `/fapi/v2/ticker/price`).
    ticker_price,
    1,
    |state: &SimState, params: &Params| one_or_all(params, state, |state, tape| json!({
        "symbol": tape.symbol.as_str(),
        "price": text(tape.last_price()),
        "time": state.now_ms(),
    }))
);

public_handler!(
    /// `GET /fapi/v1/ticker/24hr`: the last 24 hours of the tape.
    ticker_24hr,
    1,
    |state: &SimState, params: &Params| one_or_all(params, state, |state, tape| {
        let now = state.now_ms();
        let from = now - DAY_MS;
        let day = tape
            .candle(from, now, now)
            .unwrap_or_else(|| tape.synthetic(from, now));
        let last = tape.last_price();
        let change = last - day.open;
        let quote = day.volume * (day.open + last) / 2.0;
        let count = (day.volume * TRADES_PER_CONTRACT).ceil().max(1.0) as i64;
        json!({
            "symbol": tape.symbol.as_str(),
            "priceChange": text(change),
            "priceChangePercent": decimal(change / day.open * 100.0, 3),
            "weightedAvgPrice": text(quote / day.volume),
            "lastPrice": text(last),
            "lastQty": "0.010",
            "openPrice": text(day.open),
            "highPrice": text(day.high.max(last)),
            "lowPrice": text(day.low.min(last)),
            "volume": decimal(day.volume, 3),
            "quoteVolume": decimal(quote, 5),
            "openTime": from,
            "closeTime": now,
            "firstId": 1,
            "lastId": count,
            "count": count,
        })
    })
);

/// The best bid and ask around the last price: one tick apart.
/// The best bid and ask of `symbol`'s synthetic book now, if the simulator lists it.
pub(crate) fn best_bid_ask(state: &SimState, symbol: &Symbol) -> Option<(f64, f64)> {
    Tape::of(state, symbol, state.now_ms() - MINUTE_MS).map(|tape| best(&tape))
}

fn best(tape: &Tape) -> (f64, f64) {
    let bid = (tape.last_price() / tape.tick).floor() * tape.tick;
    (bid, bid + tape.tick)
}

/// The resting quantity at level `level` of a side of the synthetic book.
fn level_qty(tape: &Tape, level: i64, side: i64) -> String {
    decimal(
        0.01 + 2.0 * noise(&[tape.seed, symbol_key(&tape.symbol), level, side]),
        3,
    )
}

public_handler!(
    /// `GET /fapi/v1/ticker/bookTicker`.
    book_ticker,
    2,
    |state: &SimState, params: &Params| one_or_all(params, state, |state, tape| {
        let (bid, ask) = best(tape);
        json!({
            "lastUpdateId": state.now_ms(),
            "symbol": tape.symbol.as_str(),
            "bidPrice": text(bid),
            "bidQty": level_qty(tape, 0, 0),
            "askPrice": text(ask),
            "askQty": level_qty(tape, 0, 1),
            "time": state.now_ms(),
        })
    })
);

public_handler!(
    /// `GET /fapi/v1/premiumIndex`: the last price stands for mark and index prices.
    premium_index,
    1,
    |state: &SimState, params: &Params| one_or_all(params, state, |state, tape| {
        let now = state.now_ms();
        let price = text(tape.last_price());
        json!({
            "symbol": tape.symbol.as_str(),
            "markPrice": price,
            "indexPrice": price,
            "estimatedSettlePrice": price,
            "lastFundingRate": "0.00010000",
            "interestRate": "0.00010000",
            "nextFundingTime": now - now.rem_euclid(FUNDING_INTERVAL_MS) + FUNDING_INTERVAL_MS,
            "time": now,
        })
    })
);

public_handler!(
    /// `GET /fapi/v1/depth`: a synthetic book, one tick between levels.
    depth,
    5,
    |state: &SimState, params: &Params| -> Reply {
        let symbol = super::rest::symbol_param(params)?;
        let limit = match number(params, "limit")? {
            None => DEPTH_LIMIT_DEFAULT,
            Some(l) => DEPTH_LIMITS
                .into_iter()
                .find(|allowed| *allowed as i64 == l)
                .ok_or_else(|| ApiError::bad(codes::INVALID_PARAMETER, "Data sent for parameter 'limit' is not valid."))?,
        };
        let tape = Tape::of(state, &symbol, state.now_ms()).ok_or_else(|| ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."))?;
        let (bid, ask) = best(&tape);
        let level = |side: i64, i: usize| {
            let offset = tape.tick * i as f64;
            let price = if side == 0 { bid - offset } else { ask + offset };
            json!([text(price), level_qty(&tape, i as i64, side)])
        };
        let now = state.now_ms();
        ok(json!({
            "lastUpdateId": now,
            "E": now,
            "T": now,
            "bids": (0..limit).map(|i| level(0, i)).collect::<Vec<_>>(),
            "asks": (0..limit).map(|i| level(1, i)).collect::<Vec<_>>(),
        }))
    }
);

/// The candles of every kline stream as the market plays them: for each symbol and interval,
/// the candle forming now. Binance sends the forming candle on every update (`x` false) and the
/// finished one once (`x` true); the simulator updates once per played candle.
pub(crate) struct KlineStreams {
    forming: std::collections::HashMap<(Symbol, &'static str), Candle>,
}

impl KlineStreams {
    pub fn new() -> Self {
        Self {
            forming: std::collections::HashMap::new(),
        }
    }

    /// The interval names a kline stream may name: every USDⓈ-M interval and the simulator's
    /// own width.
    fn names(own: &'static str) -> impl Iterator<Item = &'static str> {
        let listed = INTERVALS.iter().map(|(name, _)| *name).chain(["1M"]);
        std::iter::once(own).chain(listed.filter(move |name| *name != own))
    }

    /// The `kline` event of every interval for `played`, a candle just played and recorded:
    /// the interval's candle it belongs to, closed when `played` ends it.
    pub fn on_played(&mut self, state: &SimState, played: &Candle) -> Vec<(&'static str, Value)> {
        let own = (state.0.interval_name, state.0.config.candle_ms as i64);
        let now = state.now_ms();
        let seed = state.0.config.seed as i64;
        let mut events = Vec::new();
        for name in Self::names(own.0) {
            let span = span_of(name, own).expect("listed intervals have a span");
            let from = span.start(played.open_time_ms);
            let to = span.next(from);
            let key = (played.symbol.clone(), name);
            let candle = match self.forming.get_mut(&key) {
                Some(candle) if candle.open_time_ms == from => {
                    candle.high = candle.high.max(played.high);
                    candle.low = candle.low.min(played.low);
                    candle.close = played.close;
                    candle.volume += played.volume;
                    candle.clone()
                }
                _ => {
                    // The interval began before this candle: what was played and, before the
                    // market started, the synthetic history (this candle is already a bar).
                    let begun = (from < played.open_time_ms)
                        .then(|| Tape::of(state, &played.symbol, from)?.candle(from, to, now))
                        .flatten();
                    let candle = begun.unwrap_or_else(|| Candle {
                        open_time_ms: from,
                        close_time_ms: to,
                        ..played.clone()
                    });
                    self.forming.insert(key.clone(), candle.clone());
                    candle
                }
            };
            let closed = played.close_time_ms >= to;
            if closed {
                self.forming.remove(&key);
            }
            events.push((name, kline_event(&candle, name, closed, now, seed)));
        }
        events
    }
}

/// Whether `name` is a kline interval the simulator serves.
pub(crate) fn is_interval(state: &SimState, name: &str) -> bool {
    let own = (state.0.interval_name, state.0.config.candle_ms as i64);
    span_of(name, own).is_some()
}

/// A `kline` stream event, with the same volumes and trade count as the `klines` row of the
/// candle.
fn kline_event(candle: &Candle, interval: &str, closed: bool, now_ms: i64, seed: i64) -> Value {
    let numbers = KlineNumbers::of(candle, seed);
    json!({
        "e": "kline",
        "E": now_ms,
        "s": candle.symbol.as_str(),
        "k": {
            "t": candle.open_time_ms,
            "T": candle.close_time_ms - 1,
            "s": candle.symbol.as_str(),
            "i": interval,
            "f": numbers.first_trade_id,
            "L": numbers.first_trade_id + numbers.trades - 1,
            "o": text(candle.open),
            "c": text(candle.close),
            "h": text(candle.high),
            "l": text(candle.low),
            "v": text(candle.volume),
            "n": numbers.trades,
            "x": closed,
            "q": decimal(numbers.quote_volume, 5),
            "V": text(numbers.taker_volume),
            "Q": decimal(numbers.taker_quote_volume, 5),
            "B": "0"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_on_the_first_and_weeks_on_monday() {
        let t = 1_700_000_000_000; // 2023-11-14, a Tuesday
        assert_eq!(Span::Month.start(t), 1_698_796_800_000); // 2023-11-01
        assert_eq!(Span::Month.next(1_698_796_800_000), 1_701_388_800_000);
        assert_eq!(Span::Month.prev(1_698_796_800_000), 1_696_118_400_000);
        let week = span_of("1w", ("1s", 1000)).unwrap();
        assert_eq!(week.start(t), 1_699_833_600_000); // Monday 2023-11-13
    }
}
