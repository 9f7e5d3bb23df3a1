//! SVG plots of an ablation: expert-load heatmaps, one per variant (MoE layers × experts) and
//! one per MoE layer (variants × experts), and one bar chart per metric across variants.
//! plotters' SVG backend writes text as SVG text elements, so nothing here needs fonts or
//! system libraries.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics::{LayerLoad, VariantMetrics};

/// A plotters error as one line naming the file.
fn plot_error(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}: cannot draw the plot: {e}", path.display())
}

/// The colour of a load `ratio` = load / mean load: white at balance (1), deepening to blue
/// for unused experts (0) and to red for experts at three times their share or more, on a log
/// scale so that halving and doubling look alike.
fn load_colour(ratio: f64) -> RGBColor {
    let t = match ratio {
        r if r <= 0.0 => -1.0,
        r => (r.ln() / 3f64.ln()).clamp(-1.0, 1.0),
    };
    let fade = |full: f64| (255.0 - (255.0 - full) * t.abs()).round() as u8;
    match t < 0.0 {
        true => RGBColor(fade(33.0), fade(102.0), fade(172.0)),
        false => RGBColor(fade(178.0), fade(24.0), fade(43.0)),
    }
}

/// Slot `i` of an axis of discrete slots is the interval `[i, i + 1)` of an f64 axis `0..n`.
/// Its label sits at `i + 0.5`: asked for `2n + 1` labels, plotters puts them every 0.5 (its
/// steps are 1, 2 and 5 times a power of ten), and only the centres are named. (plotters' own
/// segmented axes collapse to nothing when they have a single slot.)
fn slot_labels(n: usize) -> usize {
    2 * n + 1
}

/// The name of the slot whose centre is `v`, or nothing at a slot boundary.
fn slot_label<T: ToString>(v: f64, n: usize, names: impl Fn(usize) -> T) -> String {
    let slot = v - 0.5;
    let i = slot.round();
    match (slot - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
        true => names(i as usize).to_string(),
        false => String::new(),
    }
}

