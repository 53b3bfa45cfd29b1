//! `capacity.svg`: latency (log scale) against offered rate, one colour per
//! configuration, one line per percentile (p50, p99, p99.9, max; lighter is
//! lower), the SLA's budgets as grey horizontal lines and each knee as a
//! vertical line in its configuration's colour. Drawn with `plotters`' SVG
//! backend; each series is named in the legend `CONFIG · pNN`, a column right
//! of the plot ([`layout`]), so it never covers a point.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::search::{quantile_name, Sla};
use super::{ConfigResult, REPORTED};

/// The legend name of a series.
pub fn series_name(config: &str, q: f64) -> String {
    format!("{config} · {}", quantile_name(q))
}

/// The plot's width (px): its axes, labels and points all lie left of it.
pub const PLOT_WIDTH_PX: u32 = 820;
/// The SVG's least height (px); a longer legend makes it taller.
const MIN_HEIGHT_PX: u32 = 640;
/// A legend row's height, the legend's padding and its gap from the plot (px).
const ROW_PX: i32 = 14;
const PAD_PX: i32 = 8;
const GAP_PX: i32 = 10;
/// The legend's top (px): level with the plot's top, below the caption.
const LEGEND_TOP_PX: i32 = 32;
/// A generous width of one character of the legend's 11 px font (px).
const CHAR_PX: f64 = 6.5;
/// The sample line before each legend label (px), and the space after it.
const SAMPLE_PX: i32 = 18;
const SAMPLE_GAP_PX: i32 = 6;

/// Where things go: the whole SVG's size and the legend's box (left, top, right, bottom px),
/// a column right of the plot area (which ends at [`PLOT_WIDTH_PX`]), as wide as its longest
/// label and as tall as its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub width: u32,
    pub height: u32,
    pub legend: (i32, i32, i32, i32),
}

/// The layout for a legend of `labels`.
pub fn layout(labels: &[String]) -> Layout {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let rows = i32::try_from(labels.len()).unwrap_or(i32::MAX / ROW_PX);
    let left = PLOT_WIDTH_PX as i32 + GAP_PX;
    let right = left + 2 * PAD_PX + SAMPLE_PX + SAMPLE_GAP_PX + (longest as f64 * CHAR_PX).ceil() as i32;
    let bottom = LEGEND_TOP_PX + 2 * PAD_PX + rows * ROW_PX;
    Layout {
        width: (right + GAP_PX) as u32,
        height: MIN_HEIGHT_PX.max((bottom + GAP_PX) as u32),
        legend: (left, LEGEND_TOP_PX, right, bottom),
    }
}

