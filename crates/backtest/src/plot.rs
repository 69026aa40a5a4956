//! The backtest plot, SVG or PNG by extension: the price (closes) with long entries, short
//! entries, exits and refusals marked; equity below it; drawdown at the bottom. Every panel has
//! dates on its x axis; money is written with thousands separators.

use std::path::Path;

use anyhow::{Context as _, bail};
use chrono::DateTime;
use keel_kernel::market::Candle;
use plotters::coord::Shift;
use plotters::prelude::*;
use rust_decimal::prelude::ToPrimitive as _;

use super::report::{BacktestReport, EquityPoint, thousands};

/// Size of the picture, in pixels.
const SIZE_PX: (u32, u32) = (1200, 1100);
/// Most points of a line drawn: longer curves are thinned to about this many.
const POINTS_DRAWN_MAX: usize = 4_000;
/// Most markers of one kind drawn (long entries, short entries, exits, refusals): beyond it
/// every n-th is drawn, and the legend says how many of how many.
pub const MARKERS_DRAWN_MAX: usize = 500;
/// Spans shorter than this get times of day on the x axis, longer ones dates.
const DATES_ONLY_ABOVE_MS: f64 = 3.0 * 86_400_000.0;

const LONG_COLOUR: RGBColor = RGBColor(0, 150, 60);
const SHORT_COLOUR: RGBColor = RGBColor(200, 30, 30);
const EXIT_COLOUR: RGBColor = RGBColor(20, 20, 20);
const REFUSAL_COLOUR: RGBColor = RGBColor(240, 140, 0);
const PRICE_COLOUR: RGBColor = RGBColor(110, 110, 110);

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

/// Draws `report` of a run over `candles` into `path`.
pub fn plot(report: &BacktestReport, candles: &[Candle], path: &Path) -> anyhow::Result<()> {
    let drawn = match format_of(path)? {
        PlotFormat::Svg => draw(
            report,
            candles,
            SVGBackend::new(path, SIZE_PX).into_drawing_area(),
        ),
        PlotFormat::Png => draw(
            report,
            candles,
            BitMapBackend::new(path, SIZE_PX).into_drawing_area(),
        ),
    };
    drawn.with_context(|| format!("drawing {}", path.display()))
}

fn draw<DB: DrawingBackend>(
    report: &BacktestReport,
    candles: &[Candle],
    root: DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_error)?;
    let (price, rest) = root.split_vertically(SIZE_PX.1 * 45 / 100);
    let (equity, drawdown) = rest.split_vertically(SIZE_PX.1 * 30 / 100);
    let axis = TimeAxis::of(report);
    draw_price(report, candles, &axis, &price)?;
    let points = thin(&report.equity, POINTS_DRAWN_MAX);
    draw_equity(&points, &axis, &equity)?;
    draw_drawdown(&points, &axis, &drawdown)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// The x axis every panel shares: milliseconds since the epoch, labelled as dates.
struct TimeAxis {
    range: std::ops::Range<f64>,
    format: &'static str,
}

impl TimeAxis {
    fn of(report: &BacktestReport) -> TimeAxis {
        let (start, end) = (report.start_ms as f64, report.end_ms as f64);
        let format = if end - start > DATES_ONLY_ABOVE_MS {
            "%Y-%m-%d"
        } else {
            "%m-%d %H:%M"
        };
        TimeAxis {
            range: start..end.max(start + 1.0),
            format,
        }
    }

    fn label(&self, time_ms: &f64) -> String {
        DateTime::from_timestamp_millis(*time_ms as i64)
            .map_or_else(String::new, |t| t.format(self.format).to_string())
    }
}

type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart over `axis` and `low..high` (padded by 5%) with a mesh, dates below and `y_desc`
/// with money labels at the left.
fn chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    axis: &TimeAxis,
    (low, high): (f64, f64),
    caption: Option<String>,
    y_desc: &str,
    y_decimals: usize,
) -> anyhow::Result<Chart<'a, DB>>
where
    DB::ErrorType: 'static,
{
    let pad = ((high - low) * 0.05).max(high.abs() * 1e-6).max(1e-9);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(100);
    if let Some(caption) = caption {
        builder.caption(caption, ("sans-serif", 20));
    }
    let mut chart = builder
        .build_cartesian_2d(axis.range.clone(), (low - pad)..(high + pad))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .x_label_formatter(&|x| axis.label(x))
        .y_label_formatter(&|y| thousands(*y, y_decimals))
        .y_desc(y_desc)
        .draw()
        .map_err(plot_error)?;
    Ok(chart)
}

