//! What a backtest reports: the summary figures, the trades rebuilt from the exchange's fills, and
//! the equity curve. Every field is a pure function of the inputs, so the JSON is reproducible to
//! the byte.

use std::collections::BTreeMap;

use keel_kernel::engine::RefusalRecord;
use keel_kernel::exchange::Fill;
use keel_kernel::ids::Symbol;
use keel_kernel::ledger::round_half;
use keel_kernel::lifecycle::{Position, try_exit_fill_move};
use keel_kernel::market::{Candle, Side};
use keel_kernel::money::{Qty, Reservation};
use keel_kernel::risk::RefusalRule;
use keel_kernel::strategy::RawIntent;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive as _;
use serde::{Serialize, Serializer};

use super::candles::{CandleFileInfo, iso_ms};
use super::run::{BacktestSpec, fees_paid};

const YEAR_MS: f64 = 365.25 * 86_400_000.0;

/// Most refusals the report lists one by one; every refusal is counted by rule all the same.
/// A strategy that asks for a refused entry on every one of ten million candles would otherwise
/// write gigabytes of the same refusal.
pub const REFUSALS_LISTED_MAX: usize = 100_000;

/// Equity at one candle's close.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EquityPoint {
    /// The candle's close time, milliseconds since the epoch.
    pub time_ms: i64,
    /// Allocated capital + realized PnL (fees included) + unrealized PnL.
    pub equity: f64,
    /// True when a position was open at the close.
    pub in_position: bool,
}

/// One round trip: from flat to a position and back to flat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trade {
    /// `long` or `short`.
    pub side: &'static str,
    /// Time of the first entry fill: the open of the candle that filled it.
    pub entry_time_ms: i64,
    /// `entry_time_ms` as ISO-8601 UTC text.
    pub entry_time: String,
    /// Index of the candle of the first entry fill, from 0.
    pub entry_bar: usize,
    /// Average entry price.
    pub entry_price: Decimal,
    /// Time of the fill that closed the position; `None` while still open at the end.
    pub exit_time_ms: Option<i64>,
    /// `exit_time_ms` as ISO-8601 UTC text.
    pub exit_time: Option<String>,
    /// Index of the candle of the closing fill.
    pub exit_bar: Option<usize>,
    /// Average exit price of the quantity closed so far.
    pub exit_price: Option<Decimal>,
    /// Largest quantity held.
    pub qty: Decimal,
    /// Realized PnL before fees.
    pub pnl: Decimal,
    /// Fees of every fill of the trade.
    pub fees: Decimal,
    /// `pnl - fees`.
    pub net_pnl: Decimal,
}

/// The headline figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Final equity over capital, minus one.
    pub total_return: f64,
    /// Total return compounded to one year of the candles' span.
    pub annualised_return: f64,
    /// Largest fall from a peak of equity, as a fraction of that peak.
    pub max_drawdown: f64,
    /// Mean over standard deviation of per-candle returns, scaled to a year (risk-free rate 0).
    pub sharpe: f64,
    /// Round trips: `trades_closed + trades_open`.
    pub trades: usize,
    /// Round trips back to flat by the end.
    pub trades_closed: usize,
    /// Round trips still open at the last candle (0 or 1): valued at its close, not closed.
    pub trades_open: usize,
    /// Closed trades with a positive net PnL over closed trades (open trades are left out).
    pub win_rate: f64,
    /// Every fee paid.
    pub fees_paid: Decimal,
    /// Fraction of candles that closed with a position open.
    pub exposure: f64,
    /// Holding the symbol over the period: the last candle's close over the first one's open,
    /// minus one (no fees).
    pub buy_and_hold_return: f64,
    /// Intents the kernel refused, every one of the run.
    pub refusals: usize,
    /// The refusals counted by rule, listed by the rule's name.
    pub refusals_by_rule: BTreeMap<RefusalRule, usize>,
    /// Equity at the last close.
    pub final_equity: f64,
    /// Realized PnL in the kernel's ledger, fees included.
    pub realized_pnl: Decimal,
}

