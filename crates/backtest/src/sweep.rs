//! Parameter sweeps: `keel backtest --sweep fast=5..30:5 --sweep slow=20..100:10 --jobs N`
//! runs every combination of the swept config values on the same kernel, in parallel, and ranks
//! the runs by a chosen figure.
//!
//! Each run is a whole backtest (the plugin's `init` sees the swept values over the `--config`
//! pairs); a combination the plugin refuses (say `fast` not below `slow`) is listed with the
//! plugin's message and ranked last. Only each run's summary is kept, so a sweep over long
//! candle files needs the memory of `--jobs` runs, not of every run.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rust_decimal::Decimal;
use serde::Serialize;

use super::plot::{PlotFormat, format_of};
use super::report::Summary;
use super::run::{BacktestSpec, load_plugin, run_backtest_with};

/// Most values one swept key may take.
pub const VALUES_PER_KEY_MAX: usize = 1_000;
/// Most combinations one sweep may run.
pub const COMBINATIONS_MAX: usize = 10_000;
/// Rows of the ranking printed by the command (every row is in the JSON).
const ROWS_PRINTED: usize = 10;
/// Size of the heatmap, in pixels.
const HEATMAP_PX: (u32, u32) = (1000, 800);

/// One swept config key and the values it takes, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepAxis {
    /// The config key.
    pub key: String,
    /// Its values, as handed to the plugin.
    pub values: Vec<String>,
}

/// Why a `--sweep` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--sweep {arg}: {what} (expected KEY=START..END:STEP, END included, or KEY=A,B,C)")]
pub struct SweepArgError {
    arg: String,
    what: String,
}

impl FromStr for SweepAxis {
    type Err = SweepArgError;

    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let refuse = |what: String| SweepArgError {
            arg: arg.to_owned(),
            what,
        };
        let (key, spec) = arg
            .split_once('=')
            .ok_or_else(|| refuse("no `=`".to_owned()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(refuse("the key is empty".to_owned()));
        }
        let values = if let Some((range, step)) = spec.split_once(':') {
            let (start, end) = range
                .split_once("..")
                .ok_or_else(|| refuse("a step needs a range START..END".to_owned()))?;
            let number = |text: &str, what: &str| {
                Decimal::from_str(text.trim())
                    .map_err(|_| refuse(format!("{what} {:?} is not a number", text.trim())))
            };
            let (start, end, step) = (
                number(start, "start")?,
                number(end, "end")?,
                number(step, "step")?,
            );
            if step <= Decimal::ZERO {
                return Err(refuse(format!("the step {step} is not positive")));
            }
            if end < start {
                return Err(refuse(format!("the end {end} is below the start {start}")));
            }
            let mut values = Vec::new();
            let mut value = start;
            while value <= end {
                if values.len() == VALUES_PER_KEY_MAX {
                    return Err(refuse(format!("more than {VALUES_PER_KEY_MAX} values")));
                }
                values.push(value.normalize().to_string());
                value = value
                    .checked_add(step)
                    .ok_or_else(|| refuse("the range overflows".to_owned()))?;
            }
            values
        } else {
            let values: Vec<String> = spec.split(',').map(|v| v.trim().to_owned()).collect();
            if values.iter().any(String::is_empty) {
                return Err(refuse("an empty value".to_owned()));
            }
            if values.len() > VALUES_PER_KEY_MAX {
                return Err(refuse(format!("more than {VALUES_PER_KEY_MAX} values")));
            }
            values
        };
        Ok(SweepAxis {
            key: key.to_owned(),
            values,
        })
    }
}

/// The figure runs are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    /// Final equity over capital, minus one (higher is better).
    #[default]
    TotalReturn,
    /// Return compounded to a year (higher is better).
    AnnualisedReturn,
    /// Sharpe ratio (higher is better).
    Sharpe,
    /// Largest fall from a peak (lower is better).
    MaxDrawdown,
    /// Share of closed trades that made money (higher is better).
    WinRate,
}

