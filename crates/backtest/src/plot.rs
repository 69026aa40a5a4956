//! The backtest plot: equity with trades marked above, drawdown below. SVG or PNG by extension.

use std::path::Path;

use anyhow::{Context as _, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{BacktestReport, EquityPoint};

/// Size of the picture, in pixels.
const SIZE_PX: (u32, u32) = (1200, 800);
/// Most equity points drawn: longer curves are thinned to this many.
const POINTS_DRAWN_MAX: usize = 4_000;
const DAY_MS: f64 = 86_400_000.0;

/// The picture formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotFormat {
    /// Scalable vector graphics.
    Svg,
    /// Portable network graphics.
    Png,
}

/// The format `path`'s extension names, or an error naming the choices.
pub fn format_of(path: &Path) -> anyhow::Result<PlotFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => Ok(PlotFormat::Svg),
        Some(e) if e.eq_ignore_ascii_case("png") => Ok(PlotFormat::Png),
        _ => bail!(
            "--plot {}: the file must end in .svg or .png",
            path.display()
        ),
    }
}

/// Draws `report` into `path`.
pub fn plot(report: &BacktestReport, path: &Path) -> anyhow::Result<()> {
    let drawn = match format_of(path)? {
        PlotFormat::Svg => draw(report, SVGBackend::new(path, SIZE_PX).into_drawing_area()),
        PlotFormat::Png => draw(
            report,
            BitMapBackend::new(path, SIZE_PX).into_drawing_area(),
        ),
    };
    drawn.with_context(|| format!("drawing {}", path.display()))
}

fn draw<DB: DrawingBackend>(
    report: &BacktestReport,
    root: DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(SIZE_PX.1 * 62 / 100);
    let points = thin(&report.equity);
    draw_equity(report, &points, &top)?;
    draw_drawdown(report, &points, &bottom)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn days(report: &BacktestReport, time_ms: i64) -> f64 {
    (time_ms - report.start_ms) as f64 / DAY_MS
}

fn x_range(report: &BacktestReport) -> std::ops::Range<f64> {
    0.0..days(report, report.end_ms).max(1e-6)
}

fn draw_equity<DB: DrawingBackend>(
    report: &BacktestReport,
    points: &[&EquityPoint],
    area: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (low, high) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.equity), hi.max(p.equity))
    });
    let pad = ((high - low) * 0.05).max(1.0);
    let title = format!(
        "{} on {}: return {:.2}%, max drawdown {:.2}%, {} trades",
        report.plugin,
        report.symbol,
        report.summary.total_return * 100.0,
        report.summary.max_drawdown * 100.0,
        report.summary.trades
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range(report), (low - pad)..(high + pad))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .y_desc("equity")
        .x_desc("days since start")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (days(report, p.time_ms), p.equity)),
            &BLUE,
        ))
        .map_err(plot_error)?
        .label("equity")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    draw_trade_marks(report, &mut chart)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

type EquityChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_trade_marks<DB: DrawingBackend>(
    report: &BacktestReport,
    chart: &mut EquityChart<'_, DB>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let at = |time_ms: i64| (days(report, time_ms), equity_at(&report.equity, time_ms));
    let entries = report.trades.iter().map(|t| at(t.entry_time_ms));
    let exits = report.trades.iter().filter_map(|t| t.exit_time_ms.map(at));
    chart
        .draw_series(entries.map(|p| TriangleMarker::new(p, 5, GREEN.filled())))
        .map_err(plot_error)?
        .label("entry")
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 7, GREEN.filled()));
    chart
        .draw_series(exits.map(|p| Cross::new(p, 4, RED.stroke_width(2))))
        .map_err(plot_error)?
        .label("exit")
        .legend(|(x, y)| Cross::new((x + 10, y), 6, RED.stroke_width(2)));
    Ok(())
}

fn draw_drawdown<DB: DrawingBackend>(
    report: &BacktestReport,
    points: &[&EquityPoint],
    area: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut peak = f64::MIN;
    let drawdown: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            peak = peak.max(p.equity);
            (days(report, p.time_ms), -(peak - p.equity) / peak * 100.0)
        })
        .collect();
    let deepest = drawdown.iter().map(|d| d.1).fold(0.0, f64::min).min(-0.01);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range(report), (deepest * 1.1)..0.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .y_desc("drawdown %")
        .x_desc("days since start")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(AreaSeries::new(drawdown, 0.0, RED.mix(0.3)).border_style(RED))
        .map_err(plot_error)?;
    Ok(())
}

/// The equity at the close at or just before `time_ms` (fills happen at a candle's open).
fn equity_at(equity: &[EquityPoint], time_ms: i64) -> f64 {
    let index = equity.partition_point(|p| p.time_ms <= time_ms);
    equity
        .get(index.saturating_sub(1))
        .or(equity.first())
        .map_or(0.0, |p| p.equity)
}

/// Every n-th point so at most [`POINTS_DRAWN_MAX`] are drawn, the last one always kept.
fn thin(equity: &[EquityPoint]) -> Vec<&EquityPoint> {
    let every = equity.len().div_ceil(POINTS_DRAWN_MAX).max(1);
    let mut points: Vec<&EquityPoint> = equity.iter().step_by(every).collect();
    if let Some(last) = equity.last()
        && points.last().map(|p| p.time_ms) != Some(last.time_ms)
    {
        points.push(last);
    }
    points
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}