/// The whole report, as written with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BacktestReport {
    /// The plugin's name.
    pub plugin: String,
    /// The traded symbol.
    pub symbol: String,
    /// Config pairs handed to `init`.
    pub config: Vec<(String, String)>,
    /// Allocated capital.
    pub capital: Decimal,
    /// Fee in basis points of notional.
    pub fee_bps: Decimal,
    /// Candles fed.
    pub candles: usize,
    /// How the candle file was read, when the candles came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candle_file: Option<CandleFileInfo>,
    /// Open time of the first candle.
    pub start_ms: i64,
    /// `start_ms` as ISO-8601 UTC text.
    pub start: String,
    /// Close time of the last candle.
    pub end_ms: i64,
    /// `end_ms` as ISO-8601 UTC text.
    pub end: String,
    /// Open time of the last candle, as ISO-8601 UTC text: with `start`, the period's first and
    /// last candle.
    pub last_candle: String,
    /// The headline figures.
    pub summary: Summary,
    /// Every round trip, in order.
    pub trades: Vec<Trade>,
    /// The refused intents in order, the first [`REFUSALS_LISTED_MAX`] of them.
    pub refusals: Vec<RefusalEntry>,
    /// Equity at every candle's close, each point with its candle's index (`bar`) and its time
    /// as ISO-8601 text (`time`).
    #[serde(serialize_with = "serialize_equity")]
    pub equity: Vec<EquityPoint>,
}

/// One refused intent, as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefusalEntry {
    /// Kernel time of the refusal: the close of the candle whose step refused it.
    pub time_ms: i64,
    /// `time_ms` as ISO-8601 UTC text.
    pub time: String,
    /// Index of that candle, from 0.
    pub bar: usize,
    /// The rule that refused it.
    pub rule: RefusalRule,
    /// Why, in words.
    pub message: String,
    /// The intent as the strategy sent it (`kind`, `symbol`, `side`, …).
    pub intent: RawIntent,
}

impl RefusalEntry {
    /// What was refused in a few words: `entry long BTCUSDT`, `exit BTCUSDT`, `cancel`.
    pub fn what(&self) -> String {
        match &self.intent {
            RawIntent::Entry(entry) => {
                let side = match entry.side {
                    keel_kernel::strategy::PositionSide::Long => "long",
                    keel_kernel::strategy::PositionSide::Short => "short",
                };
                format!("entry {side} {}", entry.symbol)
            }
            RawIntent::Exit(exit) => format!("exit {}", exit.symbol),
            RawIntent::Cancel { client_order_id } => format!("cancel {client_order_id}"),
            RawIntent::SetTimer { .. } => "timer".to_owned(),
        }
    }
}

/// Every refusal of a run, gathered candle by candle as the engine records them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refusals {
    /// The first [`REFUSALS_LISTED_MAX`], in order.
    listed: Vec<RefusalEntry>,
    /// Every refusal by rule.
    by_rule: BTreeMap<RefusalRule, usize>,
    /// Every refusal.
    total: usize,
}

impl Refusals {
    /// Adds refusals recorded while the candle `bar` was handled.
    pub fn extend(&mut self, bar: usize, records: impl IntoIterator<Item = RefusalRecord>) {
        for record in records {
            self.total += 1;
            *self.by_rule.entry(record.rule).or_default() += 1;
            if self.listed.len() < REFUSALS_LISTED_MAX {
                self.listed.push(RefusalEntry {
                    time_ms: record.at_ms,
                    time: iso_ms(record.at_ms),
                    bar,
                    rule: record.rule,
                    message: record.reason,
                    intent: record.intent,
                });
            }
        }
    }
}

/// One equity point as the JSON has it.
#[derive(Serialize)]
struct EquityRow {
    bar: usize,
    time_ms: i64,
    time: String,
    equity: f64,
    in_position: bool,
}

fn serialize_equity<S: Serializer>(
    equity: &[EquityPoint],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(equity.iter().enumerate().map(|(bar, p)| EquityRow {
        bar,
        time_ms: p.time_ms,
        time: iso_ms(p.time_ms),
        equity: p.equity,
        in_position: p.in_position,
    }))
}

