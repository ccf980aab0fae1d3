//! SVG plots (plotters' SVG backend: no fonts or system libraries needed; text is left to
//! the SVG viewer).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One bar of the P1/P2 chart.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    /// Median.
    pub value: f64,
    /// Range over the rounds.
    pub low: f64,
    pub high: f64,
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

const COLORS: [RGBColor; 5] = [
    RGBColor(120, 120, 120),
    RGBColor(150, 180, 220),
    RGBColor(40, 110, 200),
    RGBColor(230, 140, 60),
    RGBColor(200, 70, 50),
];

/// Bars (e.g. Envoy CPU µs per request per variant) with min–max whiskers.
pub fn bars(path: &Path, title: &str, y_desc: &str, bars: &[Bar]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = bars
        .iter()
        .map(|b| b.high.max(b.value))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.2;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (i, b) in bars.iter().enumerate() {
        let x = i as f64;
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, 0.0), (x + 0.35, b.value)],
                color.filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, b.low), (x, b.high)],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.1}", b.value),
                (x - 0.12, b.high.max(b.value) + top * 0.03),
                ("sans-serif", 16),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One line of the P6 chart: (services, MB) points.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// Lines over a numeric x axis (P6: Envoy memory vs services).
pub fn lines(path: &Path, title: &str, x_desc: &str, y_desc: &str, lines: &[Line]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all = lines.iter().flat_map(|l| l.points.iter());
    let (xmax, ymax) = all.fold((1.0f64, 1.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax * 1.05, 0f64..ymax * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, l) in lines.iter().enumerate() {
        let color = COLORS[(i + 2) % COLORS.len()];
        let style = color.stroke_width(2);
        let series = if l.dashed {
            chart.draw_series(DashedLineSeries::new(l.points.clone(), 8, 6, style))
        } else {
            chart.draw_series(LineSeries::new(l.points.clone(), style))
        };
        series
            .map_err(err)?
            .label(l.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if !l.dashed {
            chart
                .draw_series(l.points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_files() {
        let dir = std::env::temp_dir().join(format!("lazyxds-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = dir.join("bars.svg");
        bars(
            &b,
            "t",
            "µs",
            &[
                Bar {
                    label: "a".into(),
                    value: 10.0,
                    low: 9.0,
                    high: 11.0,
                },
                Bar {
                    label: "b".into(),
                    value: 12.0,
                    low: 11.0,
                    high: 13.0,
                },
            ],
        )
        .unwrap();
        let l = dir.join("lines.svg");
        lines(
            &l,
            "t",
            "services",
            "MB",
            &[
                Line {
                    label: "full".into(),
                    points: vec![(0.0, 5.0), (2000.0, 90.0)],
                    dashed: false,
                },
                Line {
                    label: "scoped".into(),
                    points: vec![(0.0, 8.0), (2000.0, 8.0)],
                    dashed: true,
                },
            ],
        )
        .unwrap();
        for p in [b, l] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.starts_with("<svg"), "{text}");
            assert!(text.contains("<text"), "labels are SVG text");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