fn draw_price<DB: DrawingBackend>(
    report: &BacktestReport,
    candles: &[Candle],
    axis: &TimeAxis,
    area: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let closes: Vec<(f64, f64)> = thin(candles, POINTS_DRAWN_MAX)
        .iter()
        .map(|c| (c.close_time_ms as f64, c.close))
        .collect();
    let low = candles.iter().map(|c| c.low).fold(f64::MAX, f64::min);
    let high = candles.iter().map(|c| c.high).fold(f64::MIN, f64::max);
    let s = &report.summary;
    let caption = format!(
        "{} on {}: return {:.2}% (buy and hold {:.2}%), max drawdown {:.2}%, {} closed and {} \
         open trades, {} refusals",
        report.plugin,
        report.symbol,
        s.total_return * 100.0,
        s.buy_and_hold_return * 100.0,
        s.max_drawdown * 100.0,
        s.trades_closed,
        s.trades_open,
        s.refusals
    );
    let decimals = if high < 10.0 { 4 } else { 2 };
    let mut chart = chart(area, axis, (low, high), Some(caption), "price", decimals)?;
    chart
        .draw_series(LineSeries::new(closes, PRICE_COLOUR))
        .map_err(plot_error)?
        .label("close")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], PRICE_COLOUR));
    draw_trade_marks(report, candles, &mut chart)?;
    draw_legend(&mut chart)
}

/// Where each kind of marker goes: (time, price) pairs.
struct Marks {
    long_entries: Vec<(f64, f64)>,
    short_entries: Vec<(f64, f64)>,
    exits: Vec<(f64, f64)>,
    refusals: Vec<(f64, f64)>,
}

impl Marks {
    fn of(report: &BacktestReport, candles: &[Candle]) -> Marks {
        let price = |p: rust_decimal::Decimal| p.to_f64().unwrap_or(f64::NAN);
        let entry = |side: &str| {
            report
                .trades
                .iter()
                .filter(|t| t.side == side)
                .map(|t| (t.entry_time_ms as f64, price(t.entry_price)))
                .collect::<Vec<_>>()
        };
        let exits = report
            .trades
            .iter()
            .filter_map(|t| Some((t.exit_time_ms? as f64, price(t.exit_price?))))
            .collect();
        // A refusal is made at its candle's close, at that close's price.
        let refusals = report
            .refusals
            .iter()
            .filter_map(|r| Some((r.time_ms as f64, candles.get(r.bar)?.close)))
            .collect();
        Marks {
            long_entries: entry("long"),
            short_entries: entry("short"),
            exits,
            refusals,
        }
    }
}

/// The legend text of `name` when `drawn` of `all` markers are drawn.
fn marker_label(name: &str, drawn: usize, all: usize) -> String {
    if drawn == all {
        format!("{name} ({})", thousands(all as f64, 0))
    } else {
        format!(
            "{name} ({} of {} drawn)",
            thousands(drawn as f64, 0),
            thousands(all as f64, 0)
        )
    }
}