impl RankBy {
    /// The figure of `summary`, as ranked.
    pub fn of(self, summary: &Summary) -> f64 {
        match self {
            RankBy::TotalReturn => summary.total_return,
            RankBy::AnnualisedReturn => summary.annualised_return,
            RankBy::Sharpe => summary.sharpe,
            RankBy::MaxDrawdown => summary.max_drawdown,
            RankBy::WinRate => summary.win_rate,
        }
    }

    /// True when a lower figure ranks higher.
    fn lower_is_better(self) -> bool {
        self == RankBy::MaxDrawdown
    }

    /// `a` before `b` in the ranking: the better figure first, NaN last.
    fn order(self, a: f64, b: f64) -> std::cmp::Ordering {
        let key = |x: f64| {
            if x.is_nan() {
                f64::NEG_INFINITY
            } else if self.lower_is_better() {
                -x
            } else {
                x
            }
        };
        key(b).total_cmp(&key(a))
    }
}

impl fmt::Display for RankBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            RankBy::TotalReturn => "total_return",
            RankBy::AnnualisedReturn => "annualised_return",
            RankBy::Sharpe => "sharpe",
            RankBy::MaxDrawdown => "max_drawdown",
            RankBy::WinRate => "win_rate",
        };
        f.write_str(name)
    }
}

/// One combination and how its run went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepRow {
    /// The swept keys and their values in this run.
    pub params: Vec<(String, String)>,
    /// The run's headline figures; `None` when it failed.
    pub summary: Option<Summary>,
    /// Why the run failed (the plugin refused the combination, say).
    pub error: Option<String>,
}

/// Every run of a sweep, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    /// The plugin's name.
    pub plugin: String,
    /// The traded symbol.
    pub symbol: String,
    /// Candles each run was fed.
    pub candles: usize,
    /// The config pairs every run shares.
    pub config: Vec<(String, String)>,
    /// The swept keys and their values.
    pub axes: Vec<SweepAxis>,
    /// The figure the rows are ranked by.
    pub rank_by: RankBy,
    /// Every combination, best first; failed runs last, in sweep order.
    pub rows: Vec<SweepRow>,
}

impl SweepReport {
    /// The best run, if any succeeded.
    pub fn best(&self) -> Option<&SweepRow> {
        self.rows.first().filter(|row| row.summary.is_some())
    }
}

/// Every combination of the axes' values, the last axis varying fastest.
pub fn combinations(axes: &[SweepAxis]) -> anyhow::Result<Vec<Vec<(String, String)>>> {
    for (index, axis) in axes.iter().enumerate() {
        if axes[..index].iter().any(|other| other.key == axis.key) {
            bail!("--sweep {}: the key is swept twice", axis.key);
        }
    }
    let count = axes
        .iter()
        .try_fold(1usize, |n, axis| n.checked_mul(axis.values.len()))
        .filter(|&n| n <= COMBINATIONS_MAX);
    let Some(count) = count else {
        bail!("the sweep has more than {COMBINATIONS_MAX} combinations");
    };
    let mut all = Vec::with_capacity(count);
    for mut index in 0..count {
        let mut params = vec![(String::new(), String::new()); axes.len()];
        for (slot, axis) in axes.iter().enumerate().rev() {
            let value = &axis.values[index % axis.values.len()];
            index /= axis.values.len();
            params[slot] = (axis.key.clone(), value.clone());
        }
        all.push(params);
    }
    Ok(all)
}

/// The config a run gets: `base` with the swept keys set to `params`.
fn run_config(base: &[(String, String)], params: &[(String, String)]) -> Vec<(String, String)> {
    base.iter()
        .filter(|(key, _)| !params.iter().any(|(swept, _)| swept == key))
        .chain(params)
        .cloned()
        .collect()
}

/// Refuses a sweep any of whose configurations does not fit the parameters the plugin declares
/// (a misspelt swept key, a value out of range), before any run: each run would refuse it
/// alike. A plugin that declares nothing checks each run's configuration in its `init`.
fn check_declared_params(
    spec: &BacktestSpec,
    all: &[Vec<(String, String)>],
    progress: bool,
) -> anyhow::Result<()> {
    let (_, version) = load_plugin(spec, progress)?;
    let Some(declared) = &version.report().params else {
        return Ok(());
    };
    for params in all {
        let config = run_config(&spec.config, params);
        keel_runtime::params::check_config(&spec.plugin_name, declared, &config)
            .map_err(|error| anyhow::anyhow!("configuration refused: {error}"))?;
    }
    Ok(())
}

