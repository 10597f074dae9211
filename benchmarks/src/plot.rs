//! PNG charts of benchmark figures, drawn by the benchmarks themselves (plotters, bitmap
//! backend). Text needs a TrueType font; it is read at run time from
//! `CARBONFLOW_PLOT_FONT` or Debian's DejaVu Sans (`fonts-dejavu-core`), so nothing links
//! a system font library.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    /// Straight segments between points.
    Line,
    /// A value held until the next point (commanded weights).
    Step,
    /// Dots (samples).
    Points,
}

/// One series of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Colour index into the palette.
    pub colour: usize,
    /// Drawing style.
    pub style: Style,
    /// `(x, y)` points, sorted by x.
    pub points: Vec<(f64, f64)>,
}

/// One chart: a panel of an image.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Panel title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Series drawn.
    pub series: Vec<Series>,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No usable font.
    #[error(
        "no TrueType font at {path}: install Debian's fonts-dejavu-core or set CARBONFLOW_PLOT_FONT to a .ttf file"
    )]
    Font {
        /// Where it was looked for.
        path: String,
    },
    /// Drawing or encoding failed.
    #[error("drawing {path}: {detail}")]
    Draw {
        /// Output file.
        path: String,
        /// What plotters reported while drawing or writing the PNG, as text.
        detail: String,
    },
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(47, 111, 79),
    RGBColor(214, 124, 26),
    RGBColor(70, 110, 180),
    RGBColor(179, 52, 43),
    RGBColor(120, 90, 160),
    RGBColor(110, 110, 110),
    RGBColor(20, 160, 170),
    RGBColor(200, 170, 30),
    RGBColor(25, 25, 25),
    RGBColor(220, 100, 170),
];

fn load_font() -> Result<(), PlotError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    let path = std::env::var("CARBONFLOW_PLOT_FONT")
        .unwrap_or_else(|_| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    LOADED
        .get_or_init(|| {
            let bytes = std::fs::read(&path).map_err(|_| path.clone())?;
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| path.clone())
        })
        .clone()
        .map_err(|path| PlotError::Font { path })
}

/// Draw `charts` stacked vertically into a PNG at `path`, `width` pixels wide.
pub fn draw(path: &Path, width: u32, charts: &[Chart]) -> Result<(), PlotError> {
    load_font()?;
    let name = path.display().to_string();
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: name.clone(),
        detail: e.to_string(),
    };
    let height = 380 * charts.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((charts.len().max(1), 1));
    for (chart, area) in charts.iter().zip(panels.iter()) {
        draw_one(chart, area).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn bounds(chart: &Chart) -> (f64, f64, f64, f64) {
    let all = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0_f64, f64::MIN);
    for &(x, y) in all.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    (x0, x1, y0, (y1 * 1.08).max(y0 + 1e-9))
}

fn draw_one<DB: DrawingBackend>(
    chart: &Chart,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x0, x1, y0, y1) = bounds(chart);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .label_style(("sans-serif", 13))
                .draw()?;
            for s in &chart.series {
                let colour = PALETTE[s.colour % PALETTE.len()];
                let points: Vec<(f64, f64)> = match s.style {
                    Style::Step => s
                        .points
                        .windows(2)
                        .flat_map(|w| [w[0], (w[1].0, w[0].1)])
                        .chain(s.points.last().copied())
                        .collect(),
                    _ => s.points.clone(),
                };
                let drawn = if s.style == Style::Points {
                    ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?
                } else {
                    ctx.draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                };
                // An empty label keeps a series out of the legend.
                if !s.label.is_empty() {
                    drawn.label(s.label.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
                    });
                }
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }};
    }
    if chart.log_x {
        body!(builder.build_cartesian_2d((x0.max(1.0)..x1).log_scale(), y0..y1)?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, y0..y1)?);
    }
    Ok(())
}