/// A load heatmap: a row per entry of `rows` (label, assignments per expert), a column per
/// expert, each cell coloured by its load over its row's mean load and labelled with its count.
/// The first row is drawn at the top.
fn load_heatmap(path: &Path, title: &str, row_axis: &str, rows: &[(String, &[usize])]) -> Result<()> {
    let Some(experts) = rows.iter().map(|(_, load)| load.len()).max() else {
        return Ok(());
    };
    // The y axis counts upwards: reversed, the first row is drawn at the top.
    let rows: Vec<&(String, &[usize])> = rows.iter().rev().collect();
    let longest = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(1);
    let y_label_area = (7 * longest + 34) as u32;
    let size = (100 + y_label_area + 34 * experts as u32, (110 + 30 * rows.len()) as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(38)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(0.0..experts as f64, 0.0..rows.len() as f64)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(slot_labels(experts))
        .y_labels(slot_labels(rows.len()))
        .x_desc("expert")
        .y_desc(row_axis)
        .x_label_formatter(&|v| slot_label(*v, experts, |i| i))
        .y_label_formatter(&|v| slot_label(*v, rows.len(), |i| rows[i].0.as_str()))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let cells: Vec<_> = rows
        .iter()
        .enumerate()
        .flat_map(|(row, (_, load))| {
            let total: usize = load.iter().sum();
            let mean = total as f64 / experts as f64;
            load.iter().enumerate().map(move |(e, &count)| {
                let ratio = if mean > 0.0 { count as f64 / mean } else { 0.0 };
                (e, row, count, load_colour(ratio))
            })
        })
        .collect();
    chart
        .draw_series(cells.iter().map(|&(e, row, _, colour)| {
            Rectangle::new(
                [(e as f64, row as f64), ((e + 1) as f64, (row + 1) as f64)],
                colour.filled(),
            )
        }))
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(cells.iter().map(|&(e, row, count, _)| {
            Text::new(
                count.to_string(),
                (e as f64 + 0.5, row as f64 + 0.5),
                ("sans-serif", 11)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            )
        }))
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// One variant's expert load: a row per MoE layer, the last layer on top.
pub fn variant_heatmap(path: &Path, variant: &str, layers: &[LayerLoad]) -> Result<()> {
    let rows: Vec<(String, &[usize])> = layers
        .iter()
        .rev()
        .map(|l| (l.layer.to_string(), l.stats.load.as_slice()))
        .collect();
    let title = format!("{variant}: tokens per expert (blue below the layer's mean, red above)");
    load_heatmap(path, &title, "layer", &rows)
}

/// One MoE layer's expert load in every variant: a row per variant, in run order from the top.
/// Variants without a routing record for `layer` are left out.
pub fn layer_heatmap(path: &Path, layer: usize, variants: &[(&str, &[LayerLoad])]) -> Result<()> {
    let rows: Vec<(String, &[usize])> = variants
        .iter()
        .filter_map(|(name, layers)| {
            let l = layers.iter().find(|l| l.layer == layer)?;
            Some((name.to_string(), l.stats.load.as_slice()))
        })
        .collect();
    let title = format!("layer {layer}: tokens per expert (blue below the variant's mean, red above)");
    load_heatmap(path, &title, "variant", &rows)
}

/// A horizontal bar per variant of `metric`'s values, the first variant on top (variants
/// without a value are left out).
pub fn metric_bars(path: &Path, metric: &str, rows: &[(String, Option<f64>)]) -> Result<()> {
    // The y axis counts upwards: reversed, the first row is drawn at the top.
    let rows: Vec<(&str, f64)> = rows
        .iter()
        .rev()
        .filter_map(|(name, v)| v.filter(|v| v.is_finite()).map(|v| (name.as_str(), v)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let longest = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(4);
    let size = (720, (90 + 30 * rows.len()) as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let max = rows.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let min = rows.iter().map(|(_, v)| *v).fold(0.0, f64::min);
    let span = (max - min).max(f64::MIN_POSITIVE);
    let x_range = (min - 0.02 * span).min(0.0)..(max + 0.25 * span).max(if max == min { 1.0 } else { 0.0 });
    let mut chart = ChartBuilder::on(&root)
        .caption(metric, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size((8 * longest + 16) as u32)
        .build_cartesian_2d(x_range, 0.0..rows.len() as f64)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(slot_labels(rows.len()))
        .y_label_formatter(&|v| slot_label(*v, rows.len(), |i| rows[i].0))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, &(_, v))| {
            let mut bar = Rectangle::new([(0.0, i as f64), (v, (i + 1) as f64)], RGBColor(66, 133, 180).filled());
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, &(_, v))| {
            Text::new(
                format!(" {}", short(v)),
                (v.max(0.0), i as f64 + 0.5),
                ("sans-serif", 11).into_font().color(&BLACK),
            )
        }))
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// A value with about four significant digits.
fn short(v: f64) -> String {
    match v.abs() {
        0.0 => "0".into(),
        a if a >= 1000.0 => format!("{v:.0}"),
        a if a >= 0.01 => format!("{:.*}", (3 - a.log10().floor() as i32).max(0) as usize, v),
        _ => format!("{v:.3e}"),
    }
}

/// How to read one metric from a variant's measurements.
type Reader = fn(&VariantMetrics) -> Option<f64>;

/// The metrics that get a bar chart, with how to read each from the measurements.
pub const BAR_METRICS: &[(&str, Reader)] = &[
    ("kl_mean", |m| Some(m.agreement.kl_mean)),
    ("top1_agreement", |m| Some(m.agreement.top1)),
    ("perplexity", |m| m.perplexity),
    ("load_max_over_mean", |m| m.overall.as_ref().map(|o| o.max_over_mean)),
    ("load_entropy", |m| m.overall.as_ref().map(|o| o.entropy)),
    ("prefill_tokens_per_s", |m| Some(m.prefill_tokens_per_s)),
    ("decode_tokens_per_s", |m| m.decode_tokens_per_s),
    ("peak_rss_mib", |m| m.peak_rss_mib),
];

/// Every plot of a run into `dir`: `expert_load-<variant>.svg` (layers × experts),
/// `expert_load-layer<L>.svg` (variants × experts) and `<metric>.svg` (bars).
pub fn write_all(dir: &Path, rows: &[(String, String, VariantMetrics)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: cannot create: {e}", dir.display()))?;
    for (name, _, metrics) in rows {
        variant_heatmap(&dir.join(format!("expert_load-{name}.svg")), name, &metrics.layers)?;
    }
    let variants: Vec<(&str, &[LayerLoad])> = rows
        .iter()
        .map(|(name, _, m)| (name.as_str(), m.layers.as_slice()))
        .collect();
    let layers: std::collections::BTreeSet<usize> = rows
        .iter()
        .flat_map(|(_, _, m)| m.layers.iter().map(|l| l.layer))
        .collect();
    for layer in layers {
        layer_heatmap(&dir.join(format!("expert_load-layer{layer}.svg")), layer, &variants)?;
    }
    for (metric, value) in BAR_METRICS {
        let values: Vec<(String, Option<f64>)> = rows.iter().map(|(n, _, m)| (n.clone(), value(m))).collect();
        metric_bars(&dir.join(format!("{metric}.svg")), metric, &values)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use l4_model::parts::router::RoutingStats;

    #[test]
    fn colours_are_white_at_balance_and_saturate_both_ways() {
        assert_eq!(load_colour(1.0), RGBColor(255, 255, 255));
        assert_eq!(load_colour(0.0), RGBColor(33, 102, 172));
        assert_eq!(load_colour(3.0), RGBColor(178, 24, 43));
        assert_eq!(load_colour(10.0), load_colour(3.0));
    }

    #[test]
    fn plots_are_svg_files_naming_what_they_show() {
        let dir = tempfile::tempdir().unwrap();
        let layers = vec![LayerLoad {
            layer: 3,
            stats: RoutingStats {
                load: vec![5, 0, 2, 1],
                max_over_mean: 2.5,
                entropy: 0.9,
                dropped: 0,
                unrouted_tokens: 0,
            },
        }];
        let heatmap = dir.path().join("h.svg");
        variant_heatmap(&heatmap, "softmax-top2", &layers).unwrap();
        let text = std::fs::read_to_string(&heatmap).unwrap();
        assert!(text.starts_with("<svg") && text.contains("softmax-top2") && text.contains("expert"));
        let per_layer = dir.path().join("l.svg");
        layer_heatmap(&per_layer, 3, &[("base", &layers[..]), ("other", &[])]).unwrap();
        let text = std::fs::read_to_string(&per_layer).unwrap();
        assert!(
            text.contains("layer 3") && text.contains("\nbase\n") && !text.contains("\nother\n"),
            "{text}"
        );
        let bars = dir.path().join("b.svg");
        metric_bars(
            &bars,
            "kl_mean",
            &[("base".into(), Some(0.0)), ("x".into(), Some(0.25)), ("y".into(), None)],
        )
        .unwrap();
        let text = std::fs::read_to_string(&bars).unwrap();
        // SVG text elements hold their text on a line of its own.
        assert!(
            text.contains("\nkl_mean\n") && text.contains("\nx\n") && !text.contains("\ny\n"),
            "{text}"
        );
    }
}
