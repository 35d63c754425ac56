//! `--plot`: throughput by message size and round-trip percentiles per transport, as SVG.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

/// What the two panels show.
#[derive(Debug, Default)]
pub(crate) struct Data {
    /// Per transport: (message size, messages/s).
    pub(crate) throughput: Vec<(String, Vec<(f64, f64)>)>,
    /// Per transport: p50, p99, p99.9, max in ns.
    pub(crate) latency: Vec<(String, [f64; 4])>,
}

/// One per transport, in `Transport::ALL` order.
const COLORS: [RGBColor; 14] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(255, 152, 150),
    RGBColor(255, 187, 120),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(90, 90, 160),
];

fn color(name: &str) -> RGBColor {
    let i = crate::transport::Transport::ALL
        .iter()
        .position(|t| t.name() == name)
        .unwrap_or(COLORS.len() - 1);
    COLORS[i % COLORS.len()]
}

/// A log axis range covering `values` with some room.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    (lo / 2.0, hi * 2.0)
}

/// The message sizes measured: the throughput panel's x ticks.
fn sizes(d: &Data) -> Vec<f64> {
    let mut v: Vec<f64> = d
        .throughput
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

pub(crate) fn draw(path: &Path, d: &Data, subtitle: &str) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.titled(
        &format!("shmpipe bench: {subtitle}"),
        ("sans-serif", 18).into_font(),
    )?;
    let (left, right) = body.split_horizontally(700);

    let (xlo, xhi) = log_range(d.throughput.iter().flat_map(|(_, p)| p.iter().map(|p| p.0)));
    let (ylo, yhi) = log_range(d.throughput.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(&left)
        .caption("Throughput by message size (one-way)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (xlo..xhi).log_scale().with_key_points(sizes(d)),
            (ylo..yhi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes)")
        .y_desc("messages/s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()?;
    for (name, points) in &d.throughput {
        let c = color(name);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let labels = ["p50", "p99", "p99.9", "max"];
    let (ylo, yhi) = log_range(d.latency.iter().flat_map(|(_, p)| p.iter().copied()));
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "Round-trip latency percentiles (64-byte ping-pong)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3f64..3.3f64, (ylo..yhi).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && (0.0..4.0).contains(&i) {
                labels[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("round trip (ns)")
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()?;
    for (name, p) in &d.latency {
        let c = color(name);
        let pts: Vec<(f64, f64)> = p.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