/// Runs every combination of `axes` over `spec`, `jobs` at a time; `progress` draws a bar on
/// stderr when it is a terminal.
pub fn run_sweep(
    spec: &BacktestSpec,
    axes: &[SweepAxis],
    jobs: usize,
    rank_by: RankBy,
    progress: bool,
) -> anyhow::Result<SweepReport> {
    if axes.is_empty() {
        bail!("a sweep needs at least one --sweep KEY=VALUES");
    }
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let all = combinations(axes)?;
    check_declared_params(spec, &all, progress)?;
    let bar = sweep_bar(all.len(), progress);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Summary, String>>>> = Mutex::new(vec![None; all.len()]);
    let workers = jobs.min(all.len());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting a sweep worker's runtime")?;
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(params) = all.get(index) else {
                            return Ok(());
                        };
                        let config = run_config(&spec.config, params);
                        let outcome = runtime
                            .block_on(run_backtest_with(spec, &config, false))
                            .map(|report| report.summary)
                            .map_err(|error| format!("{error:#}"));
                        results.lock().expect("sweep results lock")[index] = Some(outcome);
                        bar.inc(1);
                    }
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let results = results.into_inner().expect("sweep results lock");
    let mut rows: Vec<SweepRow> = all
        .into_iter()
        .zip(results)
        .map(|(params, outcome)| match outcome {
            Some(Ok(summary)) => SweepRow {
                params,
                summary: Some(summary),
                error: None,
            },
            Some(Err(error)) => SweepRow {
                params,
                summary: None,
                error: Some(error),
            },
            None => SweepRow {
                params,
                summary: None,
                error: Some("not run".to_owned()),
            },
        })
        .collect();
    // Stable: equal figures keep the sweep's order; failed runs go last.
    rows.sort_by(|a, b| match (&a.summary, &b.summary) {
        (Some(a), Some(b)) => rank_by.order(rank_by.of(a), rank_by.of(b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    Ok(SweepReport {
        plugin: spec.plugin_name.clone(),
        symbol: spec.symbol.to_string(),
        candles: spec.candles.len(),
        config: spec.config.clone(),
        axes: axes.to_vec(),
        rank_by,
        rows,
    })
}

fn sweep_bar(runs: usize, wanted: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(runs as u64), ProgressDrawTarget::stderr());
    if !wanted {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} (eta {eta})")
            .expect("a valid template"),
    );
    bar
}

/// The ranking as a table: the best rows, then how many ran and failed.
pub fn sweep_table(report: &SweepReport) -> String {
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    let mut out = format!(
        "sweep of {} over {} candles: {} runs ranked by {}\n",
        report.plugin,
        report.candles,
        report.rows.len(),
        report.rank_by
    );
    out.push_str(&format!(
        "{:>4}  {:<32} {:>12} {:>12} {:>8} {:>8} {:>7} {:>8}\n",
        "rank", "params", "total return", "max drawdown", "sharpe", "win rate", "trades", "refused"
    ));
    for (index, row) in report.rows.iter().take(ROWS_PRINTED).enumerate() {
        let params = row
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        match &row.summary {
            Some(s) => out.push_str(&format!(
                "{:>4}  {:<32} {:>12} {:>12} {:>8.2} {:>8} {:>7} {:>8}\n",
                index + 1,
                params,
                pct(s.total_return),
                pct(s.max_drawdown),
                s.sharpe,
                pct(s.win_rate),
                s.trades,
                s.refusals
            )),
            None => out.push_str(&format!(
                "{:>4}  {:<32} failed: {}\n",
                index + 1,
                params,
                row.error.as_deref().unwrap_or("")
            )),
        }
    }
    let failed = report.rows.iter().filter(|r| r.summary.is_none()).count();
    if failed > 0 {
        out.push_str(&format!(
            "{failed} of {} runs failed (listed in the JSON with their errors)\n",
            report.rows.len()
        ));
    }
    out
}

/// Draws the ranked figure over the first two swept keys as a heatmap (one key: a single row);
/// with more keys, each cell shows the best run over the others. SVG or PNG by extension.
pub fn heatmap(report: &SweepReport, path: &Path) -> anyhow::Result<()> {
    let drawn = match format_of(path)? {
        PlotFormat::Svg => draw_heatmap(
            report,
            SVGBackend::new(path, HEATMAP_PX).into_drawing_area(),
        ),
        PlotFormat::Png => draw_heatmap(
            report,
            BitMapBackend::new(path, HEATMAP_PX).into_drawing_area(),
        ),
    };
    drawn.with_context(|| format!("drawing {}", path.display()))
}

/// The cells of the heatmap: the ranked figure of the best run at each (x, y) value index.
fn cells(report: &SweepReport) -> Vec<Vec<Option<f64>>> {
    let x_axis = &report.axes[0];
    let y_count = report.axes.get(1).map_or(1, |a| a.values.len());
    let mut cells = vec![vec![None; y_count]; x_axis.values.len()];
    // Rows are best first: the first one to reach a cell is its best.
    for row in &report.rows {
        let Some(summary) = &row.summary else {
            continue;
        };
        let x = x_axis.values.iter().position(|v| v == &row.params[0].1);
        let y = match report.axes.get(1) {
            Some(axis) => axis.values.iter().position(|v| v == &row.params[1].1),
            None => Some(0),
        };
        if let (Some(x), Some(y)) = (x, y)
            && cells[x][y].is_none()
        {
            cells[x][y] = Some(report.rank_by.of(summary));
        }
    }
    cells
}

fn draw_heatmap<DB: DrawingBackend>(
    report: &SweepReport,
    root: DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let plot_error = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(plot_error)?;
    let cells = cells(report);
    let x_axis = &report.axes[0];
    let y_axis = report.axes.get(1);
    let (columns, rows) = (cells.len(), cells.first().map_or(1, Vec::len));
    let figures: Vec<f64> = cells.iter().flatten().flatten().copied().collect();
    let low = figures.iter().copied().fold(f64::INFINITY, f64::min);
    let high = figures.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let title = format!(
        "{}: {} by {}{}",
        report.plugin,
        report.rank_by,
        x_axis.key,
        y_axis.map_or(String::new(), |a| format!(" and {}", a.key))
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        // A segmented range holds its end as a segment too: one segment per value.
        .build_cartesian_2d(
            (0..columns.saturating_sub(1)).into_segmented(),
            // One key: a single row, drawn over two segments (a range of one value has no
            // height).
            (0..rows.max(2) - 1).into_segmented(),
        )
        .map_err(plot_error)?;
    // A cell's value names its centre; the edges between cells carry no label.
    let label = |values: Option<&Vec<String>>, at: &SegmentValue<usize>| match at {
        SegmentValue::CenterOf(index) => values
            .and_then(|v| v.get(*index))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    let x_label = |at: &SegmentValue<usize>| label(Some(&x_axis.values), at);
    let y_label = |at: &SegmentValue<usize>| label(y_axis.map(|a| &a.values), at);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_axis.key.as_str())
        .y_desc(y_axis.map_or("", |a| a.key.as_str()))
        .x_labels(columns.min(30))
        .y_labels(rows.min(30))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .draw()
        .map_err(plot_error)?;
    let colour = |figure: f64| {
        let span = high - low;
        let mut t = if span > 0.0 {
            (figure - low) / span
        } else {
            0.5
        };
        if report.rank_by.lower_is_better() {
            t = 1.0 - t;
        }
        // Red (worst) through yellow to green (best).
        let red = (255.0 * (1.0 - t).min(0.5) * 2.0) as u8;
        let green = (200.0 * t.min(0.5) * 2.0) as u8;
        RGBColor(red, green, 60)
    };
    let percent = report.rank_by != RankBy::Sharpe;
    let single_row = y_axis.is_none();
    let row_top = move |y: usize| {
        if single_row {
            SegmentValue::Last
        } else {
            SegmentValue::Exact(y + 1)
        }
    };
    let row_middle = move |y: usize| {
        if single_row {
            SegmentValue::Exact(1)
        } else {
            SegmentValue::CenterOf(y)
        }
    };
    chart
        .draw_series(cells.iter().enumerate().flat_map(|(x, column)| {
            column.iter().enumerate().map(move |(y, figure)| {
                let fill = figure.map_or(RGBColor(220, 220, 220), colour);
                Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), row_top(y)),
                    ],
                    fill.filled(),
                )
            })
        }))
        .map_err(plot_error)?;
    if columns * rows <= 400 {
        chart
            .draw_series(cells.iter().enumerate().flat_map(|(x, column)| {
                column.iter().enumerate().map(move |(y, figure)| {
                    let text = match figure {
                        Some(f) if percent => format!("{:.1}%", f * 100.0),
                        Some(f) => format!("{f:.2}"),
                        None => "failed".to_owned(),
                    };
                    let style = TextStyle::from(("sans-serif", 13).into_font())
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    Text::new(text, (SegmentValue::CenterOf(x), row_middle(y)), style)
                })
            }))
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(arg: &str) -> SweepAxis {
        arg.parse().unwrap()
    }

    #[test]
    fn ranges_include_their_end_and_lists_keep_their_order() {
        assert_eq!(
            axis("fast=5..30:5").values,
            ["5", "10", "15", "20", "25", "30"]
        );
        assert_eq!(axis("size=0.1..0.3:0.1").values, ["0.1", "0.2", "0.3"]);
        assert_eq!(axis("fast=5..7:5").values, ["5"]);
        assert_eq!(
            axis("mode=long-only, long-short").values,
            ["long-only", "long-short"]
        );
    }

    #[test]
    fn malformed_sweeps_are_refused_naming_the_fault() {
        for (arg, fault) in [
            ("fast", "no `=`"),
            ("=1,2", "the key is empty"),
            ("fast=5..x:5", "end \"x\" is not a number"),
            ("fast=5..30:0", "not positive"),
            ("fast=30..5:5", "below the start"),
            ("fast=1..100000:1", "more than 1000 values"),
            ("fast=1,,2", "an empty value"),
            ("fast=1:2", "a step needs a range"),
        ] {
            let error = arg.parse::<SweepAxis>().unwrap_err().to_string();
            assert!(error.contains(fault), "{arg}: {error}");
        }
    }

    #[test]
    fn combinations_vary_the_last_key_fastest_and_are_bounded() {
        let all = combinations(&[axis("a=1,2"), axis("b=x,y,z")]).unwrap();
        let flat: Vec<String> = all
            .iter()
            .map(|p| format!("{}{}", p[0].1, p[1].1))
            .collect();
        assert_eq!(flat, ["1x", "1y", "1z", "2x", "2y", "2z"]);
        let error = combinations(&[axis("a=1..1000:1"), axis("b=1..11:1")]).unwrap_err();
        assert!(error.to_string().contains("more than 10000"), "{error}");
        let error = combinations(&[axis("a=1,2"), axis("a=3")]).unwrap_err();
        assert!(error.to_string().contains("swept twice"), "{error}");
    }

    #[test]
    fn swept_values_replace_the_shared_config() {
        let base = vec![
            ("fast".to_owned(), "3".to_owned()),
            ("mode".to_owned(), "long-short".to_owned()),
        ];
        let config = run_config(&base, &[("fast".to_owned(), "8".to_owned())]);
        assert_eq!(
            config,
            [
                ("mode".to_owned(), "long-short".to_owned()),
                ("fast".to_owned(), "8".to_owned())
            ]
        );
    }

    #[test]
    fn drawdown_ranks_lowest_first_and_nan_last() {
        let mut figures = [0.3, f64::NAN, 0.1, 0.2];
        figures.sort_by(|a, b| RankBy::MaxDrawdown.order(*a, *b));
        assert_eq!(&figures[..3], [0.1, 0.2, 0.3]);
        assert!(figures[3].is_nan());
        let mut figures = [0.3, f64::NAN, 0.1, 0.2];
        figures.sort_by(|a, b| RankBy::TotalReturn.order(*a, *b));
        assert_eq!(&figures[..3], [0.3, 0.2, 0.1]);
    }
}
