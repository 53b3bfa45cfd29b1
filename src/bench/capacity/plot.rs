//! `capacity.svg`: latency (log scale) against offered rate, one colour per
//! configuration, one line per percentile (p50, p99, p99.9, max; lighter is
//! lower), the SLA's budgets as grey horizontal lines and each knee as a
//! vertical line in its configuration's colour. Drawn with `plotters`' SVG
//! backend; each series is named in the legend `CONFIG · pNN`.

use plotters::prelude::*;

use super::search::{quantile_name, Sla};
use super::{ConfigResult, REPORTED};

/// The legend name of a series.
pub fn series_name(config: &str, q: f64) -> String {
    format!("{config} · {}", quantile_name(q))
}

/// Draw the SVG (as text).
pub fn svg(configs: &[ConfigResult], sla: &Sla, title: &str) -> Result<String, String> {
    let us = |ns: u64| (ns as f64 / 1e3).max(0.1);
    let mut x_max = 1.0f64;
    let (mut y_min, mut y_max) = (f64::MAX, 1.0f64);
    for c in configs {
        for t in &c.trials {
            x_max = x_max.max(t.summary.offered as f64);
            for &(q, v) in &t.summary.latency_ns {
                if REPORTED.contains(&q) && v > 0 {
                    y_min = y_min.min(us(v));
                    y_max = y_max.max(us(v));
                }
            }
        }
    }
    for p in &sla.points {
        y_min = y_min.min(us(p.budget_ns));
        y_max = y_max.max(us(p.budget_ns));
    }
    if y_min > y_max {
        y_min = 1.0;
    }
    let (y_lo, y_hi) = (y_min / 2.0, y_max * 2.0);
    let x_hi = x_max * 1.1;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 640)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 13))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_hi, (y_lo..y_hi).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("offered rate (msg/s)")
            .y_desc("latency from intended send time (µs, log scale)")
            .x_label_formatter(&|x| format!("{:.0}k", x / 1e3))
            .y_label_formatter(&|y| if *y >= 1000.0 { format!("{:.0}ms", y / 1e3) } else { format!("{y:.0}µs") })
            .draw()
            .map_err(e)?;
        for p in &sla.points {
            let y = us(p.budget_ns);
            chart
                .draw_series(LineSeries::new([(0.0, y), (x_hi, y)], BLACK.mix(0.35).stroke_width(1)))
                .map_err(e)?
                .label(format!("SLA {} {}", p.name(), crate::diag::human_ns(p.budget_ns)))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.35)));
        }
        for (i, c) in configs.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            for (j, &q) in REPORTED.iter().enumerate() {
                let mut pts: Vec<(f64, f64)> = c
                    .trials
                    .iter()
                    .filter_map(|t| t.summary.at(q).filter(|v| *v > 0).map(|v| (t.summary.offered as f64, us(v))))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                pts.dedup_by(|a, b| a.0 == b.0);
                let style = colour.mix(0.35 + 0.65 * (j as f64 + 1.0) / REPORTED.len() as f64);
                chart
                    .draw_series(LineSeries::new(pts.clone(), style.stroke_width(1 + j as u32 / 2)))
                    .map_err(e)?
                    .label(series_name(&c.name, q))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style.stroke_width(2)));
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 2, style.filled()))).map_err(e)?;
            }
            if let Some(k) = c.outcome.knee {
                let k = k as f64;
                chart
                    .draw_series(LineSeries::new([(k, y_lo), (k, y_hi)], colour.stroke_width(1)))
                    .map_err(e)?
                    .label(format!("{} knee {:.0} msg/s", c.name, k))
                    .legend(move |(x, y)| PathElement::new([(x + 9, y - 6), (x + 9, y + 6)], colour));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(out)
}
