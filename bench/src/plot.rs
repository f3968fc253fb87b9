//! The report's SVG: throughput and the api's latency percentiles against
//! concurrency, and the end-to-end latency distribution of each load
//! level, both storage modes in each panel.

use std::path::Path;

use plotters::prelude::*;

use crate::BenchError;
use crate::figures::{PhaseResult, Step};
use crate::report::Report;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One line of a panel.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

fn steps_of<'a>(report: &'a Report, mode: &str, phase: &str) -> &'a [Step] {
    match report
        .phases
        .get(mode)
        .and_then(|p| p.get(phase))
        .map(|f| &f.result)
    {
        Some(PhaseResult::Api { steps } | PhaseResult::StoreCeiling { steps }) => steps,
        _ => &[],
    }
}

fn lines(report: &Report) -> [Vec<Line>; 3] {
    let mut throughput = Vec::new();
    let mut latency = Vec::new();
    let mut end_to_end = Vec::new();
    for mode in report.phases.keys() {
        for (phase, label) in [("api", "api 201/s"), ("store-ceiling", "store ceiling /s")] {
            let points: Vec<(f64, f64)> = steps_of(report, mode, phase)
                .iter()
                .map(|s| (s.concurrency as f64, s.per_sec))
                .collect();
            if !points.is_empty() {
                throughput.push(Line {
                    label: format!("{mode} {label}"),
                    points,
                });
            }
        }
        let api = steps_of(report, mode, "api");
        for (name, pick) in [
            (
                "p50",
                (|l: &crate::figures::Latency| l.p50_ms) as fn(&_) -> f64,
            ),
            ("p95", |l| l.p95_ms),
            ("p99", |l| l.p99_ms),
        ] {
            let points: Vec<(f64, f64)> = api
                .iter()
                .filter_map(|s| s.latency.as_ref().map(|l| (s.concurrency as f64, pick(l))))
                .collect();
            if !points.is_empty() {
                latency.push(Line {
                    label: format!("{mode} api {name} ms"),
                    points,
                });
            }
        }
        if let Some(PhaseResult::EndToEnd(e2e)) = report
            .phases
            .get(mode)
            .and_then(|p| p.get("end-to-end"))
            .map(|f| &f.result)
        {
            for level in &e2e.levels {
                let points: Vec<(f64, f64)> = level
                    .end_to_end_distribution
                    .iter()
                    .enumerate()
                    .map(|(p, ms)| (*ms, p as f64))
                    .collect();
                if !points.is_empty() {
                    end_to_end.push(Line {
                        label: format!("{mode} at {:.0}% of api max", level.fraction * 100.0),
                        points,
                    });
                }
            }
        }
    }
    [throughput, latency, end_to_end]
}

/// The largest x and y of `lines`, at least 1.
fn extent(lines: &[Line]) -> (f64, f64) {
    let points = lines.iter().flat_map(|l| &l.points);
    let x = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let y = points.map(|p| p.1).fold(1.0, f64::max);
    (x, y)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    y_max: Option<f64>,
) -> Result<(), String> {
    let (x, y) = extent(lines);
    let y = y_max.unwrap_or(y * 1.1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x * 1.05, 0.0..y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, line) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(line.points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Draws `report` into the SVG file `path`.
pub fn draw(report: &Report, path: &Path) -> Result<(), BenchError> {
    let error = |detail: String| BenchError::Plot {
        path: path.display().to_string(),
        detail,
    };
    let [throughput, latency, end_to_end] = lines(report);
    let root = SVGBackend::new(path, (960, 1260)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let areas = root.split_evenly((3, 1));
    panel(
        &areas[0],
        "Throughput against concurrency (closed loop)",
        "requests in flight",
        "per second",
        &throughput,
        None,
    )
    .map_err(error)?;
    panel(
        &areas[1],
        "api latency percentiles against concurrency",
        "requests in flight",
        "ms",
        &latency,
        None,
    )
    .map_err(error)?;
    panel(
        &areas[2],
        "End-to-end latency distribution (applied at - occurred at), open loop",
        "ms",
        "percentile",
        &end_to_end,
        Some(100.0),
    )
    .map_err(error)?;
    root.present().map_err(|e| error(e.to_string()))?;
    Ok(())
}