fn draw_trade_marks<DB: DrawingBackend>(
    report: &BacktestReport,
    candles: &[Candle],
    chart: &mut Chart<'_, DB>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let marks = Marks::of(report, candles);
    // Refusals counted beyond the listed ones are not in the report: the label counts them all.
    let refusals_all = report.summary.refusals.max(marks.refusals.len());
    let up = |(x, y): (i32, i32), style: ShapeStyle| {
        Polygon::new(vec![(x - 6, y + 5), (x + 6, y + 5), (x, y - 6)], style)
    };
    let down = |(x, y): (i32, i32), style: ShapeStyle| {
        Polygon::new(vec![(x - 6, y - 5), (x + 6, y - 5), (x, y + 6)], style)
    };
    let long = thin(&marks.long_entries, MARKERS_DRAWN_MAX);
    let label = marker_label("long entries", long.len(), marks.long_entries.len());
    chart
        .draw_series(
            long.into_iter()
                .map(|&p| EmptyElement::at(p) + up((0, 0), LONG_COLOUR.filled())),
        )
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| up((x + 10, y), LONG_COLOUR.filled()));
    let short = thin(&marks.short_entries, MARKERS_DRAWN_MAX);
    let label = marker_label("short entries", short.len(), marks.short_entries.len());
    chart
        .draw_series(
            short
                .into_iter()
                .map(|&p| EmptyElement::at(p) + down((0, 0), SHORT_COLOUR.filled())),
        )
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| down((x + 10, y), SHORT_COLOUR.filled()));
    let exits = thin(&marks.exits, MARKERS_DRAWN_MAX);
    let label = marker_label("exits", exits.len(), marks.exits.len());
    chart
        .draw_series(
            exits
                .into_iter()
                .map(|&p| Cross::new(p, 5, EXIT_COLOUR.stroke_width(2))),
        )
        .map_err(plot_error)?
        .label(label)
        .legend(|(x, y)| Cross::new((x + 10, y), 5, EXIT_COLOUR.stroke_width(2)));
    let refused = thin(&marks.refusals, MARKERS_DRAWN_MAX);
    let label = marker_label("refused intents", refused.len(), refusals_all);
    chart
        .draw_series(
            refused
                .into_iter()
                .map(|&p| Circle::new(p, 4, REFUSAL_COLOUR.stroke_width(2))),
        )
        .map_err(plot_error)?
        .label(label)
        .legend(|(x, y)| Circle::new((x + 10, y), 4, REFUSAL_COLOUR.stroke_width(2)));
    Ok(())
}

fn draw_equity<DB: DrawingBackend>(
    points: &[&EquityPoint],
    axis: &TimeAxis,
    area: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (low, high) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.equity), hi.max(p.equity))
    });
    let mut chart = chart(area, axis, (low, high), None, "equity", 0)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.time_ms as f64, p.equity)),
            &BLUE,
        ))
        .map_err(plot_error)?
        .label("equity")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    draw_legend(&mut chart)
}

fn draw_drawdown<DB: DrawingBackend>(
    points: &[&EquityPoint],
    axis: &TimeAxis,
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
            (p.time_ms as f64, -(peak - p.equity) / peak * 100.0)
        })
        .collect();
    let deepest = drawdown.iter().map(|d| d.1).fold(0.0, f64::min).min(-0.01);
    let mut chart = chart(area, axis, (deepest, 0.0), None, "drawdown %", 1)?;
    chart
        .draw_series(AreaSeries::new(drawdown, 0.0, RED.mix(0.3)).border_style(RED))
        .map_err(plot_error)?;
    Ok(())
}

/// The legend of `chart`'s labelled series, at its upper left.
fn draw_legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)
}

/// Every n-th item so at most about `max` are drawn, the last one always kept.
fn thin<T>(items: &[T], max: usize) -> Vec<&T> {
    let every = items.len().div_ceil(max.max(1)).max(1);
    let mut kept: Vec<&T> = items.iter().step_by(every).collect();
    if let Some(last) = items.last()
        && !(items.len() - 1).is_multiple_of(every)
    {
        kept.push(last);
    }
    kept
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_at_most_about_max_and_the_last() {
        let items: Vec<usize> = (0..3_120).collect();
        let kept = thin(&items, MARKERS_DRAWN_MAX);
        assert!(kept.len() <= MARKERS_DRAWN_MAX + 1, "{}", kept.len());
        assert_eq!(kept.last(), Some(&&3_119));
        assert_eq!(thin(&items[..10], MARKERS_DRAWN_MAX).len(), 10);
        assert!(thin::<usize>(&[], MARKERS_DRAWN_MAX).is_empty());
        assert_eq!(
            marker_label("exits", 447, 3_120),
            "exits (447 of 3,120 drawn)"
        );
    }
}
