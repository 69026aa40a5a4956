//! What a backtest reports: the summary figures, the trades rebuilt from the exchange's fills, and
//! the equity curve. Every field is a pure function of the inputs, so the JSON is reproducible to
//! the byte.

use keel_kernel::exchange::Fill;
use keel_kernel::ids::Symbol;
use keel_kernel::ledger::round_half;
use keel_kernel::lifecycle::{Position, exit_fill_move};
use keel_kernel::market::Side;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive as _;
use serde::Serialize;

use super::run::{BacktestSpec, fees_paid};

const YEAR_MS: f64 = 365.25 * 86_400_000.0;

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
    /// Time of the first entry fill.
    pub entry_time_ms: i64,
    /// Average entry price.
    pub entry_price: Decimal,
    /// Time of the fill that closed the position; `None` while still open at the end.
    pub exit_time_ms: Option<i64>,
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
    /// Round trips, the one still open at the end included.
    pub trades: usize,
    /// Closed trades with a positive net PnL over closed trades.
    pub win_rate: f64,
    /// Every fee paid.
    pub fees_paid: Decimal,
    /// Fraction of candles that closed with a position open.
    pub exposure: f64,
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
    /// Open time of the first candle.
    pub start_ms: i64,
    /// Close time of the last candle.
    pub end_ms: i64,
    /// The headline figures.
    pub summary: Summary,
    /// Every round trip, in order.
    pub trades: Vec<Trade>,
    /// Equity at every candle's close.
    pub equity: Vec<EquityPoint>,
}

/// Builds the report of a finished run.
pub fn build_report(
    spec: &BacktestSpec,
    fills: &[Fill],
    equity: Vec<EquityPoint>,
    realized_pnl: Decimal,
) -> BacktestReport {
    let trades = rebuild_trades(fills);
    let capital = spec.capital.to_f64().unwrap_or(f64::NAN);
    let start_ms = spec.candles.first().map_or(0, |c| c.open_time_ms);
    let end_ms = spec.candles.last().map_or(0, |c| c.close_time_ms);
    let summary = summarise(
        capital,
        &equity,
        &trades,
        fills,
        start_ms,
        end_ms,
        realized_pnl,
    );
    BacktestReport {
        plugin: spec.plugin_name.clone(),
        symbol: spec.symbol.to_string(),
        config: spec.config.clone(),
        capital: spec.capital,
        fee_bps: spec.fee_bps,
        candles: spec.candles.len(),
        start_ms,
        end_ms,
        summary,
        trades,
        equity,
    }
}

fn summarise(
    capital: f64,
    equity: &[EquityPoint],
    trades: &[Trade],
    fills: &[Fill],
    start_ms: i64,
    end_ms: i64,
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
        win_rate: ratio(wins, closed.len()),
        fees_paid: fees_paid(fills),
        exposure: ratio(
            equity.iter().filter(|p| p.in_position).count(),
            equity.len(),
        ),
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
pub fn rebuild_trades(fills: &[Fill]) -> Vec<Trade> {
    let mut trades = Vec::new();
    let mut open: Option<OpenTrade> = None;
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
            trades.push(done.finish(Some(fill.time_ms)));
            let rest = qty - closing;
            if rest > Decimal::ZERO {
                let mut next = OpenTrade::new(fill);
                next.open_qty(fill, rest);
                open = Some(next);
            }
        }
    }
    trades.extend(open.map(|t| t.finish(None)));
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

    /// An exit fill, its PnL computed by the ledger's own arithmetic (the exchange's figure
    /// may differ in the last decimal place).
    fn reduce(&mut self, fill: &Fill, qty: Decimal) {
        let position = Position {
            lifecycle_id: 0,
            symbol: self.symbol.clone(),
            side: self.side,
            qty_open: self.qty_open,
            cost_open: self.cost_open,
        };
        let moved = exit_fill_move(&position, qty, fill.price.get(), fill.fee.get());
        self.qty_open -= qty;
        self.cost_open -= moved.cost_released;
        self.pnl += moved.pnl;
        self.fees += fill.fee.get();
        self.exit_value += qty * fill.price.get();
        self.exit_qty += qty;
        self.position -= self.direction() * qty;
    }

    fn finish(self, exit_time_ms: Option<i64>) -> Trade {
        let average = |value: Decimal, qty: Decimal| (!qty.is_zero()).then(|| value / qty);
        Trade {
            side: match self.side {
                Side::Buy => "long",
                Side::Sell => "short",
            },
            entry_time_ms: self.entry_time_ms,
            entry_price: average(self.entry_cost, self.entry_qty).unwrap_or_default(),
            exit_time_ms,
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
    let rows = [
        ("plugin", report.plugin.clone()),
        ("symbol", report.symbol.clone()),
        ("candles", report.candles.to_string()),
        ("capital", report.capital.to_string()),
        ("final equity", format!("{:.2}", s.final_equity)),
        ("total return", pct(s.total_return)),
        ("annualised return", pct(s.annualised_return)),
        ("max drawdown", pct(s.max_drawdown)),
        ("sharpe", format!("{:.2}", s.sharpe)),
        ("trades", s.trades.to_string()),
        ("win rate", pct(s.win_rate)),
        ("fees paid", s.fees_paid.round_dp(2).to_string()),
        ("exposure", pct(s.exposure)),
    ];
    let mut out = String::new();
    for (name, value) in rows {
        out.push_str(&format!("{name:<18} {value:>16}\n"));
    }
    out
}