/// Index of the candle open at `time_ms`: the last one opened at or before it.
pub fn bar_at(candles: &[Candle], time_ms: i64) -> usize {
    candles
        .partition_point(|c| c.open_time_ms <= time_ms)
        .saturating_sub(1)
}

/// [`bar_at`] for times that mostly grow, as a run's fills do: the search starts at the bar
/// found last and looks at the bars after it nearest first, instead of halving a million bars
/// (and missing the cache) per trade. The answer is [`bar_at`]'s.
#[derive(Debug, Default)]
struct BarCursor {
    last: usize,
}

impl BarCursor {
    fn bar_at(&mut self, candles: &[Candle], time_ms: i64) -> usize {
        let from = self.last;
        let bar = match candles.get(from) {
            // The bars are in time order: every bar before `from` opened no later either.
            Some(c) if c.open_time_ms <= time_ms => {
                let mut step = 1;
                while candles
                    .get(from + step)
                    .is_some_and(|c| c.open_time_ms <= time_ms)
                {
                    step *= 2;
                }
                let end = (from + step).min(candles.len());
                from + candles[from..end].partition_point(|c| c.open_time_ms <= time_ms) - 1
            }
            _ => bar_at(candles, time_ms),
        };
        self.last = bar;
        bar
    }
}

/// Builds the report of a finished run.
pub fn build_report(
    spec: &BacktestSpec,
    fills: &[Fill],
    equity: Vec<EquityPoint>,
    realized_pnl: Decimal,
    refusals: Refusals,
) -> BacktestReport {
    let trades = rebuild_trades(fills, &spec.candles);
    let capital = spec.capital.to_f64().unwrap_or(f64::NAN);
    let start_ms = spec.candles.first().map_or(0, |c| c.open_time_ms);
    let end_ms = spec.candles.last().map_or(0, |c| c.close_time_ms);
    let mut summary = summarise(
        capital,
        &equity,
        &trades,
        fills,
        (start_ms, end_ms),
        realized_pnl,
    );
    summary.buy_and_hold_return = buy_and_hold(&spec.candles);
    summary.refusals = refusals.total;
    summary.refusals_by_rule = refusals.by_rule;
    BacktestReport {
        plugin: spec.plugin_name.clone(),
        symbol: spec.symbol.to_string(),
        config: spec.config.clone(),
        capital: spec.capital,
        fee_bps: spec.fee_bps,
        candles: spec.candles.len(),
        candle_file: None,
        start_ms,
        start: iso_ms(start_ms),
        end_ms,
        end: iso_ms(end_ms),
        last_candle: iso_ms(spec.candles.last().map_or(0, |c| c.open_time_ms)),
        summary,
        trades,
        refusals: refusals.listed,
        equity,
    }
}

/// The last close over the first open, minus one.
fn buy_and_hold(candles: &[Candle]) -> f64 {
    match (candles.first(), candles.last()) {
        (Some(first), Some(last)) if first.open > 0.0 => last.close / first.open - 1.0,
        _ => 0.0,
    }
}