/// One legend row: its label, its colour and width, and whether its sample is a vertical tick
/// (a knee) rather than a line.
struct Entry {
    label: String,
    style: ShapeStyle,
    tick: bool,
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
    // The legend's rows, in the order drawn: the SLA lines, then per configuration its
    // percentiles and its knee.
    let mut entries: Vec<Entry> = Vec::new();
    let grey = BLACK.mix(0.35).stroke_width(1);
    for p in &sla.points {
        entries.push(Entry {
            label: format!("SLA {} {}", p.name(), crate::diag::human_ns(p.budget_ns)),
            style: grey,
            tick: false,
        });
    }
    let colour = |i: usize| Palette99::pick(i).to_rgba();
    let series_style = |i: usize, j: usize| {
        colour(i).mix(0.35 + 0.65 * (j as f64 + 1.0) / REPORTED.len() as f64).stroke_width(1 + j as u32 / 2)
    };
    for (i, c) in configs.iter().enumerate() {
        for (j, &q) in REPORTED.iter().enumerate() {
            let style = series_style(i, j);
            entries.push(Entry { label: series_name(&c.name, q), style: style.stroke_width(2), tick: false });
        }
        if let Some(k) = c.outcome.knee {
            entries.push(Entry { label: format!("{} knee {k} msg/s", c.name), style: colour(i).into(), tick: true });
        }
    }
    let labels: Vec<String> = entries.iter().map(|e| e.label.clone()).collect();
    let at = layout(&labels);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (at.width, at.height)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (plot_area, _) = root.split_horizontally(PLOT_WIDTH_PX);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(title, ("sans-serif", 13))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_hi, (y_lo..y_hi).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("offered rate (msg/s)")
            // Each tick says its unit (`500µs`, `10ms`): a unit in the title said `µs` over `1ms`.
            .y_desc("latency from intended send time (log scale)")
            .x_label_formatter(&|x| rate_tick(*x))
            .y_label_formatter(&|y| if *y >= 1000.0 { format!("{:.0}ms", y / 1e3) } else { format!("{y:.0}µs") })
            .draw()
            .map_err(e)?;
        for p in &sla.points {
            let y = us(p.budget_ns);
            chart.draw_series(LineSeries::new([(0.0, y), (x_hi, y)], grey)).map_err(e)?;
        }
        for (i, c) in configs.iter().enumerate() {
            for (j, &q) in REPORTED.iter().enumerate() {
                let mut pts: Vec<(f64, f64)> = c
                    .trials
                    .iter()
                    .filter_map(|t| t.summary.at(q).filter(|v| *v > 0).map(|v| (t.summary.offered as f64, us(v))))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                pts.dedup_by(|a, b| a.0 == b.0);
                let style = series_style(i, j);
                chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(e)?;
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 2, style.filled()))).map_err(e)?;
            }
            if let Some(k) = c.outcome.knee {
                let k = k as f64;
                chart.draw_series(LineSeries::new([(k, y_lo), (k, y_hi)], colour(i).stroke_width(1))).map_err(e)?;
            }
        }
        // The legend, right of the plot area: on the root, in its own column.
        let (left, top, right, bottom) = at.legend;
        root.draw(&Rectangle::new([(left, top), (right, bottom)], WHITE.filled())).map_err(e)?;
        root.draw(&Rectangle::new([(left, top), (right, bottom)], BLACK.mix(0.3).stroke_width(1))).map_err(e)?;
        let font = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (n, entry) in entries.iter().enumerate() {
            let y = top + PAD_PX + n as i32 * ROW_PX + ROW_PX / 2;
            let x = left + PAD_PX;
            let sample = if entry.tick {
                vec![(x + SAMPLE_PX / 2, y - 6), (x + SAMPLE_PX / 2, y + 6)]
            } else {
                vec![(x, y), (x + SAMPLE_PX, y)]
            };
            root.draw(&PathElement::new(sample, entry.style)).map_err(e)?;
            root.draw(&Text::new(entry.label.clone(), (x + SAMPLE_PX + SAMPLE_GAP_PX, y), font.clone())).map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    Ok(out)
}

/// An offered rate's tick: `500`, `1k`, `1.5k`, `2.25M`. Before, `{:.0}k` read 500 as `0k` and
/// 1500 and 2500 both as `2k`: ticks 500 apart were labelled `0k 0k 1k 2k 2k 2k 3k`.
fn rate_tick(x: f64) -> String {
    let (v, unit) = match x.abs() {
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    let text = format!("{v:.2}");
    format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::super::search::{Ending, Outcome, Purpose, SlaPoint, TrialSummary, Verdict};
    use super::super::TrialRecord;
    use super::*;

    /// `n` configurations, each with 16 trials: latency rising with the rate, the max highest
    /// at the lowest rates (a noisy start), so points sit in every corner of the plot.
    fn configs(n: usize) -> Vec<ConfigResult> {
        (0..n)
            .map(|i| {
                let trials = (1..=16u64)
                    .map(|t| {
                        let offered = 500 * t + 37 * i as u64;
                        let p50 = 20_000 * t;
                        let max = if t <= 3 { 50_000_000 / t } else { 400_000 * t };
                        let latency_ns = vec![(0.5, p50), (0.99, p50 * 4), (0.999, p50 * 8), (1.0, max)];
                        let verdict =
                            if t < 12 { Verdict::Pass } else { Verdict::Fail { reasons: vec!["p99".into()] } };
                        TrialRecord {
                            purpose: Purpose::Bracket,
                            summary: TrialSummary {
                                offered,
                                achieved: offered as f64,
                                lost: Some(0),
                                gaps: 0,
                                spread_ns: latency_ns.iter().map(|&(q, v)| (q, v, v)).collect(),
                                latency_ns,
                                runs: 1,
                                verdict,
                            },
                            files: Vec::new(),
                        }
                    })
                    .collect();
                ConfigResult {
                    name: format!("builtin-2core workers={} idle=backoff", i + 1),
                    profile_hash: "0123abcd".into(),
                    outcome: Outcome {
                        knee: Some(5500),
                        at_least: None,
                        ending: Ending::Confirmed,
                        lowest_fail: Some(6000),
                        rate_not_achieved_at: None,
                        confirmed_at: Some(5225),
                        failed_above: Some(6000),
                        bracket_above: Some(6000),
                        narrowed: true,
                        contradictions: Vec::new(),
                        failed_confirmations: Vec::new(),
                        known_failure: None,
                        trials: 16,
                    },
                    at_knee: None,
                    carry_on_from: None,
                    thin_percentile: None,
                    taken_from: None,
                    trials,
                }
            })
            .collect()
    }

    fn attr(n: &roxmltree::Node, name: &str) -> f64 {
        n.attribute(name).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} of {n:?}"))
    }

    /// Every `<text>` of an SVG, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
        let texts = doc.descendants().filter(|t| t.has_tag_name("text")).filter_map(|t| t.text());
        texts.map(|t| t.trim().to_string()).collect()
    }

    /// The reviewer's plot of a search up to 4000 msg/s labelled its rate ticks `0k 0k 1k 2k 2k
    /// 2k 3k 4k 4k`: each tick now says its own rate.
    #[test]
    fn each_rate_tick_says_its_own_rate() {
        let mut cs = configs(1);
        for t in &mut cs[0].trials {
            t.summary.offered /= 2;
        }
        let text = svg(&cs, &Sla::default(), "mdsub capacity  test").expect("drawn");
        let ticks: Vec<String> =
            texts(&text).into_iter().filter(|t| t.trim_end_matches('k').parse::<f64>().is_ok()).collect();
        let mut unique = ticks.clone();
        unique.dedup();
        assert!(ticks.len() > 3 && unique == ticks, "{ticks:?}");
        assert_eq!(
            [0.0, 500.0, 1500.0, 2500.0, 1e4, 2_250_000.0].map(rate_tick),
            ["0", "500", "1.5k", "2.5k", "10k", "2.25M"]
        );
    }

    /// The y-axis title said `µs` over ticks reading `1ms, 10ms`: each tick says its unit, the
    /// title none.
    #[test]
    fn the_latency_axis_title_and_ticks_agree_on_units() {
        let text = svg(&configs(2), &Sla::default(), "mdsub capacity  test").expect("drawn");
        let texts = texts(&text);
        let title = texts.iter().find(|t| t.starts_with("latency from intended send time")).expect("the y-axis title");
        let ticks: Vec<&String> = texts
            .iter()
            .filter(|t| t.ends_with("µs") || t.ends_with("ms"))
            .filter(|t| t.trim_end_matches(['µ', 'm', 's']).parse::<f64>().is_ok())
            .collect();
        assert!(ticks.iter().any(|t| t.ends_with("ms")) && ticks.iter().any(|t| t.ends_with("µs")), "{texts:?}");
        assert!(!title.contains("µs") && !title.contains("ms"), "the ticks say their unit, the title {title:?} none");
    }

    /// The reviewer's plots: the legend, an 85 %-opaque box in the plot's upper left, hid 6 of
    /// 64 points with 2 configurations (failures that set a knee among them) and 58 of 108
    /// with 4. Read back from the SVG: the box that holds the legend's labels covers no point.
    #[test]
    fn the_legend_covers_no_point() {
        let sla = Sla { points: vec![SlaPoint { quantile: 0.99, budget_ns: 2_000_000 }], ..Sla::default() };
        for n in [2, 4, 8] {
            let cs = configs(n);
            let text = svg(&cs, &sla, "mdsub capacity  test").expect("drawn");
            let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
            let labels: Vec<String> =
                cs.iter().flat_map(|c| REPORTED.iter().map(|&q| series_name(&c.name, q))).collect();
            let anchors: Vec<(f64, f64)> = doc
                .descendants()
                .filter(|t| t.has_tag_name("text") && t.text().is_some_and(|s| labels.contains(&s.trim().to_string())))
                .map(|t| (attr(&t, "x"), attr(&t, "y")))
                .collect();
            assert_eq!(anchors.len(), labels.len(), "every series in the legend");
            let (width, height) = (attr(&doc.root_element(), "width"), attr(&doc.root_element(), "height"));
            // The legend's box: the smallest rect (not the background) that holds every label.
            let boxes = doc.descendants().filter(|r| r.has_tag_name("rect")).map(|r| {
                let (x, y) = (attr(&r, "x"), attr(&r, "y"));
                (x, y, x + attr(&r, "width"), y + attr(&r, "height"))
            });
            let legend = boxes
                .filter(|b| b.2 - b.0 < width || b.3 - b.1 < height)
                .filter(|b| anchors.iter().all(|a| (b.0..=b.2).contains(&a.0) && (b.1..=b.3).contains(&a.1)))
                .min_by(|a, b| ((a.2 - a.0) * (a.3 - a.1)).total_cmp(&((b.2 - b.0) * (b.3 - b.1))))
                .expect("a box around the legend");
            let points: Vec<(f64, f64, f64)> = doc
                .descendants()
                .filter(|c| c.has_tag_name("circle"))
                .map(|c| (attr(&c, "cx"), attr(&c, "cy"), attr(&c, "r")))
                .collect();
            assert_eq!(points.len(), n * 16 * REPORTED.len(), "every point drawn");
            let hidden: Vec<_> = points
                .iter()
                .filter(|p| {
                    p.0 + p.2 >= legend.0 && p.0 - p.2 <= legend.2 && p.1 + p.2 >= legend.1 && p.1 - p.2 <= legend.3
                })
                .collect();
            assert!(
                hidden.is_empty(),
                "{n} configurations: {} of {} points under the legend {legend:?}",
                hidden.len(),
                points.len()
            );
            // Every label fits in the SVG, and in the box the layout gave it.
            let mut rows = vec!["SLA p99 2.00ms".to_string()];
            for c in &cs {
                rows.extend(REPORTED.iter().map(|&q| series_name(&c.name, q)));
                rows.push(format!("{} knee 5500 msg/s", c.name));
            }
            let at = layout(&rows);
            let want = (at.legend.0 as f64, at.legend.1 as f64, at.legend.2 as f64, at.legend.3 as f64);
            assert_eq!(legend, want, "{n} configurations");
            assert!(want.2 <= width && want.3 <= height, "{want:?} inside {width}x{height}");
        }
    }

    #[test]
    fn the_legend_is_a_column_right_of_the_plot_as_tall_as_its_rows() {
        let few = layout(&["SLA p99 2.00ms".to_string()]);
        assert!(few.legend.0 > PLOT_WIDTH_PX as i32 && few.height == MIN_HEIGHT_PX, "{few:?}");
        let many: Vec<String> = (0..60).map(|i| format!("a rather long configuration name {i} · p99.9")).collect();
        let tall = layout(&many);
        assert!(tall.legend.3 - tall.legend.1 >= 60 * ROW_PX && tall.height as i32 > tall.legend.3, "{tall:?}");
        assert!(tall.width as i32 > tall.legend.2 && tall.legend.2 - tall.legend.0 > few.legend.2 - few.legend.0);
    }
}