fn summarise(
    capital: f64,
    equity: &[EquityPoint],
    trades: &[Trade],
    fills: &[Fill],
    (start_ms, end_ms): (i64, i64),
    realized_pnl: Decimal,
) -> Summary {
    let final_equity = equity.last().map_or(capital, |p| p.equity);
    let total_return = final_equity / capital - 1.0;
    let span_years = (end_ms - start_ms) as f64 / YEAR_MS;
    let annualised_return = if span_years > 0.0 && final_equity > 0.0 {
        (final_equity / capital).powf(1.0 / span_years) - 1.0
    } else {
        0.0
    };
    let closed: Vec<&Trade> = trades.iter().filter(|t| t.exit_time_ms.is_some()).collect();
    let wins = closed.iter().filter(|t| t.net_pnl > Decimal::ZERO).count();
    Summary {
        total_return,
        annualised_return,
        max_drawdown: max_drawdown(equity),
        sharpe: sharpe(capital, equity, span_years),
        trades: trades.len(),
        trades_closed: closed.len(),
        trades_open: trades.len() - closed.len(),
        win_rate: ratio(wins, closed.len()),
        fees_paid: fees_paid(fills),
        exposure: ratio(
            equity.iter().filter(|p| p.in_position).count(),
            equity.len(),
        ),
        buy_and_hold_return: 0.0,
        refusals: 0,
        refusals_by_rule: BTreeMap::new(),
        final_equity,
        realized_pnl,
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Largest fall from a running peak, as a fraction of the peak.
pub fn max_drawdown(equity: &[EquityPoint]) -> f64 {
    let mut peak = f64::MIN;
    let mut worst: f64 = 0.0;
    for point in equity {
        peak = peak.max(point.equity);
        if peak > 0.0 {
            worst = worst.max((peak - point.equity) / peak);
        }
    }
    worst
}

fn sharpe(capital: f64, equity: &[EquityPoint], span_years: f64) -> f64 {
    let mut previous = capital;
    let returns: Vec<f64> = equity
        .iter()
        .map(|p| {
            let r = p.equity / previous - 1.0;
            previous = p.equity;
            r
        })
        .collect();
    if returns.len() < 2 || span_years <= 0.0 {
        return 0.0;
    }
    let n = returns.len() as f64;
    let mean = returns.iter().sum::<f64>() / n;
    let variance = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let std = variance.sqrt();
    if std == 0.0 || !std.is_finite() {
        return 0.0;
    }
    mean / std * (n / span_years).sqrt()
}

/// Round trips from fills in execution order: a trade opens when the position leaves zero and
/// closes when it returns to zero. A fill that crosses zero closes one trade and opens the next.
/// PnL follows the ledger's arithmetic, so the trades' `pnl - fees` sums to its realized PnL.
/// `candles` are the run's, to give each entry and exit its bar.
pub fn rebuild_trades(fills: &[Fill], candles: &[Candle]) -> Vec<Trade> {
    let mut trades = Vec::new();
    let mut open: Option<OpenTrade> = None;
    let mut bars = BarCursor::default();
    for fill in fills {
        let qty = fill.qty.get();
        let signed = match fill.side {
            Side::Buy => qty,
            Side::Sell => -qty,
        };
        let trade = open.get_or_insert_with(|| OpenTrade::new(fill));
        if trade.position.is_zero()
            || trade.position.is_sign_positive() == signed.is_sign_positive()
        {
            trade.add(fill, qty);
            continue;
        }
        let closing = qty.min(trade.position.abs());
        trade.reduce(fill, closing);
        if trade.position.is_zero() {
            let done = open.take().expect("a trade is open");
            trades.push(done.finish(Some(fill.time_ms), candles, &mut bars));
            let rest = qty - closing;
            if rest > Decimal::ZERO {
                let mut next = OpenTrade::new(fill);
                next.open_qty(fill, rest);
                open = Some(next);
            }
        }
    }
    trades.extend(open.map(|t| t.finish(None, candles, &mut bars)));
    trades
}

struct OpenTrade {
    side: Side,
    symbol: Symbol,
    /// Quantity and cost still open, as the ledger holds them.
    qty_open: Decimal,
    cost_open: Decimal,
    position: Decimal,
    entry_time_ms: i64,
    entry_cost: Decimal,
    entry_qty: Decimal,
    exit_value: Decimal,
    exit_qty: Decimal,
    qty_max: Decimal,
    pnl: Decimal,
    fees: Decimal,
}

impl OpenTrade {
    fn new(fill: &Fill) -> Self {
        OpenTrade {
            side: fill.side,
            symbol: fill.symbol.clone(),
            qty_open: Decimal::ZERO,
            cost_open: Decimal::ZERO,
            position: Decimal::ZERO,
            entry_time_ms: fill.time_ms,
            entry_cost: Decimal::ZERO,
            entry_qty: Decimal::ZERO,
            exit_value: Decimal::ZERO,
            exit_qty: Decimal::ZERO,
            qty_max: Decimal::ZERO,
            pnl: Decimal::ZERO,
            fees: Decimal::ZERO,
        }
    }

    fn direction(&self) -> Decimal {
        match self.side {
            Side::Buy => Decimal::ONE,
            Side::Sell => Decimal::NEGATIVE_ONE,
        }
    }

    /// An entry fill: its fee, then the quantity.
    fn add(&mut self, fill: &Fill, qty: Decimal) {
        self.fees += fill.fee.get();
        self.open_qty(fill, qty);
    }

    /// Quantity added to the position, without the fill's fee (already counted). The position
    /// costs the fill's notional rounded as the ledger rounds it.
    fn open_qty(&mut self, fill: &Fill, qty: Decimal) {
        self.qty_open += qty;
        self.cost_open += round_half(qty * fill.price.get());
        self.entry_cost += qty * fill.price.get();
        self.entry_qty += qty;
        self.position += self.direction() * qty;
        self.qty_max = self.qty_max.max(self.position.abs());
    }

    /// The cost an exit of `qty` releases and its PnL, as the ledger computes them. A position
    /// beyond the ledger's range, which no run's ledger holds, releases its cost in proportion.
    fn exit_move(&self, fill: &Fill, qty: Decimal) -> (Decimal, Decimal) {
        if let (Ok(qty_open), Ok(cost_open)) =
            (Qty::new(self.qty_open), Reservation::new(self.cost_open))
        {
            let position = Position {
                lifecycle_id: 0,
                symbol: self.symbol.clone(),
                side: self.side,
                qty_open,
                cost_open,
            };
            if let Ok(moved) = try_exit_fill_move(&position, qty, fill.price.get(), fill.fee.get())
            {
                return (moved.cost_released, moved.pnl);
            }
        }
        let cost_released = (self.cost_open.checked_div(self.qty_open))
            .and_then(|unit| unit.checked_mul(qty))
            .unwrap_or(self.cost_open);
        let proceeds = qty * fill.price.get();
        (cost_released, self.direction() * (proceeds - cost_released))
    }

    /// An exit fill, its PnL computed by the ledger's own arithmetic (the exchange's figure
    /// may differ in the last decimal place).
    fn reduce(&mut self, fill: &Fill, qty: Decimal) {
        let (cost_released, pnl) = self.exit_move(fill, qty);
        self.qty_open -= qty;
        self.cost_open -= cost_released;
        self.pnl += pnl;
        self.fees += fill.fee.get();
        self.exit_value += qty * fill.price.get();
        self.exit_qty += qty;
        self.position -= self.direction() * qty;
    }

    fn finish(self, exit_time_ms: Option<i64>, candles: &[Candle], bars: &mut BarCursor) -> Trade {
        let average = |value: Decimal, qty: Decimal| (!qty.is_zero()).then(|| value / qty);
        Trade {
            side: match self.side {
                Side::Buy => "long",
                Side::Sell => "short",
            },
            entry_time_ms: self.entry_time_ms,
            entry_time: iso_ms(self.entry_time_ms),
            entry_bar: bars.bar_at(candles, self.entry_time_ms),
            entry_price: average(self.entry_cost, self.entry_qty).unwrap_or_default(),
            exit_time_ms,
            exit_time: exit_time_ms.map(iso_ms),
            exit_bar: exit_time_ms.map(|t| bars.bar_at(candles, t)),
            exit_price: average(self.exit_value, self.exit_qty),
            qty: self.qty_max,
            pnl: self.pnl,
            fees: self.fees,
            net_pnl: self.pnl - self.fees,
        }
    }
}

/// The summary as a terminal table.
pub fn summary_table(report: &BacktestReport) -> String {
    let s = &report.summary;
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    // Daily candles read best as dates; anything else keeps its time of day.
    let midnight = "T00:00:00Z";
    let (first, last) = (report.start.as_str(), report.last_candle.as_str());
    let period = if first.ends_with(midnight) && last.ends_with(midnight) {
        format!(
            "{} to {}",
            first.trim_end_matches(midnight),
            last.trim_end_matches(midnight)
        )
    } else {
        format!("{first} to {last}")
    };
    let mut rows = vec![
        ("plugin", report.plugin.clone()),
        ("symbol", report.symbol.clone()),
        ("period", period),
        ("candles", thousands(report.candles as f64, 0)),
    ];
    if let Some(file) = &report.candle_file {
        rows.push(("timestamps", file.timestamps.describe().to_owned()));
        if !file.ignored_columns.is_empty() {
            rows.push(("columns not read", file.ignored_columns.join(", ")));
        }
    }
    rows.extend([
        ("capital", money(report.capital)),
        ("final equity", thousands(s.final_equity, 2)),
        ("total return", pct(s.total_return)),
        ("buy and hold return", pct(s.buy_and_hold_return)),
        ("annualised return", pct(s.annualised_return)),
        ("max drawdown", pct(s.max_drawdown)),
        ("sharpe", format!("{:.2}", s.sharpe)),
        (
            "trades",
            format!("{} closed, {} open", s.trades_closed, s.trades_open),
        ),
        ("win rate (closed)", pct(s.win_rate)),
        ("fees paid", money(s.fees_paid.round_dp(2))),
        ("exposure", pct(s.exposure)),
        ("refusals", s.refusals.to_string()),
    ]);
    let by_rule = s
        .refusals_by_rule
        .iter()
        .map(|(rule, count)| (*rule, count.to_string()));
    let mut out = String::new();
    for (name, value) in rows {
        out.push_str(&format!("{name:<20} {value:>24}\n"));
    }
    for (rule, count) in by_rule {
        out.push_str(&format!(
            "{:<32} {count:>12}\n",
            format!("  refused by {rule}")
        ));
    }
    out
}

/// `value` with a comma between thousands and `decimals` places: `12,500,000.00`.
pub fn thousands(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    group_thousands(&format!("{value:.decimals$}"))
}

/// An exact amount with a comma between thousands, its decimal places kept: `10,000`,
/// `1,234.56`.
pub fn money(amount: Decimal) -> String {
    group_thousands(&amount.normalize().to_string())
}

/// Decimal text (`-1234.50`) with a comma between thousands (`-1,234.50`); a negative zero
/// loses its sign.
fn group_thousands(text: &str) -> String {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) if rest.bytes().any(|b| (b'1'..=b'9').contains(&b)) => ("-", rest),
        Some(rest) => ("", rest),
        None => ("", text),
    };
    let (whole, fraction) = digits.split_at(digits.find('.').unwrap_or(digits.len()));
    let mut grouped = String::with_capacity(text.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}{grouped}{fraction}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::synthetic::random_walk;

    proptest! {
        /// Forward, backward, between, before and after the bars, and over no bar at all.
        #[test]
        fn the_bar_cursor_finds_the_bar_the_search_of_all_bars_finds(
            bars in 0_usize..300,
            moves in proptest::collection::vec(-5_000_000_i64..20_000_000, 1..60),
        ) {
            let candles = random_walk(&Symbol::new("BTCUSDT").unwrap(), bars, 1);
            let start = candles.first().map_or(0, |c| c.open_time_ms);
            let mut cursor = BarCursor::default();
            let mut time_ms = start - 120_000;
            for step in moves {
                time_ms += step;
                prop_assert_eq!(cursor.bar_at(&candles, time_ms), bar_at(&candles, time_ms));
            }
        }
    }

    #[test]
    fn money_is_written_with_thousands_separators() {
        assert_eq!(thousands(12_500_000.0, 0), "12,500,000");
        assert_eq!(thousands(12_500_000.456, 2), "12,500,000.46");
        assert_eq!(thousands(-1234.5, 1), "-1,234.5");
        assert_eq!(thousands(999.0, 0), "999");
        assert_eq!(thousands(-0.001, 2), "0.00");
        assert_eq!(money(Decimal::new(10_000, 0)), "10,000");
        assert_eq!(money(Decimal::new(123_456_789, 2)), "1,234,567.89");
    }
}
